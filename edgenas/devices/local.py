"""LocalTransport: this machine as a device; the agent runs in a subprocess and reads models in place."""

from __future__ import annotations

import collections
import os
import queue
import subprocess
import threading
from collections.abc import Sequence
from typing import IO, Any

from edgenas.devices.device_files import DeviceConfig
from edgenas.devices.protocol import AGENT_PATH, ModelFile, Process, Transport


class LocalProcess(Process):
    """A subprocess whose stdout lines arrive through a reader thread, so reads can time out."""

    def __init__(self, argv: Sequence[str]) -> None:
        try:
            self.popen = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        except OSError as exc:  # the configured python does not exist
            self.popen = None
            self._start_error = f"cannot start {argv[0]}: {exc.strerror or exc}"
        self._lines: queue.Queue[str] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=50)
        if self.popen is not None:
            assert self.popen.stdout is not None and self.popen.stderr is not None
            self._threads = [
                threading.Thread(target=self._pump, args=(self.popen.stdout, self._lines.put, True), daemon=True),
                threading.Thread(target=self._pump, args=(self.popen.stderr, self._stderr.append, False), daemon=True),
            ]
            for t in self._threads:
                t.start()
        else:
            self._stderr.append(self._start_error)
            self._lines.put("")

    @staticmethod
    def _pump(stream: IO[bytes], sink: Any, mark_end: bool) -> None:
        for raw in iter(stream.readline, b""):
            sink(raw.decode("utf-8", "replace"))
        if mark_end:
            sink("")

    def readline(self, timeout: float) -> str | None:
        try:
            return self._lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def wait(self, timeout: float) -> int | None:
        if self.popen is None:
            return 127
        try:
            status = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        for t in self._threads:
            t.join(1.0)
        return status

    def stderr_tail(self) -> str:
        return "".join(self._stderr)[-4000:]

    def kill(self, pid: int | None = None) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


class LocalTransport(Transport):
    """Runs on this machine: nothing to connect or upload, models are read where they are."""

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.stats = {"uploaded_files": 0, "uploaded_bytes": 0, "cached_files": 0, "reconnects": 0}

    def connect(self) -> dict[str, Any]:
        return {"host": "localhost"}

    def disconnect(self) -> None:
        pass

    def stage(self, files: Sequence[ModelFile]) -> list[str]:
        return [str(f.local_path) for f in files]

    def stage_agent(self) -> str:
        return str(AGENT_PATH)

    def unstage(self, paths: Sequence[str]) -> None:
        pass  # the user's own files

    def clean(self) -> int:
        return 0

    def spawn(self, argv: Sequence[str]) -> Process:
        return LocalProcess(argv)

    def describe(self) -> dict[str, Any]:
        return {"host": "localhost"}

    def probe_file(self) -> str | None:
        return os.path.join(os.path.expanduser(self.config.work_dir), f"probe-{self.config.name}.json")
