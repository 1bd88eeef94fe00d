"""Benchmark: the predicted TFLite Micro arena and .tflite size (edgenas.micro_memory) against the real ones.

For N random archs per preset (`tiny` at every resolution, `mobilenetv3` at its three lowest), each subnet
of a supernet with trained-like parameters (every bias and BatchNorm mean drawn at random, as training
leaves them: a zero bias is dropped by the converter, which changes the file) is converted to a full-int8
TFLite file with float I/O exactly as `edgenas export` does, and TFLite Micro's smallest working arena
is found by the export's binary search (`edgenas.export.micro.check_micro`, to 16 bytes). Printed per
preset: the share of archs whose predicted arena is within ±5 % of the measured one (and exactly equal),
the worst under- and over-prediction, the share of files whose predicted size is within ±2 % (and the
worst), and the seconds the batched predictor takes per 10,000 archs, from Arch objects and from the
index arrays the search keeps (its inner loop).

    python tools/bench/micro_memory.py [--archs N] [--preset P] [--json] [--jobs 2] [--out DIR]

Conversions are slow (seconds each) and are kept in OUT/<preset>/ with their measurements, so a re-run
only predicts again (and an interrupted run resumes). Run it under `flock -s /tmp/edgenas-cpu.lock`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DEFAULT_OUT = Path("/tmp/edgenas-bench-memory")
DEFAULT_ARCHS = {"tiny": 100, "mobilenetv3": 30}
LOWEST_RESOLUTIONS = 3  # mobilenetv3 at its lowest resolutions (128, 132, 136: even and odd feature maps)
CALIBRATION_IMAGES = 8


def bench_space(preset: str):
    from edgenas import SearchSpace

    return SearchSpace.preset(preset)


def bench_archs(preset: str, n: int, seed: int = 0) -> list:
    """`n` distinct random archs; mobilenetv3's at its lowest resolutions."""
    space = bench_space(preset)
    rng = np.random.default_rng(seed)
    resolutions = space.resolutions if preset == "tiny" else space.resolutions[:LOWEST_RESOLUTIONS]
    archs, seen = [], set()
    while len(archs) < n:
        arch = space.sample(rng, resolutions=resolutions)
        if arch not in seen:
            seen.add(arch)
            archs.append(arch)
    return archs


_SUPERNETS: dict = {}


def trained_like_supernet(preset: str, seed: int = 0):
    """A supernet whose biases and BatchNorm means are random (trained-like), built once per process."""
    if preset not in _SUPERNETS:
        import torch

        from edgenas import Supernet

        torch.manual_seed(seed)
        supernet = Supernet(bench_space(preset)).eval()
        with torch.no_grad():
            for name, value in list(supernet.named_parameters()) + list(supernet.named_buffers()):
                if name.endswith(("bias", "running_mean")):
                    value.normal_(0.0, 0.1)
        _SUPERNETS[preset] = supernet
    return _SUPERNETS[preset]


def measure(job: tuple[str, int, dict, str]) -> dict:
    """Convert one arch to int8 TFLite (float I/O) and find its smallest TFLite Micro arena; the record is
    written beside the file, so a re-run skips it."""
    preset, index, arch_dict, out = job
    record_path = Path(out) / f"arch-{index:03d}.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("arch") == arch_dict:
            return record
    from edgenas import Arch
    from edgenas.export.micro import check_micro
    from edgenas.export.tflite import export_tflite

    space = bench_space(preset)
    arch = Arch.from_dict(arch_dict, space)
    model = trained_like_supernet(preset).extract(arch).eval()
    images = np.random.default_rng(index).standard_normal(
        (CALIBRATION_IMAGES, space.in_channels, arch.resolution, arch.resolution)).astype(np.float32)
    path = Path(out) / f"arch-{index:03d}.tflite"
    result = export_tflite(model, path, quantization="int8", calibration=images)
    check = check_micro(path)
    record = {"arch": arch_dict, "file_bytes": path.stat().st_size, "arena_bytes": check.arena_bytes,
              "head_bytes": check.activation_bytes, "tail_bytes": check.persistent_bytes, "ok": check.ok,
              "error": check.error, "convert_seconds": round(result.seconds, 2)}
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, record_path)
    return record


def measure_all(preset: str, archs: list, out: Path, jobs: int) -> list[dict]:
    from edgenas.progress import Progress

    out.mkdir(parents=True, exist_ok=True)
    work = [(preset, i, a.to_dict(), str(out)) for i, a in enumerate(archs)]
    records: list[dict | None] = [None] * len(work)
    with Progress(len(work), f"convert + TFLite Micro ({preset})", unit="arch") as bar:
        if jobs <= 1:
            for i, job in enumerate(work):
                records[i] = measure(job)
                bar.update(1)
        else:
            with multiprocessing.get_context("spawn").Pool(jobs) as pool:
                for i, record in enumerate(pool.imap(measure, work)):
                    records[i] = record
                    bar.update(1)
    return [r for r in records if r is not None]


