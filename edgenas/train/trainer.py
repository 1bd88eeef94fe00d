"""The progressive-shrinking trainer: one loop over phases that trains a once-for-all supernet, resumably, on 1..N processes.

Reading order: set up (processes, data, network, resume state) → for each phase: build the optimizer
and schedule, then for each step sample a resolution and k subnets, accumulate their gradients
(label loss + distillation from the full network), step → evaluate at phase end → final checkpoint.

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
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgenas.artifacts import atomic_write_text
from edgenas.data import Dataset, load_dataset
from edgenas.errors import UsageError, signals_held
from edgenas.progress import Progress
from edgenas.space import Arch, SearchSpace
from edgenas.supernet import Supernet
from edgenas.train import lr_backoff
from edgenas.train.alone import AloneBeside, can_run_beside, train_alone
from edgenas.train.checkpoint import check_resume_fields, read_checkpoint, save_checkpoint
from edgenas.train.config import Phase, TrainConfig, to_toml
from edgenas.train.evaluate import evaluate_many, recalibrate_for
from edgenas.train.gate import required_top1, training_verdict
from edgenas.train.schedule import PhaseSchedule, TimeBudget, plateau_cut, step_cost, time_cut
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
    import edgenas

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
    }


def smallest_of(options: dict[str, Any], resolution: int) -> Arch:
    """The smallest arch among a phase's options (shallowest stages, smallest kernel and expand)."""
    depths = tuple(min(d) for d in options["depths"])
    n = sum(depths)
    return Arch(resolution, depths, (min(options["kernels"]),) * n, (min(options["expands"]),) * n)


def watched_archs(space: SearchSpace, options: dict[str, Any]) -> list[Arch]:
    """What a phase's validation checks watch: the largest subnet and, when the phase trains smaller ones, the
    smallest it trains (at the lowest resolution)."""
    largest, smallest = space.largest(), smallest_of(options, min(space.resolutions))
    return [largest] if smallest == space.largest(min(space.resolutions)) else [largest, smallest]


def chance_top1(dataset: Dataset) -> float:
    """The validation top-1 of always answering the most common class."""
    labels = dataset.labels["val"]
    return float(np.bincount(labels).max() / max(1, len(labels)))


def _val_top1(net: Supernet, archs: list[Arch], dataset: Dataset, config: TrainConfig, batch_size: int) -> list[float]:
    """Validation top-1 of `archs` (BN-recalibrated), leaving the training's random state as it was."""
    state = torch.get_rng_state()
    try:
        return evaluate_many(net, archs, dataset, "val", bn_batches=config.bn_batches, batch_size=batch_size,
                             seed=config.seed)
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


