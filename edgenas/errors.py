"""Errors a user can fix (the CLI prints them as one line and exits with status 2), and interruption by signals."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class UsageError(ValueError):
    """Bad input from the user (a value, a file, a missing dependency).

    The message names the bad value and what would be right. The CLI prints it
    on one line, without a traceback, and exits with status 2.
    """


class MissingDependencyError(UsageError):
    """An optional dependency is not installed; the message says how to install it."""


def require(module: str, *, extra: str, purpose: str, load: bool = True):
    """Import an optional dependency, or raise a MissingDependencyError naming the extra. `load=False` only looks
    for it (for a check before any work, where its import is slow and may not be needed)."""
    try:
        if load:
            return importlib.import_module(module)
        if sys.modules.get(module, ...) is None or importlib.util.find_spec(module) is None:
            raise ImportError("not installed")
        return None
    except (ImportError, ValueError) as exc:
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{module.split('.')[0]}' ({exc}); "
            f"install it with: pip install 'edgenas[{extra}]'"
        ) from exc


# ---- interruption ---------------------------------------------------------------------------------
# SIGINT (Ctrl-C) and SIGTERM (kill, a batch scheduler, a container stop) both stop a command cleanly:
# each raises where the program is, so `finally` blocks, atomic writes and store transactions finish
# or roll back, and a stage saves what it has done before the CLI exits with 130 or 143.

EXIT_SIGINT = 128 + 2
EXIT_SIGTERM = 128 + 15


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so every handler that cleans up after Ctrl-C also runs for it."""


_held: list[int] = []  # signals that arrived inside `signals_held()`, raised when it ends
_holding = 0


def _raise_for(signum: int) -> None:
    if signum == signal.SIGTERM:
        raise Terminated  # no message: the CLI says what was saved
    raise KeyboardInterrupt


def _on_signal(signum: int, frame: object) -> None:
    if _holding:
        _held.append(signum)
        return
    _raise_for(signum)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (a training step's update is never half applied).

    Works under `interrupt_handlers()` (the CLI installs them); elsewhere Ctrl-C raises as usual.
    """
    global _holding
    _holding += 1
    try:
        yield
    finally:
        _holding -= 1
        if not _holding and _held:
            signum = _held[0]
            _held.clear()
            _raise_for(signum)


@contextmanager
def interrupt_handlers() -> Iterator[None]:
    """While active: SIGTERM raises Terminated and SIGINT KeyboardInterrupt (both holdable). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _held.clear()


def did_you_mean(value: object, choices: object) -> str:
    """`" (did you mean 'tiny'?)"` when one of `choices` is near `value` (a typo), else "": the hint every refusal of
    an unknown name (flag, command, device, space, preset, format) ends with, as git and cargo do."""
    names = [str(c) for c in choices]  # type: ignore[attr-defined]
    text = str(value)
    near = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    if not near:  # a prefix or a longer spelling of a name: '--epochs' for '--epochs-scale'
        near = [n for n in names if n.startswith(text) or text.startswith(n)][:1] if len(text) > 2 else []
    return f" (did you mean {near[0]!r}?)" if near else ""
