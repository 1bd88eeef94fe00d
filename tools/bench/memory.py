"""Benchmark: peak memory of a whole training on a folder of photos, against the folder's size.

For each folder size (default 500, 4,000 and 20,000 photos of 6 classes, 256 px JPEG, written once under OUT and
kept), `edgenas train` runs a 12-step MobileNetV3-space training at batch 16 on it (its phase summaries, the
largest network alone beside it and the final check of seven subnets included) while this script samples, every
0.2 s, the resident memory of the training process and of every process under it (data workers, the comparison
run, the fork server). Printed per size: the peak of the training process (its kernel high-water mark, VmHWM),
the peak of the whole tree, the peak during the training steps and during the final check (where the bytes are:
the stage the peak falls in), the validation images, the seconds, and the ratio of each peak to the smallest
folder's. Memory that grows with the folder shows as a ratio above 1; the goal is at most 1.10 at 4,000 photos.

    python tools/bench/memory.py [--photos 500,4000,20000] [--steps 12] [--batch-size 16] [--json] [--out DIR]

Timing is not the point here: the seconds are shown only to say how long a size takes on this machine. Folders
above 500 photos reuse the first 500 images' contents (hard links, one file each), so writing 20,000 takes
seconds; decoding and memory per photo are those of a distinct file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from make_textures import CLASSES, texture  # noqa: E402

DEFAULT_OUT = Path("/tmp/edgenas-bench-train-memory")
DISTINCT = 500  # distinct images written; larger folders link to them
PHASE_DONE = "done:"  # the trainer's line at each phase's end ("edgenas train: phase NAME done: ..."); after the
# last one comes the final check (BN recalibration and evaluation of seven subnets, the comparison's result)


def photo_folder(out: Path, photos: int, size: int = 256) -> Path:
    """A folder of `photos` JPEG photos in 6 class sub-folders, written once (a `.complete` file marks it done)."""
    folder = out / f"photos-{photos}"
    if (folder / ".complete").exists():
        return folder
    base = out / f"distinct-{size}"
    if not (base / ".complete").exists():
        from PIL import Image

        rng = np.random.default_rng(0)
        for kind in CLASSES:
            (base / kind).mkdir(parents=True, exist_ok=True)
            for i in range(DISTINCT // len(CLASSES) + 1):
                Image.fromarray(texture(kind, size, rng, 0.15)).save(base / kind / f"{i:05d}.jpg", quality=90)
        (base / ".complete").write_text("")
    per_class = photos // len(CLASSES)
    for kind in CLASSES:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        sources = sorted((base / kind).glob("*.jpg"))
        for i in range(per_class):
            target = folder / kind / f"{i:06d}.jpg"
            if not target.exists():
                os.link(sources[i % len(sources)], target)
    (folder / ".complete").write_text("")
    return folder


def _rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in KiB; (0, 0) once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return 0, 0


def _tree(pid: int) -> list[int]:
    """`pid` and every process under it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[-1].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def measure(folder: Path, run_dir: Path, steps: int, batch_size: int) -> dict:
    """One training on `folder`, sampled; the peaks in MiB."""
    argv = [sys.executable, "-m", "edgenas.cli", "train", "--dataset", f"folder:{folder}", "--space", "mobilenetv3",
            "--total-steps", str(steps), "--batch-size", str(batch_size), "--out", str(run_dir), "--no-progress",
            "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh training each time (an earlier one may have been cut off)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[tuple[float, str]] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append((time.perf_counter(), line))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    samples: list[tuple[float, int]] = []
    tree_peak = hwm = 0
    while proc.poll() is None:
        rss, hwm_now = _rss_kb(proc.pid)
        hwm = max(hwm, hwm_now)
        samples.append((time.perf_counter(), rss))
        tree_peak = max(tree_peak, sum(_rss_kb(p)[0] for p in _tree(proc.pid)))
        time.sleep(0.2)
    stdout = proc.stdout.read()
    reader.join(5)
    seconds = time.perf_counter() - t0
    phase_ends = [t for t, line in lines if line.startswith("edgenas train: phase ") and PHASE_DONE in line]
    last_phase_end = phase_ends[-1] if phase_ends else float("inf")
    peaks = {"training": max([r for t, r in samples if t <= last_phase_end], default=0),
             "final check": max([r for t, r in samples if t > last_phase_end], default=0)}
    summary = {}
    try:
        summary = json.loads(stdout)
    except json.JSONDecodeError:
        pass
    if proc.returncode not in (0, 1):  # 1: the training check failed, which says nothing of memory
        tail = "".join(line for _, line in lines[-20:])
        raise SystemExit(f"memory.py: the training on {folder} failed (exit {proc.returncode}):\n{tail}")
    return {"photos": sum(1 for _ in folder.glob("*/*.jpg")), "peak_mib": round(hwm / 1024, 1),
            "tree_peak_mib": round(tree_peak / 1024, 1), "training_mib": round(peaks["training"] / 1024, 1),
            "final_check_mib": round(peaks["final check"] / 1024, 1),
            "val_images": summary.get("val_size"),
            "seconds": round(seconds, 1), "exit": proc.returncode}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default="500,4000,20000", help="folder sizes (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        sizes = [int(n) for n in args.photos.split(",")]
    except ValueError:
        print(f"memory.py: --photos {args.photos!r}: expected sizes separated by commas, e.g. 500,4000", file=sys.stderr)
        return 2
    rows = []
    for n in sizes:
        folder = photo_folder(args.out, n)
        row = measure(folder, args.out / f"run-{n}", args.steps, args.batch_size)
        rows.append(row)
        print(f"memory.py: {n} photos done: peak {row['peak_mib']} MiB", file=sys.stderr)
    base = rows[0]["peak_mib"] or 1.0
    for row in rows:
        row["ratio"] = round(row["peak_mib"] / base, 3)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'photos':>7} {'val':>5} {'peak MiB':>9} {'ratio':>6} {'steps MiB':>10} {'final check MiB':>16} "
          f"{'tree MiB':>9} {'seconds':>8}")
    for r in rows:
        print(f"{r['photos']:>7} {str(r['val_images'] or '?'):>5} {r['peak_mib']:>9.1f} {r['ratio']:>6.3f} "
              f"{r['training_mib']:>10.1f} {r['final_check_mib']:>16.1f} {r['tree_peak_mib']:>9.1f} {r['seconds']:>8.1f}")
    print("peak: the training process's high-water mark; steps / final check: its largest sampled RSS in each stage; "
          "tree: the training process and every process under it, summed at the fullest sample")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
