"""The accuracy dataset: sample subnets, evaluate each on the holdout split, keep (arch, top-1) in the store.

Sampling mixes uniform archs with archs spread evenly over the cost range (latency when a latency
predictor is given, else MACs), so the predictor sees the small and large ends that uniform sampling
rarely draws. Every evaluation is committed to the SQLite store the moment it is done, keyed by
supernet sha256, dataset fingerprint, split, arch and metric: an interrupted build resumes where it
stopped, and ranks of a `torchrun` (or worker processes) share the work by taking every n-th arch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgenas.genome import GenomeCodec
from edgenas.progress import Progress
from edgenas.space import Arch, SearchSpace

METRIC = "top1"


def top1_metric(bn_batches: int) -> str:
    """The store's metric name for top-1 after BN recalibration on `bn_batches` batches: figures taken with
    another batch count differ (by 0.7 points between two seeds at 2 batches, 0.35 at 8, on `shapes`), so
    they are kept apart and never reused for one another."""
    return f"{METRIC}@bn{int(bn_batches)}"
EvaluateFn = Callable[[Arch], float]


def sample_archs(space: SearchSpace, n: int, rng: np.random.Generator, *,
                 cost: Callable[[Sequence[Arch]], np.ndarray] | None = None,
                 uniform_fraction: float = 0.5, pool_factor: int = 20) -> list[Arch]:
    """`n` distinct archs: `uniform_fraction` of them uniform, the rest spread evenly over the range of
    `cost(archs)` (default: MACs) by drawing a large uniform pool and taking one arch per cost bin."""
    if n < 1:
        raise ValueError(f"number of archs {n} must be at least 1")
    codec = GenomeCodec(space)
    genomes = codec.canonical(codec.sample(rng, max(n * pool_factor, 64)))
    _, first = np.unique(codec.keys(genomes), return_index=True)
    pool = genomes[np.sort(first)]  # distinct archs in the order drawn
    n_uniform = min(int(round(n * uniform_fraction)), len(pool))
    uniform, rest = pool[:n_uniform], pool[n_uniform:]
    n_spread = min(n - n_uniform, len(rest))
    if n_spread == 0:
        return codec.to_archs(uniform)
    values = np.asarray(cost(codec.to_archs(rest)) if cost else codec.stats(rest)["macs"], dtype=np.float64)
    edges = np.linspace(values.min(), values.max(), n_spread + 1)
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n_spread - 1)
    _, firsts = np.unique(bins, return_index=True)  # the first pool arch of every occupied bin
    picked = np.zeros(len(rest), dtype=bool)
    picked[firsts] = True
    fill = np.flatnonzero(~picked)[: n_spread - len(firsts)]  # empty bins: more archs in draw order
    spread = rest[np.sort(np.concatenate([firsts, fill]))]
    return codec.to_archs(np.concatenate([uniform, spread]))


def shard(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """This rank's share: every `world_size`-th item starting at `rank`."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    return list(items[rank::world_size])


def dist_rank() -> tuple[int, int]:
    """(rank, world size) under torchrun (RANK / WORLD_SIZE), else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class AccuracyDataset:
    """(arch, top-1) pairs of one supernet on one dataset split, stored in a `Store`."""

    store: Any  # edgenas.store.Store
    supernet_sha256: str
    dataset: str  # the dataset's fingerprint
    split: str = "holdout"
    metric: str = METRIC

    def _key(self, arch: Arch) -> dict[str, Any]:
        return {"supernet_sha256": self.supernet_sha256, "dataset": self.dataset, "split": self.split,
                "arch": arch, "metric": self.metric}

    def add(self, arch: Arch, value: float, extra: dict[str, Any] | None = None) -> None:
        """Commit one arch's figure."""
        self.store.add_evaluation(**self._key(arch), value=value, extra=extra)

    def missing(self, archs: Sequence[Arch]) -> list[Arch]:
        done = {Arch.from_dict(e.arch) for e in self.store.evaluations(
            self.supernet_sha256, self.split, self.metric, dataset=self.dataset)}
        return [a for a in archs if a not in done]

    def build(self, archs: Sequence[Arch], evaluate: EvaluateFn, *, rank: int = 0, world_size: int = 1,
              progress: bool = True, extra: dict[str, Any] | None = None) -> int:
        """Evaluate this rank's share of `archs` that the store lacks, committing each result at once.
        Returns how many were evaluated now."""
        # this rank's share of `archs` first, then what the store lacks of it: every rank takes the same share
        # whenever it starts (sharding what is missing would shift a late rank's share by the archs an early one
        # already committed, leaving some archs to no rank)
        missing = set(self.missing(archs))
        todo = [a for a in shard(list(archs), rank, world_size) if a in missing]
        desc = f"accuracy of subnets ({self.split})" + (f" rank {rank}/{world_size}" if world_size > 1 else "")
        done = 0
        with Progress(len(todo), desc, unit="arch", enabled=progress) as bar:
            for arch in todo:
                t0 = time.perf_counter()
                value = float(evaluate(arch))
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"the evaluation function returned top-1 {value} for {arch}: expected [0, 1]")
                self.add(arch, value, {"seconds": round(time.perf_counter() - t0, 4), **(extra or {})})
                done += 1
                bar.update(1, top1=value)
        return done

    def wait_for(self, archs: Sequence[Arch], *, timeout_s: float = 24 * 3600, poll_s: float = 2.0) -> None:
        """Block until every arch is in the store (rank 0 waiting for the other ranks)."""
        deadline = time.monotonic() + timeout_s
        while self.missing(archs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.missing(archs))} archs still unevaluated after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def load(self, archs: Sequence[Arch] | None = None) -> tuple[list[Arch], np.ndarray]:
        """Stored (archs, accuracies), oldest first; only `archs` (in their order) when given."""
        rows = self.store.evaluations(self.supernet_sha256, self.split, self.metric, dataset=self.dataset)
        values = {Arch.from_dict(e.arch): e.value for e in rows}
        if archs is None:
            keys = list(values)
        else:
            keys = [a for a in archs if a in values]
        return keys, np.array([values[a] for a in keys], dtype=np.float64)
