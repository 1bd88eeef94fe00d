"""Benchmark: what limits the noise ceiling of the accuracy measurement, and which way of measuring raises it
(issue 43, part 2). Never by choosing the subnets: the judged subnets are those of `edgenas predictor eval
--holdout N --seed S` (uniform, none the store's predictor saw).

For each subnet, per image of val + holdout (every image no training step saw), the log-probabilities of all
classes are taken after BatchNorm recalibration, under these measurements:
- `bn8/s0`: 8 training batches of 64 (the eval's default), batch order seed 0; `bn8/s1` the same with seed 1
  (the BN noise: tau between the two on the same images);
- `bnall/s0`, `bnall/s1`: every training image in the calibration (seeds change only the batching);
- `tta`: `bn8/s0` on 3 fixed views of each image (identity and 2 diagonal shifts of 1/8 of the image), averaged
  (the same views for every subnet).
Per measurement the statistics are: top-1, the mean log-likelihood of the true class (`ll`), and the mean margin
(true-class logit minus the best other). The noise ceiling of a statistic is Kendall tau between the subnets'
values on two disjoint stratified halves of the images (mean of 20 halvings); `-> top-1` is tau between the
statistic on one half and top-1 on the other (does it rank the subnets' top-1 on unseen images better than top-1
itself does?). The last table is the top-1 ceiling against the number of images per half (subsamples), the
curve that says what larger val/holdout splits would give.

    python tools/bench/measurement_ceiling.py --supernet DEMO/supernet/supernet.pt --store DEMO/store.sqlite
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HALVINGS = 20
SHIFTS = ((0.0, 0.0), (0.25, 0.25), (-0.25, -0.25))  # affine units: 1/8 of the image, diagonally


def _views(x, size: int, shifts):
    import torch
    import torch.nn.functional as F

    out = []
    for tx, ty in shifts:
        theta = torch.tensor([[1.0, 0.0, tx], [0.0, 1.0, ty]]).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
        out.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False))
    return out


def log_probs(supernet, dataset, archs, *, bn_batches: int, seed: int, shifts=((0.0, 0.0),)):
    """(archs, images, classes) log-probabilities on val + holdout, averaged over `shifts` views (probabilities)."""
    import torch

    from edgenas.train.bn import preserved_bn, recalibrate_bn

    xs = [torch.from_numpy(dataset.arrays(s)[0]) for s in ("val", "holdout")]
    x = torch.cat(xs)
    out = []
    calibration: dict[int, list] = {}
    with preserved_bn(supernet), torch.no_grad():
        for arch in archs:
            r = arch.resolution
            if r not in calibration:
                loader = dataset.loader("train", batch_size=64, resolution=r, shuffle=True, seed=seed)
                calibration[r] = [b for i, b in zip(range(bn_batches), loader)]
                calibration[r] = [(_views_cache(b[0]), b[1]) for b in calibration[r]]
            supernet.set_active(arch)
            recalibrate_bn(supernet, calibration[r])
            supernet.eval()
            p = 0.0
            for v in _views(x, r, shifts):
                p = p + torch.softmax(supernet(v.contiguous(memory_format=torch.channels_last)), 1)
            out.append(torch.log(p / len(shifts) + 1e-12).numpy())
    return np.stack(out)


def _views_cache(x):
    import torch

    return x.contiguous(memory_format=torch.channels_last)


def statistics(lp: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per arch, per image: correct (0/1), log-likelihood of the true class, margin (true minus best other)."""
    n = np.arange(len(labels))
    true = lp[:, n, labels]
    other = lp.copy()
    other[:, n, labels] = -np.inf
    return {"top1": (lp.argmax(2) == labels).astype(float), "ll": true, "margin": true - other.max(2)}


def halves(labels: np.ndarray, draw: int, size: int | None = None):
    rng = np.random.default_rng([0, 11, draw])
    a, b = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        h = len(idx) // 2
        k = h if size is None else max(1, int(round(size * len(idx) / len(labels))))
        a.append(idx[:k])
        b.append(idx[h:h + k])
    return np.concatenate(a), np.concatenate(b)


