"""Datasets for training and evaluating supernets: loading, train/val/holdout splits, normalisation and batching.

A dataset is chosen by a SPEC string:

- `digits`: scikit-learn's bundled 8×8 handwritten digits (1 797 images, grey; no download).
- `shapes[:image_size=N,samples=M]`: a seeded synthetic set of coloured geometric shapes (10 classes)
  with clutter and noise, generated on load at any resolution.
- `folder:PATH`: one sub-folder per class holding PNG/JPEG images (read with Pillow).
- `cifar10:PATH`: the CIFAR-10 "python version" batches folder (`data_batch_1..5`, `test_batch`).
- `idx:PATH`: a folder of MNIST-family IDX files (`train-images-idx3-ubyte[.gz]`, ...), gzipped or not.

Images are held in memory as uint8 NCHW and normalised per channel with the training split's mean
and standard deviation. `holdout` is carved from the training data (as Once-for-All's validation
subset) and is what the accuracy predictor is fitted on; `val` is the official test split where a
format has one, else a stratified part of the data.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.errors import UsageError
from edgenas.inputs import GIB, MAX_DATA_BYTES, input_file, load_data_pickle, one_line, read_bytes

SPLITS = ("train", "val", "holdout")
DATASET_KINDS = ("digits", "shapes", "folder", "cifar10", "idx")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_SHAPES_SIZE = 1024
MAX_IMAGE_PIXELS = 8192 * 8192  # one image of a folder dataset
MAX_BATCH_BYTES = GIB  # one CIFAR-10 batch (the real ones are 30 MiB)
SHAPE_CLASSES = ("circle", "square", "triangle", "hexagon", "ellipse", "ring", "cross", "star", "crescent", "frame")


@dataclass
class Dataset:
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

    @property
    def image_size(self) -> int:
        return int(self.images["train"].shape[-1])

    def size(self, split: str) -> int:
        return int(len(self.labels[self._split(split)]))

    def _split(self, split: str) -> str:
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
        return split

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images float32 NCHW normalised, labels int64) of a split at native resolution."""
        split = self._split(split)
        x = self.images[split].astype(np.float32) / 255.0
        x = (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]
        return x.astype(np.float32), self.labels[split].copy()

    def loader(self, split: str, *, batch_size: int, resolution: int | None = None, shuffle: bool = False,
               augment: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
               drop_last: bool = False, epoch: int = 0) -> BatchLoader:
        """Batches of (x float32 NCHW at `resolution`, y int64) as torch tensors; see `BatchLoader`."""
        return BatchLoader(self, self._split(split), batch_size=batch_size, resolution=resolution, shuffle=shuffle,
                           augment=augment, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last,
                           epoch=epoch)

    def describe(self) -> str:
        sizes = ", ".join(f"{s} {self.size(s)}" for s in SPLITS)
        return (f"dataset {self.spec}: {self.num_classes} classes, {self.in_channels} channel(s), "
                f"{self.image_size}px; {sizes}")


