"""Training configuration: the progressive-shrinking schedule as a list of phase dataclasses, presets, TOML I/O.

Precedence: a preset's defaults < a TOML config file < command-line flags. A TOML file may name its
base `preset` and override any top-level field; a `[[phases]]` list replaces the preset's phases.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenas.artifacts import toml_text
from edgenas.errors import UsageError
from edgenas.inputs import is_int, read_toml, require
from edgenas.settings import setting, settings_of

_BIG = 1_000_000_000
Choices = int | str  # how many of the largest options a phase may sample, or "all"


@dataclass(frozen=True)
class Phase:
    """One phase of progressive shrinking.

    `kernels`, `depths`, `expands` and `widths` say how many of the largest choices of each dimension the
    phase samples from (1 = the largest only, "all" = every choice; `widths` matters only in a space with
    elastic width, such as `mcunet`); resolution is elastic in every phase. Length is `epochs` of the
    training split, or exactly `steps` when set; with `max_epochs` the
    phase runs at least `epochs` and at most `max_epochs`, and stops (after a short learning-rate
    annealing tail) once the validation top-1 it watches stops improving (`TrainConfig.plateau_*`), or
    when its share of a time budget is spent. Every step samples
    `subnets_per_step` subnets and accumulates their gradients; with `distill` the loss adds the
    teacher's soft cross-entropy (the teacher is the full network at the end of the first phase).
    With `smallest_first`, the first of the k subnets is the smallest the phase allows, so the
    smallest subnets get trained every step (not in Once-for-All; it helps short schedules).
    With `largest_first` (BigNAS's sandwich rule with in-place distillation, not in Once-for-All), the first
    of the k subnets is the full network, trained on the labels, and its logits are the teacher of the step's
    other subnets (the smallest next, with `smallest_first`) instead of the frozen full network: under a short
    budget the full network at the end of the first phase is a weak teacher, and the largest subnet, trained
    only now and then by sampling, fell 10 points behind the same network trained alone (digits, 100 s).
    """

    name: str
    epochs: float = setting(1.0, kind=float, low=0, high=100_000, low_open=True)
    steps: int | None = setting(None, kind=int, low=1, high=_BIG)
    max_epochs: float | None = setting(None, kind=float, low=0, high=100_000, low_open=True,
                                       help="adaptive length: from `epochs` up to this, stopping on a plateau")
    lr: float = setting(0.1, kind=float, low=0, high=100, low_open=True)
    warmup_epochs: float = setting(0.0, kind=float, low=0, high=100_000)
    subnets_per_step: int = setting(1, kind=int, low=1, high=64)
    kernels: Choices = 1
    depths: Choices = 1
    expands: Choices = 1
    widths: Choices = 1
    distill: bool = setting(True)
    sort_channels: bool = setting(False)
    smallest_first: bool = setting(False)  # one of the k subnets is always the phase's smallest (BigNAS's sandwich rule)
    largest_first: bool = setting(False)  # the first is the full network, the teacher of the others (in-place distillation)

    def __post_init__(self) -> None:
        for key in ("kernels", "depths", "expands", "widths"):
            value = getattr(self, key)
            if not (value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)):
                raise UsageError(f"phase {self.name!r}: {key} = {value!r} must be a positive count of the largest "
                                 "choices or \"all\"")
        if self.subnets_per_step < 1:
            raise UsageError(f"phase {self.name!r}: subnets_per_step = {self.subnets_per_step} must be at least 1")
        if self.steps is None and not self.epochs > 0:
            raise UsageError(f"phase {self.name!r}: epochs = {self.epochs} must be positive")
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"phase {self.name!r}: steps = {self.steps} must be at least 1")
        if self.largest_first and self.smallest_first and self.subnets_per_step < 2:
            raise UsageError(f"phase {self.name!r}: largest_first and smallest_first need subnets_per_step of 2 or more "
                             f"(it is {self.subnets_per_step})")
        if self.lr <= 0:
            raise UsageError(f"phase {self.name!r}: lr = {self.lr} must be positive")
        if self.max_epochs is not None and not self.max_epochs >= self.epochs:
            raise UsageError(f"phase {self.name!r}: max_epochs = {self.max_epochs} must be at least its epochs "
                             f"({self.epochs})")

    @property
    def adaptive(self) -> bool:
        """Whether the phase's length follows its validation curve (between `epochs` and `max_epochs`)."""
        return self.steps is None and self.max_epochs is not None and self.max_epochs > self.epochs

    def max_steps(self, train_size: int, batch_size: int) -> int:
        if not self.adaptive:
            return self.num_steps(train_size, batch_size)
        return max(1, math.ceil(self.max_epochs * train_size / batch_size))

    def num_steps(self, train_size: int, batch_size: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * train_size / batch_size))

    def warmup_steps(self, train_size: int, batch_size: int) -> int:
        return int(self.warmup_epochs * train_size / batch_size)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's result (and is checked when resuming).

    `batch_size` is the global batch (split across processes under torchrun); phase learning
    rates are for `lr_batch_size` images and scale linearly with the actual batch.
    """

    preset: str = setting("tiny")
    dataset: str = setting("digits")
    space: str = setting("tiny")
    seed: int = setting(0, kind=int, low=0, high=2**31 - 1)
    batch_size: int = setting(32, kind=int, low=1, high=1 << 20)
    lr_batch_size: int = setting(32, kind=int, low=1, high=1 << 20)
    momentum: float = setting(0.9, kind=float, low=0, high=1)
    nesterov: bool = setting(True)
    weight_decay: float = setting(3e-5, kind=float, low=0, high=1)
    label_smoothing: float = setting(0.0, kind=float, low=0, high=1)
    distill_weight: float = setting(1.0, kind=float, low=0, high=1000)
    distill_temperature: float = setting(1.0, kind=float, low=0, high=1000, low_open=True)
    bn_batches: int = setting(8, kind=int, low=1, high=100_000)
    phases: tuple[Phase, ...] = field(default_factory=tuple)
    # fine-tuning: start from this supernet checkpoint (a new classifier where the class count differs), and train
    # only the classifier for the first `head_warmup_steps` steps (the backbone frozen while the new head settles)
    init: str | None = setting(None, kind=str, help="the supernet checkpoint this run started from (edgenas train --init)")
    head_warmup_steps: int = setting(0, kind=int, low=0, high=_BIG)
    # run settings: do not change the trained weights, not compared on resume
    checkpoint_every: int = setting(100, kind=int, low=1, high=_BIG)
    log_every: int = setting(10, kind=int, low=1, high=_BIG)
    eval_every_phase: bool = setting(True)  # validation top-1 of the largest and smallest subnet after each phase
    final_samples: int = setting(5, kind=int, low=0, high=100_000,
                                 help="random subnets evaluated at the end, besides the largest and smallest")
    # adaptive phases (max_epochs): a validation check every `plateau_every` epochs (at least 40 steps apart);
    # a phase stops when its watched top-1 has not risen by `plateau_delta` in `plateau_patience` checks
    plateau_every: float = setting(0.5, kind=float, low=0, high=100_000, low_open=True)
    plateau_patience: int = setting(3, kind=int, low=1, high=100_000)
    plateau_delta: float = setting(0.005, kind=float, low=0, high=1)
    time_budget: float | None = setting(None, kind=float, low=0, high=10 * 365 * 86400, low_open=True,
                                        help="wall-clock seconds for the whole run, spread over the phases")
    compare_alone: bool = setting(True)  # also train the largest network alone for as many steps (what sharing costs)
    # stop after the first phase when its largest subnet is not far above chance (the gate would fail anyway)
    stop_unlearned: bool = setting(True)
    data_workers: int | None = setting(None, kind=int, low=0, high=64,
                                       help="DataLoader worker processes that decode a streamed folder's images (unset: "
                                       "half the cores, at most 8); the images and their order do not depend on it")

    RUN_SETTINGS = ("checkpoint_every", "log_every", "eval_every_phase", "final_samples", "time_budget",
                    "compare_alone", "stop_unlearned", "data_workers")

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple(p if isinstance(p, Phase) else _phase(p) for p in self.phases))
        if not self.phases:
            raise UsageError("the training config has no phases: give a preset or [[phases]] in the config file")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise UsageError(f"phase names {names} must be unique")
        for key in ("batch_size", "lr_batch_size", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise UsageError(f"{key} = {getattr(self, key)} must be at least 1")
        if self.final_samples < 0:
            raise UsageError(f"final_samples = {self.final_samples} must be 0 or more")
        if self.bn_batches < 1:
            raise UsageError(f"bn_batches = {self.bn_batches} must be at least 1")
        if self.distill_weight < 0 or self.distill_temperature <= 0:
            raise UsageError("distill_weight must be >= 0 and distill_temperature > 0")
        if not self.plateau_every > 0 or self.plateau_patience < 1 or self.plateau_delta < 0:
            raise UsageError("plateau_every must be > 0, plateau_patience >= 1 and plateau_delta >= 0")
        if self.time_budget is not None and not self.time_budget > 0:
            raise UsageError(f"time_budget = {self.time_budget} must be a positive number of seconds")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["phases"] = [{k: v for k, v in p.items() if v is not None} for p in d["phases"]]
        return d

    def result_dict(self) -> dict[str, Any]:
        """The fields that determine the trained weights (what resume compares)."""
        d = self.to_dict()
        for key in self.RUN_SETTINGS:
            d.pop(key)
        for key, default in (("init", None), ("head_warmup_steps", 0)):  # as runs from before fine-tuning recorded
            if d[key] == default:
                d.pop(key)
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        unknown = sorted(set(changes) - _FIELDS)
        if unknown:
            raise UsageError(f"unknown training setting(s) {', '.join(unknown)}: choose from {', '.join(sorted(_FIELDS))}")
        return dataclasses.replace(self, **changes)

    def scale_epochs(self, factor: float) -> TrainConfig:
        if factor <= 0:
            raise UsageError(f"epoch scale {factor} must be positive")
        return self.replace(phases=tuple(dataclasses.replace(
            p, epochs=p.epochs * factor, warmup_epochs=p.warmup_epochs * factor,
            max_epochs=p.max_epochs * factor if p.max_epochs is not None else None)
                                         for p in self.phases))

    def fixed_steps(self, steps: int) -> TrainConfig:
        return self.replace(phases=tuple(dataclasses.replace(p, steps=steps) for p in self.phases))

    def spread_steps(self, total: int) -> TrainConfig:
        """Exactly `total` steps, spread over the phases in proportion to their epochs (each at least one step):
        a fixed length, whatever the machine's speed. A time budget spreads seconds, and a slow spell of the
        machine leaves fewer steps: the demo's 90 s gave 211 steps, and in a slow spell 178, where the smallest
        subnet fell 12 points below the largest."""
        if total < len(self.phases):
            raise UsageError(f"total steps {total} must be at least the number of phases ({len(self.phases)})")
        weights = [float(p.epochs) for p in self.phases]
        if sum(weights) <= 0:
            weights = [1.0] * len(self.phases)
        spare = total - len(self.phases)  # each phase has one step; the rest by largest remainders
        exact = [spare * w / sum(weights) for w in weights]
        steps = [1 + int(e) for e in exact]
        for i in sorted(range(len(exact)), key=lambda i: int(exact[i]) - exact[i])[: total - sum(steps)]:
            steps[i] += 1
        return self.replace(phases=tuple(dataclasses.replace(p, steps=n) for p, n in zip(self.phases, steps)))


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_PHASE_FIELDS = {f.name for f in dataclasses.fields(Phase)}
_PHASE_SETTINGS = settings_of(Phase)

def check_settings(data: Mapping[str, Any], source: str, *, remedy: str = "") -> None:
    """Check the type and range of every known setting in `data` (unknown ones are reported by `replace`): each
    field's setting (`edgenas.settings`), as a flag of `edgenas train` is checked."""
    settings = settings_of(TrainConfig)
    for key, value in data.items():
        if key in settings and value is not None:
            settings[key].check(f"{source}: {key}", value, remedy=remedy)


