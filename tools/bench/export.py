"""Benchmark: export random subnets of a digits supernet to ONNX, TFLite fp32 and int8; verify; run in TFLite Micro.

For each arch it prints the fidelity figures the export checks (fp32 max abs difference, int8
top-1 agreement with fp32 and accuracy drop), the smallest TFLite Micro arena beside the analytic
peak-activation estimate, and the conversion time per format.

    python tools/bench/export.py --supernet /tmp/export-digits/supernet.pt --archs 10

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
    parser.add_argument("--force", action="store_true", help="export again even where a card exists")
    args = parser.parse_args()

    from edgenas.data import load_dataset
    from edgenas.export.pipeline import ExportCheckError, ExportOptions, dataset_arrays, export_subnet, prepare_subnet
    from edgenas.progress import Progress
    from edgenas.train.checkpoint import load_checkpoint_info, load_supernet

    info = load_checkpoint_info(args.supernet)
    supernet = load_supernet(args.supernet)
    space = supernet.space
    dataset = load_dataset(info["dataset"], seed=info["seed"])
    archs = space.sample_many(np.random.default_rng(args.seed), args.archs)
    options = ExportOptions(calibration_images=args.calibration_images, seed=args.seed)
    rows = []
    with Progress(len(archs), "export bench", unit="arch") as bar:
        for i, arch in enumerate(archs):
            out = Path(args.out) / f"arch-{i:02d}"
            card_path = out / "card.json"
            fresh = args.force or not card_path.is_file() or json.loads(card_path.read_text()).get("arch") != arch.to_dict()
            if fresh:
                model = prepare_subnet(supernet, arch, dataset, seed=args.seed)
                calibration, _ = dataset_arrays(dataset, "train", arch.resolution, limit=args.calibration_images,
                                                shuffle=True, seed=args.seed)
                val_x, val_y = dataset_arrays(dataset, "val", arch.resolution)
                try:
                    export_subnet(model, out, space=space, arch=arch, calibration=calibration, val_images=val_x,
                                  val_labels=val_y, options=options, lineage={"supernet": info["sha256"]},
                                  log=lambda m: None)
                except ExportCheckError as exc:
                    print(f"arch {i}: {exc}", file=sys.stderr)
            rows.append(json.loads(card_path.read_text()))
            bar.update(1)

    header = (f"{'#':>2} {'arch':<44} {'MMACs':>6} {'acc':>6} {'fp32 diff':>9} {'onnx diff':>9} {'int8 agree':>10} "
              f"{'int8 drop':>9} {'TFLM arena':>10} {'(tensors':>8} {'+ persist)':>10} {'analytic':>9} {'ratio':>5} "
              f"{'t onnx':>6} {'t fp32':>6} {'t int8':>6}")
    print("\nExport of random subnets of", args.supernet, f"({dataset.spec}, {len(rows)} archs, "
          f"{rows[0]['accuracy']['images'] if rows else 0} val images each)")
    print(header)
    print("-" * len(header))
    for i, card in enumerate(rows):
        checks = {c["format"]: c for c in card["verification"]}
        int8 = checks["tflite-int8"]
        arena = card["sram"]["tflm_arena_bytes"]
        peak = card["sram"]["analytic_peak_int8_bytes"]
        t = card["conversion_seconds"]
        head, tail = _arena_split(args.out, i, card)
        print(f"{i:>2} {card['arch_str'][:44]:<44} {card['macs'] / 1e6:>6.2f} {card['accuracy']['pytorch']:>6.1%} "
              f"{checks['tflite']['max_abs_diff']:>9.2e} {checks['onnx']['max_abs_diff']:>9.2e} "
              f"{int8['top1_agreement']:>10.1%} {int8['accuracy_drop_points']:>+9.2f} "
              f"{'-' if arena is None else f'{arena / 1024:.1f}K':>10} {_kib(head):>8} {_kib(tail):>10} {peak / 1024:>8.1f}K "
              f"{'-' if arena is None else f'{arena / peak:.2f}':>5} {t['onnx']:>6.2f} {t['tflite']:>6.1f} "
              f"{t['tflite-int8']:>6.1f}")
    fp32 = [{c["format"]: c for c in r["verification"]}["tflite"]["max_abs_diff"] for r in rows]
    agree = [{c["format"]: c for c in r["verification"]}["tflite-int8"]["top1_agreement"] for r in rows]
    drop = [{c["format"]: c for c in r["verification"]}["tflite-int8"]["accuracy_drop_points"] for r in rows]
    micro_ok = sum(1 for r in rows if r["sram"]["tflm"] and r["sram"]["tflm"]["ok"])
    ratios = [r["sram"]["tflm_arena_bytes"] / r["sram"]["analytic_peak_int8_bytes"] for r in rows
              if r["sram"]["tflm_arena_bytes"]]
    print("-" * len(header))
    print(f"TFLite fp32 max abs diff: worst {max(fp32):.2e} (target <= 1e-4): {'PASS' if max(fp32) <= 1e-4 else 'FAIL'}")
    print(f"int8 top-1 agreement with fp32: worst {min(agree):.1%} (target >= 98 %): "
          f"{'PASS' if min(agree) >= 0.98 else 'FAIL'}")
    print(f"int8 accuracy drop: worst {max(drop):+.2f} points (target <= 1): {'PASS' if max(drop) <= 1.0 else 'FAIL'}")
    print(f"TFLite Micro: {micro_ok}/{len(rows)} int8 models load and run; arena / analytic peak: "
          f"median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}")
    for fmt in ("onnx", "tflite", "tflite-int8"):
        times = [r["conversion_seconds"][fmt] for r in rows]
        print(f"conversion time {fmt:<11}: median {statistics.median(times):6.2f} s, max {max(times):6.2f} s")
    return 0


def _kib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f}K"


def _arena_split(out: str, i: int, card: dict) -> tuple[int | None, int | None]:
    """Head (tensors and scratch) and tail (persistent) of the arena: from the card, or measured again for
    cards written before MicroCheck recorded them."""
    tflm = card["sram"].get("tflm") or {}
    if tflm.get("activation_bytes") is not None:
        return tflm["activation_bytes"], tflm["persistent_bytes"]
    if not tflm.get("ok"):
        return None, None
    from edgenas.export.micro import _runtime, arena_split

    path = Path(out) / f"arch-{i:02d}" / "model_int8.tflite"
    return arena_split(_runtime(), path.read_bytes(), tflm["arena_bytes"], None)


if __name__ == "__main__":
    sys.exit(main())
