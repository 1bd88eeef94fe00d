"""Latency tables: one device's measured latency of every distinct piece (stem, block, head), in one JSON file.

A table lives at `latency_tables/<device>/<runtime>-<precision>.json` and records its schema
version, the device's description, the runtime and its version, the precision, when it was made,
and per piece key {latency_ms, median_ms, std_ms, runs, model_sha256} (`latency_ms` is the device's
figure for the piece, timed interleaved; see edgenas.devices.agent). It loads from disk alone (no network),
and refuses, with a message saying what to do, a file made for another device, runtime,
precision or schema version.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.artifacts import atomic_write_json, write_manifest
from edgenas.errors import UsageError
from edgenas.inputs import field_of, is_int, is_number, mapping, require
from edgenas.inputs import read_json as read_json_file

TABLE_SCHEMA = "edgenas.latency_table/2"  # 2: figures timed interleaved (latency_ms)


def tables_root() -> Path:
    """Where tables and default predictors live: $EDGENAS_LATENCY_TABLES, else ./latency_tables."""
    return Path(os.environ.get("EDGENAS_LATENCY_TABLES", "latency_tables"))


def table_path(device: str, runtime: str, precision: str, root: str | os.PathLike | None = None) -> Path:
    return Path(root or tables_root()) / device / f"{runtime}-{precision}.json"


def predictor_path(device: str, runtime: str, precision: str, root: str | os.PathLike | None = None) -> Path:
    return Path(root or tables_root()) / device / f"predictor-{runtime}-{precision}.json"


def read_json(path: Path, what: str) -> Any:
    """A calibration file's JSON (size, depth and finite numbers checked), or UsageError saying how to (re)make it."""
    if not path.exists() and not path.is_symlink():
        raise UsageError(f"no {what} at {path}: run `edgenas calibrate --device NAME` first")
    return read_json_file(path, what, remedy="delete it and re-calibrate")


def check_identity(path: Path, what: str, pairs: tuple[tuple[str, str | None, str], ...]) -> None:
    """Refuse a file made for another device, runtime or precision: `pairs` is (field, wanted, found)."""
    for field_name, want, got in pairs:
        if want is not None and want != got:
            raise UsageError(f"{what} {path} is for {field_name} {got!r}, not {want!r}: use the one made for "
                             f"{field_name} {want!r}, or make it with `edgenas calibrate`")


@dataclass
class LatencyTable:
    """Measured latency (ms) per piece key for one device, runtime and precision."""

    device: str
    runtime: str
    precision: str
    runtime_version: str | None = None
    device_description: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, key: str, *, latency_ms: float, median_ms: float | None, std_ms: float | None, runs: int,
            model_sha256: str) -> None:
        self.entries[key] = {"latency_ms": float(latency_ms), "median_ms": None if median_ms is None else float(median_ms),
                             "std_ms": None if std_ms is None else float(std_ms), "runs": int(runs),
                             "model_sha256": model_sha256}

    def missing(self, keys: list[str]) -> list[str]:
        return [k for k in keys if k not in self.entries]

    def values(self, keys: list[str]) -> np.ndarray:
        """The latency figure of each key, in order; UsageError if the table lacks any."""
        missing = self.missing(keys)
        if missing:
            raise UsageError(
                f"latency table for {self.device} ({self.runtime}/{self.precision}) lacks {len(missing)} of "
                f"{len(keys)} pieces of this search space (e.g. {missing[0]}): run `edgenas calibrate --device "
                f"{self.device}` for this space")
        return np.array([self.entries[k]["latency_ms"] for k in keys], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": TABLE_SCHEMA,
            "device": self.device,
            "device_description": self.device_description,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "precision": self.precision,
            "created": self.created,
            "entries": dict(sorted(self.entries.items())),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "latency table") -> LatencyTable:
        schema = d.get("schema") if isinstance(d, dict) else None
        if schema != TABLE_SCHEMA:
            raise UsageError(f"{source} has schema {schema!r}, this edgenas reads {TABLE_SCHEMA!r}: "
                             "re-run `edgenas calibrate` for this device to rebuild it")
        check_latency_table(d, source)
        return cls(device=d["device"], runtime=d["runtime"], precision=d["precision"],
                   runtime_version=d.get("runtime_version"), device_description=d.get("device_description", {}),
                   created=d.get("created", ""), entries=dict(d["entries"]))

    def save(self, path: str | os.PathLike, **manifest: Any) -> Path:
        """Write the table atomically, with its manifest beside it."""
        if not self.created:
            self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        path = atomic_write_json(path, self.to_dict())
        write_manifest(path, kind="latency_table", config={"device": self.device, "runtime": self.runtime,
                                                            "precision": self.precision,
                                                            "entries": len(self.entries)}, **manifest)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | None = None, runtime: str | None = None,
             precision: str | None = None) -> LatencyTable:
        """Read a table; refuse one made for another device, runtime, precision or schema."""
        path = Path(path)
        table = cls.from_dict(read_json(path, "latency table"), source=f"latency table {path}")
        check_identity(path, "latency table", (("device", device, table.device), ("runtime", runtime, table.runtime),
                                                ("precision", precision, table.precision)))
        return table


