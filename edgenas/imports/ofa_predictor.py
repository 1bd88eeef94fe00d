"""Once-for-All's published accuracy predictor (`acc_predictor.pth`) as an edgenas accuracy predictor.

Its MLP (128 → 400 → 400 → 400 → 1, ReLU) reads `AccuracyPredictor.spec2feats` of
`ofa/tutorial/accuracy_predictor.py`: a kernel one-hot per block slot (60 values), an expand one-hot per
slot (60), inactive slots all zero, then the resolution one-hot over 112, 128, ..., 224 px (8). edgenas's
encoding (`SearchSpace.encode`) holds the same one-hots in another order (resolution first, then kernel and
expand slot by slot), so the import reorders the first layer's inputs and keeps every number: the result
equals Once-for-All's output. The space is the w1.2 supernet's (the one the predictor was trained on) at
the resolutions that have a slot; any other resolution is refused, never rounded to a neighbour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgenas.accuracy.predictor import AccuracyPredictor
from edgenas.artifacts import sha256_file
from edgenas.errors import UsageError
from edgenas.space import SearchSpace

SLOT_RESOLUTIONS = tuple(range(112, 225, 16))  # r_onehot[(r - 112) // 16]
SLOTS = 20
KERNELS, EXPANDS = (3, 5, 7), (3, 4, 6)  # Once-for-All's ks_map / ex_map order
LAYERS = (("0", 128, 400), ("2", 400, 400), ("4", 400, 400), ("6", 400, 1))
PRESET = "mobilenetv3-w1.2"
WHAT = "Once-for-All's accuracy predictor (acc_predictor.pth: an MLP 128-400-400-400-1, keys 0.weight ... 6.bias)"


def predictor_space() -> SearchSpace:
    """The w1.2 space at the resolutions both the supernet offers and the predictor's encoding has a slot for."""
    space = SearchSpace.preset(PRESET)
    return space.replace(resolutions=tuple(r for r in space.resolutions if r in SLOT_RESOLUTIONS))


def ofa_feature_index(space: SearchSpace) -> np.ndarray:
    """For each position of `space.encode`'s vector, the position of the same one-hot in Once-for-All's."""
    rows = [2 * SLOTS * 3 + SLOT_RESOLUTIONS.index(r) for r in space.resolutions]
    for slot in range(SLOTS):
        rows += [slot * 3 + KERNELS.index(k) for k in space.kernels]
        rows += [SLOTS * 3 + slot * 3 + EXPANDS.index(e) for e in space.expands]
    return np.array(rows)


def read_ofa_predictor(path: str | Path) -> dict[str, np.ndarray]:
    """The MLP's tensors as float32 arrays, checked against the published layout."""
    # deferred: torch loads only when this runs, not on import
    import torch

    from edgenas.imports.ofa import load_torch_file

    path, state = load_torch_file(path, WHAT, "it is acc_predictor.pth from Once-for-All")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UsageError(f"{path} is not {WHAT}: it holds a {type(state).__name__}")
    if "base_acc" in state:
        raise UsageError(f"{path} is ofa.nas's predictor (with base_acc and its own arch encoder), not {WHAT}")
    expected = {f"{name}.weight": (out, inp) for name, inp, out in LAYERS}
    expected.update({f"{name}.bias": (out,) for name, _, out in LAYERS})
    for key in sorted(set(state) - set(expected), key=str)[:1]:
        raise UsageError(f"{path} is not {WHAT}: unexpected entry {str(key)[:60]!r}")
    out = {}
    for key, shape in expected.items():
        tensor = state.get(key)
        if not isinstance(tensor, torch.Tensor):
            raise UsageError(f"{path} is not {WHAT}: it lacks {key}")
        if tuple(tensor.shape) != shape:
            raise UsageError(f"{path}: {key} has shape {list(tensor.shape)}: {WHAT} has {list(shape)}")
        out[key] = tensor.detach().float().numpy()
        if not np.isfinite(out[key]).all():
            raise UsageError(f"{path}: {key} holds NaN or infinite values: the file is damaged")
    return out


def import_ofa_predictor(path: str | Path, out: str | Path) -> dict[str, Any]:
    """Write Once-for-All's predictor `path` as an edgenas accuracy predictor `.npz` at `out` (manifest beside it)."""
    state = read_ofa_predictor(path)
    space = predictor_space()
    weights = [state[f"{name}.weight"].T for name, _, _ in LAYERS]
    weights[0] = weights[0][ofa_feature_index(space)]  # edgenas's feature order; the 112 px slot has no subnet
    biases = [state[f"{name}.bias"] for name, _, _ in LAYERS]
    sha = sha256_file(path)
    origin = {"format": "once-for-all", "file": Path(path).name, "sha256": sha,
              "encoding": "ofa/tutorial/accuracy_predictor.py spec2feats", "output": "top-1 as a fraction"}
    predictor = AccuracyPredictor(space, weights, biases, output="linear", info={"imported_from": origin})
    saved = predictor.save(out, inputs={"once_for_all_predictor": str(path)})
    return {"out": str(saved), "space": space.name, "resolutions": list(space.resolutions), "source_sha256": sha}
