"""Differentiable search: expected latency matches the table, the argmax arch is valid and within budget, seeded runs repeat;
its old import paths (from when it lived in edgenas.search) still work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgenas.data import load_dataset
from edgenas.errors import UsageError
from edgenas.latency.blocks import block_index
from edgenas.latency.predictors import TablePredictor
from edgenas.space import SearchSpace
from edgenas.supernet import Supernet
from edgenas.train.differentiable import DifferentiableConfig, _ArchParams, differentiable_search


@pytest.fixture(scope="module")
def parts():
    space = SearchSpace.preset("tiny", resolutions=(24, 28))
    index = block_index(space)
    costs = index.analytic_costs()
    ms = 0.02 + costs[:, 0] * 0.05 + costs[:, 1] * 0.2
    lat = TablePredictor(table=dict(zip(index.keys, ms.tolist())), device="table-test", runtime="onnxruntime",
                         precision="fp32", space=space)
    torch.manual_seed(0)
    supernet = Supernet(space).eval()
    data = load_dataset("shapes:samples=300,image_size=24", seed=0)
    sample = lat.predict([space.sample(np.random.default_rng(i)) for i in range(100)])
    return space, lat, supernet, data, sample


def test_expected_latency_is_the_table_sum_for_a_certain_arch(parts) -> None:
    space, lat, *_ = parts
    params = _ArchParams(space, lat, 1, torch.device("cpu"))
    arch = space.sample(np.random.default_rng(3))
    with torch.no_grad():  # make the distribution (almost) certain of `arch`
        slot = 0
        for s, spec in enumerate(space.stages):
            params.depth[s, spec.depths.index(arch.depths[s])] = 50.0
            for j, (k, e) in enumerate(arch.stage_blocks(s)):
                params.kernel[slot + j, space.kernels.index(k)] = 50.0
                params.expand[slot + j, space.expands.index(e)] = 50.0
            slot += spec.max_depth
        expected = float(params.expected_latency())
    want = float(lat.predict([arch.__class__(28, arch.depths, arch.kernels, arch.expands)])[0])
    assert expected == pytest.approx(want, rel=1e-5)


def test_search_returns_a_valid_arch_within_budget_and_repeats(parts) -> None:
    space, lat, supernet, data, sample = parts
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    budget = float(np.percentile(sample, 20))
    cfg = DifferentiableConfig(steps=2, batch_size=4)
    a = differentiable_search(supernet, data, lat, max_latency_ms=budget, seed=1, config=cfg)
    space.validate(a.arch)
    assert a.latency_ms <= budget
    assert float(lat.predict([a.arch])[0]) == pytest.approx(a.latency_ms)
    assert len(a.history) == 2 and all(np.isfinite(h["ce"]) for h in a.history)
    b = differentiable_search(supernet, data, lat, max_latency_ms=budget, seed=1, config=cfg)
    assert a.arch == b.arch and a.history == b.history and a.probabilities == b.probabilities
    for k, v in supernet.state_dict().items():  # the caller's supernet is untouched
        assert torch.equal(v, before[k]), k
    # The latency term moves the distribution: the expected latency fell towards the budget.
    assert a.history[-1]["expected_latency_ms"] < a.history[0]["expected_latency_ms"]


def test_impossible_budget_names_the_smallest_latency(parts) -> None:
    space, lat, supernet, data, _ = parts
    with pytest.raises(UsageError, match="smallest achievable is"):
        differentiable_search(supernet, data, lat, max_latency_ms=1e-6, config=DifferentiableConfig(steps=1))


def test_the_search_imports_no_torch_and_keeps_no_old_names() -> None:
    """Differentiable search moved beside training (it trains weights): `edgenas.search` loads no torch, even with
    every search module imported, and names nothing of it."""
    import edgenas.train.differentiable as moved

    code = ("import sys, pkgutil, importlib, edgenas.search as s\n"
            "for m in pkgutil.iter_modules(s.__path__): importlib.import_module('edgenas.search.' + m.name)\n"
            "from edgenas.search import *\n"
            "assert 'torch' not in sys.modules, 'torch'\n"
            "assert 'differentiable_search' not in dir(s) and not hasattr(s, 'DifferentiableConfig')\n"
            "assert importlib.util.find_spec('edgenas.search.differentiable') is None\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(moved.__file__).parents[2])})
    assert done.returncode == 0, done.stderr
