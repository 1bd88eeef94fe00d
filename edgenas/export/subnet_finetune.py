"""Fine-tuning of an extracted subnet before export, distilled from the supernet's largest network.

A subnet taken from a once-for-all supernet is already good; a few epochs on its own, with the
largest network as teacher (Once-for-All's recipe: cross-entropy on labels plus soft cross-entropy
on the teacher's logits), usually recover a little more. The loop is deliberately short and seeded.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgenas.progress import Progress


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      kd_ratio: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy on the labels plus `kd_ratio` times soft cross-entropy against the teacher."""
    soft = F.softmax(teacher_logits / temperature, dim=1)
    kd = -(soft * F.log_softmax(logits / temperature, dim=1)).sum(1).mean() * temperature**2
    return F.cross_entropy(logits, labels) + kd_ratio * kd


def finetune(
    model: nn.Module,
    teacher: nn.Module,
    dataset: Any,
    *,
    epochs: int,
    resolution: int,
    teacher_resolution: int,
    batch_size: int = 64,
    lr: float = 0.01,
    weight_decay: float = 3e-5,
    kd_ratio: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train `model` in place for `epochs` on the training split (augmented), distilled from `teacher`.

    SGD with momentum and a cosine schedule; the teacher sees the same images at its own resolution.
    Returns the mean loss of the last epoch.
    """
    if epochs <= 0:
        return {}
    torch.manual_seed(seed)
    teacher = teacher.eval()
    loader = dataset.loader("train", batch_size=batch_size, resolution=resolution, shuffle=True, augment=True,
                            seed=seed, drop_last=True)
    steps = epochs * len(loader)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    step, last = 0, 0.0
    model.train()
    with Progress(steps, "fine-tune", unit="step", enabled=progress) as bar:
        for epoch in range(epochs):
            total, count = 0.0, 0
            for x, y in loader.iterate(epoch):
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                with torch.no_grad():
                    tx = x if teacher_resolution == resolution else F.interpolate(
                        x, size=(teacher_resolution, teacher_resolution), mode="bilinear", align_corners=False)
                    teacher_logits = teacher(tx)
                loss = distillation_loss(model(x), teacher_logits, y, kd_ratio)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = loss.item()
                total += value * len(y)
                count += len(y)
                step += 1
                bar.update(1, loss=value)
            last = total / max(count, 1)
    model.eval()
    return {"loss": last, "epochs": float(epochs), "steps": float(steps)}
