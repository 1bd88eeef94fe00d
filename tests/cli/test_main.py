"""Tests for the `edgenas` command itself: fast help, one-line errors, exit codes."""

import subprocess
import sys

import pytest


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgenas.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands_without_importing_torch():
    """Help is fast because the parser imports none of the heavy packages (torch alone takes seconds to import):
    asserted by what is imported, which holds under any load, not by a time."""
    heavy = ("torch", "paramiko", "onnxruntime", "onnx", "tensorflow", "litert_torch", "jax", "scipy", "matplotlib",
             "mediapipe", "ai_edge_litert", "sklearn")
    code = (
        "import sys; from edgenas.cli import build_parser; text = build_parser().format_help(); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))); print('demo' in text)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]", f"heavy modules imported by the CLI parser: {out[0]}"
    assert out[1] == "True"


def test_help_and_version():
    res = run("--help")
    assert res.returncode == 0
    assert "demo" in res.stdout
    assert run("--version").stdout.startswith("edgenas ")


@pytest.mark.parametrize("args", [("no-such-command",), ("demo", "--bogus")])
def test_bad_arguments_are_one_line_exit_2(args):
    res = run(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgenas") and "error:" in lines[0]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("args, message", [
    (("--total-steps", "3"), "total steps 3 must be at least the number of phases (6)"),
    (("--total-steps", "50", "--steps", "5"), "give --steps (per phase) or --total-steps (in all), not both"),
])
def test_train_total_steps_refuses_what_it_cannot_spread(tmp_path, args, message):
    res = run("train", "--out", str(tmp_path / "t"), "--no-progress", *args)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "t" / "supernet.pt").exists()