def build_space(config: TrainConfig, dataset: Dataset) -> SearchSpace:
    try:
        return SearchSpace.preset(config.space, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check_resumable(state: dict[str, Any], config: TrainConfig, dataset: Dataset, path: Path) -> None:
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


def _unlearned(phase_summary: dict[str, Any], config: TrainConfig, learned: float, procs: Processes) -> bool:
    """Whether training stops after its first phase: an adaptive phase (below `learned` a flat curve is no plateau)
    ran to its longest length, `max_epochs`, and its largest subnet is still not far above chance, so the gate after
    training would fail whatever the later phases add. A fixed-length or time-cut first phase never stops training
    (the later phases may go on training the full network: `largest_first`). Rank 0 decides for all."""
    stop = bool(config.stop_unlearned and len(config.phases) > 1 and config.phases[0].adaptive
                and phase_summary.get("stopped") == "max_epochs"
                and phase_summary.get("val_largest") is not None and phase_summary["val_largest"] < learned)
    if procs.distributed:
        shared = [stop]
        torch.distributed.broadcast_object_list(shared, src=0)
        stop = bool(shared[0])
    return stop


def _param_checksum(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in net.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def train(config: TrainConfig, out_dir: str | Path | None = None, *, resume: bool = False, device: str = "auto",
          threads: int | None = None, progress: bool = True, tensorboard: bool = True,
          dataset: Dataset | None = None) -> TrainResult:
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


def _train(config: TrainConfig, out_dir: str | Path | None, *, resume: bool, device: str, threads: int | None,
           progress: bool, tensorboard: bool, dataset: Dataset | None) -> TrainResult:
    segment_start = time.perf_counter()  # the wall clock of the phase now running, start-up included (time budget)
    procs = setup_processes(device, threads)
    out = Path(out_dir) if out_dir is not None else default_out_dir(config.dataset, config.preset)
    last_path, final_path = out / "last.pt", out / "supernet.pt"
    if config.batch_size % procs.world_size:
        raise UsageError(f"batch size {config.batch_size} does not split over {procs.world_size} processes: "
                         f"use a multiple of {procs.world_size}")
    dataset = dataset or load_dataset(config.dataset, seed=config.seed)
    space = build_space(config, dataset)
    torch.manual_seed(config.seed * 1000 + procs.rank)
    # channels-last makes PyTorch's depthwise-convolution backward pass about 2x faster on CPU (measured).
    net = Supernet(space).to(procs.device, memory_format=torch.channels_last)
    initial = copy.deepcopy(net.state_dict())  # where a learning-rate back-off restarts the first phase

    state: dict[str, Any] | None = None
    if last_path.exists() or last_path.is_symlink():  # a folder or /dev/zero named last.pt is refused when read
        if not resume:
            raise UsageError(f"{out} already holds a training run (last.pt): pass --resume to continue it, "
                             "or choose another --out")
        state = read_checkpoint(last_path, map_location=procs.device)
        check_resume_fields(state, last_path)
        _check_resumable(state, config, dataset, last_path)
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.toml", to_toml(config))
    log = MetricsLog(out / "metrics.jsonl", procs.main, tensorboard)
    phase_index, start_step, global_step = 0, 0, 0
    history: list[dict[str, Any]] = []
    teacher: Supernet | None = None
    optimizer_state = scheduler_state = None
    phase_elapsed = 0.0
    lr_state = lr_backoff.new_state()
    if state is not None:
        lr_state.update(state.get("lr_backoff") or {})
        net.load_state_dict(state["model"])
        phase_index, start_step, global_step = state["phase_index"], state["step_in_phase"], state["global_step"]
        history = list(state.get("history", []))
        phase_elapsed = float(state.get("phase_elapsed", 0.0))
        optimizer_state, scheduler_state = state.get("optimizer"), state.get("scheduler")
        if state.get("teacher") is not None:
            teacher = Supernet(space).to(procs.device, memory_format=torch.channels_last)
            teacher.load_state_dict(state["teacher"])
        if procs.main and state.get("rng_torch") is not None:
            torch.set_rng_state(state["rng_torch"].cpu())
        elif procs.distributed:
            torch.manual_seed(config.seed * 1000 + procs.rank + 7919 * global_step)
        if state.get("complete"):
            if procs.main:
                print(f"edgenas train: {final_path} is already complete; nothing to do", file=sys.stderr)
            return TrainResult(out, final_path, state.get("summary") or {}, procs.rank)
        log.write({"event": "resume", "phase": config.phases[min(phase_index, len(config.phases) - 1)].name,
                   "phase_index": phase_index, "step_in_phase": start_step, "global_step": global_step})
    if procs.main:
        print(f"edgenas train: {dataset.describe()}; space {space.name} ({space.in_channels} channel(s)); "
              f"{procs.world_size} process(es) on {procs.device.type} ({torch.get_num_threads()} thread(s)); out {out}",
              file=sys.stderr)

    model: torch.nn.Module = net
    if procs.distributed:
        # Different subnets use different parameters, so DDP must look for unused ones each step.
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[procs.device.index] if procs.device.type == "cuda" else None,
            find_unused_parameters=True)
    per_rank = config.batch_size // procs.world_size
    train_size = dataset.size("train")
    lr_scale = config.batch_size / config.lr_batch_size

    def checkpoint_state(phase_i: int, step: int, optimizer: Any, scheduler: Any, *, elapsed: float = 0.0,
                         complete: bool = False, summary: dict | None = None, rng: Any = None,
                         phase_state: dict | None = None) -> dict[str, Any]:
        return {
            "space": space.to_dict(), "model": net.state_dict(), "dataset": config.dataset,
            "dataset_fingerprint": dataset.fingerprint, "seed": config.seed, "config": config.to_dict(),
            "config_result": config.result_dict(), "phase_index": phase_i,
            "phase_name": config.phases[phase_i].name if phase_i < len(config.phases) else "done",
            "step_in_phase": step, "global_step": global_step, "history": history, "phase_elapsed": elapsed,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "teacher": teacher.state_dict() if teacher is not None and not complete else None,
            "rng_torch": torch.get_rng_state() if rng is None else rng, "complete": complete, "summary": summary,
            "normalisation": {"mean": dataset.mean.tolist(), "std": dataset.std.tolist()},
            "phase_state": phase_state if step > 0 else None, "lr_backoff": lr_state,
        }

    steps_per_epoch = train_size / config.batch_size
    learned = required_top1(chance_top1(dataset), dataset.size("val"))  # below this, a flat curve is no plateau
    # The comparison run (the largest network alone) beside the supernet where the CPU has a core for it, else after
    beside = None
    if config.compare_alone and procs.main and phase_index < len(config.phases) and can_run_beside(
            procs.device, procs.distributed):
        planned = global_step + sum(p.num_steps(train_size, config.batch_size) for p in config.phases[phase_index:])
        beside = AloneBeside(lr_backoff.scaled(config, lr_state["factor"]), dataset, space, planned)
        beside.advance(global_step, planned)
        torch.set_num_threads(max(1, torch.get_num_threads() - 1))
    budget = (TimeBudget(config, train_size, replay=False if beside is not None else None)
              if config.time_budget is not None else None)
    stopped_unlearned = False
    try:
        for pi in range(phase_index, len(config.phases)):
            phase = config.phases[pi]
            total = phase.max_steps(train_size, config.batch_size)
            min_steps = phase.num_steps(train_size, config.batch_size)
            warmup = phase.warmup_steps(train_size, config.batch_size)
            first = start_step if pi == phase_index else 0
            if first == 0:
                phase_elapsed = 0.0
                phase_state = {"curve": [], "best": -1.0, "stale": 0, "stopped": None,
                               "budget_s": budget.phase_seconds(pi, history) if budget is not None else None,
                               "alone_s_per_step": budget.alone_seconds_per_step(pi, history) if budget else None}
                if phase.sort_channels:
                    net.sort_channels()  # most important hidden channels first, before narrower expands train
            else:
                phase_state = dict(state.get("phase_state") or {}) if state is not None else {}
                for key, value in (("curve", []), ("best", -1.0), ("stale", 0), ("stopped", None), ("budget_s", None)):
                    phase_state.setdefault(key, value)  # a last.pt written before these were kept
            if phase.distill and not phase.largest_first and teacher is None:
                # The full network as trained so far is the teacher for every later phase (frozen).
                teacher = copy.deepcopy(net)
            if teacher is not None:
                teacher.set_largest().eval().requires_grad_(False)
            opts = choices(space, phase)
            watched = watched_archs(space, opts)
            eval_every = max(10, round(config.plateau_every * steps_per_epoch)) if config.eval_every_phase else 0

            def new_optimizer(pi=pi, total=total, warmup=warmup) -> tuple[Any, PhaseSchedule, Any]:
                rate = lr_backoff.phase_lr(config, pi, lr_state["factor"]) * lr_scale
                optimizer = torch.optim.SGD(net.parameters(), lr=rate,
                                            momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
                                            weight_decay=config.weight_decay)
                schedule = PhaseSchedule(total, warmup)
                return optimizer, schedule, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

            optimizer, schedule, scheduler = new_optimizer()
            held = None  # where the higher rate stood at its check, while a lower one is tried
            check = (lr_backoff.check_step(train_size, config.batch_size, min_steps)
                     if pi == 0 and not lr_state["checked"] else None)
            if first > 0 and optimizer_state is not None:
                optimizer.load_state_dict(optimizer_state)
                scheduler.load_state_dict(scheduler_state)  # the schedule's own state too: where a cut ends it
            loader = dataset.loader("train", batch_size=per_rank, shuffle=True, augment=True,
                                    seed=config.seed * 1000 + pi, rank=procs.rank, world_size=procs.world_size,
                                    drop_last=True)

            def stream(start: int, loader=loader):  # batches from step `start` on, across epochs
                epoch, b = divmod(start, len(loader))
                while True:
                    yield from loader.iterate(epoch, b)
                    epoch, b = epoch + 1, 0

            batches = stream(first)
            model.train()
            t0, seen = time.perf_counter(), 0
            # the step rate is measured since the phase's last (re)start, its first step left out (a new phase's
            # first step is several times slower: buffers of new shapes); a time cut waits for 3 measured steps
            t_rate, rate_first, rate_warm = t0, first, False
            loss_avg = acc_avg = None
            done, rng_done = first, torch.get_rng_state()  # steps applied (where a checkpoint now resumes), RNG there
            bar = Progress(schedule.end * config.batch_size, f"phase {pi + 1}/{len(config.phases)} {phase.name}",
                           unit="img", enabled=progress and procs.main, initial=first * config.batch_size, log_every=15.0)
            try:
                step = first
                while step < schedule.end:
                    x, y = next(batches)
                    x, y = x.to(procs.device, non_blocking=True), y.to(procs.device, non_blocking=True)
                    rng = np.random.default_rng([config.seed, pi, step])
                    resolution = int(rng.choice(space.resolutions))  # elastic resolution: one per step, shared by the k subnets
                    x = net.resize(x, resolution).contiguous(memory_format=torch.channels_last)
                    teacher_logits = None
                    if phase.distill and config.distill_weight > 0 and not phase.largest_first:
                        with torch.no_grad():
                            teacher_logits = teacher(x)
                    optimizer.zero_grad(set_to_none=True)
                    step_loss = step_correct = 0.0
                    for j in range(phase.subnets_per_step):
                        arch = space.sample(rng, resolutions=[resolution], **opts)
                        if j == 0 and phase.largest_first:
                            arch = space.largest(resolution)
                        elif j == int(phase.largest_first) and phase.smallest_first:
                            arch = smallest_of(opts, resolution)
                        net.set_active(arch)
                        sync = not procs.distributed or j == phase.subnets_per_step - 1
                        with model.no_sync() if not sync else nullcontext():  # type: ignore[operator]
                            logits = model(x)
                            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                            if teacher_logits is not None:
                                loss = loss + config.distill_weight * soft_cross_entropy(
                                    logits, teacher_logits, config.distill_temperature)
                            (loss / phase.subnets_per_step).backward()
                        if j == 0 and phase.largest_first and phase.distill and config.distill_weight > 0:
                            teacher_logits = logits.detach()  # the full network teaches the step's other subnets
                        step_loss += loss.item() / phase.subnets_per_step
                        step_correct += float((logits.argmax(1) == y).float().mean()) / phase.subnets_per_step
                    with signals_held():  # the update and its bookkeeping land whole when a signal arrives
                        optimizer.step()
                        scheduler.step()
                        global_step += 1
                        step += 1
                        done, rng_done = step, torch.get_rng_state()
                        seen += config.batch_size
                        loss_avg = step_loss if loss_avg is None else 0.9 * loss_avg + 0.1 * step_loss
                        acc_avg = step_correct if acc_avg is None else 0.9 * acc_avg + 0.1 * step_correct
                        bar.update(config.batch_size, loss=loss_avg, acc=acc_avg)
                        if step % config.log_every == 0 or step == schedule.end:
                            rate = seen / max(time.perf_counter() - t0, 1e-9)
                            log.write({"event": "step", "phase": phase.name, "step": step, "global_step": global_step,
                                       "loss": round(loss_avg, 5), "acc": round(acc_avg, 5),
                                       "lr": round(scheduler.get_last_lr()[0], 7), "samples_per_s": round(rate, 2)})
                    if not rate_warm:
                        t_rate, rate_first, rate_warm = time.perf_counter(), step, True
                    if beside is not None:  # the comparison may take this step; the supernet's length as now planned
                        beside.advance(global_step, _planned_total(global_step, step, schedule.end, pi, budget, history,
                                                                   phase_elapsed + time.perf_counter() - t0, first,
                                                                   phase, config, train_size,
                                                                   time.perf_counter() - t_rate, rate_first))
                    if step == check:  # the learning-rate back-off: does the first phase learn at this rate?
                        action = [lr_backoff.decide(lr_state, loss_avg, step, dataset.num_classes)]
                        if procs.distributed:  # rank 0's running loss decides for all
                            shared_state = [lr_state, action[0]]
                            torch.distributed.broadcast_object_list(shared_state, src=0)
                            lr_state.clear()
                            lr_state.update(shared_state[0])
                            action = [shared_state[1]]
                        if procs.main:
                            print(f"edgenas train: {lr_backoff.describe(lr_state, dataset.num_classes)}", file=sys.stderr)
                            log.write({"event": "lr_backoff", "global_step": global_step, "action": action[0],
                                       **lr_state})
                        if action[0] != "keep":
                            wasted = time.perf_counter() - t_rate
                            if phase_state.get("budget_s") is not None:  # the lost steps: shared by all the phases
                                phase_state["budget_s"] += wasted * (1 - budget.weights[0] / sum(budget.weights))
                            if action[0] == "restart" or held is None:  # from the initial weights, same batches
                                held = (copy.deepcopy(net.state_dict()), optimizer, schedule, scheduler,
                                        torch.get_rng_state(), loss_avg, acc_avg, copy.deepcopy(phase_state))
                                net.load_state_dict(initial)
                                optimizer, schedule, scheduler = new_optimizer()
                                global_step -= step
                                step = done = 0
                                rng_done = torch.get_rng_state()
                                loss_avg = acc_avg = None
                                phase_state.update(curve=[], best=-1.0, stale=0, stopped=None)
                                if action[0] == "revert":  # resumed after the higher rate's check: its steps again
                                    check = None
                            else:  # back to the higher rate where it stood at its check
                                weights, optimizer, schedule, scheduler, rng_done, loss_avg, acc_avg, kept = held
                                net.load_state_dict(weights)
                                torch.set_rng_state(rng_done)
                                global_step, done = global_step - step + check, check
                                step = check
                                phase_state.update({k: v for k, v in kept.items() if k != "budget_s"})
                                check = None
                            batches = stream(step)
                            t_rate, rate_first, rate_warm = time.perf_counter(), step, False
                            bar.n, bar.total = step * config.batch_size, schedule.end * config.batch_size
                            if beside is not None:  # the comparison restarts at the same rates
                                beside.stop()
                                beside = AloneBeside(lr_backoff.scaled(config, lr_state["factor"]), dataset, space,
                                                     schedule.end)
                                beside.advance(global_step, schedule.end)
                            continue
                        check = None
                    # the validation curve, the plateau and the time budget: decided on rank 0, followed by all
                    # (the clock every step; under torchrun every 10th, where the ranks meet to share the decision)
                    # Under a time budget a validation check comes only once the phase has run its minimum (where a
                    # plateau may end it): before that it could only draw the curve, and the demo's 80 s spent 10 s
                    # on such checks; the evaluation at each phase's end still draws one point per phase.
                    val_check = bool(eval_every and step % eval_every == 0
                                     and (phase_state.get("budget_s") is None or step >= min_steps))
                    if step < schedule.end and (val_check or (
                            phase_state.get("budget_s") is not None and (not procs.distributed or step % 10 == 0))):
                        cut = None
                        if procs.main and val_check:
                            accs = _val_top1(net, watched, dataset, config, max(per_rank, 64))
                            point = {"step": step, "epoch": round(step / steps_per_epoch, 3),
                                     **{name: round(a, 5) for name, a in zip(("largest", "smallest"), accs)},
                                     "train_acc": round(acc_avg, 5), "loss": round(loss_avg, 5),
                                     "lr": round(scheduler.get_last_lr()[0], 7)}
                            phase_state["curve"].append(point)
                            log.write({"event": "val", "phase": phase.name, "global_step": global_step, **point})
                            cut = plateau_cut(phase_state, float(np.mean(accs)), step, min_steps, config, phase.adaptive,
                                              schedule.end, learned)
                        if procs.main and phase_state.get("budget_s") is not None and step - rate_first >= 3:
                            elapsed = phase_elapsed + time.perf_counter() - t0
                            cut = time_cut(phase_state, elapsed, (time.perf_counter() - t_rate) / max(1, step - rate_first),
                                           step,
                                           cut[0] if cut else schedule.end) or cut
                        if procs.distributed:
                            shared = [cut]
                            torch.distributed.broadcast_object_list(shared, src=0)
                            cut = shared[0]
                        if cut is not None:
                            schedule.cut(step, cut[0] - step)
                            phase_state["stopped"] = cut[1]
                            bar.total = schedule.end * config.batch_size
                            log.write({"event": "cut", "phase": phase.name, "step": step, "end": schedule.end,
                                       "reason": cut[1], "global_step": global_step})
                    with signals_held():
                        if global_step % config.checkpoint_every == 0 and step < schedule.end and procs.main:
                            save_checkpoint(last_path, checkpoint_state(
                                pi, step, optimizer, scheduler, elapsed=phase_elapsed + time.perf_counter() - t0,
                                phase_state=phase_state))
                            log.write({"event": "checkpoint", "phase": phase.name, "step": step,
                                       "global_step": global_step})
                bar.close()
                steps_end = time.perf_counter()
                phase_elapsed += steps_end - t0
                total = schedule.end
                stopped = phase_state.get("stopped") or ("max_epochs" if phase.adaptive else "length")
                summary = {"phase": phase.name, "steps": total, "epochs": round(total / steps_per_epoch, 3),
                           "stopped": stopped, "seconds": round(phase_elapsed, 2),
                           "samples_per_s": round(seen / max(time.perf_counter() - t0, 1e-9), 2)}
                if phase_state.get("budget_s") is not None:
                    summary["budget_s"] = round(phase_state["budget_s"], 2)
                if procs.main and config.eval_every_phase:
                    accs = _val_top1(net, [space.largest(), space.smallest()], dataset, config, max(per_rank, 64))
                    summary.update(val_largest=round(accs[0], 5), val_smallest=round(accs[1], 5),
                                   eval_s=round(time.perf_counter() - steps_end, 3))
                # the phase's wall clock: its steps (over every resumed segment) and, of this segment, what was not
                # a step (start-up, channel sorting, checkpoints, its evaluation); the time budget charges it all
                summary["wall_s"] = round(phase_elapsed + (time.perf_counter() - segment_start) - (steps_end - t0), 2)
                summary["curve"] = phase_state.get("curve", [])
                if procs.main:
                    accuracy = (f", val top-1 largest {summary['val_largest']:.4f} smallest {summary['val_smallest']:.4f}"
                                if "val_largest" in summary else "")
                    print(f"edgenas train: phase {phase.name} done: {total} steps ({summary['epochs']:.1f} epochs, "
                          f"{stopped}) in {phase_elapsed:.1f}s ({summary['samples_per_s']:.0f} img/s){accuracy}",
                          file=sys.stderr)
            except KeyboardInterrupt as exc:  # SIGINT or SIGTERM: keep every finished step, then stop
                if procs.main:
                    with signals_held():
                        elapsed = phase_elapsed + time.perf_counter() - t0
                        save_checkpoint(last_path, checkpoint_state(pi, done, optimizer if done else None,
                                                                    scheduler if done else None, elapsed=elapsed,
                                                                    rng=rng_done, phase_state=phase_state))
                        log.write({"event": "interrupted", "phase": phase.name, "step": done, "global_step": global_step})
                    exc.args = (f"saved {last_path} at phase {phase.name}, step {done} of {schedule.end}: {RESUME_HINT}",)
                raise
            with signals_held():  # the phase's summary and its checkpoint land together
                history.append(summary)
                log.write({"event": "phase_end", "global_step": global_step,
                           **{k: v for k, v in summary.items() if k != "curve"}})
                phase_elapsed = 0.0
                if procs.main:
                    save_checkpoint(last_path, checkpoint_state(pi + 1, 0, None, None))
            segment_start = time.perf_counter()
            procs.barrier()
            if pi == 0 and _unlearned(summary, config, learned, procs):
                stopped_unlearned = True
                if procs.main:
                    print(f"edgenas train: the largest subnet is at {100 * summary['val_largest']:.1f} % after the first "
                          f"phase (needs {100 * learned:.1f} %, chance {100 * chance_top1(dataset):.1f} %): the later "
                          "phases cannot make up for it, so training stops here and the check below fails "
                          "(stop_unlearned = false in a training config trains every phase anyway)", file=sys.stderr)
                    log.write({"event": "unlearned", "global_step": global_step, "val_largest": summary["val_largest"],
                               "needs": round(learned, 5)})
                break
    except BaseException:  # an interrupted or failed training stops the comparison run too
        if beside is not None:
            beside.stop()
        raise

    # Final: the validation top-1 of the largest, smallest and a few random subnets, each BN-recalibrated; the
    # largest network trained alone for as many steps; the verdict on whether the supernet learned.
    summary: dict[str, Any] = {"phases": history, "global_step": global_step, "world_size": procs.world_size}
    if stopped_unlearned:
        summary["stopped_unlearned"] = True
    if procs.distributed:
        sums: list[Any] = [None] * procs.world_size
        torch.distributed.all_gather_object(sums, _param_checksum(net))
        summary["rank_param_checksums"] = sums
    if procs.main:
        rng = np.random.default_rng([config.seed, 99])
        archs: list[Arch] = [space.largest(), space.smallest()] + space.sample_many(rng, config.final_samples)
        accs = _val_top1(net, archs, dataset, config, max(per_rank, 64))
        summary["val"] = [{"arch": a.to_dict(), "name": n, "top1": round(acc, 5)}
                          for a, n, acc in zip(archs, ["largest", "smallest"] + ["random"] * config.final_samples, accs)]
        summary["chance"] = round(chance_top1(dataset), 5)
        summary["val_size"] = dataset.size("val")
        if config.compare_alone and global_step > 0:
            if beside is not None:
                summary["alone"] = beside.finish(global_step)
                print(f"edgenas train: largest network alone: {summary['alone']['steps']} steps beside the supernet, "
                      f"val top-1 {summary['alone']['top1']:.4f} (waited {summary['alone']['waited_s']:.1f}s for it)",
                      file=sys.stderr)
            else:
                summary["alone"] = train_alone(lr_backoff.scaled(config, lr_state["factor"]), dataset, space, global_step,
                                               procs.device, progress=progress)
            log.write({"event": "alone", "global_step": global_step,
                       **{k: v for k, v in summary["alone"].items() if k != "curve"}})
        elif beside is not None:  # no step taken: nothing to compare
            beside.stop()
        summary["lr_backoff"] = lr_state
        summary["gate"] = training_verdict(summary).to_dict()
        # Store the largest subnet's own BN statistics, so the checkpoint is usable as-is (others: recalibrate).
        recalibrate_for(net, space.largest(), dataset, bn_batches=config.bn_batches, seed=config.seed)
        final = checkpoint_state(len(config.phases), 0, None, None, complete=True, summary=summary)
        save_checkpoint(final_path, final)
        save_checkpoint(last_path, final)
        log.write({"event": "done", "global_step": global_step, "gate": summary["gate"]["passed"],
                   **{f"val_{r['name']}{i}": r["top1"] for i, r in enumerate(summary["val"])}})
    log.close()
    procs.barrier()
    return TrainResult(out, final_path, summary, procs.rank)
