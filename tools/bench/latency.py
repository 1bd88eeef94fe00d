"""Benchmark: calibrated latency predictors on testbed devices, scored on held-out random subnets.

Starts a testbed of real sshd "devices" on this machine (tools/testbed.py) that differ in runtime,
threads and CPU quota; calibrates each ONNX Runtime device (table + at most --budget whole-subnet
measurements) and scores every predictor on --holdout random subnets not used in fitting; then
calibrates one more device, not used to build the others' tables (by default TFLite, 2 threads),
by transfer from the calibrated ones with --transfer-samples measurements, and scores it too.
Everything is kept in --out (store, tables, exported models): run it again to resume.

    python tools/bench/latency.py --out /tmp/latency-bench [--space tiny] [--budget 100] [--holdout 100]

Every device times its models interleaved over a window (edgenas.devices.agent); the load average is printed
with the figures, and so is "repeat ±10%": the share of held-out subnets whose second timing (a fresh agent
run on the same files) lands within ±10 % of their first. No predictor can agree with the device more often
than the device agrees with itself. --local adds this machine (devices/local.toml) to the calibrated devices.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edgenas.devices import load_device  # noqa: E402
from edgenas.latency.calibrate import calibrate, calibrate_transfer  # noqa: E402
from edgenas.latency.predictor_eval import evaluate  # noqa: E402
from edgenas.space import SearchSpace  # noqa: E402
from edgenas.store import Store  # noqa: E402

HELP_SPEARMAN = 0.89  # HELP (Lee et al., 2021): Raspberry Pi 4, 10 samples
NN_METER_WITHIN_10 = 0.990  # nn-Meter (Zhang et al., 2021): mobile CPU, ±10 %


def _testbed():
    spec = importlib.util.spec_from_file_location("edgenas_tools_testbed", ROOT / "tools" / "testbed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _transfer_sources(choice: str, calibrated: list, runtime: str) -> list:
    if choice == "all":
        chosen = list(calibrated)
    elif choice == "other-runtime":
        chosen = [p for p in calibrated if p.runtime != runtime]
    else:
        names = [n.strip() for n in choice.split(",") if n.strip()]
        chosen = [p for p in calibrated if p.device in names]
    if not chosen:
        raise SystemExit(f"--transfer-sources {choice!r} leaves no calibrated device to transfer from "
                         f"(calibrated: {', '.join(f'{p.device} ({p.runtime})' for p in calibrated)})")
    return chosen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/edgenas-latency-bench")
    p.add_argument("--space", default="tiny")
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--holdout", type=int, default=100)
    p.add_argument("--devices", nargs="+", default=["quota=100,runs=60,warmup=5,window=10",
                                                    "quota=50,runs=60,warmup=5,window=10",
                                                    "threads=2,runs=60,warmup=5,window=10"],
                   help="testbed specs of the devices calibrated with a table")
    p.add_argument("--local", action="store_true", help="calibrate this machine (devices/local.toml) first")
    p.add_argument("--transfer-device", default="runtime=tflite,threads=1,runs=60,warmup=5,window=10",
                   help="spec of the device calibrated by transfer ('' to skip)")
    p.add_argument("--transfer-samples", type=int, default=10)
    p.add_argument("--transfer-sources", default="other-runtime",
                   help="devices the transfer starts from: 'other-runtime' (default: the calibrated devices whose "
                        "runtime differs from the new device's, e.g. ONNX Runtime tables for a TFLite device), "
                        "'all', or device names separated by commas")
    p.add_argument("--transfer-holdout", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--statistic", choices=("latency", "median", "min"), default="latency",
                   help="a model's latency: the interleaved figure (default), or the median or minimum of its runs")
    p.add_argument("--models", help="exported-model cache (default: OUT/models; share it between runs)")
    args = p.parse_args()

    tb = _testbed()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = [tb.DeviceSpec.parse(s) for s in args.devices]
    if args.transfer_device:
        specs.append(tb.DeviceSpec.parse(args.transfer_device))
    space = SearchSpace.preset(args.space)
    store = Store(out / "store.sqlite")
    common = dict(store=store, tables_dir=out / "tables", cache_dir=Path(args.models or out / "models"),
                  seed=args.seed)
    results = []
    t_start = time.time()
    if (out / "testbed" / tb.STATE_FILE).exists():  # left by a run that was killed: start afresh
        tb.Testbed.load(out / "testbed").down()
    shutil.rmtree(out / "testbed", ignore_errors=True)  # device names stay tb1, tb2, ...: the store still applies
    with tb.Testbed.up(out / "testbed", specs, die_with_parent=True) as bed:
        files = bed.device_files()
        calibrated = []
        table_devices = list(zip(files[: len(args.devices)], specs))
        if args.local:
            table_devices.insert(0, (ROOT / "devices" / "local.toml", tb.DeviceSpec()))
        for path, spec in table_devices:
            device = load_device(path)
            with device:
                t0 = time.time()
                pred = calibrate(device, space, budget=args.budget, statistic=args.statistic, **common)
                cal_s = time.time() - t0
                ev = evaluate(device, space, holdout=args.holdout, predictor=pred, repeat=True, **common)
            calibrated.append(pred)
            results.append((spec, ev, cal_s, os.getloadavg()))
            print(f"\n[{device.name}: {spec}] calibration {cal_s:.0f} s wall, load average "
                  f"{os.getloadavg()[0]:.1f}\n{ev.format()}", flush=True)
        if args.transfer_device:
            path, spec = files[-1], specs[-1]
            device = load_device(path)
            sources = _transfer_sources(args.transfer_sources, calibrated, spec.runtime)
            with device:
                t0 = time.time()
                pred = calibrate_transfer(device, space, sources=sources, samples=args.transfer_samples,
                                          statistic=args.statistic, **common)
                cal_s = time.time() - t0
                ev = evaluate(device, space, holdout=args.transfer_holdout, predictor=pred, repeat=True, **common)
            results.append((spec, ev, cal_s, os.getloadavg()))
            print(f"\n[{device.name}: {spec}] transfer from {', '.join(p.device for p in sources)} with "
                  f"{args.transfer_samples} measurements, {cal_s:.0f} s wall\n{ev.format()}", flush=True)

    print(f"\nSummary ({args.space} space, budget {args.budget}, latency = {args.statistic} (timed interleaved), "
          f"{time.time() - t_start:.0f} s in all):")
    header = (f"{'device':<8} {'runtime':<11} {'thr':>3} {'quota':>5} {'predictor':<11} {'n':>4} {'±10%':>6} "
              f"{'±5%':>6} {'Spearman':>8} {'Kendall':>7} {'MACs ±10%':>9} {'MACs Sp.':>8} {'repeat ±10%':>11} "
              f"{'device s':>8} {'load':>5}")
    print(header)
    summary = []
    for spec, ev, _cal_s, load in results:
        names = [s.name for s in ev.scores]
        best = ev.score("calibrated" if "calibrated" in names else "transfer")
        macs = ev.score("macs")
        repeat = ev.score("repeat")
        print(f"{ev.device:<8} {ev.runtime:<11} {spec.threads:>3} {str(spec.quota or '-'):>5} {best.name:<11} "
              f"{ev.holdout:>4} {best.within_10:6.1%} {best.within_5:6.1%} {best.spearman:8.3f} {best.kendall:7.3f} "
              f"{macs.within_10:9.1%} {macs.spearman:8.3f} {repeat.within_10:11.1%} {best.device_seconds:8.1f} {load[0]:5.1f}")
        summary.append({"spec": str(spec), **ev.to_dict()})
    print(f"References: nn-Meter {NN_METER_WITHIN_10:.1%} within ±10 % (mobile CPU, tens of thousands of kernel "
          f"measurements); HELP Spearman {HELP_SPEARMAN} (Raspberry Pi 4, 10 samples).")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
