"""The largest network trained alone, for as many steps as the supernet took: what weight sharing costs.

Same data order, augmentation, batch size, elastic resolution, learning rate and label smoothing as
the supernet's full-network phase, for the supernet's total number of steps, with no distillation and
no other subnets. Its BN-recalibrated validation top-1 is the figure the supernet's largest subnet is
compared with (`summary["alone"]`).

On a CPU with two cores or more the comparison runs beside the supernet's training (`AloneBeside`, a
forked process with one thread), not after it: a training step of these small networks keeps about one
core busy whatever the thread count (on 2 cores: 92 img/s with one thread, 92 with two), so the second
core does the comparison for free. It takes step k only once the supernet has taken step k, and its
learning rate follows a cosine over the supernet's planned length (`Pace.total`: re-planned as phases
end or are cut, exact once the supernet is done), so it ends annealed after as many steps as the supernet.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgenas.data import AnyDataset, StepResolutions
from edgenas.progress import Progress
from edgenas.space import SearchSpace
from edgenas.supernet import Supernet
from edgenas.train.config import TrainConfig
from edgenas.train.evaluate import evaluate_many
from edgenas.train.schedule import lr_factor


class Pace:
    """How far the supernet's training is, shared with the comparison run in another process: steps done, the
    planned total (an estimate until the supernet ends) and, once it has ended, the final total."""

    def __init__(self, context: Any, planned: int) -> None:
        self.parent = os.getpid()  # the supernet's process: the comparison ends when it is gone
        self._done = context.Value("q", 0, lock=False)
        self._plan = context.Value("q", max(1, int(planned)), lock=False)
        self._final = context.Value("q", -1, lock=False)

    def advance(self, done: int, planned: int) -> None:
        self._plan.value = max(int(done), int(planned), 1)
        self._done.value = int(done)

    def end(self, total: int) -> None:
        self._final.value = int(total)

    def total(self) -> int:
        final = self._final.value
        return final if final >= 0 else self._plan.value

    def may_take(self, step: int) -> bool:
        """Wait until the supernet has taken step `step` (0-based) or ended; whether the comparison takes it."""
        while True:
            final = self._final.value
            if final >= 0:
                return step < final
            if self._done.value > step:
                return True
            if os.getpid() != self.parent and not _running(self.parent):  # in the comparison's process, whose
                os._exit(1)  # supernet was killed (SIGKILL): nothing to compare with
            time.sleep(0.002)


def _running(pid: int) -> bool:
    """Whether the supernet's process `pid` still runs: it is this process's parent (forked), or, started from the
    fork server, it exists and is no zombie."""
    if os.getppid() == pid:
        return True
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except ProcessLookupError:
        return False
    except OSError:  # no /proc (not Linux), or not ours to signal: it exists
        return True


def train_alone(config: TrainConfig, dataset: AnyDataset, space: SearchSpace, steps: int | None, device: torch.device, *,
                progress: bool = False, pace: Pace | None = None) -> dict[str, Any]:
    """Train the largest network alone for `steps` steps (with `pace`: in step with the supernet, for as many steps
    as it takes); return its validation top-1, time and curve."""
    phase = config.phases[0]
    state = torch.get_rng_state()
    torch.manual_seed(config.seed * 1000 + 999)
    net = Supernet(space).to(device, memory_format=torch.channels_last)
    net.set_largest().train()
    train_size = dataset.size("train")
    optimizer = torch.optim.SGD(net.parameters(), lr=phase.lr * config.batch_size / config.lr_batch_size,
                                momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
                                weight_decay=config.weight_decay)
    warmup = phase.warmup_steps(train_size, config.batch_size)

    def total() -> int:
        return pace.total() if pace is not None else int(steps or 0)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(min(s, total()), total(), warmup))
    loader = dataset.loader("train", batch_size=config.batch_size, shuffle=True, augment=True,
                            seed=config.seed * 1000, drop_last=True,
                            step_resolution=StepResolutions(config.seed, 0, tuple(space.resolutions)))
    eval_every = max(10, round(config.plateau_every * train_size / config.batch_size))
    curve: list[dict[str, Any]] = []
    largest = space.largest()

    def top1() -> float:
        return evaluate_many(net, [largest], dataset, "val", bn_batches=config.bn_batches,
                             batch_size=max(config.batch_size, 64), seed=config.seed)[0]

    t0 = time.perf_counter()
    step, epoch = 0, 0
    try:
        with Progress(total() * config.batch_size, "largest network alone", unit="img", enabled=progress,
                      log_every=15.0) as bar:
            while pace.may_take(step) if pace is not None else step < total():
                for x, y in loader.iterate(epoch):
                    if pace is not None and not pace.may_take(step):
                        break
                    rng = np.random.default_rng([config.seed, 0, step])
                    x = net.resize(x.to(device), int(rng.choice(space.resolutions)))
                    logits = net(x.contiguous(memory_format=torch.channels_last))
                    loss = F.cross_entropy(logits, y.to(device), label_smoothing=config.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    bar.update(config.batch_size, loss=loss.item())
                    if config.eval_every_phase and step % eval_every == 0 and step < total():
                        curve.append({"step": step, "epoch": round(step / (train_size / config.batch_size), 3),
                                      "largest": round(top1(), 5)})
                    if pace is None and step >= total():
                        break
                epoch += 1
        accuracy = top1()
    finally:
        torch.set_rng_state(state)
    return {"steps": step, "seconds": round(time.perf_counter() - t0, 2), "top1": round(accuracy, 5),
            "curve": curve, "beside": pace is not None}


def can_run_beside(device: torch.device, distributed: bool) -> bool:
    """Whether the comparison can run beside the supernet: on a CPU with two cores or more, one process, where
    processes fork (Linux)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return (device.type == "cpu" and not distributed and cores >= 2
            and "fork" in multiprocessing.get_all_start_methods())


