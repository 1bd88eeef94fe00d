"""Benchmark: few-shot latency transfer to a new device, on a CSV of archs measured on many devices.

    python tools/bench/latency_transfer.py --csv FILE --target raspi4,eyeriss,fpga \
        --sources samsung_a50,pixel3,essential_ph_1,samsung_s7 --samples 10 [--draws 50] [--json]

The CSV has columns `idx, arch_str, <device>_ms...` (`arch_str`: one token per position joined by `|`);
archs are one-hot encoded as position × token, nothing else is known of the space. For each target and
each draw, `--samples` archs are measured on the target (chosen at random, or actively from the sources'
figures alone) and every predictor is scored on all the other archs of the file:

- transfer-random / transfer-active: edgenas.latency.transfer (sources' additive tables, prior scales by
  leave-one-source-out on the sources, noise from the target's own measurements), random / active samples;
- ridge: the floor, ridge regression of the target's log latency on the sources' measured log latencies;
- whole-model: the target's own samples alone (an additive one-hot fit).

Then the samples-needed curve: transfer-active's share within ±10 % at 5/10/20/50/100 samples, and the
fewest samples that reach 95 %. HELP's published Spearman (NeurIPS 2021, Table 2, 10 samples, meta-trained
on other devices) is printed beside where the target is one of its devices. With `--json`, one object per
line per predictor and target (keys predictor, target, samples, spearman, kendall, within_10, rmse_ms).

The same on our own devices (real sshd devices of tools/testbed.py, real ONNX Runtime and TFLite):

    python tools/bench/latency_transfer.py --testbed OUT [--space tiny] [--source-spec SPEC ...] \
        [--target-spec runtime=tflite,threads=2] --samples 10 [--holdout 100] [--source-budget 40]

calibrates each source device (its ONNX Runtime table and --source-budget whole subnets), then the target
by `calibrate_transfer` with --samples actively chosen measurements, and scores on --holdout random
held-out subnets measured on the target: transfer-active, transfer-random (another --samples random
subnets), the ridge floor on the sources' predictions, and the whole-model fit on the same samples.
Everything is kept in OUT (store, tables, models): a re-run measures nothing twice. Measure alone:
wrap it in `flock -x /tmp/edgenas-cpu.lock`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edgenas.errors import UsageError  # noqa: E402
from edgenas.latency.transfer import (  # noqa: E402
    SAMPLE_CURVE,
    OneHotEncoding,
    TransferModel,
    choose_samples,
    choose_scales,
    fit_additive,
    read_latency_csv,
    ridge_log_fit,
    ridge_log_predict,
    whole_model_fit,
)

# HELP (Lee et al., NeurIPS 2021), Table 2, FBNet space, 10 samples on the target: Spearman.
HELP_PUBLISHED = {"raspi4": 0.887, "eyeriss": 0.943, "fpga": 0.892}
PREDICTORS = ("transfer-random", "transfer-active", "ridge", "whole-model")


def scores(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    from scipy.stats import kendalltau, spearmanr

    rel = np.abs(predicted - measured) / measured
    return {"spearman": float(spearmanr(predicted, measured).statistic),
            "kendall": float(kendalltau(predicted, measured).statistic),
            "within_10": float((rel <= 0.10).mean()),
            "rmse_ms": float(np.sqrt(((predicted - measured) ** 2).mean()))}


def _rest(n: int, idx: np.ndarray) -> np.ndarray:
    mask = np.ones(n, bool)
    mask[idx] = False
    return mask


def run_target(data, X: np.ndarray, model: TransferModel, target: str, samples: int, draws: int,
               seed: int) -> dict[str, dict[str, float]]:
    """Mean scores over draws of every predictor for one target."""
    y = data.column(target)
    F = data.ms[:, [data.device_index(s.name) for s in model.sources]]
    got: dict[str, list[dict[str, float]]] = {p: [] for p in PREDICTORS}
    for d in range(draws):
        rng = np.random.default_rng([seed, d])
        rand = choose_samples(model, X, samples, rng, how="random")
        active = choose_samples(model, X, samples, rng, how="active")
        for name, idx in (("transfer-random", rand), ("transfer-active", active)):
            rest = _rest(len(y), idx)
            got[name].append(scores(model.fit(X[idx], y[idx]).predict(X[rest]), y[rest]))
        rest = _rest(len(y), rand)
        coef = ridge_log_fit(F[rand], y[rand])
        got["ridge"].append(scores(ridge_log_predict(coef, F[rest]), y[rest]))
        got["whole-model"].append(scores(np.maximum(whole_model_fit(X[rand], y[rand]).predict(X[rest]), 1e-9), y[rest]))
    return {p: {k: float(np.mean([g[k] for g in v])) for k in v[0]} for p, v in got.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", help="idx, arch_str, <device>_ms... file")
    p.add_argument("--target", help="device(s) to transfer to, comma-separated")
    p.add_argument("--sources", help="source devices, comma-separated")
    p.add_argument("--testbed", metavar="OUT", help="bench on testbed devices instead of a CSV (see above)")
    p.add_argument("--space", default="tiny", help="--testbed: search-space preset (default: %(default)s)")
    p.add_argument("--source-spec", action="append", help="--testbed: a source device's spec (repeat; default: "
                   "one ONNX Runtime device, 1 thread)")
    p.add_argument("--target-spec", default="runtime=tflite,threads=2,window=10",
                   help="--testbed: the target device's spec (default: %(default)s)")
    p.add_argument("--source-budget", type=int, default=40, help="--testbed: whole subnets per source calibration")
    p.add_argument("--holdout", type=int, default=100, help="--testbed: held-out subnets on the target")
    p.add_argument("--samples", type=int, default=10, help="measurements on the target (default: %(default)s)")
    p.add_argument("--draws", type=int, default=50, help="random draws to average over (default: %(default)s)")
    p.add_argument("--curve", default=",".join(map(str, SAMPLE_CURVE)),
                   help="sample counts of the samples-needed curve ('' to skip; default: %(default)s)")
    p.add_argument("--curve-draws", type=int, default=10, help="draws per curve point (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON object per line per predictor and target")
    args = p.parse_args(argv)
    try:
        if args.testbed:
            return _run_testbed(args)
        if not (args.csv and args.target and args.sources):
            raise UsageError("give --csv FILE --target D --sources A,B (or --testbed OUT)")
        return _run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError(f"--{what} is empty: give one device name or more, comma-separated")
    return items


def _run(args: argparse.Namespace) -> int:
    targets = _parse_list(args.target, "target")
    sources = _parse_list(args.sources, "sources")
    both = sorted(set(targets) & set(sources))
    if both:
        raise UsageError(f"device {both[0]} is both a target and a source: a target's data must stay unseen")
    try:
        curve = [int(c) for c in args.curve.split(",") if c.strip()]
    except ValueError:
        raise UsageError(f"--curve {args.curve!r} must be sample counts, comma-separated, e.g. 5,10,20") from None
    if args.samples < 2 or args.draws < 1 or any(c < 2 for c in curve):
        raise UsageError("--samples and every --curve count must be at least 2, --draws at least 1")
    t0 = time.time()
    data = read_latency_csv(args.csv, devices=targets + sources)
    if args.samples >= len(data.tokens) or any(c >= len(data.tokens) for c in curve):
        raise UsageError(f"{args.csv} has {len(data.tokens)} archs: measure fewer than that on the target")
    encoding = OneHotEncoding.from_tokens(data.tokens)
    X = encoding.encode(data.tokens)
    measured = data.ms[:, [data.device_index(s) for s in sources]]
    tables = [fit_additive(s, X, measured[:, i]) for i, s in enumerate(sources)]

    scale_cache: dict[int, dict[str, float]] = {}

    def model_for(n: int) -> TransferModel:
        if n not in scale_cache:  # from the sources alone: the same for every target
            scale_cache[n] = choose_scales(encoding, X, measured, sources, samples=n, seed=args.seed)
        return TransferModel(encoding, tables, X, scales=scale_cache[n])

    results = {}
    for target in targets:
        results[target] = run_target(data, X, model_for(args.samples), target, args.samples, args.draws, args.seed)
        for name, s in results[target].items():
            if args.json:
                print(json.dumps({"predictor": name, "target": target, "samples": args.samples, **s,
                                  "draws": args.draws, "sources": sources}), flush=True)
    curves = {}
    for target in targets if curve else []:
        y = data.column(target)
        row = {}
        for n in curve:
            model = model_for(n)
            shares = []
            for d in range(args.curve_draws):
                idx = choose_samples(model, X, n, np.random.default_rng([args.seed, d, n]), how="active")
                rest = _rest(len(y), idx)
                shares.append(scores(model.fit(X[idx], y[idx]).predict(X[rest]), y[rest])["within_10"])
            row[n] = float(np.mean(shares))
        curves[target] = row
        if args.json:
            needed = next((n for n in curve if row[n] >= 0.95), None)
            print(json.dumps({"predictor": "transfer-active", "target": target, "curve_within_10": row,
                              "samples_for_95": needed, "draws": args.curve_draws}), flush=True)
    if not args.json:
        _print_tables(args, data, targets, sources, results, curves, time.time() - t0)
        print("prior scales chosen on the sources (leave-one-source-out): "
              + "; ".join(f"{n} samples: " + ", ".join(f"{k} {v:g}" for k, v in s.items())
                          for n, s in sorted(scale_cache.items())))
    return 0


def _print_tables(args, data, targets, sources, results, curves, seconds) -> None:
    print(f"{Path(args.csv).name}: {len(data.tokens)} archs, {len(data.tokens[0])} positions; sources "
          f"{', '.join(sources)}; {args.samples} measurements on the target, mean of {args.draws} draws, scored on "
          f"every arch not measured ({seconds:.0f} s, load average {os.getloadavg()[0]:.1f})")
    print(f"{'target':<14} {'predictor':<16} {'Spearman':>8} {'Kendall':>8} {'±10%':>6} {'RMSE ms':>8} "
          f"{'HELP Sp.':>8}")
    for t in targets:
        help_sp = HELP_PUBLISHED.get(t)
        for name in PREDICTORS:
            s = results[t][name]
            ref = f"{help_sp:8.3f}" if help_sp is not None and name == PREDICTORS[0] else f"{'':>8}"
            print(f"{t:<14} {name:<16} {s['spearman']:8.3f} {s['kendall']:8.3f} {s['within_10']:6.1%} "
                  f"{s['rmse_ms']:8.3f} {ref}")
    for name in PREDICTORS:
        print(f"{'mean':<14} {name:<16} {np.mean([results[t][name]['spearman'] for t in targets]):8.3f} "
              f"{np.mean([results[t][name]['kendall'] for t in targets]):8.3f} "
              f"{np.mean([results[t][name]['within_10'] for t in targets]):6.1%}")
    if curves:
        ns = list(next(iter(curves.values())))
        print(f"\ntransfer-active, share within ±10 % by samples on the target ({args.curve_draws} draws each):")
        print(f"{'target':<14} " + " ".join(f"{n:>6}" for n in ns) + "   samples for 95 %")
        for t, row in curves.items():
            needed = next((n for n in ns if row[n] >= 0.95), None)
            print(f"{t:<14} " + " ".join(f"{row[n]:6.1%}" for n in ns) + f"   {needed if needed else f'> {ns[-1]}'}")
    known = [t for t in targets if t in HELP_PUBLISHED]
    if known:
        print("HELP published (NeurIPS 2021, Table 2, 10 samples): "
              + ", ".join(f"{t} {HELP_PUBLISHED[t]:.3f}" for t in known))


def _testbed_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("edgenas_tools_testbed", ROOT / "tools" / "testbed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run_testbed(args: argparse.Namespace) -> int:
    import shutil

    from edgenas.devices import load_device
    from edgenas.latency.calibrate import Calibrator, calibrate, calibrate_transfer
    from edgenas.latency.predictor_eval import evaluate, holdout_archs
    from edgenas.latency.predictors import TransferPredictor
    from edgenas.latency.transfer import choose_samples, space_transfer
    from edgenas.space import SearchSpace
    from edgenas.store import Store

    tb = _testbed_module()
    out = Path(args.testbed)
    out.mkdir(parents=True, exist_ok=True)
    source_specs = [tb.DeviceSpec.parse(s) for s in (args.source_spec or ["runtime=onnxruntime,threads=1,window=10"])]
    target_spec = tb.DeviceSpec.parse(args.target_spec)
    space = SearchSpace.preset(args.space)
    t0 = time.time()
    if (out / "testbed" / tb.STATE_FILE).exists():  # left by a run that was killed
        tb.Testbed.load(out / "testbed").down()
    shutil.rmtree(out / "testbed", ignore_errors=True)  # names stay tb1, tb2, ...: the store still applies
    rows: list[dict] = []
    with Store(out / "store.sqlite") as store, \
            tb.Testbed.up(out / "testbed", source_specs + [target_spec], die_with_parent=True) as bed:
        common = dict(store=store, tables_dir=out / "tables", cache_dir=out / "models", seed=args.seed)
        files = bed.device_files()
        sources = []
        for path in files[:-1]:
            with load_device(path) as device:
                sources.append(calibrate(device, space, budget=args.source_budget, **common))
            print(f"source {sources[-1].device} ({source_specs[len(sources) - 1]}) calibrated, "
                  f"{time.time() - t0:.0f} s", flush=True)
        with load_device(files[-1]) as device:
            pred = calibrate_transfer(device, space, sources=sources, samples=args.samples, **common)
            ev = evaluate(device, space, holdout=args.holdout, predictor=pred, **common)
            held, measured = _held_out(device, space, pred, ev, common, args, Calibrator, holdout_archs)
            # The same number of random subnets instead of the active choice, and the ridge floor on them.
            model = space_transfer(space, sources, samples=args.samples, seed=args.seed)
            rand = choose_samples(model.model, model.X, args.samples, np.random.default_rng([args.seed, 1]),
                                  how="random")
            cal = Calibrator(device, space, runtime=device.runtime, precision="fp32", store=store,
                             cache_dir=out / "models", progress=True)
            r_archs, r_ms, _ = cal.measure_archs([model.pool[i] for i in rand], "measure random subnets")
        random_pred = TransferPredictor(sources=sources, device=device.name, runtime=device.runtime,
                                        precision="fp32", space=space).fit(r_archs, r_ms, transfer=model)
        F = np.stack([s.predict(r_archs) for s in sources], axis=1)
        coef = ridge_log_fit(F, r_ms)
        F_held = np.stack([s.predict(held) for s in sources], axis=1)
        named = {"transfer-active": ev.score("transfer"), "whole-model": ev.score("whole_model")}
        for name, s in named.items():
            rows.append({"predictor": name, "spearman": s.spearman, "kendall": s.kendall, "within_10": s.within_10,
                         "rmse_ms": s.rmse_ms})
        rows.insert(1, {"predictor": "transfer-random", **scores(random_pred.predict(held), measured)})
        rows.insert(2, {"predictor": "ridge", **scores(ridge_log_predict(coef, F_held), measured)})
    target = f"{pred.device} ({target_spec})"
    if args.json:
        for r in rows:
            print(json.dumps({**r, "target": target, "samples": args.samples, "holdout": len(held),
                              "sources": [f"{s.device} ({sp})" for s, sp in zip(sources, source_specs)],
                              "statistic": ev.statistic}))
        return 0
    print(f"\n{args.space} space: sources {', '.join(f'{s.device} ({sp})' for s, sp in zip(sources, source_specs))} "
          f"(table + {args.source_budget} subnets each) -> target {target}; {args.samples} measurements on the "
          f"target, scored on {len(held)} held-out subnets (latency = {ev.statistic}); {time.time() - t0:.0f} s, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'predictor':<16} {'Spearman':>8} {'Kendall':>8} {'±10%':>6} {'RMSE ms':>8}")
    for r in rows:
        print(f"{r['predictor']:<16} {r['spearman']:8.3f} {r['kendall']:8.3f} {r['within_10']:6.1%} {r['rmse_ms']:8.4f}")
    return 0


def _held_out(device, space, pred, ev, common, args, Calibrator, holdout_archs):
    """The held-out subnets `evaluate` measured and their figures (from the store: nothing is measured again)."""
    cal = Calibrator(device, space, runtime=pred.runtime, precision=pred.precision, store=common["store"],
                     cache_dir=common["cache_dir"], progress=False, statistic=ev.statistic)
    archs, measured, _ = cal.measure_archs(holdout_archs(space, args.holdout, pred.training_set[0], args.seed),
                                           "held-out subnets (stored)")
    return archs, measured


if __name__ == "__main__":
    sys.exit(main())
