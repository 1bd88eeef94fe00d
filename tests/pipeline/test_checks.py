"""The run's own checks beyond training: a latency predictor that fails its held-out check shows in the summary,
the report and the exit status (as a failed export check does)."""

from __future__ import annotations

from pathlib import Path

from edgenas.cli.run import EXIT_CHECK_FAILED, _finish
from edgenas.pipeline.report import DeviceReport, ReportData, render_report
from edgenas.pipeline.runner import HOLDOUT_WITHIN_10_NEEDED, RunResult, calibration_check


def _summary(within: int, held: int = 20) -> dict:
    return {"held-out subnets": held, "within ±10 %": round(within / held, 4), "within ±5 %": 0.0}


def test_the_held_out_check_needs_half_within_ten_percent():
    assert HOLDOUT_WITHIN_10_NEEDED == 0.5
    bad = calibration_check("local-fp32", _summary(1))  # a fit taken in a slow spell: every figure 1.24x
    assert not bad["passed"] and bad["within_10"] == 1 and bad["held_out"] == 20
    assert bad["message"].startswith("latency predictor for local-fp32: 1 of 20 held-out subnets within ±10 %")
    assert "check FAILED" in bad["message"] and "edgenas devices check" in bad["message"]
    assert calibration_check("local-fp32", _summary(10))["passed"]
    assert not calibration_check("local-fp32", _summary(9))["passed"]
    good = calibration_check("local-fp32", _summary(20))
    assert good["passed"] and "FAILED" not in good["message"]
    assert calibration_check("x", {})["passed"]  # no held-out subnets asked for: nothing to judge
    few = calibration_check("x", _summary(0, held=3))  # a quick trial's 3: shown, not judged
    assert few["passed"] and "too few to judge" in few["message"]
    assert not calibration_check("x", _summary(4, held=10))["passed"]


def _result(tmp_path: Path, checks: list[dict]) -> RunResult:
    return RunResult(tmp_path, tmp_path / "report.html", tmp_path / "supernet.pt", [], [], {}, [], checks)


def test_a_failed_held_out_check_is_in_the_summary_and_the_exit_status(tmp_path, capsys):
    ok = calibration_check("local-fp32", _summary(20))
    assert _finish(_result(tmp_path, [ok]), as_json=False) == 0
    assert ok["message"] in capsys.readouterr().out
    bad = calibration_check("local-tflite-fp32", _summary(3))
    assert _finish(_result(tmp_path, [ok, bad]), as_json=False) == EXIT_CHECK_FAILED
    out, err = capsys.readouterr()
    assert bad["message"] in out and f"edgenas: error: {bad['message']}" in err
    assert _finish(_result(tmp_path, [bad]), as_json=True) == EXIT_CHECK_FAILED
    assert '"passed": false' in capsys.readouterr().out


def test_the_report_shows_the_held_out_verdict(tmp_path):
    devices = []
    for name, within in (("fine", 20), ("slow", 1)):
        dev = DeviceReport(name, "onnxruntime", "fp32", calibration_predicted=[0.1, 0.2], calibration_measured=[0.1, 0.2],
                           calibration_summary=_summary(within))
        dev.calibration_check = calibration_check(f"{name}-fp32", dev.calibration_summary)
        devices.append(dev)
    html = render_report(ReportData("t", "digits", "tiny", devices=devices), tmp_path).read_text()
    assert "<p class=ok>latency predictor for fine-fp32: 20 of 20" in html
    assert "<p class=bad>latency predictor for slow-fp32: 1 of 20" in html and "check FAILED" in html
