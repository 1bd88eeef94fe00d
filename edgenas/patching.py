"""Patch-based inference (MCUNetV2, Lin et al. 2021) as a graph schedule: which slices, pads, ops and
concatenations run the first layers of a network patch by patch (no torch, no file format).

The memory-heavy first layers of a CNN run on N x N overlapping patches of their output, one patch after
another, so only one patch's intermediate maps are alive at a time; the rest of the network runs on the whole
map, made by concatenating the patches' outputs. Each patch's region is found backwards from its tile of the
cut tensor (the last patch-based map): a convolution with kernel k, stride s and leading padding p needs input
rows [lo*s - p, (hi-1)*s - p + k) for output rows [lo, hi) (the halo); where that reaches past the image's
border, the patch is padded explicitly (PAD: the quantized zero, as the convolution's own padding would
read), and every convolution then runs VALID. Inside the image nothing is padded, so every output value is
computed from exactly the inputs the whole-map layer reads, by the same integer arithmetic: int8 outputs are
bit-identical to the whole-map graph's.

`plan_patches` works on any graph given as `LocalOp`s (a convolution, a PAD, or a pointwise op such as
QUANTIZE, HARD_SWISH or a residual ADD); `edgenas.export.patches` writes the schedule into a .tflite file and
`edgenas.micro_memory` predicts its TFLite Micro arena from the same schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Interval = tuple[int, int]  # [lo, hi) along one spatial axis
LOCAL_KINDS = ("conv", "pad", "pointwise")


@dataclass(frozen=True)
class LocalOp:
    """One spatially local op of the graph: `kind` "conv" (convolution or depthwise convolution, `kernel`,
    `stride`, leading padding `pad` per axis: TFLite SAME's, or 0 for VALID), "pad" (an explicit PAD, `pad` its
    leading rows and columns) or "pointwise" (each output value reads the inputs at the same position).
    `inputs` are the activation tensors it reads (weights are the writer's business), `ref` the writer's own."""

    kind: str
    inputs: tuple[int, ...]
    output: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)
    ref: Any = None

    def need(self, axis: int, out: Interval) -> Interval:
        """Input interval (unclipped: it may reach past the map) that output interval `out` reads on `axis`."""
        lo, hi = out
        if self.kind == "conv":
            k, s, p = self.kernel[axis], self.stride[axis], self.pad[axis]
            return lo * s - p, (hi - 1) * s - p + k
        if self.kind == "pad":
            return lo - self.pad[axis], hi - self.pad[axis]
        return lo, hi


@dataclass(frozen=True)
class PatchTensor:
    """A tensor of the patch-based graph: rows x cols of `source` (a tensor of the whole-map graph), all its
    channels. `original` marks the whole-map graph's own tensors (the graph input, the cut tensor)."""

    source: int
    rows: Interval
    cols: Interval
    original: bool = False

    @property
    def height(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def width(self) -> int:
        return self.cols[1] - self.cols[0]


@dataclass(frozen=True)
class PatchStep:
    """One op of the patch-based part: "slice" (`begin` rows/cols offset into its input, the output's size),
    "pad" (`pads` ((top, bottom), (left, right)), the quantized zero), "op" (a copy of `op` on patch tensors, run
    VALID) or "concat" (along `axis`: 1 rows, 2 columns, NHWC)."""

    kind: str
    inputs: tuple[int, ...]
    output: int
    op: LocalOp | None = None
    begin: tuple[int, int] = (0, 0)
    pads: tuple[Interval, Interval] = ((0, 0), (0, 0))
    axis: int = 0


@dataclass
class PatchPlan:
    """The patch-based schedule of a graph's first ops: `tensors` (indices used by `steps`), `steps` in run
    order (patch after patch, each row of patches concatenated as soon as it is done, then the rows)."""

    n: int
    cut: int  # the whole-map tensor the patches make (its index in the whole-map graph)
    ops: int  # how many leading ops of the whole-map graph the patches replace
    tensors: list[PatchTensor] = field(default_factory=list)
    steps: list[PatchStep] = field(default_factory=list)

    def tensor(self, t: PatchTensor) -> int:
        self.tensors.append(t)
        return len(self.tensors) - 1

    def step(self, kind: str, inputs: Sequence[int], out: PatchTensor, **kw) -> int:
        index = self.tensor(out)
        self.steps.append(PatchStep(kind, tuple(inputs), index, **kw))
        return index


class NotPatchable(ValueError):
    """The graph's first ops cannot run patch by patch up to the asked cut."""


def tiles(size: int, n: int) -> list[Interval]:
    """`size` split into `n` near-equal intervals."""
    bounds = [round(i * size / n) for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n)]


def _clip(iv: Interval, size: int) -> Interval:
    return max(iv[0], 0), min(iv[1], size)


def _hull(a: Interval | None, b: Interval) -> Interval:
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]))


