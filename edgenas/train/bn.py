"""BatchNorm recalibration: re-estimate a subnet's BN statistics on training batches before evaluating it.

A supernet's running statistics mix every subnet sampled in training, so a subnet evaluated with
them is much worse than it really is (a known Once-for-All pitfall). Recalibration resets the
statistics and re-estimates them as an exact average over a few batches, at the subnet's
resolution, without touching any weight.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from edgenas.supernet import Supernet


def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]]) -> int:
    """Reset every BatchNorm's running statistics in `model` and re-estimate them on `batches`.

    Works on a static subnet or on a Supernet (its active arch: the input should already be at that
    arch's resolution; a Supernet resizes batches to its active resolution). Each batch is a tensor or
    an (x, y) pair. The statistics are the exact mean over batches (momentum None). Weights are not
    changed; the model's train/eval mode is restored. Returns the number of images seen.
    """
    bns = _bn_modules(model)
    saved_momentum = [bn.momentum for bn in bns]
    was_training = model.training
    device = next(model.parameters()).device
    seen = 0
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x.to(device)
            if isinstance(model, Supernet):
                x = model.resize(x)
            model(x)
            seen += x.shape[0]
    finally:
        for bn, m in zip(bns, saved_momentum):
            bn.momentum = m
        model.train(was_training)
    if seen == 0:
        raise ValueError("recalibrate_bn got no batches: give at least one batch of training images")
    return seen


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every BatchNorm buffer (running mean and variance, batch count)."""
    return {name: buf.detach().clone() for name, buf in model.named_buffers()
            if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


@torch.no_grad()
def load_bn_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    buffers = dict(model.named_buffers())
    for name, value in state.items():
        buffers[name].copy_(value)


@contextmanager
def preserved_bn(model: nn.Module) -> Iterator[None]:
    """Restore the BatchNorm statistics on exit, whatever happened to them inside."""
    state = bn_state(model)
    try:
        yield
    finally:
        load_bn_state(model, state)
