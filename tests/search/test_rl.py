"""RL search: REINFORCE with a MnasNet reward finds feasible archs under a latency table, repeats exactly when seeded."""

from __future__ import annotations

import numpy as np
import pytest

from edgenas.cost import stats_table
from edgenas.latency.blocks import block_index
from edgenas.latency.predictors import TablePredictor
from edgenas.search.loop import run_search
from edgenas.search.problem import Constraints, Problem
from edgenas.search.random_search import RandomSearch
from edgenas.search.rl import RLConfig, RLSearch
from edgenas.space import SearchSpace


class MacsAccuracy:
    """A stand-in accuracy that grows with MACs (as a trained supernet's does) with a preference for kernel 5."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def predict(self, archs) -> np.ndarray:
        macs = stats_table(self.space).compute(list(archs))["macs"].astype(np.float64)
        k5 = np.array([np.mean([k == 5 for k in a.kernels]) for a in archs])
        return 0.5 + 0.3 * np.log(macs) / np.log(macs.max() + 1) / 2 + 0.1 * k5


def table_latency(space: SearchSpace) -> TablePredictor:
    """A latency table whose per-piece cost is the piece's analytic MACs plus a fixed overhead (ms)."""
    index = block_index(space)
    costs = index.analytic_costs()
    ms = 0.02 + costs[:, 0] * 0.05 + costs[:, 1] * 0.2
    return TablePredictor(table=dict(zip(index.keys, ms.tolist())), device="table-test", runtime="onnxruntime",
                          precision="fp32", space=space)


@pytest.fixture(scope="module")
def problem_parts():
    space = SearchSpace.preset("tiny")
    lat = table_latency(space)
    sample = lat.predict([space.sample(np.random.default_rng(i)) for i in range(200)])
    return space, lat, float(np.percentile(sample, 30))


def _run(space, lat, budget, seed, config=None):
    problem = Problem(space, MacsAccuracy(space), lat, Constraints(max_latency_ms=budget), device="table-test")
    search = RLSearch(space, rng=np.random.default_rng(seed), config=config or RLConfig(steps=40, batch_size=24))
    return run_search(search, problem), search, problem


def test_rl_finds_feasible_archs_and_learns(problem_parts) -> None:
    space, lat, budget = problem_parts
    result, search, problem = _run(space, lat, budget, seed=0)
    assert result.algorithm == "rl" and search.told == 40 * 24
    for cand in result.top:
        space.validate(cand.arch)
        assert lat.predict([cand.arch])[0] <= budget  # meets the budget by the table
    # The policy improved: mean reward of the last steps above the first.
    assert np.mean(search.rewards[-5:]) > np.mean(search.rewards[:5])
    # Kernel 5 is rewarded: the policy moved its mass there on active slots.
    probs = search.probabilities()
    k = search.codec.kernel_cols
    assert np.mean([p[space.kernels.index(5)] for p in probs[k.start:k.stop]]) > 1 / 3
    # And it beats random search at the same number of evaluations.
    rand = run_search(RandomSearch(space, rng=np.random.default_rng(0), budget=40 * 24, batch_size=24),
                      Problem(space, MacsAccuracy(space), lat, Constraints(max_latency_ms=budget)))
    assert result.best.predicted["accuracy"] >= rand.best.predicted["accuracy"]


def test_rl_seeded_runs_repeat_exactly(problem_parts) -> None:
    space, lat, budget = problem_parts
    cfg = RLConfig(steps=5, batch_size=8)
    a, sa, _ = _run(space, lat, budget, seed=7, config=cfg)
    b, sb, _ = _run(space, lat, budget, seed=7, config=cfg)
    assert a.to_dict()["top"] == b.to_dict()["top"]
    np.testing.assert_array_equal(sa.logits, sb.logits)
    c, _, _ = _run(space, lat, budget, seed=8, config=cfg)
    assert c.to_dict()["top"] != a.to_dict()["top"]


def test_rl_reward_is_mnasnet() -> None:
    from edgenas.search.problem import Evaluation

    space = SearchSpace.preset("tiny")
    search = RLSearch(space, rng=np.random.default_rng(0), config=RLConfig(alpha=-0.07, beta=-0.07))
    ev = Evaluation(accuracy=np.array([0.8, 0.8, 0.5]), latency_ms=np.array([5.0, 20.0, np.nan]),
                    sram=np.zeros(3), flash=np.zeros(3), macs=np.zeros(3), feasible=np.array([True, False, False]),
                    violation=np.array([[-0.5], [1.0], [np.inf]]))
    r = search.reward(ev)
    np.testing.assert_allclose(r[:2], [0.8 * 0.5 ** -0.07, 0.8 * 2.0 ** -0.07])
    assert r[2] == 0.0


def test_rl_config_errors() -> None:
    with pytest.raises(ValueError, match="learning rate -1"):
        RLConfig(lr=-1)
