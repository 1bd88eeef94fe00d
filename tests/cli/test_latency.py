"""`edgenas calibrate` and `edgenas latency eval` through the CLI: --no-table, --statistic, --repeat, --json,
on the real agent timing real exported models (a micro space, so the test stays short)."""

from __future__ import annotations

import json

import numpy as np
from latency_helpers import MICRO, local_device_file, space_file

from edgenas.cli import main
from edgenas.latency.calibrate import load_latency_predictor
from edgenas.store import Store


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr()


def test_calibrate_no_table_with_the_min_statistic_then_latency_eval_with_repeat(tmp_path, capsys):
    device = local_device_file(tmp_path)
    common = ["--device", str(device), "--space", str(space_file(tmp_path)), "--tables", str(tmp_path / "tables"),
              "--store", str(tmp_path / "store.sqlite"), "--models", str(tmp_path / "models"), "--quiet", "--json"]
    code, out = _run(["calibrate", *common, "--budget", "4", "--no-table", "--statistic", "min"], capsys)
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["type"] == "whole_model" and result["measured_now"] == 4
    assert not result.get("table_path") and not list((tmp_path / "tables").rglob("*table*.json"))

    predictor = load_latency_predictor(result["predictor_path"], space=MICRO)
    assert predictor.fit_info["statistic"] == "min"
    archs, fitted = predictor.training_set
    assert len(archs) == 4
    with Store(tmp_path / "store.sqlite") as store:
        rows = store.measurements(device="testlocal", model_kind="arch")
    stored_min = sorted(float(r.measurement["min_ms"]) for r in rows)
    stored_latency = sorted(float(r.latency_ms) for r in rows)
    assert np.allclose(sorted(fitted), stored_min)  # fitted to each model's fastest run, as asked
    assert not np.allclose(stored_min, stored_latency)  # ... which is not the default figure

    code, out = _run(["latency", "eval", *common, "--holdout", "5", "--repeat"], capsys)
    assert code == 0, out.err
    evaluation = json.loads(out.out)
    assert evaluation["holdout"] == 5 and evaluation["device"] == "testlocal"
    names = [s["name"] for s in evaluation["scores"]]
    assert names == ["whole_model", "macs", "repeat"]
    repeat = evaluation["scores"][-1]
    assert repeat["calibration_measurements"] == 0 and 0 <= repeat["within_10"] <= 1 and repeat["device_seconds"] > 0

    code, out = _run(["latency", "eval", *common[:-1], "--holdout", "5"], capsys)  # the table, as a user reads it
    assert code == 0, out.err
    assert "whole_model" in out.out and "macs" in out.out and "repeat" not in out.out
