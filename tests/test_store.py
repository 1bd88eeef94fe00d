"""Tests of edgenas.store: round trips, idempotent appends, threads, and reopening after SIGKILL."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from edgenas.errors import UsageError
from edgenas.store import Store


def _m(sha: str, median: float | None = 1.5, error: str | None = None) -> dict:
    return {"ok": error is None, "median_ms": median, "std_ms": 0.1, "runs": 20, "error": error,
            "agent_version": "a1", "runtime_version": "1.31", "model_sha256": sha}


def _add(store: Store, sha: str, **kw) -> bool:
    return store.add_measurement(_m(sha, **kw), model_kind="block", model_description={"stage": 0},
                                 device="pi", runtime="onnxruntime", precision="fp32")


def test_measurement_round_trip_and_filters(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    assert _add(store, "aa")
    store.add_measurement(_m("bb", median=3.0), model_kind="arch", model_description='{"resolution":32}',
                          device="pi", runtime="tflite", precision="int8", agent_version="override")
    got = store.measurement_for("aa", "pi", "onnxruntime", "fp32")
    assert got is not None and got.median_ms == 1.5 and got.std_ms == 0.1 and got.runs == 20
    assert got.runtime_version == "1.31" and got.agent_version == "a1" and got.model_description == '{"stage":0}'
    assert store.measurement_for("aa", "pi", "onnxruntime", "int8") is None
    assert store.measurement_for("aa", "phone", "onnxruntime", "fp32") is None
    tfl = store.measurements(runtime="tflite")
    assert [m.model_sha256 for m in tfl] == ["bb"] and tfl[0].agent_version == "override"
    assert len(store.measurements(device="pi")) == 2
    assert store.measurements(model_kind="arch")[0].measurement["median_ms"] == 3.0


def test_success_is_stored_once_and_failures_are_kept(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    assert _add(store, "aa", median=None, error="timeout")
    assert store.measurement_for("aa", "pi", "onnxruntime", "fp32") is None
    assert _add(store, "aa")
    assert not _add(store, "aa", median=9.0)  # a second success is ignored: resuming never double counts
    assert store.measurement_for("aa", "pi", "onnxruntime", "fp32").median_ms == 1.5
    assert _add(store, "aa", median=None, error="timeout")
    everything = store.measurements(ok=None)
    assert [m.ok for m in everything] == [False, True, False]
    assert [m.error for m in store.measurements(ok=False)] == ["timeout", "timeout"]


def test_measurement_needs_a_sha(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(ValueError, match="sha256"):
        store.add_measurement({"ok": True, "median_ms": 1.0}, model_kind="block", model_description="x",
                              device="d", runtime="onnxruntime", precision="fp32")


def test_evaluations(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    arch = {"resolution": 32, "depths": [1], "kernels": [3], "expands": [4]}
    key = dict(supernet_sha256="s1", dataset="digits:abc", split="val", metric="top1")
    assert not store.has_evaluation(arch=arch, **key)
    assert store.add_evaluation(arch=arch, value=0.9, extra={"n": 500}, **key)
    # The same arch written with another key order is the same arch.
    same = '{"kernels": [3], "expands": [4], "depths": [1], "resolution": 32}'
    assert store.has_evaluation(arch=same, **key)
    assert not store.add_evaluation(arch=same, value=0.1, **key)
    store.add_evaluation(arch=arch, value=0.5, supernet_sha256="s1", dataset="digits:abc", split="test", metric="top1")
    rows = store.evaluations("s1", "val", "top1")
    assert len(rows) == 1 and rows[0].value == 0.9 and rows[0].arch == arch and rows[0].extra == {"n": 500}
    assert store.evaluations("s1", "val", "top1", dataset="other") == []


def test_threads_share_a_store(tmp_path):
    store = Store(tmp_path / "s.sqlite")

    def work(t: int) -> None:
        for i in range(25):
            _add(store, f"t{t}-{i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert store.count_measurements() == 100


def test_reopen_after_sigkill_keeps_every_committed_row(tmp_path):
    path = tmp_path / "s.sqlite"
    script = textwrap.dedent(f"""
        import sys
        from edgenas.store import Store
        s = Store({str(path)!r})
        i = 0
        while True:
            s.add_measurement({{"ok": True, "median_ms": 1.0, "model_sha256": f"m{{i}}"}}, model_kind="block",
                              model_description="x", device="d", runtime="onnxruntime", precision="fp32")
            i += 1
            if i == 20:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(path)
    rows = store.measurements()
    assert len(rows) >= 20
    # Rows are numbered without gaps: every committed write is there, whole.
    assert [r.model_sha256 for r in rows] == [f"m{i}" for i in range(len(rows))]
    assert _add(store, "after")  # and the store takes writes again


def test_refuses_another_schema_version(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(UsageError, match="schema version 99"):
        Store(path)
