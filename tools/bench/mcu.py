"""Benchmark: per microcontroller board preset, the best subnet of the `mcunet` space found without and with
patch-based inference: its input resolution, predicted and measured (TFLite Micro, host) arena, flash, and accuracy.

For each board (`edgenas/boards/*.toml`) the evolutionary search runs under the board's arena and model limits
(SRAM and flash less what the firmware keeps) twice: whole-map files only, then `patches="auto"`. Each winner is
written as the int8 file `edgenas export --board` ships (int8 I/O; patch-based where the search judged it so) and
run in the real TFLite Micro interpreter: its smallest working arena is the measured figure.

Accuracy: with `--supernet CKPT` (an mcunet checkpoint with accuracy_predictor.npz beside it) the predictor's
figure and the subnet's real weights; without, the accuracy column says "n/a" and the search ranks by a stand-in
(log pixels first, then log MACs: resolution first, as MCUNet found under tight memory), with the supernet's
untrained weights (the memory figures do not depend on the weights).

    python tools/bench/mcu.py [--boards stm32f746,nrf52840] [--space mcunet] [--population 24] [--generations 10]
        [--supernet CKPT] [--json]

Run it under `nice`; each board takes about a minute on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


class ResolutionFirst:
    """Stand-in accuracy predictor: 2 log(resolution) + 0.1 log(MACs)."""

    def __init__(self, space) -> None:
        self.space = space

    def predict(self, archs):
        from edgenas.cost import stats_table

        archs = list(archs)
        macs = stats_table(self.space).compute(archs)["macs"].astype(np.float64)
        return 2 * np.log([a.resolution for a in archs]) + 0.1 * np.log(macs)


def _int8(space, arch, supernet) -> bytes:
    import torch

    from edgenas.export.tflite_int8 import write_int8_tflite
    from edgenas.supernet import Supernet
    from edgenas.train.bn import recalibrate_bn

    torch.manual_seed(0)
    net = (supernet or Supernet(space, space.num_classes)).extract(arch)
    images = torch.from_numpy(np.random.default_rng(0).normal(size=(8, 3, arch.resolution, arch.resolution))
                              .astype(np.float32))
    recalibrate_bn(net, [images])
    net.eval()
    return write_int8_tflite(net, images[:4].numpy(), int8_io=True)


def bench_board(board, space, accuracy, supernet, population: int, generations: int) -> list[dict]:
    from edgenas.export.micro import check_micro
    from edgenas.export.patches import patch_tflite
    from edgenas.search import Constraints, Problem, run_search
    from edgenas.search.registry import create_algorithm

    constraints = Constraints.from_user_units(max_sram_kb=board.arena_limit_kb, max_flash_kb=board.model_limit_kb)
    rows = []
    for patches in (None, "auto"):
        problem = Problem(space, accuracy, None, constraints, int8_io=True, patches=patches)
        search = create_algorithm("evolution", space, rng=np.random.default_rng(0), population=population,
                                  generations=generations, n_constraints=len(constraints.limits()))
        try:
            best = run_search(search, problem, top_k=1).best
        except Exception as exc:  # an infeasible board: reported in the table
            rows.append({"board": board.name, "patches": patches or "none", "error": str(exc).splitlines()[0]})
            continue
        schedule = problem.patch_schedule(best.arch)
        data = _int8(space, best.arch, supernet)
        if schedule is not None:
            data = patch_tflite(data, *schedule)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.tflite"
            path.write_bytes(data)
            check = check_micro(path)
        rows.append({"board": board.name, "patches": "none" if schedule is None else f"{schedule[1]}x{schedule[1]}"
                     f" ({schedule[0]} ops)", "arch": str(best.arch), "resolution": best.arch.resolution,
                     "predicted_arena_kb": best.predicted["sram_bytes"] / 1024,
                     "measured_arena_kb": None if not check.ok else check.arena_bytes / 1024,
                     "arena_limit_kb": board.arena_limit_kb, "flash_kb": len(data) / 1024,
                     "flash_limit_kb": board.model_limit_kb,
                     "accuracy": None if isinstance(accuracy, ResolutionFirst) else float(best.predicted["accuracy"])})
    return rows


def main(argv: list[str] | None = None) -> int:
    from edgenas.board import board_presets, load_board
    from edgenas.space import SearchSpace

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boards", default=",".join(board_presets()))
    p.add_argument("--space", default="mcunet")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--population", type=int, default=24)
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--supernet", help="an mcunet supernet checkpoint with accuracy_predictor.npz beside it")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    supernet = None
    if args.supernet:
        from edgenas.accuracy.predictor import load_accuracy_predictor
        from edgenas.train.checkpoint import OpenedCheckpoint

        supernet = OpenedCheckpoint(args.supernet).supernet
        space = supernet.space
        accuracy = load_accuracy_predictor(Path(args.supernet).parent)
    else:
        space = SearchSpace.preset(args.space, num_classes=args.num_classes)
        accuracy = ResolutionFirst(space)
    rows = []
    for name in args.boards.split(","):
        rows += bench_board(load_board(name), space, accuracy, supernet, args.population, args.generations)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"space {space.name} ({space.num_classes} classes); accuracy: "
          f"{'predictor beside ' + args.supernet if args.supernet else 'n/a (stand-in ranking: resolution first)'}")
    print(f"{'board':10} {'patches':14} {'res':>4} {'pred KB':>8} {'TFLM KB':>8} {'limit':>6} {'flash KB':>9} "
          f"{'limit':>6} {'acc':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['board']:10} {r['patches']:14} {r['error']}")
            continue
        measured = "fails" if r["measured_arena_kb"] is None else f"{r['measured_arena_kb']:.1f}"
        acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        print(f"{r['board']:10} {r['patches']:14} {r['resolution']:>4} {r['predicted_arena_kb']:>8.1f} {measured:>8} "
              f"{r['arena_limit_kb']:>6g} {r['flash_kb']:>9.1f} {r['flash_limit_kb']:>6g} {acc:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
