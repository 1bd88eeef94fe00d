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
- `onnx_models` (session): {"tiny", "small", "medium", "heavy": Path} ONNX convnets built with onnx.helper.
- `tflite_models` (session): {"small", "heavy": Path} built with litert-torch in a subprocess, once per run for all
  xdist workers (`shared_work`), and cached between sessions in pytest's cache; skips when litert-torch is not
  installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
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
        parsed = [s if isinstance(s, tb.DeviceSpec) else tb.DeviceSpec.parse(s) for s in specs]
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


_TFLITE_BUILDER = r'''
import sys, torch, litert_torch
class Net(torch.nn.Module):
    def __init__(self, channels, layers):
        super().__init__()
        mods, c_in = [], 3
        for _ in range(layers):
            mods += [torch.nn.Conv2d(c_in, channels, 3, padding=1), torch.nn.ReLU()]
            c_in = channels
        self.body = torch.nn.Sequential(*mods)
    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))
torch.manual_seed(0)
out = sys.argv[1]
for name, channels, size, layers in (("small", 8, 32, 2), ("heavy", 64, 64, 4)):
    model = litert_torch.convert(Net(channels, layers).eval(), (torch.randn(1, 3, size, size),))
    model.export(f"{out}/{name}.tflite")
'''


@pytest.fixture(scope="session")
def tflite_models(request, tmp_path_factory):
    from importlib import metadata

    try:
        version = metadata.version("litert-torch")
    except metadata.PackageNotFoundError:
        pytest.skip("litert-torch is not installed (pip install 'edgenas[tflite]'), so no TFLite test models")
    key = hashlib.sha256((_TFLITE_BUILDER + version).encode()).hexdigest()[:16]
    cache = getattr(request.config, "cache", None)
    names = ("small", "heavy")
    if cache is not None:
        folder = cache.mkdir(f"edgenas-tflite-{key}")
        if all((folder / f"{n}.tflite").is_file() for n in names):
            return {n: folder / f"{n}.tflite" for n in names}

    def build(out: Path) -> None:
        out.mkdir()
        done = subprocess.run([sys.executable, "-c", _TFLITE_BUILDER, str(out)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"building TFLite test models failed: {done.stderr[-2000:]}")

    built = shared_file(f"tflite-models-{key}", build)  # once per run, not once per worker
    if cache is None:
        return {n: built / f"{n}.tflite" for n in names}
    for n in names:  # into pytest's cache for the next runs, each file whole
        tmp = folder / f".{n}.tflite.{os.getpid()}"
        shutil.copyfile(built / f"{n}.tflite", tmp)
        os.replace(tmp, folder / f"{n}.tflite")
    return {n: folder / f"{n}.tflite" for n in names}
