"""Capture what native libraries print: TFLite, TFLite Micro and torchao write straight to file descriptors 1 and 2."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator


class Captured:
    """The text written to stdout and stderr inside a `captured_output()` block (filled in on exit)."""

    text: str = ""


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Redirect file descriptors 1 and 2 (and Python's streams, warnings and logging) into a buffer.

    Native code (C++ kernels, absl logging) bypasses `sys.stderr`, so this swaps the descriptors
    themselves; the captured text is kept so that error messages can be parsed (e.g. the op that
    TFLite Micro does not support) instead of being lost or spamming a user's terminal.
    """
    result = Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        root = logging.getLogger()
        level = root.level
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            root.setLevel(logging.ERROR)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield result
        finally:
            root.setLevel(level)
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, dup in saved.items():
                os.dup2(dup, fd)
                os.close(dup)
            sink.seek(0)
            result.text = sink.read().decode("utf-8", "replace")

