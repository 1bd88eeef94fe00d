"""How the suite shares this machine's cores: three pytest-xdist workers, a file's tests on one worker (its module
fixtures, a trained supernet or a whole `edgenas run`, are built once), the longest files first, and the timing
tests alone.

- `pyproject.toml` runs `-n 3 --dist loadfile --no-loadscope-reorder`; `-n 0` (or `-p no:xdist`) runs everything in
  one process as before. Without `--no-loadscope-reorder` xdist hands out the files with the most tests first, not in
  this order: the README's 80 s fine-tune walkthrough (one test) then started last and ran alone for a minute.
- Three workers on 2 cores: with two, the cores were busy 1.77 of 2 on average (13:05 of user and 1:14 of system CPU
  time in a 492 s run of the README's test command): tests wait on sshd, on links cut or slowed on purpose, on
  subprocesses and measurement windows. With three, the same command took 461 s and 480 s (491-495 s with two).
- Files start longest first, by `tests/durations.json` (seconds per file, written by `tools/test_durations.py` from a
  full run); a file it does not know goes after the known ones, in collection order.
- A test marked `timing` (its assertion depends on how fast something runs: a latency ratio, a time limit, a
  startup time) holds the machine alone while it runs: it waits until the other workers' current tests end, and they
  start nothing new until it is done (a readers-writer lock on two files: every other test holds the shared side).
  Its fixtures (a testbed, models) are built and torn down beside the other workers' tests.
- Files that build the same expensive input in-process (`SHARED_BUILDS`: the exported digits bundle of
  tests/export/test_subnet.py, an lru_cache) run on one worker, one xdist work unit, so it is built once per run,
  not once per worker that gets one of them (three conversions and their checks each time). The unit starts where
  its longest file would have.
- The timing tests run last, one after another, on one worker (one xdist work unit, `TimingLastScheduling`). Spread
  through their files, each one waited for the other worker's current test to end, on average 9 s of an idle core
  each (half the length of the test it waited for, weighted by length); together they wait once, at the end, where
  the other workers are finishing their last short files.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
TIMING_UNIT = "timing"  # the xdist work unit of the timing tests (see pytest_xdist_make_scheduler)
# work unit -> the files run in it, on one worker: they share an in-process build (see the docstring)
SHARED_BUILDS = {
    "exported-digits-bundle": ("tests/test_micro_memory.py", "tests/export/test_contract.py",
                               "tests/export/test_subnet.py", "tests/export/test_tflite.py",
                               "tests/export/test_micro.py", "tests/export/test_card.py"),
}
_UNIT_OF_FILE = {path: unit for unit, paths in SHARED_BUILDS.items() for path in paths}


def pytest_configure(config):
    config.addinivalue_line("markers", "timing: its assertion depends on speed; runs while no other test runs")


def pytest_collection_modifyitems(session, config, items):
    """Longest files first (stable within a file), so the last file to finish is a short one; the timing tests last."""
    _longest_files_first(items)
    timing = [item for item in items if item.get_closest_marker("timing")]
    items[:] = [item for item in items if not item.get_closest_marker("timing")] + timing
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for item in timing:  # xdist's own way to group tests (as its --dist loadgroup does): a suffix on the id
            item._nodeid = f"{item.nodeid}@{TIMING_UNIT}"


def _longest_files_first(items) -> None:
    try:
        seconds = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(seconds, dict):
        return
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        first_seen.setdefault(item.nodeid.split("::")[0], i)

    def key(pair):
        i, item = pair
        path = item.nodeid.split("::")[0]
        known = seconds.get(path)
        return (0, -float(known), first_seen[path], i) if isinstance(known, (int, float)) else (1, 0, first_seen[path], i)

    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with the timing tests one work unit of their own (the last: see the collection order) and
    the files of each `SHARED_BUILDS` entry one unit."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class TimingLastScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.endswith(f"@{TIMING_UNIT}"):
                return TIMING_UNIT
            path = super()._split_scope(nodeid)
            return _UNIT_OF_FILE.get(path, path)

    return TimingLastScheduling(config, log)


def _lock_paths() -> tuple[Path, Path] | None:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run or not os.environ.get("PYTEST_XDIST_WORKER"):
        return None  # one process: nothing runs beside a test
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgenas-tests-{run}"
    return base.with_suffix(".turnstile"), base.with_suffix(".machine")


@contextmanager
def _holding(path: Path, mode: int):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


_machine_fd: int | None = None  # this worker's shared hold on the machine, while a test runs


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Every test holds the machine shared, from its fixtures' setup to their teardown."""
    global _machine_fd
    paths = _lock_paths()
    if paths is None:
        yield
        return
    turnstile, machine = paths
    with _holding(turnstile, fcntl.LOCK_EX):
        pass  # a timing test waiting holds the turnstile: wait behind it, do not overtake it
    with _holding(machine, fcntl.LOCK_SH) as fd:
        _machine_fd = fd
        try:
            yield
        finally:
            _machine_fd = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """A timing test holds the machine alone while it runs; its fixtures (a testbed, models) are built and torn down
    beside the other workers' tests."""
    paths = _lock_paths()
    if paths is None or _machine_fd is None or not item.get_closest_marker("timing"):
        yield
        return
    # hold the turnstile so no other test starts, then wait for those running to end (the shared hold becomes
    # exclusive once the other workers' tests have let go of theirs)
    with _holding(paths[0], fcntl.LOCK_EX):
        fcntl.flock(_machine_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(_machine_fd, fcntl.LOCK_SH)
