"""Tests for edgenas.supernet and edgenas.nn: exact extraction, channel sorting, ONNX equality."""

import numpy as np
import pytest
import torch

from edgenas import SearchSpace, Supernet
from edgenas.export.onnx import export_onnx, run_onnx
from edgenas.nn.static import StaticNet


def _realistic(net: Supernet, seed: int = 0) -> Supernet:
    """Give BN layers non-trivial statistics and the classifier a useful scale, so that
    equality checks compare meaningful numbers (fresh init gives near-zero logits)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        net.classifier.weight.normal_(0, 0.5, generator=g)
        for stage in net.stages:
            for block in stage:
                for matrix in block.depthwise.transforms.values():
                    matrix.add_(torch.randn(matrix.shape, generator=g) * 0.05)
    return net.eval()


@pytest.fixture(scope="module", params=SearchSpace.presets())
def supernet(request):
    torch.manual_seed(0)
    return _realistic(Supernet(SearchSpace.preset(request.param)))


def test_extract_equals_active_supernet_for_50_archs(supernet):
    space = supernet.space
    rng = np.random.default_rng(1)
    archs = space.sample_many(rng, 48) + [space.largest(), space.smallest()]
    for arch in archs:
        x = torch.randn(1, space.in_channels, arch.resolution, arch.resolution)
        with torch.no_grad():
            expected = supernet.set_active(arch)(x)
            got = supernet.extract(arch)(x)
        assert expected.abs().max() > 1e-2  # a meaningful comparison, not zeros against zeros
        assert torch.allclose(got, expected, atol=1e-5, rtol=0), (str(arch), (got - expected).abs().max())


def test_extract_is_a_plain_model_and_restores_active_arch(supernet):
    space = supernet.space
    rng = np.random.default_rng(2)
    a, b = space.sample(rng), space.sample(rng)
    supernet.set_active(a)
    model = supernet.extract(b)
    assert supernet.active_arch == a
    assert isinstance(model, StaticNet) and model.resolution == b.resolution and model.arch == b.to_dict()
    dynamic = [m for m in model.modules() if type(m).__module__ == "edgenas.nn.dynamic"]
    assert dynamic == []
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0
    assert not model.training


# One preset of each family: a width multiplier changes channel counts, not the graph the ONNX writer emits (the same
# arch gives the same node sequence in mcunet and mcunet-w0.5, mobilenetv3 and -w1.2); the width variants' extraction
# is checked above, on 50 archs each. Their 100 exports here cost about 50 of this file's 170 CPU seconds.
FAMILIES = ("tiny", "mcunet", "mobilenetv3")


@pytest.mark.parametrize("supernet", FAMILIES, indirect=True)
def test_onnx_runtime_equals_torch_for_50_archs(supernet, tmp_path):
    space = supernet.space
    rng = np.random.default_rng(3)
    for i, arch in enumerate(space.sample_many(rng, 50)):
        model = supernet.extract(arch)
        x = model.example_input(2)
        result = export_onnx(model, tmp_path / f"m{i}.onnx", example=x[:1], verify=False)
        assert result.path.is_file() and not list(tmp_path.glob("*.data"))  # one self-contained file
        with torch.no_grad():
            expected = model(x).numpy()
        got = run_onnx(result.path, x.numpy())
        assert np.abs(got - expected).max() <= 1e-4, str(arch)


def test_onnx_export_verification_catches_a_wrong_model(tmp_path):
    from edgenas.export.onnx import OnnxMismatchError

    space = SearchSpace.preset("tiny")
    net = _realistic(Supernet(space))
    model = net.extract(space.smallest())

    class Drifting(torch.nn.Module):  # exports one graph, computes another when called from Python
        def __init__(self):
            super().__init__()
            self.inner = model
            self.calls = 0

        def example_input(self):
            return model.example_input()

        def forward(self, x):
            self.calls += 1
            out = self.inner(x)
            return out + 1.0 if self.calls > 1 and not torch.jit.is_tracing() else out

    with pytest.raises(OnnxMismatchError, match="differs from PyTorch"):
        export_onnx(Drifting(), tmp_path / "bad.onnx")
    assert (tmp_path / "bad.onnx").is_file()  # kept for inspection


def test_sort_channels_keeps_full_network_output():
    torch.manual_seed(4)
    for name in SearchSpace.presets():
        space = SearchSpace.preset(name)
        net = _realistic(Supernet(space)).set_largest()
        # make channel importances unequal so sorting really permutes
        with torch.no_grad():
            for stage in net.stages:
                for block in stage:
                    block.project_conv.weight.mul_(torch.rand(1, block.max_mid, 1, 1) * 2)
        x = torch.randn(2, space.in_channels, space.resolutions[-1], space.resolutions[-1])
        before = net(x)
        order_before = net.stages[0][0].project_conv.weight.abs().sum(dim=(0, 2, 3))
        net.sort_channels()
        after = net(x)
        order_after = net.stages[0][0].project_conv.weight.abs().sum(dim=(0, 2, 3))
        assert not torch.equal(order_before, order_after)
        assert torch.all(order_after[:-1] >= order_after[1:])
        assert torch.allclose(before, after, atol=1e-5, rtol=0)


def test_smaller_kernel_uses_transformed_centre_of_largest():
    space = SearchSpace.preset("tiny")
    net = Supernet(space)
    dw = net.stages[0][0].depthwise
    with torch.no_grad():
        for m in dw.transforms.values():
            m.copy_(torch.eye(m.shape[0]))
    full = dw.weight[:4]
    assert torch.equal(dw.filter(4, 7), full)
    assert torch.equal(dw.filter(4, 5), full[:, :, 1:6, 1:6])
    assert torch.equal(dw.filter(4, 3), full[:, :, 2:5, 2:5])


def test_training_step_updates_shared_weights_and_bn_stats():
    space = SearchSpace.preset("tiny")
    net = Supernet(space).train()
    arch = space.smallest()
    net.set_active(arch)
    block = net.stages[0][0]
    mean_before = block.expand_bn.running_mean.clone()
    x = torch.randn(4, 3, arch.resolution, arch.resolution)
    loss = net(x).logsumexp(1).mean()
    loss.backward()
    mid = block.active_mid
    assert block.expand_conv.weight.grad[:mid].abs().sum() > 0
    assert block.expand_conv.weight.grad[mid:].abs().sum() == 0  # inactive channels get no gradient
    assert not torch.equal(block.expand_bn.running_mean[:mid], mean_before[:mid])
    assert torch.equal(block.expand_bn.running_mean[mid:], mean_before[mid:])


def test_resize_and_num_classes():
    space = SearchSpace.preset("tiny")
    net = Supernet(space, num_classes=4)
    assert net.num_classes == 4 and net.space.num_classes == 4
    x = torch.randn(2, 3, 32, 32)
    assert net.resize(x, 24).shape == (2, 3, 24, 24)
    assert net.resize(x, 32) is x
    with pytest.raises(ValueError, match="resolution 20 is not offered"):
        net.set_active(space.smallest().__class__(20, space.smallest().depths, space.smallest().kernels,
                                                  space.smallest().expands))
