"""Image folders streamed from disk: only the file list in memory, decoded and augmented in DataLoader workers.

`folder:PATH` (one sub-folder per class) and `imagenet:PATH` (`train/` and `val/`, each with one sub-folder per
class) hold the list of files and their labels; a batch is read when it is due, by `torch.utils.data.DataLoader`
worker processes that decode (Pillow, JPEG draft mode), crop and resize each image straight to the resolution the
step trains at, never through a smaller copy. The batch plan (which images, at which resolution, with which
augmentation seed) is drawn in the main process from (seed, epoch, batch): a resumed run reads exactly the images
an uninterrupted run would have read, in the same order, whatever the number of workers; under torchrun each rank
reads its own disjoint shard. The resolution of every training step comes from `StepResolutions`, the same draw
the trainer makes for its elastic resolution, so loader and trainer agree.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.data.images import ImageReadError, open_image
from edgenas.data.splits import SPLITS, EpochOrder, SplitSizes
from edgenas.data.transforms import CROP_FRACTION, eval_transform, train_transform
from edgenas.errors import UsageError

# Once-for-All's (ImageNet's) normalisation: a supernet imported from it expects these inputs
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RESOLUTION = 224  # where a loader is given no resolution at all


@dataclass(frozen=True)
class StepResolutions:
    """The elastic resolution of every training step of a phase, drawn from (seed, phase, step).

    The trainer draws its step's resolution (and then the step's subnets) from `rng(step)`; the loader reads the
    step's images at `self(step)`: the same draw, so the images arrive at the size the step trains at."""

    seed: int
    phase: int
    resolutions: tuple[int, ...]

    def rng(self, step: int) -> tuple[np.random.Generator, int]:
        """The step's generator (for its subnets) and its resolution, drawn first."""
        rng = np.random.default_rng([self.seed, self.phase, step])
        return rng, int(rng.choice(self.resolutions))

    def __call__(self, step: int) -> int:
        return self.rng(step)[1]


def worker_context() -> Any:
    """How DataLoader workers start: forked from a small server process, not from the training process.

    A worker forked from the training process shares its pages copy-on-write, so while it lives every page that
    training writes (weights, gradients, activations) is first copied by the kernel: README's fine-tune command
    (12 steps of 16 photos from 30, 2 cores, nothing beside it) took 65.9 s with one forked worker, 49 s of it system time,
    and 38.3 s (3.5 s system) with workers from the fork server. The server imports torch and this module once, so
    a worker starts in milliseconds.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["edgenas.data.stream", "torch"])
    return context


def auto_workers() -> int:
    """DataLoader worker processes when none are asked for: half the cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores // 2))


