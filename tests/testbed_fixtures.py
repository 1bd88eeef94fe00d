"""Pytest fixtures: SSH testbed devices (real sshd on loopback, tools/testbed.py) and small test models.

Registered from tests/conftest.py with `pytest_plugins = ["testbed_fixtures"]`.

- `testbed` (session): 3 devices that differ in runtime, threads and speed, torn down at the end:
  tb1 onnxruntime 1 thread (one full CPU), tb2 onnxruntime 1 thread at 50 % of a CPU,
  tb3 tflite 2 threads (one full CPU). Skips, saying what is missing, without root or sshd.
  Where no cgroup cpu controller (v2 cpu.max or v1) is writable these devices run without quotas:
  `testbed.devices[i].quota_applied` says which did. Call the fixtures from the main thread
  (sshd is tied to the life of the thread that starts it).
  `testbed.device_files()` lists their TOML files; `load_device(path)` loads one.
- `testbed_devices` (session): the three TOML paths.
- `make_testbed` (session): `make_testbed(["quota=50", "runtime=tflite,netns=1"])` starts another
  testbed (DeviceSpec strings or objects); all are torn down at the end of the session. A quota that
  cannot be applied skips the test, naming why (`allow_no_quota=True` starts the devices without).
  A spec string that does not name `fast_runs` gets `fast_runs=0`: the device's windows last their length and
  wait for no fast moments (a loaded machine has few, and a window then ran up to 6x long), since a test's
  timing quality is not under test unless its spec says `fast_runs=30`, as the device files' default.
- `onnx_models` (session): {"tiny", "small", "medium", "heavy": Path} ONNX convnets built with onnx.helper.
- `tflite_models` (session): {"small", "heavy": Path} conv nets written by edgenas's direct TFLite writer, once per
  run for all xdist workers (`shared_work`); skips when ai_edge_litert (the TFLite runtime) is not installed.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
from shared_work import shared_file

ROOT = Path(__file__).resolve().parents[1]


def _testbed_module():
    name = "edgenas_tools_testbed"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "testbed.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


DEFAULT_SPECS = ("quota=100", "quota=50", "runtime=tflite,threads=2,quota=100")


@pytest.fixture(scope="session")
def make_testbed(tmp_path_factory):
    tb = _testbed_module()
    reason = tb.Testbed.missing()
    beds = []

    def make(specs, *, prefix="tb", allow_no_quota=False):
        if reason:
            pytest.skip(reason)
        parsed = [s if isinstance(s, tb.DeviceSpec) else tb.DeviceSpec.parse(s if "fast_runs=" in s else f"fast_runs=0,{s}")
                  for s in specs]
        if any(s.netns for s in parsed):
            netns_reason = tb.Testbed.netns_missing()
            if netns_reason:
                pytest.skip(netns_reason)
        if any(s.rate for s in parsed) and shutil.which("tc") is None:
            pytest.skip("tc (iproute2) is missing, so a device's bandwidth cannot be limited")
        if any(s.quota for s in parsed) and not allow_no_quota:
            quota_reason = tb.Testbed.cgroup_missing()
            if quota_reason:
                pytest.skip(quota_reason)
        out = tmp_path_factory.mktemp("testbed")
        bed = tb.Testbed.up(out, parsed, die_with_parent=True, prefix=prefix, allow_no_quota=allow_no_quota)
        beds.append(bed)
        return bed

    yield make
    for bed in beds:
        bed.down()


@pytest.fixture(scope="session")
def testbed(make_testbed):
    return make_testbed(list(DEFAULT_SPECS), allow_no_quota=True)


@pytest.fixture(scope="session")
def testbed_devices(testbed):
    return testbed.device_files()


def build_onnx_convnet(path, *, channels=8, size=32, layers=2, seed=0):
    """A small Conv-ReLU stack with global pooling, written with onnx.helper (no torch)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    previous, c_in = "x", 3
    for i in range(layers):
        w = (rng.standard_normal((channels, c_in, 3, 3)) * 0.1).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [previous, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        previous, c_in = f"r{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [previous], ["y"]))
    graph = helper.make_graph(
        nodes, "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 1, 1])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return Path(path)


ONNX_SIZES = {  # name: (channels, input size, layers); "heavy" takes about 8 ms on one core here
    "tiny": (4, 16, 1),
    "small": (8, 32, 2),
    "medium": (16, 32, 3),
    "heavy": (64, 64, 4),
}


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory):
    pytest.importorskip("onnx")
    folder = tmp_path_factory.mktemp("onnx-models")
    return {name: build_onnx_convnet(folder / f"{name}.onnx", channels=c, size=s, layers=n, seed=i)
            for i, (name, (c, s, n)) in enumerate(ONNX_SIZES.items())}


TFLITE_SIZES = {"small": (8, 32, 2), "heavy": (64, 64, 4)}  # channels, input size, conv layers


def _build_tflite_models(out: Path) -> None:
    """Conv 3x3 + ReLU layers, then the global mean (as the ONNX test models), NCHW input as litert-torch's files of
    a PyTorch model take: written by edgenas's direct TFLite writer (the graph litert-torch emits for it, op for op),
    in milliseconds, not by importing and running litert-torch (jax, torchao) in a subprocess."""
    import torch

    from edgenas.export.tflite_direct import direct_tflite
    from edgenas.nn.static import ConvBNAct

    class ConvNet(torch.nn.Module):
        def __init__(self, channels: int, layers: int):
            super().__init__()
            self.body = torch.nn.Sequential(*[ConvBNAct(3 if i == 0 else channels, channels, 3, act="relu", bn=False,
                                                        bias=True) for i in range(layers)])

        def forward(self, x):
            return self.body(x).mean(dim=(2, 3), keepdim=True)

        def tflite_plan(self):
            return [("body", self.body), ("mean", "mean")]

    out.mkdir()
    torch.manual_seed(0)
    for name, (channels, size, layers) in TFLITE_SIZES.items():
        data, why = direct_tflite(ConvNet(channels, layers).eval(), torch.randn(1, 3, size, size), channels_last=False)
        assert data is not None, f"the direct TFLite writer did not write the {name} test model: {why}"
        (out / f"{name}.tflite").write_bytes(data)


@pytest.fixture(scope="session")
def tflite_models():
    pytest.importorskip("ai_edge_litert", reason="ai_edge_litert is not installed (pip install 'edgenas[tflite]')")
    built = shared_file("tflite-models", _build_tflite_models)  # once per run, not once per worker
    return {name: built / f"{name}.tflite" for name in TFLITE_SIZES}