def _phase(d: Mapping[str, Any], source: str = "training config", index: int = 0) -> Phase:
    where = f"phases[{index}]"
    if not isinstance(d, Mapping) or "name" not in d:
        raise UsageError(f"{source}: {where}: expected a table with at least a name ([[phases]] name = \"...\")")
    unknown = sorted(set(d) - _PHASE_FIELDS)
    if unknown:
        raise UsageError(f"{source}: {where}.{unknown[0]}: unknown key; choose from {', '.join(sorted(_PHASE_FIELDS))}")
    for key, value in d.items():
        if key in _PHASE_SETTINGS:
            _PHASE_SETTINGS[key].check(f"{source}: {where}.{key}", value)
        elif key in ("kernels", "depths", "expands", "widths"):
            require(value == "all" or (is_int(value) and 1 <= value <= 64), source, f"{where}.{key}", value,
                    'a count of the largest choices from 1 to 64, or "all"')
    try:
        return Phase(**d)
    except TypeError as exc:
        raise UsageError(f"{source}: {where}: {exc}") from None


def progressive_shrinking(*, full: float, kernel: float, depth: tuple[float, float], expand: tuple[float, float],
                          lr: tuple[float, float, float, float], k: tuple[int, int, int], warmup: float = 0.0,
                          depths: int = 3, expands: int = 3, smallest_first: bool = False, largest_first: bool = False,
                          bound: float | None = None) -> tuple[Phase, ...]:
    """Once-for-All's schedule: full network → elastic kernel → depth (deepest two, then all) → expand
    (largest two, then all, channels re-sorted first; the width multiplier, where the space has several, shrinks
    with the expand ratio: both are channel counts, as Once-for-All shrinks its ResNets' widths in that phase).
    `lr` = (full, kernel, first partial, later stages),
    `k` = subnets per step for (kernel, depth, expand); `smallest_first` for the depth and expand phases,
    `largest_first` for every phase after the first. With `bound`, every phase is adaptive: at least its
    epochs, at most `bound` times as many."""
    sf, lf = smallest_first, largest_first
    phases = (
        Phase("full", epochs=full, lr=lr[0], warmup_epochs=warmup, distill=False),
        Phase("kernel", epochs=kernel, lr=lr[1], warmup_epochs=warmup, subnets_per_step=k[0], kernels="all",
              largest_first=lf),
        Phase("depth-1", epochs=depth[0], lr=lr[2], subnets_per_step=k[1], kernels="all", depths=min(2, depths),
              smallest_first=sf, largest_first=lf),
        Phase("depth-2", epochs=depth[1], lr=lr[3], warmup_epochs=warmup, subnets_per_step=k[1], kernels="all",
              depths="all", smallest_first=sf, largest_first=lf),
        Phase("expand-1", epochs=expand[0], lr=lr[2], subnets_per_step=k[2], kernels="all", depths="all",
              expands=min(2, expands), widths=2, sort_channels=True, smallest_first=sf, largest_first=lf),
        Phase("expand-2", epochs=expand[1], lr=lr[3], warmup_epochs=warmup, subnets_per_step=k[2], kernels="all",
              depths="all", expands="all", widths="all", smallest_first=sf, largest_first=lf),
    )
    if bound is None:
        return phases
    return tuple(dataclasses.replace(p, max_epochs=p.epochs * bound) for p in phases)


