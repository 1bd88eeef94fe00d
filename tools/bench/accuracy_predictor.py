"""Benchmark: how well the accuracy predictor ranks subnets of a supernet trained on `shapes`.

Trains (or resumes) a small supernet on `shapes`, evaluates sampled subnets on the holdout split
with BN recalibration (stored, so a re-run only fits), fits the MLP on all but the test archs and
prints RMSE and Kendall tau on the held-out archs. Sized to run in about 15 minutes on 2 CPU cores.

    python tools/bench/accuracy_predictor.py [--work DIR] [--samples 700] [--test 200]

The work folder (checkpoint and store) is reused by tools/bench/search.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DEFAULT_WORK = Path("/tmp/edgenas-bench")
DATASET = "shapes:samples=4000"  # 2880 train, 800 val, 320 holdout images
EPOCH_SCALE = 0.5  # of the `tiny` preset's progressive-shrinking schedule (8 epochs in all)
BN_BATCHES = 2  # 64-image training batches for each subnet's BN recalibration


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
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="evaluation processes")
    args = parser.parse_args(argv)

    from edgenas.accuracy.fit import fit_predictor

    args.work.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        ckpt, train_s = args.checkpoint, 0.0
    else:
        ckpt, train_s = ensure_supernet(args.work)
    t0 = time.perf_counter()
    print(f"supernet ready ({train_s:.0f} s of training now); evaluating subnets", flush=True)
    result = fit_predictor(ckpt, samples=args.samples, test=args.test, seed=args.seed, bn_batches=BN_BATCHES,
                           workers=args.workers, store_path=args.work / "store.sqlite",
                           out=ckpt.parent / "accuracy_predictor.npz")
    total_s = time.perf_counter() - t0
    fit = result.fit
    from edgenas.store import Store
    from edgenas.train.checkpoint import load_checkpoint_info

    info = load_checkpoint_info(ckpt)
    with Store(args.work / "store.sqlite") as store:
        rows = store.evaluations(info["sha256"], "holdout", "top1")
    import numpy as np

    acc = np.array([r.value for r in rows])
    secs = np.array([r.extra.get("seconds", np.nan) for r in rows], dtype=float)
    print()
    print(f"supernet: {ckpt} (dataset {info['dataset']}, phase {info['phase_name']}, step {info['global_step']}, "
          f"complete {info['complete']}; trained now in {train_s:.0f} s); BN recalibration on {BN_BATCHES} batches")
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
