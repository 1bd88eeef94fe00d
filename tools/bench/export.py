"""Benchmark: export random subnets of a digits supernet to ONNX, TFLite fp32 and int8; verify; run in TFLite Micro.

For each arch it prints the fidelity figures the export checks (fp32 max abs difference, int8
top-1 agreement with fp32 and accuracy drop, judged as the export judges it: paired, on the validation
and holdout images, with its 95 % interval), the smallest TFLite Micro arena beside the analytic
peak-activation estimate, and the conversion time per format; then the int8 drop's distribution.

    python tools/bench/export.py --supernet /tmp/export-digits/supernet.pt --archs 10
    python tools/bench/export.py --supernet edgenas-demo/supernet/supernet.pt --archs 50 --bn-batches 4 \
        --formats tflite-int8 --no-micro        # the int8 drop over 50 random subnets of the demo's supernet

Each arch's export is kept in OUT/arch-<i>/ (card.json holds every figure); a re-run reuses
finished exports, so an interrupted run resumes. Timings depend on machine load: say so when
reporting them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", default="/tmp/export-digits/supernet.pt", help="supernet checkpoint (digits)")
    parser.add_argument("--archs", type=int, default=10, help="random archs to export (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="arch sampling seed (default %(default)s)")
    parser.add_argument("--out", default="/tmp/edgenas-bench-export", help="output folder (default %(default)s)")
    parser.add_argument("--calibration-images", type=int, default=200)
    parser.add_argument("--bn-batches", type=int, default=8, help="BatchNorm recalibration batches (the demo: 4)")
    parser.add_argument("--formats", default="onnx,tflite,tflite-int8", help="formats (default %(default)s)")
    parser.add_argument("--no-micro", action="store_true", help="skip the TFLite Micro check")
    parser.add_argument("--force", action="store_true", help="export again even where a card exists")
    args = parser.parse_args()

    from edgenas.data import load_dataset
    from edgenas.export.subnet import ExportCheckError, ExportOptions, dataset_arrays, export_subnet, prepare_subnet
    from edgenas.progress import Progress
    from edgenas.train.checkpoint import load_checkpoint_info, load_supernet

    info = load_checkpoint_info(args.supernet)
    supernet = load_supernet(args.supernet)
    space = supernet.space
    dataset = load_dataset(info["dataset"], seed=info["seed"])
    archs = space.sample_many(np.random.default_rng(args.seed), args.archs)
    options = ExportOptions(calibration_images=args.calibration_images, seed=args.seed, bn_batches=args.bn_batches,
                            formats=args.formats, micro=not args.no_micro, litert_fallback=False)
    rows = []
    with Progress(len(archs), "export bench", unit="arch") as bar:
        for i, arch in enumerate(archs):
            out = Path(args.out) / f"arch-{i:02d}"
            card_path = out / "card.json"
            fresh = args.force or not card_path.is_file() or json.loads(card_path.read_text()).get("arch") != arch.to_dict()
            if fresh:
                model = prepare_subnet(supernet, arch, dataset, seed=args.seed, bn_batches=args.bn_batches)
                calibration, _ = dataset_arrays(dataset, "train", arch.resolution, limit=args.calibration_images,
                                                shuffle=True, seed=args.seed)
                val_x, val_y = dataset_arrays(dataset, "val", arch.resolution)
                hold_x, hold_y = dataset_arrays(dataset, "holdout", arch.resolution)
                try:
                    export_subnet(model, out, space=space, arch=arch, calibration=calibration, val_images=val_x,
                                  val_labels=val_y, options=options, lineage={"supernet": info["sha256"]},
                                  log=lambda m: None, holdout_images=hold_x, holdout_labels=hold_y)
                except ExportCheckError as exc:
                    print(f"arch {i}: {exc}", file=sys.stderr)
            rows.append(json.loads(card_path.read_text()))
            bar.update(1)

    def fig(value, spec, missing="-"):
        return missing if value is None else format(value, spec)

    header = (f"{'#':>2} {'arch':<44} {'MMACs':>6} {'acc':>6} {'fp32 diff':>9} {'onnx diff':>9} {'int8 agree':>10} "
              f"{'int8 drop':>9} {'95 % interval':>15} {'check':>5} {'TFLM arena':>10} {'analytic':>9} "
              f"{'t onnx':>6} {'t fp32':>6} {'t int8':>6}")
    images = {c["format"]: c["images"] for c in rows[0]["verification"]}.get("tflite-int8") if rows else 0
    print("\nExport of random subnets of", args.supernet, f"({dataset.spec}, {len(rows)} archs; int8 judged on "
          f"{images} validation + holdout images, fp32 files on {rows[0]['accuracy']['images'] if rows else 0} "
          f"validation images; BN recalibrated on {args.bn_batches} batches)")
    print(header)
    print("-" * len(header))
    for i, card in enumerate(rows):
        checks = {c["format"]: c for c in card["verification"]}
        int8, tfl, onnx = checks.get("tflite-int8", {}), checks.get("tflite", {}), checks.get("onnx", {})
        arena = card["sram"]["tflm_arena_bytes"]
        peak = card["sram"]["analytic_peak_int8_bytes"]
        t = card["conversion_seconds"]
        low, high = int8.get("drop_interval_points") or (None, None)
        print(f"{i:>2} {card['arch_str'][:44]:<44} {card['macs'] / 1e6:>6.2f} {card['accuracy']['pytorch']:>6.1%} "
              f"{fig(tfl.get('max_abs_diff'), '.2e'):>9} {fig(onnx.get('max_abs_diff'), '.2e'):>9} "
              f"{fig(int8.get('top1_agreement'), '.1%'):>10} {fig(int8.get('accuracy_drop_points'), '+.2f'):>9} "
              f"{fig(low, '+.2f') + ' to ' + fig(high, '+.2f'):>15} "
              f"{('pass' if int8.get('passed') else 'FAIL') if int8 else '-':>5} "
              f"{'-' if arena is None else f'{arena / 1024:.1f}K':>10} {peak / 1024:>8.1f}K "
              f"{fig(t.get('onnx'), '.2f'):>6} {fig(t.get('tflite'), '.1f'):>6} {fig(t.get('tflite-int8'), '.1f'):>6}")
    print("-" * len(header))
    by_format = [{c["format"]: c for c in r["verification"]} for r in rows]
    fp32 = [c["tflite"]["max_abs_diff"] for c in by_format if "tflite" in c]
    if fp32:
        print(f"TFLite fp32 max abs diff: worst {max(fp32):.2e} (target <= 1e-4): {'PASS' if max(fp32) <= 1e-4 else 'FAIL'}")
    int8s = [c["tflite-int8"] for c in by_format if "tflite-int8" in c]
    if int8s:
        agree = [c["top1_agreement"] for c in int8s]
        drop = sorted(c["accuracy_drop_points"] for c in int8s)
        within = sum(1 for d in drop if d <= 1.0)
        print(f"int8 top-1 agreement with fp32: worst {min(agree):.1%}, median {statistics.median(agree):.1%} "
              f"(check: >= 98 %: {sum(1 for a in agree if a >= 0.98)}/{len(agree)})")
        print(f"int8 accuracy drop (points): median {statistics.median(drop):+.2f}, "
              f"90th percentile {drop[int(0.9 * (len(drop) - 1))]:+.2f}, worst {drop[-1]:+.2f}; within 1 point: "
              f"{within}/{len(drop)} ({within / len(drop):.0%}; target >= 98 %)")
        print(f"int8 check passed (agreement and the paired drop's interval): "
              f"{sum(1 for c in int8s if c['passed'])}/{len(int8s)}")
    tflm = [r for r in rows if r["sram"]["tflm"]]
    if tflm:
        micro_ok = sum(1 for r in tflm if r["sram"]["tflm"]["ok"])
        ratios = [r["sram"]["tflm_arena_bytes"] / r["sram"]["analytic_peak_int8_bytes"] for r in tflm
                  if r["sram"]["tflm_arena_bytes"]]
        print(f"TFLite Micro: {micro_ok}/{len(tflm)} int8 models load and run; arena / analytic peak: "
              f"median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}")
    for fmt in ("onnx", "tflite", "tflite-int8"):
        times = [r["conversion_seconds"][fmt] for r in rows if fmt in r["conversion_seconds"]]
        if times:
            print(f"conversion time {fmt:<11}: median {statistics.median(times):6.2f} s, max {max(times):6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
