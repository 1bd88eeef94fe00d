"""CLI commands `demo` (the whole pipeline on the embedded default) and `run CONFIG.toml`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo", help="the whole pipeline on the embedded default (digits, tiny space, this machine as the device)",
        description="Train a tiny supernet on scikit-learn's digits, fit the accuracy predictor, calibrate this "
        "machine with ONNX Runtime and with TFLite, search each for two latency budgets, export and verify the "
        "winners, measure them, and write report.html. A re-run reuses every finished stage.")
    demo.add_argument("--out", default="edgenas-demo", metavar="DIR", help="output folder (default: %(default)s)")
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    demo.set_defaults(handler="edgenas.pipeline.commands:run_demo")

    run = sub.add_parser(
        "run", help="the whole pipeline on your data and devices, from one config file",
        description="train → accuracy predictor → calibrate each device → search each budget → export each "
        "winner → measure it on its device → report.html. Every stage reuses what is on disk when its inputs "
        "are unchanged; an interrupted run resumes. See examples/*.toml and README.md for the config keys.")
    run.add_argument("config", metavar="CONFIG.toml", help="run config (see examples/)")
    run.add_argument("--out", metavar="DIR", help="output folder (overrides the config's `out`)")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.set_defaults(handler="edgenas.pipeline.commands:run_config")


def _finish(result, as_json: bool) -> int:
    import json

    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"\nedgenas: results in {result.out}")
    for b in result.budgets:
        where = f"{b['device']} ({b['runtime']}, {b['precision']})"
        if b["arch"] is None:
            print(f"  {where}, budget {b['budget_ms']:g} ms: no model — {b['note']}")
            continue
        lat = f"{b['measured_latency_ms']:.3f} ms" if b["measured_latency_ms"] is not None else "not measured"
        acc = f"{100 * b['accuracy']:.1f} %" if b["accuracy"] is not None else "?"
        verdict = "meets" if b["meets_budget"] else "MISSES"
        print(f"  {where}, budget {b['budget_ms']:g} ms: {lat} measured ({verdict} it), accuracy {acc}, "
              f"files in {b['export_dir']}")
    print(f"  report: {result.report}")
    print("  time per stage: " + ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items()))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from edgenas.pipeline.config import check_run_inputs
    from edgenas.pipeline.demo import demo_config
    from edgenas.pipeline.run import run_pipeline
    from edgenas.readers import output_dir

    output_dir(args.out, "--out")
    config = demo_config(args.out)
    check_run_inputs(config)
    return _finish(run_pipeline(config), args.json)


def run_config(args: argparse.Namespace) -> int:
    from edgenas.pipeline.config import check_run_inputs, load_run_config
    from edgenas.pipeline.run import run_pipeline

    config = load_run_config(args.config, out=args.out)
    check_run_inputs(config)  # every input and output of every stage, before the first one starts
    return _finish(run_pipeline(config), args.json)
