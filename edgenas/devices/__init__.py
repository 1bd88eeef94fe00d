"""Devices: measure the latency of ONNX and TFLite model files on real devices, locally or over SSH.

A device is described by a TOML file (`devices/NAME.toml`; see `devices/*.example.toml`) and
is one of three kinds:

- `local`: this machine; the benchmark agent runs in a subprocess.
- `ssh`: a Raspberry Pi, a phone with Termux, any host with Python, numpy and one runtime; the
  agent (`edgenas/devices/agent.py`, one self-contained file) is uploaded once, by content hash.
- `mcu`: a microcontroller board reached through its host over SSH; the device file gives the
  command that flashes and runs a model and a pattern that reads the latency from its output.

Public interface (stable; other stages build on it):

    load_device(name_or_path, *, trust_new_host_key=False) -> Device
        NAME resolves to ./devices/NAME.toml, then ~/.config/edgenas/devices/NAME.toml; anything
        ending in .toml or containing a slash is a path. "local" and "local-tflite" (this machine)
        are built in when no such file exists. Bad files raise UsageError naming the
        file, the field and what is expected. trust_new_host_key records an unknown SSH host key
        in the device's known_hosts file (a changed key is always refused).
    list_devices() -> list[dict]
        Every device file found: name, path, kind, runtime, threads, host, and error (None, or
        why the file is invalid).
    Device
        .name, .kind ("local" | "ssh" | "mcu"), .runtime ("onnxruntime" | "tflite"), .threads
        .describe() -> dict            JSON-safe, no secrets; for latency tables
        .measure(paths, *, on_result=None) -> list[Measurement]
                                       one per path, in order; on_result(m) as each arrives
        .check() -> dict               connect, verify host key, Python and runtime; "ok", "problems"
        .stats -> dict                 uploaded_files, uploaded_bytes, cached_files, reconnects
        .clean() -> int                remove what was uploaded to the device
        .close(); usable as a context manager
    measure_fleet(devices, models, *, on_result=None, trust_new_host_key=False)
            -> dict[device name, list[Measurement]]
        Concurrent, one thread per device; `models` is one list for all or {device name: list};
        on_result runs in the calling thread.
    Measurement (frozen dataclass; .ok, .to_dict(), Measurement.from_dict(d))
        model_path, model_sha256, device, runtime, runtime_version, threads, latency_ms (the figure,
        timed interleaved), median_ms, mean_ms, std_ms, min_ms, p90_ms, runs, warmup, cv, error,
        error_message, agent_version, machine, timestamp, noisy, samples_ms, passes, load_ms, inputs,
        timing (how the figure was taken and how far to trust it), extra.
        error is None or one of ERROR_CODES: "timeout", "runtime_error", "unreachable",
        "bad_model", "runtime_missing", "bad_config", "agent_error", "parse_error", "host_key",
        "auth", "internal_error".

Failures are error codes on a model's Measurement, never a crash of the batch; only problems
that retrying cannot fix (unknown or changed host key, failed authentication, a model path that
does not exist on the host) raise UsageError, and measure_fleet turns even those into error
codes for that device alone. This package never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgenas.devices.device_files import DeviceConfig, builtin_device, device_files, read_device_file
from edgenas.devices.fleet import device_from_config, load_device, measure_fleet
from edgenas.devices.measurement import ERROR_CODES, Measurement
from edgenas.devices.protocol import AuthError, ConnectionLost, Device, HostKeyError
from edgenas.errors import UsageError

__all__ = [
    "ERROR_CODES",
    "AuthError",
    "ConnectionLost",
    "Device",
    "DeviceConfig",
    "HostKeyError",
    "Measurement",
    "device_from_config",
    "list_devices",
    "load_device",
    "measure_fleet",
]


def list_devices() -> list[dict[str, Any]]:
    """Every device file in the lookup folders, with the problem for files that do not validate."""
    out = []
    for path in device_files():
        entry: dict[str, Any] = {"name": path.name[: -len(".toml")], "path": str(path), "kind": None,
                                 "runtime": None, "threads": None, "host": None, "error": None}
        try:
            config = read_device_file(path)
        except UsageError as exc:
            entry["error"] = str(exc)
        else:
            host = None
            if config.ssh is not None:
                host = config.ssh.host or config.ssh.config_host
            entry.update(name=config.name, kind=config.kind, runtime=config.runtime, threads=config.threads, host=host)
        out.append(entry)
    for name in ("local", "local-tflite"):
        config = builtin_device(name)
        if config is not None and name not in {Path(e["path"]).name[: -len(".toml")] for e in out}:
            out.append({"name": name, "path": "(built in)", "kind": config.kind, "runtime": config.runtime,
                        "threads": config.threads, "host": None, "error": None})
    return out
