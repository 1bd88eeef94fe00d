"""Image folders (`folder:PATH`, `imagenet:PATH`): listed, checked up front, split, and streamed (photos) or held in
memory (thumbnails of at most 64 px, where decoding once is faster than decoding every epoch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgenas.data.images import check_images, class_folders, dataset_folder, list_images
from edgenas.data.memory import build_dataset, load_folder_in_memory
from edgenas.data.splits import SPLITS, split_indices
from edgenas.data.stream import StreamingDataset, fingerprint, normalisation
from edgenas.errors import UsageError

IN_MEMORY_SIDE = 64  # a folder whose images are all at most this many pixels a side is held in memory ...
IN_MEMORY_BYTES = 512 * 1024 * 1024  # ... when its decoded copy fits in this (about 43 000 RGB images of 64 px)


def load_image_folder(spec: str, kind: str, root: Path, *, seed: int, val_fraction: float, holdout_fraction: float,
                      min_holdout: int, image_size: int | None) -> Any:
    """The dataset of a class folder (`folder`) or of `train/` + `val/` class folders (`imagenet`)."""
    if kind == "folder":
        dataset_folder(root, "dataset folder", "a folder with one sub-folder per class")
        classes = class_folders(root)
        files = list_images(root, classes)
        val_files: list[tuple[Path, int]] | None = None
    else:
        dataset_folder(root, "ImageNet-layout folder", "a folder holding train/ and val/, each with one sub-folder "
                       "per class")
        for part in ("train", "val"):
            dataset_folder(root / part, "ImageNet-layout folder", f"{root} with a {part}/ folder of class sub-folders")
        classes = class_folders(root / "train")
        files = list_images(root / "train", classes)
        val_files = _val_files(root / "val", classes)
    everything = files + (val_files or [])
    infos = check_images((p for p, _ in everything), len(everything), what=f"{len(everything)} images of {spec}")
    grey = all(info.grey for info in infos)
    sides = [s for info in infos for s in (info.width, info.height)]
    decoded = len(files) * (1 if grey else 3) * max(sides) ** 2
    if kind == "folder" and max(sides) <= IN_MEMORY_SIDE and decoded <= IN_MEMORY_BYTES:
        x, y, names = load_folder_in_memory(files, classes, image_size)
        return build_dataset(spec, x, y, names, None, seed=seed, val_fraction=val_fraction,
                             holdout_fraction=holdout_fraction, min_holdout=min_holdout, flip=True)
    y = np.array([c for _, c in files], dtype=np.int64)
    idx = split_indices(y, seed=seed, val_fraction=val_fraction, holdout_fraction=holdout_fraction,
                        min_holdout=min_holdout, official_val=val_files is not None)
    paths = {s: [files[i][0] for i in idx[s]] for s in idx}
    labels = {s: y[idx[s]] for s in idx}
    if val_files is not None:
        paths["val"] = [p for p, _ in val_files]
        labels["val"] = np.array([c for _, c in val_files], dtype=np.int64)
    for split in SPLITS:
        if len(labels[split]) == 0:
            raise UsageError(f"dataset {spec} is too small: its {split} split is empty; add images")
    channels = 1 if grey else 3
    mean, std = normalisation(channels)
    return StreamingDataset(
        spec=spec, num_classes=len(classes), in_channels=channels, class_names=list(classes), root=root,
        files={s: np.array([bytes(str(p), "utf-8", "surrogateescape") for p in paths[s]]) for s in SPLITS},
        labels=labels, mean=mean, std=std, fingerprint=fingerprint(root, paths, labels, classes), seed=seed,
        side_range=(min(sides), max(sides)))


def _val_files(val: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """The `val/` class folders' images, labelled by the `train/` classes (a class may have no val images)."""
    found = sorted(p.name for p in val.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise UsageError(f"val class folder {val / unknown[0]} has no train/ counterpart: val/ must use the class "
                         f"folders of train/ ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")
    present = [name for name in classes if name in found]
    if not present:
        raise UsageError(f"ImageNet-layout folder {val} has no class sub-folders: put the validation images in "
                         "val/<class>/")
    files = list_images(val, present)
    index = {name: classes.index(name) for name in present}
    return [(p, index[present[c]]) for p, c in files]
