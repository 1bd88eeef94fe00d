"""SSH devices against the testbed: real sshd, paramiko, ONNX Runtime and TFLite; speeds, caching, host keys."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgenas.devices import AuthError, HostKeyError, device_from_config, load_device, measure_fleet
from edgenas.devices.device_files import RetrySettings, read_device_file

pytestmark = pytest.mark.testbed  # real sshd devices from tools/testbed.py

ROOT = Path(__file__).resolve().parents[2]


def config_of(path, **changes):
    config = read_device_file(path)
    ssh = changes.pop("ssh", None)
    if ssh:
        config = replace(config, ssh=replace(config.ssh, **ssh))
    return replace(config, **changes)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def speed_pair(make_testbed):
    bed = make_testbed(["quota=50,runs=60,fast_runs=30", "quota=25,runs=60,fast_runs=30"], prefix="speed")
    assert all(d.quota_applied for d in bed.devices), "the testbed started without the quotas it was asked for"
    return bed


@pytest.mark.timing  # asserts a speed: runs alone (tests/scheduling.py)
def test_slower_device_measures_slower_by_its_quota_ratio_and_a_second_run_uploads_nothing(speed_pair, onnx_models):
    paths = [onnx_models[name] for name in ("tiny", "small", "medium", "heavy")]
    files = speed_pair.device_files()
    first = {}
    for path in files:
        with load_device(path) as device:
            first[device.name] = device.measure(paths)
            assert device.stats["uploaded_files"] == len(paths) + 1  # the models and the agent
    second = {}
    for path in files:  # new connections, as a later run would make
        with load_device(path) as device:
            second[device.name] = device.measure(paths)
            assert device.stats["uploaded_files"] == 0
            assert device.stats["cached_files"] == len(paths) + 1
    for results in (*first.values(), *second.values()):
        assert all(m.ok for m in results), [(m.error, m.error_message) for m in results]
    fast, slow = (d.name for d in speed_pair.devices)
    assert first[slow][3].machine["cpu_quota"] == 0.25 and first[fast][3].machine["cpu_quota"] == 0.5
    # quota 25 % vs 50 %: every model's figure is about twice as large (the quota's share of each window is read
    # from the device's cgroup and stays in the figure); other load on this machine slows both alike as long as
    # each still gets its quota
    ratios = [float(np.median([s.latency_ms / f.latency_ms for s, f in zip(run[slow], run[fast])]))
              for run in (first, second)]
    assert all(m.timing["window"]["throttled_share"] > 0.3 for run in (first, second) for m in run[slow])
    assert 1.5 < max(ratios) and min(ratios) < 2.8, ratios


@pytest.fixture
def fresh_bed(make_testbed):
    """A one-device testbed of its own, for tests that change a device's keys or files."""
    return make_testbed([""], prefix="key")


def test_unknown_host_key_is_refused_until_trusted_explicitly(fresh_bed, tmp_path, onnx_models):
    known_hosts = tmp_path / "known_hosts"
    config = config_of(fresh_bed.device_files()[0], ssh={"known_hosts": str(known_hosts)})
    with pytest.raises(HostKeyError) as refused:
        device_from_config(config).measure([onnx_models["tiny"]])
    message = str(refused.value)
    assert str(known_hosts) in message and "SHA256:" in message and "--trust-new-host-key" in message
    assert not known_hosts.exists()
    with device_from_config(config, trust_new_host_key=True) as device:
        report = device.check()
    assert report["ok"] and report["host_key_recorded"] == str(known_hosts)
    bed_device = fresh_bed.devices[0]
    assert known_hosts.read_text().startswith(f"[{bed_device.address}]:{bed_device.port} ssh-ed25519 ")
    with device_from_config(config) as device:  # now known: no option needed
        assert device.measure([onnx_models["tiny"]])[0].ok


