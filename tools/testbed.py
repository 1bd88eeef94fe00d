"""Testbed: real OpenSSH servers on this machine standing in for edge devices.

Each device is its own sshd on a loopback address (127.0.0.2, 127.0.0.3, ...) with its own host
key, work folder and speed: a CPU quota through the cgroup cpu controller, v2 (cpu.max) or v1
(cpu.cfs_quota_us), whichever this machine has writable (50 means half of one CPU); a quota that
cannot be applied stops `up` with the reason (--allow-no-quota goes on without). A device can also
live in its own network namespace behind a veth pair, so its link can be cut mid-transfer, and can
have its bandwidth limited. `up` writes DIR/devices/<name>.toml for each device and DIR/known_hosts
with their host keys.

    python tools/testbed.py up --devices 3 --out DIR [--spec runtime=tflite,threads=2,quota=50 ...]
    python tools/testbed.py status --out DIR
    python tools/testbed.py down --out DIR

The i-th --spec applies to the i-th device; keys: kind (ssh, or mcu for a stand-in board that runs
models in TFLite Micro on the device's host), runtime (onnxruntime|tflite), threads, quota
(percent of one CPU), netns (1 to put the device in a network namespace), rate (bandwidth of its
link, like 20mbit; needs netns), runs, warmup, window (seconds of interleaved timing), fast_runs (the
device file's [measure] min_fast_runs: fast-moment runs a window waits for, default 30, 0 none). Needs root
and /usr/sbin/sshd (openssh-server).

Tests use it through tests/testbed_fixtures.py; the Testbed class can stop and restart a device
(`stop`, `start`), give it a new host key (`rekey`) and cut or restore its link (`cut`, `restore`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SSHD = "/usr/sbin/sshd"
CGROUP_PERIOD_US = 10_000  # a 10 ms period: measured slowdowns match the quota within about 10 %
MOUNTS = Path("/proc/self/mounts")
STATE_FILE = "testbed.json"
SPEC_KEYS = ("kind", "runtime", "threads", "quota", "netns", "rate", "runs", "warmup", "window", "fast_runs")
STANDIN_BOARD = Path(__file__).resolve().parents[1] / "edgenas" / "devices" / "standin_board.py"


class TestbedError(RuntimeError):
    """The testbed cannot start here; the message says what is missing."""


@dataclass
class CpuQuotas:
    """Per-device CPU quotas through a cgroup cpu controller: v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`)."""

    version: int  # 2 or 1
    root: Path  # where the devices' groups are made

    @classmethod
    def find(cls, mounts: Path | None = None) -> tuple[CpuQuotas | None, str]:
        """The first writable cpu controller (v2 before v1), or None and why there is none."""
        mounts = mounts or MOUNTS
        v2, v1 = [], []
        try:
            lines = mounts.read_text().splitlines()
        except OSError as exc:
            return None, f"cannot read {mounts} ({exc.strerror}) to find a cgroup cpu controller"
        for line in lines:
            fields = line.split()
            if len(fields) < 4:
                continue
            point, fstype, options = Path(fields[1].replace("\\040", " ")), fields[2], fields[3].split(",")
            if fstype == "cgroup2":
                v2.append(point)
            elif fstype == "cgroup" and "cpu" in options:
                v1.append(point)
        reasons = []
        for point in v2:
            controllers = _read_text(point / "cgroup.controllers").split()
            if "cpu" not in controllers:
                reasons.append(f"the cgroup v2 hierarchy at {point} has no cpu controller "
                               f"(controllers: {' '.join(controllers) or 'none'})")
                continue
            why = cls(2, point).check()
            if why is None:
                return cls(2, point), ""
            reasons.append(why)
        for point in v1:
            why = cls(1, point).check()
            if why is None:
                return cls(1, point), ""
            reasons.append(why)
        if not v1 and not v2:
            reasons.append("no cgroup filesystem is mounted")
        return None, "; ".join(reasons)

    def check(self) -> str | None:
        """Make and remove a probe group; why that failed, or None."""
        try:
            if self.version == 2 and "cpu" not in _read_text(self.root / "cgroup.subtree_control").split():
                (self.root / "cgroup.subtree_control").write_text("+cpu")
            probe = self.create(f"edgenas-probe-{os.getpid()}-{secrets.token_hex(2)}", 100)
        except OSError as exc:
            return f"the cgroup v{self.version} cpu controller at {self.root} is not writable ({exc.strerror or exc})"
        _rmdir_cgroup(probe)
        return None

    def create(self, name: str, percent: int) -> Path:
        """A group limited to `percent` of one CPU."""
        group = self.root / name
        group.mkdir(exist_ok=True)
        quota = CGROUP_PERIOD_US * percent // 100
        if self.version == 2:
            (group / "cpu.max").write_text(f"{quota} {CGROUP_PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(CGROUP_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        return group


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@dataclass
class DeviceSpec:
    """How one testbed device differs from the others."""

    kind: str = "ssh"  # "mcu": a stand-in board (TFLite Micro on the host) behind this sshd
    runtime: str = "onnxruntime"
    threads: int = 1
    quota: int | None = None  # percent of one CPU; None: no limit
    netns: bool = False
    rate: str | None = None  # link bandwidth (tc tbf), e.g. "20mbit"; only with netns
    runs: int = 10
    warmup: int = 2
    window: float = 1.0  # seconds of interleaved timing: short for tests; 10 where figures are compared
    fast_runs: int = 30  # fast-moment runs of each model a window waits for (up to 6x its length); 0: none

    @classmethod
    def parse(cls, text: str) -> DeviceSpec:
        """`runtime=tflite,threads=2,quota=50` -> DeviceSpec; a bad key or value raises ValueError."""
        spec = cls()
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in SPEC_KEYS:
                raise ValueError(f"bad --spec item {item!r}: expected KEY=VALUE with KEY one of {', '.join(SPEC_KEYS)}")
            try:
                if key == "kind":
                    if value not in ("ssh", "mcu"):
                        raise ValueError
                    spec.kind = value
                    spec.runtime = "tflite" if value == "mcu" else spec.runtime
                elif key == "runtime":
                    if value not in ("onnxruntime", "tflite"):
                        raise ValueError
                    spec.runtime = value
                elif key in ("threads", "runs"):
                    setattr(spec, key, int(value))
                    if getattr(spec, key) < 1:
                        raise ValueError
                elif key in ("warmup", "fast_runs"):
                    setattr(spec, key, int(value))
                    if getattr(spec, key) < 0:
                        raise ValueError
                elif key == "window":
                    spec.window = float(value)
                    if spec.window < 0:
                        raise ValueError
                elif key == "quota":
                    spec.quota = int(value)
                    if not 1 <= spec.quota <= 100 * (os.cpu_count() or 1):
                        raise ValueError
                elif key == "netns":
                    spec.netns = value.lower() in ("1", "true", "yes")
                elif key == "rate":
                    spec.rate = value
            except ValueError:
                raise ValueError(f"bad --spec value {item!r}: kind is ssh or mcu, runtime onnxruntime or tflite, "
                                 "threads/runs are "
                                 "integers >= 1, warmup/fast_runs integers >= 0, window seconds >= 0, quota a percent "
                                 "of one CPU (1-100 per CPU)") from None
        if spec.rate and not spec.netns:
            raise ValueError("--spec rate=... needs netns=1 (the limit is set on the device's veth link)")
        return spec


@dataclass
class TestbedDevice:
    name: str
    spec: DeviceSpec
    folder: str
    address: str
    port: int
    pid: int | None = None
    cgroup: str | None = None
    netns: str | None = None
    veth: str | None = None
    toml: str = ""
    quota_applied: bool = False


@dataclass
class Testbed:
    """A set of sshd "devices" under one output folder; see the module docstring."""

    out: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    devices: list[TestbedDevice] = field(default_factory=list)
    die_with_parent: bool = False
    python: str = sys.executable
    quotas: CpuQuotas | None = field(default=None, repr=False)

    # ---- availability -------------------------------------------------------------------------
    @staticmethod
    def missing() -> str | None:
        """Why no testbed can run here, or None when it can."""
        if os.geteuid() != 0:
            return "the SSH testbed needs root (to run sshd as a device and log in to it)"
        if not os.access(SSHD, os.X_OK):
            return f"{SSHD} is missing: install openssh-server (bash tools/install.sh --dev)"
        if shutil.which("ssh-keygen") is None:
            return "ssh-keygen is missing: install openssh-client"
        return None

    @staticmethod
    def cgroup_missing() -> str | None:
        """Why CPU quotas cannot be applied here, or None."""
        quotas, why = CpuQuotas.find()
        return None if quotas else f"CPU quotas cannot be applied: {why}"

    @staticmethod
    def netns_missing() -> str | None:
        """Why network namespaces (for cut links) are unavailable here, or None."""
        if shutil.which("ip") is None:
            return "the ip command (iproute2) is missing, so links cannot be cut"
        name = f"enasprobe{os.getpid() % 100000}"
        made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if made.returncode != 0:
            return f"network namespaces are unavailable: ip netns add failed ({made.stderr.strip()})"
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        return None

    # ---- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def up(cls, out: str | os.PathLike, specs: list[DeviceSpec], *, die_with_parent: bool = False,
           prefix: str = "tb", allow_no_quota: bool = False) -> Testbed:
        """Start one sshd per spec and write the device files; raises TestbedError when impossible.

        A spec with a quota on a machine where none can be applied raises too, unless `allow_no_quota`
        (then the devices run unlimited, and their files and `status` say so)."""
        reason = cls.missing()
        if reason:
            raise TestbedError(reason)
        out = Path(out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        bed = cls(out=out, die_with_parent=die_with_parent)
        if (out / STATE_FILE).exists():
            raise TestbedError(f"a testbed is already up in {out}: run `python tools/testbed.py down --out {out}` first")
        if any(s.quota for s in specs):
            bed.quotas, why = CpuQuotas.find()
            if bed.quotas is None and not allow_no_quota:
                raise TestbedError(f"CPU quotas cannot be applied: {why} (allow_no_quota / --allow-no-quota "
                                   f"runs the devices without them)")
            if bed.quotas is None:
                print(f"testbed: CPU quotas cannot be applied ({why}); the devices run without them", file=sys.stderr)
        if any(s.netns for s in specs):
            reason = cls.netns_missing()
            if reason:
                raise TestbedError(reason)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd refuses to start without it
        bed._client_key()
        try:
            for i, spec in enumerate(specs):
                bed._add_device(f"{prefix}{i + 1}", spec, i)
        except BaseException:
            bed.down()
            raise
        bed._save()
        return bed

    @classmethod
    def load(cls, out: str | os.PathLike) -> Testbed:
        out = Path(out).resolve()
        state_path = out / STATE_FILE
        if not state_path.exists():
            raise TestbedError(f"no testbed is up in {out} ({STATE_FILE} is missing)")
        state = json.loads(state_path.read_text())
        devices = [TestbedDevice(**{**d, "spec": DeviceSpec(**d["spec"])}) for d in state["devices"]]
        return cls(out=out, tag=state["tag"], devices=devices, python=state.get("python", sys.executable))

    def _save(self) -> None:
        state = {"tag": self.tag, "python": self.python, "devices": [dataclasses.asdict(d) for d in self.devices]}
        tmp = self.out / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.out / STATE_FILE)

    def down(self) -> None:
        """Stop every device, remove cgroups and namespaces; the files in `out` stay for inspection."""
        for device in self.devices:
            self._kill(device)
            if device.cgroup:
                _rmdir_cgroup(Path(device.cgroup))
            if device.netns:
                subprocess.run(["ip", "netns", "del", device.netns], capture_output=True)
            if device.veth:
                subprocess.run(["ip", "link", "del", device.veth], capture_output=True)
        try:
            (self.out / STATE_FILE).unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ---- devices ---------------------------------------------------------------------------------
    @property
    def known_hosts(self) -> Path:
        return self.out / "known_hosts"

    @property
    def client_key(self) -> Path:
        return self.out / "client_ed25519"

    def device(self, name: str) -> TestbedDevice:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(f"no testbed device {name!r}: have {', '.join(d.name for d in self.devices)}")

    def device_files(self) -> list[Path]:
        return [Path(d.toml) for d in self.devices]

    def _client_key(self) -> None:
        if not self.client_key.exists():
            _keygen(self.client_key, "edgenas-testbed-client")
        (self.out / "authorized_keys").write_text(self.client_key.with_suffix(".pub").read_text())

    def _add_device(self, name: str, spec: DeviceSpec, index: int) -> None:
        folder = self.out / name
        (folder / "work").mkdir(parents=True, exist_ok=True)
        device = TestbedDevice(name=name, spec=spec, folder=str(folder), address=f"127.0.0.{2 + index % 250}", port=0)
        self.devices.append(device)
        if spec.netns:
            self._make_netns(device, index)
        if spec.quota and self.quotas is not None:
            device.cgroup = str(self.quotas.create(f"edgenas-testbed-{self.tag}-{name}", spec.quota))
            device.quota_applied = True
        host_key = folder / "ssh_host_ed25519_key"
        for stale in (host_key, host_key.with_suffix(".pub")):  # left by an earlier `down` in the same folder
            stale.unlink(missing_ok=True)
        _keygen(host_key, f"edgenas-testbed-{name}")
        self.start(name)
        self._write_device_file(device)

    def _make_netns(self, device: TestbedDevice, index: int) -> None:
        used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
        for _ in range(100):
            a, b = secrets.randbelow(256), secrets.randbelow(64) * 4
            if f"10.231.{a}.{b + 1}/" not in used and f"10.231.{a}.{b + 2}/" not in used:
                break
        ns, host_if, dev_if = f"enas{self.tag}{index}", f"enh{self.tag}{index}", f"enn{self.tag}{index}"
        host_ip, dev_ip = f"10.231.{a}.{b + 1}", f"10.231.{a}.{b + 2}"
        device.netns, device.veth, device.address = ns, host_if, dev_ip
        for cmd in (
            ["ip", "netns", "add", ns],
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", dev_if],
            ["ip", "link", "set", dev_if, "netns", ns],
            ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            ["ip", "-n", ns, "addr", "add", f"{dev_ip}/30", "dev", dev_if],
            ["ip", "-n", ns, "link", "set", dev_if, "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
        ):
            _run(cmd)
        if device.spec.rate:
            _run(["tc", "qdisc", "add", "dev", host_if, "root", "tbf", "rate", device.spec.rate,
                  "burst", "32kbit", "latency", "400ms"])

    def _sshd_config(self, device: TestbedDevice) -> Path:
        folder = Path(device.folder)
        config = folder / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {device.address}:{device.port}",
            f"HostKey {folder / 'ssh_host_ed25519_key'}",
            f"PidFile {folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.out / 'authorized_keys'}",
            "UsePAM no",
            "StrictModes no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "Subsystem sftp internal-sftp",
            "ClientAliveInterval 2",  # without these, sessions of a cut link linger
            "ClientAliveCountMax 2",
            "MaxStartups 64",
            "MaxSessions 64",
            "UseDNS no",
            "PrintMotd no",
            "LogLevel ERROR",
            "",
        ]))
        return config

    def start(self, name: str) -> None:
        """Start (or restart) a device's sshd on its address and port; waits until it accepts connections."""
        device = self.device(name)
        if device.pid and _alive(device.pid):
            return
        for _ in range(5):
            if device.port == 0 or not device.netns and not _port_free(device.address, device.port):
                device.port = 2222 if device.netns else _free_port(device.address)
            config = self._sshd_config(device)
            argv = [SSHD, "-D", "-e", "-f", str(config)]
            if self.die_with_parent and shutil.which("setpriv"):
                argv = ["setpriv", "--pdeathsig", "TERM", "--", *argv]
            if device.netns:
                argv = ["ip", "netns", "exec", device.netns, *argv]
            log = open(Path(device.folder) / "sshd.log", "ab")
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            log.close()
            if device.cgroup:
                (Path(device.cgroup) / "cgroup.procs").write_text(str(proc.pid))
            device.pid = proc.pid
            if _wait_listening(device.address, device.port, proc, 10.0):
                self._record_host_key(device)
                if self.devices and (self.out / STATE_FILE).exists():
                    self._save()
                return
            proc.kill()
            proc.wait()
            if device.netns:
                break
            device.port = 0
        log_text = (Path(device.folder) / "sshd.log").read_text(errors="replace")[-500:]
        raise TestbedError(f"sshd for {name} did not start: {log_text.strip() or 'no log output'}")

    def stop(self, name: str) -> None:
        """Power a device off: kill its sshd and every session and process it started."""
        device = self.device(name)
        self._kill(device)
        device.pid = None

    def rekey(self, name: str) -> None:
        """Give a device a new host key (as a reinstall would) and restart it; known_hosts keeps the old one."""
        device = self.device(name)
        self.stop(name)
        key = Path(device.folder) / "ssh_host_ed25519_key"
        key.unlink()
        key.with_suffix(".pub").unlink()
        _keygen(key, f"edgenas-testbed-{name}-rekeyed")
        self._start_keeping_known_hosts(name)

    def _start_keeping_known_hosts(self, name: str) -> None:
        saved = self.known_hosts.read_text()
        self.start(name)
        self.known_hosts.write_text(saved)

    def cut(self, name: str) -> None:
        """Cut a device's link (its veth goes down): packets vanish, nothing is refused."""
        device = self.device(name)
        if not device.veth:
            raise TestbedError(f"{name} has no network namespace: start it with --spec netns=1")
        _run(["ip", "link", "set", device.veth, "down"])

    def restore(self, name: str) -> None:
        device = self.device(name)
        if device.veth:
            _run(["ip", "link", "set", device.veth, "up"])

    def _kill(self, device: TestbedDevice) -> None:
        pids = set()
        if device.cgroup and Path(device.cgroup, "cgroup.procs").exists():
            pids.update(int(p) for p in Path(device.cgroup, "cgroup.procs").read_text().split())
        if device.pid:
            pids.add(device.pid)
            pids.update(_descendants(device.pid))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _record_host_key(self, device: TestbedDevice) -> None:
        key_type, key_b64 = (Path(device.folder) / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        name = f"[{device.address}]:{device.port}"
        lines = [ln for ln in (self.known_hosts.read_text().splitlines() if self.known_hosts.exists() else [])
                 if ln.split(" ", 1)[0] != name]
        lines.append(f"{name} {key_type} {key_b64}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def _write_device_file(self, device: TestbedDevice) -> None:
        spec = device.spec
        speed = f"{spec.quota}% of one CPU" if device.quota_applied else "no CPU limit"
        where = f"netns {device.netns}" if device.netns else "loopback"
        text = "\n".join([
            f"# testbed device {device.name}: sshd on {device.address}:{device.port} ({where}), {speed}",
            f'name = "{device.name}"',
            f'kind = "{spec.kind}"',
            f'runtime = "{spec.runtime}"',
            f"threads = {spec.threads}",
            f"python = {json.dumps(self.python)}",
            f"work_dir = {json.dumps(str(Path(device.folder) / 'work'))}",
            f'description = "testbed {device.name}: {spec.kind}, {spec.runtime}, {spec.threads} thread(s), {speed}"',
            "",
            "[ssh]",
            f'host = "{device.address}"',
            f"port = {device.port}",
            'user = "root"',
            f"identity_file = {json.dumps(str(self.client_key))}",
            "use_agent = false",
            f"known_hosts = {json.dumps(str(self.known_hosts))}",
            "",
            *self._mcu_section(device),
            "[measure]",
            f"warmup = {spec.warmup}",
            f"runs = {spec.runs}",
            f"window_s = {spec.window}",
            f"min_fast_runs = {spec.fast_runs}",
            "retime = 1",
            "",
            "[timeouts]",
            "connect = 5",
            "model = 60",
            "tcp_user = 5",
            "keepalive = 2",
            "",
            "[retry]",
            "attempts = 3",
            "backoff = 0.5",
            "",
        ])
        path = self.out / "devices" / f"{device.name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        device.toml = str(path)

    def _mcu_section(self, device: TestbedDevice) -> list[str]:
        """For kind=mcu: the stand-in board script is put on the device's host, and [mcu] runs it."""
        if device.spec.kind != "mcu":
            return []
        board = Path(device.folder) / "board" / "standin_board.py"
        board.parent.mkdir(exist_ok=True)
        shutil.copyfile(STANDIN_BOARD, board)
        command = [self.python, str(board), "--model", "{model}", "--runs", "{runs}", "--warmup", "{warmup}"]
        return [
            "[mcu]",
            f"command = {json.dumps(command)}",
            "latency_pattern = 'latency_us=(?P<value>[0-9.]+)'",
            'unit = "us"',
            "timeout = 60",
            f"check_command = {json.dumps([self.python, '-c', 'import tflite_micro'])}",
            "",
        ]

    def status(self) -> list[dict[str, Any]]:
        return [{"name": d.name, "address": f"{d.address}:{d.port}", "alive": bool(d.pid and _alive(d.pid)),
                 "kind": d.spec.kind, "runtime": d.spec.runtime, "threads": d.spec.threads,
                 "quota": d.spec.quota if d.quota_applied else None, "netns": d.netns, "toml": d.toml}
                for d in self.devices]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise TestbedError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")


def _keygen(path: Path, comment: str) -> None:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _port_free(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as sshd does: TIME_WAIT does not block it
        try:
            s.bind((address, port))
        except OSError:
            return False
        return True


def _wait_listening(address: str, port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _rmdir_cgroup(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testbed.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start N sshd devices and write their device files")
    up.add_argument("--devices", type=int, default=3, help="number of devices (default: %(default)s)")
    up.add_argument("--out", required=True, help="folder for keys, device files, work folders and logs")
    up.add_argument("--spec", action="append", default=[],
                    help="per-device settings, in device order: runtime=tflite,threads=2,quota=50,netns=1,rate=20mbit")
    up.add_argument("--prefix", default="tb", help="device names are PREFIX1, PREFIX2, ... (default: %(default)s)")
    up.add_argument("--allow-no-quota", action="store_true",
                    help="start even where no cgroup cpu controller is writable (quota specs then have no effect)")
    for name, help_text in (("down", "stop every device of a testbed"), ("status", "show a testbed's devices")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--out", required=True)
        p.add_argument("--json", action="store_true") if name == "status" else None
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            if args.devices < 1 or len(args.spec) > args.devices:
                parser.error(f"--devices {args.devices}: need at least 1 device and at least as many as --spec options")
            try:
                specs = [DeviceSpec.parse(s) for s in args.spec]
            except ValueError as exc:
                parser.error(str(exc))
            specs += [DeviceSpec() for _ in range(args.devices - len(specs))]
            bed = Testbed.up(args.out, specs, prefix=args.prefix, allow_no_quota=args.allow_no_quota)
            for row in bed.status():
                print(f"{row['name']}: {row['address']} {row['runtime']} threads={row['threads']} "
                      f"quota={row['quota'] or '-'} -> {row['toml']}")
            print(f"known_hosts: {bed.known_hosts}")
        elif args.command == "status":
            rows = Testbed.load(args.out).status()
            print(json.dumps(rows, indent=2) if args.json else "\n".join(
                f"{r['name']}: {r['address']} {'up' if r['alive'] else 'DOWN'} {r['runtime']} "
                f"threads={r['threads']} quota={r['quota'] or '-'}" for r in rows))
        else:
            Testbed.load(args.out).down()
            print(f"testbed in {Path(args.out).resolve()} is down")
    except TestbedError as exc:
        print(f"testbed.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
