"""Device files: validation messages, name resolution, shipped examples, ~/.ssh/config aliases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgenas.devices import Measurement, list_devices, load_device
from edgenas.devices.device_files import read_device_file
from edgenas.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]

SSH_OK = """
name = "pi"
kind = "ssh"
runtime = "onnxruntime"
[ssh]
host = "10.0.0.9"
user = "pi"
identity_file = "key"
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(UsageError) as info:
        read_device_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


@pytest.mark.parametrize("text, field, expected", [
    ('kind = "ssh"\nruntime = "onnx"\n[ssh]\nhost = "h"\nidentity_file = "k"', "runtime", '"onnxruntime" or "tflite"'),
    ('kind = "phone"\nruntime = "tflite"', "kind", '"local" or "ssh" or "mcu"'),
    ('runtime = "tflite"', "missing field kind", '"local"'),
    ('kind = "local"', "missing field runtime", '"onnxruntime"'),
    ('kind = "local"\nruntime = "tflite"\nthreads = 0', "threads = 0", "an integer >= 1"),
    ('kind = "local"\nruntime = "tflite"\nthreads = "4"', 'threads = "4"', "an integer >= 1"),
    ('kind = "local"\nruntime = "tflite"\nthread = 2', "unknown field thread", "expected one of"),
    ('kind = "local"\nruntime = "tflite"\n[measure]\nruns = 0', "[measure] runs = 0", "an integer >= 1"),
    ('kind = "local"\nruntime = "tflite"\n[measure]\nmin_fast_runs = -1', "[measure] min_fast_runs = -1",
     "an integer >= 0"),
    ('kind = "local"\nruntime = "tflite"\n[measure]\nmin_fast_runs = 2.5', "[measure] min_fast_runs = 2.5",
     "an integer >= 0"),
    ('kind = "local"\nruntime = "tflite"\n[measure]\ncpu_affinity = "0-3"', "[measure] cpu_affinity",
     "a list of CPU numbers"),
    ('kind = "local"\nruntime = "tflite"\n[timeouts]\nmodel = -1', "[timeouts] model = -1", "a number > 0"),
    ('kind = "ssh"\nruntime = "tflite"\n[ssh]\nhost = "h"\nport = 70000', "[ssh] port = 70000",
     "an integer from 1 to 65 535"),
    ('kind = "ssh"\nruntime = "tflite"\n[ssh]\nuser = "pi"', "missing field [ssh] host", "config_host"),
    ('kind = "ssh"\nruntime = "tflite"', "missing table [ssh]", "host"),
    ('kind = "ssh"\nruntime = "tflite"\n[ssh]\nhost = "h"\npassword = "x"', "unknown field [ssh] password",
     "identity_file"),
    ('kind = "mcu"\n[ssh]\nhost = "h"\n[mcu]\ncommand = ["flash"]\nlatency_pattern = "(\\\\d+)"',
     "[mcu] command", '"{model}"'),
    ('kind = "mcu"\n[ssh]\nhost = "h"\n[mcu]\ncommand = ["f", "{model}"]\nlatency_pattern = "\\\\d+"',
     "[mcu] latency_pattern", "one group"),
    ('kind = "mcu"\n[ssh]\nhost = "h"\n[mcu]\ncommand = ["f", "{model}"]\nlatency_pattern = "c=(\\\\d+)"\n'
     'unit = "cycles"', "clock_hz", "clock in Hz"),
    ('kind = "mcu"\nruntime = "onnxruntime"\n[ssh]\nhost = "h"', "runtime", "TFLite Micro"),
    ('kind = "local"\nruntime = "tflite"\n[ssh]\nhost = "h"', "[ssh]", 'kind = "ssh"'),
    ('kind = "local"\nruntime = "tflite"\nname = "has space"', "name", "letters, digits"),
    ('kind = "local\nruntime = "tflite"', "not valid TOML", "line 1"),
])
def test_bad_field_is_one_line_naming_file_field_and_expectation(tmp_path, text, field, expected):
    message = error_of(write(tmp_path, "dev.toml", text))
    assert field in message and expected in message


