"""The `edgenas` command: parses arguments, dispatches to each command group, maps errors to exit codes.

Each command group is one module of this package (`edgenas/cli/<group>.py`), which exposes
`register(subparsers)`. Those modules import nothing heavy at module level, so `edgenas --help`
stays fast; a handler imports torch & co. only when it runs. This package is the only place that
chains stages; nothing else in edgenas imports it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

from edgenas.search.settings import SEARCH_SETTINGS

# Order here is the order in `edgenas --help`.
COMMAND_MODULES = (
    "edgenas.cli.run",  # demo, run
    "edgenas.cli.train",  # train, eval
    "edgenas.cli.imports",  # import ofa | ofa-predictor | ofa-lut
    "edgenas.cli.devices",  # devices, measure
    "edgenas.cli.latency",  # calibrate, latency
    "edgenas.cli.accuracy",  # predictor, proxies
    "edgenas.cli.search",  # search
    "edgenas.cli.export",  # export
)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # SIGINT; SIGTERM exits with 143 (edgenas.errors)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (the problem and where to look), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from edgenas import __version__

    parser = OneLineParser(
        prog="edgenas",
        description="Hardware-aware neural architecture search for edge devices: train a once-for-all "
        "supernet, calibrate latency on your devices over SSH, search each device's best subnet, "
        "export it to ONNX and TFLite, verified.",
    )
    parser.add_argument("--version", action="version", version=f"edgenas {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command group that is not built yet
                continue
            raise
        module.register(sub)
    return parser


def _run_handler(args: argparse.Namespace) -> int:
    handler = args.handler
    if isinstance(handler, str):
        module_name, func_name = handler.split(":")
        handler = getattr(importlib.import_module(module_name), func_name)
    result = handler(args)
    return int(result or 0)


# Numeric options checked for every command before it runs: (smallest, largest) of each by its argparse dest.
# Counts are capped where a larger value can only be a slip (it would run for days or exhaust memory).
COUNT_RANGES = {
    "threads": (1, 1024), "workers": (1, 256), "data_workers": (0, 64), "batch_size": (1, 1 << 20), "bn_batches": (1, 100_000),
    "samples": (1, 1_000_000), "test": (1, 1_000_000), "sample": (1, 1_000_000), "budget": (1, 100_000),
    "holdout": (1, 100_000), "transfer_samples": (1, 100_000), "calibration_images": (1, 1_000_000),
    "steps": (1, 1_000_000_000), "checkpoint_every": (1, 1_000_000_000), "finetune_epochs": (0, 10_000),
    "seed": (0, 2**31 - 1),
    **{name: (s.low, s.high) for name, s in SEARCH_SETTINGS.items()},  # population, generations, top_k: as in a run config
}
POSITIVE_NUMBERS = ("max_latency_ms", "max_sram_kb", "max_flash_kb", "max_macs", "epochs_scale", "target_sram_kb",
                    "target_flash_kb")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse, before any work, numbers no command can use (NaN, inf, out of range) and unusable store or
    cache paths; each stage's own checks (files, devices, outputs) follow in its handler."""
    import math

    from edgenas.errors import UsageError
    from edgenas.inputs import check_store_path, output_dir

    for dest, value in sorted(vars(args).items()):
        option = "--" + dest.replace("_", "-")
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                raise UsageError(f"{option} {value}: expected a finite number")
            if dest in POSITIVE_NUMBERS and not value > 0:
                raise UsageError(f"{option} {value:g}: expected a number greater than 0")
        if isinstance(value, int) and dest in COUNT_RANGES:
            low, high = COUNT_RANGES[dest]
            if not low <= value <= high:
                raise UsageError(f"{option} {value}: expected an integer from {low} to {high:,}".replace(",", " "))
        if isinstance(value, str) and "\x00" in value:
            raise UsageError(f"{option} holds a NUL byte: give a real value")
    check_store_path(getattr(args, "store", None))
    for dest in ("tables", "models"):  # calibrate's folders (`measure` has a list of model files, checked there)
        if isinstance(getattr(args, dest, None), str):
            output_dir(getattr(args, dest), f"--{dest}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE if args.command is None else 0
    debug = args.debug or os.environ.get("EDGENAS_DEBUG") == "1"
    from edgenas.errors import EXIT_SIGINT, EXIT_SIGTERM, Terminated, UsageError, interrupt_handlers
    from edgenas.inputs import one_line

    caught: list[warnings.WarningMessage] = []
    try:
        # Warnings are held until the command ends: a refusal is one line, not one line after a library's
        # warning about the bad file; a command that finishes shows them.
        with interrupt_handlers(), warnings.catch_warnings(record=True) as caught:
            check_arguments(args)
            code = _run_handler(args)
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return code
    except UsageError as exc:
        if debug:
            traceback.print_exc()
        print(f"edgenas: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
        if debug:  # a path the user gave that a stage could not use: one line naming it
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"edgenas: error: {exc.strerror or type(exc).__name__}{where}: check the paths given to this command",
              file=sys.stderr)
        return EXIT_USAGE
    except RecursionError:  # a reader missed a deeply nested input: still one line, not 3 000
        if debug:
            traceback.print_exc()
        print("edgenas: error: an input nests too deeply to read (a JSON or TOML file of thousands of levels?): "
              "check the files given to this command", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        if debug:
            traceback.print_exc()
        terminated = isinstance(exc, Terminated)
        detail = one_line(str(exc.args[0])) if exc.args else \
            "what was finished is saved, run the same command again to resume"
        start = "\n" if sys.stderr.isatty() else ""  # end a progress bar's line on a terminal
        print(f"{start}edgenas: {'terminated' if terminated else 'interrupted'}; {detail}", file=sys.stderr)
        return EXIT_SIGTERM if terminated else EXIT_SIGINT


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for reuse instead of handing it back to the system at once.

    PyTorch frees and reallocates the same multi-megabyte activation buffers every training step; glibc returned
    them (trim, mmap) and every step paid the page faults of taking them back: 1.6 million minor faults and 10 s of
    system time in a 48 s training of 90 steps here, 0.2 million and 5 s with these settings (wall 11 % shorter).
    The cost is memory held at the run's peak, which a training run reaches anyway."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: its allocator, its defaults
        pass


def entry() -> None:
    keep_freed_memory()
    sys.exit(main())

