"""MCU devices: a stand-in board (the real TFLite Micro interpreter) behind a testbed host's sshd."""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import replace

import pytest

from edgenas.devices import device_from_config
from edgenas.devices.device_files import read_device_file
from edgenas.devices.mcu_board import fill_command

pytestmark = pytest.mark.testbed  # real sshd devices from tools/testbed.py


@pytest.fixture(scope="module")
def board(make_testbed):
    pytest.importorskip("tflite_micro")
    return make_testbed(["kind=mcu,runs=8"], prefix="mcu")


def mcu_device(bed, **mcu):
    config = read_device_file(bed.device_files()[0])
    return device_from_config(replace(config, mcu=replace(config.mcu, **mcu)))


def test_board_latency_is_read_from_its_output(board, tflite_models):
    with mcu_device(board) as device:
        (m,) = device.measure([tflite_models["small"]])
    assert m.ok, m.error_message
    assert m.runs == 8 and len(m.samples_ms) == 8
    assert m.runtime == "tflite" and m.runtime_version == "tflite-micro"
    assert 0.01 < m.median_ms < 1000
    assert m.extra["unit"] == "us"


def test_a_boards_figure_is_the_median_of_one_commands_runs(board, tflite_models):
    with mcu_device(board) as device:
        (m,) = device.measure([tflite_models["small"]])  # one flash and run: a board's timing is exact
    assert m.ok and m.latency_ms == m.median_ms and m.timing["method"] == "board" and m.retimed == 0


def test_cycle_counts_are_converted_with_the_board_clock(board, tflite_models):
    config = read_device_file(board.device_files()[0])
    command = (*config.mcu.command, "--clock-hz", "216000000")
    with mcu_device(board, command=command, latency_pattern=r"cycles=(\d+)", unit="cycles",
                    clock_hz=216e6) as device:
        assert device.latencies_ms("cycles=216000\nnoise\ncycles=432000\n") == [1.0, 2.0]
        (m,) = device.measure([tflite_models["small"]])
    assert m.ok and m.runs == 8 and 0.01 < m.median_ms < 1000


def test_board_failures_are_error_codes(board, tflite_models, tmp_path):
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00" * 64)
    with mcu_device(board) as device:
        failed, fine = device.measure([garbage, tflite_models["small"]])
    assert failed.error == "runtime_error" and "exited with status 1" in failed.error_message
    assert "ERROR" in failed.error_message and fine.ok
    with mcu_device(board, latency_pattern=r"fps=(\d+)") as device:
        (m,) = device.measure([tflite_models["small"]])
    assert m.error == "parse_error" and "latency_us=" in m.error_message
    hang = (sys.executable, "-c", "import time; time.sleep(60)", "{model}")
    with mcu_device(board, command=hang, timeout=1.0) as device:
        (m,) = device.measure([tflite_models["small"]])
    assert m.error == "timeout"


def test_check_runs_the_check_command(board):
    with mcu_device(board) as device:
        report = device.check()
    assert report["ok"] and report["host_key"].startswith("ssh-ed25519")
    with mcu_device(board, check_command=("ls", "/dev/no-such-board")) as device:
        report = device.check()
    assert not report["ok"] and "check_command exited" in report["problems"][0]


def test_nothing_in_a_path_reaches_the_host_shell(board, tflite_models, tmp_path):
    marker = str(tmp_path / f"pwned-{uuid.uuid4().hex[:12]}")
    config = read_device_file(board.device_files()[0])
    work = tmp_path / f"w $(touch {marker}) ; `touch {marker}`"
    with device_from_config(replace(config, work_dir=str(work))) as device:
        (m,) = device.measure([tflite_models["small"]])
    assert m.ok, m.error_message
    assert not os.path.exists(marker)


def test_fill_command_replaces_only_known_placeholders():
    command = ("flash", "--model={model}", "{runs}", "{warmup}", "{other}", "{{model}}")
    filled = fill_command(command, {"model": "/m $(x).tflite", "runs": "5", "warmup": "1", "threads": "1",
                                    "work_dir": "/w"})
    assert filled == ["flash", "--model=/m $(x).tflite", "5", "1", "{other}", "{/m $(x).tflite}"]