# A valid host name followed by anything else must be refused whole: the host reaches ssh's argument list
# and, through ~/.ssh/config or a ProxyCommand, possibly a shell.
BAD_HOSTS = ["pi.local;rm -rf /", "pi.local rm", "host name", "host\nx", "pi.local\n", "pi.local$(id)",
             "pi.local`id`", "pi.local|sh", "pi.local&", "10.0.0.9;id", "10.0.0.9 x", "-oProxyCommand=sh",
             "pi..local", "pi.-local", "pi.local/x", "pi.local:22", "[::1]x", ""]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_host_is_checked_whole(tmp_path, host):
    from edgenas.devices.device_files import valid_host

    assert not valid_host(host)
    text = SSH_OK.replace('host = "10.0.0.9"', f"host = {json.dumps(host)}")
    message = error_of(write(tmp_path, "dev.toml", text))
    assert "[ssh] host" in message and "a host name" in message


@pytest.mark.parametrize("host", ["pi.local", "pi4", "raspberrypi.", "a-b.example.org", "10.0.0.9", "::1",
                                  "[fe80::1]", "lab_pi"])
def test_good_hosts_are_accepted(tmp_path, host):
    from edgenas.devices.device_files import valid_host

    assert valid_host(host)
    config = read_device_file(write(tmp_path, "dev.toml", SSH_OK.replace("10.0.0.9", host)))
    assert config.ssh.host == host


@pytest.mark.parametrize("field, value", [("user", "pi;reboot"), ("user", "pi x"), ("user", "pi\nx"),
                                          ("config_host", "lab;id"), ("config_host", "lab x")])
def test_user_and_alias_are_checked_whole(tmp_path, field, value):
    text = SSH_OK.replace('user = "pi"', f"{field} = {json.dumps(value)}" if field == "user"
                          else f'user = "pi"\n{field} = {json.dumps(value)}')
    assert f"[ssh] {field}" in error_of(write(tmp_path, "dev.toml", text))


def test_missing_file_and_unknown_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(UsageError, match="does not exist"):
        load_device(tmp_path / "nope.toml")
    with pytest.raises(UsageError, match=r"unknown device 'pi5'.*devices/pi5\.toml.*known devices: local, local-tflite"):
        load_device("pi5")
    with pytest.raises(UsageError, match="bad device name"):
        load_device("$(reboot)")


def test_name_resolves_in_project_then_user_config(tmp_path, monkeypatch):
    home = tmp_path / "home"
    user_dir = home / ".config" / "edgenas" / "devices"
    user_dir.mkdir(parents=True)
    (tmp_path / "devices").mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    write(user_dir, "a.toml", 'kind = "local"\nruntime = "tflite"\ndescription = "user"')
    write(user_dir, "b.toml", 'kind = "local"\nruntime = "tflite"\ndescription = "user"')
    write(tmp_path / "devices", "a.toml", 'kind = "local"\nruntime = "onnxruntime"\ndescription = "project"')
    write(tmp_path / "devices", "broken.toml", 'kind = "local"')
    write(tmp_path / "devices", "c.example.toml", 'kind = "local"\nruntime = "tflite"')
    assert load_device("a").describe()["description"] == "project"
    assert load_device("b").describe()["description"] == "user"
    assert load_device("b").name == "b"  # name defaults to the file name
    listing = {e["name"]: e for e in list_devices()}
    assert set(listing) == {"a", "b", "broken", "local", "local-tflite"}
    assert listing["a"]["runtime"] == "onnxruntime"
    assert "missing field runtime" in listing["broken"]["error"]


