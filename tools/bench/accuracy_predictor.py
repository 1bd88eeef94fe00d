"""Benchmark: how well the accuracy predictor ranks subnets of a supernet trained on `shapes`.

Trains (or resumes) a small supernet on `shapes`, evaluates sampled subnets on the holdout split
with BN recalibration on 8 batches (stored, so a re-run only fits), fits the MLP on all but the test archs and
prints RMSE and Kendall tau on the held-out archs.

The supernet: the `tiny` preset's progressive-shrinking schedule at 1.25x its epochs (10.6 epochs: full 3.75,
kernel 1.25, depth 0.625 + 1.875, expand 0.625 + 2.5) on `shapes:samples=15000` at 32 px, split 10 800 train / 3 000 val /
1 200 holdout images. The holdout is that large so that one arch's measured top-1 has a binomial
standard error of about 0.8 points (at 92 %), and all archs are scored on the same images. Training took
20 minutes on one CPU core (run it pinned: `taskset -c 1 env OMP_NUM_THREADS=1 python ...`); evaluating
700 archs about 14 more (1.2 s each). 500 archs fit the predictor (400 + 100 for early stopping): a
learning curve by cross-validation on the fitting archs alone rose from tau 0.51 (40 archs) to 0.66 (160).

    python tools/bench/accuracy_predictor.py [--work DIR] [--samples 700] [--test 200]

The work folder (checkpoint and store) is reused by tools/bench/search.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DEFAULT_WORK = Path("/tmp/edgenas-bench-v2")  # /tmp/edgenas-bench holds a supernet of older `shapes` data
DATASET = "shapes:samples=15000"  # 10 800 train, 3 000 val, 1 200 holdout images
EPOCH_SCALE = 1.25  # of the `tiny` preset's progressive-shrinking schedule (8.5 epochs -> 10.6)
BN_BATCHES = 8  # 64-image training batches for each subnet's BN recalibration (as TrainConfig's default)
# With 2 batches, BN recalibration alone made one arch's holdout top-1 wander by 0.7 points (std of the difference
# between two recalibration seeds, 60 fitting archs): two seeds' measurements agreed only at Kendall tau 0.76,
# against 0.89 with 8 batches. (The store keeps each batch count's figures apart, as metric "top1@bn8".)


def store_file(work: Path, bn_batches: int = BN_BATCHES) -> Path:
    """The SQLite store of subnet evaluations with `bn_batches` BN-recalibration batches."""
    return work / f"store-bn{bn_batches}.sqlite"


def ensure_supernet(work: Path, *, dataset: str = DATASET, epoch_scale: float = EPOCH_SCALE) -> tuple[Path, float]:
    """The benchmark supernet's checkpoint (trained now, resumed, or reused) and the seconds spent training now."""
    from edgenas.train.config import load_config
    from edgenas.train.trainer import train

    ckpt = work / "supernet" / "supernet.pt"
    if ckpt.is_file():
        return ckpt, 0.0
    saved = work / "supernet" / "config.toml"
    if saved.is_file():  # resume with exactly the config the run started with, even if the preset changed since
        config = load_config(saved)
    else:
        config = load_config(preset="tiny", dataset=dataset).scale_epochs(epoch_scale)
    t0 = time.perf_counter()
    result = train(config, work / "supernet", resume=(work / "supernet" / "last.pt").is_file(), device="cpu",
                   tensorboard=False)
    return Path(result.checkpoint), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="use this supernet checkpoint (e.g. a run's last.pt) instead of training one")
    parser.add_argument("--samples", type=int, default=700)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="evaluation processes")
    args = parser.parse_args(argv)

    from edgenas.accuracy.dataset import top1_metric
    from edgenas.accuracy.fit import fit_predictor

    args.work.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        ckpt, train_s = args.checkpoint, 0.0
    else:
        ckpt, train_s = ensure_supernet(args.work)
    t0 = time.perf_counter()
    print(f"supernet ready ({train_s:.0f} s of training now); evaluating subnets", flush=True)
    result = fit_predictor(ckpt, samples=args.samples, test=args.test, seed=args.seed, bn_batches=BN_BATCHES,
                           workers=args.workers, store_path=store_file(args.work),
                           out=ckpt.parent / "accuracy_predictor.npz")
    total_s = time.perf_counter() - t0
    fit = result.fit
    from edgenas.store import Store
    from edgenas.train.checkpoint import load_checkpoint_info

    info = load_checkpoint_info(ckpt)
    with Store(store_file(args.work)) as store:
        rows = store.evaluations(info["sha256"], "holdout", top1_metric(BN_BATCHES))
    import numpy as np

    acc = np.array([r.value for r in rows])
    secs = np.array([r.extra.get("seconds", np.nan) for r in rows], dtype=float)
    print()
    print(f"supernet: {ckpt} (dataset {info['dataset']}, phase {info['phase_name']}, step {info['global_step']}, "
          f"complete {info['complete']}; trained now in {train_s:.0f} s); BN recalibration on {BN_BATCHES} batches")
    summary = info.get("summary") or {}
    for ph in summary.get("phases", []):
        acc_txt = (f"; val top-1 largest {ph['val_largest']:.4f} smallest {ph['val_smallest']:.4f}"
                   if "val_largest" in ph else "")
        print(f"  phase {ph.get('phase', '?'):9s} {ph.get('steps', 0):5d} steps {ph.get('seconds', 0):7.0f} s "
              f"{ph.get('samples_per_s', 0):6.1f} img/s{acc_txt}")
    if summary.get("val"):
        print("  final val top-1 (BN-recalibrated): " + ", ".join(f"{r['name']} {r['top1']:.4f}" for r in summary["val"]))
    print(f"{'quantity':44s} {'value':>12s}")
    print(f"{'archs evaluated (holdout, BN recalibrated)':44s} {result.samples:12d}")
    print(f"{'  of which now':44s} {result.evaluated_now:12d}")
    print(f"{'  median seconds per arch evaluation':44s} {np.nanmedian(secs):12.3f}")
    print(f"{'  holdout top-1: min / median / max':44s} {acc.min():.3f}/{np.median(acc):.3f}/{acc.max():.3f}")
    print(f"{'  holdout top-1: std over archs':44s} {acc.std():12.4f}")
    print(f"{'fit archs (train + early-stopping val)':44s} {fit.train_size:7d} + {fit.val_size:3d}")
    print(f"{'best epoch / epochs run':44s} {fit.best_epoch:7d} / {fit.epochs:3d}")
    print(f"{'fit seconds':44s} {fit.seconds:12.1f}")
    print(f"{'val RMSE / Kendall tau':44s} {fit.val_rmse:.4f} / {fit.val_kendall_tau:.3f}")
    print(f"{'TEST archs (never seen in fitting)':44s} {result.test_size:12d}")
    print(f"{'TEST RMSE':44s} {result.test_rmse:12.4f}")
    print(f"{'TEST Kendall tau':44s} {result.test_kendall_tau:12.3f}")
    print(f"{'evaluation + fit seconds (this run)':44s} {total_s:12.0f}")
    print(f"target: Kendall tau >= 0.7 on {args.test} held-out archs -> "
          f"{'MET' if result.test_kendall_tau >= 0.7 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
