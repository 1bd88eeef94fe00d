"""Search algorithms by name: every ask/tell strategy the package has, created from one population/generations pair.

Like timm's model registry, each entry is a small function; `create_algorithm("nsga2", space, rng=...)` is how
the CLI (`edgenas search --algorithm`) and the run config (`algorithm = "..."`) reach them. Nothing registers
itself on import: the table below is the whole list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgenas.errors import UsageError, did_you_mean
from edgenas.search.evolution import Evolution, EvolutionConfig
from edgenas.search.loop import SearchAlgorithm
from edgenas.search.nsga import NSGA2, NSGA2Config
from edgenas.search.random_search import RandomSearch
from edgenas.search.rl import RLConfig, RLSearch
from edgenas.space import SearchSpace


@dataclass(frozen=True)
class AlgorithmEntry:
    """One strategy: how to build it, its default number of generations, and a line for `--help`."""

    build: Callable[[SearchSpace, np.random.Generator, int, int, int], SearchAlgorithm]
    default_generations: int
    pareto: bool
    help: str
    scores_infeasible: bool = True  # whether it reads the accuracy of candidates over the latency limit


def _evolution(space: SearchSpace, rng: np.random.Generator, population: int, generations: int,
               n_constraints: int) -> SearchAlgorithm:
    return Evolution(space, rng=rng, config=EvolutionConfig(population=population, generations=generations))


def _nsga2(space: SearchSpace, rng: np.random.Generator, population: int, generations: int,
           n_constraints: int) -> SearchAlgorithm:
    return NSGA2(space, rng=rng, n_constraints=n_constraints,
                 config=NSGA2Config(population=population, generations=generations))


def _random(space: SearchSpace, rng: np.random.Generator, population: int, generations: int,
            n_constraints: int) -> SearchAlgorithm:
    return RandomSearch(space, rng=rng, budget=population * generations, batch_size=population)


def _rl(space: SearchSpace, rng: np.random.Generator, population: int, generations: int,
        n_constraints: int) -> SearchAlgorithm:
    return RLSearch(space, rng=rng, config=RLConfig(steps=generations, batch_size=population))


ALGORITHMS: dict[str, AlgorithmEntry] = {
    "evolution": AlgorithmEntry(_evolution, 500, False, "constrained regularised evolution (the default)",
                                scores_infeasible=False),
    "nsga2": AlgorithmEntry(_nsga2, 100, True, "NSGA-II: the whole accuracy/latency Pareto front"),
    "random": AlgorithmEntry(_random, 100, False, "uniform random sampling, population x generations archs"),
    "rl": AlgorithmEntry(_rl, 100, False, "REINFORCE controller, MnasNet reward (generations = policy steps)"),
}


def algorithm_names() -> tuple[str, ...]:
    return tuple(ALGORITHMS)


def check_algorithm(name: str) -> AlgorithmEntry:
    """The registry entry of `name`, or one line naming the choices."""
    if name not in ALGORITHMS:
        raise UsageError(f"unknown search algorithm {name!r}{did_you_mean(name, ALGORITHMS)}: "
                         f"choose from {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def create_algorithm(name: str, space: SearchSpace, *, rng: np.random.Generator, population: int = 100,
                     generations: int | None = None, n_constraints: int = 0) -> SearchAlgorithm:
    """A fresh `name` search over `space` (generations: the algorithm's default when None)."""
    entry = check_algorithm(name)
    return entry.build(space, rng, population, entry.default_generations if generations is None else generations,
                       n_constraints)
