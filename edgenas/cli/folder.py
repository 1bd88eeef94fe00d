"""Continue a run folder: a command pointed at a folder that `edgenas demo / run / train` wrote (or at a file in it)
takes what the folder's manifest names (edgenas.run_folder) for every option left out, and says so in one line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgenas.errors import UsageError
from edgenas.run_folder import find_run_folder, reused_line

# What a command's options may take from a folder (a value the user gave always wins).
DEVICE_FROM_FOLDER = frozenset({"search", "measure", "export", "calibrate", "latency"})


def apply_run_folder(args: argparse.Namespace) -> None:
    """Fill `args` from the run folder that its --supernet, --arch or model files point into (before any check or
    work), and print what was reused on one line (stderr)."""
    folder = None
    supernet = getattr(args, "supernet", None)
    if isinstance(supernet, str) and supernet:
        folder = find_run_folder(supernet)
    for value in _file_values(args):
        if folder is None:
            folder = find_run_folder(value)
    if folder is None:
        if isinstance(supernet, str) and Path(supernet).is_dir():
            raise UsageError(f"--supernet {supernet} is a folder without an edgenas manifest.json: give the "
                             "checkpoint (supernet.pt) or a folder `edgenas demo`, `run` or `train` wrote")
        if hasattr(args, "supernet") and supernet is None and args.command in ("eval", "export"):
            raise UsageError("give --supernet CKPT (or an --arch file inside a run folder, which names its supernet)")
        return
    reused: list[str] = []
    if hasattr(args, "supernet") and (supernet is None or Path(supernet).is_dir()):
        if folder.supernet is None:
            raise UsageError(f"{folder.shown(folder.root)} holds no supernet (its manifest.json names none): give "
                             "--supernet CKPT")
        args.supernet = str(folder.supernet)
        reused.append(f"supernet {folder.shown(folder.supernet)}")
    if getattr(args, "predictor", "absent") is None and folder.accuracy_predictor is not None:
        args.predictor = str(folder.accuracy_predictor)
        reused.append(f"accuracy predictor {folder.shown(folder.accuracy_predictor)}")
    if getattr(args, "store", "absent") is None and folder.store is not None:
        args.store = str(folder.store)
        reused.append(f"store {folder.shown(folder.store)}")
    if args.command in DEVICE_FROM_FOLDER:
        reused += _devices(args, folder)
    if reused:
        print(reused_line(args.command, folder, reused), file=sys.stderr, flush=True)


def _file_values(args: argparse.Namespace) -> list[str]:
    """Paths given to the command that may lie in a run folder: --arch files, model files."""
    values = []
    for dest in ("arch", "models"):
        value = getattr(args, dest, None)
        for v in [value] if isinstance(value, str) else value or []:
            if isinstance(v, str) and "\x00" not in v and not v.lstrip().startswith(("{", "[")) and _exists(v):
                values.append(v)
    return values


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def _devices(args: argparse.Namespace, folder) -> list[str]:
    """Device names the folder knows: its device file, and (search) the latency predictor it calibrated."""
    names = getattr(args, "device", None)
    if not names:
        return []
    single = isinstance(names, str)
    resolved, reused, tables = [], [], {}
    for name in [names] if single else names:
        path = folder.device_file(name) if not name.endswith(".toml") else None
        if path is not None:  # the device settings the folder's tables were measured with
            reused.append(f"device file {folder.shown(path)}")
            resolved.append(str(path))
        else:
            resolved.append(name)
        table = folder.latency_predictor(name, getattr(args, "precision", None) if args.command != "search" else None)
        if table is not None:
            tables[resolved[-1]] = str(table)
            if args.command == "search":
                reused.append(f"latency predictor of {Path(name).stem} {folder.shown(table)}")
    args.device = resolved[0] if single else resolved
    if args.command == "search":
        args._latency_predictors = tables  # noqa: SLF001 (read by edgenas.cli.search)
        args._run_folder = folder.root
    return reused
