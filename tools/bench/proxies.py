"""Benchmark: every zero-cost proxy's Kendall tau against real holdout top-1, beside the trained accuracy predictor's.

Uses the evaluations in the SQLite store (those the accuracy-predictor fit made; missing ones are
evaluated now and stored), scores each arch with every proxy at the supernet's weights and at a fresh
initialisation, and prints both tables. With `--predictor`, the predictor's tau on the same archs is
printed first (note: archs it was fitted on are included; tools/bench/strategies.py compares on
held-out archs only).

    python tools/bench/proxies.py --supernet CKPT --store STORE.sqlite [--samples 50] [--predictor NPZ]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--supernet", required=True, type=Path)
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--predictor", type=Path, default=None)
    ap.add_argument("--bn-batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from edgenas.accuracy.predictor import kendall_tau, load_accuracy_predictor
    from edgenas.accuracy.proxies import format_report, proxy_report
    from edgenas.space import Arch

    torch.set_num_threads(1)
    for at_init in (False, True):
        report = proxy_report(args.supernet, samples=args.samples, seed=args.seed, store_path=args.store,
                              at_init=at_init, bn_batches=args.bn_batches, progress=False)
        extra = {}
        if args.predictor:
            archs = [Arch.from_dict(a) for a in report.archs]
            predictor = load_accuracy_predictor(args.predictor)
            extra["accuracy predictor"] = kendall_tau(predictor.predict(archs), np.asarray(report.accuracy))
        print(format_report(report, extra))
        print()


if __name__ == "__main__":
    main()