@dataclass
class StreamingDataset(SplitSizes):
    """An image classification dataset read from disk as needed; the interface of the in-memory `Dataset`.

    `files[split]` holds the paths (as one bytes array: no per-file Python objects for workers to copy),
    `labels[split]` the classes. `fingerprint` hashes the relative paths, file sizes, labels and split assignment.
    """

    spec: str
    num_classes: int
    in_channels: int
    class_names: list[str]
    root: Path
    files: dict[str, np.ndarray] = field(repr=False)  # split -> bytes paths (S dtype)
    labels: dict[str, np.ndarray] = field(repr=False)  # split -> int64 (N,)
    mean: np.ndarray = field(repr=False)
    std: np.ndarray = field(repr=False)
    fingerprint: str = ""
    seed: int = 0
    flip: bool = True
    side_range: tuple[int, int] = (0, 0)  # the shortest and longest image side found in the folder
    workers: int | None = None  # DataLoader workers (None: `auto_workers()`); set by the trainer from its config
    pin_memory: bool = False  # page-locked batches for fast copies to a GPU
    streamed = True

    @property
    def image_size(self) -> int:
        """A nominal size (what a loader reads at when given no resolution); images are read at the step's."""
        return DEFAULT_RESOLUTION

    def loader(self, split: str, *, batch_size: int, resolution: int | None = None, shuffle: bool = False,
               augment: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False,
               epoch: int = 0, step_resolution: Callable[[int], int] | None = None,
               workers: int | None = None) -> StreamLoader:
        """Batches of (x float32 NCHW normalised, y int64), read from disk; see `StreamLoader`."""
        return StreamLoader(self, self._split(split), batch_size=batch_size, resolution=resolution, shuffle=shuffle,
                            augment=augment, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last,
                            epoch=epoch, step_resolution=step_resolution,
                            workers=self.workers if workers is None else workers)

    def arrays(self, split: str, resolution: int | None = None, *, limit: int = 4096,
               batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(images float32 NCHW normalised at `resolution`, labels) of a split, evaluation-cropped, read in batches;
        refused for more than `limit` images (read those batch by batch with `loader`)."""
        n = self.size(split)
        if n > limit:
            raise UsageError(f"the {split} split of {self.spec} has {n} images, more than {limit} to hold in memory at "
                             "once: read it batch by batch with dataset.loader(...)")
        xs, ys = [], []
        for x, y in self.loader(split, batch_size=batch_size, resolution=resolution or self.image_size):
            xs.append(x.numpy())
            ys.append(y.numpy())
        return np.concatenate(xs), np.concatenate(ys)

    def path(self, split: str, index: int) -> str:
        return os.fsdecode(bytes(self.files[split][index]))

    def split_record(self) -> dict[str, Any]:
        """Which file went to which split (paths relative to the root): what a run records beside its checkpoint."""
        root = os.fsencode(str(self.root)) + b"/"
        return {"dataset": self.spec, "seed": self.seed, "fingerprint": self.fingerprint, "classes": self.class_names,
                "splits": {s: [[os.fsdecode(bytes(p)[len(root):] if bytes(p).startswith(root) else bytes(p)), int(c)]
                               for p, c in zip(self.files[s], self.labels[s])] for s in SPLITS}}

    def describe(self, resolutions: tuple[int, ...] | None = None) -> str:
        sizes = ", ".join(f"{s} {self.size(s)}" for s in SPLITS)
        read = (f"read at {min(resolutions)}-{max(resolutions)} px (each step's resolution)" if resolutions
                else "read at the resolution asked for")
        lo, hi = self.side_range
        return (f"dataset {self.spec}: {self.num_classes} classes, {self.in_channels} channel(s), "
                f"{sum(self.size(s) for s in SPLITS)} images of {lo}-{hi} px streamed from disk, {read}; {sizes}")


class StreamLoader(EpochOrder):
    """One split's batches read by DataLoader workers; deterministic in (seed, epoch, batch index).

    The same order as the in-memory `BatchLoader` (a permutation from (seed, epoch), a rank's shard of it), each
    batch read at its step's resolution (`step_resolution(epoch * len + batch)`, else `resolution`), training
    augmentation seeded per image by (seed, epoch, batch, position). `iterate(epoch, start)` reads one epoch from a
    batch on; `batches_from(step)` reads on across epochs with the same workers."""

    def __init__(self, dataset: StreamingDataset, split: str, *, batch_size: int, resolution: int | None,
                 shuffle: bool, augment: bool, seed: int, rank: int, world_size: int, drop_last: bool, epoch: int,
                 step_resolution: Callable[[int], int] | None = None, workers: int | None = None) -> None:
        super().__init__(dataset, split, batch_size=batch_size, resolution=resolution, shuffle=shuffle,
                         augment=augment, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last,
                         epoch=epoch)
        self.step_resolution = step_resolution
        self.workers = auto_workers() if workers is None else workers

    def resolution_of(self, epoch: int, batch: int) -> int:
        if self.step_resolution is not None:
            return int(self.step_resolution(epoch * len(self) + batch))
        return int(self.resolution or self.dataset.image_size)

    def plan(self, epoch: int, batch: int, order: np.ndarray | None = None) -> list[tuple[int, int, Any]]:
        """What batch `batch` of `epoch` reads: (image index, resolution, augmentation seed or None) per image."""
        order = self.indices(epoch) if order is None else order
        idx = order[batch * self.batch_size:(batch + 1) * self.batch_size]
        res = self.resolution_of(epoch, batch)
        return [(int(i), res, (self.seed, epoch, batch, 2, j) if self.augment else None) for j, i in enumerate(idx)]

    def _plans(self, epoch: int, start: int, forever: bool) -> Iterator[list[tuple[int, int, Any]]]:
        while True:
            order = self.indices(epoch)
            for b in range(start, len(self)):
                yield self.plan(epoch, b, order)
            if not forever:
                return
            epoch, start = epoch + 1, 0

    def iterate(self, epoch: int, start: int = 0) -> Iterator[tuple[Any, Any]]:
        """Batches `start`, `start + 1`, ... of epoch `epoch`."""
        return self._read(_Plans(self, epoch, start, forever=False))

    def batches_from(self, step: int) -> Iterator[tuple[Any, Any]]:
        """Batches from step `step` of the phase on (epoch after epoch), read by one set of workers."""
        epoch, b = divmod(step, len(self))
        return self._read(_Plans(self, epoch, b, forever=True))

    def _read(self, plans: _Plans) -> Iterator[tuple[Any, Any]]:
        # deferred: torch loads only when this runs, not on import
        from torch.utils.data import DataLoader

        ds = self.dataset
        reader = _Reader(ds.files[self.split], ds.labels[self.split], "L" if ds.in_channels == 1 else "RGB", ds.flip)
        loader = DataLoader(reader, batch_sampler=plans, num_workers=self.workers,
                            collate_fn=_Collate(ds.mean, ds.std), pin_memory=ds.pin_memory,
                            prefetch_factor=4 if self.workers else None, persistent_workers=False,
                            multiprocessing_context=worker_context() if self.workers else None)
        for batch in loader:
            if isinstance(batch, str):
                raise ImageReadError(batch)
            yield batch


class _Plans:
    """The batch sampler handed to DataLoader: the batch plans from (epoch, start) on."""

    def __init__(self, loader: StreamLoader, epoch: int, start: int, *, forever: bool) -> None:
        self.loader, self.epoch, self.start, self.forever = loader, epoch, start, forever

    def __iter__(self) -> Iterator[list[tuple[int, int, Any]]]:
        return self.loader._plans(self.epoch, self.start, self.forever)

    def __len__(self) -> int:
        return (1 << 62) if self.forever else max(0, len(self.loader) - self.start)


class _Reader:
    """Runs in the workers: one image decoded, cropped and resized to its resolution; a decoding error as its
    one-line message (turned into ImageReadError in the main process, never a worker's traceback)."""

    def __init__(self, files: np.ndarray, labels: np.ndarray, mode: str, flip: bool) -> None:
        self.files, self.labels, self.mode, self.flip = files, labels, mode, flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: tuple[int, int, Any]) -> Any:
        # deferred: torch loads only when this runs, not on import
        import torch

        i, res, seed = item
        path = os.fsdecode(bytes(self.files[i]))
        try:
            draft = res if seed is not None else math.ceil(res / CROP_FRACTION)
            image = open_image(path, self.mode, draft=draft)
        except ImageReadError as exc:
            return str(exc)
        if seed is None:
            x = eval_transform(image, res)
        else:
            x = train_transform(image, res, np.random.default_rng(list(seed)), flip=self.flip)
        return torch.from_numpy(x), int(self.labels[i])


class _Collate:
    """Stacks a batch and normalises it (in the worker, beside the decoding); passes an error message on."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def __call__(self, items: list[Any]) -> Any:
        # deferred: torch loads only when this runs, not on import
        import torch

        for item in items:
            if isinstance(item, str):
                return item
        x = torch.stack([x for x, _ in items]).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std).contiguous(), torch.tensor([y for _, y in items], dtype=torch.int64)


def fingerprint(root: Path, files: dict[str, list[Path]], labels: dict[str, np.ndarray], names: list[str]) -> str:
    """The hash of the relative paths, file sizes, labels and split assignment (not the pixels: reading every byte
    of a large folder on each load would take minutes; a file replaced by one of the same size goes unnoticed)."""
    h = hashlib.sha256()
    for split in SPLITS:
        h.update(split.encode())
        for path, label in zip(files[split], labels[split]):
            rel = os.path.relpath(path, root)
            h.update(f"{rel}\0{path.stat().st_size}\0{int(label)}\n".encode())
    h.update(",".join(names).encode())
    return h.hexdigest()[:32]


def normalisation(in_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """ImageNet's per-channel mean and standard deviation (grey: their averages), as Once-for-All normalises."""
    if in_channels == 1:
        return np.array([np.mean(IMAGENET_MEAN)], np.float32), np.array([np.mean(IMAGENET_STD)], np.float32)
    return np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
