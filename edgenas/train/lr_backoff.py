"""The learning-rate back-off: a preset's rates scaled down where the data given cannot learn at them.

A preset's learning rates are tuned on its own dataset; on a user's folder they may be too high to learn at all
(6 texture classes, the `tiny` preset: lr 0.1 stays at chance, lr 0.02 reaches 56 % in 6 epochs). What is too high
is the rate per image (the gradient noise SGD adds, rate / batch), not the first steps: on a 48 px shapes folder
the largest network alone at 0.1 and batch 32 was still at chance after 60 steps (loss 1.74, chance 1.79), and as
much after 24 warm-up steps up to 0.1 (1.83); at 0.03 and batch 32 it had left chance by step 48 (1.54), and at 0.1
with batch 128 after 2,700 images (1.60; 72.9 % after 6 epochs). Digits learns at 0.1 (the demo), shapes and
textures do not: no one rate fits every folder, so the rate is found on the data given. After
`check_step` steps of the first phase (two epochs, at least 40 steps), the training loss (its running mean) is
compared with the chance loss, log(classes):
- below `LEARNED` times it, the rate learns: training goes on;
- at or above `STALLED` times it, the rate shows no learning: the phase restarts from the initial weights and the
  same batches at 1/3 the rate, at most `MAX_BACKOFFS` times, unless a lower rate's loss at the check is clearly
  higher than the rate's before it (by more than the `UNDECIDED` band); then training goes back to the higher rate's
  weights at its check (no step is taken twice);
- a lower rate is checked later than the one before it (`lower_rate_check`: as many updates of the same total
  size), and it restarts again only where its loss diverged (`diverged`: not finite, or `DIVERGED` x the chance loss
  or more), not where it is still at chance: when a rate leaves chance depends on the thread count's rounding (a
  textures folder at a third of the rate: 1.612 after 144 steps on three threads, 1.770 on one), and a second
  back-off to 1/9 leaves the later phases too slow to learn;
- in between, the rate learns slowly (a run still early): the check waits as many steps again (at most `MAX_WAITS`
  times, within the phase) and then keeps the rate unless its loss has gone back up to `STALLED`.
The factor found scales the first phase's rate and the comparison run's (the largest network alone); a later phase
runs at its own rate or the first phase's new one, whichever is lower (`phase_lr`): scaling them all by the factor
left the later phases of a textures run at 0.002-0.003, where its smallest subnet ended 5.8 points below the
largest (default settings, factor 1/9). Where the preset's
rate learns, the check costs nothing; a restart's steps are charged to the first phase's time budget. Chosen over a
probe of several rates at the start: on `digits` a probe's few steps per candidate (about 2 s in all on 2 cores)
cannot tell the rates apart.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from edgenas.train.config import TrainConfig

BACKOFF = 3.0  # each restart divides the rate by this
MAX_BACKOFFS = 2
LEARNED = 0.9  # a loss below this fraction of the chance loss at the check: the rate learns
# A loss at or above this fraction of the chance loss shows no learning: a rate that cannot learn sits at chance
# (textures, the same seed: 1.837 on one thread and 1.823 on three, chance 1.792), 5 % below is 0.09 at 6 classes,
# three times the thread count's difference there; a rate that learns, even slowly, is below it after two epochs
# (a shapes folder at a third of the tiny preset's rate: 1.58 after 36 steps). Between the two the rate is kept:
# restarting a run that is still learning at a third of its rate left a textures run at 1/9 of the preset's rates
# (its first check after 22 steps), too low for its later phases to learn in their steps.
STALLED = 0.95
# A lower rate's loss this much (a share of the chance loss: 0.09 at 6 classes) above the higher rate's is clearly
# worse; within it the two differ by the thread count's rounding, and the lower rate is kept.
UNDECIDED = 0.05
# A lower rate restarts again only at or above this fraction of the chance loss (or where its loss is not finite): a
# rate that diverged, far from the 1.00-1.03 x where a rate that has not left chance yet sits (textures: 1.81-1.85 at
# 6 classes, chance 1.79); a rate still at chance is kept (see the module's text).
DIVERGED = 1.1
MAX_WAITS = 2
# The check comes after two epochs of the first phase, and after at least this many steps: on a small folder two
# epochs are few steps (22 at 360 images), too few to tell a slow start from a rate that cannot learn.
MIN_CHECK_STEPS = 40


def new_state() -> dict[str, Any]:
    """What the trainer keeps (in its checkpoints and summary): the factor, whether the check was made, the
    restarts taken (step, loss and factor each)."""
    return {"factor": 1.0, "checked": False, "backoffs": []}


def check_step(train_size: int, batch_size: int, phase_steps: int) -> int | None:
    """The first phase's step at which its loss is checked (two epochs, `MIN_CHECK_STEPS` to 100 steps), or None
    where the phase is not longer than that (`phase_steps`: its longest length)."""
    step = min(100, max(MIN_CHECK_STEPS, round(2 * train_size / batch_size)))
    return step if step < phase_steps else None


def lower_rate_check(first: int, factor: float, phase_steps: int | None) -> int:
    """The step at which a lower rate (`factor` of the preset's) is checked: `first` (the preset's rate's check)
    divided by `factor`, as many updates of the same total size (SGD moves the weights by about rate x steps), at
    most half the phase's longest length `phase_steps` (so the rate kept has half the phase to learn) and never
    before `first`. Checked at the same step as the higher rate, a lower rate that learns was judged before it could
    show it: on a textures folder (6 classes, 762 images, batch 32) the largest network alone was still at chance
    after 48 steps at every rate the back-off tried (losses 1.81-1.85 at 0.1, 1.80 at 0.03) and left it only at
    0.03, after about 80 steps (1.69 at 96, 1.61 at 120), while at 0.1 it never did (1.77-1.79 after 200 steps):
    the back-off walked down to 1/9 of the rates at step 48 each time."""
    later = round(first / max(factor, 1e-9))
    if phase_steps is not None:
        later = min(later, phase_steps // 2)
    return max(first, later)


def chance_loss(num_classes: int) -> float:
    return math.log(max(2, num_classes))


def stalled(loss: float | None, num_classes: int) -> bool:
    """Whether a running training loss shows no learning (at or above `STALLED` of the chance loss), or diverged."""
    return loss is None or not math.isfinite(loss) or loss >= STALLED * chance_loss(num_classes)


def diverged(loss: float | None, num_classes: int) -> bool:
    """Whether a running training loss shows the rate diverged: not finite, or at least `DIVERGED` x the chance loss."""
    return loss is None or not math.isfinite(loss) or loss >= DIVERGED * chance_loss(num_classes)


def learned(loss: float | None, num_classes: int) -> bool:
    """Whether a running training loss shows the rate learns (below `LEARNED` of the chance loss)."""
    return loss is not None and math.isfinite(loss) and loss < LEARNED * chance_loss(num_classes)


def phase_lr(config: TrainConfig, index: int, factor: float) -> float:
    """Phase `index`'s learning rate under the back-off `factor`: the first phase's scaled by it, each later one
    its own or the first phase's scaled rate, whichever is lower (the highest rate found to learn caps the rest)."""
    rate = config.phases[index].lr
    if factor >= 1.0:
        return rate
    return min(rate, config.phases[0].lr * factor)


def scaled(config: TrainConfig, factor: float) -> TrainConfig:
    """`config` with every phase's learning rate as the back-off `factor` sets it (`phase_lr`)."""
    if factor == 1.0:
        return config
    return config.replace(phases=tuple(dataclasses.replace(p, lr=phase_lr(config, i, factor))
                                       for i, p in enumerate(config.phases)))


def undecided(loss: float | None, num_classes: int) -> bool:
    """Whether a running loss shows slow learning: neither `learned` nor `stalled`."""
    return not learned(loss, num_classes) and not stalled(loss, num_classes)


def decide(state: dict[str, Any], loss: float | None, step: int, num_classes: int,
           phase_steps: int | None = None) -> str:
    """Record the check at `step` with running loss `loss`: "keep" (train on at this rate), "restart" (from the
    initial weights at a third of the rate; the factor is already lowered), "revert" (the previous, higher rate
    had the lower loss: go back to where it stood at its check; the factor is already raised back) or "wait" (the
    loss is undecided: checked again at `state["check_step"]`, as many steps later, where that is within the phase's
    `phase_steps`; a lower rate is checked at that same step)."""
    entry = {"step": step, "loss": round(loss, 5) if loss is not None and math.isfinite(loss) else None,
             "factor": state["factor"]}
    tried = state["backoffs"]
    first = state.setdefault("first_check", step)
    later = step + first
    if tried and _worse(entry["loss"], tried[-1]["loss"], num_classes):
        state.update(factor=tried[-1]["factor"], checked=True, last=tried[-1], reverted=entry, action="revert")
        return "revert"
    if (undecided(loss, num_classes) and state.get("waits", 0) < MAX_WAITS
            and (phase_steps is None or later < phase_steps)):
        state["waits"] = state.get("waits", 0) + 1
        state["check_step"] = later
        state.setdefault("waited", []).append(entry)
        state["action"] = "wait"
        return "wait"
    if stalled(loss, num_classes) and len(tried) < MAX_BACKOFFS and (not tried or diverged(loss, num_classes)):
        tried.append(entry)
        state.update(factor=state["factor"] / BACKOFF, waits=0, action="restart")
        state["check_step"] = lower_rate_check(first, state["factor"], phase_steps)
        return "restart"
    state.update(checked=True, last=entry, action="keep")
    return "keep"


def _worse(loss: float | None, previous: float | None, num_classes: int) -> bool:
    """Whether a lower rate's loss is clearly worse than the higher rate's before it: higher by more than the
    undecided band (`UNDECIDED` of the chance loss). Where both sit near chance their difference is the thread
    count's rounding (a textures folder, the same seed: 1.837 and 1.803 at the preset's rate and a third of it on one
    thread, 1.823 and 1.812 on three), and the lower rate is kept: it is the one that learns on such data (a rate that cannot
    learn at 0.1 reached 56 % at 0.02)."""
    if loss is None:
        return previous is not None
    return previous is not None and loss > previous + UNDECIDED * chance_loss(num_classes)


def describe(state: dict[str, Any], num_classes: int) -> str:
    """One line for the progress output (after the check `decide` recorded last)."""
    chance = f"chance {chance_loss(num_classes):.2f}"
    if state.get("action") == "wait":
        w = state["waited"][-1]
        return (f"learning rate: the first phase's loss {w['loss']:.3f} after {w['step']} steps at x{w['factor']:.3g} "
                f"the preset's rates is between {LEARNED:g} and {STALLED:g} x {chance}: learning slowly, checked again "
                f"after {state['check_step']} steps")
    if state.get("action") == "restart":
        b = state["backoffs"][-1]
        loss = f"{b['loss']:.3f}" if b["loss"] is not None else "not finite"
        return (f"learning rate: the first phase's loss {loss} after {b['step']} steps is not below {STALLED:g} x "
                f"{chance}: restarting it at x{state['factor']:.3g} the preset's rates, checked after "
                f"{state.get('check_step', b['step'])} steps")
    last = state.get("last") or {}
    loss = f"{last['loss']:.3f}" if last.get("loss") is not None else "not finite"
    now = last.get("loss")
    verdict = (f"below {LEARNED:g} x {chance}" if learned(now, num_classes) else
               f"not below {STALLED:g} x {chance}" + (": a lower rate not diverged, kept" if state["backoffs"]
                                                       and not diverged(now, num_classes) else "")
               if stalled(now, num_classes) else
               f"below {STALLED:g} x {chance}: learning slowly")
    tried = ", ".join(f"x{b['factor']:.3g}: {b['loss']}" for b in state["backoffs"] + [state.get("reverted") or {}]
                      if b)
    return (f"learning rate: x{state['factor']:.3g} the preset's rates (first phase's loss {loss} after "
            f"{last.get('step')} steps, {verdict}" + (f"; losses tried {tried}" if tried else "") + ")")


@dataclass
class Held:
    """Where the higher rate stood at its check, kept while a lower rate is tried (restored by a "revert")."""

    weights: dict[str, Any]
    optimizer: Any
    schedule: Any
    scheduler: Any
    rng: Any  # the torch RNG state
    loss_avg: float | None
    acc_avg: float | None
    stats: dict[str, Any]  # the phase's validation curve, plateau count and budget at the check


class LRBackoff:
    """The back-off as a training run holds it: the rule's state (`state`: saved in checkpoints and the summary),
    the first phase's check and, while a lower rate is tried, where the higher rate stood (`held`)."""

    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        self.state = new_state()
        self.state.update(saved or {})
        self.held: Held | None = None

    @property
    def factor(self) -> float:
        return self.state["factor"]

    def check_at(self, index: int, train_size: int, batch_size: int, phase_steps: int) -> int | None:
        """The step at which phase `index` is checked: only the first phase, once per run (later where the loss was
        undecided at the first check)."""
        if index != 0 or self.state["checked"]:
            return None
        return self.state.get("check_step") or check_step(train_size, batch_size, phase_steps)

    def phase_lr(self, config: TrainConfig, index: int) -> float:
        return phase_lr(config, index, self.factor)

    def scaled(self, config: TrainConfig) -> TrainConfig:
        return scaled(config, self.factor)

    def decide(self, loss: float | None, step: int, num_classes: int,
               phase_steps: int | None = None) -> tuple[str, dict[str, Any]]:
        """The action at the check ("keep", "restart", "revert" or "wait", see `decide`) and the state it leaves."""
        return decide(self.state, loss, step, num_classes, phase_steps), self.state

    def adopt(self, state: dict[str, Any]) -> None:
        """Take the state another process decided (rank 0's, under torchrun)."""
        if state is not self.state:
            self.state.clear()
            self.state.update(state)

    def describe(self, num_classes: int) -> str:
        return describe(self.state, num_classes)
