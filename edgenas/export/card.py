"""The model card written beside exported files: card.json (complete, machine-readable) and card.md (short).

A card says what the model is (arch, MACs, parameters), how good it is (accuracy measured on the
validation split for every exported file), what it costs on a device (file sizes, SRAM measured in
TFLite Micro beside the arena and file size predicted before conversion (`edgenas.micro_memory`, what the
search constrained), latency predicted and measured), and where it came from (checksums of every
file; supernet checkpoint hash, dataset fingerprint, predictor and latency-table versions, seed).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgenas import __version__
from edgenas.artifacts import atomic_write_json, atomic_write_text, package_versions, sha256_file
from edgenas.export.card_snippets import contract_table, snippets_markdown

CARD_VERSION = 2  # 2: the input contract, each file's I/O and clients, per-file latency, plain lineage
CARD_JSON = "card.json"
CARD_MD = "card.md"
CARD_SCHEMA = Path(__file__).with_name("card.schema.json")  # the JSON Schema every card.json validates against


def file_entry(path: str | os.PathLike, fmt: str) -> dict[str, Any]:
    """Name, format, size and SHA-256 of one exported file, what it takes and gives (`io`), and the clients that
    load it as it is."""
    # deferred: torch loads only when this runs, not on import
    from edgenas.export.contract import file_io

    path = Path(path)
    try:
        io_: dict[str, Any] | None = file_io(fmt, path)
    except Exception:  # not a model its runtime reads (the card's schema then refuses the entry)  # noqa: BLE001
        io_ = None
    return {"name": path.name, "format": fmt, "bytes": path.stat().st_size, "sha256": sha256_file(path),
            "io": io_, "clients": {} if io_ is None else clients(fmt, io_)}


def clients(fmt: str, io_: Mapping[str, Any]) -> dict[str, str]:
    """Which clients load a file unchanged ("yes") and which do not (the reason)."""
    if fmt == "onnx":
        return {"ONNX Runtime": "yes"}
    out = {"LiteRT (ai_edge_litert)": "yes"}
    channels = io_["input_shape"][-1] if io_["layout"] == "NHWC" else io_["input_shape"][1]
    if io_["layout"] != "NHWC" or channels != 3:
        out["MediaPipe ImageClassifier"] = "no: it takes 1 x height x width x 3 (RGB) input only"
    elif io_["input_dtype"] not in ("float32", "uint8"):
        out["MediaPipe ImageClassifier"] = f"no: it takes float32 or uint8 input, this file takes {io_['input_dtype']}"
    else:
        out["MediaPipe ImageClassifier"] = "yes"
    if fmt == "tflite-int8":
        out["TFLite Micro"] = "yes (see the TFLite Micro check)"
    return out


def file_latency(files: Sequence[Mapping[str, Any]], latency: Mapping[str, Any]) -> dict[str, Any]:
    """Each file's measured latency (ms, device, runtime) or "not measured": never silently absent."""
    measured = {m.get("file"): m for m in latency.get("measured", []) if m.get("latency_ms") is not None}
    return {f["name"]: ({"latency_ms": measured[f["name"]]["latency_ms"], "device": measured[f["name"]].get("device"),
                         "runtime": measured[f["name"]].get("runtime")} if f["name"] in measured else "not measured")
            for f in files}


