"""Device descriptions: read `devices/*.toml`, validate every field, resolve a device NAME to its file.

A mistake is reported as one line naming the file, the field and what is expected, e.g.
`devices/pi4.toml: [ssh] port = "22x": expected an integer from 1 to 65535`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgenas.artifacts import toml_text, toml_value
from edgenas.errors import UsageError, did_you_mean
from edgenas.inputs import parse_toml, read_text
from edgenas.settings import Setting

KINDS = ("local", "ssh", "mcu")
RUNTIMES = ("onnxruntime", "tflite")
MCU_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "cycles": None}
USER_DEVICE_DIR = Path("~/.config/edgenas/devices")


@dataclass(frozen=True)
class MeasureSettings:
    """How the agent times a batch: every model loaded and warmed up (`warmup` runs), then rounds of one run of each
    model for at least `window_s` seconds and `runs` rounds, and until every model has `min_fast_runs` runs in fast
    moments (at most 6x `window_s`; 0: the window does not wait for them); an unsteady window is timed again up to
    `retime` times. `batch_size` models share one window (lower it on a device with little memory)."""

    warmup: int = 5
    runs: int = 60  # P5 of 60 runs: a quota device agreed with itself for 100 % of 100 subnets (30: 95 %)
    window_s: float = 10.0
    retime: int = 1
    min_fast_runs: int = 30
    cpu_affinity: tuple[int, ...] = ()
    batch_size: int = 100
    keep_models: bool = True
    # Models slower than this per run are timed in fewer rounds of the window, in proportion (at least 20 runs),
    # with one untimed run before each timed one: see agent.timing_plan. 0: every model in every round.
    scale_runs_ms: float = 1.0


@dataclass(frozen=True)
class SSHSettings:
    host: str | None = None
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    use_agent: bool | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    config_host: str | None = None
    config_file: str = "~/.ssh/config"


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0  # TCP connect, SSH handshake and authentication
    start: float = 60.0  # the agent's start on the device: Python, numpy and the runtime importing
    model: float = 120.0  # one model's load, warm-up and timed runs (without any output)
    tcp_user: float = 10.0  # unacknowledged data older than this fails the link (Linux TCP_USER_TIMEOUT)
    keepalive: float = 5.0  # SSH keep-alive interval, so an idle dead link is noticed


@dataclass(frozen=True)
class RetrySettings:
    attempts: int = 3  # tries in a row without progress before the remaining models are "unreachable"
    backoff: float = 1.0  # first wait, doubled after each failure
    backoff_max: float = 30.0


@dataclass(frozen=True)
class MCUSettings:
    command: tuple[str, ...]
    latency_pattern: str
    unit: str = "us"
    clock_hz: float | None = None
    timeout: float = 300.0
    check_command: tuple[str, ...] = ()
    runtime_version: str = "tflite-micro"


@dataclass(frozen=True)
class DeviceConfig:
    """One validated device description."""

    name: str
    kind: str
    runtime: str
    path: Path | None = None
    threads: int = 1
    python: tuple[str, ...] = ()
    work_dir: str = "~/.cache/edgenas"
    description: str = ""
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    ssh: SSHSettings | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetrySettings = field(default_factory=RetrySettings)
    mcu: MCUSettings | None = None

    @property
    def python_argv(self) -> list[str]:
        return list(self.python) if self.python else [sys.executable if self.kind == "local" else "python3"]


_MISSING = object()
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}")
_ALIAS = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,252}")


def valid_host(value: Any) -> bool:
    """A DNS name or an IPv4/IPv6 address: nothing a shell or ssh could read as more than a host."""
    if not isinstance(value, str) or not value or len(value) > 253:
        return False
    try:
        ipaddress.ip_address(value[1:-1] if value.startswith("[") and value.endswith("]") else value)
        return True
    except ValueError:
        pass
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    return all(_LABEL.fullmatch(label) for label in labels)


class _Table:
    """Reads one TOML table field by field; every problem names the file, the field and the expectation."""

    def __init__(self, source: str, data: Any, section: str | None) -> None:
        self.source = source
        self.section = section
        if not isinstance(data, Mapping):
            self.fail(None, data, "a table")
        self.data = dict(data)
        self.seen: set[str] = set()

    def label(self, key: str | None) -> str:
        if key is None:
            return f"[{self.section}]"
        return f"[{self.section}] {key}" if self.section else key

    def fail(self, key: str | None, value: Any, expected: str) -> None:
        shown = _toml_repr(value)
        raise UsageError(f"{self.source}: {self.label(key)} = {shown}: expected {expected}")

    def get(self, key: str, check: Callable[[Any], bool], expected: str, default: Any = _MISSING) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise UsageError(f"{self.source}: missing field {self.label(key)}: expected {expected}")
            return default
        value = self.data[key]
        if not check(value):
            self.fail(key, value, expected)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and _CONTROL.search(item):
                self.fail(key, value, "text without control characters (no NUL, line break or escape)")
        return value

    def string(self, key: str, default: Any = _MISSING, choices: tuple[str, ...] | None = None) -> Any:
        if choices:
            expected = " or ".join(f'"{c}"' for c in choices)
            return self.get(key, lambda v: v in choices, expected, default)
        return self.get(key, lambda v: isinstance(v, str) and v != "", "a non-empty string", default)

    def integer(self, key: str, default: Any = _MISSING, low: int = 0, high: int | None = None) -> Any:
        setting = Setting(int, None, low, high)  # the rule and its words: edgenas.settings, as every knob's
        return self.get(key, lambda v: v is not None and setting.accepts(v), setting.expected(), default)

    def number(self, key: str, default: Any = _MISSING, positive: bool = True) -> Any:
        setting = Setting(float, None, 0, None, low_open=positive)
        value = self.get(key, lambda v: v is not None and setting.accepts(v), setting.expected(), default)
        return float(value) if value is not None else None

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        setting = Setting(bool)
        return self.get(key, lambda v: v is not None and setting.accepts(v), setting.expected(), default)

    def strings(self, key: str, default: Any = _MISSING, allow_str: bool = False) -> Any:
        def ok(v: Any) -> bool:
            if allow_str and isinstance(v, str):
                return v != ""
            return isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) and x for x in v)

        expected = "a list of non-empty strings, like [\"python3\", \"run.py\", \"{model}\"]"
        if allow_str:
            expected = "a string or " + expected
        value = self.get(key, ok, expected, default)
        if isinstance(value, str):
            return (value,)
        return tuple(value) if value is not None else value

    def table(self, key: str) -> _Table | None:
        self.seen.add(key)
        if key not in self.data:
            return None
        return _Table(self.source, self.data[key], key)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            allowed = ", ".join(sorted(self.seen))
            where = f"[{self.section}] " if self.section else ""
            raise UsageError(
                f"{self.source}: unknown field {where}{unknown[0]}: expected one of {allowed}"
            )


def _toml_repr(value: Any) -> str:
    """The value as TOML writes it, on one line: a bad value with a line break still gives a one-line error."""
    if isinstance(value, Mapping):
        return "{...}"
    try:
        return toml_value(value)
    except TypeError:
        return repr(value)


def _read_measure(t: _Table | None) -> MeasureSettings:
    if t is None:
        return MeasureSettings()
    d = MeasureSettings()
    cpus = t.get(
        "cpu_affinity",
        lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v),
        "a list of CPU numbers, like [2, 3]",
        [],
    )
    for old in ("max_cv", "remeasure"):
        if old in t.data:
            t.fail(old, t.data[old], "nothing: models are now timed interleaved over a window; remove it and set "
                                     "window_s (seconds, default 10) and retime (default 1) instead")
    out = MeasureSettings(
        warmup=t.integer("warmup", d.warmup),
        runs=t.integer("runs", d.runs, low=1),
        window_s=t.number("window_s", d.window_s, positive=False),
        retime=t.integer("retime", d.retime, high=10),
        min_fast_runs=t.integer("min_fast_runs", d.min_fast_runs),
        cpu_affinity=tuple(cpus),
        batch_size=t.integer("batch_size", d.batch_size, low=1),
        keep_models=t.boolean("keep_models", d.keep_models),
        scale_runs_ms=t.number("scale_runs_ms", d.scale_runs_ms, positive=False),
    )
    t.finish()
    return out


def _read_ssh(t: _Table | None, source: str) -> SSHSettings:
    if t is None:
        raise UsageError(f"{source}: missing table [ssh]: expected host (or config_host), user and identity_file")
    d = SSHSettings()
    out = SSHSettings(
        host=t.get("host", valid_host, "a host name (letters, digits, '-' and '.') or an IP address", None),
        port=t.integer("port", None, low=1, high=65535),
        user=t.get("user", lambda v: isinstance(v, str) and _USER.fullmatch(v) is not None,
                   "a user name of letters, digits, '.', '_' and '-'", None),
        identity_file=t.string("identity_file", None),
        use_agent=t.boolean("use_agent", None),
        known_hosts=t.string("known_hosts", d.known_hosts),
        config_host=t.get("config_host", lambda v: isinstance(v, str) and _ALIAS.fullmatch(v) is not None,
                          "a Host name from the ssh config (letters, digits, '.', '_' and '-')", None),
        config_file=t.string("config_file", d.config_file),
    )
    t.finish()
    if out.host is None and out.config_host is None:
        raise UsageError(
            f"{source}: missing field [ssh] host: expected the device's address, "
            "or config_host naming a Host in ~/.ssh/config"
        )
    return out


def _read_timeouts(t: _Table | None) -> Timeouts:
    if t is None:
        return Timeouts()
    d = Timeouts()
    out = Timeouts(
        connect=t.number("connect", d.connect),
        start=t.number("start", d.start),
        model=t.number("model", d.model),
        tcp_user=t.number("tcp_user", d.tcp_user),
        keepalive=t.number("keepalive", d.keepalive),
    )
    t.finish()
    return out


def _read_retry(t: _Table | None) -> RetrySettings:
    if t is None:
        return RetrySettings()
    d = RetrySettings()
    out = RetrySettings(
        attempts=t.integer("attempts", d.attempts, low=1),
        backoff=t.number("backoff", d.backoff, positive=False),
        backoff_max=t.number("backoff_max", d.backoff_max, positive=False),
    )
    t.finish()
    return out


def _read_mcu(t: _Table | None, source: str) -> MCUSettings:
    if t is None:
        raise UsageError(
            f"{source}: missing table [mcu]: expected command (flash and run a model) and latency_pattern"
        )

    def valid_pattern(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        try:
            compiled = re.compile(v)
        except re.error:
            return False
        return "value" in compiled.groupindex or compiled.groups == 1

    command = t.strings("command")
    if not any("{model}" in arg for arg in command):
        t.fail("command", list(command), 'an argument containing "{model}" (the model\'s path on the host)')
    out = MCUSettings(
        command=command,
        latency_pattern=t.get(
            "latency_pattern",
            valid_pattern,
            "a regular expression with one group, or a group named value, around the number",
        ),
        unit=t.string("unit", "us", choices=tuple(MCU_UNITS)),
        clock_hz=t.number("clock_hz", None),
        timeout=t.number("timeout", 300.0),
        check_command=t.strings("check_command", ()),
        runtime_version=t.string("runtime_version", "tflite-micro"),
    )
    t.finish()
    if out.unit == "cycles" and out.clock_hz is None:
        raise UsageError(f'{source}: missing field [mcu] clock_hz: expected the board\'s clock in Hz when unit = "cycles"')
    return out


def parse_device(data: Mapping[str, Any], *, source: str, path: Path | None = None, default_name: str) -> DeviceConfig:
    """Validate a parsed TOML document into a DeviceConfig; `source` names the file in messages."""
    t = _Table(source, data, None)
    name = t.get("name", lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v),
                 "a name of letters, digits, '.', '_' and '-'", default_name)
    kind = t.string("kind", choices=KINDS)
    runtime = t.string("runtime", "tflite" if kind == "mcu" else _MISSING, choices=RUNTIMES)
    if kind == "mcu" and runtime != "tflite":
        t.fail("runtime", runtime, '"tflite" (a microcontroller runs TFLite Micro)')
    config = DeviceConfig(
        name=name,
        kind=kind,
        runtime=runtime,
        path=path,
        threads=t.integer("threads", 1, low=1),
        python=t.strings("python", (), allow_str=True),
        work_dir=t.string("work_dir", "~/.cache/edgenas"),
        description=t.get("description", lambda v: isinstance(v, str), "a string", ""),
        measure=_read_measure(t.table("measure")),
        ssh=_read_ssh(t.table("ssh"), source) if kind in ("ssh", "mcu") else None,
        timeouts=_read_timeouts(t.table("timeouts")),
        retry=_read_retry(t.table("retry")),
        mcu=_read_mcu(t.table("mcu"), source) if kind == "mcu" else None,
    )
    if kind == "local":
        for section in ("ssh", "mcu"):
            if section in data:
                raise UsageError(f'{source}: [{section}] is not used by kind = "local": remove it or set kind = "ssh"')
    elif kind == "ssh" and "mcu" in data:
        raise UsageError(f'{source}: [mcu] is only used by kind = "mcu": remove it or set kind = "mcu"')
    t.finish()
    if config.ssh is not None:
        config = _with_paths_resolved(config)
    return config


def _with_paths_resolved(config: DeviceConfig) -> DeviceConfig:
    """Relative identity_file / known_hosts / config_file are relative to the TOML file's folder."""
    assert config.ssh is not None
    base = config.path.parent if config.path else Path.cwd()

    def resolve(p: str | None) -> str | None:
        if p is None:
            return None
        expanded = Path(p).expanduser()
        return str(expanded if expanded.is_absolute() else (base / expanded).resolve())

    ssh = replace(
        config.ssh,
        identity_file=resolve(config.ssh.identity_file),
        known_hosts=resolve(config.ssh.known_hosts) or "",
        config_file=resolve(config.ssh.config_file) or "",
    )
    return replace(config, ssh=ssh)


