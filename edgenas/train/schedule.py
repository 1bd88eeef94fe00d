"""How long each phase runs: the learning-rate schedule with a cut, the plateau rule, the time budget.

A phase's learning rate follows a cosine over its longest length (`max_epochs`). When the phase is
cut short (its validation top-1 has stopped rising, or its share of the time budget is running out),
the rate decays from where it is to zero over a short tail, and the phase ends there. The schedule
is a callable object, so `LambdaLR.state_dict()` saves where a cut ends it and a resumed run follows it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from edgenas.train.config import TrainConfig

# A plateau ends a phase after an annealing tail of this share of the steps taken so far.
TAIL_FRACTION = 0.15
# The teacher's forward pass, relative to a step of the full network (forward and backward), measured on this
# machine (see SUBNET_COST).
TEACHER_COST = 0.2


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero over the phase."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class PhaseSchedule:
    """The learning-rate factor of a phase: warm-up and cosine over `total` steps, or a cosine tail after a cut."""

    def __init__(self, total: int, warmup: int) -> None:
        self.total, self.warmup, self.end = total, warmup, total
        self.cut_at: int | None = None
        self.cut_from = 1.0

    def __call__(self, step: int) -> float:
        if self.cut_at is None or step < self.cut_at:
            return lr_factor(step, self.total, self.warmup)
        progress = min(1.0, (step - self.cut_at) / max(1, self.end - self.cut_at))
        return self.cut_from * 0.5 * (1.0 + math.cos(math.pi * progress))

    def cut(self, step: int, remaining: int) -> None:
        """End the phase `remaining` steps after `step` (0: at `step`), decaying the rate from its value at `step`
        to zero."""
        end = step + max(0, int(remaining))
        if end >= self.end:
            return
        self.cut_from = self(step)
        self.cut_at, self.end = step, end


def plateau_cut(state: dict[str, Any], value: float | Mapping[str, float], step: int, min_steps: int,
                config: TrainConfig, adaptive: bool, end: int, floor: float = 0.0) -> tuple[int, str] | None:
    """Record a validation check in `state` (`value`: the top-1 of each subnet the phase watches, by name, or one
    figure); return (new end, "plateau") when the phase should stop: it ran its minimum and every watched subnet
    has gone `plateau_patience` checks without rising by `plateau_delta` over its best (the largest alone flat is
    no plateau while the smallest the phase trains still rises: a textures run ended its last phase on the
    largest's plateau with the smallest still going from 68.8 to 78.3 %). The largest below `floor` (not yet clearly
    above chance) is no plateau: the phase goes on learning, up to its maximum. Fixed-length phases only record.
    `state["plateaued"]` then names the subnets and the best figure each reached."""
    values = dict(value) if isinstance(value, Mapping) else {"watched": float(value)}
    if not state.get("watch"):  # a phase's first check (or a phase_state kept before subnets were watched apart)
        state["watch"] = {name: {"best": float(state.get("best", -1.0)), "stale": int(state.get("stale", 0))}
                          for name in values}
    watch = state["watch"]
    for name, figure in values.items():
        seen = watch.setdefault(name, {"best": -1.0, "stale": 0})
        if figure > seen["best"] + config.plateau_delta:
            seen["best"], seen["stale"] = round(float(figure), 5), 0
        else:
            seen["stale"] += 1
    # the phase's own counters: the best of the last-rising subnet, the checks since any watched subnet rose
    state["stale"] = min(watch[name]["stale"] for name in values)
    state["best"] = max(watch[name]["best"] for name in values)
    learned = values.get("largest", min(values.values()))  # the floor judges the network, not its smallest part
    if (not adaptive or state.get("stopped") == "plateau" or step < min_steps or learned < floor
            or state["stale"] < config.plateau_patience):
        return None
    new_end = step + max(5, round(TAIL_FRACTION * step))
    if new_end >= end:
        return None
    state["plateaued"] = {name: watch[name]["best"] for name in values}
    return new_end, "plateau"


def plateau_words(plateaued: Mapping[str, float] | None) -> str:
    """Which subnets plateaued, for a progress line: 'largest at 88.8 % and smallest at 78.3 %'."""
    return " and ".join(f"{name} at {100 * best:.1f} %" for name, best in (plateaued or {}).items())


def time_cut(state: dict[str, Any], elapsed: float, seconds_per_step: float, step: int,
             end: int) -> tuple[int, str] | None:
    """Return (new end, "time") when the phase, at `seconds_per_step`, would overrun its `budget_s` by more than a
    tenth of what is left; the new end is where its share runs out.

    With `alone_s_per_step` in `state` (the largest network trained alone will replay every step the supernet
    takes, at that cost; 0 for the phase of the full network itself, whose own rate is the replay's), each step
    is charged its replay too, so the time budget holds for the supernet and the comparison together."""
    budget = state.get("budget_s")
    if budget is None or seconds_per_step <= 0:
        return None
    replay = state.get("alone_s_per_step")
    if replay is not None:
        replay = float(replay) or seconds_per_step
    else:
        replay = 0.0
    left = budget - elapsed - step * replay
    allowed = max(0, int(left / (seconds_per_step + replay)))  # 0: its time is up, stop now
    new_end = step + allowed
    if end - new_end <= 0.1 * (end - step) + 1:
        return None
    return new_end, "time"


# The cost of a step relative to one step of the full network, measured on this machine (the demo at raised priority, 2
# threads: 110 img/s for the full network; 91 with one subnet and the teacher, 83 with two, 66 with three): the
# extra subnets of a step are random or the smallest, far cheaper than the full network, and the teacher's pass
# is a forward pass only.
SUBNET_COST = 0.3


def step_cost(phase: Any) -> float:
    teacher = phase.distill and not getattr(phase, "largest_first", False)  # in-place: the full network's own pass
    return 1.0 + SUBNET_COST * (phase.subnets_per_step - 1) + (TEACHER_COST if teacher else 0.0)


class TimeBudget:
    """A wall-clock budget spread over the phases in progressive shrinking's proportions.

    Each phase's share is its nominal length (its `epochs`) times the cost of its steps (`step_cost`). With the
    comparison run (`compare_alone`), the largest network trained alone replays every step the supernet takes at
    the full network's cost; that replay is charged to the phase whose steps it repeats (`time_cut`), so phases
    plus comparison end within the budget. A phase's share is taken from what is left when it starts, so time
    a phase did not use goes to the ones after it.
    """

    def __init__(self, config: TrainConfig, train_size: int, *, replay: bool | None = None) -> None:
        self.total = float(config.time_budget or 0.0)
        self.nominal = [p.num_steps(train_size, config.batch_size) for p in config.phases]
        self.longest = [p.max_steps(train_size, config.batch_size) for p in config.phases]
        self.costs = [step_cost(p) for p in config.phases]
        self.weights = [n * c for n, c in zip(self.nominal, self.costs)]
        # with the comparison run after the supernet, its replay of every step is charged; beside it, not
        self.compare_alone = bool(config.compare_alone) if replay is None else replay
        # the evaluations outside the phases' steps: 2 subnets after each phase, the final ones at the end
        self.phase_evals = 2 if config.eval_every_phase else 0
        self.final_evals = 3 + config.final_samples  # largest, smallest, the random ones and the stored largest

    def spent(self, history: list[dict[str, Any]]) -> float:
        """Wall-clock seconds the finished phases took: their steps, evaluations, checkpoints and start-up
        (`wall_s`; a record without it, its steps' `seconds`)."""
        return sum(float(h.get("wall_s", h.get("seconds", 0.0))) for h in history)

    def eval_seconds(self, history: list[dict[str, Any]]) -> float:
        """Seconds one subnet's evaluation (BN recalibration and the validation split) takes, as the phases'
        own evaluations measured it (0 before the first phase's)."""
        timed = [h for h in history if h.get("eval_s") is not None]
        return sum(float(h["eval_s"]) for h in timed) / (self.phase_evals * len(timed)) if timed and self.phase_evals else 0.0

    def reserve(self, index: int, history: list[dict[str, Any]]) -> float:
        """Seconds kept back for the evaluations from the end of phase `index` on (each later phase's and the
        final ones), so the training stage as a whole, not only its steps, ends within the budget."""
        evals = self.phase_evals * max(0, len(self.weights) - index) + self.final_evals
        return evals * self.eval_seconds(history)

    def later_steps(self, index: int, seconds_left: float, full_step_seconds: float) -> int:
        """How many steps the phases after `index` will take, as this budget spreads `seconds_left` over them at
        `full_step_seconds` per step of the full network (each phase at most its longest length)."""
        rest = range(index + 1, len(self.weights))
        weight = sum(self.weights[i] for i in rest)
        if weight <= 0 or full_step_seconds <= 0:
            return 0
        share = max(0.0, seconds_left) / (weight * full_step_seconds)
        return sum(min(self.longest[i], int(share * self.nominal[i])) for i in rest)

    def full_step_seconds(self, history: list[dict[str, Any]]) -> float | None:
        """Seconds per step of the full network, from the first phase's record (None before it ends)."""
        if not history or not history[0].get("steps"):
            return None
        return float(history[0].get("seconds", 0.0)) / float(history[0]["steps"])

    def phase_seconds(self, index: int, history: list[dict[str, Any]]) -> float:
        """The share of phase `index`: its own steps and, with the comparison run, their replay."""
        used = self.spent(history) + self.reserve(index, history)
        if self.compare_alone:
            used += (self.full_step_seconds(history) or 0.0) * sum(int(h.get("steps", 0)) for h in history)
        left = max(1.0, self.total - used)
        return left * self.weights[index] / sum(self.weights[index:])

    def alone_seconds_per_step(self, index: int, history: list[dict[str, Any]]) -> float | None:
        """What `time_cut` charges per step for the replay (0: the phase's own rate), None without the comparison."""
        if not self.compare_alone:
            return None
        return 0.0 if index == 0 else (self.full_step_seconds(history) or 0.0)
