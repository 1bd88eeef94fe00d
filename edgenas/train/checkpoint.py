"""Supernet checkpoints: atomic save with a JSON manifest, resume state, and loading for later stages.

A checkpoint is a plain `torch.save` dict of tensors, numbers and strings (loaded with
`weights_only=True`): the search space, the weights, and for a resumable `last.pt` the optimizer,
scheduler, phase, step, RNG states and the teacher. The config and dataset fingerprint in it let a
resumed run refuse a checkpoint made from other settings or other data.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from edgenas.artifacts import atomic_write_bytes, sha256_file, write_manifest
from edgenas.cost import arch_stats
from edgenas.data import load_dataset
from edgenas.errors import UsageError
from edgenas.inputs import MAX_CHECKPOINT_BYTES, check_tree, input_file, one_line, space_from_dict
from edgenas.space import SearchSpace
from edgenas.supernet import Supernet
from edgenas.train.config import check_settings

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
        inputs={"dataset": {"spec": state.get("dataset"), "fingerprint": state.get("dataset_fingerprint")},
                **({"init": state["init"]} if state.get("init") else {})},
        config=state.get("config"), seed=state.get("seed"),
        extra={"space": state.get("space"), "phase": state.get("phase_name"), "phase_index": state.get("phase_index"),
               "step_in_phase": state.get("step_in_phase"), "global_step": state.get("global_step"),
               "complete": bool(state.get("complete")), "summary": state.get("summary")},
    )
    return path


MAX_BYTES = MAX_CHECKPOINT_BYTES
MAX_PARAMS = 200_000_000  # far above any edge network; a bigger "space" in a file is damage, not a model
REMEDY = "re-train it with `edgenas train`, or use the supernet.pt it wrote"
# What every checkpoint holds (later stages read these), with the type each must have.
REQUIRED = {"space": dict, "model": dict, "dataset": str, "dataset_fingerprint": str, "seed": int, "config": dict}
# What a resumable last.pt adds.
RESUME_FIELDS = {"config_result": dict, "phase_index": int, "step_in_phase": int, "global_step": int}


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict, or UsageError if the file is missing, not a checkpoint, damaged or inconsistent.

    Loaded with `weights_only=True`: a file holding other Python objects is refused, never unpickled.
    Every field later stages read is checked: types, the search space, finite weights whose shapes
    are those of the stored space's supernet (its class count included).
    """
    path = input_file(path, "checkpoint", hint="train one with `edgenas train` (it writes supernet.pt)")
    if path.stat().st_size > MAX_BYTES:
        raise UsageError(f"checkpoint {path} is larger than {MAX_BYTES >> 30} GiB: is it the right file?")
    try:
        with warnings.catch_warnings():  # torch warns about a foreign file's pickle protocol before refusing it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, objects other than tensors ...
        raise UsageError(f"cannot read checkpoint {path}: {load_problem(exc, path)}; {REMEDY}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(f"{path} is not an edgenas supernet checkpoint (no format = {FORMAT!r} in it); {REMEDY}")
    version = state.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UsageError(f"checkpoint {path}: version = {version!r}: expected a positive integer; {REMEDY}")
    if version > VERSION:
        raise UsageError(f"checkpoint {path} has format version {state['version']}; this edgenas reads up to {VERSION}: "
                         "upgrade edgenas")
    source = f"checkpoint {path}"
    _check_fields(state, REQUIRED, source)
    if not 0 <= state["seed"] <= 2**31 - 1:
        raise UsageError(f"{source}: seed = {state['seed']}: expected an integer from 0 to {2**31 - 1}; {REMEDY}")
    check_tree({k: v for k, v in state.items() if k in ("config", "summary", "history", "config_result")}, source,
               remedy=REMEDY)
    check_settings(state["config"], f"{source}: config", remedy=REMEDY)
    for key, kind in (("summary", dict), ("history", list)):
        if state.get(key) is not None and not isinstance(state[key], kind):
            raise UsageError(f"{source}: {key} is a {type(state[key]).__name__}: expected {kind.__name__}; {REMEDY}")
    space = space_from_dict(state["space"], source, REMEDY)
    _check_weights(state["model"], space, f"checkpoint {path}", "model")
    if state.get("teacher") is not None:
        if not isinstance(state["teacher"], dict):
            raise UsageError(f"checkpoint {path}: teacher is a {type(state['teacher']).__name__}: expected weights; "
                             f"{REMEDY}")
        _check_weights(state["teacher"], space, f"checkpoint {path}", "teacher")
    return state


def check_resume_fields(state: dict[str, Any], path: str | Path) -> None:
    """A `last.pt` to resume from must also hold its training progress (phase, step, the config it ran)."""
    _check_fields(state, RESUME_FIELDS, f"checkpoint {path}")


def load_problem(exc: Exception, path: Path) -> str:
    """What went wrong in torch.load, in a few words; never torch's advice to load unsafely."""
    text = str(exc)
    if "GLOBAL" in text or "unsupported global" in text.lower() or "unsupported class" in text.lower():
        found = re.search(r"GLOBAL ([\w.]+)", text)
        asked = f" (it asks for {found.group(1)})" if found else ""
        return (f"it holds Python objects besides tensors, numbers and strings{asked}, which edgenas does not "
                "unpickle (nothing in it was run)")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if head == b"PK\x03\x04":
        return "it is a truncated or damaged PyTorch file"
    if head[:1] == b"\x80":
        return "it is a damaged or foreign pickle, not a PyTorch checkpoint"
    return "it is not a PyTorch checkpoint (it does not start like one)"


def _check_fields(state: dict[str, Any], fields: dict[str, type], source: str) -> None:
    for key, kind in fields.items():
        if key not in state:
            raise UsageError(f"{source}: missing field {key}: it is damaged or made by another program; {REMEDY}")
        value = state[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UsageError(f"{source}: {key} is a {type(value).__name__}: expected {kind.__name__}; {REMEDY}")
        if kind is int and value < 0:
            raise UsageError(f"{source}: {key} = {value}: expected 0 or more; {REMEDY}")


def _check_weights(weights: dict[str, Any], space: SearchSpace, source: str, role: str) -> None:
    """The weights must be exactly those of the space's supernet: same names, shapes, finite values."""
    try:
        params = arch_stats(space, space.largest()).params
    except (ValueError, ZeroDivisionError, OverflowError) as exc:
        raise UsageError(f"{source}: its search space '{space.name}' is not buildable ({one_line(str(exc))}); "
                         f"{REMEDY}") from None
    if params > MAX_PARAMS:
        raise UsageError(f"{source}: its search space '{space.name}' has {params:,} parameters, more than the "
                         f"{MAX_PARAMS:,} an edge supernet may have: the file is damaged; {REMEDY}")
    expected = {k: tuple(v.shape) for k, v in Supernet(space).state_dict().items()}
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected), key=str)
    if missing or extra:
        which = f"lacks {missing[0]}" if missing else f"has the unexpected entry {str(extra[0])[:60]}"
        raise UsageError(f"{source}: its {role} weights do not match its search space '{space.name}' "
                         f"({space.num_classes} classes): it {which}; {REMEDY}")
    for key, shape in expected.items():
        tensor = weights[key]
        if not isinstance(tensor, torch.Tensor):
            raise UsageError(f"{source}: {role} weight {key} is a {type(tensor).__name__}, not a tensor; {REMEDY}")
        if tuple(tensor.shape) != shape:
            raise UsageError(f"{source}: {role} weight {key} has shape {list(tensor.shape)} but its search space "
                             f"'{space.name}' ({space.num_classes} classes) needs {list(shape)}; {REMEDY}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UsageError(f"{source}: {role} weight {key} holds NaN or infinite values (training diverged?); "
                             f"{REMEDY}")


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
    return checkpoint_info(path, read_checkpoint(path))


