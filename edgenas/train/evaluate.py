"""Top-1 accuracy of supernet subnets on a dataset split, each after BatchNorm recalibration.

The supernet's own BN statistics, active arch and train/eval mode are restored afterwards, so
evaluating one arch never changes what another arch sees. `evaluate_many` reads the split once per
resolution: every arch of that resolution has its BN statistics re-estimated (on the same training batches)
and kept as a copy of the BN buffers, then each batch of the split runs through every one of them. Memory
holds one batch of the split and the calibration batches of one resolution, whatever the split's size: the
split held whole at each resolution (800 validation photos at 224 px are 0.48 GB of float32) made a
training's final check grow with the folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from edgenas.data import Dataset
from edgenas.errors import UsageError
from edgenas.progress import Progress
from edgenas.space import Arch
from edgenas.supernet import Supernet
from edgenas.train.bn import bn_state, load_bn_state, preserved_bn, recalibrate_bn


def _as_arch(supernet: Supernet, arch: Any) -> Arch:
    return supernet.space.validate(arch) if isinstance(arch, Arch) else supernet.space.parse_arch(arch)


def _check_fits(supernet: Supernet, dataset: Dataset) -> None:
    if dataset.in_channels != supernet.space.in_channels or dataset.num_classes != supernet.num_classes:
        raise UsageError(f"dataset {dataset.spec} ({dataset.in_channels} channels, {dataset.num_classes} classes) does "
                         f"not fit this supernet ({supernet.space.in_channels} channels, {supernet.num_classes} classes)")


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


class _Batches:
    """Calibration batches of one resolution at a time (loaded once, the same for every arch of it) and the
    split's batches, read anew each time (never held whole)."""

    def __init__(self, dataset: Dataset, split: str, bn_batches: int, batch_size: int, seed: int,
                 device: torch.device, limit: int | None = None) -> None:
        self.dataset, self.split, self.bn_batches, self.limit = dataset, split, bn_batches, limit
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self._calibration: tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def calibration(self, resolution: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._calibration is None or self._calibration[0] != resolution:
            self._calibration = None  # the previous resolution's batches go before the next ones load
            loader = self.dataset.loader("train", batch_size=self.batch_size, resolution=resolution, shuffle=True,
                                         seed=self.seed)
            batches = []
            for i, (x, y) in enumerate(loader):
                if i >= self.bn_batches:
                    break
                batches.append((_channels_last(x.to(self.device)), y.to(self.device)))
            self._calibration = (resolution, batches)
        return self._calibration[1]

    def evaluation(self, resolution: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split's batches at `resolution`, read as they are used; with `limit`, a seeded sample of that many
        images (not the split's first: a folder's are in class order)."""
        if self.limit is None:
            loader = self.dataset.loader(self.split, batch_size=self.batch_size, resolution=resolution)
            return ((_channels_last(x.to(self.device)), y.to(self.device)) for x, y in loader)
        return self._sample(resolution, self.limit)

    def _sample(self, resolution: int, limit: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = self.dataset.loader(self.split, batch_size=self.batch_size, resolution=resolution, shuffle=True,
                                     seed=self.seed + 1)
        seen = 0
        for x, y in loader:
            if seen >= limit:
                break
            x, y = x[: limit - seen], y[: limit - seen]
            yield _channels_last(x.to(self.device)), y.to(self.device)
            seen += len(y)


@torch.no_grad()
def _correct_many(supernet: Supernet, archs: Sequence[Arch], batches: _Batches,
                  done: Callable[[list[int], list[torch.Tensor]], None] | None = None) -> list[torch.Tensor]:
    """Per arch, per image of the split in its order: whether the arch's top-1 class is the label. Archs are
    taken a resolution at a time: each one's BN statistics are re-estimated and copied (the BN buffers), then
    the split is read once and every batch runs through each arch with its own statistics. `done(indices, hits)`
    hears each resolution's archs as they finish."""
    out: list[torch.Tensor] = [torch.zeros(0, dtype=torch.bool)] * len(archs)
    by_resolution: dict[int, list[int]] = {}
    for k, arch in enumerate(archs):
        by_resolution.setdefault(arch.resolution, []).append(k)
    for resolution, indices in by_resolution.items():
        states = []
        for k in indices:
            supernet.set_active(archs[k])
            recalibrate_bn(supernet, batches.calibration(resolution))
            states.append(bn_state(supernet))
        supernet.eval()
        hits: list[list[torch.Tensor]] = [[] for _ in indices]
        for x, y in batches.evaluation(resolution):
            for n, (k, state) in enumerate(zip(indices, states)):
                if len(indices) > 1:
                    supernet.set_active(archs[k])
                    load_bn_state(supernet, state)
                hits[n].append(supernet(x).argmax(1) == y)
        for n, k in enumerate(indices):
            out[k] = torch.cat(hits[n]) if hits[n] else torch.zeros(0, dtype=torch.bool)
        if done is not None:
            done(indices, [out[k] for k in indices])
    return out


def evaluate_many(supernet: Supernet, archs: Sequence[Arch | Any], dataset: Dataset, split: str = "val", *,
                  bn_batches: int = 8, batch_size: int = 64, seed: int = 0, progress: bool = False,
                  limit: int | None = None) -> list[float]:
    """Top-1 in [0, 1] of each arch on `split`, each after BN recalibration on `bn_batches` training batches; with
    `limit`, on that many of the split's images (a seeded sample, without augmentation)."""
    archs = [_as_arch(supernet, a) for a in archs]
    _check_fits(supernet, dataset)
    device = next(supernet.parameters()).device
    batches = _Batches(dataset, split, bn_batches, batch_size, seed, device, limit)
    previous, was_training = supernet.active_arch, supernet.training
    try:
        with preserved_bn(supernet), Progress(len(archs), f"evaluate {split}", unit="arch",
                                              enabled=progress) as bar:
            def done(indices: list[int], hits: list[torch.Tensor]) -> None:
                top1 = [_mean(h) for h in hits]
                bar.update(len(indices), top1=max(top1))

            return [_mean(h) for h in _correct_many(supernet, archs, batches, done)]
    finally:
        supernet.set_active(previous)
        supernet.train(was_training)


def _mean(correct: torch.Tensor) -> float:
    return float(correct.float().mean()) if correct.numel() else 0.0


def evaluate(supernet: Supernet, arch: Arch | Any, dataset: Dataset, split: str = "val", *, bn_batches: int = 8,
             batch_size: int = 64, seed: int = 0) -> float:
    """Top-1 in [0, 1] of one arch on `split` after BN recalibration; the supernet's BN statistics are kept."""
    return evaluate_many(supernet, [arch], dataset, split, bn_batches=bn_batches, batch_size=batch_size, seed=seed)[0]


def evaluate_correct(supernet: Supernet, arch: Arch | Any, dataset: Dataset, split: str = "val", *,
                     bn_batches: int = 8, batch_size: int = 64, seed: int = 0) -> list[bool]:
    """Per image of `split`, in the split's order, whether one arch (after BN recalibration, the supernet's BN
    statistics kept) classifies it right; the mean is `evaluate`'s top-1. Two archs' lists pair image by image,
    which is what telling a real accuracy difference from noise needs (`edgenas.deploy.stage.pick_winner`)."""
    arch = _as_arch(supernet, arch)
    _check_fits(supernet, dataset)
    device = next(supernet.parameters()).device
    batches = _Batches(dataset, split, bn_batches, batch_size, seed, device)
    previous, was_training = supernet.active_arch, supernet.training
    try:
        with preserved_bn(supernet):
            return [bool(v) for v in _correct_many(supernet, [arch], batches)[0].tolist()]
    finally:
        supernet.set_active(previous)
        supernet.train(was_training)


def recalibrate_for(supernet: Supernet, arch: Arch | Any, dataset: Dataset, *, bn_batches: int = 8,
                    batch_size: int = 64, seed: int = 0) -> None:
    """Set the supernet's BN statistics to those of `arch` (kept; the active arch is restored)."""
    arch = _as_arch(supernet, arch)
    previous = supernet.active_arch
    batches = _Batches(dataset, "train", bn_batches, batch_size, seed, next(supernet.parameters()).device)
    supernet.set_active(arch)
    try:
        recalibrate_bn(supernet, batches.calibration(arch.resolution))
    finally:
        supernet.set_active(previous)


def evaluate_correct_splits(supernet: Supernet, archs: Sequence[Arch | Any], dataset: Dataset,
                            splits: Sequence[str] = ("val", "holdout"), *, bn_batches: int = 8, batch_size: int = 64,
                            seed: int = 0, eval_batch_size: int = 256, progress: bool = False) -> Any:
    """Paired evaluation: for each arch, one BatchNorm recalibration (on the same `bn_batches` training batches for
    every arch at a resolution) and then, per split in `splits`, whether each image (in the split's order) is
    classified right. Yields `(arch, {split: bool array})` as each arch is done, so a caller can store it at once."""
    for arch, correct, _loglik in evaluate_scored_splits(supernet, archs, dataset, splits, bn_batches=bn_batches,
                                                         batch_size=batch_size, seed=seed,
                                                         eval_batch_size=eval_batch_size, progress=progress):
        yield arch, correct


def evaluate_scored_splits(supernet: Supernet, archs: Sequence[Arch | Any], dataset: Dataset,
                           splits: Sequence[str] = ("val", "holdout"), *, bn_batches: int = 8, batch_size: int = 64,
                           seed: int = 0, eval_batch_size: int = 256, progress: bool = False) -> Any:
    """`evaluate_correct_splits` with each image's log-likelihood of its true class beside its correctness (the same
    forward pass): yields `(arch, {split: bool array}, {split: float32 array})`."""
    archs = [_as_arch(supernet, a) for a in archs]
    _check_fits(supernet, dataset)
    device = next(supernet.parameters()).device
    # evaluation in large batches (eval mode: the same figures, a fraction of the per-batch overhead); BatchNorm
    # recalibrated on `batch_size` batches, as `evaluate` does
    first = _Batches(dataset, splits[0], bn_batches, batch_size, seed, device)
    batches = {split: _Batches(dataset, split, bn_batches, eval_batch_size, seed, device) for split in splits}
    previous, was_training = supernet.active_arch, supernet.training
    try:
        with preserved_bn(supernet), torch.no_grad(), Progress(len(archs), "paired evaluation", unit="arch",
                                                               enabled=progress) as bar:
            for arch in archs:
                supernet.set_active(arch)
                recalibrate_bn(supernet, first.calibration(arch.resolution))
                supernet.eval()
                correct, loglik = {}, {}
                for split in splits:
                    hits, ll = [], []
                    for x, y in batches[split].evaluation(arch.resolution):
                        logits = supernet(x)
                        hits.append(logits.argmax(1) == y)
                        ll.append(torch.log_softmax(logits.float(), 1).gather(1, y[:, None])[:, 0])
                    correct[split] = (torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)).cpu().numpy()
                    loglik[split] = (torch.cat(ll) if ll else torch.zeros(0)).cpu().numpy()
                bar.update(1)
                yield arch, correct, loglik
    finally:
        supernet.set_active(previous)
        supernet.train(was_training)
