"""Tests for the `edgenas export` command: one folder per device, resumable, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from edgenas import SearchSpace, Supernet
from edgenas.artifacts import sha256_file, write_manifest
from edgenas.cli import main

ROOT = Path(__file__).resolve().parents[2]
ARCH = '{"resolution": 24, "depths": [1, 1, 1, 1], "kernels": [3, 3, 3, 3], "expands": [3, 3, 3, 3]}'


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from edgenas.data import load_dataset
    from edgenas.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    space = SearchSpace.preset("tiny", in_channels=1)
    net = Supernet(space)
    data = load_dataset("digits", seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "supernet.pt"
    save_checkpoint(path, {"space": space.to_dict(), "model": net.state_dict(), "dataset": "digits",
                           "dataset_fingerprint": data.fingerprint, "seed": 0, "config": {}, "complete": True})
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgenas: error: "), err
    return err[0]


@pytest.mark.parametrize("content", [b"PK\x03\x04 this is not a checkpoint", bytes(range(256)) * 4])
def test_corrupt_checkpoint_is_one_line_and_status_2(tmp_path, capsys, content):
    bad = tmp_path / "supernet.pt"
    bad.write_bytes(content)
    assert main(["export", "--supernet", str(bad), "--arch", ARCH, "--formats", "onnx", "--out", str(tmp_path)]) == 2
    assert str(bad) in _one_line_error(capsys)


def test_arch_outside_the_space_is_one_line_and_status_2(checkpoint, tmp_path, capsys):
    arch = ARCH.replace('"resolution": 24', '"resolution": 31')
    assert main(["export", "--supernet", str(checkpoint), "--arch", arch, "--formats", "onnx", "--out", str(tmp_path)]) == 2
    line = _one_line_error(capsys)
    assert "resolution 31" in line and "24, 28, 32" in line
    assert not list(tmp_path.iterdir())


def test_missing_converter_is_one_line_and_status_2(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    code = main(["export", "--supernet", str(checkpoint), "--arch", ARCH, "--formats", "onnx,tflite", "--out", str(tmp_path)])
    assert code == 2
    assert "edgenas[tflite]" in _one_line_error(capsys)


def test_mismatched_arch_and_device_counts(checkpoint, tmp_path, capsys):
    names = []
    for name in "abc":  # devices that exist: an unknown name is refused first, naming the near one
        (tmp_path / f"{name}.toml").write_text(f'name = "{name}"\nkind = "local"\n')
        names += ["--device", str(tmp_path / f"{name}.toml")]
    code = main(["export", "--supernet", str(checkpoint), "--arch", ARCH, "--arch", ARCH, *names,
                 "--formats", "onnx", "--out", str(tmp_path / "out")])
    assert code == 2 and "one --arch per device" in _one_line_error(capsys)


def test_one_folder_per_device_with_measured_latency_then_resume(checkpoint, tmp_path, capsys):
    search = tmp_path / "search-local.json"  # what `edgenas search` writes: an arch key and predictions
    search.write_text(json.dumps({"arch": json.loads(ARCH), "algorithm": "evolution", "device": "local",
                                  "best": {"predicted": {"latency_ms": 0.8, "accuracy": 0.9}}}))
    predictor = tmp_path / "latency-predictor.json"
    predictor.write_text('{"version": 3}')
    write_manifest(search, kind="search-result", inputs={"latency_predictor": str(predictor)})
    devices = []
    for name in ("local.toml", "local-tflite.toml"):  # the repo's local devices, timing in 0.3 s windows, not 4 s,
        devices.append(tmp_path / name)  # that wait for no fast moments
        text = (ROOT / "devices" / name).read_text()
        devices[-1].write_text(text.replace("window_s = 4", "window_s = 0.3\nmin_fast_runs = 0", 1))
    args = ["export", "--supernet", str(checkpoint), "--arch", str(search), "--arch", ARCH,
            "--device", str(devices[0]), "--device", str(devices[1]),
            "--formats", "onnx", "--out", str(tmp_path / "out"), "--json"]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert [Path(r["out"]).name for r in results] == ["local", "local-tflite"] and all(r["ok"] for r in results)
    card = json.loads((tmp_path / "out" / "local" / "card.json").read_text())
    assert card["latency"]["predicted_ms"] == 0.8 and card["lineage"]["search"]["algorithm"] == "evolution"
    assert card["lineage"]["search"]["result"]["path"] == "../../search-local.json"  # relative to the card's folder
    assert card["lineage"]["search"]["inputs"]["latency_predictor"]["sha256"] == sha256_file(predictor)
    (measured,) = card["latency"]["measured"]
    assert measured["ok"] and measured["median_ms"] > 0 and measured["file"] == "model.onnx"
    other = json.loads((tmp_path / "out" / "local-tflite" / "card.json").read_text())
    assert other["latency"]["measured"] == []  # a TFLite device, and no TFLite file was asked for
    assert card["verification"][0]["passed"] and card["lineage"]["supernet"]["sha256"]
    # a second run finds both exports finished and redoes nothing
    assert main(args) == 0
    assert all(r.get("skipped") for r in json.loads(capsys.readouterr().out))


def test_export_flags_reach_the_files_and_a_missed_target_is_exit_status_1(checkpoint, tmp_path, capsys):
    """--nchw, --calibration-images, --finetune-epochs, --no-micro, --no-verify and --target-flash-kb, each checked in
    what was written; a file over its flash target fails the export with exit status 1 and is kept. (The supernet is
    untrained, so its int8 file would fail verification: --no-verify keeps the flash target the only check that can
    fail.) NCHW int8 goes through litert-torch, about 10 s a file: this is the one export here that takes it."""
    from edgenas.export.tflite import tflite_interpreter

    out = tmp_path / "out"
    code = main(["export", "--supernet", str(checkpoint), "--arch", ARCH, "--formats", "tflite,tflite-int8", "--out",
                 str(out), "--nchw", "--calibration-images", "24", "--finetune-epochs", "1", "--no-micro", "--no-verify",
                 "--json", "--target-flash-kb", "1"])
    (result,) = json.loads(capsys.readouterr().out)
    assert code == 1 and not result["ok"]
    assert "more than --target-flash-kb 1" in result["error"]
    assert (out / "model_int8.tflite").is_file() and (out / "model_fp32.tflite").is_file()  # kept for inspection
    card = json.loads((out / "card.json").read_text())
    assert card["lineage"]["calibration_images"] == 24 and card["lineage"]["finetune_epochs"] == 1
    assert card["sram"]["tflm_arena_bytes"] is None and not card["sram"].get("tflm")  # --no-micro: not run
    assert card["verification"] == []  # --no-verify
    assert card["files"][-1]["name"] == "model_int8.tflite"
    interpreter = tflite_interpreter(str(out / "model_fp32.tflite"))
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, 1, 24, 24]  # NCHW kept


def test_a_failed_export_is_not_finished_a_finished_one_is_skipped_and_force_redoes_it(checkpoint, tmp_path, capsys):
    """A file over its flash target fails the export (exit 1); the same export again is done anew, not skipped; once
    it passed, it is skipped; --force writes it again."""
    import numpy as np

    out = tmp_path / "out"
    base = ["export", "--supernet", str(checkpoint), "--arch", ARCH, "--formats", "tflite-int8", "--out", str(out),
            "--calibration-images", "24", "--no-micro", "--no-verify", "--json"]
    assert main([*base, "--target-flash-kb", "1"]) == 1
    assert not json.loads(capsys.readouterr().out)[0]["ok"]
    int8 = out / "model_int8.tflite"
    first = int8.stat().st_mtime_ns

    code = main([*base, "--target-flash-kb", "4096"])  # the failed export is not taken as finished
    (result,) = json.loads(capsys.readouterr().out)
    assert code == 0 and result["ok"] and not result.get("skipped")
    assert main([*base, "--target-flash-kb", "4096"]) == 0
    assert json.loads(capsys.readouterr().out)[0].get("skipped")  # finished: nothing redone
    again = int8.stat().st_mtime_ns
    assert again > first
    assert main([*base, "--target-flash-kb", "4096", "--force"]) == 0
    assert not json.loads(capsys.readouterr().out)[0].get("skipped")
    assert int8.stat().st_mtime_ns > again
    assert np.isfinite(json.loads((out / "card.json").read_text())["flash"]["int8_file_bytes"])


def test_a_board_far_too_small_is_answered_from_the_predicted_arena_without_converting(checkpoint, tmp_path, capsys):
    """--formats tflite-int8 --target-sram-kb far under the predicted arena: exit status 1 with one line per arch,
    and nothing written (no data loaded, nothing converted); a board that fits goes on to the export."""
    from edgenas.micro_memory import predict

    space = SearchSpace.preset("tiny", in_channels=1)
    arena_kb = predict(space, space.parse_arch(ARCH)).arena / 1024
    out = tmp_path / "out"
    code = main(["export", "--supernet", str(checkpoint), "--arch", ARCH, "--formats", "tflite-int8", "--out", str(out),
                 "--target-sram-kb", f"{arena_kb / 3:.1f}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "does not fit this board" in err[0] and "nothing was converted" in err[0]
    assert not out.exists() or not any(out.iterdir())
