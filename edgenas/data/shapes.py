"""The synthetic `shapes` dataset: seeded coloured geometric shapes (10 classes) with clutter and noise."""

from __future__ import annotations

import numpy as np

from edgenas.errors import UsageError

SHAPE_CLASSES = ("circle", "square", "triangle", "hexagon", "ellipse", "ring", "cross", "star", "crescent", "frame")


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
