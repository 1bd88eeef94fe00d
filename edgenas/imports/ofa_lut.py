"""Once-for-All's phone latency lookup tables (`note10_<res>_lookup_table.yaml`) as a device's latency table.

Each YAML file (read with `yaml.safe_load`) holds, for one input resolution, the mean latency (ms) of every
layer configuration Once-for-All's `LatencyEstimator` queries (`ofa/tutorial/latency_table.py`): the stem
`Conv`, each `expanded_conv` (input, output, hidden width, kernel, stride, identity skip, SE, h-swish), and the
head's `Conv_1`, `AvgPool2D`, `Conv_2` and `Logits`. edgenas's table pieces are coarser (the stem with the
first block, each block, the head as one), so each piece's figure is the sum of the layers Once-for-All
would add for it: the table predictor's sum over an arch is then Once-for-All's `predict_efficiency`.
The space (w1.0 or w1.2) and the class count are read from the tables; the resolutions are those of the files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edgenas.artifacts import atomic_write_text, sha256_file
from edgenas.errors import UsageError
from edgenas.inputs import input_file
from edgenas.latency.blocks import BlockIndex
from edgenas.latency.predictors import TablePredictor
from edgenas.latency.table import LatencyTable, predictor_path, table_path
from edgenas.space import SearchSpace, conv_out

PRESET_BY_STEM = {16: "mobilenetv3", 24: "mobilenetv3-w1.2"}
RUNTIME, PRECISION = "tflite", "fp32"  # Once-for-All timed TFLite fp32 models on the phone
MAX_BYTES = 64 << 20
CONV = re.compile(r"^Conv-input:(\d+)x\1x3-output:(\d+)x\2x(\d+)$")
LOGITS = re.compile(r"^Logits-input:1x1x\d+-output:(\d+)$")


def _expanded(hw: int, cin: int, out: int, cout: int, mid: int, kernel: int, stride: int, skip: bool, se: bool,
              hswish: bool) -> str:
    return (f"expanded_conv-input:{hw}x{hw}x{cin}-output:{out}x{out}x{cout}-expand:{mid}-kernel:{kernel}"
            f"-stride:{stride}-idskip:{int(skip)}-se:{int(se)}-hs:{int(hswish)}")


def ofa_layer_keys(piece: Any) -> list[str]:
    """The keys of Once-for-All's table whose means make up one edgenas latency piece (`latency.blocks.Piece`)."""
    hw = piece.hw
    if piece.kind == "stem":
        h = conv_out(hw, 3, piece.stride)
        return [f"Conv-input:{hw}x{hw}x{piece.cin}-output:{h}x{h}x{piece.mid}",
                _expanded(h, piece.mid, h, piece.cout, piece.mid, 3, 1, piece.residual, False, False)]
    if piece.kind == "head":
        c, m, f = piece.cin, piece.mid, piece.extra
        return [f"Conv_1-input:{hw}x{hw}x{c}-output:{hw}x{hw}x{m}", f"AvgPool2D-input:{hw}x{hw}x{m}-output:1x1x{m}",
                f"Conv_2-input:1x1x{m}-output:1x1x{f}", f"Logits-input:1x1x{f}-output:{piece.cout}"]
    out = conv_out(hw, piece.kernel, piece.stride)
    return [_expanded(hw, piece.cin, out, piece.cout, piece.mid, piece.kernel, piece.stride, piece.residual,
                      piece.se_mid > 0, piece.act == "hswish")]


def read_ofa_table(path: str | Path) -> tuple[int, dict[str, float], int, int | None]:
    """One YAML table: its resolution, {key: mean ms}, the stem's width and the class count (from `Logits`)."""
    # deferred: yaml loads only when this runs, not on import
    import yaml

    path = input_file(path, "Once-for-All latency table", hint="it is note10_<res>_lookup_table.yaml")
    if path.stat().st_size > MAX_BYTES:
        raise UsageError(f"{path} is larger than {MAX_BYTES >> 20} MiB: not a Once-for-All latency table")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        why = str(exc).splitlines()[0][:100]
        raise UsageError(f"{path} is not a Once-for-All latency table: it is not plain YAML ({why})") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{path} is not a Once-for-All latency table: expected a mapping of layer keys")
    means: dict[str, float] = {}
    for key, entry in data.items():
        mean = entry.get("mean") if isinstance(entry, dict) else None
        if not isinstance(key, str) or isinstance(mean, bool) or not isinstance(mean, (int, float)) \
                or not 0 <= mean < 1e6:
            raise UsageError(f"{path}: entry {str(key)[:80]!r} has no mean latency in ms (mean: <number>): "
                             "not a Once-for-All latency table")
        means[key] = float(mean)
    stems = [m for m in map(CONV.match, means) if m]
    if len(stems) != 1:
        raise UsageError(f"{path}: expected one stem entry 'Conv-input:RxRx3-output:...', found {len(stems)}")
    classes = [int(m.group(1)) for m in map(LOGITS.match, means) if m]
    return int(stems[0].group(1)), means, int(stems[0].group(3)), classes[0] if len(classes) == 1 else None