def test_changed_host_key_is_refused_with_how_to_trust_it(fresh_bed, onnx_models):
    known_before = fresh_bed.known_hosts.read_text()
    fresh_bed.rekey(fresh_bed.devices[0].name)
    config = config_of(fresh_bed.device_files()[0])
    for trust in (False, True):  # trusting new keys never replaces a changed one
        with pytest.raises(HostKeyError) as refused:
            device_from_config(config, trust_new_host_key=trust).measure([onnx_models["tiny"]])
        message = str(refused.value)
        name = f"[{fresh_bed.devices[0].address}]:{fresh_bed.devices[0].port}"
        assert "CHANGED" in message and f"ssh-keygen -R '{name}'" in message and "--trust-new-host-key" in message
    assert fresh_bed.known_hosts.read_text() == known_before
    done = subprocess.run([sys.executable, "-m", "edgenas.cli", "devices", "check", str(config.path)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and "CHANGED" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_wrong_key_fails_authentication_with_advice(fresh_bed, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    config = config_of(fresh_bed.device_files()[0], ssh={"identity_file": str(other)})
    with pytest.raises(AuthError, match="authorized_keys"):
        device_from_config(config).check()


def test_shell_metacharacters_in_paths_never_reach_a_shell(testbed_devices, tmp_path, onnx_models):
    marker = str(tmp_path / f"pwned-{uuid.uuid4().hex[:12]}")
    # the path's text contains $(touch <tmp>/pwned-...), backticks, quotes, ; and spaces
    evil = tmp_path / f"dir with spaces $(touch {marker})" / f"`touch {marker}`; touch {marker} 'x\""
    model = evil / f"model $(touch {marker}).onnx"
    model.parent.mkdir(parents=True)
    shutil.copyfile(onnx_models["tiny"], model)
    assert f"$(touch {marker})" in str(model)
    work = tmp_path / f"work $(touch {marker})" / "it's `here`"
    ssh_device = device_from_config(config_of(testbed_devices[0], work_dir=str(work)))
    local = config_of(ROOT / "devices" / "local.toml")  # timed in a short window: the paths are under test
    local_device = device_from_config(replace(local, measure=replace(local.measure, window_s=0.3, min_fast_runs=0)))
    for device in (ssh_device, local_device):
        with device:
            (m,) = device.measure([model])
            assert m.ok, m.error_message
            assert m.model_path == str(model)
            assert device.check()["ok"]
    assert not os.path.exists(marker)
    assert (work / "models").is_dir() and len(list((work / "models").iterdir())) == 1


def test_fleet_runs_devices_concurrently_and_a_bad_device_does_not_stop_the_others(
        testbed, onnx_models, tflite_models, tmp_path):
    tb1, tb2, tb3 = testbed.device_files()
    dead = device_from_config(config_of(tb1, name="dead", ssh={"port": closed_port()},
                                        retry=RetrySettings(attempts=2, backoff=0.1)))
    (tmp_path / "empty_known_hosts").write_text("")
    stranger = device_from_config(config_of(tb2, name="stranger",
                                            ssh={"known_hosts": str(tmp_path / "empty_known_hosts")}))
    models = {"tb1": [onnx_models["small"], onnx_models["tiny"]], "tb2": [onnx_models["small"]],
              "tb3": [tflite_models["small"]], "dead": [onnx_models["tiny"], onnx_models["small"]],
              "stranger": [onnx_models["tiny"]]}
    arrivals = []
    results = measure_fleet([tb1, tb2, tb3, dead, stranger], models,
                            on_result=lambda m: arrivals.append((m.device, threading.get_ident())))
    assert list(results) == ["tb1", "tb2", "tb3", "dead", "stranger"]
    assert {tid for _, tid in arrivals} == {threading.get_ident()}  # on_result runs in the caller's thread
    assert len(arrivals) == sum(len(v) for v in models.values())
    for name in ("tb1", "tb2", "tb3"):
        assert [m.model_path for m in results[name]] == [str(p) for p in models[name]]
        assert all(m.ok for m in results[name]), [m.error_message for m in results[name]]
    assert [m.error for m in results["dead"]] == ["unreachable", "unreachable"]
    assert "cannot reach" in results["dead"][0].error_message
    assert results["stranger"][0].error == "host_key" and "--trust-new-host-key" in results["stranger"][0].error_message


def test_clean_removes_what_was_uploaded_and_the_next_run_uploads_again(fresh_bed, onnx_models):
    path = fresh_bed.device_files()[0]
    work = Path(read_device_file(path).work_dir)
    with load_device(path) as device:
        assert device.measure([onnx_models["tiny"], onnx_models["small"]])[0].ok
        assert len(list((work / "models").iterdir())) == 2
        assert device.clean() == 4  # the two models, the agent and the device's probe reference
        assert list((work / "models").iterdir()) == [] and not list(work.glob("agent-*.py"))
    with load_device(path) as device:
        assert device.measure([onnx_models["tiny"]])[0].ok
        assert device.stats["uploaded_files"] == 2


def test_cli_check_and_measure_on_testbed_devices(testbed_devices, onnx_models):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "edgenas.cli", *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=120)

    done = cli("devices", "check", testbed_devices[1])
    assert done.returncode == 0, done.stderr
    assert "ssh-ed25519 SHA256:" in done.stdout and "onnxruntime" in done.stdout and "ready" in done.stdout
    done = cli("measure", "--device", testbed_devices[0], "--device", testbed_devices[1], "--json",
               onnx_models["tiny"], onnx_models["small"])
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted((r["device"], Path(r["model_path"]).name) for r in rows) == [
        ("tb1", "small.onnx"), ("tb1", "tiny.onnx"), ("tb2", "small.onnx"), ("tb2", "tiny.onnx")]
    assert all(r["error"] is None and r["median_ms"] > 0 for r in rows)


def test_models_are_removed_after_measuring_when_keep_models_is_false(fresh_bed, onnx_models):
    config = read_device_file(fresh_bed.device_files()[0])
    config = replace(config, measure=replace(config.measure, keep_models=False, runs=3))
    with device_from_config(config) as device:
        assert all(m.ok for m in device.measure([onnx_models["tiny"], onnx_models["small"]]))
    assert list((Path(config.work_dir) / "models").iterdir()) == []


def test_a_missing_remote_python_is_reported_not_crashed_on(testbed_devices, onnx_models):
    config = config_of(testbed_devices[0], python=("python3.0-missing",))
    with device_from_config(config) as device:
        report = device.check()
        (m,) = device.measure([onnx_models["tiny"]])
    assert not report["ok"] and "python3.0-missing" in report["problems"][0]
    assert m.error == "agent_error" and "exit status 127" in m.error_message


def test_ssh_agent_authentication_without_a_key_file(fresh_bed, tmp_path, monkeypatch, onnx_models):
    """use_agent = true and no identity_file: the key is offered by a real ssh-agent; without the agent it fails
    saying how to give a key (never a password)."""
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.skip("ssh-agent / ssh-add (openssh-client) are missing")
    config = config_of(fresh_bed.device_files()[0], ssh={"identity_file": None, "use_agent": True})
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(AuthError, match="no ssh-agent is running .*ssh-add your key, or set identity_file"):
        device_from_config(config).measure([onnx_models["tiny"]])
    with pytest.raises(AuthError, match="no ssh-agent is running"):
        device_from_config(config).check()
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(fresh_bed.client_key)], check=True, env=env, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        with device_from_config(config) as device:
            assert device.check()["ok"]
            assert device.measure([onnx_models["tiny"]])[0].ok
    finally:
        agent.terminate()
        agent.wait(10)


def test_devices_clean_removes_what_the_toolkit_put_on_the_device(fresh_bed, onnx_models):
    path = fresh_bed.device_files()[0]
    config = config_of(path)
    with device_from_config(config) as device:
        assert device.measure([onnx_models["tiny"], onnx_models["small"]])[0].ok
    work = Path(config.work_dir)
    models = work / "models"
    ours = {p.name for p in models.iterdir()}
    assert len(ours) == 2
    stranger = work / "models" / "notes.txt"  # not ours: left alone
    stranger.write_text("the user's own file\n")
    done = subprocess.run([sys.executable, "-m", "edgenas.cli", "devices", "clean", str(path)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    removed = int(done.stdout.split("removed ")[1].split()[0])
    assert removed >= 3  # the two models and the agent
    assert [p.name for p in models.iterdir()] == ["notes.txt"]
    assert not list(work.glob("agent-*.py"))


def test_a_file_changed_at_the_same_path_is_uploaded_and_run_anew(testbed_devices, tmp_path):
    """Uploads are named by content (sha256), not by file name: a model rebuilt at the same path is what the
    device runs next, never the earlier upload."""
    from testbed_fixtures import build_onnx_convnet

    from edgenas.artifacts import sha256_file

    seed = uuid.uuid4().int % 10**6  # contents no earlier test put on this shared device
    model = build_onnx_convnet(tmp_path / "model.onnx", channels=4, size=16, layers=1, seed=seed)
    with load_device(testbed_devices[0]) as device:
        (first,) = device.measure([model])
        assert first.ok, first.error_message
        uploaded = device.stats["uploaded_files"]
        model.write_bytes(f"not a model {seed}".encode())  # the same path, other bytes
        (broken,) = device.measure([model])
        assert not broken.ok and device.stats["uploaded_files"] == uploaded + 1  # the device ran the new bytes
        build_onnx_convnet(model, channels=4, size=16, layers=1, seed=seed + 1)
        (second,) = device.measure([model])
        assert second.ok and second.model_sha256 == sha256_file(model) != first.model_sha256
        assert device.stats["uploaded_files"] == uploaded + 2
