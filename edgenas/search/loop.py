"""The ask/tell contract every search algorithm keeps, its archive of feasible candidates, and the driving loop.

An outside loop can drive any algorithm:

    search = Evolution(space, rng=np.random.default_rng(0))
    while not search.done:
        batch = search.ask()                 # an ArchBatch: a sequence of archs (and their genomes)
        search.tell(batch, problem.evaluate(batch.genomes))
    result = search.result(problem)

`run_search(search, problem)` is that loop, plus turning "nothing feasible" into an error that names
the smallest achievable values.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgenas.genome import ArchBatch, GenomeCodec
from edgenas.search.problem import Constraints, Evaluation, Problem
from edgenas.space import Arch, SearchSpace


class NoFeasibleArch(RuntimeError):
    """An algorithm found no candidate meeting the constraints within its sampling rounds."""


@dataclass
class Candidate:
    """One arch with its predicted (and, after verification, measured) figures."""

    arch: Arch
    predicted: dict[str, float]
    measured: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "predicted": self.predicted, "measured": self.measured}


@dataclass
class SearchResult:
    """What a search found: the best arch, the top candidates, the accuracy/latency front, and its cost."""

    algorithm: str
    space: str
    device: str | None
    constraints: Constraints  # the budget searched for (a tighter margin's limit is in `config`)
    config: dict[str, Any]
    best: Candidate
    top: list[Candidate]
    front: list[Candidate]
    candidates: int
    predicted: int
    seconds: float
    history: list[float] = field(default_factory=list)  # best feasible predicted accuracy per step

    @property
    def arch(self) -> Arch:
        return self.best.arch

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.best.arch.to_dict(),
            "algorithm": self.algorithm,
            "space": self.space,
            "device": self.device,
            "constraints": self.constraints.to_dict(),
            "config": self.config,
            "best": self.best.to_dict(),
            "top": [c.to_dict() for c in self.top],
            "front": [c.to_dict() for c in self.front],
            "candidates": self.candidates,
            "predicted": self.predicted,
            "seconds": round(self.seconds, 4),
            "history": [round(h, 6) for h in self.history],
        }


class Archive:
    """Every feasible candidate told so far (genomes and metrics), for top-k and the Pareto front."""

    def __init__(self, codec: GenomeCodec) -> None:
        self.codec = codec
        self._genomes: list[np.ndarray] = []
        self._evals: list[Evaluation] = []
        self._unique: tuple[np.ndarray, Evaluation] | None = None  # `unique()` until the next `add`

    def add(self, genomes: np.ndarray, ev: Evaluation) -> None:
        mask = ev.feasible
        if mask.any():
            self._genomes.append(genomes[mask])
            self._evals.append(ev.take(mask))
            self._unique = None

    def __len__(self) -> int:
        return sum(len(g) for g in self._genomes)

    def unique(self) -> tuple[np.ndarray, Evaluation]:
        """Distinct feasible archs, best predicted accuracy first (ties in first-seen order)."""
        if not self._genomes:
            raise NoFeasibleArch("no feasible candidate was evaluated")
        if self._unique is not None:
            return self._unique
        genomes = np.concatenate(self._genomes)
        ev = Evaluation.concat(self._evals)
        canon = self.codec.canonical(genomes)
        _, first = np.unique(self.codec.keys(canon), return_index=True)
        first.sort()
        order = first[np.argsort(-ev.accuracy[first], kind="stable")]
        self._unique = canon[order], ev.take(order)
        return self._unique

    def top(self, k: int) -> tuple[np.ndarray, Evaluation]:
        g, ev = self.unique()
        return g[:k], ev.take(np.arange(min(k, len(g))))

    def front(self) -> tuple[np.ndarray, Evaluation]:
        """Non-dominated archs: higher predicted accuracy and lower latency (lower MACs without a latency predictor)."""
        g, ev = self.unique()
        cost = ev.latency_ms if not np.all(np.isnan(ev.latency_ms)) else ev.macs.astype(np.float64)
        keep = pareto_indices(ev.accuracy, cost)
        return g[keep], ev.take(keep)


def pareto_indices(accuracy: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats in both (higher accuracy, lower cost), by rising cost."""
    order = np.lexsort((-accuracy, cost))  # by cost, then best accuracy first
    best = -np.inf
    keep = []
    for i in order:
        if accuracy[i] > best:
            keep.append(i)
            best = accuracy[i]
    return np.asarray(keep, dtype=np.int64)


class SearchAlgorithm:
    """Base of the ask/tell algorithms: holds the codec, the random generator and the archive."""

    name = "search"

    def __init__(self, space: SearchSpace, rng: np.random.Generator) -> None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.space = space
        self.codec = GenomeCodec(space)
        self.rng = rng
        self.archive = Archive(self.codec)
        self.history: list[float] = []
        self.told = 0

    @property
    def done(self) -> bool:
        raise NotImplementedError

    def ask(self) -> ArchBatch:
        raise NotImplementedError

    def tell(self, batch: ArchBatch, evaluation: Evaluation) -> None:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {}

    def _record(self, batch: ArchBatch, ev: Evaluation) -> None:
        if len(ev) != len(batch):
            raise ValueError(f"told {len(ev)} evaluations for a batch of {len(batch)} candidates")
        self.told += len(batch)
        self.archive.add(batch.genomes, ev)
        best = self.history[-1] if self.history else -np.inf
        if ev.feasible.any():
            best = max(best, float(ev.accuracy[ev.feasible].max()))
        self.history.append(best)

    def result(self, problem: Problem, *, top_k: int = 5, seconds: float = 0.0) -> SearchResult:
        genomes, ev = self.archive.top(max(top_k, 1))
        ev = problem.with_memory(genomes, ev)
        top = [Candidate(self.codec.to_arch(g), ev.row(i)) for i, g in enumerate(genomes)]
        fg, fev = self.archive.front()
        fev = problem.with_memory(fg, fev)
        front = [Candidate(self.codec.to_arch(g), fev.row(i)) for i, g in enumerate(fg)]
        return SearchResult(
            algorithm=self.name, space=self.space.name, device=problem.device,
            constraints=problem.constraints, config=self.config(), best=top[0], top=top,
            front=front, candidates=problem.candidates, predicted=problem.predicted, seconds=seconds,
            history=list(self.history),
        )


def run_search(search: SearchAlgorithm, problem: Problem, *, top_k: int = 5) -> SearchResult:
    """Drive `search` with `problem` until done; an impossible constraint raises InfeasibleConstraintError."""
    if problem.space != search.space:
        raise ValueError(f"the search is over space '{search.space.name}' but the problem over '{problem.space.name}'")
    t0 = time.perf_counter()
    with _blas_threads(1):  # batches of ~100 archs: BLAS threads only add overhead (10-40x under load, measured)
        # A limit below what the space can reach is reported at once (its own generator: the search's is untouched).
        smallest = problem.smallest_achievable(np.random.default_rng(0))
        limits = problem.constraints.limits()
        if any(smallest[k] > limits[k] for k in smallest):
            raise problem.infeasible_error(smallest)
        try:
            while not search.done:
                batch = search.ask()
                search.tell(batch, problem.evaluate(batch.genomes))
        except NoFeasibleArch:
            raise problem.infeasible_error(problem.smallest_achievable(search.rng)) from None
    return search.result(problem, top_k=top_k, seconds=time.perf_counter() - t0)


@contextlib.contextmanager
def _blas_threads(n: int) -> Iterator[None]:
    try:
        # deferred: threadpoolctl (comes with scikit-learn) loads only when this runs, not on import
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        yield
        return
    with threadpool_limits(n):
        yield
