"""docs/pretrained.md's "Start from Once-for-All's published supernets" runs as written, on files of the published layout.

The published supernet, predictor and Note10 tables are replaced by files with their names and layout and seeded
values (`tests/ofa_fixtures.py`: two of the five table resolutions); the download step is the only one not run.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from ofa_fixtures import DATA, ofa_weights, predictor_weights

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "docs" / "pretrained.md").read_text()  # where the walkthrough lives


def test_the_once_for_all_walkthrough_runs_as_written(tmp_path):
    block = re.search(r"<!-- ofa-walkthrough -->\s*```\n(.*?)```", README, re.S)
    assert block, "docs/pretrained.md has no code block after <!-- ofa-walkthrough -->"
    torch.save({"state_dict": ofa_weights("1.2")}, tmp_path / "ofa_mbv3_d234_e346_k357_w1.2")
    torch.save(predictor_weights(), tmp_path / "acc_predictor.pth")
    for r in (176, 192):
        shutil.copy(DATA / f"fixture_{r}_lookup_table.yaml", tmp_path / f"note10_{r}_lookup_table.yaml")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for line in [line for line in block.group(1).splitlines() if line.strip()]:
        assert line.startswith("edgenas ")
        proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"README command failed: {line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert (tmp_path / "devices" / "note10.toml").is_file()
    assert (tmp_path / "ofa" / "search" / "note10" / "search-result.json").is_file()
    assert (tmp_path / "exported" / "model.onnx").is_file() and (tmp_path / "exported" / "card.json").is_file()
