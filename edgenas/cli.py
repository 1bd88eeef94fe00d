"""The `edgenas` command: parses arguments, dispatches to each stage's commands, maps errors to exit codes.

Each stage keeps its own subcommands in `edgenas/<stage>/commands.py`, which exposes
`register(subparsers)`. Those modules import nothing heavy at module level, so
`edgenas --help` stays fast; a handler imports torch & co. only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Order here is the order in `edgenas --help`.
COMMAND_MODULES = (
    "edgenas.pipeline.commands",  # demo, run
    "edgenas.train.commands",  # train, eval
    "edgenas.devices.commands",  # devices, measure
    "edgenas.latency.commands",  # calibrate, latency
    "edgenas.accuracy.commands",  # predictor, proxies
    "edgenas.search.commands",  # search
    "edgenas.export.commands",  # export
)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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
            if exc.name == name:  # a stage whose commands are not built yet
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE if args.command is None else 0
    debug = args.debug or os.environ.get("EDGENAS_DEBUG") == "1"
    from edgenas.errors import UsageError

    try:
        return _run_handler(args)
    except UsageError as exc:
        if debug:
            raise
        print(f"edgenas: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nedgenas: interrupted; what was finished is saved, run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
