"""The `edgenas` command: parses arguments, dispatches to each command group, maps errors to exit codes.

Each command group is one module of this package (`edgenas/cli/<group>.py`), which exposes
`register(subparsers)`. Those modules import nothing heavy at module level, so `edgenas --help`
stays fast; a handler imports torch & co. only when it runs. This package is the only place that
chains stages; nothing else in edgenas imports it.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from edgenas import __version__
from edgenas.errors import EXIT_SIGINT, EXIT_SIGTERM, Terminated, UsageError, did_you_mean, interrupt_handlers

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
    """argparse, but a bad argument is one line (the problem, the near name, where to look), exit status 2, and no
    prefix matching: `--epochs` is refused with "did you mean '--epochs-scale'?", not read as it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}{self._hint(message)} (see '{self.prog} --help')\n")

    def _hint(self, message: str) -> str:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:
            return did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
        unknown = re.match(r"unrecognized arguments: (\S+)", message)
        if unknown:
            flag = unknown.group(1).split("=", 1)[0]
            return did_you_mean(flag, [o for a in self._actions for o in a.option_strings if o.startswith("--")])
        return ""

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        """A command without subcommands refuses an unknown `--flag` first, before a missing required one hides it."""
        if args is not None and not any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            for token in args:
                if token == "--":
                    break
                if token.startswith("--") and token.split("=", 1)[0] not in self._option_string_actions:
                    self.error(f"unrecognized arguments: {token}")
        return super().parse_known_args(args, namespace)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """An unknown argument is reported by the (sub)command it was given to, so the near name is one of its own
        flags."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.chosen(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def chosen(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The deepest subcommand's parser that `parsed` went through."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                sub = action.choices.get(getattr(parsed, action.dest, None) or "")
                if sub is not None:
                    return sub.chosen(parsed) if isinstance(sub, OneLineParser) else sub
        return self


def all_parsers(parser: argparse.ArgumentParser | None = None) -> list[argparse.ArgumentParser]:
    """Every parser of the command, subcommands' included (docs/cli.md and the typo test walk them)."""
    parser = parser or build_parser()
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += all_parsers(sub)
    return found


def build_parser() -> argparse.ArgumentParser:
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


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse, before any work, numbers no command can use (NaN, inf, out of a knob's range: `edgenas.settings`,
    the same ranges and the same one-line errors as a config file's keys) and unusable store or cache paths; each
    stage's own checks (files, devices, outputs) follow in its handler."""
    # deferred: numpy, edgenas.cli.folder load when the command runs, not for `edgenas --help`
    from edgenas.cli.folder import apply_run_folder
    from edgenas.inputs import check_store_path, output_dir
    from edgenas.settings import check_flags

    for dest, value in sorted(vars(args).items()):
        if dest.startswith("_"):
            continue
        option = "--" + dest.replace("_", "-")
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{option} = {value}: expected a finite number")
        if isinstance(value, str) and "\x00" in value:
            raise UsageError(f"{option} holds a NUL byte: give a real value")
    apply_run_folder(args)  # a run folder's supernet, predictors, devices and store for the options left out
    check_flags(vars(args))  # each knob's range, as a config file's key is checked (edgenas.settings)
    check_names(args)
    check_store_path(getattr(args, "store", None))
    for dest in ("tables", "models"):  # calibrate's folders (`measure` has a list of model files, checked there)
        if isinstance(getattr(args, dest, None), str):
            output_dir(getattr(args, dest), f"--{dest}")


# Commands whose --device (or NAME) is a device file; `import ofa-lut --device` names a new table, train's is torch's.
DEVICE_FILE_COMMANDS = frozenset({"measure", "calibrate", "latency", "search", "export", "devices"})


def check_names(args: argparse.Namespace) -> None:
    """Refuse, before anything runs or is written, a device, search space or export format that does not exist,
    naming the near one ("unknown device 'lcoal' (did you mean 'local'?)")."""
    if args.command in DEVICE_FILE_COMMANDS:
        # deferred: numpy loads when the command runs, not for `edgenas --help`
        from edgenas.devices.device_files import builtin_device, find_device_file

        names = getattr(args, "device", None) or getattr(args, "name", None) or []
        for name in [names] if isinstance(names, str) else names:
            if builtin_device(name) is None:  # `local` and `local-tflite` work from any folder
                find_device_file(name)
    space = getattr(args, "space", None)
    if isinstance(space, str) and not space.endswith(".json") and not Path(space).is_file():
        # deferred: numpy loads when the command runs, not for `edgenas --help`
        from edgenas.space import SearchSpace

        if space not in SearchSpace.presets():
            raise UsageError(f"--space {space!r}: unknown search space{did_you_mean(space, SearchSpace.presets())}; "
                             f"choose from {', '.join(SearchSpace.presets())}")
    formats = getattr(args, "formats", None)
    if isinstance(formats, str):
        # deferred: edgenas.export.formats loads when the command runs, not for `edgenas --help`
        from edgenas.export.formats import FORMATS

        bad = [f.strip() for f in formats.split(",") if f.strip() and f.strip() not in FORMATS]
        if bad or not formats.strip(","):
            raise UsageError(f"--formats {formats!r}: unknown format {bad[0] if bad else repr(formats)}"
                             f"{did_you_mean(bad[0], FORMATS) if bad else ''}; choose from {', '.join(FORMATS)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE if args.command is None else 0
    debug = args.debug or os.environ.get("EDGENAS_DEBUG") == "1"
    # deferred: numpy loads when the command runs, not for `edgenas --help`
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
        # deferred: ctypes loads only for a training run, not for `edgenas --help`
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: its allocator, its defaults
        pass


def entry() -> None:
    keep_freed_memory()
    sys.exit(main())

