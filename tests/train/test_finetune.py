"""Tests for fine-tuning from a pretrained supernet (edgenas.train.finetune, `edgenas train --init`, `[train] init` in
`edgenas run`): the backbone starts from the given weights, the classifier is new where the class count differs, the
lineage is recorded, an incompatible supernet is one line and exit 2."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgenas.artifacts import sha256_file
from edgenas.train.config import Phase, TrainConfig, preset_config
from edgenas.train.finetune import HEAD
from edgenas.train.trainer import train
from tests.data.test_stream import photo_folder

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgenas.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny-space supernet trained for a few steps on 2 classes of small colour images (held in memory)."""
    root = tmp_path_factory.mktemp("pretrain")
    data = photo_folder(root / "data", classes=2, per_class=12, lo=40, hi=48)
    config = TrainConfig(preset="tiny", dataset=f"folder:{data}", space="tiny", batch_size=8, bn_batches=1,
                         final_samples=0, compare_alone=False, eval_every_phase=False,
                         phases=(Phase("full", steps=3, distill=False),))
    return train(config, root / "run", threads=1, progress=False, tensorboard=False).checkpoint


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """3 classes of 128 px photos (streamed)."""
    return photo_folder(tmp_path_factory.mktemp("photos") / "data", classes=3, per_class=10, lo=128, hi=128)


def test_init_on_another_class_count_starts_from_the_backbone_with_a_new_head(tmp_path, pretrained, photos):
    """Two steps that train only the head (the warm-up): every backbone weight is still the pretrained one, the
    classifier is new (3 classes, not 2); the checkpoint and its manifest record where it started."""
    config = tmp_path / "ft.toml"
    config.write_text('batch_size = 6\nbn_batches = 1\nfinal_samples = 0\ncompare_alone = false\n'
                      'head_warmup_steps = 2\n[[phases]]\nname = "full"\nsteps = 2\nlr = 0.05\ndistill = false\n')
    result = _cli("train", "--init", str(pretrained), "--dataset", f"folder:{photos}", "--config", str(config),
                  "--out", str(tmp_path / "run"), "--no-progress", "--threads", "1", "--data-workers", "0", "--json")
    # two steps of the head alone need not pass the training check: its verdict decides the exit status
    assert result.returncode == (0 if json.loads(result.stdout)["gate"]["passed"] else 1), result.stderr[-2000:]
    assert "backbone loaded, a new classifier for 3 classes (it had 2)" in result.stderr
    before = torch.load(pretrained, weights_only=True)
    after = torch.load(tmp_path / "run" / "supernet.pt", weights_only=True)
    params = {name for name, _ in _supernet_of(after).named_parameters()}
    backbone = params - set(HEAD)
    assert backbone and all(torch.equal(before["model"][k], after["model"][k]) for k in backbone)
    assert before["model"]["classifier.weight"].shape[0] == 2 and after["model"]["classifier.weight"].shape[0] == 3
    assert after["space"]["name"] == "tiny" and after["space"]["num_classes"] == 3
    lineage = after["init"]
    assert lineage["file"] == "supernet.pt" and lineage["sha256"] == sha256_file(pretrained)
    assert lineage["classifier"] == "new" and json.loads(result.stdout)["init"]["sha256"] == lineage["sha256"]
    manifest = json.loads((tmp_path / "run" / "supernet.pt.manifest.json").read_text())
    assert manifest["inputs"]["init"]["sha256"] == sha256_file(pretrained)


def _supernet_of(state):
    from edgenas.train.checkpoint import supernet_from_state

    return supernet_from_state(state)