def check_prefix(ops: Sequence[LocalOp | None], count: int, consumers: dict[int, list[int]],
                 graph_outputs: Sequence[int] = ()) -> int:
    """The cut tensor of the first `count` ops: the only tensor they make that a later op (or the graph's
    output) reads. `ops[i]` is None for an op that is not spatially local. Raises NotPatchable otherwise."""
    if count < 1 or count >= len(ops):
        raise NotPatchable(f"a patch-based part of {count} ops: the graph has {len(ops)}")
    made = {}
    for i, op in enumerate(ops[:count]):
        if op is None:
            raise NotPatchable(f"op {i} is not spatially local (a global pool, a reshape, a fully-connected layer)")
        made[op.output] = i
    escaping = sorted(t for t in made if t in graph_outputs or any(c >= count for c in consumers.get(t, [])))
    if len(escaping) != 1:
        raise NotPatchable(f"the first {count} ops hand {len(escaping)} tensors to the rest: a cut needs one")
    return escaping[0]


def plan_patches(ops: Sequence[LocalOp], count: int, shapes: dict[int, tuple[int, int]], n: int,
                 consumers: dict[int, list[int]], graph_outputs: Sequence[int] = ()) -> PatchPlan:
    """The schedule running `ops[:count]` on `n` x `n` patches of their cut tensor; `shapes` gives each tensor's
    (height, width), `consumers` the ops (by index in the whole graph) reading each tensor."""
    if n < 2:
        raise NotPatchable(f"{n} x {n} patches: choose 2 or more")
    cut = check_prefix(list(ops), count, consumers, graph_outputs)
    prefix = fold_pads(list(ops[:count]), consumers)
    made = {op.output for op in prefix}
    sources = sorted({t for op in prefix for t in op.inputs if t not in made})
    height, width = shapes[cut]
    if n > min(height, width):
        raise NotPatchable(f"{n} x {n} patches of a {height} x {width} map: at most {min(height, width)}")
    plan = PatchPlan(n, cut, count)
    whole = {t: plan.tensor(PatchTensor(t, (0, shapes[t][0]), (0, shapes[t][1]), original=True)) for t in sources}
    rows_done = []
    for row in tiles(height, n):
        row_parts = []
        for col in tiles(width, n):
            row_parts.append(_one_patch(plan, prefix, shapes, whole, cut, row, col))
        rows_done.append(plan.step("concat", row_parts, PatchTensor(cut, row, (0, width)), axis=2))
    plan.step("concat", rows_done, PatchTensor(cut, (0, height), (0, width), original=True), axis=1)
    return plan


