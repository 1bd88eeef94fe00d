"""Benchmark: does progressive shrinking make small subnets good? PS vs full-network-only training, same steps, on `shapes`.

Trains two supernets of the `tiny` space on the synthetic shapes dataset with the same number of
steps and the same batch size: (a) the full network only, (b) Once-for-All's progressive
shrinking (full network, then elastic kernel, depth and expand, distilled from the full network).
Then prints the BN-recalibrated validation top-1 of the largest, the smallest and a few random
subnets of each. Usage:

    python tools/bench/progressive_shrinking.py [--steps 600] [--batch-size 32] [--samples 4000] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def schedules(total: int, batch_size: int, seed: int, dataset: str, smallest_first: bool):
    from edgenas.train.config import Phase, TrainConfig

    def steps(fraction: float) -> int:
        return max(1, round(total * fraction))

    common = dict(preset="bench", dataset=dataset, space="tiny", seed=seed, batch_size=batch_size,
                  lr_batch_size=batch_size, label_smoothing=0.1, bn_batches=8, checkpoint_every=10**6, log_every=25,
                  eval_every_phase=False, final_samples=0)
    full_only = TrainConfig(phases=(Phase("full", steps=total, lr=0.1, distill=False),), **common)
    sf = smallest_first
    ps_phases = (
        Phase("full", steps=steps(0.4), lr=0.1, distill=False),
        Phase("kernel", steps=steps(0.1), lr=0.03, kernels="all"),
        Phase("depth-1", steps=steps(0.1), lr=0.02, kernels="all", depths=2, subnets_per_step=2, smallest_first=sf),
        Phase("depth-2", steps=steps(0.1), lr=0.03, kernels="all", depths="all", subnets_per_step=2, smallest_first=sf),
        Phase("expand-1", steps=steps(0.1), lr=0.02, kernels="all", depths="all", expands=2, sort_channels=True,
              subnets_per_step=2, smallest_first=sf),
    )
    ps_phases += (Phase("expand-2", steps=total - sum(p.steps for p in ps_phases), lr=0.03, kernels="all",
                        depths="all", expands="all", subnets_per_step=2, smallest_first=sf),)
    return {"full network only": full_only, "progressive shrinking": TrainConfig(phases=ps_phases, **common)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps of each run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4000, help="shapes images generated (default: %(default)s)")
    parser.add_argument("--random", type=int, default=5, help="random subnets evaluated (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the idle cores)")
    parser.add_argument("--smallest-first", action="store_true", help="PS samples the smallest subnet every step")
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)

    from edgenas.data import load_dataset
    from edgenas.space import SearchSpace
    from edgenas.train.evaluate import evaluate_many
    from edgenas.train.trainer import build_space, train

    spec = f"shapes:samples={args.samples}"
    dataset = load_dataset(spec, seed=args.seed)
    print(dataset.describe(), file=sys.stderr)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="edgenas-ps-bench-"))
    rows = []
    for name, config in schedules(args.steps, args.batch_size, args.seed, spec, args.smallest_first).items():
        t0 = time.perf_counter()
        result = train(config, out / name.replace(" ", "-"), threads=args.threads, dataset=dataset, progress=False)
        seconds = time.perf_counter() - t0
        from edgenas.train.checkpoint import load_supernet

        net = load_supernet(result.checkpoint)
        space: SearchSpace = build_space(config, dataset)
        archs = [space.largest(), space.smallest()] + space.sample_many(np.random.default_rng([args.seed, 5]),
                                                                            args.random)
        accs = evaluate_many(net, archs, dataset, "val", bn_batches=config.bn_batches, batch_size=64,
                             seed=args.seed)
        rows.append((name, seconds, accs[0], accs[1], float(np.mean(accs[2:])) if args.random else float("nan"),
                     float(np.min(accs[2:])) if args.random else float("nan")))

    import os

    import torch

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end, "
          f"{args.threads or 'auto'} thread(s) (torch {torch.__version__})")
    print(f"shapes ({args.samples} images, {dataset.size('val')} validation), tiny space, {args.steps} steps x "
          f"{args.batch_size} images per run; validation top-1 after BN recalibration")
    print(f"{'training':<24} {'seconds':>8} {'largest':>8} {'smallest':>9} {'random mean':>12} {'random min':>11}")
    for name, seconds, largest, smallest, mean, low in rows:
        print(f"{name:<24} {seconds:>8.1f} {largest:>8.4f} {smallest:>9.4f} {mean:>12.4f} {low:>11.4f}")
    gain = rows[1][3] - rows[0][3]
    print(f"smallest subnet: progressive shrinking {'+' if gain >= 0 else ''}{100 * gain:.1f} points over full-network-only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
