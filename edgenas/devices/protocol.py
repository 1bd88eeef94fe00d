"""Device: measures model files on one device through a transport, with batches, retries and error codes.

The measuring loop is the same for every kind of device. A transport (this machine, or SSH)
connects, puts model files where the device can read them, and starts processes there; a device
kind decides what to run (the benchmark agent, or an MCU host's flash-and-run command) and how to
read its output. A lost connection is retried with back-off; what already finished is kept.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgenas.artifacts import sha256_file
from edgenas.devices.device_files import DeviceConfig
from edgenas.devices.measurement import AGENT_ERROR, BAD_MODEL, UNREACHABLE, Measurement, utc_now
from edgenas.errors import UsageError

AGENT_PATH = Path(__file__).with_name("agent.py")
MODEL_SUFFIXES = {".onnx": "onnxruntime", ".tflite": "tflite"}


class ConnectionLost(Exception):
    """The device could not be reached, or the link broke; the device retries with back-off."""


class HostKeyError(UsageError):
    """The device's SSH host key is unknown or changed; the message says how to trust it."""


class AuthError(UsageError):
    """SSH authentication failed; the message says which identity was tried and how to fix it."""


@functools.lru_cache(maxsize=1)
def agent_version() -> str:
    """The first 16 hex digits of agent.py's SHA-256: a measurement names the exact agent that made it."""
    return hashlib.sha256(AGENT_PATH.read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelFile:
    """A model on the host: the path as given, its content hash, and its name on a device."""

    path: str
    local_path: Path
    sha256: str
    suffix: str
    size: int

    @property
    def remote_name(self) -> str:
        return self.sha256 + self.suffix

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> ModelFile:
        local = Path(path)
        if not local.is_file():
            raise UsageError(f"model file {os.fspath(path)} does not exist: give paths to .onnx or .tflite files")
        suffix = local.suffix.lower() if local.suffix.lower() in MODEL_SUFFIXES else ".model"
        return cls(os.fspath(path), local.resolve(), sha256_file(local), suffix, local.stat().st_size)


class Process(abc.ABC):
    """A process started on the device, read line by line from its stdout."""

    @abc.abstractmethod
    def readline(self, timeout: float) -> str | None:
        """The next stdout line; "" at end of output; None when `timeout` seconds pass without one.

        Raises ConnectionLost when the link to the device breaks.
        """

    @abc.abstractmethod
    def wait(self, timeout: float) -> int | None:
        """Exit status after the output ended (negative: killed by a signal; None: unknown).

        Raises ConnectionLost when the link broke before the status arrived.
        """

    @abc.abstractmethod
    def stderr_tail(self) -> str:
        """The last few kilobytes of stderr."""

    @abc.abstractmethod
    def kill(self, pid: int | None = None) -> None:
        """Stop the process (and `pid` on the device, when the transport cannot signal it directly)."""


class Transport(abc.ABC):
    """How the host reaches a device: connect, put files there, start processes."""

    stats: dict[str, int]

    @abc.abstractmethod
    def connect(self) -> dict[str, Any]:
        """Connect if not connected; returns facts about the connection (host key, time taken)."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Drop the connection (safe to call when not connected)."""

    @abc.abstractmethod
    def stage(self, files: Sequence[ModelFile]) -> list[str]:
        """Make model files readable on the device (upload what is missing); their device paths."""

    @abc.abstractmethod
    def stage_agent(self) -> str:
        """The benchmark agent's path on the device (uploaded once, named by content hash)."""

    @abc.abstractmethod
    def unstage(self, paths: Sequence[str]) -> None:
        """Remove staged model files from the device."""

    @abc.abstractmethod
    def spawn(self, argv: Sequence[str]) -> Process:
        """Start argv on the device; every argument reaches it unchanged (no shell interpretation)."""

    @abc.abstractmethod
    def clean(self) -> int:
        """Remove everything this toolkit put on the device; the number of files removed."""

    def describe(self) -> dict[str, Any]:
        return {}

    def work_dir(self) -> str:
        return ""

    def probe_file(self) -> str | None:
        """Where the agent keeps the device's fastest speed-probe reading (its reference), or None."""
        return None

    def run(self, argv: Sequence[str], timeout: float) -> tuple[int | None, str, str]:
        """Run argv to completion: (exit status, stdout, stderr tail). None status: it timed out and was killed."""
        proc = self.spawn(argv)
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            line = proc.readline(max(left, 0.0)) if left > 0 else None
            if line is None:
                proc.kill()
                return None, "".join(lines), proc.stderr_tail()
            if line == "":
                break
            lines.append(line)
        return proc.wait(max(deadline - time.monotonic(), 5.0)), "".join(lines), proc.stderr_tail()


ResultCallback = Callable[[Measurement], Any]


class Device(abc.ABC):
    """A device that measures model files. Use as a context manager, or call close().

    `measure(paths, on_result=...)` returns one Measurement per path, in order; on_result gets each
    as soon as it arrives (in the calling thread), so a caller can store it before the batch ends.
    Failures become error codes on the measurements; only configuration problems that retrying
    cannot fix (an unknown or changed host key, failed authentication, a missing model file on the
    host) raise UsageError. A Device is used from one thread at a time.
    """

    def __init__(self, config: DeviceConfig, transport: Transport) -> None:
        self.config = config
        self.transport = transport
        self._sleep = time.sleep
        # Called with ("plan", event) when the device has loaded a window's models and says how long timing them
        # will take (models, seconds), ("tick", event) about once a second while timing, and ("retime", event)
        # when it re-timed an unsteady window (the CLI reports it; progress bars take their ETA from the plan).
        self.on_event: Callable[[str, dict[str, Any]], Any] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def kind(self) -> str:
        """One of "local", "ssh", "mcu"."""
        return self.config.kind

    @property
    def runtime(self) -> str:
        """One of "onnxruntime", "tflite"."""
        return self.config.runtime

    @property
    def threads(self) -> int:
        return self.config.threads

    @property
    def stats(self) -> dict[str, int]:
        """Counters since the device was loaded: files and bytes uploaded, files already there, reconnects."""
        return dict(self.transport.stats)

    def describe(self) -> dict[str, Any]:
        """A JSON-safe description without secrets, to key latency tables and label results."""
        c = self.config
        out: dict[str, Any] = {
            "name": c.name,
            "kind": c.kind,
            "runtime": c.runtime,
            "threads": c.threads,
            "warmup": c.measure.warmup,
            "runs": c.measure.runs,
            "cpu_affinity": list(c.measure.cpu_affinity),
            "window_s": c.measure.window_s,
            "retime": c.measure.retime,
            "min_fast_runs": c.measure.min_fast_runs,
            "scale_runs_ms": c.measure.scale_runs_ms,
            "agent_version": agent_version(),
        }
        if c.description:
            out["description"] = c.description
        if c.mcu is not None:
            out["mcu"] = {"unit": c.mcu.unit, "clock_hz": c.mcu.clock_hz, "runtime_version": c.mcu.runtime_version}
        out.update(self.transport.describe())
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} kind={self.kind} runtime={self.runtime}>"

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.transport.disconnect()

    def clean(self) -> int:
        """Remove the agent and the models this toolkit uploaded to the device."""
        try:
            return self.transport.clean()
        except ConnectionLost as exc:
            raise UsageError(f"device {self.name} is unreachable: {exc}") from None

    @abc.abstractmethod
    def check(self) -> dict[str, Any]:
        """Connect and report what was found; `ok` is False with `problems` when the device is not ready."""

    @abc.abstractmethod
    def _run_batch(self, models: list[ModelFile], indices: list[int]) -> Iterator[tuple[int, Measurement]]:
        """Measure models[i] for i in indices; yield (i, Measurement) as each finishes.

        Yields a Measurement (possibly an error) per index. Raises ConnectionLost when the link
        breaks: indices without a result are measured again after a reconnect. Indices it leaves
        out without raising are started again in a new batch, if it yielded anything at all.
        """

    @contextlib.contextmanager
    def staged(self, models: list[ModelFile]) -> Iterator[list[str]]:
        """Model files readable on the device for the duration; removed afterwards unless keep_models."""
        paths = self.transport.stage(models)
        try:
            yield paths
        finally:
            if not self.config.measure.keep_models:
                try:
                    self.transport.unstage(paths)
                except ConnectionLost:
                    pass

    def template(self, model: ModelFile) -> Measurement:
        """A Measurement for `model` on this device with no figures yet."""
        return Measurement(
            model_path=model.path,
            model_sha256=model.sha256,
            device=self.name,
            runtime=self.runtime,
            threads=self.threads,
            warmup=self.config.measure.warmup,
            agent_version=agent_version(),
            timestamp=utc_now(),
        )

    def error(self, model: ModelFile, code: str, message: str) -> Measurement:
        return replace(self.template(model), error=code, error_message=message)

    def measure(self, paths: Sequence[str | os.PathLike], *, on_result: ResultCallback | None = None) -> list[Measurement]:
        """Measure each model file; one Measurement per path, in the same order."""
        if isinstance(paths, (str, os.PathLike)):
            raise UsageError("measure() takes a list of model paths, not one path: measure([path])")
        models = [ModelFile.from_path(p) for p in paths]
        results: dict[int, Measurement] = {}

        def deliver(index: int, m: Measurement) -> None:
            results[index] = m
            if on_result is not None:
                on_result(m)

        pending = []
        for i, model in enumerate(models):
            expected = MODEL_SUFFIXES.get(model.suffix)
            if expected is not None and expected != self.runtime:
                deliver(i, self.error(model, BAD_MODEL,
                                      f"{model.path} is a {model.suffix} model but device {self.name} runs {self.runtime}"))
            else:
                pending.append(i)
        retry = self.config.retry
        failures = 0
        while pending:
            batch = pending[: self.config.measure.batch_size]
            progressed = False
            try:
                self.transport.connect()
                with contextlib.closing(self._run_batch(models, batch)) as batch_results:
                    for index, m in batch_results:
                        deliver(index, m)
                        progressed = True
                if not progressed:
                    for i in batch:
                        deliver(i, self.error(models[i], AGENT_ERROR, f"device {self.name} returned no result"))
            except ConnectionLost as exc:
                self.transport.disconnect()
                self.transport.stats["reconnects"] = self.transport.stats.get("reconnects", 0) + 1
                failures = 1 if progressed else failures + 1
                if failures >= retry.attempts:
                    for i in pending:
                        if i not in results:
                            deliver(i, self.error(models[i], UNREACHABLE,
                                                  f"device {self.name} unreachable after {failures} tries: {exc}"))
                    break
                self._sleep(min(retry.backoff * 2 ** (failures - 1), retry.backoff_max))
            pending = [i for i in pending if i not in results]
        return [results[i] for i in range(len(models))]
