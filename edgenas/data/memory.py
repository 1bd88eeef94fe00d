"""In-memory datasets: images held as uint8 NCHW, split, normalised with the training split's statistics and batched
(`BatchLoader`, augmented on the fly); the readers of the small formats (digits, CIFAR-10, IDX, folders of thumbnails).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.data.images import dataset_folder
from edgenas.data.splits import SPLITS, EpochOrder, SplitSizes, split_indices
from edgenas.errors import UsageError
from edgenas.inputs import GIB, MAX_DATA_BYTES, load_data_pickle, one_line, read_bytes

MAX_BATCH_BYTES = GIB  # one CIFAR-10 batch (the real ones are 30 MiB)


@dataclass
class Dataset(SplitSizes):
    """An in-memory image classification dataset with `train`, `val` and `holdout` splits.

    `fingerprint` hashes the pixels, labels and split assignment: two datasets with equal
    fingerprints give identical batches for the same seed.
    """

    spec: str
    num_classes: int
    in_channels: int
    class_names: list[str]
    images: dict[str, np.ndarray] = field(repr=False)  # split -> uint8 (N, C, H, W)
    labels: dict[str, np.ndarray] = field(repr=False)  # split -> int64 (N,)
    mean: np.ndarray = field(repr=False)
    std: np.ndarray = field(repr=False)
    fingerprint: str = ""
    seed: int = 0
    flip: bool = True  # horizontal flips are valid augmentation (not for digits and letters)
    streamed = False

    @property
    def image_size(self) -> int:
        return int(self.images["train"].shape[-1])

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images float32 NCHW normalised, labels int64) of a split at native resolution."""
        split = self._split(split)
        x = self.images[split].astype(np.float32) / 255.0
        x = (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]
        return x.astype(np.float32), self.labels[split].copy()

    def loader(self, split: str, *, batch_size: int, resolution: int | None = None, shuffle: bool = False,
               augment: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
               drop_last: bool = False, epoch: int = 0, step_resolution: Any = None, workers: int | None = None
               ) -> BatchLoader:
        """Batches of (x float32 NCHW at `resolution`, y int64) as torch tensors; see `BatchLoader`. The images are
        in memory at one size: `step_resolution` and `workers` (a streamed dataset's) are not needed here, the
        trainer resizes each batch to its step's resolution."""
        return BatchLoader(self, self._split(split), batch_size=batch_size, resolution=resolution, shuffle=shuffle,
                           augment=augment, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last,
                           epoch=epoch)

    def describe(self, resolutions: tuple[int, ...] | None = None) -> str:
        sizes = ", ".join(f"{s} {self.size(s)}" for s in SPLITS)
        return (f"dataset {self.spec}: {self.num_classes} classes, {self.in_channels} channel(s), "
                f"{self.image_size}px; {sizes}")


class BatchLoader(EpochOrder):
    """Iterates one epoch of a split as torch batches; deterministic in (seed, epoch, batch index).

    Shuffling draws a permutation from (seed, epoch); augmentation (random scale, shift and, where
    valid, horizontal flip, applied with one `grid_sample` that also resizes) draws from
    (seed, epoch, batch). So a resumed run can skip to any batch with `iterate(epoch, start)` and see
    exactly the batches an uninterrupted run saw. With `world_size > 1` each rank gets an equal,
    disjoint shard of every epoch.
    """

    def batches_from(self, step: int) -> Iterator[tuple[Any, Any]]:
        """Batches from step `step` of a phase on, across epochs."""
        epoch, b = divmod(step, len(self))
        while True:
            yield from self.iterate(epoch, b)
            epoch, b = epoch + 1, 0

    def iterate(self, epoch: int, start: int = 0) -> Iterator[tuple[Any, Any]]:
        """Batches `start`, `start + 1`, ... of epoch `epoch`."""
        # deferred: torch loads only when this runs, not on import
        import torch

        order = self.indices(epoch)
        images = self.dataset.images[self.split]
        labels = self.dataset.labels[self.split]
        mean = torch.from_numpy(self.dataset.mean.astype(np.float32)).view(1, -1, 1, 1)
        std = torch.from_numpy(self.dataset.std.astype(np.float32)).view(1, -1, 1, 1)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = torch.from_numpy(images[idx]).float().div_(255.0)
            x = (x - mean) / std
            y = torch.from_numpy(labels[idx])
            size = self.resolution or x.shape[-1]
            if self.augment:
                gen = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, epoch, b, 2]).integers(2**62)))
                x = augment_batch(x, size, gen, flip=self.dataset.flip)
            elif size != x.shape[-1] or size != x.shape[-2]:
                x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            yield x.contiguous(), y


