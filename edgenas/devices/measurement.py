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

    `machine` holds the device's environment at measuring time (machine, CPU, load average, CPU
    quota, clock, temperature where readable); `samples_ms` the kept pass's timed runs; `passes`
    each timed pass's median and CV (more than one when the first was too noisy); `extra` what the
    device reported beyond these fields.
    """

    model_path: str
    model_sha256: str
    device: str
    runtime: str
    runtime_version: str | None = None
    threads: int = 1
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
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.median_ms is not None

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
