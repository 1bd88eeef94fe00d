"""Measurement: one model's latency on one device, with everything needed to judge the figure later."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

# Error codes a Measurement can carry (None means the model was measured).
TIMEOUT = "timeout"  # the model took longer than [timeouts] model; the agent was stopped
RUNTIME_ERROR = "runtime_error"  # the runtime failed or crashed while running the model
UNREACHABLE = "unreachable"  # the device could not be reached after all retries
BAD_MODEL = "bad_model"  # the runtime could not load the file, or it is the wrong format for the device
RUNTIME_MISSING = "runtime_missing"  # the device's Python cannot import the runtime
BAD_CONFIG = "bad_config"  # the device rejected a setting (e.g. CPU pinning to a CPU it lacks)
AGENT_ERROR = "agent_error"  # the agent or its Python failed to start, or broke the protocol
PARSE_ERROR = "parse_error"  # an MCU command's output did not contain the latency pattern
HOST_KEY = "host_key"  # the device's SSH host key was unknown or changed (fleet only; else raised)
AUTH = "auth"  # SSH authentication failed (fleet only; else raised)
INTERNAL_ERROR = "internal_error"  # a bug on the host side (fleet only; else raised)

ERROR_CODES = (
    TIMEOUT, RUNTIME_ERROR, UNREACHABLE, BAD_MODEL, RUNTIME_MISSING, BAD_CONFIG, AGENT_ERROR,
    PARSE_ERROR, HOST_KEY, AUTH, INTERNAL_ERROR,
)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Measurement:
    """Latency of one model on one device (milliseconds), or an error code saying why there is none.

    `latency_ms` is the figure a latency is judged by (budgets, tables, calibration): for models timed
    interleaved by the agent, the fast-state cost plus the mean stall (see agent.window_stats); for a
    board with exact timing, the median of its runs. `median_ms`, `mean_ms`, ... describe the runs
    themselves. `timing` says how the figure was taken and how far to trust it: the window's length,
    how many models shared it, what the speed probe saw (`slow_share`, `probe_ratio`), the share of
    time other work took, whether the window was timed again (`retimed`) and, when it still was not
    steady, why (`unsteady`; `noisy` is then True). `machine` holds the device's environment at
    measuring time (machine, CPU, load average, CPU quota, clock, temperature where readable);
    `samples_ms` the timed runs (thinned to a few hundred spread over the window); `extra` what the
    device reported beyond these fields.
    """

    model_path: str
    model_sha256: str
    device: str
    runtime: str
    runtime_version: str | None = None
    threads: int = 1
    latency_ms: float | None = None
    median_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    p90_ms: float | None = None
    runs: int = 0
    warmup: int = 0
    cv: float | None = None
    error: str | None = None
    error_message: str | None = None
    agent_version: str | None = None
    machine: dict[str, Any] = field(default_factory=dict, hash=False)
    timestamp: str = ""
    noisy: bool = False
    samples_ms: tuple[float, ...] = field(default=(), hash=False)
    passes: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    load_ms: float | None = None
    inputs: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    timing: dict[str, Any] = field(default_factory=dict, hash=False)
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.latency_ms is not None

    @property
    def retimed(self) -> int:
        """How many times the window was timed again because the device changed too much."""
        return int(self.timing.get("retimed") or 0)

    @property
    def unsteady(self) -> str | None:
        """Why the figure is not to be trusted (the device changed during every window), or None."""
        return (self.timing.get("window") or {}).get("unsteady")

    def trust_line(self) -> str:
        """How far to trust the figure, in a few words for a table: spread, slow share, retimes."""
        window = self.timing.get("window") or {}
        parts = []
        if self.extra.get("spread") is not None:
            parts.append(f"spread {float(self.extra['spread']):.0%}")
        if window.get("slow_share") is not None:
            parts.append(f"slow {float(window['slow_share']):.0%} of {float(window.get('seconds') or 0):.0f} s")
        if self.retimed:
            parts.append(f"retimed {self.retimed}x")
        if self.unsteady:
            parts.append("UNSTEADY: " + str(self.unsteady))
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists); `from_dict(m.to_dict()) == m`."""
        out = dataclasses.asdict(self)
        for key in ("samples_ms", "passes", "inputs"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """Inverse of to_dict; keys this version does not know are kept in `extra`."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        unknown = {k: v for k, v in data.items() if k not in names}
        for key in ("samples_ms", "passes", "inputs"):
            if key in known and known[key] is not None:
                known[key] = tuple(known[key])
        if unknown:
            known["extra"] = {**dict(known.get("extra") or {}), **unknown}
        return cls(**known)


def meets_budget(latency_ms: float | None, budget_ms: float | None) -> bool:
    """The one rule for "meets the latency budget": a measured figure (`Measurement.latency_ms` of a model that
    measured fine; None when it did not) within the budget. No budget: any figure meets it.

    Figures are taken interleaved over a window that spans the device's speed changes, and such figures agree
    with themselves within a few per cent when taken again (docs/decisions.md), so no headroom, repeated
    sweeps or slowest-but-one judging is added on top: a model meets its budget when its figure does.
    """
    if latency_ms is None:
        return False
    return budget_ms is None or float(latency_ms) <= float(budget_ms)
