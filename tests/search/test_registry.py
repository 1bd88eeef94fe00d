"""Tests for edgenas.search.registry and edgenas.search.budget_candidates: every strategy by name, from the CLI and a run
config alike, and one budget's candidates (the margins) the same for every caller."""

from __future__ import annotations

import numpy as np
import pytest

from edgenas.cli import build_parser
from edgenas.errors import UsageError
from edgenas.search.budget_candidates import SEARCH_MARGINS, search_for_budget
from edgenas.search.problem import Constraints
from edgenas.search.registry import ALGORITHMS, algorithm_names, create_algorithm
from tests.search.test_evolution import SPACE, CapacityAccuracy, MacsLatency

ACC, LAT = CapacityAccuracy(SPACE), MacsLatency(SPACE)
LIMIT = float(np.median(LAT.predict(SPACE.sample_many(np.random.default_rng(0), 200))))


@pytest.mark.parametrize("name", algorithm_names())
def test_every_algorithm_runs_by_name_within_the_limit(name):
    result = search_for_budget(SPACE, ACC, LAT, Constraints(max_latency_ms=LIMIT), algorithm=name, population=16,
                               generations=6, seed=0, top_k=3)
    assert result.algorithm == create_algorithm(name, SPACE, rng=np.random.default_rng(0), n_constraints=1).name
    assert result.top and all(c.predicted["latency_ms"] <= LIMIT for c in result.top)
    again = search_for_budget(SPACE, ACC, LAT, Constraints(max_latency_ms=LIMIT), algorithm=name, population=16,
                              generations=6, seed=0, top_k=3)
    assert [c.arch for c in again.top] == [c.arch for c in result.top]  # seeded: the same candidates


def test_margins_add_candidates_under_the_budget():
    single = search_for_budget(SPACE, ACC, LAT, Constraints(max_latency_ms=LIMIT), population=16, generations=6,
                               top_k=1, margins=(1.0,))
    merged = search_for_budget(SPACE, ACC, LAT, Constraints(max_latency_ms=LIMIT), population=16, generations=6,
                               top_k=1)
    assert merged.top[0].arch == single.top[0].arch  # the full budget's best comes first
    assert len(merged.top) == len(SEARCH_MARGINS) and len(set(c.arch for c in merged.top)) == len(merged.top)
    assert min(c.predicted["latency_ms"] for c in merged.top) <= LIMIT * SEARCH_MARGINS[-1]
    assert merged.config["margins"] == list(SEARCH_MARGINS)
    assert merged.constraints.max_latency_ms == LIMIT  # judged against the real budget


def test_unknown_algorithm_is_one_line():
    with pytest.raises(UsageError, match="unknown search algorithm 'cmaes': choose from evolution, nsga2, random, rl"):
        create_algorithm("cmaes", SPACE, rng=np.random.default_rng(0))
    from edgenas.pipeline.run_config import parse_run_config

    with pytest.raises(UsageError, match="search.algorithm: 'cmaes' is not offered"):
        parse_run_config({"search": {"algorithm": "cmaes"}, "devices": [{"name": "x", "budgets_ms": [1.0]}]})
    config = parse_run_config({"search": {"algorithm": "rl"}, "devices": [{"name": "x", "budgets_ms": [1.0]}]})
    assert config.algorithm == "rl"


def test_the_cli_reaches_every_algorithm():
    parser = build_parser()
    for name in ALGORITHMS:
        args = parser.parse_args(["search", "--supernet", "s.pt", "--device", "local", "--algorithm", name])
        assert args.algorithm == name
