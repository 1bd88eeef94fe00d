"""README.md's "Fine-tune on your own images" runs as written: Once-for-All's supernet (a file of the published
layout, `tests/ofa_fixtures.py`) fine-tuned on a folder of a few photos, evaluated and a subnet exported."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ofa_fixtures import ofa_weights

from tests.data.test_stream import photo_folder

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.mark.slow
def test_the_finetune_walkthrough_runs_as_written(tmp_path):
    block = re.search(r"<!-- finetune-walkthrough -->\s*```\n(.*?)```", README, re.S)
    assert block, "README.md has no code block after <!-- finetune-walkthrough -->"
    torch.save({"state_dict": ofa_weights("1.2")}, tmp_path / "ofa_mbv3_d234_e346_k357_w1.2")
    photo_folder(tmp_path / "photos", classes=3, per_class=10, lo=256, hi=320)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    outputs = []
    for line in [line for line in block.group(1).splitlines() if line.strip()]:
        assert line.startswith("edgenas ")
        proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"README command failed: {line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stderr)
    trained = outputs[1]
    assert "streamed from disk, read at 128-224 px" in trained.splitlines()[0]
    assert "a new classifier for 3 classes (it had 1000)" in trained
    state = torch.load(tmp_path / "runs" / "photos" / "supernet.pt", weights_only=True)
    assert state["init"]["file"] == "supernet.pt" and state["space"]["num_classes"] == 3
    assert (tmp_path / "photos-model" / "model.onnx").is_file() and (tmp_path / "photos-model" / "card.json").is_file()