def checkpoint_info(path: str | Path, state: dict[str, Any]) -> dict[str, Any]:
    """`load_checkpoint_info` of a checkpoint dict already read from `path`."""
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


class OpenedCheckpoint:
    """A checkpoint read once: its `info`, its `supernet` (eval mode, largest arch active) and `dataset()`.

    The later stages (accuracy, deploy, export) each need all three; reading the file once keeps them
    consistent and avoids a second `torch.load`."""

    def __init__(self, path: str | Path) -> None:
        state = read_checkpoint(path)
        self.path = Path(path)
        self.info = checkpoint_info(path, state)
        self.supernet = supernet_from_state(state)
        self.supernet.set_largest()
        self.supernet.eval()
        self._dataset: Any = None

    @property
    def space(self) -> SearchSpace:
        return self.supernet.space

    def dataset(self, spec: str | None = None) -> Any:
        """The dataset it was trained on (cached), or `spec`; the training data's fingerprint must still match."""
        if spec is not None and spec != self.info["dataset"]:
            return load_dataset(spec, seed=self.info.get("seed", 0))
        if self._dataset is None:
            dataset = load_dataset(self.info["dataset"], seed=self.info.get("seed", 0))
            if dataset.fingerprint != self.info["dataset_fingerprint"]:
                raise UsageError(f"dataset {self.info['dataset']} now has fingerprint {dataset.fingerprint[:12]}, "
                                 f"but the supernet was trained on {self.info['dataset_fingerprint'][:12]}: "
                                 "use the data it was trained on")
            self._dataset = dataset
        return self._dataset
