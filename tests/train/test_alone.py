"""Tests of edgenas.train.alone: the comparison run beside the supernet's training is the run after it would be."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
import torch

from edgenas.data import load_dataset
from edgenas.train.alone import AloneBeside, Pace, can_run_beside, train_alone
from edgenas.train.config import Phase, TrainConfig, preset_config
from edgenas.train.schedule import TimeBudget
from edgenas.train.trainer import build_space, train

needs_two_cores = pytest.mark.skipif(not can_run_beside(torch.device("cpu"), False),
                                     reason="the comparison runs beside the supernet only with 2 CPU cores or more")


def short_config() -> TrainConfig:
    return TrainConfig(
        preset="tiny", dataset="digits", batch_size=8, lr_batch_size=32, bn_batches=2, final_samples=0,
        checkpoint_every=1000, log_every=5, plateau_every=1.0,
        phases=(Phase("full", steps=12, lr=0.1, distill=False),
                Phase("kernel", steps=3, lr=0.03, kernels="all"),
                Phase("expand", steps=5, lr=0.03, kernels="all", depths="all", expands="all", sort_channels=True,
                      subnets_per_step=2, smallest_first=True)))


@needs_two_cores
def test_the_comparison_beside_the_supernet_is_the_run_after_it(tmp_path, monkeypatch):
    """Fixed-length phases: the supernet's length is known from the start, so the comparison beside it follows the
    cosine one run after it follows; with one thread each, the same arithmetic to the last bit. It hears that the
    supernet is done before the supernet's final check, so it evaluates itself meanwhile, not after."""
    import edgenas.train.trainer as trainer

    config = short_config().replace(final_samples=1)
    events = []
    end, val_top1 = Pace.end, trainer._val_top1
    monkeypatch.setattr(Pace, "end", lambda self, total: events.append(("end", total)) or end(self, total))
    monkeypatch.setattr(trainer, "_val_top1", lambda net, archs, *a: events.append(("eval", len(archs)))
                        or val_top1(net, archs, *a))
    result = train(config, tmp_path / "run", threads=2, progress=False, tensorboard=False)
    s = result.summary
    assert s["alone"]["beside"] is True and s["alone"]["steps"] == s["global_step"] == 20
    assert events.index(("end", 20)) < events.index(("eval", 1))  # the final check's random subnet
    dataset = load_dataset(config.dataset, seed=config.seed)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        after = train_alone(config, dataset, build_space(config, dataset), s["global_step"], torch.device("cpu"))
    finally:
        torch.set_num_threads(previous)
    assert after["beside"] is False and after["steps"] == 20
    assert after["top1"] == s["alone"]["top1"]
    assert [c["largest"] for c in after["curve"]] == [c["largest"] for c in s["alone"]["curve"]]
    assert not multiprocessing.active_children()  # the comparison's process is gone


def test_pace_lets_the_comparison_take_only_steps_the_supernet_took():
    pace = Pace(multiprocessing.get_context("fork"), planned=10)
    assert pace.total() == 10
    answers: list[bool] = []
    waiter = threading.Thread(target=lambda: answers.append(pace.may_take(3)))
    waiter.start()
    time.sleep(0.05)
    assert waiter.is_alive() and not answers  # step 3 waits for the supernet's step 3
    pace.advance(3, 12)
    time.sleep(0.05)
    assert waiter.is_alive()
    pace.advance(4, 12)
    waiter.join(5)
    assert answers == [True] and pace.total() == 12
    pace.advance(5, 2)  # a plan below what is done is the steps done
    assert pace.total() == 5
    pace.end(7)
    assert pace.total() == 7 and pace.may_take(6) and not pace.may_take(7)


@needs_two_cores
def test_a_stopped_comparison_leaves_no_process(tmp_path):
    config = short_config()
    dataset = load_dataset(config.dataset, seed=config.seed)
    beside = AloneBeside(config, dataset, build_space(config, dataset), planned=20)
    beside.advance(2, 20)
    time.sleep(0.2)
    beside.stop()
    assert not multiprocessing.active_children()


def test_beside_the_supernet_the_budget_charges_no_replay():
    config = preset_config("tiny").replace(time_budget=600.0)
    history = [{"steps": 100, "seconds": 50.0}]
    assert TimeBudget(config, 1200).alone_seconds_per_step(1, history) == pytest.approx(0.5)
    beside = TimeBudget(config, 1200, replay=False)
    assert beside.alone_seconds_per_step(1, history) is None
    assert beside.phase_seconds(1, history) > TimeBudget(config, 1200).phase_seconds(1, history)


def test_later_steps_spread_the_time_left_as_the_budget_does():
    config = preset_config("tiny").replace(time_budget=600.0)
    budget = TimeBudget(config, 1200, replay=False)
    last = len(config.phases) - 1
    # the last phase alone: its share is all that is left, at its own cost per step
    seconds = 30.0
    expected = int(seconds / (budget.weights[last] * 0.25) * budget.nominal[last])
    assert budget.later_steps(last - 1, seconds, 0.25) == expected
    assert budget.later_steps(last, seconds, 0.25) == 0  # no phase after the last
    assert budget.later_steps(0, -5.0, 0.25) == 0  # time's up
    assert budget.later_steps(0, 1e9, 0.25) == sum(budget.longest[1:])  # at most each phase's longest length


JAX_THEN_TRAIN = """
import jax  # what the TFLite converter loads: a process that exported a file and then trains
import jax.numpy as jnp
jnp.ones(4).sum().block_until_ready()  # JAX's threads are running
import json, sys
sys.path.insert(0, sys.argv[2])
from tests.train.test_alone import short_config
from edgenas.train.alone import start_method
from edgenas.train.trainer import train
result = train(short_config(), sys.argv[1], threads=2, progress=False, tensorboard=False)
print(json.dumps({"beside": result.summary["alone"]["beside"], "start": start_method()}))
"""


@needs_two_cores
def test_a_process_with_jax_loaded_never_forks(tmp_path):
    """JAX warns that os.fork() after its threads started may deadlock, and it may: where JAX is loaded, the
    comparison process starts from the fork server, and it still runs beside the supernet."""
    pytest.importorskip("jax")
    import json
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", JAX_THEN_TRAIN, str(tmp_path / "run"), str(Path(__file__).resolve().parents[1])],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fork" not in done.stderr.lower().replace("forkserver", ""), done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"beside": True, "start": "forkserver"}
