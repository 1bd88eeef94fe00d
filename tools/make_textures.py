"""Write a folder dataset of noisy textures: a test of `edgenas run` on data of one's own, harder than digits.

Six classes (stripes at four orientations, checkerboard, dots), each image a random period, phase, pair of
colours and contrast, a small rotation and Gaussian noise, saved as PNG in one sub-folder per class:

    python tools/make_textures.py OUT [--per-class 200] [--size 48] [--noise 0.15] [--seed 0]
    edgenas train --dataset folder:OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CLASSES = ("stripes-0", "stripes-45", "stripes-90", "stripes-135", "checker", "dots")


def texture(kind: str, size: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """One RGB image (uint8, size x size) of the class `kind`."""
    period = rng.uniform(5.0, 12.0)
    turn = np.deg2rad(rng.uniform(-12, 12))
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) - size / 2
    u, v = x * np.cos(turn) - y * np.sin(turn), x * np.sin(turn) + y * np.cos(turn)
    phase = rng.uniform(0, 2 * np.pi)
    w = 2 * np.pi / period
    if kind.startswith("stripes"):
        angle = np.deg2rad(float(kind.split("-")[1]))
        wave = np.sin(w * (u * np.cos(angle) + v * np.sin(angle)) + phase)
    elif kind == "checker":
        wave = np.sin(w * u + phase) * np.sin(w * v + phase)
    else:  # dots: bright discs on a grid
        cu, cv = np.mod(u + phase, period) - period / 2, np.mod(v + phase, period) - period / 2
        wave = np.where(cu ** 2 + cv ** 2 < (period * rng.uniform(0.2, 0.35)) ** 2, 1.0, -1.0)
    contrast = rng.uniform(0.25, 1.0)
    a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    mix = (0.5 + 0.5 * contrast * wave)[..., None]
    img = mix * a + (1 - mix) * b + rng.normal(0, noise, (size, size, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from PIL import Image

    rng = np.random.default_rng(args.seed)
    for kind in CLASSES:
        folder = Path(args.out) / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            Image.fromarray(texture(kind, args.size, rng, args.noise)).save(folder / f"{i:04d}.png")
    print(f"{len(CLASSES) * args.per_class} images of {len(CLASSES)} classes in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