def augment_batch(x: Any, size: int, gen: Any, *, flip: bool, scale: float = 0.12, shift: float = 0.12) -> Any:
    """Random zoom (±`scale`), shift (±`shift` of the image) and optional horizontal flip, resized to `size`."""
    # deferred: torch loads only when this runs, not on import
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    zoom = 1.0 + (torch.rand(n, generator=gen) * 2 - 1) * scale
    tx, ty = ((torch.rand(2, n, generator=gen) * 2 - 1) * shift * 2)
    sx = zoom
    if flip:
        sx = torch.where(torch.rand(n, generator=gen) < 0.5, -zoom, zoom)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, zoom
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def build_dataset(spec: str, x: np.ndarray, y: np.ndarray, names: list[str], official_val: tuple[np.ndarray, np.ndarray] | None,
           *, seed: int, val_fraction: float, holdout_fraction: float, min_holdout: int, flip: bool) -> Dataset:
    num_classes = len(names)
    if len(x) == 0:
        raise UsageError(f"dataset {spec} holds no images")
    if y.min() < 0 or y.max() >= num_classes:
        raise UsageError(f"dataset {spec} has label {int(y.max())} outside 0..{num_classes - 1}")
    idx = split_indices(y, seed=seed, val_fraction=val_fraction, holdout_fraction=holdout_fraction,
                        min_holdout=min_holdout, official_val=official_val is not None)
    val = official_val if official_val is not None else (x[idx["val"]], y[idx["val"]])
    images = {"train": x[idx["train"]], "val": val[0], "holdout": x[idx["holdout"]]}
    labels = {"train": y[idx["train"]], "val": val[1], "holdout": y[idx["holdout"]]}
    for split in SPLITS:
        if len(labels[split]) == 0:
            raise UsageError(f"dataset {spec} is too small: its {split} split is empty; add images")
        images[split] = np.ascontiguousarray(images[split], dtype=np.uint8)
        labels[split] = labels[split].astype(np.int64)
    train = images["train"].astype(np.float64) / 255.0
    mean = train.mean(axis=(0, 2, 3))
    std = np.maximum(train.std(axis=(0, 2, 3)), 1e-3)
    h = hashlib.sha256()
    for split in SPLITS:
        h.update(split.encode())
        h.update(str(images[split].shape).encode())
        h.update(images[split].tobytes())
        h.update(labels[split].tobytes())
    h.update(",".join(names).encode())
    return Dataset(spec=spec, num_classes=num_classes, in_channels=int(x.shape[1]), class_names=list(names),
                   images=images, labels=labels, mean=mean.astype(np.float32), std=std.astype(np.float32),
                   fingerprint=h.hexdigest()[:32], seed=seed, flip=flip)


