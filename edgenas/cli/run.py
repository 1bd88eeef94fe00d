"""CLI commands `demo` (the whole pipeline on the embedded default) and `run CONFIG.toml`."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo", help="the whole pipeline on the embedded default (digits, tiny space, this machine as the device)",
        description="Train a tiny supernet on scikit-learn's digits, fit the accuracy predictor, calibrate this "
        "machine with ONNX Runtime and with TFLite, search each for two latency budgets, export and verify the "
        "winners, measure them, and write report.html. A re-run reuses every finished stage.")
    demo.add_argument("--out", default="edgenas-demo", metavar="DIR", help="output folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, metavar="N",
                      help="seed of the whole run: data split, training, sampling, search (default: %(default)s)")
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    demo.set_defaults(handler="edgenas.cli.run:run_demo")

    run = sub.add_parser(
        "run", help="the whole pipeline on your data and devices, from one config file",
        description="train → accuracy predictor → calibrate each device → search each budget → deploy: export "
        "the top candidates as they ship, measure them on the device, ship the winner → report.html. A failed "
        "export check of a shipped model, or a latency predictor's held-out check, exits 1. Every stage reuses what "
        "is on disk when its inputs are unchanged; an interrupted run resumes. See examples/*.toml and README.md "
        "for the config keys.")
    run.add_argument("config", metavar="CONFIG.toml", help="run config (see examples/)")
    run.add_argument("--out", metavar="DIR", help="output folder (overrides the config's `out`)")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.add_argument("--force", action="store_true", help="go on after training even when the supernet failed its "
                     "check (the network did not learn: its largest near chance or memorising, or its smallest near chance)")
    run.set_defaults(handler="edgenas.cli.run:run_config")


EXIT_CHECK_FAILED = 1  # a shipped model failed an export check (as `edgenas export` exits), training its check, or a
# latency predictor its held-out check


def _finish(result, as_json: bool) -> int:
    # deferred: edgenas.pipeline.report loads when the command runs, not for `edgenas --help`
    from edgenas.pipeline.report import accuracy_text

    failed = [b for b in result.budgets if b.get("problems")]
    latency_failed = [c for c in result.calibrations if not c["passed"]]
    code = EXIT_CHECK_FAILED if failed or latency_failed else 0
    if as_json:
        print(json.dumps({**result.to_dict(), "next": [c for _, c in next_commands(result)]}, indent=2))
    else:
        print(f"\nedgenas: results in {result.out}")
        for b in result.budgets:
            where = f"{b['device']} ({b['runtime']}, {b['precision']})"
            if b["arch"] is None:
                print(f"  {where}, budget {b['budget_ms']:g} ms: no model — {b['note']}")
                continue
            lat = f"{b['measured_latency_ms']:.3f} ms" if b["measured_latency_ms"] is not None else "not measured"
            acc = accuracy_text(b["accuracy"], b.get("accuracy_split") or "val", b.get("accuracy_images"),
                                b.get("holdout_accuracy"), b.get("holdout_images"))
            verdict = "meets" if b["meets_budget"] else "MISSES"
            checks = " EXPORT CHECKS FAILED: " + "; ".join(b["problems"]) if b.get("problems") else ""
            print(f"  {where}, budget {b['budget_ms']:g} ms: {lat} measured ({verdict} it), accuracy {acc}, "
                  f"files in {b['export_dir']}{checks}")
            if b.get("choice") and not b.get("problems"):
                print(f"    passed over: {b['choice']}")
        for c in result.calibrations:
            print(f"  {c['message']}")
        print(f"  report: {result.report}")
        print("  time per stage: " + ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items()))
        commands = next_commands(result)
        if commands:
            print("\nnext, on this folder:")
            for comment, command in commands:
                print(f"  {command}\n      {comment}")
    for b in failed:
        print(f"edgenas: error: the model shipped for {b['device']} at {b['budget_ms']:g} ms failed its export "
              f"checks: {'; '.join(b['problems'])} (files kept in {b['export_dir']})", file=sys.stderr)
    for c in latency_failed:
        print(f"edgenas: error: {c['message']}", file=sys.stderr)
    return code


def next_commands(result) -> list[tuple[str, str]]:
    """Three commands that continue a finished run's folder (each finds what it needs in the folder's manifest):
    a tighter search, a measurement of a shipped file, its accuracy on the holdout split. (what, command) pairs."""
    shipped = [b for b in result.budgets if b.get("export_dir") and b.get("arch") is not None]
    if not shipped:
        return []
    first = min(shipped, key=lambda b: b["budget_ms"])
    out = Path(os.path.relpath(result.out)) if not str(os.path.relpath(result.out)).startswith("..") else result.out
    export = Path(first["export_dir"])
    export = out / export.resolve().relative_to(Path(result.out).resolve()) if export.is_absolute() else export
    model = next((export / n for n in ("model.onnx", "model_fp32.tflite", "model_int8.tflite")
                  if (export / n).is_file()), None)
    tighter = float(f"{first['budget_ms'] * 0.8:.2g}")
    q = shlex.quote
    commands = [(f"search {first['device']} again under a tighter budget ({tighter:g} ms), with the folder's "
                 "supernet, predictors and store", f"edgenas search --supernet {q(str(out))} --device "
                 f"{q(first['device'])} --max-latency-ms {tighter:g}")]
    if model is not None:
        commands.append((f"measure the file shipped for {first['budget_ms']:g} ms on {first['device']} again",
                         f"edgenas measure --device {q(first['device'])} {q(str(model))}"))
    commands.append(("its top-1 on the holdout split (images the search never saw)",
                     f"edgenas eval --arch {q(str(export / 'card.json'))} --split holdout"))
    return commands


def run_demo(args: argparse.Namespace) -> int:
    # deferred: numpy, torch load when the command runs, not for `edgenas --help`
    from edgenas.inputs import output_dir
    from edgenas.pipeline.demo import demo_config
    from edgenas.pipeline.run_config import check_run_inputs
    from edgenas.pipeline.runner import run_pipeline

    output_dir(args.out, "--out")
    config = demo_config(args.out, seed=args.seed)
    check_run_inputs(config)
    return _gated(lambda: run_pipeline(config), args.json, config.out)


def run_config(args: argparse.Namespace) -> int:
    # deferred: numpy loads when the command runs, not for `edgenas --help`
    from edgenas.pipeline.run_config import check_run_inputs, load_run_config

    config = load_run_config(args.config, out=args.out)  # a bad key is refused before torch is imported
    check_run_inputs(config)
    # deferred: torch loads when the command runs, not for `edgenas --help`
    from edgenas.pipeline.runner import run_pipeline
  # every input and output of every stage, before the first one starts
    return _gated(lambda: run_pipeline(config, force=args.force), args.json, config.out)


def _gated(run, as_json: bool, out) -> int:
    """Run the pipeline; a supernet that failed the training check stops it: one message, exit 1, state kept."""
    # deferred: edgenas.train.gate loads when the command runs, not for `edgenas --help`
    from edgenas.train.gate import TrainingGateFailed

    try:
        result = run()
    except TrainingGateFailed as exc:
        if as_json:
            print(json.dumps({"out": str(out), "checkpoint": str(exc.checkpoint), "gate": exc.verdict.to_dict(),
                              "report": str(exc.report) if exc.report is not None else None}, indent=2))
        report = f"; the training curves and the verdict: {exc.report}" if exc.report is not None else ""
        print(f"edgenas: error: {exc.verdict.message} Stopped before anything ships; the trained supernet is kept in "
              f"{exc.checkpoint} (a re-run reuses it; --force goes on with it){report}.", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return _finish(result, as_json)
