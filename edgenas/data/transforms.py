"""Once-for-All's image transforms on Pillow images, seeded: random-resized crop, flip, colour jitter; resize + centre crop.

torchvision's transforms would be the first choice, but no CPU build of torchvision installs beside torch 2.13.0
here (notes/dependencies.md), so the few Once-for-All uses are written out, each as torchvision defines it:
`RandomResizedCrop(res, scale=(0.08, 1), ratio=(3/4, 4/3))`, `RandomHorizontalFlip()`, `ColorJitter(brightness=32/255,
saturation=0.5)` (Once-for-All's "tf" colour distortion) for training; `Resize(ceil(res / 0.875))` +
`CenterCrop(res)` for evaluation. Every random draw comes from the `numpy.random.Generator` handed in, so a sample's
augmentation depends on (seed, epoch, batch, position) only, never on which worker decoded it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
BRIGHTNESS = 32 / 255
SATURATION = 0.5
CROP_FRACTION = 0.875


def crop_box(width: int, height: int, rng: np.random.Generator, scale: tuple[float, float] = SCALE,
             ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (left, top, right, bottom) of a crop of `scale` of the area and
    an aspect ratio log-uniform in `ratio`; after 10 misses, the centre crop with the ratio clamped into range."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def train_transform(image: Any, resolution: int, rng: np.random.Generator, *, flip: bool = True) -> np.ndarray:
    """A training sample: random-resized crop to `resolution`, horizontal flip (where valid), colour jitter;
    uint8 (C, resolution, resolution)."""
    # deferred: PIL loads only when this runs, not on import
    from PIL import Image

    box = crop_box(image.width, image.height, rng)
    out = image.resize((resolution, resolution), Image.BILINEAR, box=box)
    if flip and rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return colour_jitter(_chw(out), rng)


def colour_jitter(x: np.ndarray, rng: np.random.Generator, brightness: float = BRIGHTNESS,
                  saturation: float = SATURATION) -> np.ndarray:
    """ColorJitter(brightness, saturation) on uint8 CHW: a brightness factor in [1 - b, 1 + b] and (colour images)
    a saturation factor in [1 - s, 1 + s], in random order as torchvision applies them."""
    b = rng.uniform(1 - brightness, 1 + brightness)
    s = rng.uniform(1 - saturation, 1 + saturation)
    y = x.astype(np.float32)
    order = ("b", "s") if rng.random() < 0.5 else ("s", "b")
    for op in order:
        if op == "b":
            y = np.clip(y * b, 0, 255)
        elif y.shape[0] == 3:
            grey = (0.299 * y[0] + 0.587 * y[1] + 0.114 * y[2])[None]
            y = np.clip(grey + s * (y - grey), 0, 255)
    return (y + 0.5).astype(np.uint8)


def eval_transform(image: Any, resolution: int) -> np.ndarray:
    """An evaluation sample: the shorter side resized to ceil(resolution / 0.875), the centre `resolution` square
    cropped; uint8 (C, resolution, resolution)."""
    # deferred: PIL loads only when this runs, not on import
    from PIL import Image

    short = math.ceil(resolution / CROP_FRACTION)
    w, h = image.size
    scale = short / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    image = image.resize(size, Image.BILINEAR)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return _chw(image.crop((left, top, left + resolution, top + resolution)))


def _chw(image: Any) -> np.ndarray:
    a = np.asarray(image, dtype=np.uint8)
    return a[None].copy() if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))
