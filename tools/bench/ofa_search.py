"""Benchmark: edgenas's constrained evolution against Once-for-All's `EvolutionFinder`, on its real predictor and tables.

Both sides search Once-for-All's w1.2 MobileNetV3 space at 160-224 px under a Samsung Note10 latency budget
(15, 20, 25, 30, 40 ms), population 100, 500 generations, 5 seeds each, alternating in this one process
(one thread). Once-for-All's side is its own code (`ofa/tutorial/evolution_finder.py`, `accuracy_predictor.py`,
`latency_table.py`) from a fetched checkout, run as it is: only its table loading (a download read with
`yaml.load`) is replaced by reading the same local files with `yaml.safe_load` (tools/ofa_reference.py), and
its progress bar is silenced. edgenas's side is `edgenas import ofa-predictor` / `ofa-lut` of the same files
and `Evolution` with its defaults (Once-for-All's settings). Every best arch is judged by Once-for-All's own
predictor and latency table, so both sides are scored by the same numbers.

    python tools/bench/ofa_search.py --ofa-src /tmp/ofa-src [--data ../shared/data/ofa] [--seeds 5]

Prints, per budget: each side's mean best predicted top-1 (and the spread over seeds), the latency its best
claims (and Once-for-All's table's figure for edgenas's best), and the mean wall time per search.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

BUDGETS = (15, 20, 25, 30, 40)
RESOLUTIONS = (160, 176, 192, 208, 224)


def ofa_side(src: str, data: Path):
    """Once-for-All's predictor and Note10 table (its code), and a function running its finder at a budget."""
    import torch
    from ofa_reference import load_ofa, ofa_latency_table

    load_ofa(src)
    import ofa.tutorial.evolution_finder as finder_module
    from ofa.tutorial.accuracy_predictor import AccuracyPredictor

    finder_module.tqdm = lambda iterable, **_: iterable  # its progress bar only
    predictor = AccuracyPredictor(pretrained=False, device="cpu")
    predictor.model.load_state_dict(torch.load(data / "acc_predictor.pth", map_location="cpu", weights_only=True))
    table = ofa_latency_table({r: data / f"note10_{r}_lookup_table.yaml" for r in RESOLUTIONS})

    def search(budget: float, seed: int) -> tuple[dict, float, float]:
        random.seed(seed)
        np.random.seed(seed)
        finder = finder_module.EvolutionFinder(constraint_type="note10", efficiency_constraint=budget,
                                               efficiency_predictor=table, accuracy_predictor=predictor,
                                               population_size=100, max_time_budget=500)
        _, (accuracy, sample, latency) = finder.run_evolution_search()
        return sample, accuracy, latency

    return predictor, table, search


def edgenas_side(data: Path, work: Path):
    """The same files imported by edgenas, and a function running edgenas's evolution at a budget."""
    from edgenas.accuracy.predictor import load_accuracy_predictor
    from edgenas.imports.ofa_lut import import_ofa_tables
    from edgenas.imports.ofa_predictor import import_ofa_predictor
    from edgenas.latency import load_latency_predictor
    from edgenas.search.evolution import Evolution, EvolutionConfig
    from edgenas.search.loop import run_search
    from edgenas.search.problem import Constraints, Problem

    import_ofa_predictor(data / "acc_predictor.pth", work / "accuracy_predictor.npz")
    files = [data / f"note10_{r}_lookup_table.yaml" for r in RESOLUTIONS]
    import_ofa_tables(files, "note10", tables_root=work / "latency_tables", devices_dir=work / "devices")
    accuracy = load_accuracy_predictor(work / "accuracy_predictor.npz")
    latency = load_latency_predictor("note10", tables_dir=work / "latency_tables")
    space = accuracy.space.common_resolutions(latency.space)

    def search(budget: float, seed: int) -> tuple[dict, float, float]:
        problem = Problem(space, accuracy, latency, Constraints(max_latency_ms=budget), score_infeasible=False)
        evolution = Evolution(space, rng=np.random.default_rng(seed), config=EvolutionConfig(population=100,
                                                                                              generations=500))
        best = run_search(evolution, problem).best
        return best.arch.to_dict(), best.predicted["accuracy"], best.predicted["latency_ms"]

    return search


def as_ofa_sample(arch: dict) -> dict:
    """An edgenas arch in Once-for-All's form (inactive slots padded; the padding is ignored by both sides)."""
    ks, e, i = [], [], 0
    for depth in arch["depths"]:
        ks += arch["kernels"][i:i + depth] + [3] * (4 - depth)
        e += arch["expands"][i:i + depth] + [3] * (4 - depth)
        i += depth
    return {"wid": None, "ks": ks, "e": e, "d": list(arch["depths"]), "r": [arch["resolution"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ofa-src", required=True, help="a checkout of mit-han-lab/once-for-all")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ofa"),
                        help="folder of acc_predictor.pth and note10_<res>_lookup_table.yaml")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    data = Path(args.data)
    predictor, table, ofa_search = ofa_side(args.ofa_src, data)
    with tempfile.TemporaryDirectory() as tmp:
        our_search = edgenas_side(data, Path(tmp))
        print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)", flush=True)
        rows = []
        for budget in (float(b) for b in args.budgets.split(",")):
            runs: dict[str, list[tuple[float, float, float, float]]] = {"ofa": [], "edgenas": []}
            for seed in range(args.seeds):
                for side, search in (("ofa", ofa_search), ("edgenas", our_search)):  # alternating
                    t0 = time.perf_counter()
                    arch, claimed_acc, claimed_ms = search(budget, seed)
                    seconds = time.perf_counter() - t0
                    sample = arch if side == "ofa" else as_ofa_sample(arch)
                    judged = float(predictor.predict_accuracy([copy.deepcopy(sample)])[0, 0])
                    ofa_ms = table.predict_efficiency(sample)
                    assert abs(judged - claimed_acc) < 1e-5 and abs(ofa_ms / claimed_ms - 1) < 1e-6, (side, arch)
                    runs[side].append((judged * 100, claimed_ms, ofa_ms, seconds))
                    print(f"  {budget:g} ms seed {seed} {side:8s} top-1 {judged * 100:.2f} %  {claimed_ms:.2f} ms  "
                          f"{seconds:.2f} s", flush=True)
            rows.append((budget, runs))
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
        report(rows, args.seeds)


def report(rows: list, seeds: int) -> None:
    print(f"\nmean over {seeds} seeds (spread min-max); top-1 by Once-for-All's predictor, latency by its Note10 table")
    print("| budget | OFA top-1 | edgenas top-1 | edgenas - OFA | OFA ms | edgenas ms | OFA s/search | "
          "edgenas s/search | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for budget, runs in rows:
        o, e = np.array(runs["ofa"]), np.array(runs["edgenas"])
        print(f"| {budget:g} ms | {o[:, 0].mean():.2f} ({o[:, 0].min():.2f}-{o[:, 0].max():.2f}) | "
              f"{e[:, 0].mean():.2f} ({e[:, 0].min():.2f}-{e[:, 0].max():.2f}) | {e[:, 0].mean() - o[:, 0].mean():+.2f} | "
              f"{o[:, 1].mean():.2f} | {e[:, 1].mean():.2f} | {o[:, 3].mean():.2f} | {e[:, 3].mean():.2f} | "
              f"{o[:, 3].mean() / e[:, 3].mean():.0f}x |")


if __name__ == "__main__":
    main()
