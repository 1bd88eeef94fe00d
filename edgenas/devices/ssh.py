"""SSHTransport: reach a device over SSH with paramiko; strict host keys, key or agent auth, fail-fast links.

- Host keys are checked against the device's known_hosts file (RejectPolicy semantics). A new key
  is trusted only with `trust_new_host_key=True`, which records it in that file; a changed key is
  always refused, with a message that says how to replace it.
- Authentication is by key file or ssh-agent only; there is no password anywhere.
- The TCP socket is made here with TCP_NODELAY (about 1 ms per exec round trip instead of 44),
  TCP keep-alives and TCP_USER_TIMEOUT, and the SSH transport sends keep-alives, so a cut link
  fails within seconds instead of hanging (paramiko alone waits forever, and an exec on a dead
  link returns exit status -1 with no output: that is reported as ConnectionLost, not success).
- Models are uploaded by SFTP to `<work_dir>/models/<sha256><suffix>` through a temporary name and
  a rename, so a cut upload never leaves a file that looks complete; what is already there is not
  sent again. Every command is an argument list quoted with shlex for the remote shell.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import posixpath
import re
import secrets
import shlex
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgenas.devices.device_files import DeviceConfig
from edgenas.devices.protocol import AGENT_PATH, AuthError, ConnectionLost, HostKeyError, ModelFile, Process, Transport
from edgenas.devices.protocol import agent_version as _agent_version
from edgenas.errors import UsageError

# paramiko logs failed connections with tracebacks from its transport thread; the failures are
# reported here as error codes, so keep its records out of the terminal unless logging is configured.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

_OWN_FILE = re.compile(r"^([0-9a-f]{64}\.(onnx|tflite|model)|\..*\.part)$")
STALE_UPLOAD_S = 600  # a partial upload untouched this long was abandoned by its uploader
_LINK_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError)


def _paramiko() -> Any:
    # deferred: paramiko loads only when this runs, not on import
    import paramiko  # imported on first use: it takes about 0.3 s

    return paramiko


def fingerprint(key: Any) -> str:
    """OpenSSH-style fingerprint: `ssh-ed25519 SHA256:...`."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def shell_command(argv: Sequence[str]) -> str:
    """One command line for the remote shell in which every argument arrives unchanged."""
    return "exec " + " ".join(shlex.quote(str(a)) for a in argv)


