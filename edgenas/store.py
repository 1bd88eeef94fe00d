"""The SQLite store of device measurements and accuracy evaluations: append-only, resumable, crash-safe.

Every figure that cost device time or GPU time goes here the moment it arrives, one SQLite
transaction per write, so a run killed at any point (SIGKILL included) loses at most the figure
being written, and a re-run asks the store what is already known instead of measuring it again.

A measurement is keyed by what it is *for*: the model file's sha256, the device name, runtime and
precision. It also records the runtime and agent versions, the model's kind and description (a
block key or an arch JSON), the full Measurement as JSON and its error code. An evaluation is keyed
by supernet sha256, dataset fingerprint, split, arch JSON and metric name.

Rows are never updated or deleted. A second *successful* measurement of the same (model, device,
runtime, precision) and a second evaluation of the same key are ignored (the add methods return
False), so resuming can never count a figure twice. Failed measurements are all kept (each is
evidence); they do not block a later successful one.

Thread-safety: a `Store` may be shared between threads; each thread gets its own SQLite
connection (`threading.local`), and SQLite's WAL mode with a busy timeout serialises writers.
Several processes may open the same file at once (e.g. a calibration and an accuracy run).
Do not share a Store object across `fork()`: open a new one in the child.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenas.errors import UsageError

SCHEMA_VERSION = 2  # 2: measurements carry latency_ms, the figure timed interleaved

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_sha256 TEXT NOT NULL,
    model_kind TEXT NOT NULL,
    model_description TEXT NOT NULL,
    device TEXT NOT NULL,
    runtime TEXT NOT NULL,
    runtime_version TEXT,
    precision TEXT NOT NULL,
    agent_version TEXT,
    ok INTEGER NOT NULL,
    median_ms REAL,
    measurement TEXT NOT NULL,
    latency_ms REAL,
    error TEXT,
    created TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS measurements_ok_key
    ON measurements (model_sha256, device, runtime, precision) WHERE ok = 1;
CREATE INDEX IF NOT EXISTS measurements_device ON measurements (device, runtime, precision);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    supernet_sha256 TEXT NOT NULL,
    dataset TEXT NOT NULL,
    split TEXT NOT NULL,
    arch TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    extra TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS evaluations_key ON evaluations (supernet_sha256, dataset, split, arch, metric);
CREATE INDEX IF NOT EXISTS evaluations_lookup ON evaluations (supernet_sha256, split, metric);
"""


def default_store_path() -> Path:
    """The store shared by calibration and accuracy evaluation: $EDGENAS_STORE, else <latency tables>/store.sqlite
    (the tables folder is $EDGENAS_LATENCY_TABLES, else ./latency_tables)."""
    if os.environ.get("EDGENAS_STORE"):
        return Path(os.environ["EDGENAS_STORE"])
    return Path(os.environ.get("EDGENAS_LATENCY_TABLES", "latency_tables")) / "store.sqlite"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _arch_json(arch: Any) -> str:
    """Canonical JSON of an arch (an Arch, a dict or a JSON string), so equal archs compare equal."""
    if hasattr(arch, "to_dict"):
        arch = arch.to_dict()
    elif isinstance(arch, str):
        arch = json.loads(arch)
    return json.dumps(arch, sort_keys=True, separators=(",", ":"))


def _measurement_dict(measurement: Any) -> dict[str, Any]:
    if isinstance(measurement, Mapping):
        return dict(measurement)
    if hasattr(measurement, "to_dict"):
        return dict(measurement.to_dict())
    raise TypeError(f"a measurement must be a dict or have to_dict(), got {type(measurement).__name__}")