class BatchLoader:
    """Iterates one epoch of a split as torch batches; deterministic in (seed, epoch, batch index).

    Shuffling draws a permutation from (seed, epoch); augmentation (random scale, shift and, where
    valid, horizontal flip, applied with one `grid_sample` that also resizes) draws from
    (seed, epoch, batch). So a resumed run can skip to any batch with `iterate(epoch, start)` and see
    exactly the batches an uninterrupted run saw. With `world_size > 1` each rank gets an equal,
    disjoint shard of every epoch.
    """

    def __init__(self, dataset: Dataset, split: str, *, batch_size: int, resolution: int | None, shuffle: bool,
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

    def indices(self, epoch: int) -> np.ndarray:
        n = self.dataset.size(self.split)
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(n) if self.shuffle else np.arange(n)
        if self.world_size > 1:
            order = order[: self.shard_size * self.world_size][self.rank:: self.world_size]
        return order

    def iterate(self, epoch: int, start: int = 0) -> Iterator[tuple[Any, Any]]:
        """Batches `start`, `start + 1`, ... of epoch `epoch`."""
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


# ---- loading ---------------------------------------------------------------------------------

def parse_spec(spec: str) -> tuple[str, str]:
    """Split a SPEC into (kind, argument): `folder:/data/x` -> ("folder", "/data/x")."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"dataset spec {spec!r} is empty: use one of digits, shapes, folder:PATH, cifar10:PATH, idx:PATH")
    if "\x00" in spec or len(spec) > 4096:
        raise UsageError(f"dataset spec {spec[:60]!r} is not a dataset: use one of digits, shapes, folder:PATH, "
                         "cifar10:PATH, idx:PATH")
    kind, _, arg = spec.strip().partition(":")
    if kind not in DATASET_KINDS:
        raise UsageError(f"unknown dataset {spec!r}: use one of digits, shapes, folder:PATH, cifar10:PATH, idx:PATH")
    if kind in ("folder", "cifar10", "idx") and not arg:
        raise UsageError(f"dataset {spec!r} needs a path: {kind}:PATH")
    if kind == "digits" and arg:
        raise UsageError(f"dataset {spec!r}: digits takes no argument")
    return kind, arg


def check_dataset_spec(spec: str) -> None:
    """What can be checked of a SPEC without loading it: the kind, options and that its folder is one.

    Stages that load the data later (a run's training) call this first, so a typo stops the run before work.
    """
    kind, arg = parse_spec(spec)
    if kind == "shapes":
        _parse_options(spec, arg, {"image_size": int, "samples": int})
    elif kind != "digits":
        expected = {"folder": "a folder with one sub-folder per class",
                    "cifar10": "the folder holding data_batch_1..5 and test_batch",
                    "idx": "the folder holding train-images-idx3-ubyte[.gz] etc."}[kind]
        _dataset_folder(Path(arg), f"dataset {spec}: folder", expected)


def load_dataset(spec: str, *, seed: int = 0, val_fraction: float = 0.2, holdout_fraction: float = 0.1,
                 min_holdout: int = 200, image_size: int | None = None, **kw: Any) -> Dataset:
    """Load the dataset named by `spec` and split it with `seed`.

    `val_fraction` applies where the format has no official test split; the holdout is
    `holdout_fraction` of the remaining training data, but at least `min_holdout` images (never more
    than a quarter). `image_size` resizes a folder's images (default: their common size, else 64) or
    sets the size of `shapes` (default 32); `samples` sets how many shapes are generated (default 12 000).
    Missing or malformed data raise UsageError naming the file.
    """
    kind, arg = parse_spec(spec)
    official_val: tuple[np.ndarray, np.ndarray] | None = None
    flip = True
    if kind == "digits":
        x, y, names = _load_digits()
        flip = False
    elif kind == "shapes":
        opts = _parse_options(spec, arg, {"image_size": int, "samples": int})
        size = opts.get("image_size", image_size or 32)
        samples = opts.get("samples", kw.pop("samples", 12000))
        if not (8 <= size <= MAX_SHAPES_SIZE and 10 <= samples and samples * 3 * size * size <= MAX_DATA_BYTES):
            raise UsageError(f"dataset {spec!r}: image_size={size}, samples={samples} is out of range: image_size "
                             f"from 8 to {MAX_SHAPES_SIZE}, samples at least 10, at most {MAX_DATA_BYTES // GIB} GiB "
                             "of pixels in all")
        x, y = make_shapes(samples, size, np.random.default_rng([seed, 7]))
        names = list(SHAPE_CLASSES)
    elif kind == "folder":
        x, y, names = _load_folder(Path(arg), image_size)
    elif kind == "cifar10":
        x, y, names, official_val = _load_cifar10(Path(arg))
    else:
        x, y, names, official_val = _load_idx(Path(arg))
        flip = False
    if kw:
        raise UsageError(f"unknown dataset option(s) {', '.join(sorted(kw))}: accepted are val_fraction, "
                         "holdout_fraction, min_holdout, image_size, samples")
    return _build(spec, x, y, names, official_val, seed=seed, val_fraction=val_fraction,
                  holdout_fraction=holdout_fraction, min_holdout=min_holdout, flip=flip)


def _parse_options(spec: str, arg: str, types: dict[str, type]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, arg.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in types:
            raise UsageError(f"bad option {item!r} in dataset {spec!r}: use "
                             + ",".join(f"{k}=N" for k in types))
        try:
            out[key] = types[key](value)
        except ValueError:
            raise UsageError(f"bad value {value!r} for {key} in dataset {spec!r}: expected an integer") from None
    return out


def _build(spec: str, x: np.ndarray, y: np.ndarray, names: list[str], official_val: tuple[np.ndarray, np.ndarray] | None,
           *, seed: int, val_fraction: float, holdout_fraction: float, min_holdout: int, flip: bool) -> Dataset:
    num_classes = len(names)
    if len(x) == 0:
        raise UsageError(f"dataset {spec} holds no images")
    if y.min() < 0 or y.max() >= num_classes:
        raise UsageError(f"dataset {spec} has label {int(y.max())} outside 0..{num_classes - 1}")
    rng = np.random.default_rng([seed, 3])
    if official_val is None:
        if not 0.0 < val_fraction < 1.0:
            raise UsageError(f"val_fraction {val_fraction} must be between 0 and 1")
        train_idx, val_idx = _stratified_split(y, val_fraction, rng)
        val = (x[val_idx], y[val_idx])
        x, y = x[train_idx], y[train_idx]
    else:
        val = official_val
    n_hold = max(int(round(holdout_fraction * len(y))), min(min_holdout, len(y) // 4))
    train_idx, hold_idx = _stratified_split(y, n_hold / len(y), rng)
    images = {"train": x[train_idx], "val": val[0], "holdout": x[hold_idx]}
    labels = {"train": y[train_idx], "val": val[1], "holdout": y[hold_idx]}
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


def _stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, taken): `fraction` of every class taken, in random order."""
    keep, taken = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * len(idx)))
        taken.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(taken))


