"""Tests for edgenas.export.card: card.json holds measured figures and checksums; card.md summarises them."""

from __future__ import annotations

import json

import pytest

from edgenas.artifacts import sha256_file
from edgenas.cost import arch_stats
from edgenas.export.card import build_card, file_entry, render_markdown, write_card
from tests.export.test_subnet import exported_bundle, trained_subnet


@pytest.fixture(scope="module")
def bundle():
    return exported_bundle()


def test_exported_card_lists_every_file_with_its_checksum(bundle):
    result, val_x, _ = bundle
    space, arch, _ = trained_subnet()
    card = json.loads((result.out_dir / "card.json").read_text())
    assert card["arch"] == arch.to_dict() and card["space"] == "tiny"
    stats = arch_stats(space, arch)
    assert card["macs"] == stats.macs and card["params"] == stats.params
    by_name = {f["name"]: f for f in card["files"]}
    assert set(by_name) == {"model.onnx", "model_fp32.tflite", "model_int8.tflite"}
    for name, entry in by_name.items():
        path = result.out_dir / name
        assert entry["sha256"] == sha256_file(path) and entry["bytes"] == path.stat().st_size
    assert card["accuracy"]["images"] == len(val_x)
    assert set(card["conversion_seconds"]) == {"onnx", "tflite", "tflite-int8"}
    assert card["lineage"]["test"] is True and card["lineage"]["calibration_images"] == 128
    assert card["sram"]["analytic_peak_int8_bytes"] == stats.peak_activation_int8
    md = (result.out_dir / "card.md").read_text()
    assert str(arch) in md and by_name["model_int8.tflite"]["sha256"][:16] in md
    assert "TFLite Micro arena" in md and "pass" in md


def test_card_round_trip_with_measured_latency(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not really a model, but a file with a checksum")
    entry = file_entry(path, "onnx")
    card = build_card(
        arch={"resolution": 24}, arch_str="r24|k3e3", space="tiny",
        stats={"macs": 1_500_000, "params": 20_000, "flash_int8": 30_000, "flash_fp32": 90_000},
        files=[entry], accuracy={"split": "val", "images": 10, "pytorch": 0.9, "files": {"model.onnx": 0.9}},
        verification=[{"path": str(path), "passed": True}], sram={"tflm_arena_bytes": None},
        latency={"predicted_ms": 1.25, "device": "pi", "measured": [
            {"device": "pi", "file": "model.onnx", "median_ms": 1.5},
            {"device": "pi", "file": "model.onnx", "median_ms": None, "error": "timeout"}]},
        conversion_seconds={"onnx": 0.1234}, lineage={"seed": 3}, name="demo")
    json_path, md_path = write_card(tmp_path, card)
    assert json.loads(json_path.read_text())["files"][0]["sha256"] == sha256_file(path)
    md = md_path.read_text()
    assert md == render_markdown(card)
    assert "1.25 ms on pi" in md and "1.5 ms" in md and "failed (timeout)" in md and "90.00%" in md


def test_card_shows_predicted_beside_measured_memory(tmp_path):
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(b"x" * 2048)
    memory = {"arena_bytes": 131_072, "head_bytes": 80_000, "tail_bytes": 51_072, "flash_bytes": 2_000,
              "board_arena_bytes": 125_000}
    card = build_card(
        arch={"resolution": 24}, arch_str="r24|k3e3", space="tiny",
        stats={"macs": 1_500_000, "params": 20_000, "flash_int8": 30_000, "flash_fp32": 90_000},
        files=[file_entry(path, "tflite-int8")], accuracy={"split": "val", "images": 10, "files": {}},
        verification=[], sram={"tflm_arena_bytes": 130_816, "analytic_peak_int8_bytes": 45_000},
        latency={}, conversion_seconds={}, lineage={}, memory=memory)
    assert card["sram"]["predicted_arena_bytes"] == 131_072 and card["sram"]["tflm_arena_bytes"] == 130_816
    assert card["flash"] == {"predicted_int8_bytes": 2_000, "int8_file_bytes": 2048}
    md = render_markdown(card)
    assert "TFLite Micro arena 127.8 KiB measured, 128.0 KiB predicted (122.1 KiB on a 32-bit board)" in md
    assert "int8 .tflite 2.0 KiB, 2.0 KiB predicted" in md
