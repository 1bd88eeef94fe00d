"""Faults on real SSH devices: sshd killed mid-batch, agent crashes and hangs, links cut mid-transfer."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgenas.devices import device_from_config
from edgenas.devices.device_files import RetrySettings, read_device_file

pytestmark = pytest.mark.testbed  # real sshd devices from tools/testbed.py


def config_of(path, **changes):
    config = read_device_file(path)
    measure = changes.pop("measure", None)
    if measure:
        config = replace(config, measure=replace(config.measure, **measure))
    timeouts = changes.pop("timeouts", None)
    if timeouts:
        config = replace(config, timeouts=replace(config.timeouts, **timeouts))
    return replace(config, **changes)


def cut_noticed_within(config) -> float:
    """Seconds after a link cut by which a measurement has given up, with room for a machine 3x slower: the link's
    unacknowledged data fails it (tcp_user), then each try reconnects into the cut (connect) after its back-off.
    What it guards is a hang: without TCP_USER_TIMEOUT the batch would wait out the model timeout (60 s), or hours."""
    t, r = config.timeouts, config.retry
    expected = t.tcp_user + r.attempts * (t.connect + r.backoff * 2 ** (r.attempts - 1))
    bound = 2 * expected + 10
    assert bound < t.model, "the bound must tell a cut noticed from one waited out until the model timeout"
    return bound


def agent_pids(bed, name):
    """Agent processes running on a testbed device (children of its sshd)."""
    tb = __import__("edgenas_tools_testbed")
    device = bed.device(name)
    pids = []
    for pid in tb._descendants(device.pid) if device.pid else ():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "/agent-" in cmdline and " measure " in cmdline:
            pids.append(pid)
    return pids


class Background:
    """Run device.measure in a thread so the test's main thread can break things meanwhile.

    The main thread must be the one that restarts sshd: the testbed ties sshd's life to the thread
    that started it.
    """

    def __init__(self, device, paths):
        self.arrived = []
        self.first = threading.Event()
        self.results = None
        self.error = None
        self.finished_at = None

        def work():
            try:
                self.results = device.measure(paths, on_result=self._on_result)
            except BaseException as exc:  # noqa: BLE001 - reported by join()
                self.error = exc
            self.finished_at = time.monotonic()

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def _on_result(self, m):
        self.arrived.append(m)
        self.first.set()

    def join(self, timeout):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"measure still running after {timeout} s: it hangs"
        if self.error:
            raise self.error
        return self.results


@pytest.fixture
def victim(make_testbed):
    return make_testbed(["runs=30"], prefix="fault")


def test_sshd_killed_mid_batch_the_batch_finishes_after_the_device_comes_back(victim, onnx_models):
    name = victim.devices[0].name
    # two models per agent run: a batch is timed interleaved and its results arrive together at the end of its
    # window, so with one window for all four the device could go away after the whole batch was in
    config = config_of(victim.device_files()[0], retry=RetrySettings(attempts=6, backoff=0.5, backoff_max=2.0),
                       measure={"batch_size": 2})
    paths = [onnx_models[n] for n in ("tiny", "heavy", "small", "medium")]
    with device_from_config(config) as device:
        run = Background(device, paths)
        assert run.first.wait(60)
        victim.stop(name)  # power off: sshd, the session and the agent die
        time.sleep(1.5)
        victim.start(name)
        results = run.join(180)  # guards a hang only
        assert device.stats["reconnects"] >= 1
    assert all(m.ok for m in results), [(m.error, m.error_message) for m in results]
    assert results[0] is run.arrived[0]  # what finished before the kill was kept, not measured again
    assert len(run.arrived) == len(paths)


def test_sshd_killed_for_good_reports_exactly_which_models_failed(victim, onnx_models):
    # one model per agent run (batch_size 1), so that some results are in before the device goes away
    config = config_of(victim.device_files()[0], retry=RetrySettings(attempts=2, backoff=0.2), measure={"batch_size": 1})
    paths = [onnx_models[n] for n in ("tiny", "heavy", "small", "medium")]
    with device_from_config(config) as device:
        run = Background(device, paths)
        assert run.first.wait(60)
        victim.stop(victim.devices[0].name)
        results = run.join(60)
    done = [m for m in results if m.ok]
    failed = [m for m in results if not m.ok]
    assert results[0].ok and results[0] is run.arrived[0]
    assert failed and all(m.error == "unreachable" for m in failed)
    assert [m.model_path for m in done + failed] == [str(p) for p in paths]  # each model accounted for once
    assert "unreachable after 2 tries" in failed[0].error_message


def test_agent_crash_while_timing_is_a_runtime_error_for_the_batch_and_the_device_goes_on(victim, onnx_models):
    """Models are timed together, so an agent that dies while timing leaves every model of its batch without a
    figure: each gets a runtime_error saying so (no figure is made up), and the device measures the next call."""
    name = victim.devices[0].name
    # 4000 runs: still timing when it is killed; a model time limit above what 4000 runs of "heavy" take on a busy
    # machine (16 ms a run at load 4: 64 s, over the testbed devices' 60 s, was a timeout, not a crash mid-window)
    config = config_of(victim.device_files()[0], measure={"runs": 4000, "warmup": 1}, timeouts={"model": 1200.0})
    paths = [onnx_models["tiny"], onnx_models["heavy"], onnx_models["small"]]
    killed = []
    timing = threading.Event()  # the agent's first tick: the batch is loaded and being timed, however busy the machine

    def crash_while_timing():
        if timing.wait(300):  # guards a hang only
            for pid in agent_pids(victim, name):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    killer = threading.Thread(target=crash_while_timing)
    killer.start()
    with device_from_config(config) as device:
        device.on_event = lambda kind, event: timing.set() if kind == "tick" else None
        results = device.measure(paths)
        timing.set()  # a batch that ended without a tick: nothing left to kill, and `killed` below says so
        killer.join()
        assert killed
        assert [m.error for m in results] == ["runtime_error"] * 3, [m.error_message for m in results]
        assert all("died while timing the batch" in m.error_message for m in results)
        again = device.measure([onnx_models["tiny"]])
    assert again[0].ok


def runs_lasting(model: Path, seconds: float) -> int:
    """How many runs of `model` take at least `seconds` on this machine (one thread), from a measured rate."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in session.get_inputs()}
    session.run(None, feed)
    t0 = time.perf_counter()
    for _ in range(20):
        session.run(None, feed)
    per_run = (time.perf_counter() - t0) / 20
    return int(np.ceil(seconds / per_run))