def _one_patch(plan: PatchPlan, prefix: list[LocalOp], shapes: dict[int, tuple[int, int]], whole: dict[int, int],
               cut: int, rows: Interval, cols: Interval) -> int:
    """Emit the steps of one patch; returns its tile of the cut tensor."""
    want: dict[int, tuple[Interval, Interval]] = {cut: (rows, cols)}
    for op in reversed(prefix):  # backwards: the region each tensor must hold
        if op.output not in want:
            raise NotPatchable(f"op making tensor {op.output} does not lead to the cut")
        out = want[op.output]
        for t in op.inputs:
            need = tuple(_clip(op.need(a, out[a]), shapes[t][a]) for a in (0, 1))
            have = want.get(t)
            want[t] = (_hull(have and have[0], need[0]), _hull(have and have[1], need[1]))
    have = dict(whole)
    for op in prefix:
        out_rows, out_cols = want[op.output]
        inputs = []
        pads = ((0, 0), (0, 0))
        for t in op.inputs:
            need = [op.need(a, (out_rows, out_cols)[a]) for a in (0, 1)]
            clipped = [_clip(iv, shapes[t][a]) for a, iv in enumerate(need)]
            inputs.append(_sliced(plan, have[t], clipped))
            if op.kind != "pointwise":
                pads = tuple((clipped[a][0] - need[a][0], need[a][1] - clipped[a][1]) for a in (0, 1))
        out = PatchTensor(op.output, (out_rows, out_cols)[0], (out_rows, out_cols)[1])
        if op.kind == "pad":  # a PAD no convolution absorbed: kept, even where this patch pads nothing
            have[op.output] = plan.step("pad", inputs, out, pads=pads)
            continue
        if op.kind == "conv" and (any(pads[0]) or any(pads[1])):
            src = plan.tensors[inputs[0]]
            padded = PatchTensor(src.source, (src.rows[0] - pads[0][0], src.rows[1] + pads[0][1]),
                                 (src.cols[0] - pads[1][0], src.cols[1] + pads[1][1]))
            inputs[0] = plan.step("pad", [inputs[0]], padded, pads=pads)
        have[op.output] = plan.step("op", inputs, out, op=op)
    return have[cut]


def _sliced(plan: PatchPlan, index: int, region: list[Interval]) -> int:
    """`index` cut down to `region` (a slice step), or itself when it holds exactly that."""
    t = plan.tensors[index]
    rows, cols = region
    if (rows, cols) == (t.rows, t.cols):
        return index
    if rows[0] < t.rows[0] or rows[1] > t.rows[1] or cols[0] < t.cols[0] or cols[1] > t.cols[1]:
        raise NotPatchable(f"a patch of tensor {t.source} holds rows {t.rows} cols {t.cols}, "
                           f"not the {rows} {cols} asked")  # cannot happen: regions are hulls of the needs
    return plan.step("slice", [index], PatchTensor(t.source, tuple(rows), tuple(cols)),
                     begin=(rows[0] - t.rows[0], cols[0] - t.cols[0]))


def fold_pads(prefix: list[LocalOp], consumers: dict[int, list[int]]) -> list[LocalOp]:
    """Each explicit PAD read only by one VALID convolution becomes that convolution's own leading padding
    (the patches pad only at the image's border, where the PAD's zeros are read)."""
    by_output = {op.output: op for op in prefix}
    out, folded = [], set()
    for op in prefix:
        src = by_output.get(op.inputs[0]) if op.kind == "conv" and op.pad == (0, 0) else None
        if src is not None and src.kind == "pad" and len(consumers.get(src.output, [])) == 1:
            op = LocalOp("conv", src.inputs, op.output, op.kernel, op.stride, src.pad, op.ref)
            folded.add(src.output)
        out.append(op)
    return [op for op in out if op.output not in folded]


def consumers_of(ops: Sequence[LocalOp | None], reads: Sequence[Sequence[int]]) -> dict[int, list[int]]:
    """Tensor -> indices of the ops reading it (`reads[i]`: what op i reads, for every op, local or not)."""
    out: dict[int, list[int]] = {}
    for i, inputs in enumerate(reads):
        for t in inputs:
            out.setdefault(t, []).append(i)
    return out