def _load_digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return x, d.target.astype(np.int64), [str(i) for i in range(10)]


def _dataset_folder(root: Path, what: str, expected: str) -> Path:
    """`root` if it is a folder; one line naming what is there instead otherwise."""
    if root.is_dir():
        return root
    if root.exists():
        raise UsageError(f"{what} {root} is not a folder: give {expected}")
    raise UsageError(f"{what} {root} does not exist: give {expected}")


def _load_folder(root: Path, image_size: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    _dataset_folder(root, "dataset folder", "a folder with one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise UsageError(f"dataset folder {root} has {len(classes)} class sub-folder(s): it needs one sub-folder "
                         "per class, at least 2")
    files: list[tuple[Path, int]] = []
    for c, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise UsageError(f"class folder {root / name} has no PNG or JPEG images")
        files.extend((p, c) for p in found)
    raw = []
    for path, _ in files:
        input_file(path, "image")  # a folder, a pipe or /dev/zero named like an image is refused unread
        try:
            with Image.open(path) as im:
                w, h = im.size
                if w < 1 or h < 1 or w * h > MAX_IMAGE_PIXELS:
                    raise UsageError(f"image {path} is {w}x{h} pixels: expected at most {MAX_IMAGE_PIXELS} pixels; "
                                     "resize or remove it")
                im.load()
                raw.append(im.copy())
        except UsageError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise UsageError(f"cannot read image {path}: {type(exc).__name__}: {one_line(str(exc))[:100]}; "
                             "remove or replace the file") from None
        except Exception as exc:  # a damaged file makes Pillow's decoders raise many kinds of errors
            raise UsageError(f"cannot read image {path} ({type(exc).__name__}): it is damaged; remove or replace it"
                             ) from None
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


def _load_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, list[str], tuple[np.ndarray, np.ndarray]]:
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    _dataset_folder(root, "CIFAR-10 folder", "the folder holding data_batch_1..5 and test_batch")
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


def _load_idx(root: Path) -> tuple[np.ndarray, np.ndarray, list[str], tuple[np.ndarray, np.ndarray]]:
    _dataset_folder(root, "IDX folder", "the folder holding train-images-idx3-ubyte[.gz] etc.")
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


# ---- the synthetic shapes dataset ------------------------------------------------------------

