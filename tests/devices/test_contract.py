"""One contract every Device kind keeps: local, SSH (ONNX Runtime and TFLite) and MCU, on real runtimes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgenas.artifacts import sha256_file
from edgenas.devices import Device, device_from_config, load_device
from edgenas.devices.device_files import read_device_file
from edgenas.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
KINDS = ["local-onnxruntime", "local-tflite", "ssh-onnxruntime", "ssh-tflite", "mcu"]


def quick(path: Path, **measure) -> Device:
    """A device from a file, with few runs and a short timing window so the contract stays fast (the repo's local
    devices time for 4 s per window, a window's length is tested in test_agent) that waits for no fast moments."""
    config = read_device_file(path)
    settings = {"runs": 5, "warmup": 1, "window_s": min(config.measure.window_s, 0.5), "min_fast_runs": 0, **measure}
    return device_from_config(replace(config, measure=replace(config.measure, **settings)))


@pytest.fixture(scope="module")
def mcu_testbed(make_testbed):
    pytest.importorskip("tflite_micro")
    return make_testbed(["kind=mcu"], prefix="board")


@pytest.fixture(params=KINDS)
def device_and_models(request, onnx_models, tflite_models):
    kind = request.param
    if kind.startswith("local"):
        path = ROOT / "devices" / ("local.toml" if kind == "local-onnxruntime" else "local-tflite.toml")
    elif kind == "mcu":
        path = request.getfixturevalue("mcu_testbed").device_files()[0]
    else:
        files = request.getfixturevalue("testbed_devices")
        path = files[0] if kind == "ssh-onnxruntime" else files[2]
    device = quick(path)
    if device.runtime == "onnxruntime":
        models, other = [onnx_models["small"], onnx_models["tiny"]], tflite_models["small"]
    else:
        models, other = [tflite_models["small"], tflite_models["small"]], onnx_models["tiny"]
    with device:
        yield device, models, other


def test_measure_returns_one_result_per_path_in_order_and_streams_them(device_and_models):
    device, models, _ = device_and_models
    streamed = []
    results = device.measure(models, on_result=streamed.append)
    assert len(results) == len(models)
    assert sorted(map(id, streamed)) == sorted(map(id, results))  # the same objects, delivered as they came
    for path, m in zip(models, results):
        assert m.ok, (m.error, m.error_message)
        assert m.model_path == str(path) and m.model_sha256 == sha256_file(path)
        assert (m.device, m.runtime, m.threads) == (device.name, device.runtime, device.threads)
        assert m.runs >= 5 and len(m.samples_ms) == min(m.runs, 200)  # the agent reports at most 200, spread out
        assert 0 < m.min_ms <= m.median_ms <= m.p90_ms and m.latency_ms > 0
        assert m.timing["method"] in ("interleaved", "board") and m.cv is not None and m.cv >= 0
        assert m.runtime_version and m.agent_version and m.timestamp
        assert json.loads(json.dumps(m.to_dict()))["median_ms"] == m.median_ms


def test_a_model_of_the_wrong_format_is_an_error_code(device_and_models):
    device, models, other = device_and_models
    results = device.measure([other, models[0]])
    assert results[0].error == "bad_model" and device.runtime in results[0].error_message
    assert results[1].ok


def test_missing_file_and_single_path_are_usage_errors(device_and_models):
    device, models, _ = device_and_models
    with pytest.raises(UsageError, match="does not exist"):
        device.measure([models[0], "/nonexistent/model.onnx"])
    with pytest.raises(UsageError, match="list of model paths"):
        device.measure(str(models[0]))


def test_describe_is_json_and_check_reports_ready(device_and_models):
    device, _, _ = device_and_models
    description = device.describe()
    assert json.loads(json.dumps(description)) == description
    assert {"name", "kind", "runtime", "threads", "agent_version"} <= set(description)
    report = device.check()
    assert report["ok"], report["problems"]
    assert report["runtime"] == device.runtime


def test_load_device_by_name_from_the_project_folder(monkeypatch):
    monkeypatch.chdir(ROOT)
    device = load_device("local")
    assert (device.name, device.kind, device.runtime) == ("local", "local", "onnxruntime")
