"""CLI commands `calibrate` and `latency eval`: calibrate a device's latency predictor and judge it on held-out subnets."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edgenas.errors import UsageError
from edgenas.settings import add_flag
from edgenas.space import SearchSpace

TRUST_HELP = "record the device's SSH host key in its known_hosts file if it has none yet"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", required=True, metavar="NAME", help="device name (devices/NAME.toml) or .toml path")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--supernet", metavar="CKPT", help="supernet checkpoint: its search space is calibrated")
    src.add_argument("--space", metavar="PRESET",
                     help="a search-space preset (tiny, mobilenetv3) or a JSON file of one, instead of a checkpoint")
    p.add_argument("--runtime", choices=("onnxruntime", "tflite"), help="default: the device's runtime")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32", help="default: %(default)s")
    p.add_argument("--store", metavar="PATH", help="measurement store (default: $EDGENAS_STORE, else "
                   "latency_tables/store.sqlite)")
    p.add_argument("--tables", metavar="DIR", help="tables folder (default: $EDGENAS_LATENCY_TABLES, else latency_tables)")
    p.add_argument("--models", metavar="DIR", help="exported-model cache, shared between devices (default: "
                   "<tables>/.models)")
    p.add_argument("--keep-models", action="store_true",
                   help="keep every exported model file (default: the cache keeps at most 500 MB, least recently "
                        "used removed first; the store keeps every figure, so a re-run needs none of them)")
    add_flag(p, "seed", help="seed of subnet sampling")
    p.add_argument("--transfer-from", metavar="NAMES", default="",
                   help="comma-separated calibrated devices to transfer from")
    p.add_argument("--trust-new-host-key", action="store_true", help=TRUST_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def register(sub: argparse._SubParsersAction) -> None:
    cal = sub.add_parser("calibrate", help="measure a device's latency table and fit its latency predictor")
    _common(cal)
    add_flag(cal, "calibration_budget", "--budget")
    cal.add_argument("--statistic", choices=("latency", "median", "min"), default="latency",
                     help="a model's latency: the device's figure timed interleaved (default), or the median or "
                          "minimum of the same runs, for comparison")
    cal.add_argument("--no-table", action="store_true", help="fit from whole-subnet measurements alone (no table)")
    add_flag(cal, "calibration_rounds", "--rounds", metavar="N")
    cal.set_defaults(handler="edgenas.cli.latency:run_calibrate")

    lat = sub.add_parser("latency", help="judge latency predictors on held-out subnets")
    lsub = lat.add_subparsers(dest="latency_command", metavar="SUBCOMMAND", parser_class=type(lat))
    ev = lsub.add_parser("eval", help="measure N unseen subnets and score every predictor")
    _common(ev)
    add_flag(ev, "holdout")
    add_flag(ev, "transfer_samples")
    ev.add_argument("--repeat", action="store_true",
                    help="time the held-out subnets a second time and score that as 'repeat': how well the device "
                         "agrees with itself, the ceiling for any predictor")
    ev.set_defaults(handler="edgenas.cli.latency:run_eval")


def _setup(args: argparse.Namespace) -> tuple[Any, Any, Any, list[str]]:
    # deferred: the command's modules load when the command runs, not for `edgenas --help`
    from edgenas.devices import load_device
    from edgenas.store import Store, default_store_path

    if args.supernet:  # latency depends on the architecture only: the checkpoint's space, not its weights
        # deferred: torch loads when the command runs, not for `edgenas --help`
        from edgenas.train.checkpoint import load_checkpoint_info

        space = SearchSpace.from_dict(load_checkpoint_info(args.supernet)["space"])
    elif args.space.endswith(".json"):
        # deferred: edgenas.inputs loads when the command runs, not for `edgenas --help`
        from edgenas.inputs import read_space_file

        space = read_space_file(args.space)
    else:
        try:
            space = SearchSpace.preset(args.space)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    sources = [s.strip() for s in args.transfer_from.split(",") if s.strip()]
    if sources:  # every source predictor is checked before the device is touched
        # deferred: edgenas.latency.calibrate loads when the command runs, not for `edgenas --help`
        from edgenas.latency.calibrate import load_latency_predictor

        for source in sources:  # a source known at fewer resolutions (an imported phone table) narrows the space
            space = space.common_resolutions(load_latency_predictor(source, space=space, tables_dir=args.tables).space)
    device = load_device(args.device, trust_new_host_key=args.trust_new_host_key)
    store = Store(args.store or default_store_path())
    return device, space, store, sources


def _cache_mb(args: argparse.Namespace) -> float | None:
    # deferred: edgenas.latency.calibrate loads when the command runs, not for `edgenas --help`
    from edgenas.latency.calibrate import MODEL_CACHE_MB

    return None if args.keep_models else MODEL_CACHE_MB


def run_calibrate(args: argparse.Namespace) -> int:
    # deferred: edgenas.latency.calibrate loads when the command runs, not for `edgenas --help`
    from edgenas.latency.calibrate import calibrate, calibrate_transfer, load_latency_predictor

    device, space, store, sources = _setup(args)
    if not sources and not args.no_table:  # a table already there is read now: a bad one stops before measuring
        # deferred: edgenas.latency.table loads when the command runs, not for `edgenas --help`
        from edgenas.latency.table import LatencyTable, table_path

        tpath = table_path(device.name, args.runtime or device.runtime, args.precision, args.tables)
        if tpath.exists() or tpath.is_symlink():
            LatencyTable.load(tpath, device=device.name, runtime=args.runtime or device.runtime,
                              precision=args.precision)
    with device, store:
        if sources:
            preds = [load_latency_predictor(s, space=space, tables_dir=args.tables) for s in sources]
            predictor = calibrate_transfer(device, space, sources=preds, samples=args.budget, runtime=args.runtime,
                                           precision=args.precision, store=store, seed=args.seed,
                                           tables_dir=args.tables, cache_dir=args.models, statistic=args.statistic,
                                           progress=not args.quiet, cache_mb=_cache_mb(args))
        else:
            predictor = calibrate(device, space, budget=args.budget, runtime=args.runtime, precision=args.precision,
                                  store=store, use_table=not args.no_table, seed=args.seed, tables_dir=args.tables,
                                  rounds=args.rounds,
                                  cache_dir=args.models, statistic=args.statistic, progress=not args.quiet,
                                  cache_mb=_cache_mb(args))
    report = predictor.report.to_dict()  # type: ignore[attr-defined]
    result = {"device": predictor.device, "runtime": predictor.runtime, "precision": predictor.precision,
              "space": space.name, "type": predictor.kind,
              "train_rel_rmse": predictor.fit_info.get("train_rel_rmse"), **report}
    if sources:  # what the transfer stands on: its sources and the subnets it measured on this device
        result["sources"] = predictor.fit_info.get("sources")
        result["target_measurements"] = predictor.fit_info.get("target_measurements")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"calibrated {predictor.kind} latency predictor for {predictor.device} "
              f"({predictor.runtime}/{predictor.precision}, space {space.name}): {report['measured_now']} models "
              f"measured now, {report['reused']} reused from the store, {report['device_seconds']:.1f} s of "
              f"device time\n  predictor: {report['predictor_path']}"
              + (f"\n  table: {report['table_path']}" if report.get("table_path") else "")
              + (f"\n  transferred from {', '.join(result['sources'])} with {result['target_measurements']} "
                 f"measurements on {predictor.device}" if sources else "")
              + f"\n  {predictor.report.cache_line()}")  # type: ignore[attr-defined]
    return 0


def run_eval(args: argparse.Namespace) -> int:
    # deferred: edgenas.latency.predictor_eval loads when the command runs, not for `edgenas --help`
    from edgenas.latency.predictor_eval import evaluate

    device, space, store, sources = _setup(args)
    with device, store:
        result = evaluate(device, space, holdout=args.holdout, runtime=args.runtime, precision=args.precision,
                          store=store, transfer_from=sources, transfer_samples=args.transfer_samples,
                          seed=args.seed, tables_dir=args.tables, cache_dir=args.models, progress=not args.quiet,
                          repeat=args.repeat, cache_mb=_cache_mb(args))
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format())
    return 0