def read_device_file(path: str | os.PathLike) -> DeviceConfig:
    """Read and validate one device TOML file (at most 1 MiB, UTF-8, a few levels deep)."""
    path = Path(path)
    source = str(path)
    try:
        text = read_text(path, "device file", hint="give an existing .toml file or a device NAME")
    except UsageError as exc:
        raise UsageError(f"{source}: {str(exc).replace(f'device file {source} ', '', 1)}") from None
    data = parse_toml(text, source)
    stem = path.name[: -len(".toml")] if path.name.endswith(".toml") else path.stem
    return parse_device(data, source=source, path=path.resolve(), default_name=stem)


# The built-in local devices, defined here once: `local` and `local-tflite` resolve to them from any folder,
# `edgenas demo` writes its device files from them (`device_toml`), and the shipped devices/local*.toml (the files a
# user copies and edits) are checked against them (tests/devices/test_device_files.py). The timing: 4 s windows of up to
# 300 models (devices/local.toml says why).
LOCAL_MEASURE = MeasureSettings(window_s=4.0, batch_size=300)
LOCAL_DEVICES = {
    "local": DeviceConfig(name="local", kind="local", runtime="onnxruntime", threads=1,
                          description="this machine, ONNX Runtime, 1 thread", measure=LOCAL_MEASURE),
    "local-tflite": DeviceConfig(name="local-tflite", kind="local", runtime="tflite", threads=1,
                                 description="this machine, TFLite, 1 thread", measure=LOCAL_MEASURE),
}