def _tiny() -> TrainConfig:
    # A few minutes on 2 CPU cores on `digits`: 32-image batches, 8.5 epochs at least (up to 8x as many where the
    # validation top-1 still rises); after the first phase every step trains the full network on the labels and
    # one (kernel) or two (depth, expand) smaller subnets taught by it, one of them the smallest (so the largest
    # and the smallest subnet are both good after so short a run).
    return TrainConfig(
        preset="tiny", dataset="digits", space="tiny", batch_size=32, lr_batch_size=32, bn_batches=4,
        phases=progressive_shrinking(full=3, kernel=1, depth=(0.5, 1.5), expand=(0.5, 2),
                                     lr=(0.1, 0.03, 0.02, 0.03), k=(2, 3, 3), smallest_first=True,
                                     largest_first=True, bound=8),
        checkpoint_every=50, log_every=10,
    )


def _small() -> TrainConfig:
    # `shapes` or CIFAR-10 on one GPU (about an hour), or `shapes` at reduced epochs on a CPU.
    return TrainConfig(
        preset="small", dataset="shapes", space="tiny", batch_size=128, lr_batch_size=128,
        label_smoothing=0.1, weight_decay=4e-5,
        phases=progressive_shrinking(full=60, kernel=30, depth=(10, 30), expand=(10, 30),
                                     lr=(0.2, 0.06, 0.005, 0.015), k=(1, 2, 4), warmup=2),
        checkpoint_every=500, log_every=50,
    )