def ceiling(stat: np.ndarray, labels: np.ndarray, target: np.ndarray | None = None, size: int | None = None) -> float:
    from edgenas.accuracy.predictor import kendall_tau

    target = stat if target is None else target
    taus = []
    for d in range(HALVINGS):
        a, b = halves(labels, d, size)
        taus.append(kendall_tau(stat[:, a].mean(1), target[:, b].mean(1)))
    return float(np.mean(taus))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--holdout", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="folder keeping each measurement's log-probabilities (.npy), so a "
                    "re-run only analyses")
    ap.add_argument("--first", type=int, default=None,
                    help="measure only the first N of the subnets (a quicker, noisier figure on the same ones)")
    ap.add_argument("--measurements", default="bn8/s0,bnall/s0,bn8/s1,tta,bnall/s1",
                    help="which measurements to take (comma-separated; bn8/s0 always)")
    args = ap.parse_args()

    import torch

    from edgenas.accuracy.evaluation import fitted_archs, unseen_archs
    from edgenas.accuracy.measure import SupernetEvaluator
    from edgenas.accuracy.predictor import free_cores, kendall_tau
    from edgenas.store import Store

    torch.set_num_threads(free_cores())
    ev = SupernetEvaluator(args.supernet, "holdout", 8)
    with Store(args.store) as store:
        archs = unseen_archs(ev.supernet.space, args.holdout, args.seed, fitted_archs(store, ev.info["sha256"]))
    archs = archs[: args.first]
    ds = ev.dataset
    labels = np.concatenate([ds.labels["val"], ds.labels["holdout"]])
    train_batches = -(-ds.size("train") // 64)
    print(f"digits splits: train {ds.size('train')}, val {ds.size('val')}, holdout {ds.size('holdout')}; "
          f"{len(archs)} subnets (predictor eval --holdout {args.holdout} --seed {args.seed})")
    runs = {}
    cache = Path(args.cache) if args.cache else None
    for name, bn, seed, shifts in [("bn8/s0", 8, 0, SHIFTS[:1]), ("bnall/s0", train_batches, 0, SHIFTS[:1]),
                                   ("bn8/s1", 8, 1, SHIFTS[:1]), ("tta", 8, 0, SHIFTS),
                                   ("bnall/s1", train_batches, 1, SHIFTS[:1])]:
        if name != "bn8/s0" and name not in args.measurements.split(","):
            continue
        t0 = time.perf_counter()
        count = args.holdout if args.first is None else f"{args.holdout}first{args.first}"
        file = cache / f"{name.replace('/', '_')}-{count}-{args.seed}.npy" if cache else None
        if file is not None and file.is_file():
            lp = np.load(file, allow_pickle=False)
        elif cache is not None and (whole := cache / f"{name.replace('/', '_')}-{args.holdout}-{args.seed}.npy").is_file():
            lp = np.load(whole, allow_pickle=False)[: len(archs)]  # the first N of all the subnets' measurement
        else:
            lp = log_probs(ev.supernet, ds, archs, bn_batches=bn, seed=seed, shifts=shifts)
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
                np.save(file, lp, allow_pickle=False)
        runs[name] = statistics(lp, labels)
        print(f"  measured {name} in {time.perf_counter() - t0:.0f} s", flush=True)

    top1 = runs["bn8/s0"]["top1"].mean(1)
    se = np.sqrt(top1 * (1 - top1) / len(labels))
    d = runs["bn8/s0"]["top1"][:, None, :] - runs["bn8/s0"]["top1"][None, :, :]
    iu = np.triu_indices(len(archs), 1)
    paired_se = (d.std(2, ddof=1) / np.sqrt(len(labels)))[iu]
    diffs = np.abs(top1[:, None] - top1[None, :])[iu]
    print(f"\ntop-1 over the {len(archs)} subnets: {100 * top1.min():.1f}-{100 * top1.max():.1f} %, sd "
          f"{100 * top1.std(ddof=1):.2f} points; per-subnet SE {100 * np.median(se):.2f} (all {len(labels)} images), "
          f"{100 * np.median(se) * np.sqrt(2):.2f} (a half); paired-difference SE median "
          f"{100 * np.median(paired_se):.2f} points; median |difference| of a pair {100 * np.median(diffs):.2f} "
          f"points; pairs whose difference exceeds 2 paired SE: {np.mean(diffs > 2 * paired_se):.0%}")

    print("\nmeasurement   ceiling top-1   ceiling ll   ceiling margin   ll -> top-1   margin -> top-1")
    for name, s in runs.items():
        print(f"{name:<12}  {ceiling(s['top1'], labels):13.3f}   {ceiling(s['ll'], labels):10.3f}   "
              f"{ceiling(s['margin'], labels):14.3f}   {ceiling(s['ll'], labels, s['top1']):11.3f}   "
              f"{ceiling(s['margin'], labels, s['top1']):15.3f}")
    base = runs["bn8/s0"]["top1"]
    for name in ("tta", "bnall/s0"):
        if name in runs:
            print(f"{name} top-1 -> top-1 of bn8/s0 on the other half: {ceiling(runs[name]['top1'], labels, base):.3f}")

    print("\nBN noise: tau between two calibrations on the same (all) images")
    for stat in ("top1", "ll"):
        for a, b in (("bn8/s0", "bn8/s1"), ("bnall/s0", "bnall/s1"), ("bn8/s0", "bnall/s0")):
            if a not in runs or b not in runs:
                continue
            print(f"  {stat:<5} {a} vs {b}: {kendall_tau(runs[a][stat].mean(1), runs[b][stat].mean(1)):.3f}")

    print("\ntop-1 ceiling (bn8/s0) against images per half (subsampled, stratified)")
    for size in (35, 70, 140, len(labels) // 2):
        print(f"  {size:4d} images per half: top-1 {ceiling(base, labels, size=size):.3f}   "
              f"ll {ceiling(runs['bn8/s0']['ll'], labels, size=size):.3f}   "
              f"ll -> top-1 {ceiling(runs['bn8/s0']['ll'], labels, base, size=size):.3f}")


if __name__ == "__main__":
    main()
