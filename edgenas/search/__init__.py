"""Search over archs under device constraints: constrained evolution, NSGA-II Pareto search, random search.

Search never touches a `torch.nn.Module` and imports no torch: it sees archs, predictors (anything with
`.predict(archs)`) and constraints. Differentiable search trains weights, so it lives beside training
(`edgenas.train.differentiable`). Public interface:

    Problem(space, accuracy, latency, Constraints(...), device=...)   batched, cached evaluation
    Evolution / NSGA2 / RandomSearch(space, rng=..., ...)             ask() / tell(batch, evaluation)
    RLSearch(space, rng=..., config=RLConfig(...))                     REINFORCE controller, MnasNet reward
    run_search(search, problem, top_k=5) -> SearchResult              the driving loop
    InfeasibleConstraintError                                         names the smallest achievable values
"""

from __future__ import annotations

from edgenas._lazy import lazy_attributes

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
    "run_search": "edgenas.search.loop",
    "SearchResult": "edgenas.search.loop",
    "Candidate": "edgenas.search.loop",
    "GenomeCodec": "edgenas.genome",
    "ArchBatch": "edgenas.genome",
    "RLSearch": "edgenas.search.rl",
    "RLConfig": "edgenas.search.rl",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes('edgenas.search', _LAZY, globals())
