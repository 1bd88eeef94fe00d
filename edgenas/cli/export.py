"""CLI command `export`: a supernet checkpoint and an arch (or one per device) to verified ONNX/TFLite files and a card."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from edgenas.errors import UsageError
from edgenas.settings import add_flag

EXIT_CHECK_FAILED = 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a subnet to ONNX / TFLite fp32 / TFLite int8, verified, with a model card",
        description="Extract the subnet ARCH from a supernet checkpoint (BN recalibrated), optionally fine-tune it "
        "with distillation, write each format, verify every file against PyTorch on validation images, check int8 "
        "files in TFLite Micro, and write card.json / card.md. With several --device values (each paired with its "
        "--arch, in order), one folder per device.")
    p.add_argument("--supernet", metavar="CKPT", help="supernet checkpoint (edgenas train) or a run folder "
                   "(default: the run folder holding the --arch file)")
    p.add_argument("--arch", required=True, action="append", metavar="ARCH",
                   help="arch as inline JSON or a JSON file (a search result works); repeat once per --device")
    p.add_argument("--formats", default="onnx,tflite,tflite-int8",
                   help="comma-separated: onnx, tflite, tflite-int8 (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--dataset", metavar="SPEC", help="dataset for BN recalibration, calibration, fine-tuning and "
                   "verification (default: the checkpoint's)")
    add_flag(p, "finetune_epochs", metavar="N")
    p.add_argument("--device", action="append", metavar="NAME", help="measure the exported files on this device; "
                   "repeat for one folder per device")
    p.add_argument("--target-sram-kb", type=float, metavar="KB", help="fail when the SRAM need (TFLite Micro arena) exceeds this")
    p.add_argument("--target-flash-kb", type=float, metavar="KB", help="fail when the int8 model file exceeds this")
    add_flag(p, "calibration_images", metavar="N")
    add_flag(p, "max_int8_drop_points", "--max-int8-drop", metavar="POINTS")
    p.add_argument("--int8-io", action="store_true", help="int8 model inputs and outputs (default: float32 I/O)")
    p.add_argument("--patches", metavar="N|auto", help="also write the int8 file with its first stages run on N x N "
                   "patches (auto: the schedule with the smallest predicted TFLite Micro arena), bit-identical outputs")
    p.add_argument("--board", metavar="NAME", help="a microcontroller board (stm32f746, stm32h743, nrf52840, esp32s3, "
                   "rp2040, or a board TOML): int8 I/O, its SRAM/flash as limits, model_data.cc/.h, model_ops.h")
    p.add_argument("--nchw", action="store_true", help="keep PyTorch's NCHW input layout in TFLite files (default NHWC)")
    p.add_argument("--no-verify", action="store_true", help="skip the numeric verification (not recommended)")
    p.add_argument("--no-micro", action="store_true", help="skip the TFLite Micro check of int8 files")
    p.add_argument("--seed", type=int, help="seed for calibration and fine-tuning (default: the checkpoint's)")
    p.add_argument("--force", action="store_true", help="export again even where a folder holds a finished export")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler="edgenas.cli.export:run_export")


def _pair_devices(archs: list[str], devices: list[str] | None) -> list[tuple[str | None, str]]:
    if not devices:
        if len(archs) > 1:
            raise UsageError(f"{len(archs)} --arch values but no --device: give one --arch, or one --device per --arch")
        return [(None, archs[0])]
    if len(archs) == 1:
        return [(d, archs[0]) for d in devices]
    if len(archs) != len(devices):
        raise UsageError(f"{len(archs)} --arch values for {len(devices)} --device values: give one --arch per device "
                         "(in the same order) or a single --arch for all")
    return list(zip(devices, archs))


def _finished(out_dir: Path, arch: Any, supernet_sha: str) -> bool:
    card = out_dir / "card.json"
    if not card.is_file():
        return False
    try:
        data = json.loads(card.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (not data.get("problems") and data.get("arch") == arch.to_dict()
            and (data.get("lineage") or {}).get("supernet", {}).get("sha256") == supernet_sha)


def run_export(args: argparse.Namespace) -> int:
    # deferred: torch, edgenas.inputs load when the command runs, not for `edgenas --help`
    from edgenas.export.subnet import ExportOptions, parse_formats
    from edgenas.inputs import output_dir, parse_arch

    output_dir(args.out, "--out")  # before any work: a file named like the folder is found now, not after export
    if args.dataset is not None:
        # deferred: edgenas.data loads when the command runs, not for `edgenas --help`
        from edgenas.data import check_dataset_spec

        check_dataset_spec(args.dataset)
    formats = parse_formats(args.formats)
    # deferred: the command's modules load when the command runs, not for `edgenas --help`
    from edgenas.board import load_board
    from edgenas.export.mcu import parse_patches

    try:
        args.patches = parse_patches(args.patches)
        args.board = load_board(args.board) if args.board else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.board is not None or args.patches is not None:
        args.int8_io = args.int8_io or args.board is not None
        if "tflite-int8" not in formats:
            raise UsageError("--patches and --board work on the int8 file: include tflite-int8 in --formats")
    options = ExportOptions(
        formats=formats, finetune_epochs=args.finetune_epochs, calibration_images=args.calibration_images,
        verify=not args.no_verify, micro=not args.no_micro, int8_io=args.int8_io, channels_last=not args.nchw,
        max_drop_points=args.max_int8_drop,
        target_sram_kb=args.target_sram_kb, target_flash_kb=args.target_flash_kb, seed=args.seed or 0)
    if any(f.startswith("tflite") for f in formats):
        # deferred: torch loads when the command runs, not for `edgenas --help`
        from edgenas.export.tflite import require_converter

        require_converter()  # a missing converter is one line before any work
    pairs = _pair_devices(args.arch, args.device)

    # deferred: torch loads when the command runs, not for `edgenas --help`
    from edgenas.train.checkpoint import OpenedCheckpoint

    opened = OpenedCheckpoint(args.supernet)  # read once; one line naming the checkpoint and what is wrong with it
    info, supernet = opened.info, opened.supernet
    space = supernet.space
    archs = [parse_arch(value, space) for _, value in pairs]
    too_big = _clearly_too_big(space, archs, options)
    if too_big:  # answered from the predicted arena in a second: no data loaded, nothing converted
        for line in too_big:
            print(f"edgenas: error: {line}", file=sys.stderr)
        if args.json:
            print(json.dumps([{"ok": False, "error": line} for line in too_big], indent=2))
        return EXIT_CHECK_FAILED
    seed = info.get("seed", 0) if args.seed is None else args.seed
    options = ExportOptions(**{**options.to_dict(), "formats": formats, "seed": seed})

    with contextlib.ExitStack() as stack:
        devices: dict[str, Any] = {}
        if args.device:
            try:
                # deferred: edgenas.devices loads when the command runs, not for `edgenas --help`
                from edgenas.devices import load_device
            except ImportError as exc:
                raise UsageError(f"--device needs edgenas.devices, which cannot be imported here ({exc})") from None
            for name in dict.fromkeys(args.device):
                devices[name] = stack.enter_context(load_device(name))
        results, failures = _export_pairs(args, pairs, archs, devices, supernet, info, options)
    if args.json:
        print(json.dumps(results, indent=2))
    return EXIT_CHECK_FAILED if failures else 0


def _clearly_too_big(space: Any, archs: list[Any], options: Any) -> list[str]:
    """For an export of the board's int8 file alone under --target-sram-kb: one line per arch whose predicted TFLite
    Micro arena (exact to the byte on the host) clearly exceeds the board's SRAM (`micro_memory.board_fit`), when
    every arch does; else nothing (the export runs, and each file is checked in TFLite Micro)."""
    if options.target_sram_kb is None or tuple(options.formats) != ("tflite-int8",):
        return []
    # deferred: edgenas.micro_memory loads when the command runs, not for `edgenas --help`
    from edgenas.micro_memory import board_fit, predict

    lines = []
    for arch in archs:
        memory = predict(space, arch)
        if board_fit(memory, options.target_sram_kb * 1024) is not False:
            return []
        lines.append(f"{arch} does not fit this board: predicted TFLite Micro arena {memory.arena / 1024:.1f} KiB "
                     f"({memory.board_arena / 1024:.1f} KiB on a 32-bit board, {memory.head / 1024:.1f} KiB of it "
                     f"tensors) against --target-sram-kb {options.target_sram_kb:g}; nothing was converted")
    return lines


def _export_pairs(args: argparse.Namespace, pairs: list[tuple[str | None, str]], archs: list[Any],
                  devices: dict[str, Any], supernet: Any, info: dict[str, Any],
                  options: Any) -> tuple[list[dict[str, Any]], list[str]]:
    # deferred: torch, edgenas.data load when the command runs, not for `edgenas --help`
    from edgenas.data import load_dataset
    from edgenas.export.subnet import load_search_result

    space = supernet.space
    dataset = load_dataset(args.dataset or info["dataset"], seed=info.get("seed", 0))
    if dataset.num_classes != space.num_classes or dataset.in_channels != space.in_channels:
        raise UsageError(f"dataset {dataset.spec} has {dataset.num_classes} classes and {dataset.in_channels} channel(s); "
                         f"the supernet expects {space.num_classes} and {space.in_channels}: pass its --dataset")
    out_root = Path(args.out)
    results, failures = [], []
    for (device_name, value), arch in zip(pairs, archs):
        device = devices.get(device_name) if device_name else None
        out_dir = out_root / Path(device.name if device is not None else device_name).name if device_name else out_root
        if not args.force and _finished(out_dir, arch, info["sha256"]):
            print(f"export: {out_dir} already holds this export (card.json); --force to redo it", file=sys.stderr)
            results.append({"out": str(out_dir), "ok": True, "skipped": True})
            continue
        try:
            result = export_one(supernet, arch, dataset, out_dir, options=options, info=info,
                                search=load_search_result(value), device=device, dataset_spec=args.dataset or info["dataset"])
            entry = {"out": str(out_dir), "ok": True, "files": {k: str(v) for k, v in result.files.items()},
                     "arena_bytes": result.card["sram"]["tflm_arena_bytes"], "accuracy": result.card["accuracy"]}
            if args.patches is not None or args.board is not None:
                # deferred: edgenas.export.mcu loads when the command runs, not for `edgenas --help`
                from edgenas.export.mcu import finish_mcu

                entry["mcu"], problems = finish_mcu(out_dir, Path(result.files["tflite-int8"]), space, arch,
                                                    patches=args.patches, board=args.board,
                                                    whole_arena=result.card["sram"]["tflm_arena_bytes"],
                                                    normalised_input=bool((result.card.get("contract") or {})
                                                                          .get("normalised_inside")))
                for line in problems:
                    failures.append(line)
                    print(f"edgenas: error: {line}", file=sys.stderr)
                entry["ok"] = not problems
            results.append(entry)
        except _check_error() as exc:
            failures.append(str(exc))
            print(f"edgenas: error: {exc}", file=sys.stderr)
            failed = {"out": str(out_dir), "ok": False, "error": str(exc)}
            written = getattr(exc, "result", None)  # what was written and checked, kept on disk
            if written is not None:
                failed.update(files={k: str(v) for k, v in written.files.items()}, problems=written.problems,
                              accuracy=written.card["accuracy"])
            results.append(failed)
    return results, failures


def _check_error() -> tuple[type[Exception], ...]:
    # deferred: torch loads when the command runs, not for `edgenas --help`
    from edgenas.export.subnet import ExportCheckError
    from edgenas.export.tflite import TFLiteConversionError

    return (ExportCheckError, TFLiteConversionError)


def export_one(supernet: Any, arch: Any, dataset: Any, out_dir: Path, *, options: Any, info: dict[str, Any],
               search: dict[str, Any], device: Any, dataset_spec: str):
    """Prepare (and fine-tune) one subnet and run the export pipeline into `out_dir`."""
    # deferred: torch loads when the command runs, not for `edgenas --help`
    from edgenas.export.subnet import export_prepared, prepare_export

    _stderr(f"export: {arch} -> {out_dir}")
    prepared = prepare_export(supernet, arch, dataset, options=options, info=info, search=search,
                              dataset_spec=dataset_spec, log=_stderr)
    return export_prepared(prepared, out_dir, space=supernet.space, options=options, device=device, log=_stderr)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
