"""Tests of calibration and evaluation on real devices: the local agent (ONNX Runtime) and an SSH testbed device."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from latency_helpers import MICRO, local_device_file, space_file

from edgenas.devices import load_device
from edgenas.latency.blocks import block_index
from edgenas.latency.calibrate import calibrate, load_latency_predictor
from edgenas.latency.predictor_eval import evaluate
from edgenas.latency.table import LatencyTable
from edgenas.store import Store


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One exported-model cache for the module: exporting is the slow part, and files do not depend on devices."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, models):
    """The micro space calibrated on the local device (shared: exports and measurements take a while)."""
    root = tmp_path_factory.mktemp("calibrated")
    device = load_device(local_device_file(root))
    store = Store(root / "store.sqlite")
    kw = dict(store=store, tables_dir=root / "tables", cache_dir=models, progress=False)
    with device:
        pred = calibrate(device, MICRO, budget=8, **kw)
    return root, device, store, kw, pred


def test_calibration_writes_table_and_predictor(calibrated):
    root, device, store, kw, pred = calibrated
    table = LatencyTable.load(root / "tables" / "testlocal" / "onnxruntime-fp32.json", device="testlocal")
    assert set(block_index(MICRO).keys) <= set(table.entries)
    assert table.runtime_version and all(e["latency_ms"] > 0 and e["runs"] >= 5 for e in table.entries.values())
    assert table.device_description["name"] == "testlocal"
    manifest = json.loads((root / "tables" / "testlocal" / "predictor-onnxruntime-fp32.json.manifest.json").read_text())
    assert manifest["kind"] == "latency_predictor" and manifest["inputs"]["table"]["sha256"]
    assert pred.report.measured_now == len(block_index(MICRO)) + 8 and pred.report.device_seconds > 0
    loaded = load_latency_predictor("testlocal", tables_dir=root / "tables", space=MICRO)
    archs = MICRO.sample_many(np.random.default_rng(0), 100)
    np.testing.assert_array_equal(loaded.predict(archs), pred.predict(archs))
    assert (loaded.predict(archs) > 0).all()
    # Every figure is in the store with what it is for.
    rows = store.measurements(device="testlocal", runtime="onnxruntime", precision="fp32")
    assert {r.model_kind for r in rows} == {"piece", "arch"}
    assert all(r.agent_version and r.runtime_version for r in rows)


def test_held_out_subnets_ride_in_the_first_window_and_are_never_fitted(tmp_path, models):
    """The pipeline's held-out subnets are timed with the table's pieces (no window of their own), kept out of the
    fit, and found in the store afterwards."""
    from edgenas.latency.calibrate import Calibrator
    from edgenas.latency.predictor_eval import holdout_archs

    device = load_device(local_device_file(tmp_path))
    store = Store(tmp_path / "store.sqlite")
    held = holdout_archs(MICRO, 5, [], seed=0)
    calls: list[list[str]] = []
    with device:
        real = device.measure

        def spy(paths, **kw):  # the real device, with its calls recorded
            calls.append(list(paths))
            return real(paths, **kw)

        device.measure = spy
        pred = calibrate(device, MICRO, budget=8, store=store, tables_dir=tmp_path / "tables", cache_dir=models,
                         progress=False, holdout=held)
        first_window = set(calls[0])
        windows = len(calls)
        cal = Calibrator(device, MICRO, runtime="onnxruntime", precision="fp32", store=store, cache_dir=models,
                         progress=False)
        archs, ms, _ = cal.measure_archs(held, "held-out")
    held_files = {str(j.path) for j in cal.export_archs(held)}
    assert held_files <= first_window and len(first_window) == len(block_index(MICRO)) + len(held)
    assert len(calls) == windows  # measured already: nothing timed again
    assert archs == held and (ms > 0).all() and cal.report.measured_now == 0
    assert not set(held) & set(pred.training_set[0]) and len(pred.training_set[0]) == 8


def test_with_no_rounds_everything_is_timed_in_one_window(tmp_path, models):
    """calibration_rounds = 0: the table's pieces, the held-out subnets and every fitted subnet in one window (each
    round is another window; on a device in a slow spell a window can wait 6x its length for fast moments)."""
    from edgenas.latency.predictor_eval import holdout_archs

    device = load_device(local_device_file(tmp_path))
    store = Store(tmp_path / "store.sqlite")
    held = holdout_archs(MICRO, 5, [], seed=0)
    calls: list[list[str]] = []
    with device:
        real = device.measure

        def spy(paths, **kw):
            calls.append(list(paths))
            return real(paths, **kw)

        device.measure = spy
        pred = calibrate(device, MICRO, budget=8, rounds=0, store=store, tables_dir=tmp_path / "tables",
                         cache_dir=models, progress=False, holdout=held)
    assert len(calls) == 1 and len(calls[0]) == len(block_index(MICRO)) + len(held) + 8
    fitted, fitted_ms = pred.training_set
    assert len(fitted) == 8 and not set(held) & set(fitted) and (np.asarray(fitted_ms) > 0).all()
    assert pred.kind == "calibrated" and (pred.predict(held) > 0).all()


def test_the_rounds_of_uncertain_subnets_show_as_one_bar(tmp_path, models, monkeypatch, capsys):
    """Two rounds of two subnets each (picked where the fit is least sure) show as one bar of 4, not two of 2: its ETA
    then counts the rounds still to come."""
    import edgenas.latency.calibrate as calibration

    monkeypatch.setattr(calibration, "MIN_PER_ROUND", 2)
    with load_device(local_device_file(tmp_path)) as device:
        pred = calibrate(device, MICRO, budget=12, store=Store(tmp_path / "store.sqlite"), tables_dir=tmp_path / "t",
                         cache_dir=models, progress=True)
    assert pred.report.measured_now == len(block_index(MICRO)) + 12
    bars = [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("measure uncertain subnets") and "done in" in line]
    assert len(bars) == 1 and "] 4/4 " in bars[0], bars


def test_calibrating_again_measures_nothing(calibrated):
    root, device, store, kw, pred = calibrated
    with device:
        again = calibrate(device, MICRO, budget=8, **kw)
    assert again.report.measured_now == 0
    np.testing.assert_allclose(again.weights, pred.weights)


def test_evaluation_scores_every_predictor(calibrated):
    root, device, store, kw, pred = calibrated
    with device:
        ev = evaluate(device, MICRO, holdout=6, transfer_from=[pred], transfer_samples=4, repeat=True, **kw)
    names = [s.name for s in ev.scores]
    assert names == ["table sum", "calibrated", "whole_model", "transfer", "macs", "repeat"]
    # the repeat timing is a fresh run on the device: positive figures, nothing added to the store
    assert ev.score("repeat").calibration_measurements == 0 and ev.score("repeat").device_seconds > 0
    assert ev.holdout == 6
    train = set(pred.training_set[0])
    held = [json.loads(r.model_description) for r in store.measurements(model_kind="arch")]
    assert len(held) == 8 + 6 and not train & {MICRO.parse_arch(h) for h in held[8:]}
    for s in ev.scores:
        assert 0.0 <= s.within_5 <= s.within_10 <= 1.0 and s.rmse_ms >= 0 and -1 <= s.spearman <= 1
    assert ev.score("transfer").calibration_measurements == 4
    assert "Spearman" in ev.format()


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgenas.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _ok_rows(db) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT COUNT(*) FROM measurements WHERE ok=1").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def test_killed_calibration_resumes_without_measuring_twice(tmp_path, models):
    device = local_device_file(tmp_path)
    db = tmp_path / "store.sqlite"
    args = ("calibrate", "--device", str(device), "--space", str(space_file(tmp_path)), "--budget", "6",
            "--store", str(db), "--tables", str(tmp_path / "tables"), "--models", str(models), "--json", "--quiet")
    proc = _cli(*args)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists() and _ok_rows(db) >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"calibration ended before it could be killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _ok_rows(db)
    assert before >= 10

    proc = _cli(*args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    report = json.loads(out)
    total = len(block_index(MICRO)) + 6
    with sqlite3.connect(db) as conn:
        keys = conn.execute("SELECT model_sha256, device, runtime, precision, COUNT(*) FROM measurements "
                            "WHERE ok=1 GROUP BY 1, 2, 3, 4").fetchall()
    assert len(keys) == total and all(row[-1] == 1 for row in keys)  # every measurement exactly once
    assert report["measured_now"] == total - before  # the re-run measured only what was missing
    assert report["reused"] >= before
    assert (tmp_path / "tables" / "testlocal" / "predictor-onnxruntime-fp32.json").is_file()


@pytest.mark.parametrize("extra, message", [
    (("--budget", "1"), "--budget = 1: expected an integer from 3 to 100 000"),
    (("--runtime", "tflite"), "runs onnxruntime, not tflite"),
    (("--precision", "int8"), "not supported"),
    (("--rounds", "-1"), "--rounds = -1: expected an integer from 0 to 100"),
])
def test_bad_calibration_input_is_one_line(tmp_path, extra, message):
    proc = _cli("calibrate", "--device", str(local_device_file(tmp_path)), "--space", "tiny", "--store",
                str(tmp_path / "s.sqlite"), "--tables", str(tmp_path / "t"), *extra)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


@pytest.mark.testbed
def test_calibrate_over_ssh_on_a_testbed_device(testbed_devices, tmp_path, models):
    device = load_device(testbed_devices[1])  # onnxruntime at 50 % of a CPU
    with device:
        pred = calibrate(device, MICRO, budget=4, store=Store(tmp_path / "s.sqlite"), tables_dir=tmp_path,
                         cache_dir=models, progress=False)
    assert pred.device == device.name and pred.report.measured_now == len(block_index(MICRO)) + 4
    table = LatencyTable.load(tmp_path / device.name / "onnxruntime-fp32.json", device=device.name)
    assert table.device_description["kind"] == "ssh"


def test_held_out_subnets_are_never_ones_the_predictor_was_fitted_on():
    from edgenas.latency.predictor_eval import holdout_archs

    plain = holdout_archs(MICRO, 6, [], seed=0)
    fitted_on = plain[:3]  # as if calibration had measured (and fitted on) the first three it would hold out
    held_out = holdout_archs(MICRO, 6, fitted_on, seed=0)
    assert len(held_out) == len(set(held_out)) == 6 and not set(held_out) & set(fitted_on)
    assert held_out[:3] == plain[3:] and held_out == holdout_archs(MICRO, 6, fitted_on, seed=0)  # seeded


def test_the_model_cache_keeps_its_bound_and_a_rerun_needs_none_of_its_files(tmp_path):
    """With a bound of 0 MB every exported file goes once its figure is stored; the hashes stay, so calibrating
    again measures and exports nothing, and an evaluation that times files again (--repeat) exports them anew."""
    from edgenas.latency.models import ModelCache

    device = load_device(local_device_file(tmp_path))
    store = Store(tmp_path / "store.sqlite")
    models = tmp_path / "models"
    kw = dict(store=store, tables_dir=tmp_path / "tables", cache_dir=models, progress=False, cache_mb=0)
    with device:
        pred = calibrate(device, MICRO, budget=8, **kw)
        hashes = sorted(models.rglob("*.sha256"))
        assert len(hashes) == len(block_index(MICRO)) + 8
        assert ModelCache(models).size_bytes() == 0 and pred.report.models_mb == 0
        assert str(models) in pred.report.cache_line() and "0 MB" in pred.report.cache_line()
        stamps = [p.stat().st_mtime_ns for p in hashes]
        again = calibrate(device, MICRO, budget=8, **kw)
        assert again.report.measured_now == 0 and [p.stat().st_mtime_ns for p in hashes] == stamps
        np.testing.assert_allclose(again.weights, pred.weights)
        ev = evaluate(device, MICRO, holdout=4, repeat=True, **kw)
    assert ev.score("repeat").device_seconds > 0 and ModelCache(models).size_bytes() == 0


def test_the_eta_learns_how_long_this_devices_windows_take_against_their_plans(tmp_path):
    """A window's plan knows its runs, not the wait for fast moments or a re-timing (at 224 px here: planned 4 s,
    took 48 s): where this device's windows ended between their plan and their most carries to the next measuring
    of the same calibration, and the device's own listener still hears every event but the ticks."""
    import io
    import types

    from edgenas.latency.calibrate import Calibrator
    from edgenas.progress import Progress

    now = [100.0]
    heard = []
    device = types.SimpleNamespace(name="stub", on_event=lambda kind, event: heard.append(kind))
    own = device.on_event
    cal = Calibrator(device, MICRO, runtime="onnxruntime", precision="fp32", store=Store(tmp_path / "s.sqlite"),
                     cache_dir=tmp_path, progress=False)
    cal.clock = lambda: now[0]
    bar = Progress(6, "measure", stream=io.StringIO(), clock=cal.clock)
    with cal.eta_from_windows(bar) as window_done:
        device.on_event("plan", {"models": 2, "seconds": 4.0, "max_seconds": 48.0})
        assert bar.eta() == 12.0  # 4 s, and 4 more models at this window's 2 s each
        device.on_event("tick", {"left_s": 10.0})
        assert bar.eta() == 30.0  # 10 s, and 4 more models at this window's projected 5 s each
        now[0] += 12.0
        window_done()
    assert cal.window_share == 8.0 / 44.0 and device.on_event is own and heard == ["plan"]  # 12 s of 4-48
    bar = Progress(2, "measure again", stream=io.StringIO(), clock=cal.clock)
    with cal.eta_from_windows(bar):
        device.on_event("plan", {"models": 2, "seconds": 4.0, "max_seconds": 48.0})
        assert bar.eta() == pytest.approx(12.0)  # where the windows before ended


