"""README.md stays true: CI runs its test command, and docs/stages.md's walkthrough commands run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


STAGES = (ROOT / "docs" / "stages.md").read_text()  # the walkthrough of each stage lives there


def _block_after(marker: str, text: str = README) -> list[str]:
    m = re.search(rf"<!-- {marker} -->\s*```\n(.*?)```", text, re.S)
    assert m, f"no code block after <!-- {marker} -->"
    return [line for line in m.group(1).splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command(tmp_path):
    """.ci/run itself, with `bash` on PATH replaced by a recorder: the command it hands to bash is the README's."""
    (command,) = _block_after("test-command")
    shim = tmp_path / "bin"
    shim.mkdir()
    record = tmp_path / "bash-args"
    (shim / "bash").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    (shim / "bash").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["/bin/bash", str(ROOT / ".ci" / "run")], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert record.read_text().splitlines() == ["-c", command]
    assert command.startswith("bash tools/install.sh --dev") and "pytest" in command
    assert (ROOT / "tools" / "install.sh").is_file()


def test_demo_command_is_documented():
    assert _block_after("demo-command") == ["bash tools/install.sh && edgenas demo"]


def test_walkthrough_commands_run_as_written(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    bindir = Path(sys.executable).parent
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    for line in _block_after("walkthrough", STAGES):
        assert line.startswith("edgenas ")
        proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"README command failed: {line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert (tmp_path / "exported" / "model.onnx").is_file() and (tmp_path / "exported" / "card.json").is_file()
