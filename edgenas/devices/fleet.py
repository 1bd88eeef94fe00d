"""A device from its description (`load_device`), and `measure_fleet`: measure on several devices at once; one device
failing does not stop the others."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from edgenas.devices.agent_device import AgentDevice
from edgenas.devices.device_files import DeviceConfig, load_config
from edgenas.devices.local import LocalTransport
from edgenas.devices.mcu_board import MCUDevice
from edgenas.devices.measurement import AUTH, HOST_KEY, INTERNAL_ERROR, Measurement, utc_now
from edgenas.devices.protocol import AuthError, Device, HostKeyError, ModelFile
from edgenas.devices.ssh import SSHTransport
from edgenas.errors import UsageError

PathList = Sequence[str | os.PathLike]
_DONE = object()


def _error_for(exc: BaseException) -> str:
    if isinstance(exc, HostKeyError):
        return HOST_KEY
    if isinstance(exc, AuthError):
        return AUTH
    return INTERNAL_ERROR


def device_from_config(config: DeviceConfig, *, trust_new_host_key: bool = False) -> Device:
    """The Device for a validated description (nothing connects until it is used)."""
    if config.kind == "local":
        return AgentDevice(config, LocalTransport(config))
    transport = SSHTransport(config, trust_new_host_key=trust_new_host_key)
    if config.kind == "mcu":
        return MCUDevice(config, transport)
    return AgentDevice(config, transport)


def load_device(name_or_path: str | os.PathLike, *, trust_new_host_key: bool = False) -> Device:
    """Load a device by NAME (devices/NAME.toml, then ~/.config/edgenas/devices/) or TOML path."""
    return device_from_config(load_config(name_or_path), trust_new_host_key=trust_new_host_key)


def measure_fleet(
    devices: Sequence[Device | str | os.PathLike],
    models: PathList | Mapping[str, PathList],
    *,
    on_result: Any = None,
    trust_new_host_key: bool = False,
) -> dict[str, list[Measurement]]:
    """Measure models on every device concurrently, one thread per device.

    `devices` are Device objects or names/paths for load_device (those are closed afterwards).
    `models` is one list of paths for every device, or a mapping from device name to its list.
    `on_result(measurement)` is called in the calling thread as each result arrives, so it may
    write to a SQLite connection made in that thread. A device that cannot be used at all (host
    key refused, authentication failed) gets an error code on each of its models; the others go on.
    Returns {device name: [Measurement per path, in order]} in the order of `devices`.
    """
    owned = []
    resolved: list[Device] = []
    for d in devices:
        if isinstance(d, Device):
            resolved.append(d)
        else:
            device = load_device(d, trust_new_host_key=trust_new_host_key)
            owned.append(device)
            resolved.append(device)
    names = [d.name for d in resolved]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise UsageError(f"device {duplicate!r} appears twice in the fleet: give each device once")
    if isinstance(models, Mapping):
        unknown = sorted(set(models) - set(names))
        if unknown:
            raise UsageError(f"models given for unknown device {unknown[0]!r}: devices are {', '.join(names)}")
        plan = {d.name: list(models.get(d.name, ())) for d in resolved}
    else:
        if isinstance(models, (str, os.PathLike)):
            raise UsageError("measure_fleet() takes a list of model paths, not one path")
        plan = {d.name: list(models) for d in resolved}
    for paths in plan.values():
        for p in paths:
            if not os.path.isfile(p):
                raise UsageError(f"model file {os.fspath(p)} does not exist: give paths to .onnx or .tflite files")

    events: queue.Queue[tuple[Device, Any]] = queue.Queue()

    def work(device: Device) -> None:
        got: list[Measurement] = []

        def collect(m: Measurement) -> None:
            got.append(m)
            events.put((device, m))

        try:
            device.measure(plan[device.name], on_result=collect)
        except BaseException as exc:  # noqa: BLE001 - a device's failure must not stop the fleet
            done = {m.model_path for m in got}
            for p in plan[device.name]:
                if os.fspath(p) not in done:
                    model = ModelFile.from_path(p)
                    m = replace(device.template(model), error=_error_for(exc), timestamp=utc_now(),
                                error_message=f"{type(exc).__name__}: {exc}" if _error_for(exc) == INTERNAL_ERROR
                                else str(exc))
                    events.put((device, m))
        finally:
            events.put((device, _DONE))

    threads = [threading.Thread(target=work, args=(d,), name=f"edgenas-fleet-{d.name}", daemon=True)
               for d in resolved]
    results: dict[str, list[Measurement]] = {d.name: [] for d in resolved}
    try:
        for t in threads:
            t.start()
        running = len(threads)
        while running:
            device, item = events.get()
            if item is _DONE:
                running -= 1
                continue
            results[device.name].append(item)
            if on_result is not None:
                on_result(item)
    finally:
        for t in threads:
            t.join(timeout=0.1)
        for device in owned:
            device.close()
    return {name: _in_order(plan[name], got) for name, got in results.items()}


def _in_order(paths: list[Any], got: list[Measurement]) -> list[Measurement]:
    """Results in the order of `paths` (a path listed twice has two results, matched in turn)."""
    pool: dict[str, list[Measurement]] = {}
    for m in got:
        pool.setdefault(m.model_path, []).append(m)
    return [pool[os.fspath(p)].pop(0) for p in paths]
