"""TFLite Micro check of an int8 model: does the real microcontroller interpreter run it, and in how much SRAM.

The model is loaded in the TFLite Micro interpreter from the `tflite-micro` package (the same C++
kernels and memory planner a board runs). An op TFLite Micro lacks is reported by name. The
smallest tensor arena that allocates and runs the model is found by binary search: that is the
model's real SRAM need for activations and runtime bookkeeping, shown beside the arena predicted
before conversion (`edgenas.micro_memory`, what the search constrains) and the analytic peak-activation
estimate (`edgenas.cost`), which counts activations only.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.errors import require
from edgenas.export.quiet import captured_output

DEFAULT_MAX_ARENA = 32 << 20
_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([A-Za-z0-9_]+)'")
_MISSING_CUSTOM = re.compile(r"Didn't find op for custom opcode '([^']+)'")


@dataclass(frozen=True)
class MicroCheck:
    """Result of `check_micro`. `arena_bytes` is the smallest arena that ran the model (None when it does not run)."""

    path: str
    ok: bool
    arena_bytes: int | None
    analytic_peak_bytes: int | None = None
    unsupported_ops: list[str] = field(default_factory=list)
    error: str | None = None
    max_abs_diff_vs_tflite: float | None = None
    top1_agrees_with_tflite: bool | None = None
    trials: int = 0
    activation_bytes: int | None = None  # arena head: tensors the memory planner places, plus kernel scratch
    persistent_bytes: int | None = None  # arena tail: interpreter structs, quantization data, per-op state
    predicted_arena_bytes: int | None = None  # edgenas.micro_memory's prediction for the arch, when known

    @property
    def arena_kb(self) -> float | None:
        return None if self.arena_bytes is None else self.arena_bytes / 1024

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if not self.ok:
            if self.unsupported_ops:
                return f"TFLite Micro cannot run {self.path}: unsupported op(s) {', '.join(self.unsupported_ops)}"
            return f"TFLite Micro cannot run {self.path}: {self.error}"
        estimate = "" if self.predicted_arena_bytes is None else \
            f"; predicted {self.predicted_arena_bytes / 1024:.1f} KiB"
        if self.analytic_peak_bytes is not None:
            estimate += f"; analytic peak activations {self.analytic_peak_bytes / 1024:.1f} KiB"
        split = "" if self.activation_bytes is None else \
            f" ({self.activation_bytes / 1024:.1f} KiB tensors and scratch, {self.persistent_bytes / 1024:.1f} KiB persistent)"
        return f"TFLite Micro runs {Path(self.path).name} in a {self.arena_bytes / 1024:.1f} KiB arena{split}{estimate}"


def _runtime():
    return require("tflite_micro.python.tflite_micro.runtime", extra="tflite", purpose="the TFLite Micro check")


def _try_run(runtime: Any, data: bytes, arena: int, sample: np.ndarray | None,
             allocations: bool = False) -> tuple[bool, str, np.ndarray | None]:
    """Load `data` in a TFLite Micro interpreter with `arena` bytes and invoke it once; (ok, log, output).
    With `allocations`, the log also holds TFLite Micro's record of how the arena was used."""
    out = None
    with captured_output() as log:
        try:
            interpreter = runtime.Interpreter.from_bytes(data, arena_size=int(arena))
            if sample is not None:
                interpreter.set_input(sample, 0)
            interpreter.invoke()
            out = np.array(interpreter.get_output(0))
            if allocations:
                interpreter.print_allocations()
            ok = True
        except Exception as exc:  # allocation failure, missing op, invoke error
            ok = False
            error = f"{type(exc).__name__}: {exc}"
    text = log.text if ok else (log.text + "\n" + error)
    return ok, text, out