def builtin_device(name: str) -> DeviceConfig | None:
    """`local` and `local-tflite` work from any folder, even without devices/*.toml (as `edgenas demo` needs).

    A devices/local.toml in the lookup folders takes precedence.
    """
    config = LOCAL_DEVICES.get(name)
    return None if config is None else replace(config, description=f"{config.description} (built in)")


def device_toml(config: DeviceConfig, header: str) -> str:
    """A local device's file, which `read_device_file` reads back to `config` (its path aside); `work_dir` is
    written only where it is not the default (the demo keeps its probe reference in its run folder)."""
    if config.kind != "local" or config.python:
        raise ValueError(f"device_toml writes local devices with the default python, not {config}")
    work_dir = config.work_dir if config.work_dir != DeviceConfig.work_dir else None
    return toml_text(header, {"name": config.name, "kind": config.kind, "runtime": config.runtime,
                              "threads": config.threads, "description": config.description or None,
                              "work_dir": work_dir, "measure": asdict(config.measure)})


def load_config(name_or_path: str | os.PathLike) -> DeviceConfig:
    """The validated description for a device NAME or TOML path (see find_device_file)."""
    text = os.fspath(name_or_path)
    builtin = builtin_device(text)
    if builtin is not None and not any((d / f"{text}.toml").is_file() for d in device_dirs()):
        return builtin
    return read_device_file(find_device_file(name_or_path))


