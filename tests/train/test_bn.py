"""Tests for edgenas.train.bn and .evaluate: exact BN re-estimation; evaluation leaves the supernet as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgenas.data import load_dataset
from edgenas.space import SearchSpace
from edgenas.supernet import Supernet
from edgenas.train.bn import bn_state, recalibrate_bn
from edgenas.train.evaluate import evaluate, evaluate_many


@pytest.fixture(scope="module", autouse=True)
def idle_cores_only():
    """Use only the idle cores: on a busy machine extra threads make torch's CPU kernels several times slower."""
    from edgenas.train.trainer import auto_threads

    previous = torch.get_num_threads()
    torch.set_num_threads(auto_threads())
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture
def supernet():
    torch.manual_seed(0)
    return Supernet(SearchSpace.preset("tiny", in_channels=1))


def test_recalibration_gives_the_exact_mean_statistics(supernet):
    static = supernet.extract(supernet.space.smallest())
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(8, 1, 24, 24, generator=gen) * 3 + 1 for _ in range(3)]
    static.stem.bn.running_mean.fill_(123.0)
    static.eval()
    assert recalibrate_bn(static, batches) == 24
    assert not static.training  # mode restored
    with torch.no_grad():
        outs = [static.stem.conv(x) for x in batches]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(static.stem.bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(static.stem.bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert static.stem.bn.momentum == 0.1  # restored


def test_evaluate_matches_a_recalibrated_extracted_subnet(supernet, digits):
    rng = np.random.default_rng(0)
    arch = supernet.space.sample(rng)
    top1 = evaluate(supernet, arch, digits, "val", bn_batches=2, batch_size=32)
    # the same by hand: extract, recalibrate on the same training batches, run the validation split
    static = supernet.extract(arch)
    calibration = digits.loader("train", batch_size=32, resolution=arch.resolution, shuffle=True, seed=0)
    recalibrate_bn(static, [b for _, b in zip(range(2), calibration)])
    static.eval()
    correct = 0
    with torch.no_grad():
        for x, y in digits.loader("val", batch_size=32, resolution=arch.resolution):
            correct += int((static(x).argmax(1) == y).sum())
    assert top1 == pytest.approx(correct / digits.size("val"), abs=1.5 / digits.size("val"))


def test_evaluate_leaves_bn_statistics_arch_and_mode_unchanged(supernet, digits):
    space = supernet.space
    supernet.set_active(space.largest()).train()
    before = bn_state(supernet)
    archs = [space.smallest(), space.largest(24)]
    accs = evaluate_many(supernet, archs, digits, "holdout", bn_batches=1, batch_size=64)
    assert all(0.0 <= a <= 1.0 for a in accs)
    after = bn_state(supernet)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert supernet.active_arch == space.largest() and supernet.training
    # evaluating one arch never changes what another arch scores
    assert evaluate_many(supernet, archs[::-1], digits, "holdout", bn_batches=1, batch_size=64) == accs[::-1]


def test_recalibration_is_what_makes_a_subnet_score(digits):
    """A supernet whose BN statistics were left by another subnet scores worse than after recalibration."""
    torch.manual_seed(0)
    net = Supernet(SearchSpace.preset("tiny", in_channels=1))
    space = net.space
    arch = space.smallest()
    net.set_active(arch)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for _, (x, y) in zip(range(30), digits.loader("train", batch_size=32, resolution=24, shuffle=True, augment=True)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    # corrupt the running statistics as sampling other subnets does, then compare
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.mul_(25.0)
    net.eval()
    x, y = next(iter(digits.loader("val", batch_size=400, resolution=24)))
    with torch.no_grad():
        stale = float((net(x).argmax(1) == y).float().mean())
    assert evaluate(net, arch, digits, "val", bn_batches=4, batch_size=64) > stale + 0.1
