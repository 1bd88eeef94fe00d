"""Plain PyTorch layers of an extracted subnet: conv-BN-activation, squeeze-excite, MBConv, the whole net.

These are the static twins of the elastic layers in `edgenas.nn.dynamic`: ordinary `nn.Conv2d`,
`nn.BatchNorm2d` and activations, so an extracted subnet exports to ONNX and TFLite like any
hand-written MobileNetV3.
"""

from __future__ import annotations

import torch
from torch import nn


def make_activation(name: str | None) -> nn.Module:
    if name is None:
        return nn.Identity()
    if name == "relu":
        return nn.ReLU(inplace=False)
    if name == "hswish":
        return nn.Hardswish()
    raise ValueError(f"unknown activation {name!r}: choose relu or hswish")


class ConvBNAct(nn.Module):
    """Conv2d ('same' padding) → BatchNorm2d (optional) → activation (optional)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, *, groups: int = 1,
                 act: str | None = None, bn: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class SqueezeExcite(nn.Module):
    """Squeeze-excite as in MobileNetV3: global mean → 1×1 reduce → ReLU → 1×1 expand → hard-sigmoid → scale."""

    def __init__(self, channels: int, mid: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, mid, 1, bias=True)
        self.expand = nn.Conv2d(mid, channels, 1, bias=True)
        self.relu = nn.ReLU()
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.gate(self.expand(self.relu(self.reduce(s))))
        return x * s


class MBConv(nn.Module):
    """Inverted residual block: 1×1 expand (optional) → depthwise k×k → SE (optional) → 1×1 project (+ skip)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, mid: int | None, act: str,
                 se_mid: int | None, residual: bool) -> None:
        super().__init__()
        hidden = mid if mid is not None else cin
        self.expand = ConvBNAct(cin, hidden, 1, act=act) if mid is not None else None
        self.depthwise = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=act)
        self.se = SqueezeExcite(hidden, se_mid) if se_mid else None
        self.project = ConvBNAct(hidden, cout, 1)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand is not None:
            h = self.expand(h)
        h = self.depthwise(h)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h)
        return x + h if self.residual else h


class StaticNet(nn.Module):
    """An extracted subnet: stem → first block → blocks → final expand → pool → feature mix → classifier.

    `resolution` is the input size the subnet was chosen for; `arch` its JSON description.
    """

    def __init__(self, stem: nn.Module, first: nn.Module, blocks: list[nn.Module], final_expand: nn.Module,
                 feature_mix: nn.Module, classifier: nn.Linear, *, dropout: float, resolution: int,
                 in_channels: int, arch: dict | None = None) -> None:
        super().__init__()
        self.stem = stem
        self.first = first
        self.blocks = nn.Sequential(*blocks)
        self.final_expand = final_expand
        self.feature_mix = feature_mix
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier
        self.resolution = resolution
        self.in_channels = in_channels
        self.arch = arch

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(self.stem(x))
        x = self.blocks(x)
        x = self.final_expand(x)
        x = x.mean((2, 3), keepdim=True)
        return torch.flatten(self.feature_mix(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.randn(batch, self.in_channels, self.resolution, self.resolution)