def _ofa() -> TrainConfig:
    # Once-for-All (Cai et al., ICLR 2020) on ImageNet, OFA-MobileNetV3: full network 180 epochs at lr 2.6
    # (batch 2048 = 64 × 32 GPUs, SGD Nesterov 0.9, weight decay 3e-5, cosine, label smoothing 0.1);
    # then kernel 120 epochs (lr 3e-2 per 64-image GPU, ×32 = 0.96), depth 25 + 120 epochs
    # (2.5e-3 and 7.5e-3 per GPU, ×32), expand 25 + 120 epochs; 1 / 2 / 4 subnets per step;
    # 5 warm-up epochs for the long phases; distillation weight 1 from the full network.
    return TrainConfig(
        preset="ofa", dataset="folder:imagenet/train", space="mobilenetv3", batch_size=2048, lr_batch_size=2048,
        label_smoothing=0.1, weight_decay=3e-5, bn_batches=20,
        phases=(Phase("full", epochs=180, lr=2.6, distill=False),)
        + progressive_shrinking(full=1, kernel=120, depth=(25, 120), expand=(25, 120),
                                lr=(2.6, 0.96, 0.08, 0.24), k=(1, 2, 4), warmup=5)[1:],
        checkpoint_every=1000, log_every=100,
    )


