"""Tests for distributed training: `edgenas train` under torchrun with 2 CPU processes (gloo) keeps the ranks in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgenas.train.checkpoint import load_checkpoint_info, read_checkpoint

REPO = Path(__file__).resolve().parents[2]

CONFIG = """
preset = "tiny"
batch_size = 16
checkpoint_every = 100
log_every = 1
bn_batches = 1
eval_every_phase = false
final_samples = 0
[[phases]]
name = "full"
steps = 3
lr = 0.05
distill = false
[[phases]]
name = "expand"
steps = 3
lr = 0.02
kernels = "all"
depths = "all"
expands = "all"
sort_channels = true
subnets_per_step = 3
"""


def _torchrun_train(config_text: str, tmp_path: Path) -> tuple[dict, Path]:
    """`edgenas train` under torchrun, 2 CPU processes: the JSON summary and the output folder."""
    config = tmp_path / "c.toml"
    config.write_text(config_text)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    # --standalone: the rendezvous binds a port the system picks (a port picked free beforehand was taken by another
    # test between the pick and torchrun's bind, once in a full run: EADDRINUSE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "edgenas.cli", "train", "--config", str(config), "--out", str(out),
           "--device", "cpu", "--threads", "1", "--no-progress", "--json",
           "--force"]  # a few steps do not pass the training check (not under test here)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):]), out


needs_gloo = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no gloo backend for CPU process groups")


@pytest.mark.slow
@needs_gloo
def test_torchrun_two_cpu_processes_end_with_identical_weights(tmp_path):
    summary, out = _torchrun_train(CONFIG, tmp_path)
    assert summary["world_size"] == 2 and summary["global_step"] == 6
    # every rank's parameters after the last step, hashed on each rank and gathered: one value
    checksums = summary["rank_param_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    state = read_checkpoint(out / "supernet.pt")
    assert [p["phase"] for p in state["history"]] == ["full", "expand"]
    assert load_checkpoint_info(out / "supernet.pt")["complete"]
    # rank 0 alone writes the logs: one line per step
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["global_step"] for e in steps if e["event"] == "step"] == list(range(1, 7))


@pytest.mark.slow
@needs_gloo
def test_torchrun_learning_rate_backoff_restarts_every_rank_alike(tmp_path):
    """A first phase too fast to learn restarts on every rank, as rank 0's loss decides, from rank 0's initial
    weights (the ones DDP began with): the ranks end with identical weights."""
    config = CONFIG.replace('preset = "tiny"', 'preset = "tiny"\ndataset = "shapes:samples=120,image_size=16"\n'
                                               'lr_batch_size = 16')
    config = config.replace("steps = 3\nlr = 0.05", "steps = 44\nlr = 50.0")  # checked after 40 steps
    summary, out = _torchrun_train(config, tmp_path)
    assert summary["lr_backoff"]["backoffs"] and summary["lr_backoff"]["checked"]
    checksums = summary["rank_param_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    actions = [json.loads(line).get("action") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "restart" in actions
