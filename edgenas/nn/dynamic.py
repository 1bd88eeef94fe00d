"""Elastic layers of the supernet: kernel size, channel count (expand ratio) chosen at run time.

Each dynamic layer holds the weights of its largest configuration and runs the active one by
slicing (channels) or by a centre crop passed through learned kernel-transformation matrices
(kernel size, as in Once-for-All). `to_static()` returns the plain layer of the active
configuration with copied weights, so an extracted subnet computes exactly what the supernet
computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgenas.nn.static import ConvBNAct, MBConv, SqueezeExcite, make_activation
from edgenas.space import BlockSlot, mid_channels, se_channels, skip_fits


class DynamicDepthwiseConv(nn.Module):
    """Depthwise conv with elastic kernel size and channel count.

    A smaller kernel is the centre of the next larger one, multiplied by a learned k²×k² matrix
    (initialised to the identity), step by step down from the largest kernel.
    """

    def __init__(self, max_channels: int, kernels: tuple[int, ...], stride: int = 1) -> None:
        super().__init__()
        self.kernels = tuple(sorted(kernels))
        self.max_kernel = self.kernels[-1]
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(max_channels, 1, self.max_kernel, self.max_kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.transforms = nn.ParameterDict({
            f"{k}": nn.Parameter(torch.eye(k * k)) for k in self.kernels[:-1]
        })
        self.active_kernel = self.max_kernel

    def filter(self, channels: int, kernel: int) -> torch.Tensor:
        filt = self.weight[:channels]
        for src, dst in zip(reversed(self.kernels[1:]), reversed(self.kernels[:-1])):
            if src <= kernel:
                break
            start = (src - dst) // 2
            crop = filt[:, :, start:start + dst, start:start + dst].reshape(channels, dst * dst)
            filt = F.linear(crop, self.transforms[f"{dst}"]).reshape(channels, 1, dst, dst)
        return filt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        k = self.active_kernel
        return F.conv2d(x, self.filter(channels, k), None, self.stride, k // 2, 1, channels)

    def to_static(self, channels: int) -> nn.Conv2d:
        k = self.active_kernel
        conv = nn.Conv2d(channels, channels, k, self.stride, k // 2, groups=channels, bias=False)
        conv.weight.data.copy_(self.filter(channels, k).detach())
        return conv


class DynamicPointConv(nn.Module):
    """1×1 conv whose input and output channel counts are slices of the largest."""

    def __init__(self, max_in: int, max_out: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_out, max_in, 1, 1))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None

    def forward(self, x: torch.Tensor, out_channels: int) -> torch.Tensor:
        w = self.weight[:out_channels, : x.shape[1]]
        b = self.bias[:out_channels] if self.bias is not None else None
        return F.conv2d(x, w, b)

    def to_static(self, in_channels: int, out_channels: int) -> nn.Conv2d:
        conv = nn.Conv2d(in_channels, out_channels, 1, bias=self.bias is not None)
        conv.weight.data.copy_(self.weight[:out_channels, :in_channels].detach())
        if self.bias is not None:
            conv.bias.data.copy_(self.bias[:out_channels].detach())
        return conv


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first C channels of its largest configuration (running statistics included)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as nn.BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        # Slices of the running buffers are views: batch_norm updates the shared statistics in place.
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, momentum, self.eps)

    def to_static(self, channels: int) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(channels, eps=self.eps, momentum=self.momentum)
        bn.weight.data.copy_(self.weight[:channels].detach())
        bn.bias.data.copy_(self.bias[:channels].detach())
        bn.running_mean.copy_(self.running_mean[:channels])
        bn.running_var.copy_(self.running_var[:channels])
        bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn


class DynamicSE(nn.Module):
    """Squeeze-excite over the first C channels; its squeeze width follows C (reduction 4)."""

    def __init__(self, max_channels: int) -> None:
        super().__init__()
        max_mid = se_channels(max_channels)
        self.reduce = DynamicPointConv(max_channels, max_mid, bias=True)
        self.expand = DynamicPointConv(max_mid, max_channels, bias=True)
        for conv in (self.reduce, self.expand):  # timm-style SE init: small, not fan-out scaled
            nn.init.normal_(conv.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        s = x.mean((2, 3), keepdim=True)
        s = F.relu(self.reduce(s, se_channels(c)))
        s = F.hardsigmoid(self.expand(s, c))
        return x * s

    def to_static(self, channels: int) -> SqueezeExcite:
        mid = se_channels(channels)
        se = SqueezeExcite(channels, mid)
        se.reduce = self.reduce.to_static(channels, mid)
        se.expand = self.expand.to_static(mid, channels)
        return se


class DynamicMBConv(nn.Module):
    """Inverted residual block with elastic kernel size, expand ratio and (elastic width) channels in and out.

    The hidden width is `mid_channels(active_in, expand)`; narrower configurations use the first
    channels, so `sort_channels()` moves the most important ones to the front before the
    elastic-expand phase of progressive shrinking. At a narrower arch width the block reads the first
    `active_in` channels and writes the first `active_out` (the slot at that width: `SearchSpace.block_slots(w)`).
    """

    @classmethod
    def for_slot(cls, slot: BlockSlot, kernels: tuple[int, ...], expands: tuple[int, ...]) -> DynamicMBConv:
        """The block of one slot of the space's layout (`SearchSpace.block_slots()`)."""
        return cls(slot.in_channels, slot.out_channels, kernels, expands, slot.stride, slot.act, slot.se,
                   residual=slot.residual)

    def __init__(self, cin: int, cout: int, kernels: tuple[int, ...], expands: tuple[int, ...], stride: int,
                 act: str, se: bool, *, residual: bool | None = None) -> None:
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride
        self.act_name = act
        self.expands = tuple(sorted(expands))
        self.max_mid = mid_channels(cin, self.expands[-1])
        self.expand_conv = DynamicPointConv(cin, self.max_mid)
        self.expand_bn = DynamicBatchNorm2d(self.max_mid)
        self.depthwise = DynamicDepthwiseConv(self.max_mid, kernels, stride)
        self.depthwise_bn = DynamicBatchNorm2d(self.max_mid)
        self.se = DynamicSE(self.max_mid) if se else None
        self.project_conv = DynamicPointConv(self.max_mid, cout)
        self.project_bn = DynamicBatchNorm2d(cout)
        self.act = make_activation(act)
        self.residual = skip_fits(cin, cout, stride) if residual is None else residual
        self.active_expand = self.expands[-1]
        self.active_in, self.active_out = cin, cout

    @property
    def active_kernel(self) -> int:
        return self.depthwise.active_kernel

    @active_kernel.setter
    def active_kernel(self, k: int) -> None:
        self.depthwise.active_kernel = k

    @property
    def active_mid(self) -> int:
        return mid_channels(self.active_in, self.active_expand)

    def set_width(self, slot: BlockSlot) -> None:
        """Run as the slot at an arch's width (`SearchSpace.block_slots(width)`): its channels in and out."""
        if slot.in_channels > self.cin or slot.out_channels > self.cout:
            raise ValueError(f"block of {self.cin}->{self.cout} channels cannot run {slot.in_channels}->"
                             f"{slot.out_channels}: wider than the supernet")
        self.active_in, self.active_out = slot.in_channels, slot.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.active_mid
        h = self.act(self.expand_bn(self.expand_conv(x, mid)))
        h = self.act(self.depthwise_bn(self.depthwise(h)))
        if self.se is not None:
            h = self.se(h)
        h = self.project_bn(self.project_conv(h, self.active_out))
        return x + h if self.residual else h

    def to_static(self) -> MBConv:
        mid = self.active_mid
        k = self.active_kernel
        cin, cout = self.active_in, self.active_out
        se_mid = se_channels(mid) if self.se is not None else None
        block = MBConv(cin, cout, k, self.stride, mid=mid, act=self.act_name, se_mid=se_mid, residual=self.residual)
        block.expand = ConvBNAct(cin, mid, 1, act=self.act_name)
        block.expand.conv = self.expand_conv.to_static(cin, mid)
        block.expand.bn = self.expand_bn.to_static(mid)
        block.depthwise.conv = self.depthwise.to_static(mid)
        block.depthwise.bn = self.depthwise_bn.to_static(mid)
        if self.se is not None:
            block.se = self.se.to_static(mid)
        block.project.conv = self.project_conv.to_static(mid, cout)
        block.project.bn = self.project_bn.to_static(cout)
        return block

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Reorder hidden channels by importance (L1 norm of the projection weights), most important first.

        A permutation of hidden channels leaves the full block's output unchanged; it lets narrower
        expand ratios keep the channels that matter most (Once-for-All's re-organisation).
        """
        importance = self.project_conv.weight.abs().sum(dim=(0, 2, 3))
        order = torch.argsort(importance, descending=True)
        self.project_conv.weight.copy_(self.project_conv.weight[:, order])
        self.depthwise.weight.copy_(self.depthwise.weight[order])
        _permute_bn(self.depthwise_bn, order)
        self.expand_conv.weight.copy_(self.expand_conv.weight[order])
        _permute_bn(self.expand_bn, order)
        if self.se is not None:
            se = self.se
            se.reduce.weight.copy_(se.reduce.weight[:, order])
            se.expand.weight.copy_(se.expand.weight[order])
            se.expand.bias.copy_(se.expand.bias[order])
            se_importance = se.expand.weight.abs().sum(dim=(0, 2, 3))
            se_order = torch.argsort(se_importance, descending=True)
            se.expand.weight.copy_(se.expand.weight[:, se_order])
            se.reduce.weight.copy_(se.reduce.weight[se_order])
            se.reduce.bias.copy_(se.reduce.bias[se_order])


def run_sliced(layer: ConvBNAct, x: torch.Tensor, out_channels: int, *, depthwise: bool = False) -> torch.Tensor:
    """A fixed conv-BN-activation layer run on the first channels (elastic width): it reads `x`'s channels (the
    first of its input) and writes its first `out_channels` (a depthwise layer: as many as it reads). The layer's
    BatchNorm must be a `DynamicBatchNorm2d` where it runs narrower than built (see `elastic_bn`)."""
    conv = layer.conv
    cin = x.shape[1]
    if depthwise:
        weight, groups = conv.weight[:cin], cin
    else:
        weight, groups = conv.weight[:out_channels, :cin], 1
    bias = None if conv.bias is None else conv.bias[:weight.shape[0]]
    y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, groups)
    if layer.bn is not None:
        y = layer.bn(y)
    return layer.act(y)


def sliced_static(layer: ConvBNAct, in_channels: int, out_channels: int, *, depthwise: bool = False) -> ConvBNAct:
    """The plain `ConvBNAct` of `run_sliced` at `in_channels` -> `out_channels`, weights and BN statistics copied."""
    conv = layer.conv
    k = conv.kernel_size[0]
    groups = in_channels if depthwise else 1
    act = {nn.ReLU: "relu", nn.Hardswish: "hswish"}.get(type(layer.act))
    out = ConvBNAct(in_channels, out_channels, k, conv.stride[0], groups=groups, act=act, bn=layer.bn is not None,
                    bias=conv.bias is not None)
    weight = conv.weight[:in_channels] if depthwise else conv.weight[:out_channels, :in_channels]
    out.conv.weight.data.copy_(weight.detach())
    if conv.bias is not None:
        out.conv.bias.data.copy_(conv.bias[:out_channels].detach())
    if layer.bn is not None:
        bn = layer.bn
        out.bn = DynamicBatchNorm2d.to_static(bn, out_channels) if isinstance(bn, DynamicBatchNorm2d) else \
            plain_bn(bn)
    return out


def elastic_bn(layer: ConvBNAct) -> None:
    """Swap a fixed layer's BatchNorm for a `DynamicBatchNorm2d` with the same parameters and state-dict keys, so it
    can run on its first channels (`run_sliced`)."""
    bn = layer.bn
    if bn is None or isinstance(bn, DynamicBatchNorm2d):
        return
    dyn = DynamicBatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum)
    dyn.load_state_dict(bn.state_dict())
    layer.bn = dyn


def plain_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """A plain `nn.BatchNorm2d` copy of `bn` (a static twin holds no dynamic layer)."""
    out = nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum)
    out.load_state_dict(bn.state_dict())
    return out


def _permute_bn(bn: nn.BatchNorm2d, order: torch.Tensor) -> None:
    bn.weight.copy_(bn.weight[order])
    bn.bias.copy_(bn.bias[order])
    bn.running_mean.copy_(bn.running_mean[order])
    bn.running_var.copy_(bn.running_var[order])
