"""Input checks: the files and options a user hands edgenas, checked for size, depth, encoding and range, with
one-line refusals.

Every file a command reads from the user (device and run TOML, training config, arch and search-space
JSON, latency tables and predictors, checkpoints, datasets, the measurement store) goes through this
module first. A reader checks that the path is a regular file of a sane size (not a folder, not
/dev/zero, not a pipe), that text is UTF-8 and nests at most `MAX_DEPTH` levels, and that every number
is finite; the format's own reader then checks its fields (a latency table's and predictor's checks are
in `edgenas.latency`, the accuracy predictor's in `edgenas.accuracy.predictor`, beside their readers).
A problem is a UsageError of one line that names the file, the field and what is expected; no refusal
suggests an unsafe option.

No reader runs code from a file: JSON and TOML are data, the pickled CIFAR-10 batches go through
`load_data_pickle` (numpy arrays, lists, dicts, bytes and str only), checkpoints through
`torch.load(weights_only=True)`. This module imports neither torch nor anything heavy.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import pickle
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.errors import UsageError
from edgenas.settings import Setting, is_int, is_number, require
from edgenas.space import ACTIVATIONS, Arch, SearchSpace

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, when installed (toml_module)
    tomllib = None

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
MAX_CONFIG_BYTES = 1 * MIB  # a device file, run config or training config
MAX_JSON_BYTES = 256 * MIB  # latency tables and predictors, arch files and search results
MAX_CHECKPOINT_BYTES = 16 * GIB
MAX_DATA_BYTES = 4 * GIB  # one dataset file (a CIFAR-10 batch, an IDX file unpacked)
MAX_DEPTH = 32  # tables and arrays inside each other: no edgenas file needs more than a few
MAX_SEED = 2**31 - 1


def size_text(n: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def one_line(text: str) -> str:
    """`text` on one line: line breaks and runs of spaces become single spaces."""
    return " ".join(str(text).split())


# ---- paths ----------------------------------------------------------------------------------

def input_file(path: str | os.PathLike, what: str, *, hint: str = "") -> Path:
    """`path` as a Path if it names a readable regular file (symlinks followed), else UsageError.

    `what` names the file's role ("device file", "checkpoint"); `hint` says how to make one.
    """
    p = Path(path)
    hint = f": {hint}" if hint else ""
    if str(path) == "":
        raise UsageError(f"{what} path is empty{hint or ': give a file'}")
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UsageError(f"{what} {p} does not exist{hint}") from None
    except NotADirectoryError:
        raise UsageError(f"{what} {p} does not exist (a part of the path is a file, not a folder){hint}") from None
    except OSError as exc:  # a symlink loop, a name too long, no permission on a folder
        raise UsageError(f"cannot open {what} {p}: {exc.strerror or exc}") from None
    except ValueError:  # a NUL byte in the path
        raise UsageError(f"{what} path {str(path)!r} holds a NUL byte: give a real file name") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {p} is a folder, not a file{hint}")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{what} {p} is not a regular file (a device, pipe or socket): give a regular file")
    return p


def read_bytes(path: str | os.PathLike, what: str, *, limit: int, hint: str = "") -> bytes:
    """The bytes of a regular file of at most `limit` bytes, or UsageError naming the file."""
    p = input_file(path, what, hint=hint)
    too_big = f"{what} {p} is larger than the {size_text(limit)} a {what} may be: is it the right file?"
    try:
        if p.stat().st_size > limit:
            raise UsageError(too_big)
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise UsageError(too_big)
    return data


def read_text(path: str | os.PathLike, what: str, *, limit: int = MAX_CONFIG_BYTES, hint: str = "") -> str:
    """A UTF-8 text file (a byte-order mark is allowed), or UsageError: binary, another encoding, too big."""
    data = read_bytes(path, what, limit=limit, hint=hint)
    return decode_text(data, f"{what} {path}")


def decode_text(data: bytes, source: str) -> str:
    if b"\x00" in data:
        raise UsageError(f"{source} is binary, not text (it holds NUL bytes): give the text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
                         "save it as UTF-8") from None


def output_dir(path: str | os.PathLike, option: str) -> Path:
    """Check, before any work, that `path` can be (or is) a folder to write into; UsageError if not."""
    p = Path(path)
    if str(path) == "":
        raise UsageError(f"{option} is empty: give a folder")
    if p.exists() and not p.is_dir():
        raise UsageError(f"{option} {p} is an existing file, not a folder: give a folder (new or existing)")
    _check_writable_parent(p, option)
    try:  # made now, so a place no folder can be made (read-only, /proc, a full disk) is found before any work
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {p}: cannot make the folder ({exc.strerror or exc}): choose another") from None
    return p


def output_files(folder: str | os.PathLike, names: tuple[str, ...], option: str) -> None:
    """Files a command will write (or append to) in `folder` must be regular files where they already exist."""
    for name in names:
        p = Path(folder) / name
        if (p.exists() or p.is_symlink()) and not p.is_file():
            raise UsageError(f"{option} {folder}: {p} is not a regular file (a folder, a device or a dangling "
                             "link): remove it, or choose another folder")


def output_file(path: str | os.PathLike, option: str) -> Path:
    """Check, before any work, that `path` can be written as a file; UsageError if it is a folder etc."""
    p = Path(path)
    if str(path) == "":
        raise UsageError(f"{option} is empty: give a file name")
    if p.is_dir():
        raise UsageError(f"{option} {p} is a folder: give a file name")
    if p.exists() and not p.is_file():
        raise UsageError(f"{option} {p} is not a regular file: give a file name")
    _check_writable_parent(p.parent, option)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {p}: cannot make its folder ({exc.strerror or exc}): choose another") from None
    return p


def _check_writable_parent(p: Path, option: str) -> None:
    """The nearest existing one of `p` and its parents must be a writable folder."""
    start = p.absolute()
    for candidate in (start, *start.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise UsageError(f"{option} {p}: {candidate} is a file, so no folder can be made there")
            if not os.access(candidate, os.W_OK | os.X_OK):
                raise UsageError(f"{option} {p}: {candidate} is not writable: choose a folder you can write to")
            return


# ---- structure: depth, finite numbers -----------------------------------------------------------

def _path_label(parts: list[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def check_tree(value: Any, source: str, *, max_depth: int = MAX_DEPTH, remedy: str = "") -> None:
    """Refuse data nested deeper than `max_depth`, and any NaN or infinite number, naming the field."""
    remedy = f"; {remedy}" if remedy else ""
    stack: list[tuple[Any, list[Any]]] = [(value, [])]
    seen: set[int] = set()
    while stack:
        item, where = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if id(item) in seen:
                continue
            seen.add(id(item))
            if len(where) >= max_depth:
                raise UsageError(f"{source} nests more than {max_depth} levels deep (at {_path_label(where[:3])}...): "
                                 f"no edgenas file needs that many{remedy}")
            children = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((v, [*where, k if isinstance(k, (int, str)) else repr(k)]) for k, v in children)
        elif isinstance(item, float) and not math.isfinite(item):
            raise UsageError(f"{source}: {_path_label(where)} = {item}: expected a finite number{remedy}")


def parse_json(text: str | bytes, source: str, *, remedy: str = "") -> Any:
    """JSON data from text, depth- and NaN-checked; UsageError (one line) for anything else."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
                         + (f"; {remedy}" if remedy else "")) from None
    except RecursionError:
        raise UsageError(f"{source} nests more than {MAX_DEPTH} levels deep: no edgenas file needs that many"
                         + (f"; {remedy}" if remedy else "")) from None
    except (ValueError, UnicodeDecodeError) as exc:  # an integer of thousands of digits, bad bytes
        raise UsageError(f"{source} is not valid JSON ({one_line(str(exc))[:120]})"
                         + (f"; {remedy}" if remedy else "")) from None
    check_tree(data, source, remedy=remedy)
    return data


