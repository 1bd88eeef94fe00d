"""Search over archs under device constraints: constrained evolution, NSGA-II Pareto search, random search.

Search never touches a `torch.nn.Module`: it sees archs, predictors (anything with
`.predict(archs)`) and constraints. Public interface:

    Problem(space, accuracy, latency, Constraints(...), device=...)   batched, cached evaluation
    Evolution / NSGA2 / RandomSearch(space, rng=..., ...)             ask() / tell(batch, evaluation)
    run_search(search, problem, top_k=5) -> SearchResult              the driving loop
    InfeasibleConstraintError                                         names the smallest achievable values
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Problem": "edgenas.search.problem",
    "Constraints": "edgenas.search.problem",
    "Evaluation": "edgenas.search.problem",
    "Predictor": "edgenas.search.problem",
    "InfeasibleConstraintError": "edgenas.search.problem",
    "Evolution": "edgenas.search.evolution",
    "EvolutionConfig": "edgenas.search.evolution",
    "NSGA2": "edgenas.search.nsga",
    "NSGA2Config": "edgenas.search.nsga",
    "RandomSearch": "edgenas.search.random_search",
    "run_search": "edgenas.search.base",
    "SearchResult": "edgenas.search.base",
    "Candidate": "edgenas.search.base",
    "GenomeCodec": "edgenas.search.genome",
    "ArchBatch": "edgenas.search.genome",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgenas.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