def _first_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def check_micro(
    path: str | os.PathLike,
    *,
    images: np.ndarray | None = None,
    analytic_peak_bytes: int | None = None,
    predicted_arena_bytes: int | None = None,
    max_arena: int = DEFAULT_MAX_ARENA,
    granularity: int = 16,
) -> MicroCheck:
    """Run `path` in TFLite Micro and find the smallest arena that works (to `granularity` bytes).

    `images` (NCHW float, as for the PyTorch model) gives the input for the runs and, for the first image,
    a comparison with the TFLite interpreter; without it the input is zeros.
    """
    # deferred: torch loads only when this runs, not on import
    from edgenas.export.tflite import describe_tflite, quantize_input, run_tflite, to_model_input

    runtime = _runtime()
    path = Path(path)
    data = path.read_bytes()
    info = describe_tflite(path)
    sample = None
    if images is not None and len(images):
        x = to_model_input(images[:1], info["input_shape"])
        if info["input_dtype"] != "float32":
            scale, zero = info["input_quantization"]
            x = quantize_input(x, scale, int(zero), np.dtype(info["input_dtype"]))
        sample = x
    else:
        sample = np.zeros(info["input_shape"], dtype=np.dtype(info["input_dtype"]))

    ok, text, out = _try_run(runtime, data, max_arena, sample, allocations=True)
    trials = 1
    if not ok:
        missing = sorted(set(_MISSING_OP.findall(text)) | set(_MISSING_CUSTOM.findall(text)))
        error = ("unsupported op(s) " + ", ".join(missing)) if missing else _first_error(text)
        return MicroCheck(str(path), False, None, analytic_peak_bytes, missing, error, trials=trials,
                          predicted_arena_bytes=predicted_arena_bytes)

    diff = agrees = None
    if images is not None and len(images):
        reference = run_tflite(path, images[:1])
        got = np.asarray(out, dtype=np.float32).reshape(1, -1)
        if info["output_dtype"] != "float32":
            scale, zero = info["output_quantization"]
            got = (got - zero) * scale
        diff = float(np.abs(got - reference).max())
        agrees = bool(got.argmax() == reference.argmax())

    lo, hi = 0, max_arena  # lo fails (or is zero), hi works
    splits = {max_arena: _arena_parts(text)}
    # TFLite Micro's record of a working run (head: tensors and scratch, tail: persistent) is what the model needs:
    # the smallest arena is there when it works and one step less fails (3 interpreters in all, where a bisection
    # from zero took 25 and 3.3 s of each of the demo's deploy stages); otherwise the bisection goes on from there.
    head, tail = splits[max_arena]
    if head is not None and tail is not None:
        guess = -(-(head + tail) // granularity) * granularity
        if 0 < guess < hi:
            works, text, _ = _try_run(runtime, data, guess, sample, allocations=True)
            trials += 1
            if works:
                hi, splits[guess] = guess, _arena_parts(text)
                if guess - granularity > 0:
                    trials += 1
                    if _try_run(runtime, data, guess - granularity, sample)[0]:
                        hi = guess - granularity  # smaller than its own record says: bisect below
                    else:
                        lo = guess - granularity
            else:
                lo = guess
    while hi - lo > granularity:
        mid = (lo + hi) // 2
        mid -= mid % granularity
        if mid <= lo:
            break
        works, _, _ = _try_run(runtime, data, mid, sample)
        trials += 1
        if works:
            hi = mid
        else:
            lo = mid
    if hi not in splits:
        splits[hi] = arena_split(runtime, data, hi, sample)
        trials += 1
    head, tail = splits[hi]
    return MicroCheck(str(path), True, hi, analytic_peak_bytes, [], None, diff, agrees, trials, head, tail,
                      predicted_arena_bytes)


_ARENA_PART = re.compile(r"Arena allocation (head|tail) (\d+) bytes")


def _arena_parts(text: str) -> tuple[int | None, int | None]:
    parts = {name: int(value) for name, value in _ARENA_PART.findall(text)}
    return parts.get("head"), parts.get("tail")


def arena_split(runtime: Any, data: bytes, arena: int, sample: np.ndarray | None) -> tuple[int | None, int | None]:
    """(head, tail) bytes of a working arena, from TFLite Micro's allocation record (None where unreadable)."""
    _, text, _ = _try_run(runtime, data, arena, sample, allocations=True)
    return _arena_parts(text)
