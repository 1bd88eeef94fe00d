"""Once-for-All-shaped test inputs: its supernets' key/shape layout with seeded random weights, and random archs.

The layouts (`tests/data/ofa/layout_w1.0.json`, `_w1.2.json`) and the reference outputs beside them were
written once by `tools/make_ofa_fixtures.py` with Once-for-All's own code; the tests rebuild the same weights
from the layout and the seed here, so they need neither that code nor the published (downloaded) files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "ofa"
WIDTHS = ("1.0", "1.2")
SEED = 2028


def layout(width: str) -> dict[str, list[int]]:
    """Once-for-All's `state_dict` key → shape for its MobileNetV3 supernet at `width` (d234, e346, k357)."""
    return json.loads((DATA / f"layout_w{width}.json").read_text())


def ofa_weights(width: str, seed: int = SEED, *, calibrated: bool = True) -> dict:
    """Seeded random values in Once-for-All's layout: kernel matrices near the identity, convolutions scaled to
    keep activations of order one, and (`calibrated`) BatchNorm statistics those weights produce, so that every
    choice of the subnet moves the logits. The statistics (`bn_stats_w<width>.npz`, float16) were taken once by
    Once-for-All's code: the largest subnet at 224 px, in training mode, on `images(8, 224)`."""
    import torch

    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in layout(width).items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(int(rng.integers(1, 1000)))
            continue
        if key.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        elif key.endswith("running_mean"):
            value = rng.normal(0.0, 0.2, shape)
        elif ".bn." in key and key.endswith("weight"):
            value = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("_matrix"):
            value = np.eye(shape[0]) + rng.normal(0.0, 0.1, shape)
        elif key.endswith("bias"):
            value = rng.normal(0.0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            gain = 3.0 if key.startswith("classifier") else 1.0  # logits of order one
            value = rng.normal(0.0, gain / np.sqrt(fan_in), shape)
        out[key] = torch.tensor(value, dtype=torch.float32)
    stats = DATA / f"bn_stats_w{width}.npz"
    if calibrated and seed == SEED and stats.is_file():
        with np.load(stats) as data:
            for key in data.files:
                out[key] = torch.from_numpy(data[key].astype(np.float32))
    return out


def images(n: int, resolution: int, seed: int = SEED) -> np.ndarray:
    """Seeded inputs, normalised-image-like (N, 3, r, r) float32."""
    return np.random.default_rng([seed, resolution]).normal(0.0, 1.0, (n, 3, resolution, resolution)).astype(np.float32)


def ofa_sample(rng: np.random.Generator, resolutions) -> dict:
    """A random arch in Once-for-All's form: a kernel and expand ratio for each of the 20 slots, 5 depths."""
    return {"ks": [int(k) for k in rng.choice([3, 5, 7], 20)], "e": [int(e) for e in rng.choice([3, 4, 6], 20)],
            "d": [int(d) for d in rng.choice([2, 3, 4], 5)], "r": [int(rng.choice(resolutions))]}


def to_arch(sample: dict):
    """Once-for-All's arch dict as an edgenas Arch (inactive slots dropped)."""
    from edgenas.space import Arch

    kernels, expands = [], []
    for stage, depth in enumerate(sample["d"]):
        kernels += sample["ks"][4 * stage: 4 * stage + depth]
        expands += sample["e"][4 * stage: 4 * stage + depth]
    return Arch(sample["r"][0], tuple(sample["d"]), tuple(kernels), tuple(expands))


def predictor_weights(seed: int = SEED) -> dict:
    """Seeded weights in the layout of Once-for-All's `acc_predictor.pth` (an MLP 128-400-400-400-1)."""
    import torch

    rng = np.random.default_rng([seed, 1])
    out = {}
    for name, (inp, width) in zip(("0", "2", "4", "6"), ((128, 400), (400, 400), (400, 400), (400, 1))):
        out[f"{name}.weight"] = torch.tensor(rng.normal(0.0, 1.0 / np.sqrt(inp), (width, inp)), dtype=torch.float32)
        out[f"{name}.bias"] = torch.tensor(rng.normal(0.0, 0.05, width), dtype=torch.float32)
    out["6.bias"] += 0.78  # an accuracy-like level
    return out


def predictor_archs(n: int, seed: int = SEED) -> list[dict]:
    """Seeded random archs at the resolutions the predictor's encoding has a slot for that the supernet offers."""
    rng = np.random.default_rng([seed, 2])
    return [ofa_sample(rng, (128, 144, 160, 176, 192, 208, 224)) for _ in range(n)]


def lut_archs(resolution: int, n: int, seed: int = SEED) -> list[dict]:
    rng = np.random.default_rng([seed, 3, resolution])
    return [ofa_sample(rng, [resolution]) for _ in range(n)]
