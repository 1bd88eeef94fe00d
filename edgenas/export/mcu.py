"""The microcontroller end of `edgenas export`: `--patches N|auto` (the int8 file rewritten to run its first stages
patch by patch, checked bit-identical and measured in TFLite Micro) and `--board NAME` (the C array, the op
resolver and the arena for the board, checked against its limits, and the card's MCU section)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgenas.export.board_files import BEGIN_MARK, BoardFiles, card_section, write_board_files
from edgenas.export.micro import check_micro
from edgenas.export.patches import op_kinds, patch_tflite
from edgenas.micro_memory import micro_graph, predict_patched


def parse_patches(value: str | None) -> int | str | None:
    """`--patches`: None, "auto" or an integer N >= 2; ValueError (one line) otherwise."""
    if value is None or value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 2:
        raise ValueError(f"--patches {value!r}: give N (2 or more, for N x N patches) or auto")
    return n


def _bit_identical(whole: bytes, patched: bytes, shape: list[int], arena: tuple[int, int], images: int = 5) -> bool:
    # deferred: tflite_micro (the [tflite] extra) loads only when this runs, not on import
    from tflite_micro.python.tflite_micro import runtime

    rng = np.random.default_rng(0)
    outs = []
    for data, size in zip((whole, patched), arena):
        interpreter = runtime.Interpreter.from_bytes(data, arena_size=size)
        rows = []
        for x in (rng.integers(-128, 128, size=shape, dtype=np.int8) for _ in range(images)):
            interpreter.set_input(x, 0)
            interpreter.invoke()
            rows.append(np.array(interpreter.get_output(0)).copy())
        outs.append(rows)
        rng = np.random.default_rng(0)
    return all(np.array_equal(a, b) for a, b in zip(*outs))


def finish_mcu(out_dir: Path, int8_path: Path, space: Any, arch: Any, *, patches: int | str | None,
               board: Any | None, whole_arena: int | None,
               schedule: tuple[int, int] | None = None, normalised_input: bool = False,
               board_limits: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Write the patch-based file and the board's files beside the int8 file; (summary, problems). `schedule`
    ((ops, n), as the search judged the arch on) fixes the patch schedule instead of choosing it by `patches`;
    `normalised_input`: the file has the input normalisation in front (its contract's `normalised_inside`), the
    first op the schedule's op count counts. `board_limits=False`: the caller holds the file to limits of its own
    (the search's `--max-sram-kb` / `--max-flash-kb`, which a user may set above or below the board's)."""
    # deferred: torch loads only when this runs, not on import
    from edgenas.export.tflite import describe_tflite

    summary: dict[str, Any] = {}
    problems: list[str] = []
    info = describe_tflite(int8_path)
    int8_io = info["input_dtype"] == "int8"
    shipped, arena = int8_path, whole_arena
    if patches is not None:
        whole = int8_path.read_bytes()
        mismatch = _other_graph(whole, space, arch, int8_io, normalised_input)
        if mismatch:  # e.g. a converter's file in place of the directly written one: the schedule would cut elsewhere
            return summary, [f"{int8_path.name} is not the graph its memory was predicted on ({mismatch}): "
                             "no patch-based file written"]
        try:
            choice = (predict_patched(space, arch, schedule[1], schedule[0], int8_io=int8_io,
                                      normalised_input=normalised_input) if schedule is not None
                      else predict_patched(space, arch, None if patches == "auto" else patches, int8_io=int8_io,
                                           normalised_input=normalised_input))
            data = patch_tflite(whole, choice.ops, choice.n)
        except ValueError as exc:  # no block end to cut at, or N larger than the map
            return summary, [f"--patches {patches}: {exc}"]
        path = int8_path.with_name(f"{int8_path.stem}_patches{choice.n}.tflite")
        path.write_bytes(data)
        check = check_micro(path)
        summary["patches"] = {**choice.to_dict(), "file": str(path), "measured_arena_bytes": check.arena_bytes,
                              "whole_arena_bytes": whole_arena}
        if not check.ok:
            problems.append(f"{path.name} does not run in TFLite Micro: {check.error}")
        elif int8_io and whole_arena:
            same = _bit_identical(whole, data, info["input_shape"], (whole_arena, check.arena_bytes))
            summary["patches"]["bit_identical"] = same
            if not same:
                problems.append(f"{path.name}'s int8 outputs differ from {int8_path.name}'s")
        shipped, arena = path, check.arena_bytes
    if board is not None:
        limits = board.to_dict()
        summary["board"] = limits
        if board_limits and arena is not None and arena > board.arena_limit_kb * 1024:
            problems.append(f"{shipped.name} needs a {arena / 1024:.1f} KiB arena; board {board.name} leaves "
                            f"{board.arena_limit_kb:g} KB")
        if board_limits and shipped.stat().st_size > board.model_limit_kb * 1024:
            problems.append(f"{shipped.name} is {shipped.stat().st_size / 1024:.1f} KiB; board {board.name} leaves "
                            f"{board.model_limit_kb:g} KB of flash")
        files = write_board_files(shipped, out_dir / "board", arena or 0)
        summary["board_files"] = files.to_dict()
        write_card_section(out_dir, summary)
    summary["shipped"] = str(shipped)
    return summary, problems


def _other_graph(data: bytes, space: Any, arch: Any, int8_io: bool, normalised_input: bool) -> str:
    """Where the file's operators depart from the graph `micro_memory` predicts for it ("" where they do not)."""
    found = op_kinds(data)
    predicted = [op.kind for op in micro_graph(space, arch, int8_io, normalised_input).ops]
    if found == predicted:
        return ""
    i = next((i for i, (a, b) in enumerate(zip(found, predicted)) if a != b), min(len(found), len(predicted)))
    return (f"{len(found)} ops against {len(predicted)} predicted; op {i} is "
            f"{found[i] if i < len(found) else 'missing'}, predicted {predicted[i] if i < len(predicted) else 'none'}")


def write_card_section(out_dir: Path, summary: dict[str, Any]) -> None:
    """(Re)write card.md's MCU section from `finish_mcu`'s summary (after the card was rendered again)."""
    if "board_files" not in summary:
        return
    f = summary["board_files"]
    files = BoardFiles(Path(f["model_data_cc"]), Path(f["model_data_h"]), Path(f["model_ops_h"]), f["arena_bytes"],
                       tuple(f["operators"]))
    card = Path(out_dir) / "card.md"
    text = card.read_text() if card.is_file() else ""
    if BEGIN_MARK in text:
        text = text[:text.index(BEGIN_MARK)]
    card.write_text(text.rstrip("\n") + "\n\n" + card_section(files, summary.get("board"), summary.get("patches")))
