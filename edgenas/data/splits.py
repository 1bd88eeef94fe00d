"""The train / val / holdout splits: stratified by class and seeded, the same for in-memory and streamed data; and
the order an epoch reads a split in (`EpochOrder`), which both loaders share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from edgenas.errors import UsageError

SPLITS = ("train", "val", "holdout")


def stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, taken): `fraction` of every class taken, in random order."""
    keep, taken = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * len(idx)))
        taken.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(taken))


def split_indices(y: np.ndarray, *, seed: int, val_fraction: float, holdout_fraction: float, min_holdout: int,
                  official_val: bool) -> dict[str, np.ndarray]:
    """Indices into `y` of each split, stratified and seeded by `seed`.

    Without an official validation set, `val` is `val_fraction` of every class; the holdout is `holdout_fraction`
    of the rest, but at least `min_holdout` images (never more than a quarter). With one, no `val` key."""
    rng = np.random.default_rng([seed, 3])
    base = np.arange(len(y))
    out: dict[str, np.ndarray] = {}
    if not official_val:
        if not 0.0 < val_fraction < 1.0:
            raise UsageError(f"val_fraction {val_fraction} must be between 0 and 1")
        base, out["val"] = stratified_split(y, val_fraction, rng)
    n = max(1, len(base))
    n_hold = max(int(round(holdout_fraction * len(base))), min(min_holdout, len(base) // 4))
    keep, hold = stratified_split(y[base], n_hold / n, rng)
    out["train"], out["holdout"] = base[keep], base[hold]
    return out


class SplitSizes:
    """What a dataset holding `labels` per split answers alike, in memory or streamed: a split's size, and the check
    of a split's name."""

    labels: dict[str, np.ndarray]

    def size(self, split: str) -> int:
        return int(len(self.labels[self._split(split)]))

    def _split(self, split: str) -> str:
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
        return split


class EpochOrder:
    """Which images each batch of an epoch holds: a permutation from (seed, epoch) when shuffling, each rank an
    equal, disjoint shard of it under `world_size > 1`; what the in-memory and the streaming loader share, so both
    read the same images in the same order. Subclasses read the batches (`iterate(epoch, start)`)."""

    def __init__(self, dataset: Any, split: str, *, batch_size: int, resolution: int | None, shuffle: bool,
                 augment: bool, seed: int, rank: int, world_size: int, drop_last: bool, epoch: int) -> None:
        if batch_size < 1:
            raise UsageError(f"batch size {batch_size} must be at least 1")
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is outside a world of size {world_size}")
        self.dataset, self.split = dataset, split
        self.batch_size, self.resolution = batch_size, resolution
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.rank, self.world_size, self.drop_last, self.epoch = rank, world_size, drop_last, epoch
        n = dataset.size(split)
        self.shard_size = n // world_size if world_size > 1 else n
        if self.shard_size < 1 or (drop_last and self.shard_size < batch_size):
            raise UsageError(f"the {split} split of {dataset.spec} has {n} images: too few for batches of "
                             f"{batch_size} on {world_size} process(es); lower the batch size")

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size // self.batch_size
        return -(-self.shard_size // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self.iterate(self.epoch)

    def iterate(self, epoch: int, start: int = 0) -> Iterator[tuple[Any, Any]]:
        raise NotImplementedError

    def indices(self, epoch: int) -> np.ndarray:
        n = self.dataset.size(self.split)
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(n) if self.shuffle else np.arange(n)
        if self.world_size > 1:
            order = order[: self.shard_size * self.world_size][self.rank:: self.world_size]
        return order
