"""Tests for edgenas.train.checkpoint: a run killed with SIGKILL resumes to the same result; wrong resumes are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgenas.errors import UsageError
from edgenas.train.checkpoint import load_checkpoint_info, load_supernet, read_checkpoint
from edgenas.train.config import load_config
from edgenas.train.trainer import train

REPO = Path(__file__).resolve().parents[2]

CONFIG = """
preset = "tiny"
batch_size = 8
checkpoint_every = 3
log_every = 1
bn_batches = 1
eval_every_phase = false
final_samples = 0
[[phases]]
name = "full"
steps = 5
lr = 0.05
distill = false
[[phases]]
name = "kernel"
steps = 5
lr = 0.02
kernels = "all"
subnets_per_step = 2
[[phases]]
name = "expand"
steps = 5
lr = 0.02
kernels = "all"
depths = "all"
expands = "all"
sort_channels = true
subnets_per_step = 2
"""


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def running_with(text: str) -> list[int]:
    """Processes whose command line holds `text`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmdline and state != "Z":
                pids.append(int(entry.name))
    return pids


def test_sigkill_mid_phase_then_resume_matches_an_uninterrupted_run(tmp_path):
    config_path = tmp_path / "c.toml"
    config_path.write_text(CONFIG)
    config = load_config(config_path)
    reference = train(config, tmp_path / "reference", threads=1, progress=False)

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "edgenas.cli", "train", "--config", str(config_path), "--out",
                             str(out), "--threads", "1", "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "last.pt.manifest.json"
    deadline = time.monotonic() + 300
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            m = json.loads(manifest.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            m = None
        if m and m["phase_index"] >= 1 and m["step_in_phase"] > 0:  # a mid-phase checkpoint of a distilled phase
            proc.send_signal(signal.SIGKILL)
            killed_at = m
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, "the run finished before a mid-phase checkpoint"
    # nothing of the killed run goes on (the comparison run it forked beside the supernet ends with it)
    deadline = time.monotonic() + 60  # guards a hang only: the loop ends as soon as they are gone
    while running_with(str(out)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running_with(str(out))
    info = load_checkpoint_info(out / "last.pt")
    assert not info["complete"] and info["global_step"] < 15

    # `edgenas train --resume`, as a user runs it after the kill: it finishes the run from last.pt
    argv = [sys.executable, "-m", "edgenas.cli", "train", "--config", str(config_path), "--out", str(out), "--threads",
            "1", "--no-progress"]
    # 15 steps do not pass the training check (not under test here): --force keeps the exit status 0
    done = subprocess.run([*argv, "--resume", "--json", "--force"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["global_step"] == 15 and [p["steps"] for p in summary["phases"]] == [5, 5, 5]
    assert Path(summary["checkpoint"]).is_file() and load_checkpoint_info(out / "last.pt")["complete"]
    ref_state, res_state = read_checkpoint(reference.checkpoint), read_checkpoint(summary["checkpoint"])
    assert res_state["global_step"] == ref_state["global_step"] == 15
    assert [p["phase"] for p in res_state["history"]] == [p["phase"] for p in ref_state["history"]]
    assert [p["steps"] for p in res_state["history"]] == [5, 5, 5]
    # same data order, same sampled subnets, restored optimizer and RNG: the same weights
    for key, value in ref_state["model"].items():
        torch.testing.assert_close(res_state["model"][key], value, msg=key)

    events = _events(out)
    resume = [e for e in events if e["event"] == "resume"]
    assert len(resume) == 1 and resume[0]["step_in_phase"] > 0
    steps = [(e["phase"], e["step"]) for e in events if e["event"] == "step"]
    redone = len(steps) - len(set(steps))
    assert set(steps) == {(p, s) for p in ("full", "kernel", "expand") for s in range(1, 6)}
    assert redone <= config.checkpoint_every
    # the same command without --resume is refused in one line: the finished run is not overwritten
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "pass --resume" in again.stderr and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert read_checkpoint(out / "last.pt")["global_step"] == 15


def test_resume_is_refused_for_other_config_or_data(tmp_path):
    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(40):
            Image.fromarray((rng.uniform(0, 90, (8, 8)) + 150 * c).astype(np.uint8)).save(root / name / f"{i}.png")
    config = load_config(None, dataset=f"folder:{root}").fixed_steps(1).replace(
        batch_size=4, bn_batches=1, eval_every_phase=False, final_samples=0)
    out = tmp_path / "run"
    train(config, out, threads=1, progress=False)

    with pytest.raises(UsageError, match="pass --resume"):
        train(config, out, threads=1, progress=False)
    with pytest.raises(UsageError, match="differs in: batch_size"):
        train(config.replace(batch_size=8), out, resume=True, threads=1, progress=False)
    with pytest.raises(UsageError, match="differs in: seed"):
        train(config.replace(seed=1), out, resume=True, threads=1, progress=False)
    # run settings may change on resume; a complete run has nothing left to do
    assert train(config.replace(log_every=5), out, resume=True, threads=1, progress=False).summary["global_step"] == 6
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / "dog" / "0.png")
    with pytest.raises(UsageError, match="different data"):
        train(config, out, resume=True, threads=1, progress=False)


def test_damaged_or_foreign_checkpoints_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_supernet(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UsageError, match="cannot read checkpoint"):
        load_supernet(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UsageError, match="not an edgenas supernet checkpoint"):
        load_checkpoint_info(tmp_path / "other.pt")


# CONFIG without periodic checkpoints and with a long first phase, so a signal lands between checkpoints.
# a first phase long enough that each signal (3 steps after the run started or resumed) lands in it, with 20 or more
# steps still to run (it was 60, and the last resume trained 50 steps of it: 42.2 CPU-s for the test then, 37.1 now)
SIGNAL_CONFIG = CONFIG.replace("checkpoint_every = 3", "checkpoint_every = 100000").replace("steps = 5", "steps = 30", 1)


def _signal_at_step(argv: list[str], out: Path, sig: int, after: int) -> tuple[int, str]:
    """Run the CLI until `after` more steps than the run resumed from are logged, then send `sig`."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "edgenas.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    start = len(_events(out)) if (out / "metrics.jsonl").is_file() else 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            new = [e for e in _events(out)[start:] if e["event"] == "step"]
        except (FileNotFoundError, json.JSONDecodeError):
            new = []
        if len(new) >= after:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.slow
def test_sigterm_and_sigint_save_the_step_reached_and_resume_from_it(tmp_path):
    config_path = tmp_path / "c.toml"
    config_path.write_text(SIGNAL_CONFIG)
    out = tmp_path / "run"
    argv = ["train", "--config", str(config_path), "--out", str(out), "--threads", "1", "--no-progress"]

    code, err = _signal_at_step(argv, out, signal.SIGTERM, after=3)
    assert code == 143, err
    assert "saved" in err and "--resume" in err and "Traceback" not in err
    first = load_checkpoint_info(out / "last.pt")  # written at the step reached, not at a periodic checkpoint
    logged = [e["step"] for e in _events(out) if e["event"] == "step"]
    assert not first["complete"] and first["phase_index"] == 0
    assert first["global_step"] == read_checkpoint(out / "last.pt")["step_in_phase"] >= max(logged) >= 3

    code, err = _signal_at_step([*argv, "--resume"], out, signal.SIGINT, after=3)
    assert code == 130, err
    second = load_checkpoint_info(out / "last.pt")
    assert second["global_step"] >= first["global_step"] + 3

    resumed = train(load_config(config_path), out, resume=True, threads=1, progress=False)
    assert resumed.summary["global_step"] == 40
    events = _events(out)
    assert [e["step_in_phase"] for e in events if e["event"] == "resume"] == [first["global_step"],
                                                                            second["global_step"]]
    steps = [(e["phase"], e["step"]) for e in events if e["event"] == "step"]
    # every step ran exactly once: nothing redone after either signal, nothing lost
    assert sorted(steps) == sorted({("full", s) for s in range(1, 31)}
                                   | {(p, s) for p in ("kernel", "expand") for s in range(1, 6)})