def read_json(path: str | os.PathLike, what: str, *, limit: int = MAX_JSON_BYTES, hint: str = "",
              remedy: str = "") -> Any:
    """A JSON file's data (see `parse_json`); `hint` says how to make a missing file."""
    text = read_text(path, what, limit=limit, hint=hint)
    return parse_json(text, f"{what} {path}", remedy=remedy)


def toml_module() -> Any:
    if tomllib is not None:
        return tomllib
    try:
        # deferred: tomli (Python 3.10 only) loads only when a TOML file is read
        import tomli
    except ModuleNotFoundError:
        raise UsageError("reading TOML files on Python 3.10 needs tomli: pip install tomli") from None
    return tomli


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """TOML data from text, depth- and NaN-checked; UsageError (one line) for anything else."""
    tomllib = toml_module()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source} is not valid TOML: {one_line(str(exc))}") from None
    except RecursionError:
        raise UsageError(f"{source} nests tables or arrays more than {MAX_DEPTH} levels deep: "
                         "no edgenas file needs that many") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise UsageError(f"{source} is not valid TOML ({one_line(str(exc))[:120]})") from None
    check_tree(data, source)
    return data


def read_toml(path: str | os.PathLike, what: str, *, hint: str = "") -> dict[str, Any]:
    """A TOML file's data (see `parse_toml`), at most MAX_CONFIG_BYTES."""
    return parse_toml(read_text(path, what, limit=MAX_CONFIG_BYTES, hint=hint), f"{what} {path}")


