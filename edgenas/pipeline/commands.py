"""CLI commands `demo` and `run`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the whole pipeline on the embedded default (digits, tiny, this machine)")
    demo.add_argument("--out", default="edgenas-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    demo.set_defaults(handler="edgenas.pipeline.commands:run_demo")


def run_demo(args: argparse.Namespace) -> int:
    print("edgenas demo: not built yet (the end-to-end pipeline lands with issue 8)")
    return 0
