"""Random search, the baseline every search algorithm must beat: uniform archs, keep the best feasible one."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgenas.genome import ArchBatch
from edgenas.search.loop import NoFeasibleArch, SearchAlgorithm
from edgenas.search.problem import Evaluation
from edgenas.space import SearchSpace


class RandomSearch(SearchAlgorithm):
    """Ask/tell random search: `budget` uniformly sampled candidates, in batches of `batch_size`."""

    name = "random"

    def __init__(self, space: SearchSpace, *, rng: np.random.Generator, budget: int = 10_000,
                 batch_size: int = 1_000) -> None:
        super().__init__(space, rng)
        if budget < 1:
            raise ValueError(f"random-search budget {budget} must be at least 1")
        self.budget = int(budget)
        self.batch_size = int(batch_size)

    def config(self) -> dict[str, Any]:
        return {"budget": self.budget, "batch_size": self.batch_size}

    @property
    def done(self) -> bool:
        return self.told >= self.budget

    def ask(self) -> ArchBatch:
        return ArchBatch(self.codec, self.codec.sample(self.rng, min(self.batch_size, self.budget - self.told)))

    def tell(self, batch: ArchBatch, evaluation: Evaluation) -> None:
        self._record(batch, evaluation)
        if self.done and len(self.archive) == 0:
            raise NoFeasibleArch(f"none of {self.told} random archs is feasible")
