"""The largest network trained alone, for as many steps as the supernet took: what weight sharing costs.

Same data order, augmentation, batch size, elastic resolution, learning rate and label smoothing as
the supernet's full-network phase, for the supernet's total number of steps, with no distillation and
no other subnets. Its BN-recalibrated validation top-1 is the figure the supernet's largest subnet is
compared with (`summary["alone"]`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgenas.data import Dataset
from edgenas.progress import Progress
from edgenas.space import SearchSpace
from edgenas.supernet import Supernet
from edgenas.train.config import TrainConfig
from edgenas.train.evaluate import evaluate_many
from edgenas.train.schedule import lr_factor


def train_alone(config: TrainConfig, dataset: Dataset, space: SearchSpace, steps: int, device: torch.device, *,
                progress: bool = False) -> dict[str, Any]:
    """Train the largest network alone for `steps` steps; return its validation top-1, time and curve."""
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
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, warmup))
    loader = dataset.loader("train", batch_size=config.batch_size, shuffle=True, augment=True,
                            seed=config.seed * 1000, drop_last=True)
    eval_every = max(10, round(config.plateau_every * train_size / config.batch_size))
    curve: list[dict[str, Any]] = []
    largest = space.largest()

    def top1() -> float:
        return evaluate_many(net, [largest], dataset, "val", bn_batches=config.bn_batches,
                             batch_size=max(config.batch_size, 64), seed=config.seed)[0]

    t0 = time.perf_counter()
    step, epoch = 0, 0
    try:
        with Progress(steps * config.batch_size, "largest network alone", unit="img", enabled=progress,
                      log_every=15.0) as bar:
            while step < steps:
                for x, y in loader.iterate(epoch):
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
                    if config.eval_every_phase and step % eval_every == 0 and step < steps:
                        curve.append({"step": step, "epoch": round(step / (train_size / config.batch_size), 3),
                                      "largest": round(top1(), 5)})
                    if step >= steps:
                        break
                epoch += 1
        accuracy = top1()
    finally:
        torch.set_rng_state(state)
    return {"steps": steps, "seconds": round(time.perf_counter() - t0, 2), "top1": round(accuracy, 5),
            "curve": curve}
