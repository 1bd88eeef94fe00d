"""A run folder as a unit you continue: `manifest.json` names what the folder holds, and a later command pointed at
the folder (or at any file in it) finds its supernet, accuracy predictor, latency tables, device files and store
there instead of asking for them.

`edgenas demo`, `edgenas run` and `edgenas train` write the manifest; `search`, `eval`, `export`, `measure` and
`calibrate` read it. Paths in it are relative to the folder, so a folder that is moved or copied still works.
No torch here: the CLI reads a manifest before anything heavy is imported.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenas.artifacts import atomic_write_json

MANIFEST = "manifest.json"
KIND = "edgenas run folder"
VERSION = 1
LEVELS_UP = 4  # a file as deep as export/<device>/budget-<T>ms/model.onnx still finds its folder


def write_manifest(folder: str | os.PathLike, *, made_by: str, **contents: Any) -> Path:
    """Write (or update) `folder/manifest.json`: the keys given replace the ones there; a path is stored relative to
    the folder. Keys: supernet, accuracy_predictor, store, devices {name: {device_file, latency: {precision:
    predictor}}}, budgets [...], exports [...], report."""
    root = Path(folder).resolve()
    path = root / MANIFEST
    data = _read(path) or {"kind": KIND, "version": VERSION}
    data["made_by"] = made_by
    data.update(_relative(root, contents))
    atomic_write_json(path, data)
    return path


@dataclass
class RunFolder:
    """A folder's manifest, its paths resolved against the folder."""

    root: Path
    data: dict[str, Any] = field(default_factory=dict)

    def path(self, key: str) -> Path | None:
        value = self.data.get(key)
        return self.root / value if isinstance(value, str) and (self.root / value).exists() else None

    @property
    def supernet(self) -> Path | None:
        return self.path("supernet")

    @property
    def accuracy_predictor(self) -> Path | None:
        return self.path("accuracy_predictor")

    @property
    def store(self) -> Path | None:
        return self.path("store")

    def device(self, name: str) -> dict[str, Any] | None:
        """The folder's entry of a device named `name` (or of the device file `name`), else None."""
        devices = self.data.get("devices") or {}
        key = Path(name).stem if name.endswith(".toml") else name
        entry = devices.get(key)
        return entry if isinstance(entry, dict) else None

    def device_file(self, name: str) -> Path | None:
        entry = self.device(name) or {}
        value = entry.get("device_file")
        return self.root / value if isinstance(value, str) and (self.root / value).is_file() else None

    def latency_predictor(self, name: str, precision: str | None = None) -> Path | None:
        """The device's calibrated latency predictor: of `precision`, else the only one the folder holds."""
        tables = (self.device(name) or {}).get("latency") or {}
        if precision is None and len(tables) != 1:
            return None
        value = tables.get(precision) if precision is not None else next(iter(tables.values()))
        return self.root / value if isinstance(value, str) and (self.root / value).is_file() else None

    def shown(self, path: Path) -> str:
        """`path` as the user sees it: relative to the current folder where it is below it."""
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)


def find_run_folder(path: str | os.PathLike | None) -> RunFolder | None:
    """The run folder holding `path` (the folder itself, or a file or folder inside it), else None."""
    if path is None or str(path) == "":
        return None
    try:
        here = Path(path).resolve()
        if not here.is_dir():
            here = here.parent
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte: the command's own check names it
        return None
    for folder in [here, *here.parents][: LEVELS_UP + 1]:
        data = _read(folder / MANIFEST)
        if data is not None:
            return RunFolder(folder, data)
    return None


def reused_line(command: str, folder: RunFolder, items: list[str]) -> str:
    """The one line a command prints to say what it took from the folder."""
    return f"edgenas {command}: reusing from {folder.shown(folder.root)}/: {', '.join(items)}"


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == KIND else None


def _relative(root: Path, value: Any) -> Any:
    if isinstance(value, Path):
        resolved = value.resolve()
        try:
            return str(resolved.relative_to(root))
        except ValueError:
            return str(resolved)
    if isinstance(value, dict):
        return {k: _relative(root, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relative(root, v) for v in value]
    return value
