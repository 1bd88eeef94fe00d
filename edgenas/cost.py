"""Model statistics of any arch without a device or torch: parameters, MACs, peak activation memory, flash.

The network is written out as a list of ops over named tensors (the same ops the static
model and its TFLite conversion run: convolutions with BN folded in, separate hard-swish,
the squeeze-excite pieces, residual adds). From that list:

- MACs count convolutions and the classifier only (what `torch.utils.flop_counter` counts, halved);
- parameters are those of the PyTorch static model (BN weight and bias included);
- flash is the deployed weights, BN folded into a per-channel bias: int8 weights with int32
  biases, or everything fp32;
- peak activation memory is the largest sum of live tensors while any op runs: its inputs, its
  output, and every tensor still needed later (a residual block's input). It is what a
  TensorFlow Lite Micro arena must hold at least, at 1 byte (int8) or 4 bytes (fp32) per value.

`StatsTable` computes the same figures for thousands of archs at once from per-block tables
(the search uses it): MACs, parameters and flash are sums over active blocks and the peak is a
maximum over them, because between blocks only one tensor is alive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgenas.micro_memory import memory_table
from edgenas.space import STEM_KERNEL, Arch, SearchSpace, conv_out, mid_channels, se_channels


@dataclass(frozen=True)
class Op:
    """One op of the deployed graph: reads `inputs`, writes `output` (tensor names and sizes in values)."""

    name: str
    kind: str  # conv, dwconv, linear, hswish, pool, se_scale, add
    inputs: tuple[str, ...]
    output: str
    out_size: int
    macs: int = 0
    weights: int = 0
    biases: int = 0
    bn_channels: int = 0  # channels of a BatchNorm folded into this op (params in PyTorch, bias in flash)


@dataclass(frozen=True)
class ArchStats:
    """Statistics of one subnet; memory figures in bytes."""

    params: int
    macs: int
    peak_activation_int8: int
    peak_activation_fp32: int
    flash_int8: int
    flash_fp32: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def peak_activation_kb_int8(self) -> float:
        return self.peak_activation_int8 / 1024

    @property
    def flash_kb_int8(self) -> float:
        return self.flash_int8 / 1024


class _GraphBuilder:
    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.sizes: dict[str, int] = {}
        self._n = 0

    def tensor(self, size: int) -> str:
        self._n += 1
        name = f"t{self._n}"
        self.sizes[name] = size
        return name

    def add(self, name: str, kind: str, inputs: tuple[str, ...], out_size: int, **kw: Any) -> str:
        out = self.tensor(out_size)
        self.ops.append(Op(name, kind, inputs, out, out_size, **kw))
        return out

    def conv(self, name: str, x: str, cin: int, cout: int, hw: int, k: int, stride: int, *, groups: int = 1,
             bn: bool = True, bias: bool = False, act: str | None = None) -> tuple[str, int]:
        out_hw = conv_out(hw, k, stride)
        per_out = (cin // groups) * k * k
        y = self.add(name, "dwconv" if groups > 1 else "conv", (x,), cout * out_hw * out_hw,
                     macs=out_hw * out_hw * cout * per_out, weights=cout * per_out,
                     biases=cout if (bn or bias) else 0, bn_channels=cout if bn else 0)
        if act == "hswish":  # TFLite has no fused hard-swish: it is an op of its own
            y = self.add(name + ".hswish", "hswish", (y,), cout * out_hw * out_hw)
        return y, out_hw

    def mbconv(self, name: str, x: str, cin: int, cout: int, hw: int, k: int, expand: int, stride: int,
               act: str, se: bool, residual: bool, has_expand: bool = True) -> tuple[str, int]:
        h = x
        mid = cin
        if has_expand:  # elastic blocks always have the 1x1 expansion; the fixed first block has none
            mid = mid_channels(cin, expand)
            h, _ = self.conv(name + ".expand", h, cin, mid, hw, 1, 1, act=act)
        h, out_hw = self.conv(name + ".depthwise", h, mid, mid, hw, k, stride, groups=mid, act=act)
        if se:
            r = se_channels(mid)
            p = self.add(name + ".se.pool", "pool", (h,), mid)
            q = self.add(name + ".se.reduce", "conv", (p,), r, macs=mid * r, weights=mid * r, biases=r)
            s = self.add(name + ".se.expand", "conv", (q,), mid, macs=r * mid, weights=r * mid, biases=mid)
            h = self.add(name + ".se.scale", "se_scale", (h, s), mid * out_hw * out_hw)
        h, out_hw = self.conv(name + ".project", h, mid, cout, out_hw, 1, 1)
        if residual:
            h = self.add(name + ".add", "add", (x, h), cout * out_hw * out_hw)
        return h, out_hw


def build_graph(space: SearchSpace, arch: Arch) -> tuple[list[Op], dict[str, int]]:
    """The deployed op graph of `arch` (BN folded), and every tensor's size in values."""
    g = _GraphBuilder()
    hw = arch.resolution
    x = g.tensor(space.in_channels * hw * hw)
    first = space.first_block_at(arch.width)
    h, hw = g.conv("stem", x, space.in_channels, first.in_channels, hw, STEM_KERNEL, space.stem_stride, act="hswish")
    h, hw = g.mbconv("first", h, first.in_channels, first.out_channels, hw, 3, 1, first.stride, first.act, first.se,
                     first.residual, has_expand=False)
    cin = first.out_channels
    slots = {(b.stage, b.index): b for b in space.block_slots(arch.width)}
    for s in range(space.num_stages):
        for j, (k, e) in enumerate(arch.stage_blocks(s)):
            b = slots[(s, j)]
            h, hw = g.mbconv(f"stage{s}.block{j}", h, b.in_channels, b.out_channels, hw, k, e, b.stride, b.act, b.se,
                             b.residual)
            cin = b.out_channels
    final = space.scaled(space.final_expand_width)
    h, hw = g.conv("final_expand", h, cin, final, hw, 1, 1, act="hswish")
    h = g.add("pool", "pool", (h,), final)
    feature = space.scaled(space.feature_width)
    h, _ = g.conv("feature_mix", h, final, feature, 1, 1, 1, bn=False, act="hswish")
    g.add("classifier", "linear", (h,), space.num_classes, macs=feature * space.num_classes,
          weights=feature * space.num_classes, biases=space.num_classes)
    return g.ops, g.sizes