@dataclass(frozen=True)
class StoredMeasurement:
    """One row of the measurements table."""

    id: int
    model_sha256: str
    model_kind: str
    model_description: str
    device: str
    runtime: str
    runtime_version: str | None
    precision: str
    agent_version: str | None
    ok: bool
    median_ms: float | None
    measurement: dict[str, Any]
    error: str | None
    created: str
    latency_ms: float | None = None  # the figure (timed interleaved); median_ms is the median run

    @property
    def std_ms(self) -> float | None:
        return self.measurement.get("std_ms")

    @property
    def runs(self) -> int | None:
        return self.measurement.get("runs")


@dataclass(frozen=True)
class StoredEvaluation:
    """One row of the evaluations table."""

    id: int
    supernet_sha256: str
    dataset: str
    split: str
    arch: dict[str, Any]
    metric: str
    value: float
    extra: dict[str, Any]
    created: str


def _upgrade_from_1(conn: sqlite3.Connection) -> None:
    """Version 1 stored latencies timed in one burst per model, which disagree with themselves by up to 40 % on a
    device whose speed changes: keep those rows for the record, but mark them failed ("timed_in_a_burst") so they
    are measured again, interleaved, when needed. Evaluations (accuracy) are kept as they are."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(measurements)")}
    if "latency_ms" not in columns:
        conn.execute("ALTER TABLE measurements ADD COLUMN latency_ms REAL")
    conn.execute("UPDATE measurements SET ok = 0, error = 'timed_in_a_burst' WHERE ok = 1")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


class Store:
    """`Store(path)`: measurements and evaluations in one SQLite file (created on first use)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self._conn()
        with conn:
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) == 1:
                _upgrade_from_1(conn)
            elif int(row[0]) != SCHEMA_VERSION:
                raise UsageError(
                    f"store {self.path} has schema version {row[0]}, this edgenas reads version {SCHEMA_VERSION}: "
                    f"use a new store file or the edgenas version that wrote it")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- measurements ------------------------------------------------------------------------
    def add_measurement(
        self,
        measurement: Any,
        *,
        model_sha256: str | None = None,
        model_kind: str,
        model_description: str | Mapping[str, Any],
        device: str,
        runtime: str,
        precision: str,
        runtime_version: str | None = None,
        agent_version: str | None = None,
    ) -> bool:
        """Commit one measurement (a Measurement or its dict). Returns False when an equal successful
        measurement (same model sha256, device, runtime, precision) is already stored, True otherwise.

        `model_sha256`, `runtime_version` and `agent_version` default to the measurement's own fields.
        """
        m = _measurement_dict(measurement)
        sha = model_sha256 or m.get("model_sha256")
        if not sha:
            raise ValueError("add_measurement needs the model's sha256 (model_sha256= or in the measurement)")
        error = m.get("error")
        # The figure: `latency_ms`; a dict from a device that times exactly (a board) may give only its median.
        figure = m.get("latency_ms", m.get("median_ms"))
        ok = bool(m.get("ok", error is None)) and figure is not None
        if not ok and not error:
            error = "no_result"
        description = model_description if isinstance(model_description, str) else json.dumps(
            model_description, sort_keys=True, separators=(",", ":"))
        row = (
            sha, model_kind, description, device, runtime,
            runtime_version if runtime_version is not None else m.get("runtime_version"),
            precision,
            agent_version if agent_version is not None else m.get("agent_version"),
            int(ok), float(m["median_ms"]) if ok and m.get("median_ms") is not None else None,
            json.dumps(m, sort_keys=True, default=str), None if ok else str(error), _now(),
            float(figure) if ok else None,
        )
        with self._write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO measurements (model_sha256, model_kind, model_description, device, runtime, "
                "runtime_version, precision, agent_version, ok, median_ms, measurement, error, created, latency_ms) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
            return cur.rowcount == 1

    @staticmethod
    def _measurement(row: tuple) -> StoredMeasurement:
        return StoredMeasurement(
            id=row[0], model_sha256=row[1], model_kind=row[2], model_description=row[3], device=row[4],
            runtime=row[5], runtime_version=row[6], precision=row[7], agent_version=row[8], ok=bool(row[9]),
            median_ms=row[10], measurement=json.loads(row[11]), error=row[12], created=row[13], latency_ms=row[14])

    _M_COLS = ("id, model_sha256, model_kind, model_description, device, runtime, runtime_version, precision, "
               "agent_version, ok, median_ms, measurement, error, created, latency_ms")

    def measurement_for(self, model_sha256: str, device: str, runtime: str, precision: str) -> StoredMeasurement | None:
        """The successful measurement of this model on this device/runtime/precision, or None."""
        row = self._conn().execute(
            f"SELECT {self._M_COLS} FROM measurements WHERE model_sha256=? AND device=? AND runtime=? "
            "AND precision=? AND ok=1", (model_sha256, device, runtime, precision)).fetchone()
        return self._measurement(row) if row else None

    def measurements(
        self,
        *,
        device: str | None = None,
        runtime: str | None = None,
        precision: str | None = None,
        model_kind: str | None = None,
        ok: bool | None = True,
    ) -> list[StoredMeasurement]:
        """Stored measurements matching every given filter, oldest first (`ok=None`: failures too)."""
        where, args = [], []
        for col, value in (("device", device), ("runtime", runtime), ("precision", precision),
                           ("model_kind", model_kind)):
            if value is not None:
                where.append(f"{col}=?")
                args.append(value)
        if ok is not None:
            where.append("ok=?")
            args.append(int(ok))
        sql = f"SELECT {self._M_COLS} FROM measurements"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [self._measurement(r) for r in self._conn().execute(sql + " ORDER BY id", args)]

    def count_measurements(self, **filters: Any) -> int:
        return len(self.measurements(**filters))

    # ---- evaluations -------------------------------------------------------------------------
    def add_evaluation(
        self,
        *,
        supernet_sha256: str,
        dataset: str,
        split: str,
        arch: Any,
        metric: str,
        value: float,
        extra: Mapping[str, Any] | None = None,
    ) -> bool:
        """Commit one evaluation (e.g. top-1 of an arch). Returns False if this key was already stored."""
        with self._write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO evaluations (supernet_sha256, dataset, split, arch, metric, value, extra, created) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (supernet_sha256, dataset, split, _arch_json(arch), metric, float(value),
                 json.dumps(dict(extra or {}), sort_keys=True, default=str), _now()))
            return cur.rowcount == 1

    def has_evaluation(self, *, supernet_sha256: str, dataset: str, split: str, arch: Any, metric: str) -> bool:
        row = self._conn().execute(
            "SELECT 1 FROM evaluations WHERE supernet_sha256=? AND dataset=? AND split=? AND arch=? AND metric=?",
            (supernet_sha256, dataset, split, _arch_json(arch), metric)).fetchone()
        return row is not None

    def evaluated(self, supernet_sha256: str) -> list[tuple[Any, str, str]]:
        """(arch, split, metric) of every evaluation of this supernet, oldest first."""
        rows = self._conn().execute("SELECT arch, split, metric FROM evaluations WHERE supernet_sha256=? ORDER BY id",
                                    (supernet_sha256,))
        return [(json.loads(r[0]), r[1], r[2]) for r in rows]

    def evaluations(self, supernet_sha256: str, split: str, metric: str, *,
                    dataset: str | None = None) -> list[StoredEvaluation]:
        """Every evaluation of this supernet, split and metric (optionally one dataset), oldest first."""
        sql = ("SELECT id, supernet_sha256, dataset, split, arch, metric, value, extra, created FROM evaluations "
               "WHERE supernet_sha256=? AND split=? AND metric=?")
        args: list[Any] = [supernet_sha256, split, metric]
        if dataset is not None:
            sql += " AND dataset=?"
            args.append(dataset)
        return [StoredEvaluation(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], json.loads(r[7]), r[8])
                for r in self._conn().execute(sql + " ORDER BY id", args)]