def space_of_tables(tables: dict[int, dict[str, float]], stem: int, classes: int | None, source: str) -> SearchSpace:
    """The preset the tables measure (by the stem's width), at the tables' resolutions."""
    if stem not in PRESET_BY_STEM:
        raise UsageError(f"{source}: the stem has {stem} channels: Once-for-All's MobileNetV3 tables have 16 "
                         "(w1.0) or 24 (w1.2)")
    space = SearchSpace.preset(PRESET_BY_STEM[stem])
    outside = sorted(set(tables) - set(space.resolutions))
    if outside:
        raise UsageError(f"{source}: resolution {outside[0]} is not offered by the '{space.name}' space: it has "
                         f"{space.resolutions[0]} to {space.resolutions[-1]} px")
    return space.replace(resolutions=tuple(sorted(tables)), num_classes=classes or space.num_classes)


def piece_table(space: SearchSpace, tables: dict[int, dict[str, float]]) -> dict[str, float]:
    """{edgenas piece key: ms}, one entry per piece and resolution (`BlockIndex(per_resolution=True)`): each the
    sum of Once-for-All's layers for the piece in that resolution's table."""
    index = BlockIndex(space, per_resolution=True)
    out: dict[str, float] = {}
    for key, piece, resolution in zip(index.keys, index.pieces, index.scopes):
        layers = ofa_layer_keys(piece)
        missing = [k for k in layers if k not in tables[resolution]]
        if missing:
            raise UsageError(f"the {resolution} px table lacks {missing[0]!r}, which the '{space.name}' space "
                             "needs: is it a table of another network?")
        value = 0.0
        for k in layers:  # Once-for-All's own order of addition
            value += tables[resolution][k]
        out[key] = value
    return out

DEVICE_FILE = '''# {name}: a phone known from Once-for-All's published latency tables ({files}).
# Searching needs only the imported table (latency_tables/{name}/); to export and measure on the phone itself,
# point config_host at a Host entry of ~/.ssh/config for it (Termux's sshd: see android-termux.example.toml).
name = "{name}"
kind = "ssh"
runtime = "{runtime}"
threads = 1
description = "{description}"

[ssh]
config_host = "{name}"
'''


def import_ofa_tables(files: list[str | Path], device: str, *, tables_root: str | Path | None = None,
                      devices_dir: str | Path = "devices", description: str | None = None) -> dict[str, Any]:
    """Write Once-for-All's YAML tables as `device`'s latency table and table predictor (manifests beside them),
    and a device file `devices/<device>.toml` when there is none. Returns a summary."""
    if not files:
        raise UsageError("give Once-for-All's latency tables, one YAML file per resolution")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", device):
        raise UsageError(f"bad device name {device!r}: use letters, digits, '.', '_' and '-'")
    tables: dict[int, dict[str, float]] = {}
    paths: dict[int, str | Path] = {}
    shapes = set()
    for path in files:
        resolution, means, stem, classes = read_ofa_table(path)
        if resolution in tables:
            raise UsageError(f"{path}: a second table for {resolution} px: give one file per resolution")
        tables[resolution], paths[resolution] = means, path
        shapes.add((stem, classes))
    if len(shapes) > 1:
        raise UsageError(f"the tables are for different networks (stem width, classes: {sorted(shapes, key=str)}): "
                         "give the tables of one supernet")
    stem, classes = shapes.pop()
    space = space_of_tables(tables, stem, classes, str(files[0]))
    pieces = piece_table(space, tables)
    inputs = {f"table_{r}": str(paths[r]) for r in sorted(paths)}
    origin = {"format": "once-for-all latency lookup tables",
              "files": {Path(p).name: sha256_file(p) for p in files}}
    table = LatencyTable(device=device, runtime=RUNTIME, precision=PRECISION, runtime_version=None,
                         device_description={"name": device, "imported_from": origin})
    for key, ms in pieces.items():
        table.add(key, latency_ms=ms, median_ms=None, std_ms=None, runs=1, model_sha256="")
    tpath = table.save(table_path(device, RUNTIME, PRECISION, tables_root), inputs=inputs)
    predictor = TablePredictor(device=device, runtime=RUNTIME, precision=PRECISION, space=space, table=pieces,
                               per_resolution=True)
    ppath = predictor.save(predictor_path(device, RUNTIME, PRECISION, tables_root), inputs=inputs,
                           extra={"imported_from": origin})
    device_file = Path(devices_dir) / f"{device}.toml"
    wrote_device = not device_file.exists()
    if wrote_device:
        text = DEVICE_FILE.format(name=device, runtime=RUNTIME, files=", ".join(Path(p).name for p in files),
                                  description=description or f"{device}: Once-for-All's published latency tables")
        atomic_write_text(device_file, text)
    return {"device": device, "space": space.name, "resolutions": list(space.resolutions), "pieces": len(pieces),
            "table": str(tpath), "predictor": str(ppath), "device_file": str(device_file),
            "wrote_device_file": wrote_device}

