"""Supernet checkpoints: atomic save with a JSON manifest, resume state, and loading for later stages.

A checkpoint is a plain `torch.save` dict of tensors, numbers and strings (loaded with
`weights_only=True`): the search space, the weights, and for a resumable `last.pt` the optimizer,
scheduler, phase, step, RNG states and the teacher. The config and dataset fingerprint in it let a
resumed run refuse a checkpoint made from other settings or other data.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from edgenas.artifacts import atomic_write_bytes, sha256_file, write_manifest
from edgenas.errors import UsageError
from edgenas.space import SearchSpace
from edgenas.supernet import Supernet

FORMAT = "edgenas-supernet"
VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (with format tags) atomically to `path` and its manifest beside it."""
    path = Path(path)
    state = {"format": FORMAT, "version": VERSION, **state}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    write_manifest(
        path, kind="supernet-checkpoint" if state.get("complete") else "training-checkpoint",
        inputs={"dataset": {"spec": state.get("dataset"), "fingerprint": state.get("dataset_fingerprint")}},
        config=state.get("config"), seed=state.get("seed"),
        extra={"space": state.get("space"), "phase": state.get("phase_name"), "phase_index": state.get("phase_index"),
               "step_in_phase": state.get("step_in_phase"), "global_step": state.get("global_step"),
               "complete": bool(state.get("complete")), "summary": state.get("summary")},
    )
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict, or UsageError if the file is missing, not a checkpoint, or damaged."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist: train one with `edgenas train` (it writes supernet.pt)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...
        raise UsageError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(f"{path} is not an edgenas supernet checkpoint")
    if state.get("version", 0) > VERSION:
        raise UsageError(f"checkpoint {path} has format version {state['version']}; this edgenas reads up to {VERSION}: "
                         "upgrade edgenas")
    return state


def supernet_from_state(state: dict[str, Any]) -> Supernet:
    net = Supernet(SearchSpace.from_dict(state["space"]))
    net.load_state_dict(state["model"])
    return net


def load_supernet(path: str | Path, map_location: str | torch.device = "cpu") -> Supernet:
    """The supernet stored in a checkpoint (its search space included), in eval mode, largest arch active."""
    net = supernet_from_state(read_checkpoint(path, map_location))
    net.set_largest()
    return net.eval()


def load_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """What later stages need to reproduce the data and settings: dataset spec, fingerprint, seed, config,
    space dict, the checkpoint's sha256, training progress and the final summary (accuracies)."""
    state = read_checkpoint(path)
    return {
        "path": str(path),
        "sha256": sha256_file(path),
        "dataset": state["dataset"],
        "dataset_fingerprint": state["dataset_fingerprint"],
        "seed": state["seed"],
        "config": state["config"],
        "space": state["space"],
        "phase_index": state.get("phase_index"),
        "phase_name": state.get("phase_name"),
        "global_step": state.get("global_step"),
        "complete": bool(state.get("complete")),
        "summary": state.get("summary"),
    }
