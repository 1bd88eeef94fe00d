"""Datasets by SPEC: which kind, its checks before any work, and loading (in memory or streamed from disk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgenas.data.folders import load_image_folder
from edgenas.data.images import dataset_folder
from edgenas.data.memory import Dataset, build_dataset, load_cifar10, load_digits, load_idx
from edgenas.data.shapes import SHAPE_CLASSES, make_shapes
from edgenas.data.stream import StreamingDataset
from edgenas.errors import UsageError
from edgenas.inputs import GIB, MAX_DATA_BYTES

DATASET_KINDS = ("digits", "shapes", "folder", "imagenet", "cifar10", "idx")
MAX_SHAPES_SIZE = 1024
AnyDataset = Dataset | StreamingDataset
KINDS_HELP = "digits, shapes, folder:PATH, imagenet:PATH, cifar10:PATH, idx:PATH"


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a SPEC into (kind, argument): `folder:/data/x` -> ("folder", "/data/x")."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"dataset spec {spec!r} is empty: use one of {KINDS_HELP}")
    if "\x00" in spec or len(spec) > 4096:
        raise UsageError(f"dataset spec {spec[:60]!r} is not a dataset: use one of {KINDS_HELP}")
    kind, _, arg = spec.strip().partition(":")
    if kind not in DATASET_KINDS:
        raise UsageError(f"unknown dataset {spec!r}: use one of {KINDS_HELP}")
    if kind in ("folder", "imagenet", "cifar10", "idx") and not arg:
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
                    "imagenet": "a folder holding train/ and val/, each with one sub-folder per class",
                    "cifar10": "the folder holding data_batch_1..5 and test_batch",
                    "idx": "the folder holding train-images-idx3-ubyte[.gz] etc."}[kind]
        dataset_folder(Path(arg), f"dataset {spec}: folder", expected)


def load_dataset(spec: str, *, seed: int = 0, val_fraction: float = 0.2, holdout_fraction: float = 0.1,
                 min_holdout: int = 200, image_size: int | None = None, **kw: Any) -> AnyDataset:
    """Load the dataset named by `spec` and split it with `seed`.

    `val_fraction` applies where the format has no official test split; the holdout is
    `holdout_fraction` of the remaining training data, but at least `min_holdout` images (never more
    than a quarter). `image_size` resizes a folder of small images held in memory (default: their common size,
    else 64) or sets the size of `shapes` (default 32); `samples` sets how many shapes are generated (default 12 000).
    Missing or malformed data raise UsageError naming the file.
    """
    kind, arg = parse_spec(spec)
    official_val: tuple[np.ndarray, np.ndarray] | None = None
    flip = True
    if kind == "digits":
        x, y, names = load_digits()
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
    elif kind in ("folder", "imagenet"):
        if kw:
            raise UsageError(f"unknown dataset option(s) {', '.join(sorted(kw))}: accepted are val_fraction, "
                             "holdout_fraction, min_holdout, image_size")
        return load_image_folder(spec, kind, Path(arg), seed=seed, val_fraction=val_fraction,
                                 holdout_fraction=holdout_fraction, min_holdout=min_holdout, image_size=image_size)
    elif kind == "cifar10":
        x, y, names, official_val = load_cifar10(Path(arg))
    else:
        x, y, names, official_val = load_idx(Path(arg))
        flip = False
    if kw:
        raise UsageError(f"unknown dataset option(s) {', '.join(sorted(kw))}: accepted are val_fraction, "
                         "holdout_fraction, min_holdout, image_size, samples")
    return build_dataset(spec, x, y, names, official_val, seed=seed, val_fraction=val_fraction,
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