@pytest.mark.timing  # asserts a speed: runs alone (tests/scheduling.py)
def test_a_model_over_its_time_limit_is_stopped_and_the_batch_goes_on(victim, onnx_models):
    name = victim.devices[0].name
    runs = max(300, runs_lasting(onnx_models["heavy"], 4 * 1.5))  # heavy alone would take 4x the limit or more
    config = config_of(victim.device_files()[0], measure={"runs": runs, "warmup": 0}, timeouts={"model": 1.5})
    paths = [onnx_models["tiny"], onnx_models["heavy"], onnx_models["tiny"]]
    with device_from_config(config) as device:
        results = device.measure(paths)
    assert [m.error for m in results] == [None, "timeout", None]
    assert "longer than the 1.5 s allowed" in results[1].error_message
    # the stopped agent does not run on: gone within 3 s (its reaping on a busy machine), where heavy's runs left
    # would keep it running 4.5 s or more
    deadline = time.monotonic() + 3.0
    while agent_pids(victim, name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent_pids(victim, name) == []


@pytest.fixture
def cuttable(make_testbed):
    return make_testbed(["netns=1,rate=8mbit,runs=400"], prefix="cut")


def big_onnx(path: Path) -> Path:
    """A valid 8 MB model (one MatMul), so an upload at 8 Mbit/s takes about 8 s."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((1024, 2048)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2048])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _upload_under_way(folder: Path) -> bool:
    """Whether `folder` holds a partial upload with bytes in it (a file may be renamed while we look)."""
    try:
        return any(p.name.endswith(".part") and p.stat().st_size > 0 for p in folder.iterdir())
    except FileNotFoundError:
        return False


def test_link_cut_mid_upload_fails_fast_not_a_hang(cuttable, onnx_models, tmp_path):
    name = cuttable.devices[0].name
    config = config_of(cuttable.device_files()[0], retry=RetrySettings(attempts=2, backoff=0.5),
                       measure={"runs": 3})
    big = big_onnx(tmp_path / "big.onnx")
    with device_from_config(config) as device:
        assert device.check()["ok"]  # agent uploaded; the model upload is what gets cut
        run = Background(device, [big, onnx_models["tiny"]])
        # cut once the upload is under way (its partial file on the device has bytes), however long the batch took
        # to get there on a busy machine: 8 MB at 8 Mbit/s leaves seconds to see it
        uploading = Path(config.work_dir) / "models"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and run.finished_at is None and not _upload_under_way(uploading):
            time.sleep(0.02)
        assert run.finished_at is None and _upload_under_way(uploading), "no upload was seen under way"
        cut_at = time.monotonic()
        cuttable.cut(name)
        results = run.join(120)
        took = run.finished_at - cut_at
        assert took < cut_noticed_within(config), f"took {took:.1f} s after the cut"
        assert [m.error for m in results] == ["unreachable", "unreachable"]
        cuttable.restore(name)
        assert device.measure([onnx_models["tiny"]])[0].ok  # reconnects, and removes the cut upload
    names = [p.name for p in (Path(config.work_dir) / "models").iterdir()]
    assert not [n for n in names if n.endswith(".part")]
    assert results[0].model_sha256 + ".onnx" not in names  # a cut upload never looks complete


def test_link_cut_mid_run_keeps_finished_results_and_fails_fast(cuttable, onnx_models):
    name = cuttable.devices[0].name
    config = config_of(cuttable.device_files()[0], retry=RetrySettings(attempts=2, backoff=0.5),
                       measure={"batch_size": 1})  # one model per agent run: the first is in before the cut
    paths = [onnx_models["tiny"], onnx_models["heavy"], onnx_models["small"]]  # heavy: 400 runs, seconds
    with device_from_config(config) as device:
        run = Background(device, paths)
        assert run.first.wait(60)
        cut_at = time.monotonic()
        cuttable.cut(name)
        results = run.join(120)
    cuttable.restore(name)
    assert run.finished_at - cut_at < cut_noticed_within(config)
    assert results[0].ok and results[0] is run.arrived[0]
    assert [m.error for m in results[1:]] == ["unreachable", "unreachable"]