@pytest.mark.parametrize("path", sorted((ROOT / "devices").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_device_files_are_valid(path):
    config = read_device_file(path)
    assert config.kind in ("local", "ssh", "mcu")
    if config.kind != "local":
        assert config.ssh is not None
        assert config.ssh.identity_file is None or Path(config.ssh.identity_file).is_absolute()


def test_examples_cover_pi_phone_and_mcu():
    kinds = {p.name: read_device_file(p).kind for p in (ROOT / "devices").glob("*.example.toml")}
    assert kinds == {"pi4.example.toml": "ssh", "android-termux.example.toml": "ssh", "mcu-host.example.toml": "mcu"}
    local = read_device_file(ROOT / "devices" / "local.toml")
    assert (local.kind, local.runtime) == ("local", "onnxruntime")


def test_ssh_config_alias_supplies_hostname_port_user_identity(tmp_path):
    pytest.importorskip("paramiko")
    from edgenas.devices.ssh import SSHTransport

    key = write(tmp_path, "id_lab", "not read until connecting")
    config = write(tmp_path, "ssh_config", f"Host lab\n  HostName 192.0.2.7\n  Port 2201\n  User ada\n"
                                           f"  IdentityFile {key}\n")
    path = write(tmp_path, "lab.toml", f'kind = "ssh"\nruntime = "tflite"\n[ssh]\nconfig_host = "lab"\n'
                                       f'config_file = "{config}"\n')
    transport = SSHTransport(read_device_file(path))
    assert (transport.host, transport.port, transport.user) == ("192.0.2.7", 2201, "ada")
    assert transport.identities == [str(key)] and transport.use_agent is False
    # values in the device file win over the alias
    path.write_text(path.read_text() + 'port = 22\nuser = "bob"\n')
    transport = SSHTransport(read_device_file(path))
    assert (transport.port, transport.user, transport.known_hosts_name) == (22, "bob", "192.0.2.7")


def test_ssh_identity_problems_are_usage_errors(tmp_path):
    pytest.importorskip("paramiko")
    from edgenas.devices.ssh import SSHTransport

    path = write(tmp_path, "pi.toml", SSH_OK)
    with pytest.raises(UsageError, match=r'identity_file = ".*key" does not exist'):
        SSHTransport(read_device_file(path))
    path.write_text(SSH_OK.replace('identity_file = "key"', "use_agent = false"))
    with pytest.raises(UsageError, match="passwords are not supported"):
        SSHTransport(read_device_file(path))
    path.write_text(SSH_OK.replace('identity_file = "key"', 'config_host = "pi"\nconfig_file = "nope"'))
    with pytest.raises(UsageError, match="config_host"):
        SSHTransport(read_device_file(path))


def test_relative_key_paths_are_relative_to_the_device_file(tmp_path):
    write(tmp_path, "key", "x")
    config = read_device_file(write(tmp_path, "pi.toml", SSH_OK))
    assert config.ssh.identity_file == str(tmp_path / "key")
    assert config.ssh.known_hosts == str(Path("~/.ssh/known_hosts").expanduser())


def test_describe_has_no_secrets(tmp_path):
    write(tmp_path, "key", "x")
    description = load_device(write(tmp_path, "pi.toml", SSH_OK)).describe()
    text = repr(description)
    assert "key" not in text.replace("host_key", "") and str(tmp_path) not in text
    assert description["host"] == "10.0.0.9" and description["runtime"] == "onnxruntime"


def test_measurement_round_trips_through_dict():
    m = Measurement(model_path="m.onnx", model_sha256="ab" * 32, device="d", runtime="onnxruntime",
                    latency_ms=1.45, median_ms=1.5, samples_ms=(1.4, 1.5, 1.6), passes=({"median_ms": 1.5, "cv": 0.05},),
                    machine={"cpu": "x"})
    assert Measurement.from_dict(m.to_dict()) == m
    assert m.ok and hash(m) == hash(Measurement.from_dict(m.to_dict()))
    later = Measurement.from_dict({**m.to_dict(), "new_field": 3})
    assert later.extra == {"new_field": 3}
    failed = Measurement(model_path="m.onnx", model_sha256="", device="d", runtime="tflite", error="timeout")
    assert not failed.ok


def test_cli_bad_device_is_one_line_exit_2(tmp_path):
    bad = write(tmp_path, "bad.toml", 'kind = "ssh"\nruntime = "tflite"\n[ssh]\nhost = "h"\nport = "x"')
    for args in (["devices", "check", str(bad)], ["measure", "--device", str(bad), str(bad)],
                 ["devices", "check", "no-such-device"]):
        done = subprocess.run([sys.executable, "-m", "edgenas.cli", *args], capture_output=True, text=True,
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["local", "local-tflite"])
def test_local_devices_are_built_in_and_match_the_shipped_files(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no devices/ folder here
    monkeypatch.setenv("HOME", str(tmp_path))
    built_in = load_device(name).config
    shipped = read_device_file(ROOT / "devices" / f"{name}.toml")
    assert (built_in.kind, built_in.runtime, built_in.threads, built_in.measure) == (
        shipped.kind, shipped.runtime, shipped.threads, shipped.measure)
    assert {e["name"]: e["path"] for e in list_devices()}[name] == "(built in)"
    (tmp_path / "devices").mkdir()
    write(tmp_path / "devices", f"{name}.toml", f'kind = "local"\nruntime = "{shipped.runtime}"\nthreads = 2')
    assert load_device(name).threads == 2  # a file of that name takes precedence


@pytest.mark.parametrize("name", ["local", "local-tflite"])
def test_the_local_devices_are_defined_once(name, tmp_path):
    """`LOCAL_DEVICES` is the one definition: the built-in device, the demo's device file and the shipped
    devices/NAME.toml all hold its settings, and the demo's are the ones it has always timed with."""
    from dataclasses import replace

    from edgenas.devices.device_files import LOCAL_DEVICES, builtin_device, device_toml
    from edgenas.pipeline.demo import demo_devices

    config = LOCAL_DEVICES[name]
    assert replace(read_device_file(ROOT / "devices" / f"{name}.toml"), path=None) == config
    assert builtin_device(name) == replace(config, description=config.description + " (built in)")
    (tmp_path / f"{name}.toml").write_text(demo_devices(tmp_path / "run")[name])
    demo = read_device_file(tmp_path / f"{name}.toml")
    # the demo keeps its speed probe's reference in its run folder (docs/decisions.md, "Demo in five minutes")
    assert demo.work_dir == str((tmp_path / "run" / "devices").resolve())
    assert replace(demo, path=None, work_dir=config.work_dir) == config
    m = demo.measure  # the demo's timing, pinned: change it only on purpose (the README's figures were made with it)
    assert (demo.kind, demo.threads, m.warmup, m.runs, m.window_s, m.retime, m.min_fast_runs, m.batch_size,
            m.cpu_affinity) == ("local", 1, 5, 60, 4.0, 1, 30, 300, ())
    assert demo.runtime == {"local": "onnxruntime", "local-tflite": "tflite"}[name]
    with pytest.raises(ValueError):
        device_toml(replace(config, kind="ssh"), "not a local device")


def test_one_toml_writer_reads_back():
    from edgenas.artifacts import toml_text
    from edgenas.inputs import parse_toml

    data = {"name": 'a "quoted"\tname\x01', "n": 3, "x": 0.5, "on": True, "none": None, "list": [1, 2],
            "table": {"k": "v", "skip": None}, "rows": [{"a": 1}, {"a": 2}]}
    text = toml_text("a header\nof two lines", data)
    assert text.startswith("# a header\n# of two lines\n") and "none" not in text and "skip" not in text
    back = parse_toml(text, "test")
    assert back == {k: v for k, v in data.items() if k != "none"} | {"table": {"k": "v"}}