def device_dirs() -> list[Path]:
    """Where device NAMEs are looked up, in order: ./devices, then ~/.config/edgenas/devices."""
    return [Path.cwd() / "devices", USER_DEVICE_DIR.expanduser()]


def find_device_file(name_or_path: str | os.PathLike) -> Path:
    """A NAME resolves to devices/NAME.toml (project, then user config); anything path-like is a path."""
    text = os.fspath(name_or_path)
    looks_like_path = text.endswith(".toml") or os.sep in text or "/" in text
    if looks_like_path:
        path = Path(text).expanduser()
        if not path.exists() and not path.is_symlink():
            raise UsageError(f"device file {text} does not exist: give an existing .toml file or a device NAME")
        return path  # a folder, /dev/zero or a pipe is refused when read
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise UsageError(f"bad device name {text!r}: use letters, digits, '.', '_' and '-', or a path to a .toml file")
    candidates = [d / f"{text}.toml" for d in device_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = sorted({p.name[: -len(".toml")] for p in device_files()} | set(LOCAL_DEVICES))
    hint = f"known devices: {', '.join(known)}" if known else "no device files found"
    raise UsageError(
        f"unknown device {text!r}{did_you_mean(text, known)}: looked for {' and '.join(str(c) for c in candidates)} ({hint}); "
        "see devices/*.example.toml"
    )


def device_files() -> list[Path]:
    """Every device TOML in the lookup folders (not *.example.toml); ./devices hides the same name in ~/.config."""
    seen: dict[str, Path] = {}
    for folder in device_dirs():
        if folder.is_dir():
            for p in sorted(folder.glob("*.toml")):
                if not p.name.endswith(".example.toml"):
                    seen.setdefault(p.name, p)
    return list(seen.values())
