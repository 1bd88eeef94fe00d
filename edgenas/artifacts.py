"""Atomic file writes, content hashes and the JSON manifest written beside every artifact."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from edgenas import __version__

MANIFEST_SUFFIX = ".manifest.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(value: Any) -> str:
    """Hash of a JSON-serialisable value, independent of key order."""
    return sha256_bytes(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to `path` through a temp file in the same folder and a rename.

    A reader never sees a half-written file, and a crash leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def package_versions(names: tuple[str, ...] = ("torch", "numpy", "onnx", "onnxruntime")) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones are left out)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_manifest(
    artifact: str | os.PathLike,
    *,
    kind: str,
    inputs: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
    versions: tuple[str, ...] = ("torch", "numpy", "onnx", "onnxruntime"),
) -> Path:
    """Write `<artifact>.manifest.json`: what made the artifact, from which inputs, with which versions.

    `inputs` maps a role to a file path (hashed here) or to a precomputed value.
    """
    artifact = Path(artifact)
    resolved_inputs: dict[str, Any] = {}
    for role, value in (inputs or {}).items():
        if isinstance(value, (str, os.PathLike)) and Path(value).is_file():
            resolved_inputs[role] = {"path": str(value), "sha256": sha256_file(value)}
        else:
            resolved_inputs[role] = value
    manifest = {
        "artifact": artifact.name,
        "kind": kind,
        "sha256": sha256_file(artifact) if artifact.is_file() else None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "edgenas": __version__,
        "command": " ".join(sys.argv),
        "versions": package_versions(versions),
        "seed": seed,
        "inputs": resolved_inputs,
        "config": dict(config or {}),
    }
    if extra:
        manifest.update(extra)
    return atomic_write_json(manifest_path(artifact), manifest)


def manifest_path(artifact: str | os.PathLike) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def read_manifest(artifact: str | os.PathLike) -> dict[str, Any] | None:
    path = manifest_path(artifact)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_value(value: Any) -> str:
    """`value` as TOML writes it, on one line (control characters escaped): a string, bool, number or list."""
    if isinstance(value, str):
        return '"' + "".join(_TOML_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if not c.isprintable() else c)
                             for c in value) + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_text(header: str, data: Mapping[str, Any]) -> str:
    """A TOML document: `header` as comment lines, `data`'s values, then its tables (a mapping: `[name]`) and arrays
    of tables (a list of mappings: `[[name]]`). A None value is left out (TOML has no null)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            tables.append((f"[{key}]", value))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            tables.extend((f"[[{key}]]", v) for v in value)
        elif value is not None:
            lines.append(f"{key} = {toml_value(value)}")
    for name, table in tables:
        lines += ["", name] + [f"{k} = {toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def undefined_as_null(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None, so the file reads back (readers refuse NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: undefined_as_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [undefined_as_null(v) for v in value]
    return value
