"""Top-1 accuracy of supernet subnets on a dataset split, each after BatchNorm recalibration.

The supernet's own BN statistics, active arch and train/eval mode are restored afterwards, so
evaluating one arch never changes what another arch sees. `evaluate_many` loads the batches once
per resolution and reuses them for every arch (hundreds of archs for the accuracy dataset).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from edgenas.data import Dataset
from edgenas.progress import Progress
from edgenas.space import Arch
from edgenas.supernet import Supernet
from edgenas.train.bn import preserved_bn, recalibrate_bn


def _as_arch(supernet: Supernet, arch: Any) -> Arch:
    return supernet.space.validate(arch) if isinstance(arch, Arch) else supernet.space.parse_arch(arch)


def _check_fits(supernet: Supernet, dataset: Dataset) -> None:
    if dataset.in_channels != supernet.space.in_channels or dataset.num_classes != supernet.num_classes:
        from edgenas.errors import UsageError

        raise UsageError(f"dataset {dataset.spec} ({dataset.in_channels} channels, {dataset.num_classes} classes) does "
                         f"not fit this supernet ({supernet.space.in_channels} channels, {supernet.num_classes} classes)")


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


class _Batches:
    """Calibration and evaluation batches per resolution, loaded once."""

    def __init__(self, dataset: Dataset, split: str, bn_batches: int, batch_size: int, seed: int,
                 device: torch.device, limit: int | None = None) -> None:
        self.dataset, self.split, self.bn_batches, self.limit = dataset, split, bn_batches, limit
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self._cache: dict[tuple[str, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def calibration(self, resolution: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        key = ("bn", resolution)
        if key not in self._cache:
            loader = self.dataset.loader("train", batch_size=self.batch_size, resolution=resolution, shuffle=True,
                                         seed=self.seed)
            batches = []
            for i, (x, y) in enumerate(loader):
                if i >= self.bn_batches:
                    break
                batches.append((_channels_last(x.to(self.device)), y.to(self.device)))
            self._cache[key] = batches
        return self._cache[key]

    def evaluation(self, resolution: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        key = (self.split, resolution)
        if key not in self._cache:
            if self.limit is None:
                loader = self.dataset.loader(self.split, batch_size=self.batch_size, resolution=resolution)
                self._cache[key] = [(_channels_last(x.to(self.device)), y.to(self.device)) for x, y in loader]
            else:  # a seeded sample of the split (not its first images: a folder's are in class order)
                loader = self.dataset.loader(self.split, batch_size=self.batch_size, resolution=resolution,
                                             shuffle=True, seed=self.seed + 1)
                batches, seen = [], 0
                for x, y in loader:
                    if seen >= self.limit:
                        break
                    x, y = x[: self.limit - seen], y[: self.limit - seen]
                    batches.append((_channels_last(x.to(self.device)), y.to(self.device)))
                    seen += len(y)
                self._cache[key] = batches
        return self._cache[key]


@torch.no_grad()
def _correct(supernet: Supernet, arch: Arch, batches: _Batches) -> torch.Tensor:
    """Per image of the split, in its order: whether the arch's top-1 class is the label."""
    supernet.set_active(arch)
    recalibrate_bn(supernet, batches.calibration(arch.resolution))
    supernet.eval()
    hits = [supernet(x).argmax(1) == y for x, y in batches.evaluation(arch.resolution)]
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def _top1(supernet: Supernet, arch: Arch, batches: _Batches) -> float:
    correct = _correct(supernet, arch, batches)
    return float(correct.float().mean()) if correct.numel() else 0.0


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
    out = []
    try:
        with preserved_bn(supernet), Progress(len(archs), f"evaluate {split}", unit="arch",
                                              enabled=progress) as bar:
            for arch in archs:
                out.append(_top1(supernet, arch, batches))
                bar.update(1, top1=out[-1])
    finally:
        supernet.set_active(previous)
        supernet.train(was_training)
    return out


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
            return [bool(v) for v in _correct(supernet, arch, batches).tolist()]
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