def peak_activation(ops: list[Op], sizes: dict[str, int], skip: Callable[[Op], bool] | None = None) -> int:
    """Largest sum of live tensors (in values) while any op runs: a tensor lives from the op
    that writes it (the graph input from the start) to the last op that reads it. Ops for which
    `skip(op)` is true are not counted as moments of peak (their tensors still live)."""
    last_use: dict[str, int] = {}
    for i, op in enumerate(ops):
        for t in op.inputs:
            last_use[t] = i
    created = {op.output: i for i, op in enumerate(ops)}
    peak = 0
    for i, op in enumerate(ops):
        if skip is not None and skip(op):
            continue
        live = 0
        for t, size in sizes.items():
            born = created.get(t, -1)
            if born <= i and last_use.get(t, born) >= i:
                live += size
        peak = max(peak, live)
    return peak


def arch_stats(space: SearchSpace, arch: Arch) -> ArchStats:
    """Statistics of one arch (validated against the space)."""
    space.validate(arch)
    ops, sizes = build_graph(space, arch)
    weights = sum(op.weights for op in ops)
    biases = sum(op.biases for op in ops)
    # PyTorch params: conv weights, BN weight+bias, SE conv biases, classifier bias.
    params = weights + sum(2 * op.bn_channels + (op.biases - op.bn_channels) for op in ops)
    peak = peak_activation(ops, sizes)
    return ArchStats(
        params=params,
        macs=sum(op.macs for op in ops),
        peak_activation_int8=peak,
        peak_activation_fp32=4 * peak,
        flash_int8=weights + 4 * biases,
        flash_fp32=4 * (weights + biases),
    )


def _in_block(op: Op) -> bool:
    return op.name.startswith("stage")


