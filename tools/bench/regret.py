"""Benchmark: the regret of what a run ships. Per budget of a finished `edgenas run` / `edgenas demo` folder, the
subnet the run shipped against the best of many measured subnets that meet the same budget.

Every subnet (the shipped one and a pool of `--pool` others) is measured paired (`edgenas.accuracy.measure`: the
same val and holdout images, BN recalibrated on the same batches, stored in the run's store so a re-run is quick).
Choice and judgement use disjoint images: the run chose its subnet with the holdout split (its accuracy predictor
is fitted on holdout top-1, its deploy stage picks among the candidates on holdout), so the pool's best is chosen
on holdout too and both are judged on val (`--judge`; judging on the split they were chosen on would flatter both
by the winner's curse). Regret = judged top-1 of the pool's best - judged top-1 of the shipped subnet, in points,
with a 95 % paired bootstrap interval over the judging images (the same images for both). The pool's best judged
directly (the oracle, chosen and judged on the same images) is printed beside it as an upper bound.

The pool meets the budget by the run's calibrated latency predictor (its held-out check is in the run's report);
half of it is drawn uniformly among the subnets predicted to meet the budget, half among those closest to it (the
largest subnets that fit, where the best one usually is). The accuracy predictor has no say in the pool.

    python tools/bench/regret.py RUN_FOLDER [--pool 200] [--seed 0] [--judge val] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def budget_entries(run: Path) -> list[dict]:
    """(label, budget, shipped arch, latency predictor path) of every budget in the run's stage book."""
    stages = json.loads((run / "stages.json").read_text())
    out = []
    for name, entry in stages.items():
        if not name.startswith("deploy:"):
            continue
        _, label, budget = name.split(":")
        outputs = entry.get("outputs") or {}
        calib = (stages.get(f"calibrate:{label}") or {}).get("outputs") or {}
        out.append({"label": label, "budget_ms": float(budget.removesuffix("ms")), "arch": outputs.get("arch"),
                    "latency_predictor": calib.get("predictor")})
    return out


def pool_archs(space, latency, budget_ms: float, n: int, rng: np.random.Generator, draw: int = 20000) -> list:
    """`n` distinct archs predicted to meet `budget_ms`: half uniform among them, half the closest to the budget."""
    from edgenas.genome import GenomeCodec

    codec = GenomeCodec(space)
    genomes = codec.canonical(codec.sample(rng, draw))
    _, first = np.unique(codec.keys(genomes), return_index=True)
    archs = codec.to_archs(genomes[np.sort(first)])
    ms = np.asarray(latency.predict(archs), float)
    fits = np.flatnonzero(ms <= budget_ms)
    if len(fits) == 0:
        return []
    uniform = rng.permutation(fits)[: n // 2]
    rest = np.setdiff1d(fits, uniform)
    edge = rest[np.argsort(-ms[rest], kind="stable")][: n - len(uniform)]
    return [archs[i] for i in np.concatenate([uniform, edge])]


def paired_bootstrap(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, reps: int = 2000) -> tuple[float, float]:
    """95 % interval of mean(a) - mean(b) over images resampled with replacement (the same images for both)."""
    d = a.astype(float) - b.astype(float)
    idx = rng.integers(0, len(d), (reps, len(d)))
    means = d[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def regret_of_budget(measurement, shipped_row: int, choose: str, judge: str, rng) -> dict:
    chosen = measurement.accuracy(choose)
    judged = measurement.accuracy(judge)
    best = int(np.argmax(chosen))  # ties: the first (the shipped subnet is row 0)
    cols = measurement.columns[judge]
    lo, hi = paired_bootstrap(measurement.correct[best, cols], measurement.correct[shipped_row, cols], rng)
    return {"regret_points": 100.0 * float(judged[best] - judged[shipped_row]),
            "interval_points": [100.0 * lo, 100.0 * hi],
            "shipped_judged": float(judged[shipped_row]), "best_judged": float(judged[best]),
            "oracle_regret_points": 100.0 * float(judged.max() - judged[shipped_row]),
            "best_arch": measurement.archs[best].to_dict(), "best_is_shipped": best == shipped_row}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a finished run's folder (edgenas demo --out / run's out)")
    p.add_argument("--pool", type=int, default=200, help="measured subnets per budget beside the shipped one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge", choices=("val", "holdout"), default="val", help="the split both are judged on")
    p.add_argument("--bn-batches", type=int, default=None, help="default: the run's")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import torch

    from edgenas.accuracy.fit import SupernetEvaluator
    from edgenas.accuracy.measure import measure_paired
    from edgenas.accuracy.predictor import free_cores
    from edgenas.latency import load_latency_predictor
    from edgenas.space import Arch
    from edgenas.store import Store

    run = args.run
    config = json.loads((run / "run-config.json").read_text())
    bn = args.bn_batches or int((config.get("predictor") or {}).get("bn_batches") or config.get("bn_batches") or 8)
    checkpoint = run / "supernet" / "supernet.pt"
    if not checkpoint.is_file():
        checkpoint = Path(config.get("checkpoint") or (config.get("train") or {}).get("checkpoint"))
    choose = "holdout" if args.judge == "val" else "val"
    torch.set_num_threads(free_cores())
    ev = SupernetEvaluator(str(checkpoint), args.judge, bn)
    space = ev.supernet.space
    rows = []
    t0 = time.perf_counter()
    with Store(run / "store.sqlite") as store:
        for b in budget_entries(run):
            if not b["arch"]:
                rows.append({**b, "regret_points": None, "note": "nothing shipped"})
                continue
            latency = load_latency_predictor(b["latency_predictor"], space=space)
            shipped = Arch.from_dict(b["arch"])
            pool = [a for a in pool_archs(space, latency, b["budget_ms"], args.pool,
                                          np.random.default_rng([args.seed, int(b["budget_ms"] * 1000)]))
                    if a != shipped]
            m = measure_paired(ev, [shipped, *pool], store, bn_batches=bn, progress=not args.json)
            r = regret_of_budget(m, 0, choose, args.judge, np.random.default_rng(args.seed))
            rows.append({**b, "pool": len(pool), "bn_batches": bn, "chosen_on": choose, "judged_on": args.judge, **r})
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"run": str(run), "seconds": seconds, "budgets": rows}, indent=2))
        return 0
    print(f"regret of {run} (chosen on {choose}, judged on {args.judge}, {seconds:.0f} s)")
    print(f"{'device':<22} {'budget ms':>9} {'pool':>5} {'shipped %':>9} {'best %':>7} {'regret pt':>9} "
          f"{'95 % interval':>15} {'oracle pt':>9}")
    for r in rows:
        if r.get("regret_points") is None:
            print(f"{r['label']:<22} {r['budget_ms']:9.3g}  {r.get('note', '')}")
            continue
        lo, hi = r["interval_points"]
        print(f"{r['label']:<22} {r['budget_ms']:9.3g} {r['pool']:5d} {100 * r['shipped_judged']:9.2f} "
              f"{100 * r['best_judged']:7.2f} {r['regret_points']:9.2f} {f'[{lo:.2f}, {hi:.2f}]':>15} "
              f"{r['oracle_regret_points']:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
