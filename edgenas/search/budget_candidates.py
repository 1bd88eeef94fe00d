"""One budget's candidates: the search at the budget and at tighter margins, merged into one ranked list.

`edgenas search` and `edgenas run` both call `search_for_budget`, so for the same predictors, constraints,
algorithm and seed they hand the same candidates to the deploy stage (`edgenas.deploy`), which measures
them and picks the winner by the one rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from edgenas.errors import UsageError
from edgenas.search.loop import SearchResult, run_search
from edgenas.search.problem import Constraints, Predictor, Problem
from edgenas.search.registry import check_algorithm, create_algorithm
from edgenas.search.search_settings import DEFAULT_POPULATION, DEFAULT_TOP_K
from edgenas.space import SearchSpace

# The predictor is within a few per cent of the device, so the arch that sits exactly on the budget by
# prediction measures over it about half the time. Searching also at tighter budgets gives the deploy
# stage candidates below the budget by more than the predictor's error; the most accurate candidate that
# meets the budget when measured wins (edgenas.devices.measurement.meets_budget). The margins are fixed:
# a calibrated predictor's held-out error is of this order on the devices measured so far (docs/decisions.md).
SEARCH_MARGINS = (1.0, 0.93, 0.86)


def search_for_budget(
    space: SearchSpace,
    accuracy: Predictor,
    latency: Predictor | None,
    constraints: Constraints,
    *,
    algorithm: str = "evolution",
    population: int = DEFAULT_POPULATION,
    generations: int | None = None,
    seed: int = 0,
    top_k: int = DEFAULT_TOP_K,
    device: str | None = None,
    margins: Sequence[float] = SEARCH_MARGINS,
    latency_scale: float = 1.0,
    patches: str | int | None = None,
    int8_io: bool = False,
    normalised_input: bool = False,
) -> SearchResult:
    """Search `space` under `constraints` and return the result whose `top` holds the candidates to deploy.

    With a latency limit and a single-objective algorithm, the search runs once per margin (each from a
    generator seeded with `seed`) at `limit * margin`; the best arch of each margin comes first, then the
    top of the full-budget search, distinct, at most `max(top_k, margins)` of them. A limit no arch meets
    raises `InfeasibleConstraintError` (a UsageError) naming the smallest achievable values; a tighter
    margin that is infeasible only ends the list early. A Pareto algorithm (NSGA-II) runs once.

    `latency_scale` multiplies every predicted latency (what the deploy stage measured against what was
    predicted, for a second round): the search runs at `limit / latency_scale`. The result holds `constraints`,
    the budget it was searched for; the margins and the factor are in its config.
    """
    if not latency_scale > 0:
        raise ValueError(f"latency_scale {latency_scale} must be positive")
    entry = check_algorithm(algorithm)
    if constraints.max_latency_ms is None or entry.pareto:
        margins = (1.0,)
    results: list[SearchResult] = []
    for margin in margins:
        limit = None if constraints.max_latency_ms is None else constraints.max_latency_ms * margin / latency_scale
        problem = Problem(space, accuracy, latency, replace(constraints, max_latency_ms=limit), device=device,
                          score_infeasible=entry.scores_infeasible, int8_io=int8_io or patches is not None,
                          patches=patches, normalised_input=normalised_input)
        search = create_algorithm(algorithm, space, rng=np.random.default_rng(seed), population=population,
                                  generations=generations, n_constraints=len(problem.limit_names))
        try:
            results.append(run_search(search, problem, top_k=top_k))
        except UsageError:
            if not results:
                raise
            break
    result = replace(results[0], constraints=constraints)
    if len(results) > 1:
        picks = list(dict.fromkeys([r.best.arch for r in results] + [c.arch for c in result.top]))
        picks = picks[: max(top_k, len(results))]
        by_arch = {c.arch: c for r in reversed(results) for c in [r.best, *r.top]}
        result.top = [by_arch[a] for a in picks]
        result.config = {**result.config, "margins": list(margins[: len(results)])}
    if latency_scale != 1.0:
        result.config = {**result.config, "latency_scale": latency_scale}
    if patches is not None:  # the schedule each kept arch was judged on: (ops, n), or None for the whole map
        schedules = {str(c.arch): problem.patch_schedule(c.arch) for c in [result.best, *result.top]}
        result.config = {**result.config, "patches": patches, "patch_schedules": schedules,
                         "normalised_input": normalised_input}
    return result
