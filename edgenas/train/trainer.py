"""The progressive-shrinking trainer: one loop over phases that trains a once-for-all supernet, resumably, on 1..N processes.

Reading order: `_train` sets the run up (`Run`: processes, data, network, files; `TrainState`: where the run
stands, restored from `last.pt` on resume) → `run_phase` for each phase: its optimizer and schedule, then
for each step a resolution and k subnets, their gradients (`train_step`: label loss + distillation from the
full network), the update; the learning-rate back-off's check, the validation curve and the time budget,
decided on rank 0 (`decided_on_rank0`); a checkpoint now and then → `_finish`: the final evaluation, the
comparison run (`Comparison`, a hook the loop calls), the verdict, the final checkpoint.

Determinism: the data order and augmentation come from (seed, phase, epoch, batch), the sampled
subnets from (seed, phase, step), so a run resumed from a checkpoint takes exactly the steps an
uninterrupted run would have taken. Under torchrun every rank samples the same subnets, sees its own
shard of each batch, and DistributedDataParallel averages the gradients; only rank 0 writes files.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

import edgenas
from edgenas.artifacts import atomic_write_text
from edgenas.data import AnyDataset, StepResolutions, load_dataset
from edgenas.errors import UsageError, signals_held
from edgenas.progress import Progress
from edgenas.space import Arch, SearchSpace
from edgenas.supernet import Supernet
from edgenas.train.alone import Comparison, can_run_beside
from edgenas.train.checkpoint import check_resume_fields, read_checkpoint, save_checkpoint
from edgenas.train.config import Phase, TrainConfig, to_toml
from edgenas.train.evaluate import evaluate_many, recalibrate_for
from edgenas.train.finetune import InitWeights, freeze_backbone_grads, init_space, read_init
from edgenas.train.gate import required_top1, training_verdict
from edgenas.train.lr_backoff import Held, LRBackoff
from edgenas.train.schedule import PhaseSchedule, TimeBudget, plateau_cut, plateau_words, step_cost, time_cut
from edgenas.train.schedule import lr_factor as lr_factor  # where tests and tools have found it


@dataclass
class Processes:
    """Where this process runs: its rank in the torchrun world (1 process without torchrun) and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def auto_threads(local_world_size: int = 1) -> int:
    """CPU threads for torch: the cores this process may run on, shared by local processes.

    With OpenMP threads that wait passively (`edgenas.OMP_PASSIVE`, set when edgenas is imported before torch),
    all of them: on 2 cores at load 9, two passive threads took the same time per training step as one, and on
    free cores they use both. Otherwise only the cores left idle by other work (1-minute load average): spinning
    threads on a busy machine made a training step 6x slower with 2 threads than with 1 (measured at load 9).
    """
    try:  # the cores this process may run on (taskset, cgroups' cpusets), not all the machine's
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1

    if edgenas.OMP_PASSIVE:
        return max(1, cores // max(1, local_world_size))
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, round((os.cpu_count() or cores) - busy)) // max(1, local_world_size))


def setup_processes(device: str = "auto", threads: int | None = None) -> Processes:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.set_num_threads(threads or auto_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} asked for but no CUDA GPU is available: use --device cpu")
        dev = torch.device("cuda", local if world > 1 else (torch.device(device).index or 0))
        torch.cuda.set_device(dev)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise UsageError(f"unknown device {device!r}: choose auto, cpu or cuda")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Processes(rank, world, local, dev)


RESUME_HINT = "run the same command again to continue from there (`edgenas train` with --resume)"


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    summary: dict[str, Any]
    rank: int = 0  # under torchrun, only rank 0's summary has the evaluation


def default_out_dir(dataset: str, preset: str) -> Path:
    name = dataset.replace("\\", "/").rstrip("/")
    kind, _, arg = name.partition(":")
    label = kind if not arg or kind == "shapes" else f"{kind}-{Path(arg).name}"
    return Path("runs") / f"{label}-{preset}".replace(":", "-").replace(",", "-").replace("=", "")


def choices(space: SearchSpace, phase: Phase) -> dict[str, Any]:
    """The options a phase samples from: the n largest kernels, depths (per stage) and expands."""

    def top(options: tuple[int, ...], n: int | str) -> tuple[int, ...]:
        return tuple(options) if n == "all" else tuple(options[-int(n):])

    return {
        "kernels": top(space.kernels, phase.kernels),
        "expands": top(space.expands, phase.expands),
        "depths": [top(s.depths, phase.depths) for s in space.stages],
        "widths": top(space.widths, phase.widths),
    }


def smallest_of(options: dict[str, Any], resolution: int) -> Arch:
    """The smallest arch among a phase's options (shallowest stages, smallest kernel, expand and width)."""
    depths = tuple(min(d) for d in options["depths"])
    n = sum(depths)
    return Arch(resolution, depths, (min(options["kernels"]),) * n, (min(options["expands"]),) * n,
                min(options.get("widths", (1.0,))))


def watched_archs(space: SearchSpace, options: dict[str, Any]) -> list[Arch]:
    """What a phase's validation checks watch: the largest subnet and, when the phase trains smaller ones, the
    smallest it trains (at the lowest resolution)."""
    largest, smallest = space.largest(), smallest_of(options, min(space.resolutions))
    return [largest] if smallest == space.largest(min(space.resolutions)) else [largest, smallest]


def chance_top1(dataset: AnyDataset) -> float:
    """The validation top-1 of always answering the most common class."""
    labels = dataset.labels["val"]
    return float(np.bincount(labels).max() / max(1, len(labels)))


def _val_top1(net: Supernet, archs: list[Arch], dataset: AnyDataset, config: TrainConfig, batch_size: int) -> list[float]:
    """Validation top-1 of `archs` (BN-recalibrated), leaving the training's random state as it was."""
    state = torch.get_rng_state()
    try:
        return evaluate_many(net, archs, dataset, "val", bn_batches=config.bn_batches, batch_size=batch_size,
                             seed=config.seed)
    finally:
        torch.set_rng_state(state)


