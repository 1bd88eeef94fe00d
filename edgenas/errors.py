"""Errors a user can fix: the CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user (a value, a file, a missing dependency).

    The message names the bad value and what would be right. The CLI prints it
    on one line, without a traceback, and exits with status 2.
    """


class MissingDependencyError(UsageError):
    """An optional dependency is not installed; the message says how to install it."""


def require(module: str, *, extra: str, purpose: str):
    """Import an optional dependency, or raise a MissingDependencyError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{module.split('.')[0]}' ({exc}); "
            f"install it with: pip install 'edgenas[{extra}]'"
        ) from exc
