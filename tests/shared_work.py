"""Expensive test inputs built once per test run, not once per pytest-xdist worker.

`shared_file(name, build)` returns the path of a file (or folder) `build(path)` writes. Under xdist the first worker to ask
builds it in the run's shared temporary folder (pytest's, beside the workers' own, removed with them) while holding
a lock; a worker asking meanwhile waits for it, and every later one reads the same file. In one process it is built
once in the session's temporary folder (outside pytest, in a temporary folder of its own).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

_folder: Path | None = None


@pytest.fixture(scope="session", autouse=True)
def _shared_folder(tmp_path_factory):
    """The run's folder all workers see: the parent of this worker's base temporary folder (xdist), else the base."""
    global _folder
    base = tmp_path_factory.getbasetemp()
    _folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    _folder.mkdir(exist_ok=True)
    yield


def shared_file(name: str, build: Callable[[Path], object]) -> Path:
    folder = _folder if _folder is not None else Path(tempfile.mkdtemp(prefix="edgenas-test-shared-"))
    path = folder / name
    fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not path.exists():
            tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
            build(tmp)
            os.replace(tmp, path)  # a file or a folder, whole or not at all
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return path