def load_digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    images, target = _digits_arrays()
    x = np.round(images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return x, target.astype(np.int64), [str(i) for i in range(10)]


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (1797 images of 8x8, values 0-16, and their labels), read from the file its
    `load_digits` reads without importing `sklearn.datasets` (0.8 s of imports, scipy's among them, for a 20 ms read:
    every `edgenas train` and `run` on digits paid it); its loader where the file is not where it has always been."""
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    # deferred: sklearn loads only when this runs, not on import
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def load_folder_in_memory(files: list[tuple[Path, int]], classes: list[str], image_size: int | None
                          ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A folder of small images (checked by `images.check_images`), decoded and held as uint8 at one size: their
    common size, else `image_size` or 64."""
    # deferred: PIL loads only when this runs, not on import
    from PIL import Image

    raw = []
    for path, _ in files:
        try:
            with Image.open(path) as im:
                im.load()
                raw.append(im.copy())
        except Exception as exc:  # a damaged file makes Pillow's decoders raise many kinds of errors
            raise UsageError(f"cannot read image {path} ({type(exc).__name__}: {one_line(str(exc))[:80]}): it is "
                             "damaged; remove or replace it") from None
    grey = all(im.mode in ("L", "1", "I;16", "I") for im in raw)
    sizes = {im.size for im in raw}
    if image_size is None:
        first = next(iter(sizes))
        image_size = first[0] if len(sizes) == 1 and first[0] == first[1] else 64
    mode = "L" if grey else "RGB"
    arrays = []
    for im in raw:
        im = im.convert(mode)
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if grey else a.transpose(2, 0, 1))
    return np.stack(arrays), np.array([c for _, c in files], dtype=np.int64), classes


