"""Benchmark: does a device agree with itself? Times the same random subnets in several passes seconds apart.

Exports --archs random subnets of a space (ONNX for an ONNX Runtime device, fp32 TFLite for a TFLite one),
measures them with `edgenas measure --device D` in --passes passes --pause seconds apart (each pass a fresh
agent run, as a user would run the command again), and prints, per later pass, the share of subnets whose
figure lands within ±5 % and ±10 % of the first pass, with the load average and what the timing windows saw.

    python tools/bench/repeat.py --device local [--archs 40] [--passes 4] [--pause 3] [--space tiny] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def export_subnets(space_name: str, count: int, fmt: str, cache: Path, seed: int) -> list[str]:
    import numpy as np

    from edgenas.latency.models import ModelCache, arch_description
    from edgenas.space import SearchSpace

    space = SearchSpace.preset(space_name)
    archs = space.sample_many(np.random.default_rng(seed), count)
    got = ModelCache(cache).get_many([arch_description(space, a) for a in archs], fmt)
    return [str(path) for path, _ in got]


def measure_pass(device: str, models: list[str]) -> tuple[list[dict], float]:
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "edgenas.cli", "measure", "--device", device, "--json", *models],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"edgenas measure failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return rows, time.time() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="local")
    p.add_argument("--archs", type=int, default=40)
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--pause", type=float, default=3.0)
    p.add_argument("--space", default="tiny")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--models", default="/tmp/edgenas-repeat-models", help="exported-model cache")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from edgenas.devices import load_device

    runtime = load_device(args.device).runtime
    models = export_subnets(args.space, args.archs, "onnx" if runtime == "onnxruntime" else "tflite",
                            Path(args.models), args.seed)
    passes = []
    for k in range(args.passes):
        if k:
            time.sleep(args.pause)
        rows, seconds = measure_pass(args.device, models)
        by_path = {r["model_path"]: r for r in rows}
        passes.append(([by_path[m].get("latency_ms") for m in models], rows, seconds, os.getloadavg()[0]))
    first = passes[0][0]
    print(f"{args.device}: {args.archs} random {args.space} subnets, {args.passes} passes {args.pause:g} s apart "
          f"(`edgenas measure --device {args.device}`)")
    print(f"{'pass':>4} {'±5%':>6} {'±10%':>6} {'worst':>7} {'seconds':>8} {'load':>5} {'retimed':>8} {'unsteady':>9} "
          f"{'slow share':>10}")
    shares = []
    for k, (figures, rows, seconds, load) in enumerate(passes):
        rel = [abs(b / a - 1) for a, b in zip(first, figures) if a and b]
        w5 = sum(r <= 0.05 for r in rel) / len(rel)
        w10 = sum(r <= 0.10 for r in rel) / len(rel)
        if k:
            shares.append(w10)
        window = (rows[0].get("timing") or {}).get("window") or {}
        retimed = max((r.get("timing") or {}).get("retimed", 0) for r in rows)
        unsteady = sum(bool(((r.get("timing") or {}).get("window") or {}).get("unsteady")) for r in rows)
        print(f"{k + 1:>4} {w5:6.1%} {w10:6.1%} {max(rel):7.1%} {seconds:8.1f} {load:5.1f} {retimed:>8} {unsteady:>9} "
              f"{window.get('slow_share') or 0:10.0%}")
        if args.json:
            print(json.dumps({"pass": k + 1, "within_5": w5, "within_10": w10, "worst": max(rel), "seconds": seconds,
                              "load": load}))
    print(f"later passes within ±10 % of the first: mean {sum(shares) / len(shares):.1%}, worst {min(shares):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
