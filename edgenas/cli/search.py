"""CLI command `search`: the most accurate subnet for each device under latency, memory and MACs limits."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgenas.errors import UsageError
from edgenas.settings import add_flag

EXIT_CHECK_FAILED = 1  # the winner's export failed a check (verification, TFLite Micro, memory)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="find the most accurate subnet for a device under latency/SRAM/flash/MACs limits")
    p.add_argument("--supernet", required=True, metavar="CKPT", help="supernet checkpoint (its folder holds "
                   "accuracy_predictor.npz from 'edgenas predictor fit'), or a run folder (demo, run, train): its "
                   "predictors, device files and store are used for the options left out")
    p.add_argument("--device", required=True, action="append", metavar="NAME",
                   help="device name or TOML file (repeat for several devices: one result each)")
    p.add_argument("--max-latency-ms", type=float, metavar="T", help="latency limit on the device (ms)")
    p.add_argument("--max-sram-kb", type=float, metavar="S", help="SRAM limit (KB): int8, the TFLite Micro arena "
                   "predicted for the exported model; fp32, the peak of live activations")
    p.add_argument("--max-flash-kb", type=float, metavar="F", help="flash limit (KB): int8, the predicted .tflite "
                   "file size; fp32, the weights")
    p.add_argument("--max-macs", type=float, metavar="M", help="compute limit in millions of MACs")
    p.add_argument("--algorithm", default=None, metavar="NAME", help="search algorithm: evolution (default), nsga2, "
                   "random or rl (see edgenas.search.registry)")
    p.add_argument("--pareto", action="store_true", help="NSGA-II: the whole accuracy/latency Pareto front "
                   "(the same as --algorithm nsga2)")
    add_flag(p, "top_k", metavar="K")
    add_flag(p, "seed", help="search seed")
    add_flag(p, "population")
    add_flag(p, "generations")
    p.add_argument("--predictor", default=None, help="accuracy predictor file (default: beside CKPT)")
    p.add_argument("--latency-predictor", default=None, help="latency predictor file (default: the device's)")
    p.add_argument("--precision", choices=("int8", "fp32"), default="int8",
                   help="deployed precision for memory figures when the latency predictor does not say (default: int8)")
    add_flag(p, "bn_batches")
    p.add_argument("--patches", metavar="N|auto", help="microcontrollers: judge archs that miss --max-sram-kb on "
                   "their patch-based schedule (int8 I/O); the deploy stage checks and ships each candidate with that schedule, "
                   "its TFLite Micro arena measured, into <out>/shipped")
    p.add_argument("--board", metavar="NAME", help="microcontroller board preset or TOML: its SRAM and flash (less "
                   "the firmware's) as --max-sram-kb / --max-flash-kb")
    p.add_argument("--no-verify", action="store_true", help="skip the deploy stage (exporting, measuring and "
                   "evaluating the top candidates)")
    p.add_argument("--out", default=None, help="output folder (default: <CKPT folder>/search/<device>)")
    p.add_argument("--store", default=None, help="SQLite store (default: $EDGENAS_STORE, else latency_tables/store.sqlite)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler="edgenas.cli.search:run_search_command")


def run_search_command(args: argparse.Namespace) -> int:
    # deferred: torch, the command's modules load when the command runs, not for `edgenas --help`
    from edgenas.deploy.budget import search_device
    from edgenas.deploy.search_report import format_table, result_dict
    from edgenas.search.problem import Constraints
    from edgenas.search.registry import check_algorithm

    if args.pareto and args.algorithm not in (None, "nsga2"):
        raise UsageError(f"--pareto is NSGA-II, but --algorithm {args.algorithm} was given: give one of them")
    algorithm = "nsga2" if args.pareto else args.algorithm or "evolution"
    pareto = check_algorithm(algorithm).pareto
    # deferred: the command's modules load when the command runs, not for `edgenas --help`
    from edgenas.board import load_board
    from edgenas.export.mcu import parse_patches

    try:
        patches = parse_patches(args.patches)
        board = load_board(args.board) if args.board else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if board is not None:
        args.max_sram_kb = args.max_sram_kb or board.arena_limit_kb
        args.max_flash_kb = args.max_flash_kb or board.model_limit_kb
    if patches is not None and args.max_sram_kb is None:
        raise UsageError("--patches needs an SRAM limit: give --max-sram-kb or --board")
    if not (args.max_latency_ms or args.max_sram_kb or args.max_flash_kb or args.max_macs or pareto):
        raise UsageError("give at least one limit (--max-latency-ms, --max-sram-kb, --max-flash-kb, --max-macs) "
                         "or --pareto")
    constraints = Constraints.from_user_units(max_latency_ms=args.max_latency_ms, max_sram_kb=args.max_sram_kb,
                                              max_flash_kb=args.max_flash_kb, max_macs_m=args.max_macs,
                                              precision=args.precision)
    if len(set(args.device)) != len(args.device):
        raise UsageError(f"--device values {args.device} repeat a device: give each once")
    _check_inputs(args)
    outputs = []
    tables = getattr(args, "_latency_predictors", {})  # a run folder's calibrations (edgenas.cli.folder)
    for name in args.device:
        out = None
        if args.out:
            out = Path(args.out) / Path(name).stem if len(args.device) > 1 else Path(args.out)
        elif getattr(args, "_run_folder", None) is not None:
            out = Path(args._run_folder) / "search" / Path(name).stem
        done = search_device(args.supernet, name, constraints, algorithm=algorithm, top_k=args.top_k,
                             seed=args.seed, population=args.population, generations=args.generations,
                             accuracy_predictor=args.predictor, latency_predictor=args.latency_predictor or tables.get(name),
                             out_dir=out,
                             store=args.store, deploy_top=not args.no_verify, bn_batches=args.bn_batches,
                             progress=not args.json, patches=patches, int8_io=board is not None or patches is not None,
                             **_mcu_shipping(args, board, patches, out, name))
        outputs.append(done)
        if not args.json:
            print(format_table(done.result, done.verification))
            print(f"result: {done.result_path}\nplot:   {done.plot_path}\n")
    failed = [d for d in outputs if d.deployment is not None and d.deployment.problems]
    for d in failed:
        print(f"edgenas: error: the winner on {d.deployment.device} failed its export checks: "
              + "; ".join(d.deployment.problems), file=sys.stderr)
    if args.json:
        payload = [{**result_dict(d.result, d.verification), "result_path": str(d.result_path),
                    "plot_path": str(d.plot_path)} for d in outputs]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
    return EXIT_CHECK_FAILED if failed else 0


def _mcu_shipping(args: argparse.Namespace, board: object, patches: object, out: Path | None, name: str) -> dict:
    """For a board or --patches: the winner ships (its board files with it) into <out>/shipped."""
    if (board is None and patches is None) or args.no_verify:
        return {}
    folder = out or Path(args.supernet).parent / "search" / name  # search_device's default folder
    return {"board": args.board, "ship_dir": folder / "shipped"}


def _check_inputs(args: argparse.Namespace) -> None:
    """Every file the searches read, for every device, before the first search starts: the output folder, the
    supernet, each device file, the accuracy predictor and each latency
    predictor (made for that device and the predictor's space)."""
    # deferred: the command's modules load when the command runs, not for `edgenas --help`
    from edgenas.accuracy.predictor import load_accuracy_predictor
    from edgenas.devices.device_files import load_config as load_device_config
    from edgenas.inputs import output_dir
    from edgenas.latency import load_latency_predictor

    if args.out:
        output_dir(args.out, "--out")
    # deferred: torch loads when the command runs, not for `edgenas --help`
    from edgenas.train.checkpoint import read_checkpoint

    read_checkpoint(args.supernet)  # recorded in the result even when candidates are not verified
    accuracy = load_accuracy_predictor(args.predictor or Path(args.supernet).parent)
    if args.latency_predictor is not None and len(args.device) > 1:
        raise UsageError(f"--latency-predictor is one device's file, but {len(args.device)} --device values were "
                         "given: search one device at a time with it, or leave it out to use each device's own")
    tables = getattr(args, "_latency_predictors", {})
    for name in args.device:
        device = load_device_config(name)
        given = args.latency_predictor or tables.get(name)
        load_latency_predictor(given or name, space=accuracy.space, device=device.name if given else None)