class SSHProcess(Process):
    """A command running in an SSH exec channel, read line by line with timeouts."""

    def __init__(self, owner: SSHTransport, channel: Any) -> None:
        self.owner = owner
        self.channel = channel
        self._buf = b""
        self._stderr = bytearray()
        self._eof = False

    def _link_alive(self) -> bool:
        transport = self.channel.get_transport()
        return transport is not None and transport.is_active()

    def _drain_stderr(self) -> None:
        while self.channel.recv_stderr_ready():
            self._stderr += self.channel.recv_stderr(65536)
        del self._stderr[:-8192]

    def readline(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            newline = self._buf.find(b"\n")
            if newline >= 0:
                line, self._buf = self._buf[: newline + 1], self._buf[newline + 1 :]
                return line.decode("utf-8", "replace")
            if self._eof:
                line, self._buf = self._buf, b""
                return line.decode("utf-8", "replace")
            self._drain_stderr()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.channel.settimeout(min(left, 0.5))
            try:
                data = self.channel.recv(65536)
            except TimeoutError:
                if not self._link_alive():
                    raise ConnectionLost(f"link to {self.owner.address} lost") from None
                continue
            except _LINK_ERRORS as exc:
                raise ConnectionLost(f"link to {self.owner.address} lost: {exc}") from None
            if data:
                self._buf += data
            else:
                self._eof = True
                self._drain_stderr()

    def wait(self, timeout: float) -> int | None:
        ready = self.channel.status_event.wait(timeout)
        self._drain_stderr()
        status = self.channel.exit_status if ready else -1
        if status == -1:
            # No exit status: the process died by a signal, or the link broke. paramiko closes the
            # channels a moment before it marks the transport inactive, so give it that moment.
            settle = time.monotonic() + 0.5
            while self._link_alive() and time.monotonic() < settle:
                time.sleep(0.02)
            if not self._link_alive():
                raise ConnectionLost(f"link to {self.owner.address} lost (the command ended without an exit status)")
        return status

    def stderr_tail(self) -> str:
        try:
            self._drain_stderr()
        except _LINK_ERRORS:
            pass
        return self._stderr.decode("utf-8", "replace")

    def kill(self, pid: int | None = None) -> None:
        try:
            self.channel.close()  # the agent sees stdin close and exits
        except Exception:  # noqa: BLE001 - closing on a broken link may fail in many ways
            pass
        if pid is not None and self._link_alive():
            try:
                self.owner.run(["kill", "-9", str(int(pid))], timeout=5.0)
            except ConnectionLost:
                pass


class SSHTransport(Transport):
    """One SSH connection (with SFTP) to a device, opened on demand and re-opened after a failure."""

    def __init__(self, config: DeviceConfig, *, trust_new_host_key: bool = False) -> None:
        assert config.ssh is not None
        self.config = config
        self.settings = config.ssh
        self.trust_new_host_key = trust_new_host_key
        self.stats = {"uploaded_files": 0, "uploaded_bytes": 0, "cached_files": 0, "connects": 0, "reconnects": 0}
        self._client: Any = None
        self._sftp: Any = None
        self._work: str | None = None
        self._agent: str | None = None
        self._facts: dict[str, Any] = {}
        self._partials: set[str] = set()
        self.host, self.port, self.user, self.identities, self.use_agent = self._resolve()

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def _source(self) -> str:
        return str(self.config.path) if self.config.path else f"device {self.config.name}"

    def _resolve(self) -> tuple[str, int, str, list[str], bool]:
        """Host, port, user and identities from the device file, completed from ~/.ssh/config."""
        s = self.settings
        host, port, user = s.host, s.port, s.user
        identities = [s.identity_file] if s.identity_file else []
        if s.config_host:
            config_file = Path(s.config_file)
            if not config_file.is_file():
                raise UsageError(
                    f'{self._source()}: [ssh] config_host = "{s.config_host}" but {config_file} does not exist: '
                    "set config_file, or give host, user and identity_file directly"
                )
            paramiko = _paramiko()
            entry = paramiko.SSHConfig.from_path(str(config_file)).lookup(s.config_host)
            host = host or entry.get("hostname", s.config_host)
            port = port or int(entry.get("port", 22))
            user = user or entry.get("user")
            if not identities:
                identities = [p for p in (os.path.expanduser(x) for x in entry.get("identityfile", [])) if os.path.isfile(p)]
        use_agent = s.use_agent if s.use_agent is not None else not identities
        for identity in identities:
            if not os.path.isfile(identity):
                raise UsageError(f"{self._source()}: [ssh] identity_file = \"{identity}\" does not exist: "
                                 "give the private key file whose public key is in the device's authorized_keys")
        if not identities and not use_agent:
            raise UsageError(f"{self._source()}: [ssh] has no identity_file and use_agent = false: "
                             "give a key file or use ssh-agent (passwords are not supported)")
        return str(host), int(port or 22), str(user or getpass.getuser()), identities, bool(use_agent)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user}
        if self.settings.config_host:
            out["config_host"] = self.settings.config_host
        return out

    def _open_socket(self) -> socket.socket:
        t = self.config.timeouts
        try:
            sock = socket.create_connection((self.host, self.port), timeout=t.connect)
        except OSError as exc:
            raise ConnectionLost(f"cannot reach {self.host}:{self.port}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle = max(1, int(t.keepalive))
        for option, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", idle), ("TCP_KEEPCNT", 3),
                              ("TCP_USER_TIMEOUT", int(t.tcp_user * 1000))):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        return sock

    def _host_key_policy(self, paramiko: Any) -> Any:
        transport = self
        known_hosts = Path(self.settings.known_hosts)
        device = shlex.quote(str(self.config.path or self.config.name))

        class Policy(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
                if not transport.trust_new_host_key:
                    raise HostKeyError(
                        f"host key of {hostname} is not in {known_hosts} ({fingerprint(key)}): check that "
                        f"fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then trust it "
                        f"with: edgenas devices check {device} --trust-new-host-key"
                    )
                known_hosts.parent.mkdir(parents=True, exist_ok=True)
                with open(known_hosts, "a") as f:
                    f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
                client.get_host_keys().add(hostname, key.get_name(), key)
                transport._facts["host_key_recorded"] = str(known_hosts)

        return Policy()

    def connect(self) -> dict[str, Any]:
        if self._client is not None:
            t = self._client.get_transport()
            if t is not None and t.is_active():
                return dict(self._facts)
            self.disconnect()
        paramiko = _paramiko()
        timeouts = self.config.timeouts
        start = time.perf_counter()
        sock = self._open_socket()
        client = paramiko.SSHClient()
        known_hosts = Path(self.settings.known_hosts)
        self._facts = {}
        try:
            if known_hosts.is_file():
                client.load_system_host_keys(str(known_hosts))
            client.set_missing_host_key_policy(self._host_key_policy(paramiko))
            client.connect(
                self.host, port=self.port, username=self.user, sock=sock,
                key_filename=self.identities or None, allow_agent=self.use_agent, look_for_keys=False,
                timeout=timeouts.connect, banner_timeout=timeouts.connect, auth_timeout=timeouts.connect,
                channel_timeout=timeouts.connect,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"host key of {self.known_hosts_name} CHANGED: the device sent {fingerprint(exc.key)} but "
                f"{known_hosts} has {fingerprint(exc.expected_key)}; refusing to connect (this is what an "
                f"attack looks like). If the device was reinstalled, remove the old key with "
                f"ssh-keygen -R '{self.known_hosts_name}' -f {shlex.quote(str(known_hosts))}, then run: "
                f"edgenas devices check {shlex.quote(str(self.config.path or self.config.name))} --trust-new-host-key"
            ) from None
        except HostKeyError:
            client.close()
            raise
        except paramiko.PasswordRequiredException:
            client.close()
            raise AuthError(f"{self._source()}: identity file {', '.join(self.identities)} is encrypted: "
                            "add it to ssh-agent (ssh-add) and set use_agent = true") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            tried = ", ".join(self.identities + (["ssh-agent"] if self.use_agent else []))
            raise AuthError(f"authentication as {self.address} failed with {tried} ({exc}): add the public "
                            f"key to ~/.ssh/authorized_keys of {self.user} on the device") from None
        except (paramiko.SSHException, *_LINK_ERRORS) as exc:
            client.close()
            if "No authentication methods available" in str(exc):  # no key file, and no key from an agent
                where = (f"the ssh-agent at SSH_AUTH_SOCK={os.environ['SSH_AUTH_SOCK']} holds no key"
                         if os.environ.get("SSH_AUTH_SOCK") else "no ssh-agent is running (SSH_AUTH_SOCK is not set)")
                raise AuthError(f"{self._source()}: no key to log in to {self.address} with: [ssh] has no "
                                f"identity_file and {where}; start ssh-agent and ssh-add your key, or set "
                                "identity_file") from None
            raise ConnectionLost(f"cannot connect to {self.address}: {exc}") from None
        self._client = client
        transport = client.get_transport()
        transport.set_keepalive(max(1, int(timeouts.keepalive)))
        try:
            self._sftp = client.open_sftp()
            self._sftp.get_channel().settimeout(timeouts.model)
            home = self._sftp.normalize(".")
            self._work = self._remote_work_dir(home)
            self._makedirs(posixpath.join(self._work, "models"))
            self._remove_partials()
        except (paramiko.SSHException, *_LINK_ERRORS) as exc:
            self.disconnect()
            raise ConnectionLost(f"SFTP to {self.address} failed: {exc}") from None
        self.stats["connects"] += 1
        self._facts.update({
            "host_key": fingerprint(transport.get_remote_server_key()),
            "connect_ms": round((time.perf_counter() - start) * 1000, 2),
            "work_dir": self._work,
        })
        return dict(self._facts)

    def _remote_work_dir(self, home: str) -> str:
        work = self.config.work_dir
        if work == "~":
            return home
        if work.startswith("~/"):
            return posixpath.join(home, work[2:])
        return work if work.startswith("/") else posixpath.join(home, work)

    def _makedirs(self, path: str) -> None:
        parts = path.split("/")
        for i in range(2, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if not prefix:
                continue
            try:
                self._sftp.stat(prefix)
            except FileNotFoundError:
                self._sftp.mkdir(prefix)

    def _remove_partials(self) -> None:
        """Remove this transport's uploads cut short by a broken link, and anyone's abandoned long ago."""
        for path in list(self._partials):
            try:
                self._sftp.remove(path)
            except FileNotFoundError:
                pass
            self._partials.discard(path)
        folder = posixpath.join(self._work, "models")
        for entry in self._sftp.listdir_attr(folder):
            if entry.filename.endswith(".part") and (entry.st_mtime or 0) < time.time() - STALE_UPLOAD_S:
                try:
                    self._sftp.remove(posixpath.join(folder, entry.filename))
                except FileNotFoundError:
                    pass

    def disconnect(self) -> None:
        client, self._client, self._sftp, self._agent = self._client, None, None, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail in many ways
                pass

    def _sftp_call(self, what: str, fn: Any, *args: Any) -> Any:
        paramiko = _paramiko()
        if self._sftp is None:
            raise ConnectionLost(f"not connected to {self.address}")
        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except (paramiko.SSHException, *_LINK_ERRORS) as exc:
            raise ConnectionLost(f"{what} on {self.address} failed: {exc}") from None

    def _upload(self, local: Path, remote: str, size: int) -> None:
        folder, name = posixpath.split(remote)
        partial = posixpath.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.part")
        self._partials.add(partial)
        self._sftp_call(f"uploading {local.name}", self._sftp.put, str(local), partial, None, True)
        self._sftp_call("renaming an upload", self._sftp.posix_rename, partial, remote)
        self._partials.discard(partial)
        self.stats["uploaded_files"] += 1
        self.stats["uploaded_bytes"] += size

    def stage_agent(self) -> str:
        if self._agent is None:
            assert self._work is not None
            remote = posixpath.join(self._work, f"agent-{_agent_version()}.py")
            try:
                self._sftp_call("checking the agent", self._sftp.stat, remote)
                self.stats["cached_files"] += 1
            except FileNotFoundError:
                self._upload(AGENT_PATH, remote, AGENT_PATH.stat().st_size)
            self._agent = remote
        return self._agent

    def stage(self, files: Sequence[ModelFile]) -> list[str]:
        assert self._work is not None
        folder = posixpath.join(self._work, "models")
        present = set(self._sftp_call("listing models", self._sftp.listdir, folder))
        paths = []
        for f in files:
            remote = posixpath.join(folder, f.remote_name)
            if f.remote_name in present:
                self.stats["cached_files"] += 1
            else:
                self._upload(f.local_path, remote, f.size)
                present.add(f.remote_name)
            paths.append(remote)
        return paths

    def unstage(self, paths: Sequence[str]) -> None:
        for path in paths:
            try:
                self._sftp_call("removing a model", self._sftp.remove, path)
            except FileNotFoundError:
                pass

    def clean(self) -> int:
        self.connect()
        assert self._work is not None
        removed = 0
        folder = posixpath.join(self._work, "models")
        for name in self._sftp_call("listing models", self._sftp.listdir, folder):
            if _OWN_FILE.match(name):
                self._sftp_call("removing a model", self._sftp.remove, posixpath.join(folder, name))
                removed += 1
        for name in self._sftp_call("listing the work folder", self._sftp.listdir, self._work):
            if re.fullmatch(r"agent-[0-9a-f]{16}\.py|probe-[A-Za-z0-9._-]+\.json", name):
                self._sftp_call("removing the agent", self._sftp.remove, posixpath.join(self._work, name))
                removed += 1
        self._agent = None
        return removed

    def work_dir(self) -> str:
        return self._work or self.config.work_dir

    def probe_file(self) -> str | None:
        return posixpath.join(self._work, f"probe-{self.config.name}.json") if self._work else None

    def spawn(self, argv: Sequence[str]) -> Process:
        paramiko = _paramiko()
        if self._client is None:
            raise ConnectionLost(f"not connected to {self.address}")
        try:
            channel = self._client.get_transport().open_session(timeout=self.config.timeouts.connect)
            channel.exec_command(shell_command(argv))
        except (paramiko.SSHException, AttributeError, *_LINK_ERRORS) as exc:
            raise ConnectionLost(f"cannot start a command on {self.address}: {exc}") from None
        return SSHProcess(self, channel)