def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-mask of shape class `cls` in local coordinates (the shape spans about [-1, 1])."""
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)

    def polygon(sides: int, apothem: float) -> np.ndarray:
        inside = np.ones_like(u, dtype=bool)
        for i in range(sides):
            a = 2 * np.pi * i / sides + np.pi / 2
            inside &= u * np.cos(a) + v * np.sin(a) <= apothem
        return inside

    name = SHAPE_CLASSES[cls]
    if name == "circle":
        return r <= 0.9
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.75
    if name == "triangle":
        return polygon(3, 0.5)
    if name == "hexagon":
        return polygon(6, 0.8)
    if name == "ellipse":
        return (u / 1.0) ** 2 + (v / 0.5) ** 2 <= 1.0
    if name == "ring":
        return (r <= 0.95) & (r >= 0.55)
    if name == "cross":
        return ((np.abs(u) <= 0.28) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.28) & (np.abs(u) <= 0.95))
    if name == "star":
        return r <= 0.4 + 0.6 * ((np.cos(5 * theta) + 1) / 2) ** 1.5
    if name == "crescent":
        return (r <= 0.95) & (np.hypot(u - 0.5, v) > 0.75)
    return (np.maximum(np.abs(u), np.abs(v)) <= 0.85) & (np.maximum(np.abs(u), np.abs(v)) >= 0.5)  # frame


def make_shapes(n: int, size: int, rng: np.random.Generator, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """`n` RGB images (uint8, (n, 3, size, size)) of one coloured shape each over a gradient, with clutter and noise.

    The class is the shape (10 kinds); colour, position, scale and rotation are random and carry no
    label information; distractor strokes and blobs can occlude the shape (up to 3, each with chance 1/2).
    """
    if n < 10 or size < 8:
        raise UsageError(f"shapes needs at least 10 samples and 8 pixels, got samples={n}, image_size={size}")
    labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    grid = (np.arange(size) + 0.5) / size
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    for start in range(0, n, batch):
        m = min(batch, n - start)
        y = labels[start:start + m]
        bg0 = rng.uniform(0, 1, (m, 3, 1, 1))
        bg1 = rng.uniform(0, 1, (m, 3, 1, 1))
        angle = rng.uniform(0, 2 * np.pi, (m, 1, 1))
        ramp = (gx * np.cos(angle) + gy * np.sin(angle) + 1.5) / 3
        img = bg0 * (1 - ramp[:, None]) + bg1 * ramp[:, None]
        # the shape: random centre, scale, rotation, colour contrasting with the background
        cx, cy = rng.uniform(0.32, 0.68, (2, m, 1, 1))
        scale = rng.uniform(0.22, 0.36, (m, 1, 1))
        rot = rng.uniform(0, 2 * np.pi, (m, 1, 1))
        dx, dy = (gx - cx) / scale, (gy - cy) / scale
        u = dx * np.cos(rot) + dy * np.sin(rot)
        v = -dx * np.sin(rot) + dy * np.cos(rot)
        mask = np.zeros((m, size, size), dtype=bool)
        for c in range(10):
            sel = y == c
            if sel.any():
                mask[sel] = _shape_mask(c, u[sel], v[sel])
        fg = np.clip(img.mean(axis=(2, 3), keepdims=True)
                     + rng.choice([-1, 1], (m, 1, 1, 1)) * rng.uniform(0.35, 0.6, (m, 3, 1, 1)), 0, 1)
        img = np.where(mask[:, None], fg, img)
        # clutter: up to 3 random strokes and blobs in random colours, drawn over the shape
        for _ in range(3):
            draw = rng.random((m, 1, 1)) < 0.5
            x0, y0, x1, y1 = rng.uniform(0, 1, (4, m, 1, 1))
            t = np.clip(((gx - x0) * (x1 - x0) + (gy - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2 + 1e-9), 0, 1)
            dist = np.hypot(gx - x0 - t * (x1 - x0), gy - y0 - t * (y1 - y0))
            stroke = dist <= rng.uniform(0.4, 1.0, (m, 1, 1)) / size
            blob = np.hypot(gx - x0, gy - y0) <= rng.uniform(0.03, 0.08, (m, 1, 1))
            clutter = draw & np.where(rng.random((m, 1, 1)) < 0.7, stroke, blob)
            img = np.where(clutter[:, None], rng.uniform(0, 1, (m, 3, 1, 1)), img)
        img = img + rng.normal(0, 0.05, img.shape)
        out[start:start + m] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return out, labels
