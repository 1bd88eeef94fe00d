"""Microcontroller boards as search and export limits: SRAM and flash from the vendor's datasheet, less what the
firmware and TFLite Micro's code need (no torch).

A board is a small TOML file (`name`, `sram_kb`, `flash_kb`, `reserved_sram_kb`, `reserved_flash_kb`, and the
`datasheet` it was read from). `--board NAME` finds `NAME.toml` in ./boards, then ~/.config/edgenas/boards, then
the presets shipped in edgenas/boards (STM32F746, STM32H743, nRF52840, ESP32-S3, RP2040); a path names a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tomllib

PRESET_DIR = Path(__file__).with_name("boards")
SEARCH_DIRS = (Path("boards"), Path("~/.config/edgenas/boards").expanduser())
_KEYS = {"name", "sram_kb", "flash_kb", "reserved_sram_kb", "reserved_flash_kb", "datasheet"}


@dataclass(frozen=True)
class Board:
    """A board's memory: totals from its datasheet and what the firmware keeps (KB = 1024 bytes)."""

    name: str
    sram_kb: float
    flash_kb: float
    reserved_sram_kb: float = 0.0
    reserved_flash_kb: float = 0.0
    datasheet: str = ""

    @property
    def arena_limit_kb(self) -> float:
        """SRAM left for TFLite Micro's tensor arena."""
        return self.sram_kb - self.reserved_sram_kb

    @property
    def model_limit_kb(self) -> float:
        """Flash left for the model file."""
        return self.flash_kb - self.reserved_flash_kb

    def to_dict(self) -> dict:
        return {"name": self.name, "sram_kb": self.sram_kb, "flash_kb": self.flash_kb,
                "reserved_sram_kb": self.reserved_sram_kb, "reserved_flash_kb": self.reserved_flash_kb,
                "arena_limit_kb": self.arena_limit_kb, "model_limit_kb": self.model_limit_kb,
                "datasheet": self.datasheet}


def board_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def board_path(name_or_path: str) -> Path:
    """The TOML file a board NAME or path names; ValueError (one line) when none is found."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or "/" in name_or_path:
        if not p.is_file():
            raise ValueError(f"board file {name_or_path} does not exist")
        return p
    for folder in (*SEARCH_DIRS, PRESET_DIR):
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    raise ValueError(f"unknown board {name_or_path!r}: choose one of {', '.join(board_presets())} "
                     "or give a board TOML file")


def load_board(name_or_path: str) -> Board:
    """The board a NAME or path names (see the module docstring); ValueError with one line when it is bad."""
    path = board_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"board file {path} cannot be read: {exc}") from None
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueError(f"board file {path} has unknown keys {', '.join(unknown)}: expected {', '.join(sorted(_KEYS))}")
    for key in ("sram_kb", "flash_kb"):
        if not isinstance(data.get(key), (int, float)) or data[key] <= 0:
            raise ValueError(f"board file {path}: {key} must be a positive number of KB, got {data.get(key)!r}")
    board = Board(name=str(data.get("name", path.stem)), sram_kb=float(data["sram_kb"]),
                  flash_kb=float(data["flash_kb"]), reserved_sram_kb=float(data.get("reserved_sram_kb", 0)),
                  reserved_flash_kb=float(data.get("reserved_flash_kb", 0)), datasheet=str(data.get("datasheet", "")))
    if board.arena_limit_kb <= 0 or board.model_limit_kb <= 0:
        raise ValueError(f"board file {path}: the reserved SRAM or flash is the whole of it")
    return board
