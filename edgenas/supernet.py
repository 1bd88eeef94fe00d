"""The once-for-all supernet: one set of weights holding every subnet of a search space.

`set_active(arch)` makes the supernet run that subnet in place (training samples subnets
this way); `extract(arch)` returns the subnet as a plain PyTorch model (`StaticNet`) with
copied weights and BatchNorm statistics, which exports to ONNX and TFLite and computes
exactly what the active supernet computes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from edgenas.cost import ArchStats, arch_stats
from edgenas.nn import mixed
from edgenas.nn.dynamic import DynamicMBConv, elastic_bn, plain_bn, run_sliced, sliced_static
from edgenas.nn.static import ConvBNAct, MBConv, StaticNet
from edgenas.space import STEM_KERNEL, Arch, SearchSpace


class Supernet(nn.Module):
    """Once-for-All MobileNetV3-style supernet over `space`.

    Elastic: kernel size and expand ratio of every block, depth of every stage (the first d
    blocks run), input resolution (the forward takes any input size; `resize` scales a
    batch to an arch's resolution), and, where the space offers several widths, the width: the stem, the
    first block and every block run on their first channels (`SearchSpace.block_slots(width)`), the head reads
    the last block's.
    """

    def __init__(self, space: SearchSpace, num_classes: int | None = None) -> None:
        super().__init__()
        if num_classes is not None and num_classes != space.num_classes:
            space = space.replace(num_classes=num_classes)
        self.space = space
        first = space.first_block  # the stem's width in, the first block's out
        self.stem = ConvBNAct(space.in_channels, first.in_channels, STEM_KERNEL, space.stem_stride, act="hswish")
        self.first = MBConv(first.in_channels, first.out_channels, 3, first.stride, mid=None, act=first.act,
                            se_mid=None, residual=first.residual)
        stages: list[list[DynamicMBConv]] = [[] for _ in space.stages]
        cin = first.out_channels
        for slot in space.block_slots():  # the wiring of every block, as the space describes it
            stages[slot.stage].append(DynamicMBConv.for_slot(slot, space.kernels, space.expands))
            cin = slot.out_channels
        self.stages = nn.ModuleList(nn.ModuleList(blocks) for blocks in stages)
        final = space.scaled(space.final_expand_width)
        feature = space.scaled(space.feature_width)
        self.final_expand = ConvBNAct(cin, final, 1, act="hswish")
        self.feature_mix = ConvBNAct(final, feature, 1, act="hswish", bn=False)
        self.dropout = nn.Dropout(space.dropout)
        self.classifier = nn.Linear(feature, space.num_classes)
        self._init_weights()
        if space.elastic_width:  # the fixed layers run on their first channels too (same parameters and keys)
            for layer in (self.stem, self.first.depthwise, self.first.project):
                elastic_bn(layer)
        self.active_depths = [spec.max_depth for spec in space.stages]
        self.active_resolution = space.resolutions[-1]
        self.active_width = space.widths[-1]

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @property
    def num_classes(self) -> int:
        return self.space.num_classes

    # ---- choosing a subnet -----------------------------------------------------------------
    def set_active(self, arch: Arch) -> Supernet:
        """Run `arch` from now on (validated against the space). Returns self for chaining."""
        self.space.validate(arch)
        self.active_depths = list(arch.depths)
        self.active_resolution = arch.resolution
        self.active_width = arch.width
        slots = iter(self.space.block_slots(arch.width))
        for s, stage in enumerate(self.stages):
            for block in stage:
                block.set_width(next(slots))
            for block, (k, e) in zip(stage, arch.stage_blocks(s)):
                block.active_kernel = k
                block.active_expand = e
        return self

    def set_largest(self) -> Supernet:
        return self.set_active(self.space.largest())

    @property
    def active_arch(self) -> Arch:
        kernels, expands = [], []
        for s, stage in enumerate(self.stages):
            for block in list(stage)[: self.active_depths[s]]:
                kernels.append(block.active_kernel)
                expands.append(block.active_expand)
        return Arch(self.active_resolution, tuple(self.active_depths), tuple(kernels), tuple(expands),
                    self.active_width)

    # ---- running ---------------------------------------------------------------------------
    def resize(self, x: torch.Tensor, resolution: int | None = None) -> torch.Tensor:
        """Scale a batch to `resolution` (default: the active arch's), bilinearly, as elastic resolution needs."""
        size = resolution or self.active_resolution
        if x.shape[-1] == size and x.shape[-2] == size:
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def _narrow_first(self, x: torch.Tensor) -> torch.Tensor:
        """The stem and the fixed first block at the active (narrower than full) width."""
        first = self.space.first_block_at(self.active_width)
        x = run_sliced(self.stem, x, first.in_channels)
        h = run_sliced(self.first.depthwise, x, first.in_channels, depthwise=True)
        h = run_sliced(self.first.project, h, first.out_channels)
        return x + h if self.first.residual else h

    def features(self, x: torch.Tensor) -> torch.Tensor:
        narrow = self.active_width != 1.0
        x = self._narrow_first(x) if narrow else self.first(self.stem(x))
        for stage, depth in zip(self.stages, self.active_depths):
            for block in list(stage)[:depth]:
                x = block(x)
        x = run_sliced(self.final_expand, x, self.final_expand.conv.out_channels) if narrow else self.final_expand(x)
        x = x.mean((2, 3), keepdim=True)
        return torch.flatten(self.feature_mix(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))

    def mixed_forward(self, x: torch.Tensor, gates: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Every choice weighted by `gates` in one pass (differentiable search; see `edgenas.nn.mixed`)."""
        return mixed.mixed_forward(self, x, gates)

    # ---- extraction ------------------------------------------------------------------------
    @torch.no_grad()
    def extract(self, arch: Arch | None = None) -> StaticNet:
        """The subnet `arch` (default: the active one) as a plain model with copied weights and BN statistics.

        The supernet's active arch is restored afterwards. The result is in the supernet's mode (train/eval).
        """
        previous = self.active_arch
        if arch is not None:
            self.set_active(arch)
        arch = self.active_arch
        try:
            blocks = [block.to_static() for s, stage in enumerate(self.stages)
                      for block in list(stage)[: self.active_depths[s]]]
            stem, first, final_expand = self._static_fixed_layers(arch.width, blocks[-1].project.conv.out_channels)
            net = StaticNet(
                stem, first, blocks, final_expand,
                copy.deepcopy(self.feature_mix), copy.deepcopy(self.classifier),
                dropout=self.space.dropout, resolution=arch.resolution, in_channels=self.space.in_channels,
                arch=arch.to_dict(),
            )
        finally:
            self.set_active(previous)
        net.to(next(self.parameters()).device)
        return net.train(self.training)

    def _static_fixed_layers(self, width: float, last_channels: int) -> tuple[nn.Module, nn.Module, nn.Module]:
        """Plain copies of the stem, the first block and the final expand at arch width `width` (the first channels
        of each where it is narrower than the full width)."""
        if width == 1.0:
            stem, first, final = (copy.deepcopy(m) for m in (self.stem, self.first, self.final_expand))
            for layer in (stem, first.depthwise, first.project):  # plain BatchNorm in the static twin
                if layer.bn is not None and type(layer.bn) is not nn.BatchNorm2d:
                    layer.bn = plain_bn(layer.bn)
            return stem, first, final
        slot = self.space.first_block_at(width)
        stem = sliced_static(self.stem, self.space.in_channels, slot.in_channels)
        first = MBConv(slot.in_channels, slot.out_channels, 3, slot.stride, mid=None, act=slot.act, se_mid=None,
                       residual=self.first.residual)
        first.depthwise = sliced_static(self.first.depthwise, slot.in_channels, slot.in_channels, depthwise=True)
        first.project = sliced_static(self.first.project, slot.in_channels, slot.out_channels)
        final = sliced_static(self.final_expand, last_channels, self.final_expand.conv.out_channels)
        return stem, first, final

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Re-sort every block's hidden channels by importance (before the elastic-expand phase)."""
        for stage in self.stages:
            for block in stage:
                block.sort_channels()

    def stats(self, arch: Arch | None = None) -> ArchStats:
        """Parameters, MACs, peak activation memory and flash of `arch` (default: the active one)."""
        return arch_stats(self.space, arch or self.active_arch)

    def config(self) -> dict:
        """What `load_supernet` needs to rebuild this network (the search space)."""
        return {"space": self.space.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> Supernet:
        return cls(SearchSpace.from_dict(config["space"]))
