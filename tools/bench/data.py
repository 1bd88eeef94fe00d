"""Benchmark the streamed image folder: the loader alone and training steps on the mobilenetv3 space, at 128 and 224 px,
with 0, 1 and 2 DataLoader workers, on generated folders of 500 and 4,000 JPEG photos of 256-400 px.

Prints, per configuration: images/s of the loader alone, seconds per training step (largest subnet, SGD), the
fraction of the step time spent waiting for the next batch, and the peak resident memory of the training process and
of its largest worker (each configuration runs in a fresh process, so peaks do not carry over).

    nice -n 5 python tools/bench/data.py                 # the table (a few minutes on 2 cores)
    python tools/bench/data.py --sizes 500 --steps 3     # quicker

The folders are written once under /tmp/edgenas-bench-photos-N (JPEG quality 90, 5 classes of textured images).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make_folder(root: Path, n: int, classes: int = 5, seed: int = 0) -> Path:
    """`n` JPEGs of 256-400 px a side (each class a texture of its own frequency and direction), written once."""
    import numpy as np
    from PIL import Image

    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % classes
        w, h = (int(v) for v in rng.integers(256, 401, 2))
        yy, xx = np.mgrid[0:h, 0:w]
        wave = 0.5 + 0.4 * np.sin(2 * np.pi * (c + 1) / 60 * (xx * np.cos(c) + yy * np.sin(c)) + rng.uniform(0, 6))
        img = np.stack([wave * rng.uniform(0.5, 1) for _ in range(3)], -1) + rng.normal(0, 0.08, (h, w, 3))
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / f"class{c}" / f"{i}.jpg", quality=90)
    done.write_text("")
    return root


def one(folder: Path, resolution: int, workers: int, steps: int, batch: int, threads: int, loader_batches: int) -> dict:
    """One configuration, in this process: the loader alone, then training steps; peak memory at the end."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from edgenas.data import StepResolutions, load_dataset
    from edgenas.space import SearchSpace
    from edgenas.supernet import Supernet

    torch.set_num_threads(threads)
    before = _rss_mib()
    dataset = load_dataset(f"folder:{folder}", seed=0)
    dataset_mib = _rss_mib() - before  # what the dataset itself holds: the file list, labels and split
    steps_at = StepResolutions(0, 0, (resolution,))

    def loader():
        return dataset.loader("train", batch_size=batch, shuffle=True, augment=True, seed=0, drop_last=True,
                              step_resolution=steps_at, workers=workers).batches_from(0)

    batches = loader()
    next(batches)  # workers started, first batch in
    t0 = time.perf_counter()
    for _ in range(loader_batches):  # well past what the workers prefetch (4 batches each)
        next(batches)
    loader_rate = loader_batches * batch / (time.perf_counter() - t0)
    del batches

    space = SearchSpace.preset("mobilenetv3", num_classes=dataset.num_classes)
    net = Supernet(space).to(memory_format=torch.channels_last).train()
    net.set_active(space.largest(resolution))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    batches = loader()
    waited = stepped = 0.0
    for step in range(steps + 1):  # the first step warms up (workers start, buffers of new shapes): not counted
        t0 = time.perf_counter()
        x, y = next(batches)
        t1 = time.perf_counter()
        logits = net(x.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t2 = time.perf_counter()
        if step:
            waited += t1 - t0
            stepped += t2 - t0
    del batches
    return {"images": sum(dataset.size(s) for s in ("train", "val", "holdout")), "resolution": resolution,
            "workers": workers, "loader_img_s": round(loader_rate, 1), "step_s": round(stepped / steps, 3),
            "train_img_s": round(steps * batch / stepped, 1), "wait": round(waited / stepped, 4),
            "dataset_mib": round(dataset_mib, 1), "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "worker_peak_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "loss": round(float(np.asarray(loss.item())), 3)}


def _rss_mib() -> float:
    """This process's resident memory now (Linux), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 4000])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--loader-batches", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=3, metavar=("FOLDER", "RES", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(Path(args.one[0]), int(args.one[1]), int(args.one[2]), args.steps, args.batch,
                             args.threads, args.loader_batches)))
        return
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; batch {args.batch}, {args.steps} timed "
          f"steps, {args.threads} torch threads", file=sys.stderr)
    rows = []
    for size in args.sizes:
        folder = make_folder(Path(f"/tmp/edgenas-bench-photos-{size}"), size)
        for res in args.resolutions:
            for workers in args.workers:
                out = subprocess.run([sys.executable, __file__, "--one", str(folder), str(res), str(workers),
                                      "--steps", str(args.steps), "--batch", str(args.batch),
                                      "--threads", str(args.threads), "--loader-batches", str(args.loader_batches)],
                                     capture_output=True, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
                if out.returncode:
                    sys.exit(f"{size} images {res} px {workers} workers failed:\n{out.stderr[-3000:]}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"  {size} images {res} px, {workers} workers: {r['step_s']} s/step, wait {r['wait']:.1%}, "
                      f"load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    print("| images | px | workers | loader img/s | s/step | train img/s | waiting on data | dataset MiB | peak RSS MiB "
          "(main + largest worker) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['images']} | {r['resolution']} | {r['workers']} | {r['loader_img_s']} | {r['step_s']} | "
              f"{r['train_img_s']} | {r['wait']:.1%} | {r['dataset_mib']} | {r['peak_mib']} + {r['worker_peak_mib']} |")
    print(f"load average {os.getloadavg()[0]:.2f} at the end", file=sys.stderr)


if __name__ == "__main__":
    main()