class StatsTable:
    """Vectorised statistics for many archs of one space (search evaluates whole populations).

    Per variant (resolution and width: `SearchSpace.variants`), the fixed parts (stem, first block, head) and, per
    block slot, kernel and expand ratio, each block's MACs, params, flash and peak are tabulated once.
    `compute(archs)` then gathers and sums (or maxes) them. Agrees exactly with `arch_stats`.
    """

    FIELDS = ("params", "macs", "peak_activation_int8", "flash_int8", "flash_fp32")

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        nr, nslot, nk, ne = len(space.variants), space.max_blocks, len(space.kernels), len(space.expands)
        self.fixed = np.zeros((len(self.FIELDS), nr), dtype=np.int64)
        self.fixed_peak = np.zeros(nr, dtype=np.int64)
        self.block = np.zeros((len(self.FIELDS), nr, nslot, nk, ne), dtype=np.int64)
        self.slot_offsets = np.cumsum([0] + [s.max_depth for s in space.stages])[:-1]
        # The fixed part: the smallest arch with every block's contribution removed.
        for ri, (width, res) in enumerate(space.variants):
            slots = space.block_slots(width)  # the wiring of every block, as the space describes it
            base = dataclasses.replace(space.smallest(res), width=width)
            ops, sizes = build_graph(space, base)
            fixed_ops = [op for op in ops if not _in_block(op)]
            self.fixed[:, ri] = self._totals(fixed_ops)
            self.fixed_peak[ri] = peak_activation(ops, sizes, skip=_in_block)
            hw_in = space.feature_sizes(res).slot_in
            for i, slot in enumerate(slots):
                for ki, k in enumerate(space.kernels):
                    for ei, e in enumerate(space.expands):
                        g = _GraphBuilder()
                        x = g.tensor(slot.in_channels * hw_in[i] ** 2)
                        g.mbconv("b", x, slot.in_channels, slot.out_channels, hw_in[i], k, e, slot.stride, slot.act,
                                 slot.se, residual=slot.residual)
                        tot = self._totals(g.ops)
                        tot[2] = peak_activation(g.ops, g.sizes)
                        self.block[:, ri, i, ki, ei] = tot

    @staticmethod
    def _totals(ops: list[Op]) -> np.ndarray:
        weights = sum(op.weights for op in ops)
        biases = sum(op.biases for op in ops)
        params = weights + sum(2 * op.bn_channels + (op.biases - op.bn_channels) for op in ops)
        return np.array([params, sum(op.macs for op in ops), 0, weights + 4 * biases, 4 * (weights + biases)],
                        dtype=np.int64)

    def indices(self, archs: list[Arch]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Variant (width and resolution) index (n,) and per-slot kernel and expand indices (n, slots), plus an active mask
        (`SearchSpace.choice_indices`)."""
        return self.space.choice_indices(archs)

    def compute(self, archs: list[Arch], *, memory: bool = False) -> dict[str, np.ndarray]:
        """Statistics of every arch: a dict of int64 arrays named as ArchStats' fields; with `memory`, also
        `arena_int8` and `tflite_int8`, the predicted TFLite Micro arena and int8 file size (`edgenas.micro_memory`)."""
        return self.from_indices(*self.indices(archs), memory=memory)

    def from_indices(self, ri: np.ndarray, ki: np.ndarray, ei: np.ndarray, active: np.ndarray, *,
                     memory: bool = False) -> dict[str, np.ndarray]:
        """`compute` on archs given as index arrays (see `indices`): what a vectorised search keeps."""
        slots = np.arange(self.space.max_blocks)[None, :]
        vals = self.block[:, ri[:, None], slots, ki, ei]  # (fields, n, slots)
        vals = np.where(active[None], vals, 0)
        out = {}
        for f, name in enumerate(self.FIELDS):
            if name == "peak_activation_int8":
                out[name] = np.maximum(vals[f].max(axis=1), self.fixed_peak[ri])
            else:
                out[name] = vals[f].sum(axis=1) + self.fixed[f, ri]
        out["peak_activation_fp32"] = 4 * out["peak_activation_int8"]
        if memory:
            predicted = memory_table(self.space).from_indices(ri, ki, ei, active)
            out["arena_int8"], out["tflite_int8"] = predicted["arena"], predicted["flash"]
        return out


def stats_table(space: SearchSpace) -> StatsTable:
    """The (cached) StatsTable of a space."""
    table = space._cache.get("stats_table")
    if table is None:
        table = space._cache["stats_table"] = StatsTable(space)
    return table