# ---- values ---------------------------------------------------------------------------------

def mapping(value: Any, source: str, field: str, remedy: str = "") -> Mapping[str, Any]:
    require(isinstance(value, Mapping), source, field, value if not isinstance(value, Mapping) else "{...}",
            "a table of named fields", remedy)
    return value


def field_of(data: Mapping[str, Any], key: str, source: str, expected: str, remedy: str = "") -> Any:
    """`data[key]`, or UsageError naming the missing field."""
    if key not in data:
        raise UsageError(f"{source}: missing field {key}: expected {expected}" + (f"; {remedy}" if remedy else ""))
    return data[key]


def check_value(source: str, field: str, value: Any, kind: type, low: float | None = None,
                high: float | None = None, *, low_open: bool = False, remedy: str = "") -> Any:
    """Check one field's type (int, float, bool or str) and range; return the value (ints accepted as floats).
    The rule and its words are `edgenas.settings.Setting`'s, the one reader of every knob."""
    setting = Setting(kind, None, low, high, low_open)
    require(value is not None and setting.accepts(value), source, field, value, setting.expected(), remedy)
    return value


def check_seed(value: Any, what: str) -> int:
    if not is_int(value) or not 0 <= int(value) <= MAX_SEED:
        raise UsageError(f"{what} = {value!r}: expected an integer from 0 to {MAX_SEED}")
    return int(value)


# ---- search spaces and archs -------------------------------------------------------------------

_SPACE_INTS = {"stem_width": (1, 4096), "stem_stride": (1, 2), "first_block_width": (1, 4096),
               "final_expand_width": (1, 16384), "feature_width": (1, 16384), "num_classes": (2, 100_000),
               "in_channels": (1, 64)}
_STAGE_KEYS = {"width", "stride", "act", "se", "depths"}


