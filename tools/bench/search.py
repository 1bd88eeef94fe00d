"""Benchmark: search speed (population 100 × 500 generations) and evolution against random search.

1. Times constrained evolution with Once-for-All's settings (population 100, 500 generations) using the
   real accuracy predictor and a real latency predictor, and prints candidates evaluated per second.
2. At 3 latency budgets (the 25th, 50th and 75th percentile of the predicted latency of 2000 random
   archs; a rule fixed before any result was seen), runs evolution and random search given 10x as many
   candidate evaluations, then measures the real top-1 (BN-recalibrated) of both winners on the `val`
   split (3000 images of `shapes`, never used to fit the predictor or to search) and on `holdout`
   (the predictor's training targets' split). The criterion is judged on `val`: evolution's winner
   must be at least as good as random search's at all 3 budgets.
3. Runs the CLI with an impossible constraint and prints its exit status and message.

Needs the supernet and accuracy predictor of tools/bench/accuracy_predictor.py (same --work folder).
The latency predictor: the `--table` latency table's sum (default `<work>/latency_tables/local/
onnxruntime-fp32.json`, the one tools/bench/strategies.py uses) when it exists; else the local device's
calibrated predictor when `latency_tables/local/` has it; else a MACs-linear predictor fitted to 8
subnets measured now on the local device (ONNX Runtime).

    python tools/bench/search.py [--work DIR] [--table TABLE.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DEFAULT_WORK = Path("/tmp/edgenas-bench-v2")
BN_BATCHES = 8  # as tools/bench/accuracy_predictor.py, so real top-1 is measured as the predictor's targets were


def latency_predictor(space, supernet, work: Path, table: Path | None = None):
    """The table's sum, the local device's calibrated predictor, or a MACs-linear one fitted to real local
    measurements."""
    from edgenas.errors import UsageError
    from edgenas.latency import load_latency_predictor

    table = table or work / "latency_tables" / "local" / "onnxruntime-fp32.json"
    if table.is_file():
        from strategies import table_predictor

        return table_predictor(table, space), f"latency table sum ({table})"

    try:
        return load_latency_predictor("local", space=space), "calibrated (latency_tables/local)"
    except UsageError:
        pass
    from edgenas import load_device
    from edgenas.cost import stats_table
    from edgenas.export.onnx import export_onnx
    from edgenas.latency.predictors import MacsPredictor

    rng = np.random.default_rng(0)
    pool = space.sample_many(rng, 400)
    macs = stats_table(space).compute(pool)["macs"]
    archs = [pool[i] for i in np.argsort(macs)[np.linspace(0, len(pool) - 1, 8).astype(int)]]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [export_onnx(supernet.extract(a), Path(tmp) / f"a{i}.onnx").path for i, a in enumerate(archs)]
        with load_device("local") as device:
            ms = [m.median_ms for m in device.measure([str(p) for p in paths])]
    predictor = MacsPredictor(device="local", runtime="onnxruntime", precision="fp32", space=space)
    predictor.fit(archs, ms)
    return predictor, f"MACs-linear, fitted to 8 subnets measured now on 'local' ({min(ms):.2f}-{max(ms):.2f} ms)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the supernet checkpoint the accuracy benchmark used (default: <work>/supernet/supernet.pt)")
    parser.add_argument("--table", type=Path, default=None,
                        help="latency table JSON of the device (default: <work>/latency_tables/local/onnxruntime-fp32.json)")
    args = parser.parse_args(argv)

    from edgenas.accuracy.fit import SupernetEvaluator
    from edgenas.accuracy.predictor import load_accuracy_predictor
    from edgenas.search import Constraints, Evolution, EvolutionConfig, Problem, RandomSearch, run_search
    from edgenas.train.evaluate import evaluate

    ckpt = args.checkpoint or args.work / "supernet" / "supernet.pt"
    acc = load_accuracy_predictor(ckpt.parent / "accuracy_predictor.npz")
    ctx = SupernetEvaluator(str(ckpt), "holdout", BN_BATCHES)
    space = ctx.supernet.space
    lat, lat_desc = latency_predictor(space, ctx.supernet, args.work, args.table)
    sample = space.sample_many(np.random.default_rng(1), 2000)
    lat_sample = lat.predict(sample)

    print(f"machine load (1-min average) at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"latency predictor: {lat_desc}")
    print(f"accuracy predictor: {acc.info.get('fit', {}).get('train_size')} fit archs; test Kendall tau "
          f"{acc.info.get('test', {}).get('test_kendall_tau', float('nan')):.3f}")
    print()
    print("1. speed: constrained evolution, population 100, 500 generations (Once-for-All's finder: ~22 s on a CPU)")
    print(f"{'budget ms':>10} {'seconds':>8} {'candidates':>11} {'cand/s':>9} {'predicted':>10} {'best pred top1':>15} "
          f"{'load':>5}")
    for budget in (float(np.quantile(lat_sample, 0.5)),):
        for run in range(2):
            problem = Problem(space, acc, lat, Constraints(max_latency_ms=budget), device="local")
            t0 = time.perf_counter()
            result = run_search(Evolution(space, rng=np.random.default_rng(args.seed + run),
                                          config=EvolutionConfig(population=100, generations=500)), problem)
            secs = time.perf_counter() - t0
            print(f"{budget:10.3f} {secs:8.2f} {problem.candidates:11d} {problem.candidates / secs:9.0f} "
                  f"{problem.predicted:10d} {100 * result.best.predicted['accuracy']:14.2f}% {os.getloadavg()[0]:5.1f}")
    print()
    print(f"2. evolution (100 x 500) against random search with 10x the candidate evaluations; real top-1 "
          f"(BN-recalibrated on {BN_BATCHES} batches) on val ({ctx.dataset.size('val')} images) and holdout "
          f"({ctx.dataset.size('holdout')})")
    print(f"{'budget ms':>10} {'algorithm':>10} {'candidates':>11} {'predicted':>10} {'pred top1':>10} "
          f"{'VAL top1':>9} {'hold top1':>10} {'pred ms':>8}  arch")
    print("(candidates: archs the algorithm scored; predicted: distinct archs sent to the predictors, evolution "
          "revisits archs, both counting the 513 that run_search scores first to check the budget is reachable)")
    outcome = []
    for q in (0.25, 0.5, 0.75):
        budget = float(np.quantile(lat_sample, q))
        problem = Problem(space, acc, lat, Constraints(max_latency_ms=budget), device="local")
        evo_search = Evolution(space, rng=np.random.default_rng(args.seed),
                               config=EvolutionConfig(population=100, generations=500))
        evo = run_search(evo_search, problem)
        rproblem = Problem(space, acc, lat, Constraints(max_latency_ms=budget), device="local")
        rnd_search = RandomSearch(space, rng=np.random.default_rng(args.seed + 100), budget=10 * evo_search.told,
                                  batch_size=5000)
        rnd = run_search(rnd_search, rproblem)
        real = {}
        for name, res, prob, search in (("evolution", evo, problem, evo_search), ("random", rnd, rproblem, rnd_search)):
            real[name] = evaluate(ctx.supernet, res.best.arch, ctx.dataset, "val", bn_batches=BN_BATCHES)
            hold = evaluate(ctx.supernet, res.best.arch, ctx.dataset, "holdout", bn_batches=BN_BATCHES)
            print(f"{budget:10.3f} {name:>10} {search.told:11d} {prob.predicted:10d} "
                  f"{100 * res.best.predicted['accuracy']:9.2f}% {100 * real[name]:8.2f}% {100 * hold:9.2f}% "
                  f"{res.best.predicted['latency_ms']:8.3f}  {res.best.arch}")
        outcome.append(real["evolution"] >= real["random"])
    print()
    print(f"evolution's real val top-1 >= random search's at {sum(outcome)}/3 budgets -> "
          f"{'MET' if all(outcome) else 'NOT MET'}")
    print()
    print("3. an impossible constraint through the CLI (a fresh process: imports included)")
    lat_file = args.work / "latency-predictor.json"
    lat.save(lat_file)
    smallest = float(lat.predict([space.smallest()])[0])
    cmd = [sys.executable, "-m", "edgenas.cli", "search", "--supernet", str(ckpt), "--device", "local",
           "--latency-predictor", str(lat_file), "--max-latency-ms", f"{smallest / 4:.4f}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    print(f"exit status {proc.returncode} after {time.perf_counter() - t0:.2f} s; stderr: {proc.stderr.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