def predict_seconds_per_10000(preset: str, seed: int = 1) -> tuple[float, float]:
    """Wall time (best of 3) of the batched arena and flash prediction for 10,000 random archs, the table built
    beforehand: from `Arch` objects, and from the index arrays a search keeps (what its inner loop calls)."""
    from edgenas.micro_memory import memory_table

    space = bench_space(preset)
    table = memory_table(space)
    archs = space.sample_many(np.random.default_rng(seed), 10_000, unique=False)
    indices = table.indices(archs)
    timings = []
    for call in (lambda: table.compute(archs), lambda: table.from_indices(*indices)):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - t0)
        timings.append(best)
    return timings[0], timings[1]


def summarize(preset: str, archs: list, records: list[dict]) -> dict:
    from edgenas.micro_memory import memory_table

    space = bench_space(preset)
    predicted = memory_table(space).compute(archs)
    ok = [i for i, r in enumerate(records) if r["ok"]]
    arena = np.array([records[i]["arena_bytes"] for i in ok], dtype=np.float64)
    size = np.array([records[i]["file_bytes"] for i in ok], dtype=np.float64)
    arena_error = predicted["arena"][ok] / arena - 1.0
    flash_error = predicted["flash"][ok] / size - 1.0
    return {
        "preset": preset, "archs": len(ok), "failed": len(records) - len(ok),
        "arena_within_5": float(np.mean(np.abs(arena_error) <= 0.05)),
        "worst_under": float(min(0.0, arena_error.min())), "worst_over": float(max(0.0, arena_error.max())),
        "arena_exact": float(np.mean(arena_error == 0.0)),
        "flash_within_2": float(np.mean(np.abs(flash_error) <= 0.02)),
        "flash_worst": float(flash_error[np.argmax(np.abs(flash_error))]),
        "arena_kib_range": [float(arena.min() / 1024), float(arena.max() / 1024)],
        **dict(zip(("seconds_per_10000", "seconds_per_10000_indices"), predict_seconds_per_10000(preset))),
        "rows": [{"arch": str(archs[i]), "measured_arena": int(records[i]["arena_bytes"]),
                  "predicted_arena": int(predicted["arena"][i]), "file_bytes": int(records[i]["file_bytes"]),
                  "predicted_flash": int(predicted["flash"][i])} for i in ok],
    }


def print_table(results: list[dict]) -> None:
    header = (f"{'preset':<12} {'archs':>5} {'arena ±5%':>9} {'exact':>6} {'worst under':>11} {'worst over':>10} "
              f"{'flash ±2%':>9} {'flash worst':>11} {'measured arena (KiB)':>21} {'s/10k archs':>11} "
              f"{'s/10k idx':>9}")
    print(header)
    print("-" * len(header))
    for r in results:
        lo, hi = r["arena_kib_range"]
        print(f"{r['preset']:<12} {r['archs']:>5} {r['arena_within_5']:>9.1%} {r['arena_exact']:>6.1%} "
              f"{r['worst_under']:>+11.2%} {r['worst_over']:>+10.2%} {r['flash_within_2']:>9.1%} "
              f"{r['flash_worst']:>+11.2%} {f'{lo:.1f}-{hi:.1f}':>21} {r['seconds_per_10000']:>11.3f} "
              f"{r['seconds_per_10000_indices']:>9.3f}")
        if r["failed"]:
            print(f"  {r['failed']} arch(s) did not run in TFLite Micro")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=None,
                        help="archs per preset (default: 100 for tiny, 30 for mobilenetv3)")
    parser.add_argument("--preset", choices=sorted(DEFAULT_ARCHS), action="append",
                        help="preset to bench (repeatable; default both)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per preset instead of the table")
    parser.add_argument("--jobs", type=int, default=2, help="conversion processes (default %(default)s; at most 2 here)")
    parser.add_argument("--seed", type=int, default=0, help="arch sampling seed (default %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where conversions are kept (default %(default)s)")
    parser.add_argument("--rows", action="store_true", help="also print every arch's figures")
    args = parser.parse_args()
    if args.archs is not None and args.archs < 1:
        print(f"--archs {args.archs} must be at least 1", file=sys.stderr)
        return 2
    results = []
    for preset in args.preset or ["tiny", "mobilenetv3"]:
        archs = bench_archs(preset, args.archs or DEFAULT_ARCHS[preset], args.seed)
        records = measure_all(preset, archs, args.out / f"{preset}-seed{args.seed}", max(1, args.jobs))
        results.append(summarize(preset, archs, records))
    if args.json:
        for r in results:
            print(json.dumps({k: v for k, v in r.items() if k != "rows"}))
        return 0
    print_table(results)
    if args.rows:
        for r in results:
            print(f"\n{r['preset']}: arch, measured arena, predicted, error; file bytes, predicted, error")
            for row in r["rows"]:
                print(f"  {row['arch']:<60} {row['measured_arena']:>9} {row['predicted_arena']:>9} "
                      f"{row['predicted_arena'] / row['measured_arena'] - 1:>+7.2%} {row['file_bytes']:>9} "
                      f"{row['predicted_flash']:>9} {row['predicted_flash'] / row['file_bytes'] - 1:>+7.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