def _finetune() -> TrainConfig:
    # Fine-tuning a pretrained supernet (`--init`, e.g. Once-for-All's imported) on your images: progressive shrinking
    # and distillation kept, every phase about a tenth as long as `small`'s and at a tenth of the rates or less (the
    # weights are already good); the first 20 steps train only the classifier (new where the class count differs),
    # so its random start does not push large gradients into the pretrained backbone.
    return TrainConfig(
        preset="finetune", dataset="digits", space="mobilenetv3", batch_size=64, lr_batch_size=64,
        label_smoothing=0.1, weight_decay=3e-5, bn_batches=8, head_warmup_steps=20, compare_alone=False,
        phases=progressive_shrinking(full=3, kernel=1, depth=(0.5, 1), expand=(0.5, 1),
                                     lr=(0.01, 0.006, 0.002, 0.004), k=(2, 2, 2), warmup=0.2, smallest_first=True,
                                     largest_first=True),
        checkpoint_every=200, log_every=10,
    )


PRESETS = {"tiny": _tiny, "small": _small, "ofa": _ofa, "finetune": _finetune}


def preset_config(name: str) -> TrainConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise UsageError(f"unknown training preset {name!r}: choose from {', '.join(PRESETS)}") from None


def load_config(path: str | Path | None = None, *, preset: str | None = None, **overrides: Any) -> TrainConfig:
    """The config from `preset` (or the file's `preset`, default tiny), the TOML file, then `overrides` (None = unset)."""
    data: dict[str, Any] = {}
    source = "training config"
    if path is not None:
        source = f"training config {path}"
        data = read_toml(path, "training config", hint="give a TOML file (a run writes one as config.toml)")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise UsageError(f"{source}: {unknown[0]}: unknown training setting; choose from {', '.join(sorted(_FIELDS))}")
    check_settings(data, source)
    base = preset or data.get("preset") or "tiny"
    config = preset_config(base)
    data["preset"] = base
    if "phases" in data:
        if not isinstance(data["phases"], list) or not data["phases"]:
            raise UsageError(f"{source}: phases: expected an array of tables ([[phases]])")
        data["phases"] = tuple(_phase(p, source, i) for i, p in enumerate(data["phases"]))
    config = config.replace(**data)
    set_overrides = {k: v for k, v in overrides.items() if v is not None}
    check_settings(set_overrides, "command line")
    return config.replace(**set_overrides) if set_overrides else config


def to_toml(config: TrainConfig) -> str:
    """The config as TOML that `load_config` reads back to an equal config."""
    return toml_text("edgenas training config (written by `edgenas train`; pass it back with --config)", config.to_dict())
