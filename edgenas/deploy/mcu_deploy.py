"""The deploy stage for microcontrollers (issue 44): each candidate of `edgenas search --patches N|auto` is exported
with the patch schedule the search judged it on (`edgenas.export.mcu.finish_mcu`, the code behind `edgenas export
--patches`), run in TFLite Micro, and held to the SRAM and flash limits by the arena the real interpreter measured;
the file that passes is the one measured and shipped, with the board's C files and the card's MCU section."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class McuTarget:
    """What the search judged memory on: `patches` ("auto", N or None: whole-map files with int8 I/O), the board
    (a `Board`, for its C files; None: none written) and the limits the shipped file's measured arena must meet."""

    patches: int | str | None = None
    board: Any = None
    max_sram_bytes: int | None = None
    max_flash_bytes: int | None = None
    schedules: Mapping[str, Any] = field(default_factory=dict)  # str(arch) -> (ops, n) or None, from the search
    # whether the search judged files with the input normalisation in front (`micro_memory.ships_normalised`):
    # a schedule's op count counts that op
    normalised_input: bool = False

    def schedule(self, arch: Any, config: Mapping[str, Any] | None = None) -> tuple[int, int] | None:
        """(ops, n) the search judged `arch` on (None: the whole-map file), from the search result's config."""
        found = dict((config or {}).get("patch_schedules") or self.schedules).get(str(arch))
        return None if found is None else (int(found[0]), int(found[1]))


def finish_candidate(target: McuTarget, out_dir: Path, export: Any, space: Any, arch: Any,
                     schedule: tuple[int, int] | None, *, board: bool = False) -> tuple[Path, dict[str, Any], list[str]]:
    """The file of `export` (an ExportResult with its int8 file) that runs on the board: patch-based with
    `schedule` (bit-identical to the whole file, checked in TFLite Micro) or the whole file; with `board`, the
    board's C files and the card's MCU section too. Returns (file, summary, problems), the problems including a
    measured arena over the SRAM limit or a file over the flash limit."""
    # deferred: numpy loads only when this runs, not on import
    from edgenas.export.mcu import finish_mcu

    int8 = Path(export.files["tflite-int8"])
    whole_arena = export.micro.arena_bytes if export.micro is not None and export.micro.ok else None
    normalised = bool((export.card.get("contract") or {}).get("normalised_inside"))
    note, patches = None, None if schedule is None else schedule[1]
    if schedule is not None and normalised != target.normalised_input:
        # the search counted ops on another graph: choose the cut again on this file's (its arena is measured below)
        note = (f"the search judged memory on a file {'with' if target.normalised_input else 'without'} the input "
                f"normalisation, this file is {'with' if normalised else 'without'} it: the cut was chosen again")
        schedule = None
    sram_limit, flash_limit = target.max_sram_bytes, target.max_flash_bytes
    if target.board is not None:  # the search's limits where given (they are the board's unless the user set them)
        sram_limit = target.board.arena_limit_kb * 1024 if sram_limit is None else sram_limit
        flash_limit = target.board.model_limit_kb * 1024 if flash_limit is None else flash_limit
    summary, problems = finish_mcu(out_dir, int8, space, arch, patches=patches, board=target.board if board else None,
                                   whole_arena=whole_arena, schedule=schedule, normalised_input=normalised,
                                   board_limits=False)
    if note is not None:
        summary["note"] = note
    shipped = Path(summary.get("shipped") or (summary.get("patches") or {}).get("file") or int8)
    arena = (summary.get("patches") or {}).get("measured_arena_bytes", whole_arena)
    summary.update(file=str(shipped), measured_arena_bytes=arena, sram_limit_bytes=sram_limit,
                   flash_limit_bytes=flash_limit, schedule=None if "patches" not in summary else
                   [summary["patches"]["patch_ops"], summary["patches"]["patches"]])
    if sram_limit is not None and (arena is None or arena > sram_limit):
        problems.append(f"{shipped.name}: TFLite Micro arena " + ("not measured" if arena is None else
                        f"{arena / 1024:.1f} KiB") + f" over the SRAM limit {sram_limit / 1024:g} KiB")
    size = shipped.stat().st_size if shipped.is_file() else 0
    if flash_limit is not None and size > flash_limit:
        problems.append(f"{shipped.name} is {size / 1024:.1f} KiB, over the flash limit {flash_limit / 1024:g} KiB")
    return shipped, summary, [p for p in dict.fromkeys(problems)]
