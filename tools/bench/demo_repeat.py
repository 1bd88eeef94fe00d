"""Benchmark: is the demo green every time? `edgenas demo --seed N` for seeds 0..runs-1, one after another.

Each run goes into a fresh output folder (a re-run into a finished folder would reuse every stage) and
is read back from its `--json` result: the exit status, each budget met or missed, every check (the
training check, each latency predictor's held-out check, each shipped model's export checks, and the
candidates passed over because their files failed one), and the wall time. A table, one row per run,
and a last line with the counts and the median wall time.

    python tools/bench/demo_repeat.py --runs 10 [--first-seed 0] [--out DIR] [--keep]

Run it alone: the demo times models on this machine, and the wall time is what a user waits. The load
average before and after each run is printed with it. A run's folder is deleted when it passed (its
figures are in the table) unless --keep; a failed one is kept for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(seed: int, out: Path) -> dict:
    """One `edgenas demo --seed SEED --out OUT --json`: its exit status, wall time, result and log tail."""
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edgenas.cli", "demo", "--seed", str(seed), "--out", str(out), "--json"],
                          capture_output=True, text=True)
    seconds = time.monotonic() - start
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        result = {}
    (out / "demo_repeat.log").parent.mkdir(parents=True, exist_ok=True)
    (out / "demo_repeat.log").write_text(proc.stderr)
    return {"seed": seed, "exit": proc.returncode, "seconds": seconds, "result": result,
            "load": (load_before, os.getloadavg()[0]), "stderr_tail": proc.stderr.strip().splitlines()[-3:]}


def verdicts(run: dict) -> dict:
    """What one run's result says: budgets met, checks passed and failed, candidates passed over."""
    result = run["result"]
    budgets = result.get("budgets") or []
    met = sum(1 for b in budgets if b.get("meets_budget"))
    failed = [f"{b['device']} {b['budget_ms']:g} ms: " + "; ".join(b["problems"]) for b in budgets if b.get("problems")]
    failed += [c["message"] for c in result.get("calibrations") or [] if not c.get("passed")]
    if "gate" in result:
        failed.append(f"training check: {result['gate'].get('message', 'failed')}")
    missing = [f"{b['device']} {b['budget_ms']:g} ms: {b.get('note') or 'no model'}" for b in budgets if b.get("arch") is None]
    passed_over = [f"{b['device']} {b['budget_ms']:g} ms: {b['choice']}" for b in budgets if b.get("choice")]
    checks = len(budgets) + len(result.get("calibrations") or []) + (1 if budgets or "gate" in result else 0)
    return {"budgets": len(budgets), "met": met, "failed": failed + missing, "passed_over": passed_over,
            "checks": checks, "checks_passed": checks - len(failed + missing)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="how many demos, seeds first-seed.. (default %(default)s)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first run's seed (default %(default)s)")
    parser.add_argument("--out", help="folder for the runs' folders (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep every run's folder, not only the failed ones")
    args = parser.parse_args()
    if args.runs < 1:
        print(f"demo_repeat.py: --runs {args.runs} must be at least 1", file=sys.stderr)
        return 2
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="edgenas-demo-repeat-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"demo_repeat: {args.runs} runs of `edgenas demo --seed N` into {root} on {os.cpu_count()} cores", flush=True)
    header = (f"{'seed':>4} {'exit':>4} {'wall':>6} {'budgets met':>11} {'checks passed':>13} "
              f"{'load before/after':>17}  notes")
    print(header)
    print("-" * len(header), flush=True)
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.runs):
        out = root / f"seed-{seed}"
        if out.exists():
            shutil.rmtree(out)
        run = run_once(seed, out)
        v = verdicts(run)
        rows.append((run, v))
        notes = "; ".join(v["failed"] + [f"passed over: {p}" for p in v["passed_over"]])
        if run["exit"] not in (0, 1) or not run["result"]:
            notes = notes or " | ".join(run["stderr_tail"])
        minutes, secs = divmod(run["seconds"], 60)
        print(f"{seed:>4} {run['exit']:>4} {int(minutes):>3}:{secs:02.0f} {v['met']:>5}/{v['budgets']:<5} "
              f"{v['checks_passed']:>6}/{v['checks']:<6} {run['load'][0]:>8.2f}/{run['load'][1]:<8.2f} {notes}", flush=True)
        if run["exit"] == 0 and not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print("-" * len(header))
    green = sum(1 for run, v in rows if run["exit"] == 0 and v["met"] == v["budgets"] > 0 and not v["failed"])
    wall = statistics.median(run["seconds"] for run, _ in rows)
    minutes, secs = divmod(wall, 60)
    print(f"{green} of {len(rows)} runs exit 0 with every budget met and every check passed; median wall time "
          f"{int(minutes)}:{secs:02.0f} (min {min(r['seconds'] for r, _ in rows):.0f} s, "
          f"max {max(r['seconds'] for r, _ in rows):.0f} s)")
    return 0 if green == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