def _cifar_field(d: dict, name: str) -> object:
    for key in (name.encode(), name):
        if key in d:
            return d[key]
    return None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch: (N, 3, 32, 32) uint8 images and N labels in 0..9, every field checked."""
    source = f"CIFAR-10 batch {path}"
    d = load_data_pickle(read_bytes(path, "CIFAR-10 batch", limit=MAX_BATCH_BYTES), source)
    if not isinstance(d, dict):
        raise UsageError(f"{source} holds a {type(d).__name__}, not the dict of a CIFAR-10 batch; re-download it")
    data, labels = _cifar_field(d, "data"), _cifar_field(d, "labels")
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "ui" or data.ndim != 2 or data.shape[1] != 3072:
        shown = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UsageError(f"{source}: data is a {shown}: expected a uint8 array of N rows of 3072 pixels "
                         "(32x32, 3 channels); re-download it")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise UsageError(f"{source}: data holds values outside 0..255; re-download it")
    if not isinstance(labels, (list, np.ndarray)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 9 for v in labels):
        raise UsageError(f"{source}: labels must be a list of integers from 0 to 9; re-download it")
    if len(data) == 0:
        raise UsageError(f"{source} holds no images; re-download it")
    if len(data) != len(labels):
        raise UsageError(f"{source} has {len(data)} images but {len(labels)} labels; re-download it")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def load_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, list[str], tuple[np.ndarray, np.ndarray]]:
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    dataset_folder(root, "CIFAR-10 folder", "the folder holding data_batch_1..5 and test_batch")
    train_files = sorted(root.glob("data_batch_*"))
    test_file = root / "test_batch"
    if not train_files or not test_file.exists():
        raise UsageError(f"CIFAR-10 folder {root} lacks data_batch_* or test_batch: download the python version "
                         "(cifar-10-python.tar.gz) and unpack it")
    parts = [_read_cifar_batch(p) for p in train_files]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    names = [f"class{i}" for i in range(10)]
    meta = root / "batches.meta"
    if meta.exists():
        source = f"CIFAR-10 metadata {meta}"
        d = load_data_pickle(read_bytes(meta, "CIFAR-10 metadata", limit=MAX_BATCH_BYTES), source)
        label_names = _cifar_field(d, "label_names") if isinstance(d, dict) else None
        if not isinstance(label_names, list) or len(label_names) != 10 or not all(
                isinstance(n, (bytes, str)) and 0 < len(n) <= 100 for n in label_names):
            raise UsageError(f"{source}: label_names must be a list of 10 class names; re-download it")
        names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in label_names]
    return x, y, names, _read_cifar_batch(test_file)


def _read_idx(path: Path) -> np.ndarray:
    source = f"IDX file {path}"
    if path.suffix == ".gz":
        raw = _gunzip(read_bytes(path, "IDX file", limit=MAX_DATA_BYTES), source)
    else:
        raw = read_bytes(path, "IDX file", limit=MAX_DATA_BYTES)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UsageError(f"{path} is not an unsigned-byte IDX file (bad magic number); expected MNIST-format data")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if not 1 <= ndim <= 4:
        raise UsageError(f"{source} says it has {ndim} dimensions: expected 1 (labels) or 3 (images); re-download it")
    if len(raw) < header:
        raise UsageError(f"IDX file {path} is truncated in its header; re-download it")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = math.prod(shape)
    if len(raw) - header != count:
        raise UsageError(f"IDX file {path} holds {len(raw) - header} bytes of data but its header says {shape} "
                         f"({count} bytes); re-download it")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _gunzip(data: bytes, source: str, limit: int = MAX_DATA_BYTES) -> bytes:
    """Unpack gzip data, refusing more than `limit` bytes (a small file can unpack to terabytes)."""
    out, total = [], 0
    try:
        stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        chunk = data
        while chunk:
            piece = stream.decompress(chunk, 1 << 24)
            total += len(piece)
            if total > limit:
                raise UsageError(f"{source} unpacks to more than {limit // GIB} GiB: it is not an IDX file; "
                                 "re-download it")
            out.append(piece)
            chunk = stream.unconsumed_tail
        if not stream.eof:
            raise UsageError(f"{source} is a truncated gzip file; re-download it")
    except zlib.error as exc:
        raise UsageError(f"cannot read {source}: not gzip data ({exc}); re-download it") from None
    return b"".join(out)


def _find_idx(root: Path, split_words: tuple[str, ...], what: str) -> Path | None:
    for p in sorted(root.iterdir()):
        name = p.name.lower()
        if any(w in name for w in split_words) and what in name and "idx" in name:
            return p
    return None


def load_idx(root: Path) -> tuple[np.ndarray, np.ndarray, list[str], tuple[np.ndarray, np.ndarray]]:
    dataset_folder(root, "IDX folder", "the folder holding train-images-idx3-ubyte[.gz] etc.")
    found = {}
    for key, words, what in (("xtr", ("train",), "images"), ("ytr", ("train",), "labels"),
                             ("xte", ("t10k", "test"), "images"), ("yte", ("t10k", "test"), "labels")):
        path = _find_idx(root, words, what)
        if path is None:
            raise UsageError(f"IDX folder {root} has no {words[0]} {what} file (e.g. {words[0]}-{what}-idx"
                             f"{3 if what == 'images' else 1}-ubyte.gz)")
        found[key] = path
    arrays = {k: _read_idx(p) for k, p in found.items()}
    for xk, yk in (("xtr", "ytr"), ("xte", "yte")):
        if arrays[xk].ndim != 3 or arrays[yk].ndim != 1 or len(arrays[xk]) != len(arrays[yk]):
            raise UsageError(f"IDX files {found[xk].name} and {found[yk].name} do not match: expected N images "
                             f"(N, H, W) and N labels, got {arrays[xk].shape} and {arrays[yk].shape}")
        if len(arrays[xk]) == 0 or min(arrays[xk].shape[1:]) < 1:
            raise UsageError(f"IDX file {found[xk]} holds no images (shape {arrays[xk].shape}): expected at least one "
                             "image of at least 1x1 pixels; re-download it")
    num_classes = int(max(arrays["ytr"].max(), arrays["yte"].max())) + 1
    if num_classes < 2:
        raise UsageError(f"IDX labels in {found['ytr']} and {found['yte']} name only class 0: expected at least "
                         "2 classes")
    names = [str(i) for i in range(num_classes)]
    return (arrays["xtr"][:, None].copy(), arrays["ytr"].astype(np.int64), names,
            (arrays["xte"][:, None].copy(), arrays["yte"].astype(np.int64)))