def space_from_dict(d: Any, source: str, remedy: str = "") -> Any:
    """A SearchSpace from its JSON form, with every field's type and range checked first."""
    d = mapping(d, source, "space", remedy)
    known = {"name", "stages", "kernels", "expands", "resolutions", "width_mult", "widths", "dropout", *_SPACE_INTS}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UsageError(f"{source}: space.{unknown[0]}: unknown field; expected {', '.join(sorted(known))}"
                         + (f"; {remedy}" if remedy else ""))
    require(isinstance(d.get("name", ""), str), source, "space.name", d.get("name"), "a name", remedy)
    for key, (lo, hi) in _SPACE_INTS.items():
        if key in d:
            require(is_int(d[key]) and lo <= d[key] <= hi, source, f"space.{key}", d[key],
                    f"an integer from {lo} to {hi}", remedy)
    for key, lo, hi in (("width_mult", 0.0, 16.0), ("dropout", 0.0, 0.99)):
        if key in d:
            require(is_number(d[key]) and (lo < d[key] if key == "width_mult" else lo <= d[key]) and d[key] <= hi,
                    source, f"space.{key}", d[key], f"a number in ({lo}, {hi}]" if key == "width_mult"
                    else f"a number from {lo} to {hi}", remedy)
    for key, lo, hi in (("kernels", 1, 31), ("expands", 1, 32), ("resolutions", 8, 4096)):
        values = d.get(key, [1 + (lo % 2 == 0)])
        require(isinstance(values, list) and 0 < len(values) <= 256 and all(is_int(v) and lo <= v <= hi for v in values),
                source, f"space.{key}", values, f"a list of integers from {lo} to {hi}", remedy)
    if "widths" in d:
        widths = d["widths"]
        require(isinstance(widths, list) and 0 < len(widths) <= 16
                and all(is_number(w) and 0 < w <= 1 for w in widths) and 1 in widths, source, "space.widths", widths,
                "a list of width multipliers in (0, 1] that includes 1", remedy)
    stages = field_of(d, "stages", source, "a list of stages", remedy)
    require(isinstance(stages, list) and 0 < len(stages) <= 32, source, "space.stages", stages,
            "a list of 1 to 32 stages", remedy)
    for i, s in enumerate(stages):
        where = f"space.stages[{i}]"
        s = mapping(s, source, where, remedy)
        bad = sorted(set(s) - _STAGE_KEYS)
        if bad or "width" not in s or "stride" not in s:
            raise UsageError(f"{source}: {where}: expected the fields {', '.join(sorted(_STAGE_KEYS))} "
                             f"(width and stride required)" + (f"; {remedy}" if remedy else ""))
        require(is_int(s["width"]) and 1 <= s["width"] <= 8192, source, f"{where}.width", s["width"],
                "an integer from 1 to 8192", remedy)
        require(s["stride"] in (1, 2) and is_int(s["stride"]), source, f"{where}.stride", s["stride"], "1 or 2", remedy)
        require(s.get("act", "relu") in ACTIVATIONS, source, f"{where}.act", s.get("act"),
                f"one of {', '.join(ACTIVATIONS)}", remedy)
        require(isinstance(s.get("se", False), bool), source, f"{where}.se", s.get("se"), "true or false", remedy)
        depths = s.get("depths", [2, 3, 4])
        require(isinstance(depths, list) and 0 < len(depths) <= 16 and all(is_int(v) and 1 <= v <= 32 for v in depths),
                source, f"{where}.depths", depths, "a list of integers from 1 to 32", remedy)
    try:
        return SearchSpace.from_dict(d)
    except (TypeError, ValueError, KeyError) as exc:
        raise UsageError(f"{source}: the search space is not valid: {one_line(str(exc))}"
                         + (f"; {remedy}" if remedy else "")) from None


def read_space_file(path: str | os.PathLike) -> Any:
    """A search space from a JSON file of `SearchSpace.to_dict()`."""
    data = read_json(path, "search-space file", limit=MAX_CONFIG_BYTES)
    return space_from_dict(data, f"search-space file {path}")


def parse_arch(value: Any, space: Any, option: str = "--arch") -> Any:
    """An Arch of `space` from inline JSON, a JSON file (an arch, a search result or a model card) or a dict."""
    if isinstance(value, Arch):
        source = option
        data: Any = value.to_dict()
    elif isinstance(value, Mapping):
        source, data = option, value
    else:
        text = str(value)
        if not text.strip():
            raise UsageError(f"{option} is empty: give an arch as inline JSON "
                             '({"resolution": ..., "depths": [...], "kernels": [...], "expands": [...]}) or a JSON file')
        if text.strip().startswith(("{", "[")):
            source = option
            if len(text) > MAX_CONFIG_BYTES:
                raise UsageError(f"{option} is {size_text(len(text))} of inline JSON: give an arch file instead")
            data = parse_json(text, f"{option} (inline JSON)")
        else:
            if "\x00" in text or len(text) > 4096 or (not any(c in text for c in "/\\.") and not Path(text).exists()):
                shown = text if len(text) < 60 else text[:57] + "..."
                raise UsageError(f"{option} {shown!r} is neither inline JSON nor an existing JSON file")
            source = f"arch file {text}"
            data = read_json(text, "arch file", limit=MAX_JSON_BYTES,
                             hint="give inline JSON or a JSON file (an arch, a search result or a model card)")
    if isinstance(data, Mapping) and isinstance(data.get("arch"), Mapping):
        data = data["arch"]  # a search result or model card holding an arch
    try:
        return Arch.from_dict(data, space)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise UsageError(f"{source}: the arch does not fit the '{space.name}' space: {one_line(str(exc))}") from None


# ---- pickled data (CIFAR-10 batches) ---------------------------------------------------------------

def _numpy_attr(module: str, name: str) -> Any:
    """numpy's `_core.<module>.<name>` (numpy 2), or `core.<module>.<name>` (numpy 1)."""
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:  # pragma: no cover - numpy 1.x
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