def test_an_incompatible_init_is_one_line_and_exit_2(tmp_path, pretrained, photos):
    result = _cli("train", "--init", str(pretrained), "--space", "mobilenetv3", "--dataset", f"folder:{photos}",
                  "--out", str(tmp_path / "run"), "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "space 'tiny'" in result.stderr and "--space tiny" in result.stderr
    garbage = tmp_path / "x.pt"
    garbage.write_bytes(b"not a checkpoint")
    result = _cli("train", "--init", str(garbage), "--dataset", f"folder:{photos}", "--out", str(tmp_path / "r2"))
    assert result.returncode == 2 and "x.pt" in result.stderr and "Traceback" not in result.stderr


def test_the_finetune_preset_keeps_progressive_shrinking_and_distillation_at_lower_rates():
    ft, small = preset_config("finetune"), preset_config("small")
    assert [p.name for p in ft.phases] == [p.name for p in small.phases]
    assert any(p.distill for p in ft.phases) and ft.head_warmup_steps > 0
    assert all(a.lr < b.lr and a.epochs < b.epochs for a, b in zip(ft.phases, small.phases))


RUN = """
out = "out"
[train]
dataset = "folder:{photos}"
preset = "finetune"
init = "{init}"
total_steps = 6
batch_size = 6
[predictor]
samples = 12
test = 2
bn_batches = 1
[search]
population = 12
generations = 4
top_k = 1
[export]
formats = ["onnx"]
[[devices]]
name = "local.toml"
precision = "fp32"
# a budget far above any subnet here, whatever the load: this test is about fine-tuning and shipping; at the 90th
# percentile (0.55 ms once, from 3 calibration timings on a loaded machine) the one candidate measured 0.85 ms
# while other work held 88 % of the core, and nothing shipped
budgets_ms = [50.0]
calibration_budget = 3
holdout = 3
calibration_rounds = 0
"""

LOCAL = """
name = "local"
kind = "local"
runtime = "onnxruntime"
threads = 1
[measure]
warmup = 1
runs = 5
window_s = 0.3
retime = 0                     # an unsteady window (the other test worker) is not timed again: the timing is not under test here
min_fast_runs = 0              # nor does a window wait for fast moments (a loaded machine has few): it lasts window_s
"""


def test_a_run_fine_tunes_from_init_on_a_folder_and_ships(tmp_path, pretrained, photos):
    (tmp_path / "run.toml").write_text(RUN.format(photos=photos, init=pretrained))
    (tmp_path / "local.toml").write_text(LOCAL)
    result = _cli("run", "run.toml", "--force", "--json", cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    shipped = list((tmp_path / "out" / "export").rglob("model.onnx"))
    assert len(shipped) == 1 and (shipped[0].parent / "card.json").is_file()
    state = torch.load(tmp_path / "out" / "supernet" / "supernet.pt", weights_only=True)
    assert state["init"]["sha256"] == sha256_file(pretrained) and state["space"]["num_classes"] == 3
    assert "streamed from disk, read at 24-32 px" in result.stderr


def test_init_keeps_the_resolutions_its_supernet_was_given(tmp_path, pretrained):
    """A supernet imported at some resolutions (`import ofa --resolutions 160,...,224`) fine-tunes at those: the run
    of its preset takes the stored space whole, instead of refusing it for resolutions the preset lists otherwise.
    Another width or other stages are still refused (by `read_init`, tested above)."""
    from edgenas.data import load_dataset
    from edgenas.space import SearchSpace
    from edgenas.train.checkpoint import save_checkpoint
    from edgenas.train.trainer import build_space

    state = torch.load(pretrained, weights_only=True)
    stored = SearchSpace.from_dict(state["space"])
    narrowed = stored.replace(resolutions=tuple(stored.resolutions[-1:]))
    assert narrowed.resolutions != SearchSpace.preset("tiny").resolutions
    path = save_checkpoint(tmp_path / "narrowed.pt", {**state, "space": narrowed.to_dict()})
    data = load_dataset("digits", seed=0)
    config = preset_config("tiny")
    space = build_space(dataclasses.replace(config, init=str(path)), data)
    assert space.resolutions == narrowed.resolutions and space.num_classes == data.num_classes
    assert build_space(config, data).resolutions == SearchSpace.preset("tiny").resolutions