def build_card(
    *,
    arch: Mapping[str, Any],
    arch_str: str,
    space: str,
    stats: Mapping[str, int],
    files: Sequence[Mapping[str, Any]],
    accuracy: Mapping[str, Any],
    verification: Sequence[Mapping[str, Any]],
    sram: Mapping[str, Any],
    latency: Mapping[str, Any],
    conversion_seconds: Mapping[str, float],
    lineage: Mapping[str, Any],
    name: str = "model",
    memory: Mapping[str, int] | None = None,
    contract: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the card's JSON value from figures the export measured (nothing here is computed anew).

    `memory` is `edgenas.micro_memory.MemoryPrediction.to_dict()`: it goes beside the measured arena (`sram`) and
    the int8 file's size (`flash`). `contract` is the input contract the files carry (`edgenas.export.contract`)."""
    sram = dict(sram)
    flash: dict[str, Any] = {}
    if memory is not None:
        sram["predicted_arena_bytes"] = int(memory["arena_bytes"])
        sram["predicted_board_arena_bytes"] = int(memory["board_arena_bytes"])
        int8 = [f for f in files if f.get("format") == "tflite-int8"]
        flash = {"predicted_int8_bytes": int(memory["flash_bytes"]),
                 "int8_file_bytes": int(int8[0]["bytes"]) if int8 else None}
    return {
        "card_version": CARD_VERSION,
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "edgenas": __version__,
        "versions": package_versions(("torch", "numpy", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert",
                                      "tflite-micro")),
        "arch": dict(arch),
        "arch_str": arch_str,
        "space": space,
        "macs": int(stats["macs"]),
        "params": int(stats["params"]),
        "flash_estimate_bytes": {"int8": int(stats["flash_int8"]), "fp32": int(stats["flash_fp32"])},
        "files": [dict(f) for f in files],
        "accuracy": dict(accuracy),
        "verification": [_named(v) for v in verification],
        "sram": {k: (_named(v) if isinstance(v, Mapping) else v) for k, v in sram.items()},
        "flash": flash,
        "latency": {**latency, "files": file_latency(files, latency), "judged_on": judged_on(latency)},
        "contract": None if contract is None else dict(contract),
        "conversion_seconds": {k: round(float(v), 3) for k, v in conversion_seconds.items()},
        "lineage": dict(lineage),
    }


def _named(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry whose `path` is a file of the bundle, with the file's name in its place (no machine's paths)."""
    out = dict(entry)
    if isinstance(out.get("path"), str):
        out["path"] = Path(out["path"]).name
    return out


def judged_on(latency: Mapping[str, Any]) -> dict[str, Any] | None:
    """The file a latency budget was judged on: the first file measured on the device (the deploy stage measures
    only that one), its latency and where; None when nothing was measured."""
    for m in latency.get("measured", []):
        return {"file": m.get("file"), "device": m.get("device"), "runtime": m.get("runtime"),
                "latency_ms": m.get("latency_ms")}
    return None


def _kb(value: Any) -> str:
    return "-" if value is None else f"{value / 1024:.1f} KiB"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.2%}"


def render_markdown(card: Mapping[str, Any]) -> str:
    """A short human-readable card."""
    lines = [f"# {card['name']}", "",
             f"Subnet `{card['arch_str']}` of the `{card['space']}` search space, exported by edgenas {card['edgenas']}.",
             "", f"- MACs: {card['macs'] / 1e6:.2f} M; parameters: {card['params'] / 1e3:.1f} k",
             f"- SRAM: TFLite Micro arena {_kb(card['sram'].get('tflm_arena_bytes'))} measured, "
             f"{_kb(card['sram'].get('predicted_arena_bytes'))} predicted "
             f"({_kb(card['sram'].get('predicted_board_arena_bytes'))} on a 32-bit board); analytic peak activations "
             f"{_kb(card['sram'].get('analytic_peak_int8_bytes'))} (int8)"]
    flash = card.get("flash") or {}
    if flash:
        lines.append(f"- Flash: int8 .tflite {_kb(flash.get('int8_file_bytes'))}, "
                     f"{_kb(flash.get('predicted_int8_bytes'))} predicted")
    latency = card.get("latency") or {}
    if latency.get("predicted_ms") is not None:
        lines.append(f"- Latency predicted: {latency['predicted_ms']:.3g} ms on {latency.get('device', '?')}")
    for m in latency.get("measured", []):
        figure = m.get("latency_ms", m.get("median_ms"))  # cards written before interleaved timing have a median
        value = f"{figure:.3g} ms" if figure is not None else f"failed ({m.get('error')})"
        window = (m.get("timing") or {}).get("window") or {}
        if figure is not None and window.get("seconds") is not None:
            value += (f" (timed interleaved over {window['seconds']:.0f} s; median run {m.get('median_ms', 0):.3g} ms; "
                      f"slow {window.get('slow_share', 0):.0%} of the time")
            value += f"; UNSTEADY: {window['unsteady']})" if window.get("unsteady") else ")"
        lines.append(f"- Latency measured on {m.get('device')}: {m.get('file')} {value}")
    acc = card.get("accuracy") or {}
    split = acc.get("split", "val")
    lines += ["", f"## Files (accuracy on {acc.get('images', '?')} {split} images)", "",
              "| file | format | size | top-1 | check | sha256 |", "|---|---|---|---|---|---|"]
    checks = {Path(v["path"]).name: v for v in card.get("verification", [])}
    for f in card["files"]:
        check = checks.get(f["name"])
        verdict = "-" if check is None else ("pass" if check["passed"] else "FAIL")
        lines.append(f"| {f['name']} | {f['format']} | {_kb(f['bytes'])} | {_pct(acc.get('files', {}).get(f['name']))} "
                     f"| {verdict} | `{f['sha256'][:16]}` |")
    lines.append(f"\nPyTorch top-1: {_pct(acc.get('pytorch'))}.")
    for check in card.get("verification", []):  # the int8 check: on which images, with its interval
        if check.get("quantized"):
            lines.append(f"\nint8 check ({'pass' if check['passed'] else 'FAIL'}): {check.get('message', '')}")
    for other in card.get("passed_over") or []:
        lines.append(f"\nPassed over: {other.get('summary', other)}")
    if card.get("problems"):
        lines.append("\nProblems: " + "; ".join(card["problems"]))
    lines += _ship_lines(card)
    contract = card.get("contract")
    if contract:
        lines += ["", *contract_table(contract, card["files"]), "", *snippets_markdown(contract, card["files"])]
    lineage = card.get("lineage") or {}
    lines += ["", "## Lineage", ""]
    for key in sorted(lineage):  # plain values, as JSON (never Python reprs)
        value = lineage[key]
        lines.append(f"- {key}: {value if isinstance(value, str) else json.dumps(value, sort_keys=True)}")
    return "\n".join(lines) + "\n"


def _ship_lines(card: Mapping[str, Any]) -> list[str]:
    """What to ship: the file a latency budget was judged on, and every file's latency, measured or not."""
    latency = card.get("latency") or {}
    per_file = latency.get("files")
    if not per_file:
        return []
    lines = ["", "## What to ship", ""]
    judged = latency.get("judged_on")
    if judged:
        figure = "failed" if judged.get("latency_ms") is None else f"{judged['latency_ms']:.3g} ms"
        budget = "" if judged.get("budget_ms") is None else (
            f"; budget {judged['budget_ms']:g} ms, {'met' if judged.get('meets_budget') else 'NOT met'}")
        lines.append(f"- Judged on: {judged['file']}, {figure} measured on {judged.get('device')} "
                     f"({judged.get('runtime')}){budget}")
    else:
        lines.append("- Judged on: no file (no latency was measured on a device)")
    for name, value in per_file.items():
        if isinstance(value, Mapping):
            lines.append(f"- {name}: {value['latency_ms']:.3g} ms on {value.get('device')}")
        else:
            lines.append(f"- {name}: {value}")
    return lines


def write_card(out_dir: str | os.PathLike, card: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write card.json and card.md into `out_dir` (atomically); returns both paths."""
    out_dir = Path(out_dir)
    return (atomic_write_json(out_dir / CARD_JSON, card), atomic_write_text(out_dir / CARD_MD, render_markdown(card)))
