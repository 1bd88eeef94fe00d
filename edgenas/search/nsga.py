"""Multi-objective search: NSGA-II (pymoo) for the Pareto front of predicted accuracy against latency.

pymoo supplies non-dominated sorting, crowding distance and constraint domination; the variation
operators are edgenas's own genome operators (uniform crossover, per-gene resampling, canonical
repair so duplicate archs are recognised), so every candidate is a valid arch. pymoo's own random
state is seeded from the caller's Generator, and pymoo 0.6.2 passes it to every operator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgenas.genome import ArchBatch, GenomeCodec
from edgenas.search.loop import NoFeasibleArch, SearchAlgorithm
from edgenas.search.problem import Evaluation
from edgenas.space import SearchSpace


@dataclass(frozen=True)
class NSGA2Config:
    population: int = 100
    generations: int = 100
    mutate_prob: float = 0.1

    def __post_init__(self) -> None:
        if self.population < 4:
            raise ValueError(f"NSGA-II population {self.population} must be at least 4")
        if self.generations < 1:
            raise ValueError(f"NSGA-II generations {self.generations} must be at least 1")


def _operators(codec: GenomeCodec, mutate_prob: float):
    # deferred: pymoo loads only when this runs, not on import
    from pymoo.core.crossover import Crossover
    from pymoo.core.mutation import Mutation
    from pymoo.core.repair import Repair
    from pymoo.core.sampling import Sampling

    class GenomeSampling(Sampling):
        def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
            return codec.sample(random_state, n_samples)

    class GenomeCrossover(Crossover):
        def __init__(self) -> None:
            super().__init__(2, 2, prob=1.0)

        def _do(self, problem, X, *args, random_state=None, **kwargs):
            a, b = X[0].astype(np.int64), X[1].astype(np.int64)
            take_a = random_state.random(a.shape) < 0.5
            return np.stack([np.where(take_a, a, b), np.where(take_a, b, a)])

    class GenomeMutation(Mutation):
        def _do(self, problem, X, *args, random_state=None, **kwargs):
            return codec.mutate(X.astype(np.int64), random_state, mutate_prob)

    class CanonicalRepair(Repair):
        def _do(self, problem, X, **kwargs):
            return codec.canonical(np.asarray(X, dtype=np.int64))

    return GenomeSampling(), GenomeCrossover(), GenomeMutation(), CanonicalRepair()


class NSGA2(SearchAlgorithm):
    """Ask/tell NSGA-II maximising predicted accuracy and minimising latency (MACs without a latency
    predictor), constraints handled by constraint domination."""

    name = "nsga2"

    def __init__(self, space: SearchSpace, *, rng: np.random.Generator, n_constraints: int,
                 config: NSGA2Config | None = None) -> None:
        super().__init__(space, rng)
        # deferred: pymoo loads only when this runs, not on import
        from pymoo.algorithms.moo.nsga2 import NSGA2 as PymooNSGA2
        from pymoo.core.problem import Problem as PymooProblem

        self.cfg = config or NSGA2Config()
        sampling, crossover, mutation, repair = _operators(self.codec, self.cfg.mutate_prob)
        self._problem = PymooProblem(n_var=self.codec.width, n_obj=2, n_ieq_constr=n_constraints, xl=0,
                                     xu=self.codec.cardinality - 1, vtype=int)
        self._algorithm = PymooNSGA2(pop_size=self.cfg.population, sampling=sampling, crossover=crossover,
                                     mutation=mutation, repair=repair, eliminate_duplicates=True)
        self._algorithm.setup(self._problem, termination=("n_gen", self.cfg.generations),
                              seed=int(rng.integers(2**31 - 1)), verbose=False)
        self._pending = None
        self.n_constraints = n_constraints

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    @property
    def done(self) -> bool:
        return not self._algorithm.has_next()

    def ask(self) -> ArchBatch:
        self._pending = self._algorithm.ask()
        return ArchBatch(self.codec, np.asarray(self._pending.get("X"), dtype=np.int64))

    def tell(self, batch: ArchBatch, evaluation: Evaluation) -> None:
        # deferred: pymoo loads only when this runs, not on import
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        self._record(batch, evaluation)
        cost = evaluation.latency_ms if not np.all(np.isnan(evaluation.latency_ms)) else evaluation.macs
        F = np.stack([-evaluation.accuracy, cost.astype(np.float64)], axis=1)
        kwargs = {"F": F}
        if self.n_constraints:
            kwargs["G"] = np.minimum(evaluation.violation, 1e6)  # pymoo wants finite values
        Evaluator().eval(StaticProblem(self._problem, **kwargs), self._pending)
        self._algorithm.tell(infills=self._pending)
        self._pending = None
        if self.done and len(self.archive) == 0:
            raise NoFeasibleArch(f"no feasible arch in {self.cfg.generations} NSGA-II generations")