def test_files_are_exported_a_chunk_at_a_time_so_the_disk_stays_near_the_bound(tmp_path, monkeypatch):
    """Models are exported and timed a chunk at a time (CHUNK_MB of files, as their weights tell: one window's worth),
    the cache trimmed to its bound before each: the files on disk while the device times a chunk stay within the
    bound plus a chunk (plus a file), however many models the calibration times; every piece and subnet is still
    measured once, and the cache keeps its bound afterwards."""
    import edgenas.latency.calibrate as calibrate_module
    from edgenas.latency.models import ModelCache

    models = tmp_path / "models"
    sizes = []

    class Watched:
        def __init__(self, device):
            self.device = device

        def __getattr__(self, name):
            return getattr(self.device, name)

        def measure(self, paths, **kw):
            sizes.append((len(paths), ModelCache(models).size_bytes(), max(Path(p).stat().st_size for p in paths)))
            return self.device.measure(paths, **kw)

    chunk_mb, bound_mb = 0.05, 0.03
    monkeypatch.setattr(calibrate_module, "CHUNK_MB", chunk_mb)
    store = Store(tmp_path / "store.sqlite")
    with load_device(local_device_file(tmp_path)) as device:
        pred = calibrate(Watched(device), MICRO, budget=8, store=store, tables_dir=tmp_path / "tables",
                         cache_dir=models, progress=False, cache_mb=bound_mb, rounds=0)
    pieces = len(block_index(MICRO))
    assert sum(n for n, _, _ in sizes) == pieces + 8 and pred.report.measured_now == pieces + 8
    assert len(sizes) >= 3  # in chunks
    largest = max(big for _, _, big in sizes)
    assert max(size for _, size, _ in sizes) <= (bound_mb + chunk_mb) * 1e6 + largest
    assert ModelCache(models).size_bytes() <= bound_mb * 1e6
