"""Benchmark: random, evolution, NSGA-II, RL and differentiable search side by side, plus zero-cost proxies.

On one supernet, one device latency table and 3 latency budgets — fixed by a rule chosen before any
result was seen: the 25th, 50th and 75th percentile of the table latency of 2000 random archs (seed 0).
No strategy's settings were tuned on them: every searcher runs its defaults, scaled to the same number
of predictor evaluations (`--evaluations`; a strategy stops once it has scored that many candidates,
overshooting by at most its last batch: evolution proposes several children per one it keeps).

1. Fits the accuracy predictor on `--samples` archs evaluated for real (BN-recalibrated holdout top-1,
   kept in the SQLite store), `--test` of them held out; prints the Kendall tau of the predictor and of
   every zero-cost proxy on those held-out archs (`tools/bench/proxies.py` prints the proxies alone).
   The defaults reuse tools/bench/accuracy_predictor.py's work folder, archs and BN recalibration
   (8 batches) and its store `<work>/store-bn8.sqlite`, so no subnet is evaluated again.
2. Runs each strategy at each budget and prints the best arch's real val top-1 (BN-recalibrated; val is
   never used to fit the predictor or to search), its table latency, the predictor evaluations it used
   and its wall time. The differentiable search uses the supernet and the table directly (no accuracy
   predictor). Its λ starts at 0 by default; a second row runs it with λ starting at 1 (the default
   before it was changed after a run of this benchmark), so the change's effect is on the record.

Supernet and table: `<work>/supernet/supernet.pt` (tools/bench/accuracy_predictor.py) and
`<work>/latency_tables/local/onnxruntime-fp32.json` (the `local` device, ONNX Runtime, 1 thread).

    python tools/bench/strategies.py [--supernet CKPT] [--table TABLE.json] [--work DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DEFAULT_WORK = Path("/tmp/edgenas-bench-v2")  # tools/bench/accuracy_predictor.py's


def table_predictor(path: Path, space):
    from edgenas.latency.predictors import TablePredictor
    from edgenas.latency.table import LatencyTable

    table = LatencyTable.load(path)
    return TablePredictor(table={k: v["median_ms"] for k, v in table.entries.items()}, device=table.device,
                          runtime=table.runtime, precision=table.precision, space=space)


def proxy_taus(ctx, archs, accuracy, seed: int, batch_size: int) -> dict[str, tuple[float, float]]:
    """(Kendall tau, seconds per arch) of every proxy on `archs`."""
    from edgenas.accuracy.predictor import kendall_tau
    from edgenas.accuracy.proxies import PROXIES, STAT_PROXIES, TORCH_PROXIES, ProxyPredictor, dataset_batches, score_model

    batches = dataset_batches(ctx.dataset, batch_size=batch_size, seed=seed)
    scores = {n: [] for n in TORCH_PROXIES}
    seconds = dict.fromkeys(PROXIES, 0.0)
    for arch in archs:
        net = ctx.supernet.extract(arch)
        x, y = batches(arch.resolution)
        for n in TORCH_PROXIES:
            t0 = time.perf_counter()
            scores[n].append(score_model(net, x, y, [n])[n])
            seconds[n] += time.perf_counter() - t0
    for n in STAT_PROXIES:
        t0 = time.perf_counter()
        scores[n] = ProxyPredictor(n, space=ctx.supernet.space).predict(archs)
        seconds[n] += time.perf_counter() - t0
    return {n: (kendall_tau(np.asarray(scores[n]), accuracy), seconds[n] / len(archs)) for n in PROXIES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--supernet", type=Path, default=None, help="default: <work>/supernet/supernet.pt")
    ap.add_argument("--table", type=Path, default=None,
                    help="latency table JSON of the device (default: <work>/latency_tables/local/onnxruntime-fp32.json)")
    ap.add_argument("--samples", type=int, default=700, help="archs evaluated for the accuracy predictor")
    ap.add_argument("--test", type=int, default=200, help="of those, held out to test predictor and proxies")
    ap.add_argument("--evaluations", type=int, default=3000, help="predictor evaluations per search")
    ap.add_argument("--diff-steps", type=int, default=DifferentiableDefaults.steps)
    ap.add_argument("--bn-batches", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-proxies", action="store_true", help="do not score the zero-cost proxies")
    args = ap.parse_args()

    import torch

    from edgenas.accuracy.dataset import sample_archs
    from edgenas.accuracy.fit import SupernetEvaluator, fit_predictor, split_archs
    from edgenas.accuracy.predictor import kendall_tau, load_accuracy_predictor
    from edgenas.search.evolution import Evolution, EvolutionConfig
    from edgenas.search.loop import run_search
    from edgenas.search.nsga import NSGA2, NSGA2Config
    from edgenas.search.problem import Constraints, Problem
    from edgenas.search.random_search import RandomSearch
    from edgenas.search.rl import RLConfig, RLSearch
    from edgenas.store import Store
    from edgenas.train.differentiable import DifferentiableConfig, differentiable_search
    from edgenas.train.evaluate import evaluate_many

    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    args.supernet = args.supernet or args.work / "supernet" / "supernet.pt"
    args.table = args.table or args.work / "latency_tables" / "local" / "onnxruntime-fp32.json"
    store = args.work / f"store-bn{args.bn_batches}.sqlite"  # as tools/bench/accuracy_predictor.py
    t0 = time.perf_counter()
    fit = fit_predictor(args.supernet, samples=args.samples, test=args.test, seed=args.seed, store_path=store,
                        out=args.work / "accuracy_predictor.npz", bn_batches=args.bn_batches, progress=False)
    acc = load_accuracy_predictor(args.work / "accuracy_predictor.npz")
    print(f"accuracy dataset: {fit.samples} archs ({fit.evaluated_now} evaluated now) in "
          f"{time.perf_counter() - t0:.0f} s; predictor test tau {fit.test_kendall_tau:.3f} on {fit.test_size} archs")

    ctx = SupernetEvaluator(str(args.supernet), "holdout", args.bn_batches)
    space = ctx.supernet.space
    with Store(store) as st:
        sampled = sample_archs(space, args.samples, np.random.default_rng(args.seed))
        _, test_archs = split_archs(sampled, args.test, args.seed)
        test_archs, test_acc = ctx.accuracy_dataset(st).load(test_archs)
    print(f"\nKendall tau against real holdout top-1 on the {len(test_archs)} held-out archs "
          f"(holdout top-1 from {test_acc.min():.3f} to {test_acc.max():.3f})")
    print(f"{'estimator':<26}{'tau':>8}{'s/arch':>10}")
    pred_tau = kendall_tau(acc.predict(test_archs), test_acc)
    print(f"{'accuracy predictor (MLP)':<26}{pred_tau:>8.3f}{'':>10}")
    for name, (tau, sec) in ({} if args.skip_proxies else proxy_taus(ctx, test_archs, test_acc, args.seed, 32)).items():
        print(f"{name:<26}{tau:>8.3f}{sec:>10.4f}")

    lat = table_predictor(args.table, space)
    rng = np.random.default_rng(args.seed)
    random_ms = lat.predict([space.sample(rng) for _ in range(2000)])
    budgets = [float(np.percentile(random_ms, q)) for q in (25, 50, 75)]
    n = args.evaluations
    strategies = {
        "random": lambda r: RandomSearch(space, rng=r, budget=n, batch_size=100),
        # Evolution proposes several children per one it needs (infeasible ones are dropped), so it runs
        # until the cap below, not for a number of generations.
        "evolution": lambda r: Evolution(space, rng=r, config=EvolutionConfig(population=50, generations=10**6)),
        "nsga2": lambda r: NSGA2(space, rng=r, n_constraints=1, config=NSGA2Config(population=50,
                                                                                    generations=n // 50 - 1)),
        "rl": lambda r: RLSearch(space, rng=r, config=RLConfig(steps=n // 32, batch_size=32)),
    }
    rows = []
    for budget in budgets:
        found = {}
        for name, make in strategies.items():
            problem = Problem(space, acc, lat, Constraints(max_latency_ms=budget), device=lat.device)
            search = Capped(make(np.random.default_rng(args.seed)), n)
            result = run_search(search, problem)
            found[name] = (result.best.arch, result.best.predicted["accuracy"], search.told, result.seconds)
        for name, lam0 in (("differentiable", None), ("diff. (lam0=1)", 1.0)):
            cfg = DifferentiableConfig(steps=args.diff_steps)
            if lam0 is not None:
                cfg = dataclasses.replace(cfg, latency_weight=lam0)
            d = differentiable_search(ctx.supernet, ctx.dataset, lat, max_latency_ms=budget, seed=args.seed,
                                      config=cfg)
            found[name] = (d.arch, float(acc.predict([d.arch])[0]), 0, d.seconds)
        real = evaluate_many(ctx.supernet, [f[0] for f in found.values()], ctx.dataset, "val",
                             bn_batches=args.bn_batches)
        for (name, (arch, pred, evals, secs)), top1 in zip(found.items(), real):
            ms = float(lat.predict([arch])[0])
            rows.append((budget, name, top1, pred, ms, evals, secs, str(arch)))
        print(f"budget {budget:.3f} ms done", flush=True)

    print(f"\nBest arch per strategy and latency budget (table: {args.table.name} of device '{lat.device}'; "
          f"real top-1 on val, {ctx.dataset.size('val')} images, BN-recalibrated on {args.bn_batches} batches)")
    print("(pred evals: candidates the strategy scored with the predictors; run_search also scores 513 archs "
          "once to check the budget is reachable)")
    print(f"{'budget ms':>9} {'strategy':<15}{'real top1':>10}{'pred top1':>10}{'table ms':>9}{'pred evals':>11}"
          f"{'wall s':>8}  arch")
    for budget, name, top1, pred, ms, evals, secs, arch in rows:
        ev = str(evals) if not name.startswith("diff") else f"{args.diff_steps} st"
        print(f"{budget:>9.3f} {name:<15}{top1:>10.4f}{pred:>10.4f}{ms:>9.3f}{ev:>11}{secs:>8.2f}  {arch}")

    names = list(dict.fromkeys(r[1] for r in rows))
    print(f"\nSummary: real val top-1 of each strategy's arch per budget (ms), mean over budgets, wall s in all "
          f"(binomial standard error of one figure about {100 * np.sqrt(0.25 / ctx.dataset.size('val')):.1f} points "
          f"at most)")
    print(f"{'strategy':<15}" + "".join(f"{b:>9.3f}" for b in budgets) + f"{'mean':>9}{'wall s':>9}{'evals':>9}")
    for name in names:
        mine = [r for r in rows if r[1] == name]
        evals = "-" if name.startswith("diff") else str(int(np.mean([r[5] for r in mine])))
        print(f"{name:<15}" + "".join(f"{r[2]:>9.4f}" for r in mine) + f"{np.mean([r[2] for r in mine]):>9.4f}"
              f"{sum(r[6] for r in mine):>9.1f}{evals:>9}")


class Capped:
    """A search that stops once it has scored `n` candidates (it may overshoot by its last batch)."""

    def __init__(self, search, n: int) -> None:
        self.inner, self.n = search, n

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    @property
    def done(self) -> bool:
        return self.inner.done or self.inner.told >= self.n


class DifferentiableDefaults:
    steps = 40


if __name__ == "__main__":
    main()
