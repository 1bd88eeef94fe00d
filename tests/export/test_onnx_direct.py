"""Tests for edgenas.export.onnx_direct: the ONNX file written without tracing is the TorchScript exporter's graph
node for node, computes what PyTorch computes, and anything the writer does not know goes to torch's exporter."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgenas.export.onnx import OnnxMismatchError, export_onnx, run_onnx
from edgenas.export.onnx_direct import direct_onnx
from edgenas.latency.blocks import block_index
from edgenas.latency.models import _example, build_model, piece_description
from edgenas.space import SearchSpace
from tests.export.test_subnet import trained_subnet
from tests.export.test_tflite_direct import _Gelu, _LyingPlan, _small


def _nodes(path):
    """Op type, attributes and input count of every node, in order (what ONNX Runtime builds its kernels from)."""
    model = onnx.load(str(path))
    return [(n.op_type, sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in n.attribute), len(n.input))
            for n in model.graph.node]


def _cases():
    tiny = SearchSpace.preset("tiny")
    pieces = block_index(tiny).pieces_of(tiny.sample(np.random.default_rng(7)))
    se_block = next(p for p in pieces if p.kind == "block" and p.se_mid and p.stride == 2)
    return {"stem": pieces[0], "block-se-hswish-stride2": se_block, "head": pieces[-1]}


CASES = _cases()


@pytest.mark.parametrize("name", ["trained-subnet", *CASES])
def test_direct_file_is_torchscript_graph_node_for_node_and_computes_the_same(name, tmp_path):
    if name == "trained-subnet":
        _, _, model = trained_subnet()
        example = model.example_input()
    else:
        model = build_model(piece_description(CASES[name]))
        example = _example(model)
    direct = export_onnx(model, tmp_path / "d.onnx", example=example)
    traced = export_onnx(model, tmp_path / "t.onnx", example=example, exporter="torchscript")
    assert direct.exporter == "direct" and traced.exporter == "torchscript"
    assert _nodes(direct.path) == _nodes(traced.path)
    x = torch.randn((3,) + tuple(example.shape[1:]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.eval()(x).numpy()
    got = run_onnx(direct.path, x.numpy())
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_dynamic_batch_is_kept(tmp_path):
    _, _, model = trained_subnet()
    result = export_onnx(model, tmp_path / "m.onnx", dynamic_batch=True)
    assert result.exporter == "direct"
    dim = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"
    assert run_onnx(result.path, np.zeros((5,) + tuple(model.example_input().shape[1:]), np.float32)).shape[0] == 5


def test_unknown_layer_falls_back_to_torch_and_says_why(tmp_path):
    model = _small(_Gelu())
    example = torch.randn(1, 3, 8, 8)
    result = export_onnx(model, tmp_path / "m.onnx", example=example)
    assert result.exporter == "torchscript" and "_Gelu" in result.fallback_reason
    with pytest.raises(OnnxMismatchError, match="_Gelu"):
        export_onnx(model, tmp_path / "d.onnx", example=example, exporter="direct")


def test_a_file_that_computes_something_else_is_not_used(tmp_path):
    model = _small(_LyingPlan())  # its plan says one block, its forward runs it twice
    example = torch.randn(1, 3, 8, 8)
    data, why = direct_onnx(model, example)
    assert data is None and "differs" in why
    result = export_onnx(model, tmp_path / "m.onnx", example=example)
    assert result.exporter == "torchscript" and "differs" in result.fallback_reason


def test_an_onnx_files_weights_are_the_fp32_flash_the_search_limits(tmp_path):
    """The fp32 flash limit counts the weights (`Constraints`, `ArchStats.flash_fp32`); the export's flash check reads
    them from the file's initializers, not its size (names and graph add 18-24 KB): a subnet the search let through
    at its limit is not refused for the file's overhead."""
    import numpy as np
    import torch

    from edgenas.cost import arch_stats
    from edgenas.export.onnx import export_onnx, onnx_weight_bytes
    from edgenas.space import SearchSpace
    from edgenas.supernet import Supernet

    space = SearchSpace.preset("tiny")
    net = Supernet(space)
    for i, arch in enumerate(space.sample_many(np.random.default_rng(3), 2)):
        path = tmp_path / f"m{i}.onnx"
        export_onnx(net.extract(arch).eval(), path, example=torch.zeros(1, 3, arch.resolution, arch.resolution))
        assert onnx_weight_bytes(path) == arch_stats(space, arch).flash_fp32
        assert path.stat().st_size > onnx_weight_bytes(path)
