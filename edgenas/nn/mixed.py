"""The supernet's mixed forward pass for differentiable search: every choice weighted by a gate, in one pass.

The supernet's choices share weights (a smaller kernel is the largest's centre, a narrower expand ratio the
first channels), so one forward at the largest width computes the exact mixture (Single-Path NAS's
superkernel): the depthwise filter is Σ_k g_k · pad(filter_k) and hidden channels are scaled by
Σ_e g_e · [c < width(e)]; depth mixes each stage's outputs after each block, Σ_d g_d · x_d. With one-hot
gates the pass is the chosen subnet (squeeze-excite aside, which runs at the largest width).
See `edgenas.train.differentiable` for how the gates are drawn and trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgenas.nn.dynamic import DynamicMBConv
from edgenas.space import mid_channels


def mixed_block(block: DynamicMBConv, x: torch.Tensor, gk: torch.Tensor, ge: torch.Tensor,
                expands: tuple[int, ...]) -> torch.Tensor:
    """A DynamicMBConv at its largest width with kernel and expand choices mixed by gates `gk`, `ge` (superkernel)."""
    mid = block.max_mid
    h = block.act(block.expand_bn(block.expand_conv(x, mid)))
    channel = torch.arange(mid, device=x.device)
    widths = torch.tensor([mid_channels(block.cin, e) for e in expands], device=x.device)
    mask = (ge[:, None] * (channel[None, :] < widths[:, None]).to(ge.dtype)).sum(0)[None, :, None, None]
    h = h * mask
    dw = block.depthwise
    kmax = dw.max_kernel
    filt = 0
    for i, k in enumerate(dw.kernels):
        pad = (kmax - k) // 2
        filt = filt + gk[i] * F.pad(dw.filter(mid, k), (pad, pad, pad, pad))
    h = F.conv2d(h, filt, None, dw.stride, kmax // 2, 1, mid)
    h = block.act(block.depthwise_bn(h)) * mask
    if block.se is not None:
        h = block.se(h)
    h = block.project_bn(block.project_conv(h, block.cout))
    return x + h if block.residual else h


def mixed_forward(net, x: torch.Tensor, gates: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Logits of supernet `net` with every slot's kernel and expand and every stage's depth mixed by `gates`:
    (slots, kernels), (slots, expands) and (stages, depth choices) weights."""
    gk, ge, gd = gates
    space = net.space
    x = net.first(net.stem(x))
    slot = 0
    for s, (stage, spec) in enumerate(zip(net.stages, space.stages)):
        outs = []
        for block in stage:
            x = mixed_block(block, x, gk[slot], ge[slot], space.expands)
            outs.append(x)
            slot += 1
        x = sum(gd[s, di] * outs[d - 1] for di, d in enumerate(spec.depths))
    x = net.final_expand(x)
    x = x.mean((2, 3), keepdim=True)
    return net.classifier(net.dropout(torch.flatten(net.feature_mix(x), 1)))
