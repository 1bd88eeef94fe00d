"""The local device: the agent in a subprocess on this machine, with batches, time limits and pinning."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgenas.devices import device_from_config
from edgenas.devices.device_files import read_device_file

ROOT = Path(__file__).resolve().parents[2]


def local(runtime="onnxruntime", **measure):
    config = read_device_file(ROOT / "devices" / ("local.toml" if runtime == "onnxruntime" else "local-tflite.toml"))
    timeouts = measure.pop("timeouts", None)
    python = measure.pop("python", None)
    config = replace(config, measure=replace(config.measure, **{"runs": 5, "warmup": 1, "window_s": 0, **measure}))
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
    with local(runs=300, warmup=0, timeouts={"model": 1.0}) as device:
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


def test_min_fast_runs_from_the_device_file_reaches_the_agent(tmp_path):
    """`[measure] min_fast_runs` is what the agent's window waits for (0: it ends at its length and runs)."""
    from edgenas.devices import agent

    path = tmp_path / "dev.toml"
    path.write_text('kind = "local"\nruntime = "onnxruntime"\n[measure]\nmin_fast_runs = 0\nwindow_s = 0.3\n')
    config = read_device_file(path)
    assert config.measure.min_fast_runs == 0 and read_device_file(ROOT / "devices" / "local.toml").measure.min_fast_runs == 30
    with device_from_config(config) as device:
        argv = device.agent_argv("agent.py", ["m.onnx"])
        assert device.describe()["min_fast_runs"] == 0
    args = agent.build_parser().parse_args(argv[argv.index("agent.py") + 1:])
    assert (args.min_fast_runs, args.window, args.models) == (0, 0.3, ["m.onnx"])
    assert agent.main(["measure", "--runtime", "onnxruntime", "--min-fast-runs", "-1", "m.onnx"]) == 2


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


def test_one_call_times_its_models_together_and_the_figures_keep_their_order(onnx_models):
    paths = [onnx_models["tiny"], onnx_models["medium"]]
    with local(runs=20) as device:
        results = device.measure(paths)
    assert all(m.ok for m in results) and len({m.extra["agent_pid"] for m in results}) == 1
    assert all(m.timing["method"] == "interleaved" and m.timing["models"] == 2 for m in results)
    tiny, medium = results
    assert medium.latency_ms > tiny.latency_ms  # the medium network is slower than the tiny one
    # the figure is a quantile of runs with their off-CPU stalls taken out: between the fastest such run and the
    # slowest run (a stall-free run can be shorter than the fastest wall-clock one, so min_ms is no bound)
    wall, cpu = np.array(tiny.samples_ms), np.array(tiny.extra["sample_cpu_ms"])
    off = wall - cpu
    clean = wall - np.maximum(off - np.percentile(off, 5), 0)
    assert clean.min() * tiny.extra["quota_factor"] <= tiny.latency_ms * (1 + 1e-6)
    assert tiny.latency_ms <= tiny.extra["max_ms"] * tiny.extra["quota_factor"]


def test_a_retimed_window_is_reported_to_the_caller(onnx_models, tmp_path):
    """The device's probe reference lives in its work folder; a reference no window can reach makes every window
    unsteady: the caller hears of each re-timing, and the figure says why it is not to be trusted."""
    with local(retime=1) as device:
        device.config = replace(device.config, work_dir=str(tmp_path))
        device.transport.config = device.config
        (tmp_path / "probe-local.json").write_text('{"probe_fast_ms": 1e-9}')
        heard = []
        device.on_event = lambda kind, event: heard.append((kind, event.get("reason"))) if kind != "tick" else None
        (m,) = device.measure([onnx_models["tiny"]])
    assert m.ok and m.retimed == 1 and "fast level" in m.unsteady and m.noisy
    # the window's plan (what the progress bar's ETA is taken from) comes first, then the re-timing
    assert [kind for kind, _ in heard] == ["plan", "retime"] and "fast level" in heard[1][1]
    assert "UNSTEADY" in m.trust_line() and "retimed 1x" in m.trust_line()


def test_meets_budget_is_the_figure_within_the_budget():
    from edgenas.devices.measurement import meets_budget

    assert meets_budget(0.40, 0.40) and meets_budget(0.39, 0.40) and not meets_budget(0.41, 0.40)
    assert meets_budget(5.0, None) and not meets_budget(None, 1.0) and not meets_budget(None, None)