def start_method() -> str:
    """How the comparison process starts: forked (it shares the dataset's pages, and starts at once), except where
    JAX is loaded in this process (the TFLite converter imports it; a training after an export in one process, as
    in `edgenas run` with a fine-tune or a test process): JAX's threads may hold locks that a forked child would
    wait on forever, so the child comes from multiprocessing's fork server, itself started by fork + exec."""
    return "forkserver" if "jax" in sys.modules else "fork"


class AloneBeside:
    """The comparison run in a forked process (one torch thread) beside the supernet's training.

    The trainer calls `advance` after each step and `finish` with its total when done (the result dict of
    `train_alone`); `stop` ends the process early (an interrupted training). A comparison that fails raises
    in `finish` with its traceback."""

    def __init__(self, config: TrainConfig, dataset: AnyDataset, space: SearchSpace, planned: int) -> None:
        context = multiprocessing.get_context(start_method())
        self.pace = Pace(context, planned)
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_beside, args=(config, dataset, space, self.pace, send),
                                        name="edgenas-alone", daemon=True)
        self._process.start()
        send.close()

    def advance(self, done: int, planned: int) -> None:
        self.pace.advance(done, planned)

    def finish(self, steps: int) -> dict[str, Any]:
        self.pace.end(steps)
        t0 = time.perf_counter()
        try:
            kind, value = self._receive.recv()
        except EOFError:
            self._process.join()
            raise RuntimeError(f"the comparison run (the largest network alone) ended without a result (exit status "
                               f"{self._process.exitcode})") from None
        self._process.join()
        if kind != "result":
            raise RuntimeError(f"the comparison run (the largest network alone) failed:\n{value}")
        value["waited_s"] = round(time.perf_counter() - t0, 2)  # how long the supernet waited for it at the end
        return value

    def stop(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the process that forked it dies (a killed training leaves no comparison
    running; `Pace.may_take` also checks, where this is not available)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _beside(config: TrainConfig, dataset: AnyDataset, space: SearchSpace, pace: Pace, send: Any) -> None:
    """The forked comparison process: one thread, Ctrl-C left to the trainer (which stops this process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    torch.set_num_threads(1)
    if dataset.streamed:  # a daemonic process may not start DataLoader workers: it reads its images itself
        dataset.workers = 0
    try:
        send.send(("result", train_alone(config, dataset, space, None, torch.device("cpu"), pace=pace)))
    except BaseException:
        send.send(("error", traceback.format_exc()))
    finally:
        send.close()


class Comparison:
    """The comparison run as the trainer's hook (rank 0): beside the supernet's training in a forked process where
    the CPU has a core for it (`start`, then `after_step` and, when the learning-rate back-off restarts the first
    phase, `restart`), else after it; `finish` gives its result either way, `stop` ends it early."""

    def __init__(self, dataset: AnyDataset, space: SearchSpace, device: torch.device, *, progress: bool) -> None:
        self.dataset, self.space, self.device, self.progress = dataset, space, device, progress
        self.beside: AloneBeside | None = None

    def start(self, config: TrainConfig, done: int, planned: int) -> None:
        """Start the run beside the supernet, which has taken `done` steps of the `planned`."""
        self.beside = AloneBeside(config, self.dataset, self.space, planned)
        self.beside.advance(done, planned)

    def after_step(self, done: int, planned: Callable[[], int]) -> None:
        """The supernet took a step (`done` in all, `planned()` as now planned): the comparison may take it."""
        if self.beside is not None:
            self.beside.advance(done, planned())

    def restart(self, config: TrainConfig, done: int, planned: int) -> None:
        """Start again at the rates the back-off chose."""
        if self.beside is not None:
            self.beside.stop()
            self.start(config, done, planned)

    def stop(self) -> None:
        if self.beside is not None:
            self.beside.stop()

    def end(self, steps: int) -> None:
        """The supernet took its last step (`steps` in all): the run beside it takes the steps it has left and
        evaluates itself while the supernet's own subnets are evaluated, not after."""
        if self.beside is not None:
            self.beside.pace.end(steps)

    def finish(self, config: TrainConfig, steps: int) -> dict[str, Any]:
        """The largest network alone for the supernet's `steps`: the run beside it, or trained now."""
        if self.beside is None:
            return train_alone(config, self.dataset, self.space, steps, self.device, progress=self.progress)
        alone = self.beside.finish(steps)
        print(f"edgenas train: largest network alone: {alone['steps']} steps beside the supernet, "
              f"val top-1 {alone['top1']:.4f} (waited {alone['waited_s']:.1f}s for it)", file=sys.stderr)
        return alone
