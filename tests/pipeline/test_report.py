"""Tests for edgenas.pipeline.report: a self-contained HTML report that renders in headless Chromium."""

import html
import re
import shutil
import subprocess

import numpy as np
import pytest

from edgenas.pipeline.report import BudgetResult, DeviceReport, ReportData, render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _data() -> ReportData:
    rng = np.random.default_rng(0)
    measured = rng.uniform(0.5, 2.0, 40)
    dev = DeviceReport(
        "local", "onnxruntime", "fp32", {"kind": "local", "threads": 1},
        pareto_predicted=[(0.5 + 0.2 * i, 0.90 + 0.01 * i) for i in range(8)],
        pareto_measured=[(0.8, 0.93), (1.3, 0.96)],
        calibration_predicted=list(measured * rng.uniform(0.95, 1.05, 40)),
        calibration_measured=list(measured),
        calibration_summary={"within ±10 %": 0.975, "spearman": 0.98},
        budgets=[BudgetResult(1.0, {"resolution": 24}, 0.93, 0.925, 0.9, 0.95, True, "out/local/1ms",
                              {"accuracy": {"split": "val", "images": 359, "files": {"model.onnx": 0.925}},
                               "macs": 5_000_000, "params": 120_000,
                               "files": [{"name": "model.onnx", "bytes": 480_000, "sha256": "ab" * 32}],
                               "latency": {"measured": [{"file": "model.onnx", "median_ms": 0.95}]}},
                              source="25th percentile of the predicted latency of 2000 random subnets on local",
                              deployed_file="model.onnx", accuracy_split="val", accuracy_images=359,
                              holdout_accuracy=0.91, holdout_images=199),
                 BudgetResult(0.4, None, note="no subnet meets 0.4 ms: the fastest is 0.5 ms")],
    )
    metrics = [{"step": i, "loss": 2 / (i + 1), "phase": "full" if i < 50 else "kernel"} for i in range(100)]
    metrics.append({"step": 99, "val_acc": 0.95})
    return ReportData("edgenas test report", "digits", "tiny", metrics, {"steps": 100}, {"kendall_tau": 0.8},
                      [dev], {"train": 3.0})


def test_report_is_self_contained(tmp_path):
    path = render_report(_data(), tmp_path)
    text = path.read_text()
    assert {p.name for p in tmp_path.glob("*.png")} == {"pareto-local.png", "calibration-local.png", "training.png"}
    assert text.count("data:image/png;base64,") == 2  # calibration, training; the front is inline SVG
    assert text.count("<svg class=front") == 1 and text.count("class=shipped") == 1
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", text)  # nothing fetched from the network
    assert "92.5 %" in text and "no subnet meets 0.4 ms" in text
    assert "<code>model.onnx</code></td><td>468.8 KiB</td><td>92.5 %</td><td>0.950 ms</td>" in text
    assert "92.5 % (val, 359 images; holdout 91.0 %, 199 images)" in text
    assert "Budget: 25th percentile of the predicted latency of 2000 random subnets on local." in text
    assert_no_raw_json(text)


def assert_no_raw_json(text: str) -> None:
    """No JSON on the page a person reads: no `{"key": ...}` in the text outside tags, styles and SVG titles."""
    body = re.sub(r"<style>.*?</style>|<svg.*?</svg>|<[^>]+>", " ", text, flags=re.S)
    assert not re.search(r'\{\s*"|"\s*:\s*[\[{"\d]|\[\s*\{', html.unescape(body)), \
        re.search(r'.{0,80}(\{\s*"|"\s*:).{0,80}', html.unescape(body)).group(0)


PROBE = ("<script>window.onload=()=>{const w=window.innerWidth;const wide=[...document.querySelectorAll("
         "'table,svg,img')].filter(e=>e.getBoundingClientRect().right>w+0.5).length;document.title='decoded:'+"
         "[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length+' width:'+w+' overflow:'+"
         "(document.documentElement.scrollWidth>w)+' wide:'+wide}</script></body>")


def chromium_probe(report, tmp_path, width: int = 1400) -> str:
    """Render `report` in headless Chromium `width` px wide; the page title it ends with says how many images
    decoded and whether anything runs past the window's right edge."""
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", PROBE))
    dom = subprocess.run(_flags(tmp_path) + [f"--window-size={width},1000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(.*?)</title>", dom.stdout)
    return title.group(1) if title else dom.stdout[-500:] + dom.stderr[-500:]


def _flags(tmp_path) -> list[str]:
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--hide-scrollbars"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (tools/install.sh --dev installs it)")
def test_report_renders_in_headless_chromium(tmp_path):
    path = render_report(_data(), tmp_path / "report")
    # The report itself has no script; a copy with one reports how many images decoded and what overflows.
    assert chromium_probe(path, tmp_path) == "decoded:2 width:1400 overflow:false wide:0"
    flags = _flags(tmp_path)
    shot = tmp_path / "shot.png"
    subprocess.run(flags + ["--window-size=1200,1800", f"--screenshot={shot}", path.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10  # not a blank page
