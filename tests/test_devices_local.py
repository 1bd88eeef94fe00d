"""The local device: the agent in a subprocess on this machine, with batches, time limits and pinning."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edgenas.devices import device_from_config
from edgenas.devices.config import read_device_file

ROOT = Path(__file__).resolve().parents[1]


def local(runtime="onnxruntime", **measure):
    config = read_device_file(ROOT / "devices" / ("local.toml" if runtime == "onnxruntime" else "local-tflite.toml"))
    timeouts = measure.pop("timeouts", None)
    python = measure.pop("python", None)
    config = replace(config, measure=replace(config.measure, **{"runs": 5, "warmup": 1, **measure}))
    if timeouts:
        config = replace(config, timeouts=replace(config.timeouts, **timeouts))
    if python:
        config = replace(config, python=python)
    return device_from_config(config)


def test_models_are_split_into_batches_one_agent_run_each(onnx_models):
    paths = [onnx_models[n] for n in ("tiny", "small", "medium", "tiny", "small")]
    with local(batch_size=2) as device:
        results = device.measure(paths)
    assert [m.model_path for m in results] == [str(p) for p in paths] and all(m.ok for m in results)
    pids = [m.extra["agent_pid"] for m in results]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


def test_a_model_over_its_time_limit_is_stopped_and_the_rest_measured(onnx_models):
    with local(runs=300, warmup=0, remeasure=0, timeouts={"model": 1.0}) as device:
        results = device.measure([onnx_models["tiny"], onnx_models["heavy"], onnx_models["small"]])
    assert [m.error for m in results] == [None, "timeout", None]


def test_a_python_that_does_not_exist_is_an_agent_error(onnx_models):
    with local(python=("/nonexistent/python3",)) as device:
        results = device.measure([onnx_models["tiny"], onnx_models["small"]])
        report = device.check()
    assert [m.error for m in results] == ["agent_error", "agent_error"]
    assert "/nonexistent/python3" in results[0].error_message
    assert not report["ok"] and "/nonexistent/python3" in report["problems"][0]


def test_cpu_pinning_from_the_device_file(onnx_models):
    with local(cpu_affinity=(0,)) as device:
        (m,) = device.measure([onnx_models["tiny"]])
    assert m.ok and m.machine["cpu_affinity"] == [0]


def test_tflite_and_onnx_figures_for_the_same_network_are_in_the_same_range(onnx_models, tflite_models):
    with local("onnxruntime", runs=10) as ort, local("tflite", runs=10) as tfl:
        (a,) = ort.measure([onnx_models["heavy"]])
        (b,) = tfl.measure([tflite_models["heavy"]])
    assert a.ok and b.ok and a.runtime == "onnxruntime" and b.runtime == "tflite"
    assert b.extra["runtime_package"] == "ai_edge_litert"
    assert 0.1 < b.median_ms / a.median_ms < 10  # the same 64-channel convnet on both runtimes


def test_runtime_python_is_this_interpreter_by_default():
    assert local().config.python_argv == [sys.executable]


def test_an_exception_in_on_result_stops_the_agent(onnx_models):
    def children_running_the_agent():
        found = []
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"agent.py" in cmdline:
                found.append(entry.name)
        return found

    def refuse(m):
        raise RuntimeError("store is full")

    with local(runs=200) as device:
        with pytest.raises(RuntimeError, match="store is full"):
            device.measure([onnx_models["tiny"], onnx_models["heavy"], onnx_models["heavy"]], on_result=refuse)
        assert children_running_the_agent() == []


def test_sweeps_time_every_model_again_in_separate_agent_runs(onnx_models):
    paths = [onnx_models["tiny"], onnx_models["medium"]]
    with local() as device:
        pauses = []
        device._sleep = pauses.append
        swept = device.measure_sweeps(paths, sweeps=3, pause_s=0.25)
    assert pauses == [0.25, 0.25]
    for s, path in zip(swept, paths):
        assert len(s.sweeps) == 3 and all(m.ok and m.model_path == str(path) for m in s.sweeps)
        assert len({m.extra["agent_pid"] for m in s.sweeps}) == 3  # a new agent run per sweep
        medians = sorted(m.median_ms for m in s.sweeps)
        assert s.median_ms == medians[1] and s.worst_ms == medians[2] and s.check_ms == medians[2]  # < 4 sweeps
        assert s.representative.median_ms == medians[1]
        assert s.summary()["sweep_medians_ms"] == [m.median_ms for m in s.sweeps]
    assert swept[1].median_ms > swept[0].median_ms  # the medium network is slower than the tiny one


def test_sweeps_stop_early_when_nothing_measures(onnx_models):
    with local(python=("/nonexistent/python3",)) as device:
        pauses = []
        device._sleep = pauses.append
        (s,) = device.measure_sweeps([onnx_models["tiny"]], sweeps=4)
    assert not s.ok and len(s.sweeps) == 1 and s.error == "agent_error" and s.worst_ms is None and s.check_ms is None
    assert pauses == []


def test_the_check_figure_is_the_slowest_sweep_but_one_from_four_sweeps():
    from edgenas.devices.base import SweptMeasurement
    from edgenas.devices.measurement import Measurement

    def swept(*medians):
        return SweptMeasurement(tuple(Measurement("m.onnx", "sha", "d", "onnxruntime", median_ms=v) for v in medians))

    s = swept(0.70, 1.36, 0.74, 0.73, 0.72)  # one sweep disturbed (seen on a demo run), four alike
    assert s.worst_ms == 1.36 and s.check_ms == 0.74 and s.median_ms == 0.73
    assert swept(0.5, 0.4, 0.6).check_ms == 0.6  # fewer than 4 sweeps: the slowest
    assert swept(0.3).check_ms == 0.3
