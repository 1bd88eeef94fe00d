"""Write docs/cli.md from the `edgenas` parsers: every command's and subcommand's --help, in the order of
`edgenas --help`. `python tools/cli_docs.py` rewrites the file; `--check` exits 1 when it is out of date
(tests/test_docs.py runs that)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "cli.md"
WIDTH = "100"  # argparse wraps help at the terminal's width: a fixed one, so the file does not depend on it


def cli_markdown() -> str:
    os.environ["COLUMNS"] = WIDTH
    sys.path.insert(0, str(ROOT))
    from edgenas.cli import all_parsers

    parts = ["# The `edgenas` command", "",
             "Generated from the parsers by `python tools/cli_docs.py` (a test checks that it is current): every "
             "command's `--help`. Every command refuses an unknown or abbreviated flag and names the near one; bad "
             "input is one line and exit status 2 (`--debug` shows a traceback). A command pointed at a run folder "
             "(or a file in it) takes the supernet, predictors, device files and store the folder's "
             "`manifest.json` names.", ""]
    for parser in all_parsers():
        parts += [f"## `{parser.prog}`", "", "```", parser.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/cli.md is not what the parsers say")
    args = ap.parse_args(argv)
    text = cli_markdown()
    if args.check:
        current = TARGET.read_text() if TARGET.is_file() else ""
        if current != text:
            print("docs/cli.md is out of date: run `python tools/cli_docs.py`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
