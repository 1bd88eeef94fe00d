"""Write small image folders whose classes a person tells apart at a glance: a user's first `edgenas run` on data of
their own, of several kinds (issue 46's check trains such folders it has not seen).

Kinds (6 classes each, one sub-folder per class, PNG):
- `textures`: stripes at four orientations, checkerboard, dots, in two clearly different colours;
- `shapes`: one filled shape (disc, square, triangle, cross, ring, bar) of any colour on a plain background;
- `blobs`: soft blobs whose hue is the class (red, yellow, green, cyan, blue, magenta) on a grey background;
- `scenes`: photo-like layouts (horizon, vertical split, a centre object, a diagonal, a grid, spots) in smooth
  random colours with fine grain.
Each image has its own random colours, position, size, phase and Gaussian noise:

    python tools/make_folders.py OUT --kind shapes [--per-class 200] [--size 48] [--seed 0]
    edgenas train --dataset folder:OUT
"""

from __future__ import annotations

import argparse
import colorsys
from pathlib import Path

import numpy as np

KINDS = ("textures", "shapes", "blobs", "scenes")
CLASSES = {
    "textures": ("stripes-0", "stripes-45", "stripes-90", "stripes-135", "checker", "dots"),
    "shapes": ("disc", "square", "triangle", "cross", "ring", "bar"),
    "blobs": ("red", "yellow", "green", "cyan", "blue", "magenta"),
    "scenes": ("horizon", "split", "centre", "diagonal", "grid", "spots"),
}


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours in [0, 1] at least 0.5 apart (a difference a person sees at once)."""
    while True:
        a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        if np.linalg.norm(a - b) >= 0.5:
            return a, b


def _coords(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates centred on the image, turned by a small random angle."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) - (size - 1) / 2
    turn = np.deg2rad(rng.uniform(-10, 10))
    return x * np.cos(turn) - y * np.sin(turn), x * np.sin(turn) + y * np.cos(turn)


def _texture(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _coords(size, rng)
    period = rng.uniform(0.16, 0.28) * size
    w, phase = 2 * np.pi / period, rng.uniform(0, 2 * np.pi)
    if name.startswith("stripes"):
        angle = np.deg2rad(float(name.split("-")[1]))
        mask = np.sin(w * (u * np.cos(angle) + v * np.sin(angle)) + phase) > 0
    elif name == "checker":
        mask = np.sin(w * u + phase) * np.sin(w * v + phase) > 0
    else:
        cu, cv = np.mod(u + phase, period) - period / 2, np.mod(v + phase, period) - period / 2
        mask = np.hypot(cu, cv) < period * rng.uniform(0.22, 0.32)
    a, b = _two_colours(rng)
    return np.where(mask[..., None], a, b)


def _shape(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _coords(size, rng)
    r = rng.uniform(0.25, 0.38) * size
    u, v = (u - rng.uniform(-0.12, 0.12) * size) / r, (v - rng.uniform(-0.12, 0.12) * size) / r
    if name == "disc":
        mask = np.hypot(u, v) <= 1
    elif name == "square":
        mask = np.maximum(np.abs(u), np.abs(v)) <= 0.8
    elif name == "triangle":
        mask = (v <= 0.6) & (v >= -1 + 2.6 * np.abs(u) / 1.5)
    elif name == "cross":
        mask = ((np.abs(u) <= 0.3) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1))
    elif name == "ring":
        mask = (np.hypot(u, v) <= 1) & (np.hypot(u, v) >= 0.6)
    else:
        mask = (np.abs(u) <= 1.1) & (np.abs(v) <= 0.25)
    a, b = _two_colours(rng)
    return np.where(mask[..., None], a, b)


def _blobs(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    hue = CLASSES["blobs"].index(name) / 6 + rng.uniform(-0.03, 0.03)
    colour = np.array(colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)))
    img = np.full((size, size, 3), rng.uniform(0.3, 0.7))
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        weight = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (rng.uniform(0.1, 0.2) * size) ** 2))[..., None]
        img = img * (1 - weight) + colour * weight
    return img


def _scene(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _coords(size, rng)
    shift = rng.uniform(-0.15, 0.15) * size
    if name == "horizon":
        mask = v < shift
    elif name == "split":
        mask = u < shift
    elif name == "centre":
        mask = np.hypot(u - shift / 2, v + shift / 2) < rng.uniform(0.2, 0.3) * size
    elif name == "diagonal":
        mask = u + v < shift
    elif name == "grid":
        period = rng.uniform(0.3, 0.4) * size
        mask = (np.mod(u + shift, period) < period * 0.25) | (np.mod(v + shift, period) < period * 0.25)
    else:
        mask = np.zeros_like(u, dtype=bool)
        for _ in range(int(rng.integers(4, 8))):
            cy, cx = rng.uniform(-0.4, 0.4, 2) * size
            mask |= np.hypot(u - cx, v - cy) < rng.uniform(0.05, 0.09) * size
    a, b = _two_colours(rng)
    shade = 0.85 + 0.3 * (u / size)[..., None]  # light falling across the scene
    return np.where(mask[..., None], a, b) * shade


MAKERS = {"textures": _texture, "shapes": _shape, "blobs": _blobs, "scenes": _scene}


def image(kind: str, name: str, size: int, rng: np.random.Generator, noise: float = 0.06) -> np.ndarray:
    """One RGB image (uint8, size x size) of class `name` of folder kind `kind`."""
    img = MAKERS[kind](name, size, rng) + rng.normal(0, noise, (size, size, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_folder(out: str | Path, kind: str, *, per_class: int = 200, size: int = 48, seed: int = 0,
                 noise: float = 0.06) -> Path:
    """Write the folder (one sub-folder per class) and return its path."""
    from PIL import Image  # deferred: only the writer needs Pillow

    rng = np.random.default_rng([seed, KINDS.index(kind)])
    root = Path(out)
    for name in CLASSES[kind]:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(image(kind, name, size, rng, noise)).save(folder / f"{i:04d}.png")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--kind", choices=KINDS, default="shapes")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--noise", type=float, default=0.06)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_folder(args.out, args.kind, per_class=args.per_class, size=args.size, seed=args.seed, noise=args.noise)
    print(f"{len(CLASSES[args.kind]) * args.per_class} images of {len(CLASSES[args.kind])} classes ({args.kind}) in "
          f"{args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