# What a pickled numpy array needs, and nothing else: no function that runs a command or imports a module.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_attr("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_attr("multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_attr("multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_attr("multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_attr("numeric", "_frombuffer"),  # protocol 5 arrays
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_attr("numeric", "_frombuffer"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: __import__("codecs").encode,  # bytes in protocol-2 pickles made by Python 3
}
_PICKLE_TYPES = (dict, list, tuple, bytes, str, int, float, bool, type(None), np.ndarray, np.generic)


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a Python object that a data file has no reason to hold."""


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        factory = _PICKLE_GLOBALS.get((module, name))
        if factory is None:
            raise RefusedGlobal(f"{module}.{name}")
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal("a persistent object")


def load_data_pickle(data: bytes, source: str, *, remedy: str = "re-download it") -> Any:
    """Unpickle a data file that may hold only numpy arrays, lists, dicts, bytes, str and numbers.

    Anything else (a class, a function such as os.system) is refused before it is called, so no code
    from the file runs.
    """
    try:
        value = _DataUnpickler(io.BytesIO(data), encoding="bytes").load()
    except RefusedGlobal as exc:
        raise UsageError(f"{source} is refused: it asks for the Python object {exc} (a data file may hold only "
                         f"numpy arrays, lists, dicts, bytes and str, so nothing in it was run); {remedy} "
                         "from a source you trust") from None
    except RecursionError:
        raise UsageError(f"{source} nests more than the interpreter can read: it is not a data file; {remedy}") from None
    except MemoryError:
        raise UsageError(f"{source} does not fit in memory: it is not a data file of this kind; {remedy}") from None
    except Exception as exc:  # truncated or foreign: EOFError, UnpicklingError, ValueError, TypeError, ...
        raise UsageError(f"{source} is not a readable pickle ({type(exc).__name__}: "
                         f"{one_line(str(exc))[:100]}); {remedy}") from None
    stack, seen, depth_of = [value], set(), {id(value): 0}
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if not isinstance(item, _PICKLE_TYPES) or (isinstance(item, (np.ndarray, np.generic)) and item.dtype.hasobject):
            kind = f"an array of {item.dtype}" if isinstance(item, np.ndarray) else type(item).__name__
            raise UsageError(f"{source} holds {kind}: a data file may hold only numpy arrays of numbers, lists, "
                             f"dicts, bytes and str; {remedy}")
        if isinstance(item, (dict, list, tuple)):
            depth = depth_of[id(item)]
            if depth >= MAX_DEPTH:
                raise UsageError(f"{source} nests more than {MAX_DEPTH} levels deep: it is not a data file; {remedy}")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else list(item)
            for child in children:
                depth_of.setdefault(id(child), depth + 1)
                stack.append(child)
    return value


# ---- model files -------------------------------------------------------------------------------

def check_model_file(path: str | os.PathLike) -> Path:
    """A model to measure must be a regular .onnx or .tflite file whose first bytes say so."""
    p = input_file(path, "model file", hint="give paths to .onnx or .tflite files")
    suffix = p.suffix.lower()
    if suffix not in (".onnx", ".tflite"):
        raise UsageError(f"model file {p} has the suffix {suffix or '(none)'!r}: expected .onnx or .tflite")
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise UsageError(f"cannot read model file {p}: {exc.strerror or exc}") from None
    if suffix == ".tflite" and head[4:8] != b"TFL3":
        raise UsageError(f"model file {p} is not a TFLite model (no TFL3 identifier at byte 4): export it again")
    if suffix == ".onnx" and (len(head) < 2 or head[0] != 0x08):
        raise UsageError(f"model file {p} is not an ONNX model (it does not start with an ONNX ir_version): "
                         "export it again")
    return p


# ---- the measurement store --------------------------------------------------------------------------

SQLITE_MAGIC = b"SQLite format 3\x00"


def check_store_path(path: str | os.PathLike | None, option: str = "--store") -> None:
    """An existing store must be an SQLite file; a new one needs a writable folder. Checked before any work."""
    if path is None:
        return
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        output_file(p, option)
        return
    input_file(p, "measurement store", hint="give an SQLite file made by edgenas, or a new file name")
    try:
        with open(p, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise UsageError(f"cannot read measurement store {p}: {exc.strerror or exc}") from None
    if head and head != SQLITE_MAGIC:
        raise UsageError(f"measurement store {p} is not an SQLite database: give the store edgenas made, "
                         "or a new file name")