# ---- the checks of a latency file's fields ---------------------------------------------------------------

RUNTIMES = ("onnxruntime", "tflite")
PRECISIONS = ("fp32", "int8")
LATENCY_REMEDY = "the file is bad (damaged, edited or from a failed calibration): delete it and run `edgenas calibrate`"
MAX_TABLE_ENTRIES = 1_000_000


def check_identity_fields(d: Mapping[str, Any], source: str) -> None:
    require(isinstance(d.get("device"), str) and d["device"] != "", source, "device", d.get("device"),
            "the device's name", LATENCY_REMEDY)
    require(d.get("runtime") in RUNTIMES, source, "runtime", d.get("runtime"), " or ".join(RUNTIMES), LATENCY_REMEDY)
    require(d.get("precision") in PRECISIONS, source, "precision", d.get("precision"), " or ".join(PRECISIONS),
            LATENCY_REMEDY)


def positive_ms(value: Any, source: str, field: str) -> None:
    require(is_number(value) and value > 0, source, field, value, "a finite latency in milliseconds > 0",
            LATENCY_REMEDY)


def check_latency_table(d: Mapping[str, Any], source: str) -> None:
    """Every field of a latency table's JSON: identity, and per piece a finite latency > 0, runs >= 1."""
    check_identity_fields(d, source)
    entries = field_of(d, "entries", source, "a table of pieces", LATENCY_REMEDY)
    require(isinstance(entries, Mapping) and len(entries) <= MAX_TABLE_ENTRIES, source, "entries",
            "..." if isinstance(entries, Mapping) else entries, "a table of pieces", LATENCY_REMEDY)
    for key, entry in entries.items():
        where = f"entries.{key}"
        mapping(entry, source, where, LATENCY_REMEDY)
        positive_ms(field_of(entry, "latency_ms", source, f"{where}.latency_ms", LATENCY_REMEDY), source,
                     f"{where}.latency_ms")
        std = entry.get("std_ms")
        require(std is None or (is_number(std) and std >= 0), source, f"{where}.std_ms", std,
                "a finite number >= 0 (or null)", LATENCY_REMEDY)
        runs = entry.get("runs", 1)
        require(is_int(runs) and runs >= 1, source, f"{where}.runs", runs, "an integer >= 1", LATENCY_REMEDY)
        require(isinstance(entry.get("model_sha256", ""), str), source, f"{where}.model_sha256",
                entry.get("model_sha256"), "a hex string", LATENCY_REMEDY)
    for key, kind in (("runtime_version", (str, type(None))), ("device_description", Mapping), ("created", str)):
        if key in d:
            require(isinstance(d[key], kind), source, key, d[key], "a string" if key != "device_description"
                    else "a table", LATENCY_REMEDY)