def _train_top1(net: Supernet, archs: list[Arch], dataset: AnyDataset, config: TrainConfig, batch_size: int,
                images: int) -> list[float]:
    """Top-1 of `archs` on `images` training images (a seeded sample, without augmentation; BN-recalibrated): what
    each reaches on what it was trained on, which tells memorising from learning. The training's random state is
    left as it was."""
    state = torch.get_rng_state()
    try:
        return evaluate_many(net, archs, dataset, "train", bn_batches=config.bn_batches, batch_size=batch_size,
                             seed=config.seed, limit=images)
    finally:
        torch.set_rng_state(state)


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy against the teacher's softened distribution (Once-for-All's distillation loss)."""
    target = F.softmax(teacher_logits / temperature, dim=1)
    return -(target * F.log_softmax(logits / temperature, dim=1)).sum(1).mean() * temperature**2


class MetricsLog:
    """Metrics as JSON lines (and TensorBoard scalars when the package is installed); rank 0 only."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool) -> None:
        self.path, self.enabled = path, enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                # deferred: tensorboard (optional) loads only when a run asks for it
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                self.writer = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and "global_step" in record:
            for key, value in record.items():
                if isinstance(value, float):
                    self.writer.add_scalar(f"{record.get('event', 'train')}/{key}", value, record["global_step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def build_space(config: TrainConfig, dataset: AnyDataset) -> SearchSpace:
    """The run's space: its preset for the data's classes and channels; with `init`, the pretrained supernet's own
    space where it is of that preset (its resolutions too: an `import ofa --resolutions 160,...,224` supernet
    fine-tunes and searches at those), so `read_init` then finds any other difference."""
    try:
        space = SearchSpace.preset(config.space, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if config.init is not None:
        stored = init_space(config.init)
        if stored.name == space.name:
            return stored.replace(num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    return space


def _check_resumable(state: dict[str, Any], config: TrainConfig, dataset: AnyDataset, path: Path) -> None:
    if state["config_result"] != config.result_dict():
        ours, theirs = config.result_dict(), state["config_result"]
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise UsageError(f"checkpoint {path} was made with a different training config (differs in: {', '.join(diff)}); "
                         "use the same config to resume, or another --out to start a new run")
    if state["dataset_fingerprint"] != dataset.fingerprint:
        raise UsageError(f"checkpoint {path} was made from different data (dataset {state['dataset']}, fingerprint "
                         f"{state['dataset_fingerprint']}; now {dataset.fingerprint}); resume with the same data and seed, "
                         "or use another --out")


def _planned_total(global_step: int, step: int, end: int, index: int, budget: TimeBudget | None,
                   history: list[dict[str, Any]], phase_seconds: float, first: int, phase: Phase, config: TrainConfig,
                   train_size: int, rate_seconds: float | None = None, rate_first: int | None = None) -> int:
    """The supernet's total steps as now planned: those taken, the rest of this phase, and the later phases' (their
    share of the time budget at this phase's rate, or without a budget their nominal lengths)."""
    planned = global_step + max(0, end - step)
    if budget is None:
        return planned + sum(p.num_steps(train_size, config.batch_size) for p in config.phases[index + 1:])
    if rate_seconds is None or rate_first is None:
        rate_seconds, rate_first = phase_seconds, first
    if step - rate_first < 2:  # no rate yet: the later phases' nominal lengths, at most
        return planned + sum(min(budget.nominal[i], budget.longest[i]) for i in range(index + 1, len(config.phases)))
    seconds_per_step = rate_seconds / (step - rate_first)
    used = (budget.spent(history) + phase_seconds + max(0, end - step) * seconds_per_step
            + budget.reserve(index, history))
    return planned + budget.later_steps(index, budget.total - used, seconds_per_step / step_cost(phase))


def _unlearned(phase_summary: dict[str, Any], config: TrainConfig, learned: float) -> bool:
    """Whether training stops after its first phase: an adaptive phase (below `learned` a flat curve is no plateau)
    ran to its longest length, `max_epochs`, and its largest subnet is still not far above chance, so the gate after
    training would fail whatever the later phases add. A fixed-length or time-cut first phase never stops training
    (the later phases may go on training the full network: `largest_first`). Rank 0 decides for all."""
    return bool(config.stop_unlearned and len(config.phases) > 1 and config.phases[0].adaptive
                and phase_summary.get("stopped") == "max_epochs"
                and phase_summary.get("val_largest") is not None and phase_summary["val_largest"] < learned)


def _param_checksum(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in net.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def train(config: TrainConfig, out_dir: str | Path | None = None, *, resume: bool = False, device: str = "auto",
          threads: int | None = None, progress: bool = True, tensorboard: bool = True,
          dataset: AnyDataset | None = None) -> TrainResult:
    """Train a supernet with progressive shrinking; write `supernet.pt`, `last.pt`, `metrics.jsonl`, `config.toml`.

    With `resume`, continue from `out_dir/last.pt` (refused if it was made from another config or
    other data). Returns the final checkpoint and a summary with per-phase time and throughput and the
    BN-recalibrated validation top-1 of the largest, smallest and `config.final_samples` random subnets.
    `threads` sets torch's CPU threads (default: `auto_threads()`).
    """
    previous_threads = torch.get_num_threads()
    try:
        return _train(config, out_dir, resume=resume, device=device, threads=threads, progress=progress,
                      tensorboard=tensorboard, dataset=dataset)
    except KeyboardInterrupt as exc:  # between phases or in the final evaluation: the last phase is saved
        if not exc.args:
            out = Path(out_dir) if out_dir is not None else default_out_dir(config.dataset, config.preset)
            exc.args = (f"the finished phases are saved in {out / 'last.pt'}: {RESUME_HINT}",)
        raise
    finally:
        torch.set_num_threads(previous_threads)


T = TypeVar("T")


def decided_on_rank0(procs: Processes, decide: Callable[[], T]) -> T:
    """A decision every process follows: made on rank 0 (`decide` runs there only), shared with the others."""
    value = decide() if procs.main else None
    if procs.distributed:
        shared = [value]
        torch.distributed.broadcast_object_list(shared, src=0)
        value = shared[0]
    return value  # type: ignore[return-value]


@dataclass
class Run:
    """What a training run works with from start to end: its settings, processes, data, network and files."""

    config: TrainConfig
    procs: Processes
    out: Path
    dataset: AnyDataset
    space: SearchSpace
    net: Supernet
    initial: dict[str, Any]  # the initial weights: where a learning-rate back-off restarts the first phase
    progress: bool
    log: MetricsLog = field(init=False)
    model: torch.nn.Module = field(init=False)  # the network, wrapped for DistributedDataParallel under torchrun
    comparison: Comparison = field(init=False)
    budget: TimeBudget | None = None
    init: InitWeights | None = None  # the pretrained supernet the run started from (`--init`)
    # each arch's last validation top-1 and the weights it was measured at (their version counters)
    evaluated: dict[Arch, tuple[tuple[int, ...], float]] = field(default_factory=dict, init=False)

    @cached_property
    def amp(self) -> bool:
        """bf16 autocast: on a CUDA GPU that supports it; never on the CPU (its numbers stay as they were)."""
        return self.procs.device.type == "cuda" and torch.cuda.is_bf16_supported()

    def autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    @classmethod
    def start(cls, config: TrainConfig, out_dir: str | Path | None, *, device: str, threads: int | None,
              progress: bool, dataset: AnyDataset | None) -> Run:
        procs = setup_processes(device, threads)
        out = Path(out_dir) if out_dir is not None else default_out_dir(config.dataset, config.preset)
        if config.batch_size % procs.world_size:
            raise UsageError(f"batch size {config.batch_size} does not split over {procs.world_size} processes: "
                             f"use a multiple of {procs.world_size}")
        dataset = dataset or load_dataset(config.dataset, seed=config.seed)
        if dataset.streamed:  # decoding workers; page-locked batches where they go to a GPU
            dataset.workers, dataset.pin_memory = config.data_workers, procs.device.type == "cuda"
        space = build_space(config, dataset)
        torch.manual_seed(config.seed * 1000 + procs.rank)
        # channels-last makes PyTorch's depthwise-convolution backward pass about 2x faster on CPU (measured).
        net = Supernet(space).to(procs.device, memory_format=torch.channels_last)
        init = None
        if config.init is not None:  # fine-tuning: the pretrained weights (a new head where the classes differ)
            init = read_init(config.init, space, net.state_dict())
            net.load_state_dict(init.weights)
        run = cls(config, procs, out, dataset, space, net, copy.deepcopy(net.state_dict()), progress)
        run.init = init
        return run

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def final_path(self) -> Path:
        return self.out / "supernet.pt"

    @cached_property
    def train_size(self) -> int:
        return self.dataset.size("train")

    @property
    def per_rank(self) -> int:
        return self.config.batch_size // self.procs.world_size

    @property
    def steps_per_epoch(self) -> float:
        return self.train_size / self.config.batch_size

    @cached_property
    def learned(self) -> float:
        """The validation top-1 below which a flat curve is no plateau (not yet clearly above chance)."""
        return required_top1(chance_top1(self.dataset), self.dataset.size("val"))

    def read_last(self, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to resume from (`last.pt`), checked against this run's settings and data; None if none."""
        if not (self.last_path.exists() or self.last_path.is_symlink()):  # a folder or /dev/zero is refused when read
            return None
        if not resume:
            raise UsageError(f"{self.out} already holds a training run (last.pt): pass --resume to continue it, "
                             "or choose another --out")
        checkpoint = read_checkpoint(self.last_path, map_location=self.procs.device)
        check_resume_fields(checkpoint, self.last_path)
        _check_resumable(checkpoint, self.config, self.dataset, self.last_path)
        return checkpoint

    def open_log(self, tensorboard: bool) -> None:
        if self.procs.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.toml", to_toml(self.config))
            if self.dataset.streamed:  # which file went to which split: the run's record of its data
                atomic_write_text(self.out / "splits.json", json.dumps(self.dataset.split_record()))
        self.log = MetricsLog(self.out / "metrics.jsonl", self.procs.main, tensorboard)

    def begin(self, state: TrainState) -> None:
        """Say what runs where; wrap the network for DDP; start the comparison beside the training where the CPU has
        a core for it (else it runs after); plan the time budget."""
        procs, config = self.procs, self.config
        if procs.main:
            print(f"edgenas train: {self.dataset.describe(self.space.resolutions)}; space {self.space.name} "
                  f"({self.space.in_channels} "
                  f"channel(s)); {procs.world_size} process(es) on {procs.device.type} ({torch.get_num_threads()} "
                  f"thread(s){'; bf16 autocast' if self.amp else ''}); out {self.out}", file=sys.stderr)
            if self.init is not None:
                print(f"edgenas train: {self.init.describe(self.space.num_classes)}"
                      + (f"; the first {config.head_warmup_steps} steps train only the classifier"
                         if config.head_warmup_steps and state.global_step == 0 else ""), file=sys.stderr)
        self.model = self.net
        if procs.distributed:
            # Different subnets use different parameters, so DDP must look for unused ones each step.
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[procs.device.index] if procs.device.type == "cuda" else None,
                find_unused_parameters=True)
            for tensor in self.initial.values():  # a back-off restarts every rank from rank 0's, as DDP began
                torch.distributed.broadcast(tensor, src=0)
        self.comparison = Comparison(self.dataset, self.space, procs.device, progress=self.progress)
        if config.compare_alone and procs.main and state.phase_index < len(config.phases) and can_run_beside(
                procs.device, procs.distributed):
            planned = state.global_step + sum(p.num_steps(self.train_size, config.batch_size)
                                              for p in config.phases[state.phase_index:])
            self.comparison.start(state.backoff.scaled(config), state.global_step, planned)
            torch.set_num_threads(max(1, torch.get_num_threads() - 1))
        if config.time_budget is not None:
            replay = False if self.comparison.beside is not None else None
            self.budget = TimeBudget(config, self.train_size, replay=replay)

    def new_optimizer(self, index: int, backoff: LRBackoff) -> tuple[Any, PhaseSchedule, Any]:
        """Phase `index`'s optimizer, learning-rate schedule and scheduler, at the rate the back-off allows."""
        config, phase = self.config, self.config.phases[index]
        rate = backoff.phase_lr(config, index) * (config.batch_size / config.lr_batch_size)
        optimizer = torch.optim.SGD(self.net.parameters(), lr=rate, momentum=config.momentum,
                                    nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
        schedule = PhaseSchedule(phase.max_steps(self.train_size, config.batch_size),
                                 phase.warmup_steps(self.train_size, config.batch_size))
        return optimizer, schedule, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def evaluate(self, archs: list[Arch]) -> list[float]:
        """Validation top-1 of `archs`, each BN-recalibrated. An arch already evaluated at these very weights is not
        evaluated again (the figure would be the same: BN statistics are re-estimated from seeded batches): the final
        check takes the largest and smallest subnets the last phase's summary has just evaluated, and a phase that
        stops on a plateau has just evaluated the ones its summary takes. Any in-place change to a parameter (an
        optimizer step, a restored checkpoint, sorted channels) moves its version counter, so the figure is measured
        anew."""
        weights = tuple(p._version for p in self.net.parameters())
        todo = [a for a in dict.fromkeys(archs) if self.evaluated.get(a, ((), 0.0))[0] != weights]
        if todo:
            accs = _val_top1(self.net, todo, self.dataset, self.config, max(self.per_rank, 64))
            self.evaluated.update({a: (weights, acc) for a, acc in zip(todo, accs)})
        return [self.evaluated[a][1] for a in archs]


@dataclass
class TrainState:
    """Where a training run stands, saved as one checkpoint dict (`last.pt`) and restored from it: the phase and
    step, the steps in all, the finished phases' summaries, the learning-rate back-off, the frozen teacher and,
    within a phase, its optimizer, schedule and statistics. A resumed run takes exactly the steps an uninterrupted
    run would have taken."""

    phase_index: int = 0
    step: int = 0  # steps applied in the phase
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0  # the phase's step time in its earlier segments (before an interruption)
    backoff: LRBackoff = field(default_factory=LRBackoff)
    teacher: Supernet | None = None
    optimizer: Any = None
    schedule: PhaseSchedule | None = None
    scheduler: Any = None
    stats: dict[str, Any] = field(default_factory=dict)  # the phase's curve, plateau count, cut and time budget
    resumed: dict[str, Any] | None = None  # the checkpoint this run resumed from
    complete: bool = False
    summary: dict[str, Any] | None = None

    @classmethod
    def restore(cls, run: Run, checkpoint: dict[str, Any]) -> TrainState:
        """The state `checkpoint` saved; the network's weights and (rank 0's) torch RNG as they were."""
        state = cls(backoff=LRBackoff(checkpoint.get("lr_backoff")), resumed=checkpoint)
        run.net.load_state_dict(checkpoint["model"])
        state.phase_index, state.step = checkpoint["phase_index"], checkpoint["step_in_phase"]
        state.global_step = checkpoint["global_step"]
        state.history = list(checkpoint.get("history", []))
        state.elapsed = float(checkpoint.get("phase_elapsed", 0.0))
        if checkpoint.get("teacher") is not None:
            state.teacher = Supernet(run.space).to(run.procs.device, memory_format=torch.channels_last)
            state.teacher.load_state_dict(checkpoint["teacher"])
        if run.procs.main and checkpoint.get("rng_torch") is not None:
            torch.set_rng_state(checkpoint["rng_torch"].cpu())
        elif run.procs.distributed:
            torch.manual_seed(run.config.seed * 1000 + run.procs.rank + 7919 * state.global_step)
        return state

    def to_checkpoint(self, run: Run, *, elapsed: float = 0.0, rng: torch.Tensor | None = None) -> dict[str, Any]:
        """The checkpoint dict (`edgenas.train.checkpoint`'s format): within a phase (step > 0) with its optimizer,
        scheduler and statistics; `rng` the torch RNG where the last step left it (default: as it is now)."""
        config, dataset, phases, within = run.config, run.dataset, run.config.phases, self.step > 0
        return {
            "space": run.space.to_dict(), "model": run.net.state_dict(), "dataset": config.dataset,
            "dataset_fingerprint": dataset.fingerprint, "seed": config.seed, "config": config.to_dict(),
            "config_result": config.result_dict(), "phase_index": self.phase_index,
            "phase_name": phases[self.phase_index].name if self.phase_index < len(phases) else "done",
            "step_in_phase": self.step, "global_step": self.global_step, "history": self.history,
            "phase_elapsed": elapsed,
            "optimizer": self.optimizer.state_dict() if within else None,
            "scheduler": self.scheduler.state_dict() if within else None,
            "teacher": self.teacher.state_dict() if self.teacher is not None and not self.complete else None,
            "rng_torch": torch.get_rng_state() if rng is None else rng, "complete": self.complete,
            "summary": self.summary, "normalisation": {"mean": dataset.mean.tolist(), "std": dataset.std.tolist()},
            "phase_state": self.stats if within else None, "lr_backoff": self.backoff.state,
            **({"init": run.init.lineage()} if run.init is not None else {}),
        }

    def save(self, run: Run, *, elapsed: float = 0.0, rng: torch.Tensor | None = None) -> None:
        save_checkpoint(run.last_path, self.to_checkpoint(run, elapsed=elapsed, rng=rng))


def _train(config: TrainConfig, out_dir: str | Path | None, *, resume: bool, device: str, threads: int | None,
           progress: bool, tensorboard: bool, dataset: AnyDataset | None) -> TrainResult:
    segment_start = time.perf_counter()  # the wall clock of the phase now running, start-up included (time budget)
    run = Run.start(config, out_dir, device=device, threads=threads, progress=progress, dataset=dataset)
    checkpoint = run.read_last(resume)
    run.open_log(tensorboard)
    state = TrainState() if checkpoint is None else TrainState.restore(run, checkpoint)
    if checkpoint is not None:
        if checkpoint.get("complete"):
            if run.procs.main:
                print(f"edgenas train: {run.final_path} is already complete; nothing to do", file=sys.stderr)
            return TrainResult(run.out, run.final_path, checkpoint.get("summary") or {}, run.procs.rank)
        run.log.write({"event": "resume", "phase": config.phases[min(state.phase_index, len(config.phases) - 1)].name,
                       "phase_index": state.phase_index, "step_in_phase": state.step, "global_step": state.global_step})
    run.begin(state)
    stopped_unlearned = False
    try:
        for index in range(state.phase_index, len(config.phases)):
            summary = run_phase(run, state, index, segment_start)
            with signals_held():  # the phase's summary and its checkpoint land together
                state.history.append(summary)
                run.log.write({"event": "phase_end", "global_step": state.global_step,
                               **{k: v for k, v in summary.items() if k != "curve"}})
                state.phase_index, state.step, state.elapsed = index + 1, 0, 0.0
                if run.procs.main:
                    state.save(run)
            segment_start = time.perf_counter()
            run.procs.barrier()
            if index == 0 and decided_on_rank0(run.procs, partial(_unlearned, summary, config, run.learned)):
                stopped_unlearned = True
                _say_unlearned(run, state, summary)
                break
    except BaseException:  # an interrupted or failed training stops the comparison run too
        run.comparison.stop()
        raise
    return _finish(run, state, stopped_unlearned)


@dataclass
class PhaseLoop:
    """One phase as it runs: what it trains, its batches, the learning-rate check, the step rate, the running loss."""

    index: int
    phase: Phase
    first: int  # the step this segment of the phase started at (a resumed phase: where the checkpoint was)
    min_steps: int
    options: dict[str, Any]  # the kernels, depths and expands the phase samples from
    watched: list[Arch]  # what its validation checks evaluate
    eval_every: int
    check: int | None  # the step of the learning-rate back-off's check
    loader: Any
    resolutions: StepResolutions  # each step's elastic resolution (the loader reads its images at it)
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    bar: Progress
    t0: float
    t_rate: float  # the step rate is measured from `rate_first`, at `t_rate`
    rate_first: int
    rng_done: torch.Tensor  # the torch RNG after the last applied step (where a checkpoint resumes)
    rate_warm: bool = False
    seen: int = 0
    loss_avg: float | None = None
    acc_avg: float | None = None

    @classmethod
    def begin(cls, run: Run, state: TrainState, index: int) -> PhaseLoop:
        """Set phase `index` up from `state.step`: statistics, teacher, optimizer (restored in a resumed phase)."""
        config, phase, space = run.config, run.config.phases[index], run.space
        min_steps = phase.num_steps(run.train_size, config.batch_size)
        first = state.step
        if first == 0:
            state.elapsed = 0.0
            budget = run.budget
            state.stats = {"curve": [], "best": -1.0, "stale": 0, "stopped": None,
                           "budget_s": budget.phase_seconds(index, state.history) if budget is not None else None,
                           "alone_s_per_step": budget.alone_seconds_per_step(index, state.history) if budget else None}
            if phase.sort_channels:
                run.net.sort_channels()  # most important hidden channels first, before narrower expands train
        else:
            state.stats = dict(state.resumed.get("phase_state") or {}) if state.resumed is not None else {}
            for key, value in (("curve", []), ("best", -1.0), ("stale", 0), ("stopped", None), ("budget_s", None)):
                state.stats.setdefault(key, value)  # a last.pt written before these were kept
        if phase.distill and not phase.largest_first and state.teacher is None:
            # The full network as trained so far is the teacher for every later phase (frozen).
            state.teacher = copy.deepcopy(run.net)
        if state.teacher is not None:
            state.teacher.set_largest().eval().requires_grad_(False)
        options = choices(space, phase)
        state.optimizer, state.schedule, state.scheduler = run.new_optimizer(index, state.backoff)
        state.backoff.held = None
        if first > 0 and state.resumed is not None and state.resumed.get("optimizer") is not None:
            state.optimizer.load_state_dict(state.resumed["optimizer"])
            state.scheduler.load_state_dict(state.resumed["scheduler"])  # the schedule's own state: where a cut ends it
        resolutions = StepResolutions(config.seed, index, tuple(space.resolutions))
        loader = run.dataset.loader("train", batch_size=run.per_rank, shuffle=True, augment=True,
                                    seed=config.seed * 1000 + index, rank=run.procs.rank,
                                    world_size=run.procs.world_size, drop_last=True, step_resolution=resolutions)
        run.model.train()
        t0 = time.perf_counter()
        bar = Progress(state.schedule.end * config.batch_size, f"phase {index + 1}/{len(config.phases)} {phase.name}",
                       unit="img", enabled=run.progress and run.procs.main, initial=first * config.batch_size,
                       log_every=15.0)
        return cls(index, phase, first, min_steps, options, watched_archs(space, options),
                   max(10, round(config.plateau_every * run.steps_per_epoch)) if config.eval_every_phase else 0,
                   state.backoff.check_at(index, run.train_size, config.batch_size, state.schedule.end), loader,
                   resolutions, loader.batches_from(first), bar, t0, t_rate=t0, rate_first=first, rng_done=torch.get_rng_state())

    def after_update(self, run: Run, state: TrainState, loss: float, correct: float) -> None:
        """An update was applied: the running loss and accuracy, the progress bar, the metrics log."""
        config = run.config
        self.rng_done = torch.get_rng_state()
        self.seen += config.batch_size
        self.loss_avg = loss if self.loss_avg is None else 0.9 * self.loss_avg + 0.1 * loss
        self.acc_avg = correct if self.acc_avg is None else 0.9 * self.acc_avg + 0.1 * correct
        self.bar.update(config.batch_size, loss=self.loss_avg, acc=self.acc_avg)
        if state.step % config.log_every == 0 or state.step == state.schedule.end:
            rate = self.seen / max(time.perf_counter() - self.t0, 1e-9)
            run.log.write({"event": "step", "phase": self.phase.name, "step": state.step,
                           "global_step": state.global_step, "loss": round(self.loss_avg, 5),
                           "acc": round(self.acc_avg, 5), "lr": round(state.scheduler.get_last_lr()[0], 7),
                           "samples_per_s": round(rate, 2)})

    def planned_total(self, run: Run, state: TrainState) -> int:
        """The supernet's total steps as now planned (for the comparison beside it)."""
        return _planned_total(state.global_step, state.step, state.schedule.end, self.index, run.budget, state.history,
                              state.elapsed + time.perf_counter() - self.t0, self.first, self.phase, run.config,
                              run.train_size, time.perf_counter() - self.t_rate, self.rate_first)

    def restart_rate_clock(self, step: int) -> None:
        self.t_rate, self.rate_first, self.rate_warm = time.perf_counter(), step, False


def run_phase(run: Run, state: TrainState, index: int, segment_start: float) -> dict[str, Any]:
    """Train phase `index` from `state.step` to its end; return its summary. Each step: a batch, the gradients of
    the step's subnets, the update; then the learning-rate check (first phase), the validation curve and the time
    budget (either may cut the phase short), and now and then a checkpoint. Ctrl-C saves every finished step."""
    config, procs = run.config, run.procs
    loop = PhaseLoop.begin(run, state, index)
    try:
        while state.step < state.schedule.end:
            x, y = next(loop.batches)
            loss, correct = train_step(run, state, loop, x, y)
            with signals_held():  # the update and its bookkeeping land whole when a signal arrives
                state.optimizer.step()
                state.scheduler.step()
                state.global_step += 1
                state.step += 1
                loop.after_update(run, state, loss, correct)
            if not loop.rate_warm:  # the step rate leaves out a (re)start's first step (buffers of new shapes: several
                # times slower); a time cut waits for 3 measured steps
                loop.t_rate, loop.rate_first, loop.rate_warm = time.perf_counter(), state.step, True
            run.comparison.after_step(state.global_step, partial(loop.planned_total, run, state))
            if state.step == loop.check:  # the learning-rate back-off: does the first phase learn at this rate?
                action = _check_learning_rate(run, state, loop)
                if action in ("restart", "revert"):
                    continue  # from the initial weights at a lower rate, or back where the higher rate stood
                loop.check = state.backoff.state.get("check_step") if action == "wait" else None
            # The validation curve, the plateau and the time budget: decided on rank 0, followed by all (the clock
            # every step; under torchrun every 10th, where the ranks meet to share the decision). Under a time budget
            # a validation check comes only once the phase has run its minimum (where a plateau may end it): before
            # that it could only draw the curve, and the demo's 80 s spent 10 s on such checks; the evaluation at
            # each phase's end still draws one point per phase.
            step, stats = state.step, state.stats
            val_check = bool(loop.eval_every and step % loop.eval_every == 0
                             and (stats.get("budget_s") is None or step >= loop.min_steps))
            timed = stats.get("budget_s") is not None and (not procs.distributed or step % 10 == 0)
            if step < state.schedule.end and (val_check or timed):
                _apply_cut(run, state, loop, decided_on_rank0(procs, partial(_cut, run, state, loop, val_check)))
            with signals_held():
                if state.global_step % config.checkpoint_every == 0 and state.step < state.schedule.end and procs.main:
                    state.save(run, elapsed=state.elapsed + time.perf_counter() - loop.t0)
                    run.log.write({"event": "checkpoint", "phase": loop.phase.name, "step": state.step,
                                   "global_step": state.global_step})
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM: keep every finished step, then stop
        if procs.main:
            with signals_held():
                state.save(run, elapsed=state.elapsed + time.perf_counter() - loop.t0, rng=loop.rng_done)
                run.log.write({"event": "interrupted", "phase": loop.phase.name, "step": state.step,
                               "global_step": state.global_step})
            exc.args = (f"saved {run.last_path} at phase {loop.phase.name}, step {state.step} of {state.schedule.end}: "
                        f"{RESUME_HINT}",)
        raise
    return _phase_summary(run, state, loop, segment_start)


def train_step(run: Run, state: TrainState, loop: PhaseLoop, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """The gradients of one step: a resolution and the phase's k subnets sampled from (seed, phase, step), each on
    the batch (label loss, plus distillation from the full network); their mean loss and training accuracy."""
    config, phase, procs, net, space = run.config, loop.phase, run.procs, run.net, run.space
    x, y = x.to(procs.device, non_blocking=True), y.to(procs.device, non_blocking=True)
    rng, resolution = loop.resolutions.rng(state.step)  # elastic resolution: one per step, shared by the k subnets
    x = net.resize(x, resolution).contiguous(memory_format=torch.channels_last)
    distill = phase.distill and config.distill_weight > 0
    teacher_logits = None
    if distill and not phase.largest_first:
        with torch.no_grad(), run.autocast():
            teacher_logits = state.teacher(x)
    state.optimizer.zero_grad(set_to_none=True)
    step_loss = step_correct = 0.0
    k = phase.subnets_per_step
    for j in range(k):
        arch = space.sample(rng, resolutions=[resolution], **loop.options)
        if j == 0 and phase.largest_first:
            arch = space.largest(resolution)
        elif j == int(phase.largest_first) and phase.smallest_first:
            arch = smallest_of(loop.options, resolution)
        net.set_active(arch)
        sync = not procs.distributed or j == k - 1
        with run.model.no_sync() if not sync else nullcontext():  # type: ignore[operator]
            with run.autocast():  # bf16 on a GPU that has it; a no-op on the CPU
                logits = run.model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            if teacher_logits is not None:
                loss = loss + config.distill_weight * soft_cross_entropy(logits, teacher_logits,
                                                                         config.distill_temperature)
            (loss / k).backward()
        if j == 0 and phase.largest_first and distill:
            teacher_logits = logits.detach()  # the full network teaches the step's other subnets
        step_loss += loss.item() / k
        step_correct += float((logits.argmax(1) == y).float().mean()) / k
    if loop.index == 0 and state.step < config.head_warmup_steps:
        freeze_backbone_grads(net)  # fine-tuning: the new head warms up while the pretrained backbone waits
    return step_loss, step_correct


def _check_learning_rate(run: Run, state: TrainState, loop: PhaseLoop) -> str:
    """The back-off's check (rank 0's running loss decides for all): "keep", "wait" (checked again later), or the
    phase starts again."""
    backoff, classes = state.backoff, run.dataset.num_classes
    action, decided = decided_on_rank0(run.procs, partial(backoff.decide, loop.loss_avg, state.step, classes,
                                                          state.schedule.end))
    backoff.adopt(decided)
    if run.procs.main:
        print(f"edgenas train: {backoff.describe(classes)}", file=sys.stderr)
        run.log.write({"event": "lr_backoff", "global_step": state.global_step, "action": action, **backoff.state})
    if action in ("restart", "revert"):
        _restart_or_revert(run, state, loop, action)
    return action


def _restart_or_revert(run: Run, state: TrainState, loop: PhaseLoop, action: str) -> None:
    """Start the first phase again: from the initial weights and the same batches at the lowered rate ("restart"),
    or back where the higher rate stood at its check ("revert"); the comparison restarts at the same rates."""
    backoff, stats, batch = state.backoff, state.stats, run.config.batch_size
    if stats.get("budget_s") is not None:  # the lost steps: shared by all the phases
        wasted = time.perf_counter() - loop.t_rate
        stats["budget_s"] += wasted * (1 - run.budget.weights[0] / sum(run.budget.weights))
    if action == "restart" or backoff.held is None:
        backoff.held = Held(copy.deepcopy(run.net.state_dict()), state.optimizer, state.schedule, state.scheduler,
                            torch.get_rng_state(), loop.loss_avg, loop.acc_avg, copy.deepcopy(stats))
        run.net.load_state_dict(run.initial)
        state.optimizer, state.schedule, state.scheduler = run.new_optimizer(loop.index, backoff)
        state.global_step -= state.step
        state.step = 0
        loop.rng_done = torch.get_rng_state()
        loop.loss_avg = loop.acc_avg = None
        stats.update(curve=[], best=-1.0, stale=0, stopped=None, watch={})
        stats.pop("plateaued", None)
        if action == "revert":  # resumed after the higher rate's check: its steps again
            loop.check = None
        else:  # the lower rate is checked later than the higher one: as many updates of the same total size
            loop.check = backoff.state.get("check_step", loop.check)
    else:
        held = backoff.held
        run.net.load_state_dict(held.weights)
        torch.set_rng_state(held.rng)
        state.optimizer, state.schedule, state.scheduler = held.optimizer, held.schedule, held.scheduler
        loop.rng_done, loop.loss_avg, loop.acc_avg = held.rng, held.loss_avg, held.acc_avg
        held_step = backoff.state["last"]["step"]  # the higher rate's check (a lower rate may have waited past it)
        state.global_step += held_step - state.step
        state.step = held_step
        stats.update({k: v for k, v in held.stats.items() if k != "budget_s"})
        loop.check = None
    loop.batches = loop.loader.batches_from(state.step)
    loop.restart_rate_clock(state.step)
    loop.bar.n, loop.bar.total = state.step * batch, state.schedule.end * batch
    run.comparison.restart(backoff.scaled(run.config), state.global_step, state.schedule.end)


def _cut(run: Run, state: TrainState, loop: PhaseLoop, val_check: bool) -> tuple[int, str] | None:
    """Rank 0: a validation check (a point of the curve) where due, then the plateau and time-budget rules: the
    step at which the phase now ends and why, or None."""
    step, stats, cut = state.step, state.stats, None
    if val_check:
        accs = run.evaluate(loop.watched)
        point = {"step": step, "epoch": round(step / run.steps_per_epoch, 3),
                 **{name: round(a, 5) for name, a in zip(("largest", "smallest"), accs)},
                 "train_acc": round(loop.acc_avg, 5), "loss": round(loop.loss_avg, 5),
                 "lr": round(state.scheduler.get_last_lr()[0], 7)}
        stats["curve"].append(point)
        run.log.write({"event": "val", "phase": loop.phase.name, "global_step": state.global_step, **point})
        cut = plateau_cut(stats, dict(zip(("largest", "smallest"), accs)), step, loop.min_steps, run.config,
                          loop.phase.adaptive, state.schedule.end, run.learned)
    if stats.get("budget_s") is not None and step - loop.rate_first >= 3:
        elapsed = state.elapsed + time.perf_counter() - loop.t0
        seconds_per_step = (time.perf_counter() - loop.t_rate) / max(1, step - loop.rate_first)
        cut = time_cut(stats, elapsed, seconds_per_step, step, cut[0] if cut else state.schedule.end) or cut
    return cut


def _apply_cut(run: Run, state: TrainState, loop: PhaseLoop, cut: tuple[int, str] | None) -> None:
    if cut is None:
        return
    state.schedule.cut(state.step, cut[0] - state.step)
    state.stats["stopped"] = cut[1]
    loop.bar.total = state.schedule.end * run.config.batch_size
    plateaued = state.stats.get("plateaued") if cut[1] == "plateau" else None
    run.log.write({"event": "cut", "phase": loop.phase.name, "step": state.step, "end": state.schedule.end,
                   "reason": cut[1], "global_step": state.global_step,
                   **({"plateaued": plateaued} if plateaued else {})})
    if plateaued and run.procs.main:
        print(f"edgenas train: phase {loop.phase.name}: no watched subnet rose in {run.config.plateau_patience} checks "
              f"(plateau of {plateau_words(plateaued)}): it ends after a tail of {state.schedule.end - state.step} "
              "steps", file=sys.stderr)


def _phase_summary(run: Run, state: TrainState, loop: PhaseLoop, segment_start: float) -> dict[str, Any]:
    """The phase's steps, why it stopped, its time and throughput and (rank 0) its validation top-1."""
    phase = loop.phase
    loop.bar.close()
    steps_end = time.perf_counter()
    state.elapsed += steps_end - loop.t0
    total = state.schedule.end
    stopped = state.stats.get("stopped") or ("max_epochs" if phase.adaptive else "length")
    summary = {"phase": phase.name, "steps": total, "epochs": round(total / run.steps_per_epoch, 3),
               "stopped": stopped, "seconds": round(state.elapsed, 2),
               "samples_per_s": round(loop.seen / max(time.perf_counter() - loop.t0, 1e-9), 2)}
    if state.stats.get("budget_s") is not None:
        summary["budget_s"] = round(state.stats["budget_s"], 2)
    if stopped == "plateau" and state.stats.get("plateaued"):
        summary["plateaued"] = state.stats["plateaued"]  # which watched subnets plateaued, at their best top-1
    smallest = smallest_of(loop.options, min(run.space.resolutions))  # of the dimensions trained so far
    if run.procs.main and run.config.eval_every_phase:
        accs = run.evaluate([run.space.largest(), smallest])
        summary.update(val_largest=round(accs[0], 5), val_smallest=round(accs[1], 5),
                       smallest_arch=smallest.to_dict(), smallest_is_space=smallest == run.space.smallest(),
                       eval_s=round(time.perf_counter() - steps_end, 3))
    # the phase's wall clock: its steps (over every resumed segment) and, of this segment, what was not
    # a step (start-up, channel sorting, checkpoints, its evaluation); the time budget charges it all
    summary["wall_s"] = round(state.elapsed + (time.perf_counter() - segment_start) - (steps_end - loop.t0), 2)
    summary["curve"] = state.stats.get("curve", [])
    if run.procs.main:
        which = "smallest" if summary.get("smallest_is_space") else "smallest trained so far"
        accuracy = (f", val top-1 largest {summary['val_largest']:.4f} {which} {summary['val_smallest']:.4f}"
                    if "val_largest" in summary else "")
        if summary.get("plateaued"):
            accuracy += f"; plateau of {plateau_words(summary['plateaued'])}"
        print(f"edgenas train: phase {phase.name} done: {total} steps ({summary['epochs']:.1f} epochs, "
              f"{stopped}) in {state.elapsed:.1f}s ({summary['samples_per_s']:.0f} img/s){accuracy}", file=sys.stderr)
    return summary


def _say_unlearned(run: Run, state: TrainState, summary: dict[str, Any]) -> None:
    if run.procs.main:
        print(f"edgenas train: the largest subnet is at {100 * summary['val_largest']:.1f} % after the first "
              f"phase (needs {100 * run.learned:.1f} %, chance {100 * chance_top1(run.dataset):.1f} %): the later "
              "phases cannot make up for it, so training stops here and the check below fails "
              "(stop_unlearned = false in a training config trains every phase anyway)", file=sys.stderr)
        run.log.write({"event": "unlearned", "global_step": state.global_step, "val_largest": summary["val_largest"],
                       "needs": round(run.learned, 5)})


def _finish(run: Run, state: TrainState, stopped_unlearned: bool) -> TrainResult:
    """The validation top-1 of the largest, smallest and a few random subnets, each BN-recalibrated; the largest
    network trained alone for as many steps; the verdict on whether the supernet learned; the final checkpoint."""
    config, procs, space = run.config, run.procs, run.space
    summary: dict[str, Any] = {"phases": state.history, "global_step": state.global_step,
                               "world_size": procs.world_size}
    if stopped_unlearned:
        summary["stopped_unlearned"] = True
    if run.init is not None:
        summary["init"] = run.init.lineage()
    if procs.distributed:
        sums: list[Any] = [None] * procs.world_size
        torch.distributed.all_gather_object(sums, _param_checksum(run.net))
        summary["rank_param_checksums"] = sums
    if procs.main:
        compared = config.compare_alone and state.global_step > 0
        if compared:  # the run beside ends its steps and evaluates itself while the subnets below are evaluated
            run.comparison.end(state.global_step)
        rng = np.random.default_rng([config.seed, 99])
        archs: list[Arch] = [space.largest(), space.smallest()] + space.sample_many(rng, config.final_samples)
        accs = run.evaluate(archs)
        summary["val"] = [{"arch": a.to_dict(), "name": n, "top1": round(acc, 5)}
                          for a, n, acc in zip(archs, ["largest", "smallest"] + ["random"] * config.final_samples, accs)]
        summary["chance"] = round(chance_top1(run.dataset), 5)
        summary["val_size"] = run.dataset.size("val")
        # what the largest and smallest reach on training images (as many as the validation split holds): the gate
        # tells memorising from learning with it
        trained = _train_top1(run.net, archs[:2], run.dataset, config, max(run.per_rank, 64), summary["val_size"])
        for row, top1 in zip(summary["val"], trained):
            row["train_top1"] = round(top1, 5)
        if compared:
            summary["alone"] = run.comparison.finish(state.backoff.scaled(config), state.global_step)
            run.log.write({"event": "alone", "global_step": state.global_step,
                           **{k: v for k, v in summary["alone"].items() if k != "curve"}})
        else:  # no step taken: nothing to compare
            run.comparison.stop()
        summary["lr_backoff"] = state.backoff.state
        summary["gate"] = training_verdict(summary).to_dict()
        # Store the largest subnet's own BN statistics, so the checkpoint is usable as-is (others: recalibrate).
        recalibrate_for(run.net, space.largest(), run.dataset, bn_batches=config.bn_batches, seed=config.seed)
        state.phase_index, state.step, state.complete, state.summary = len(config.phases), 0, True, summary
        final = state.to_checkpoint(run)
        save_checkpoint(run.final_path, final)
        save_checkpoint(run.last_path, final)
        run.log.write({"event": "done", "global_step": state.global_step, "gate": summary["gate"]["passed"],
                       **{f"val_{r['name']}{i}": r["top1"] for i, r in enumerate(summary["val"])}})
    run.log.close()
    procs.barrier()
    return TrainResult(run.out, run.final_path, summary, procs.rank)
