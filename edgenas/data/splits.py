"""The train / val / holdout splits: stratified by class and seeded, the same for in-memory and streamed data."""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "holdout")


def stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, taken): `fraction` of every class taken, in random order."""
    keep, taken = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * len(idx)))
        taken.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(taken))


def split_indices(y: np.ndarray, *, seed: int, val_fraction: float, holdout_fraction: float, min_holdout: int,
                  official_val: bool) -> dict[str, np.ndarray]:
    """Indices into `y` of each split, stratified and seeded by `seed`.

    Without an official validation set, `val` is `val_fraction` of every class; the holdout is `holdout_fraction`
    of the rest, but at least `min_holdout` images (never more than a quarter). With one, no `val` key."""
    from edgenas.errors import UsageError

    rng = np.random.default_rng([seed, 3])
    base = np.arange(len(y))
    out: dict[str, np.ndarray] = {}
    if not official_val:
        if not 0.0 < val_fraction < 1.0:
            raise UsageError(f"val_fraction {val_fraction} must be between 0 and 1")
        base, out["val"] = stratified_split(y, val_fraction, rng)
    n = max(1, len(base))
    n_hold = max(int(round(holdout_fraction * len(base))), min(min_holdout, len(base) // 4))
    keep, hold = stratified_split(y[base], n_hold / n, rng)
    out["train"], out["holdout"] = base[keep], base[hold]
    return out
