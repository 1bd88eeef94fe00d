"""TFLite Micro's tensor arena and the .tflite file size of an arch's full-int8 export, predicted without torch.

The analytic peak of `edgenas.cost` counts live activations only; the arena TFLite Micro needs for
the exported model is 2-3x larger. This module predicts that arena from what the int8 graph really
holds, for one arch or (with `MemoryTable`) a whole population at once:

1. **The graph the int8 export writes** (`edgenas.export.tflite_int8`: litert-torch's graph with edgenas's
   full-integer quantizer and float I/O, op for op): a QUANTIZE of the float input (both live at the first
   op), an explicit PAD before every convolution whose PyTorch padding is not TFLite's SAME (a stride-2 convolution on an
   even-sized map), HARD_SWISH as an op of its own (ReLU is fused into the convolution), the
   squeeze-excite gate as MEAN, two 1x1 CONV_2D, RESHAPE, ADD(+3, fused RELU6), MUL(1/6), RESHAPE, MUL,
   residual ADDs, and at the head MEAN, CONV_2D (feature mix), HARD_SWISH, FULLY_CONNECTED, DEQUANTIZE.
2. **The head of the arena** (TFLite Micro's memory planner, `GreedyMemoryPlanner`): every non-constant
   tensor and every kernel scratch buffer (MEAN asks for an int32 accumulator per output channel and
   two index buffers) is a buffer of its size rounded up to 16 bytes, alive from the op that writes it
   to the last op that reads it (the graph input from the start, the output to the end); the planner
   places them largest first, each at the lowest offset where it overlaps no buffer alive at the same
   time. `plan_greedy` is that algorithm; the arena head is its highest end.
3. **The tail** (persistent, allocated once): a fixed part for the allocator's own structs, 24 bytes per
   tensor (TfLiteEvalTensor), 64 per op (NodeAndRegistration), each op's parsed options, each kernel's
   OpData (16-byte aligned), two int32 arrays per output channel of every convolution and the
   fully-connected layer (per-channel multiplier and shift), 8 bytes per scratch-buffer handle, the
   input and output TfLiteTensor structs. Sizes are those of the `tflite-micro` wheel on a 64-bit host
   (read from the kernels' sources and its allocation record).
4. **Flash**: the .tflite file, i.e. every constant buffer (int8 weights, int32 biases, shape and padding
   constants; 16-byte aligned with a 4-byte length), per-channel quantization parameters (a float scale
   and an int64 zero point per channel of every weight and bias, one per activation), each tensor's
   name (the converter names tensors after the PyTorch module path; a mean length per tensor role) and
   the flatbuffer's own tables (a constant per tensor and per op).

The arena is `head + tail` (or the planning-time need, if larger), which is what the export's binary
search measures on this 64-bit host. A 32-bit board allocates less: its pointers are 4 bytes, so
TfLiteEvalTensor is 12 bytes and NodeAndRegistration 32; `board_arena` subtracts only that (other structs
with pointers shrink too, so it stays an upper bound for TFLite Micro's reference kernels; the planned
tensors are the same). A board whose kernels are vendor-optimised (CMSIS-NN) asks for extra scratch
(im2col buffers) that this model does not count: keep the host figure there, or measure on the board.

`MemoryTable` gives the same figures for thousands of archs at once (the search evaluates whole
populations): between MBConv blocks only one tensor is alive, so the head is the largest of the
per-block peaks and the fixed parts' peak, and everything else is a sum over blocks plus the shared
constants (counted once per distinct value). The greedy planner reached that peak of live bytes on
every arch of the built-in spaces tried (8,000 `tiny`, 3,000 `mobilenetv3`); in other spaces it can pack
worse (a `tiny` space at width 0.5 with 100 classes: 20 of 3,000 archs, by up to 8 %), so the per-arch
`predict` runs the planner itself, `MemoryTable.planner_gap` records what a sampled check found, and the
search re-checks archs near its SRAM limit with the planner when that check found a gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgenas.patching import (
    LocalOp,
    NotPatchable,
    PatchPlan,
    PatchTensor,
    _one_patch,
    check_prefix,
    consumers_of,
    fold_pads,
    plan_patches,
    tiles,
)
from edgenas.space import STEM_KERNEL, Arch, SearchSpace, conv_out, mid_channels, se_channels

ALIGNMENT = 16  # MicroArenaBufferAlignment(): every planned buffer and persistent allocation

# Persistent (tail) sizes in bytes on a 64-bit host, tflite-micro built with compression support.
EVAL_TENSOR_BYTES = 24            # sizeof(TfLiteEvalTensor): data and dims pointers, type
NODE_BYTES = 64                   # sizeof(NodeAndRegistration)
PERSISTENT_TENSOR_BYTES = 64      # sizeof(TfLiteTensor) under TF_LITE_STATIC_MEMORY, for the input and output
SCRATCH_HANDLE_BYTES = 8          # sizeof(ScratchBufferHandle)
TAIL_FIXED_BYTES = 508            # SingleArenaBufferAllocator, MicroAllocator, GreedyMemoryPlanner, ...
# Kernel OpData (allocated in Init, 16-byte aligned) and parsed builtin options (allocated before them,
# 4-byte aligned) per op type.
OP_DATA_BYTES = {"STRIDED_SLICE": 96, "CONCATENATION": 48,
                 "CONV_2D": 80, "DEPTHWISE_CONV_2D": 80, "FULLY_CONNECTED": 72, "ADD": 60, "MUL": 36,
                 "MEAN": 44, "PAD": 56, "HARD_SWISH": 20, "QUANTIZE": 32, "DEQUANTIZE": 32, "RESHAPE": 0}
BUILTIN_DATA_BYTES = {"STRIDED_SLICE": 24, "CONCATENATION": 8,
                      "CONV_2D": 28, "DEPTHWISE_CONV_2D": 28, "FULLY_CONNECTED": 16, "ADD": 8, "MUL": 4,
                      "MEAN": 4, "RESHAPE": 36}
# Planning-time scratch: per tensor an AllocationInfo, per planned buffer the greedy planner's records.
ALLOCATION_INFO_BYTES = 32
PLANNER_BYTES_PER_BUFFER = 40
SCRATCH_REQUEST_BYTES = 16
MAX_SCRATCH_PER_OP = 12
# What a 32-bit board saves against the host: 12 bytes per eval tensor, 28 per node (4-byte pointers).
BOARD_SAVING_PER_TENSOR = 12
BOARD_SAVING_PER_OP = 28

# The .tflite flatbuffer besides buffers, names and quantization vectors: bytes per tensor (its table, shape,
# empty quantization and buffer entries), per op (its table, input and output lists, options) and the rest
# (operator codes, signature, metadata). Least squares over 30 files of edgenas's int8 writer
# (`edgenas.export.tflite_int8`; 24 tiny and 6 mobilenetv3 subnets that tools/bench/micro_memory.py does not bench),
# residuals under 160 bytes.
FILE_BYTES_PER_TENSOR = 88
FILE_BYTES_PER_OP = 48
FILE_FIXED_BYTES = 568
QUANT_BYTES_PER_CHANNEL = 12  # float32 scale + int64 zero point
# Mean tensor-name length per role in those files: the writer names a tensor after the layer path of the op
# that makes it ("blocks/3/expand/hswish"), shared constants after what they hold ("mean_axes", "three").
NAME_BYTES = {"input": 22, "input_int8": 27, "output": 31, "const": 5, "conv.w": 23, "conv.b": 21,
              "conv.out": 16, "dw.w": 25, "dw.b": 23, "dw.out": 18, "hswish.out": 22, "pad.out": 21,
              "add.out": 8, "se.mean.out": 16, "se.add.out": 20, "se.mul.out": 22, "se.scale.out": 15,
              "reshape.out": 21, "se.scalar": 7, "mean.out": 4, "fc.w": 17, "fc.b": 15, "fc.out": 36,
              "slice.out": 40, "concat.out": 34, "patch.out": 38}  # the last three: patch-based files' tensors


def align(n, to: int = ALIGNMENT):
    """`n` rounded up to a multiple of `to` (ints or integer arrays)."""
    return -(-n // to) * to


def same_padding(size: int, kernel: int, stride: int) -> bool:
    """Whether PyTorch's symmetric padding (kernel // 2) equals TFLite's SAME padding here; where it does not,
    the converter pads explicitly (a PAD op) and convolves VALID."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total % 2 == 0 and total // 2 == kernel // 2


@dataclass
class MicroOp:
    """One op of the int8 graph: reads tensors `inputs` (activations), writes `output`."""

    kind: str
    inputs: tuple[int, ...]
    output: int
    channels: int = 0        # output channels of a convolution / fully-connected layer, or MEAN's
    weight_bytes: int = 0
    bias: bool = False
    scratch: tuple[int, ...] = ()  # bytes of each scratch buffer the kernel requests in Prepare
    consts: tuple[str, ...] = ()   # keys of shared constants it reads (counted once per distinct key)
    geometry: LocalOp | None = None  # how it reads its inputs in space (for patch-based plans); None: not local
    shared_weights: bool = False   # a patch copy of an op: its weights are the whole op's (not counted again)


@dataclass
class MicroGraph:
    """The int8 TFLite graph of an arch as TFLite Micro loads it: activation tensors and ops in order."""

    sizes: list[int] = field(default_factory=list)   # bytes of each activation tensor, in creation order
    roles: list[str] = field(default_factory=list)   # name role of each activation tensor
    ops: list[MicroOp] = field(default_factory=list)
    graph_input: int | None = None   # the float input (alive from the start)
    graph_output: int | None = None  # the float output (alive to the end)
    shapes: dict[int, tuple[int, int]] = field(default_factory=dict)  # (height, width) of each spatial tensor

    def tensor(self, size: int, role: str, hw: tuple[int, int] | None = None) -> int:
        self.sizes.append(int(size))
        self.roles.append(role)
        if hw is not None:
            self.shapes[len(self.sizes) - 1] = hw
        return len(self.sizes) - 1

    def op(self, kind: str, inputs: Sequence[int], size: int, role: str, *, hw: tuple[int, int] | None = None,
           local: tuple = (), **kw) -> int:
        """Append an op; `local` = (kind, kernel, stride, leading pad) makes it a `LocalOp` for patch plans."""
        out = self.tensor(size, role, hw)
        geometry = None
        if local:
            lk, k, st, p = local
            geometry = LocalOp(lk, tuple(inputs), out, (k, k), (st, st), (p, p), ref=len(self.ops))
        self.ops.append(MicroOp(kind, tuple(inputs), out, geometry=geometry, **kw))
        return out

    # ---- building blocks, as the converter lowers edgenas.nn.static ------------------------------
    def conv(self, x: int, cin: int, cout: int, hw: int, k: int, stride: int, *, depthwise: bool = False,
             act: str | None = None) -> tuple[int, int]:
        lead = 0
        if k > 1 and not same_padding(hw, k, stride):
            p = hw + 2 * (k // 2)
            x = self.op("PAD", [x], cin * p * p, "pad.out", consts=(f"pad{k // 2}",), hw=(p, p),
                        local=("pad", 1, 1, k // 2))
        elif k > 1:
            lead = k // 2  # TFLite's SAME padding, equal to PyTorch's here
        out = conv_out(hw, k, stride)
        kind, role = ("DEPTHWISE_CONV_2D", "dw") if depthwise else ("CONV_2D", "conv")
        weights = cout * k * k * (1 if depthwise else cin)
        y = self.op(kind, [x], cout * out * out, f"{role}.out", channels=cout, weight_bytes=weights, bias=True,
                    hw=(out, out), local=("conv", k, stride, lead))
        if act == "hswish":
            y = self.op("HARD_SWISH", [y], cout * out * out, "hswish.out", hw=(out, out), local=("pointwise", 1, 1, 0))
        return y, out

    def squeeze_excite(self, h: int, mid: int, hw: int) -> int:
        r = se_channels(mid)
        p = self.op("MEAN", [h], mid, "se.mean.out", channels=mid, scratch=(4 * mid, 16, 8), consts=("axis",))
        q = self.op("CONV_2D", [p], r, "conv.out", channels=r, weight_bytes=mid * r, bias=True)
        q = self.op("CONV_2D", [q], mid, "conv.out", channels=mid, weight_bytes=r * mid, bias=True)
        q = self.op("RESHAPE", [q], mid, "reshape.out", consts=(f"shape{mid}a",))
        q = self.op("ADD", [q], mid, "se.add.out", consts=("three",))
        q = self.op("MUL", [q], mid, "se.mul.out", consts=("sixth",))
        q = self.op("RESHAPE", [q], mid, "reshape.out", consts=(f"shape{mid}b",))
        return self.op("MUL", [h, q], mid * hw * hw, "se.scale.out")

    def mbconv(self, x: int, cin: int, cout: int, hw: int, k: int, expand: int, stride: int, act: str, se: bool,
               residual: bool, has_expand: bool = True) -> tuple[int, int]:
        h, mid = x, cin
        if has_expand:
            mid = mid_channels(cin, expand)
            h, _ = self.conv(h, cin, mid, hw, 1, 1, act=act)
        h, out = self.conv(h, mid, mid, hw, k, stride, depthwise=True, act=act)
        if se:
            h = self.squeeze_excite(h, mid, out)
        h, out = self.conv(h, mid, cout, out, 1, 1)
        if residual:
            h = self.op("ADD", [x, h], cout * out * out, "add.out", hw=(out, out), local=("pointwise", 1, 1, 0))
        return h, out


def _stem(g: MicroGraph, space: SearchSpace, resolution: int, int8_io: bool = False,
          normalised_input: bool = False, width: float = 1.0) -> tuple[int, int]:
    """QUANTIZE (unless `int8_io`), (the per-channel normalisation,) stem and the fixed first block at an arch's
    `width`: (output tensor, its spatial size)."""
    hw = resolution
    if int8_io:
        x = g.graph_input = g.tensor(space.in_channels * hw * hw, "input_int8", (hw, hw))
    else:
        float_in = g.tensor(4 * space.in_channels * hw * hw, "input", (hw, hw))
        g.graph_input = float_in
        x = g.op("QUANTIZE", [float_in], space.in_channels * hw * hw, "input_int8", hw=(hw, hw),
                 local=("pointwise", 1, 1, 0))
    if normalised_input:  # edgenas.export.contract.NormalisedInput: a depthwise 1x1 convolution before the stem
        x, _ = g.conv(x, space.in_channels, space.in_channels, hw, 1, 1, depthwise=True)
    first = space.first_block_at(width)
    h, hw = g.conv(x, space.in_channels, first.in_channels, hw, STEM_KERNEL, space.stem_stride, act="hswish")
    return g.mbconv(h, first.in_channels, first.out_channels, hw, 3, 1, first.stride, first.act, first.se,
                    first.residual, has_expand=False)


def _head(g: MicroGraph, space: SearchSpace, h: int, cin: int, hw: int, int8_io: bool = False) -> None:
    final = space.scaled(space.final_expand_width)
    h, hw = g.conv(h, cin, final, hw, 1, 1, act="hswish")
    h = g.op("MEAN", [h], final, "mean.out", channels=final, scratch=(4 * final, 16, 8), consts=("axis",))
    feature = space.scaled(space.feature_width)
    h, _ = g.conv(h, final, feature, 1, 1, 1, act="hswish")
    h = g.op("FULLY_CONNECTED", [h], space.num_classes, "fc.out", channels=space.num_classes,
             weight_bytes=feature * space.num_classes, bias=True)
    g.graph_output = h if int8_io else g.op("DEQUANTIZE", [h], 4 * space.num_classes, "output")


def micro_graph(space: SearchSpace, arch: Arch, int8_io: bool = False, normalised_input: bool = False) -> MicroGraph:
    """The int8 graph (float I/O, or int8 I/O with `int8_io`) that `edgenas export` writes for `arch`, as
    TFLite Micro sees it; with `normalised_input`, the per-channel normalisation a shipped RGB model applies inside
    (`NormalisedInput`)."""
    space.validate(arch)
    g = MicroGraph()
    h, hw = _stem(g, space, arch.resolution, int8_io, normalised_input, arch.width)
    cin = space.first_block_at(arch.width).out_channels
    slots = {(b.stage, b.index): b for b in space.block_slots(arch.width)}
    for s in range(space.num_stages):
        for j, (k, e) in enumerate(arch.stage_blocks(s)):
            b = slots[(s, j)]
            h, hw = g.mbconv(h, b.in_channels, b.out_channels, hw, k, e, b.stride, b.act, b.se, b.residual)
            cin = b.out_channels
    _head(g, space, h, cin, hw, int8_io)
    return g


# ---- the arena head: TFLite Micro's memory planner --------------------------------------------------

def planner_buffers(g: MicroGraph) -> list[tuple[int, int, int]]:
    """(aligned bytes, first use, last use) of every buffer the planner places, in TFLite Micro's order:
    tensors first (file order: the int8 input, activations, the float input and output), then scratch
    buffers in request order. Op i runs at time i + 1; the graph input exists at time 0."""
    n = len(g.sizes)
    first, last = [-1] * n, [-1] * n
    if g.graph_input is not None:
        first[g.graph_input] = last[g.graph_input] = 0
    scratch = []
    for i, op in enumerate(g.ops):
        t = i + 1
        for j in op.inputs:
            last[j] = t
        if first[op.output] < 0:
            first[op.output] = t
        last[op.output] = max(last[op.output], t)
        scratch.extend((align(b), t, t) for b in op.scratch)
    if g.graph_output is not None:
        last[g.graph_output] = len(g.ops)
    # File order puts the float input and output (added by edgenas's float-I/O pass) after every other tensor.
    order = [i for i in range(n) if i not in (g.graph_input, g.graph_output)]
    order += [i for i in (g.graph_input, g.graph_output) if i is not None]
    return [(align(g.sizes[i]), first[i], last[i]) for i in order if g.sizes[i] > 0] + scratch


def plan_greedy(buffers: Sequence[tuple[int, int, int]]) -> tuple[int, list[int]]:
    """TFLite Micro's GreedyMemoryPlanner: buffers sorted by size (largest first, stable), each placed at the
    lowest offset where it overlaps no placed buffer alive at the same time. Returns (arena head, offsets)."""
    order = sorted(range(len(buffers)), key=lambda i: -buffers[i][0])
    offsets = [0] * len(buffers)
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last), kept sorted by offset
    for i in order:
        size, first, last = buffers[i]
        candidate = 0
        for offset, end, f, lst in placed:
            if f > last or first > lst:
                continue
            if offset - candidate >= size:
                break
            candidate = max(candidate, end)
        offsets[i] = candidate
        k = len(placed)
        while k > 0 and placed[k - 1][0] > candidate:
            k -= 1
        placed.insert(k, (candidate, candidate + size, first, last))
    return max((end for _, end, _, _ in placed), default=0), offsets


def live_peak(buffers: Sequence[tuple[int, int, int]]) -> int:
    """The most bytes alive at once: a lower bound of any plan, which the greedy planner reaches on these graphs."""
    if not buffers:
        return 0
    horizon = max(last for _, _, last in buffers) + 2
    delta = np.zeros(horizon, dtype=np.int64)
    for size, first, last in buffers:
        delta[first] += size
        delta[last + 1] -= size
    return int(np.cumsum(delta).max())


# ---- the arena tail and the file --------------------------------------------------------------------

@dataclass(frozen=True)
class Counts:
    """Sums over a graph (or a part of one) that the tail and the file size are linear in."""

    tensors: int = 0       # activation and per-op constant tensors (weights, biases); shared constants apart
    ops: int = 0
    builtin: int = 0       # parsed op options
    op_data: int = 0       # kernel OpData, aligned
    per_channel: int = 0   # per-channel multiplier and shift arrays, aligned
    scratch: int = 0       # scratch buffers requested
    buffer_bytes: int = 0  # constant buffers in the file, aligned, with their length prefix
    quant: int = 0         # quantization channels in the file (weights, biases, activations)
    names: int = 0         # tensor-name bytes in the file

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(self.values(), other.values())))

    def values(self) -> tuple[int, ...]:
        return (self.tensors, self.ops, self.builtin, self.op_data, self.per_channel, self.scratch,
                self.buffer_bytes, self.quant, self.names)


def _buffer(nbytes: int) -> int:
    return align(nbytes + 4)


def count_ops(g: MicroGraph, ops: Sequence[MicroOp]) -> Counts:
    """Tail and file sums of `ops` (each op's output tensor and its own weights and biases)."""
    c = Counts()
    for op in ops:
        role = g.roles[op.output]
        tensors, quant = 1, 1 if op.kind != "DEQUANTIZE" else 0
        names = NAME_BYTES[role]
        buffer_bytes = per_channel = 0
        if op.weight_bytes and op.shared_weights:  # a patch copy: its own per-channel arrays, the whole op's weights
            per_channel = 2 * align(4 * op.channels)
        elif op.weight_bytes:
            prefix = "fc" if op.kind == "FULLY_CONNECTED" else role.split(".")[0]
            tensors += 2
            quant += 2 * op.channels
            names += NAME_BYTES[f"{prefix}.w"] + NAME_BYTES[f"{prefix}.b"]
            buffer_bytes = _buffer(op.weight_bytes) + _buffer(4 * op.channels)
            per_channel = 2 * align(4 * op.channels)
        c = c + Counts(tensors, 1, BUILTIN_DATA_BYTES.get(op.kind, 0), align(OP_DATA_BYTES[op.kind]), per_channel,
                       len(op.scratch), buffer_bytes, quant, names)
    return c


# Shared constants: (tensors, file buffer bytes, quantization channels, name bytes) per distinct key.
def _shared_constant(key: str) -> Counts:
    if key == "axis":
        nbytes, quant, name = 8, 0, NAME_BYTES["const"]
    elif key.startswith("border"):  # a patch's border PAD amounts: int32 [4, 2]
        nbytes, quant, name = 32, 0, len("patch_paddings")
    elif key.startswith("pad"):
        nbytes, quant, name = 32, 0, NAME_BYTES["const"]
    elif key.startswith("shape") or key.startswith("slice"):
        nbytes, quant, name = 16, 0, NAME_BYTES["const"] if key.startswith("shape") else len("patch_begin")

    else:  # the hard-sigmoid's int8 scalars
        nbytes, quant, name = 1, 1, NAME_BYTES["se.scalar"]
    return Counts(tensors=1, buffer_bytes=_buffer(nbytes), quant=quant, names=name)


def _graph_input_counts() -> Counts:
    """The float input tensor (no op writes it, so `count_ops` does not see it)."""
    return Counts(tensors=1, names=NAME_BYTES["input"])


def shared_constants(g: MicroGraph) -> list[str]:
    return sorted({key for op in g.ops for key in op.consts})


def tail_bytes(c: Counts) -> int:
    """The arena tail: allocator structs, eval tensors and nodes with the parsed options (one alignment),
    then 16-byte aligned OpData and per-channel arrays, scratch handles, the I/O pointer arrays and tensors."""
    head_part = align(TAIL_FIXED_BYTES + EVAL_TENSOR_BYTES * c.tensors + NODE_BYTES * c.ops + c.builtin)
    return (head_part + c.op_data + c.per_channel + align(SCRATCH_HANDLE_BYTES * c.scratch)
            + 2 * ALIGNMENT + 2 * PERSISTENT_TENSOR_BYTES)


def planning_bytes(c: Counts, planned: int) -> int:
    """Temporary memory while the plan is made (AllocationInfo per tensor and scratch buffer, the planner's
    records per planned buffer, the scratch requests): the arena must also hold this beside the tail."""
    return (align(SCRATCH_REQUEST_BYTES * (c.scratch + MAX_SCRATCH_PER_OP))
            + align(ALLOCATION_INFO_BYTES * (c.tensors + c.scratch)) + PLANNER_BYTES_PER_BUFFER * planned)


def file_bytes(c: Counts) -> int:
    """The .tflite file: buffers, quantization vectors, names and the flatbuffer's tables."""
    return (c.buffer_bytes + QUANT_BYTES_PER_CHANNEL * c.quant + c.names + FILE_BYTES_PER_TENSOR * c.tensors
            + FILE_BYTES_PER_OP * c.ops + FILE_FIXED_BYTES)


@dataclass(frozen=True)
class MemoryPrediction:
    """Predicted TFLite Micro arena (64-bit host) and .tflite size of one arch, in bytes."""

    arena: int
    head: int
    tail: int
    flash: int
    tensors: int
    ops: int

    @property
    def board_arena(self) -> int:
        return board_arena(self.arena, self.tensors, self.ops)

    def to_dict(self) -> dict[str, int]:
        return {"arena_bytes": self.arena, "head_bytes": self.head, "tail_bytes": self.tail,
                "flash_bytes": self.flash, "board_arena_bytes": self.board_arena}


def board_arena(host_arena: int | np.ndarray, tensors: int | np.ndarray, ops: int | np.ndarray):
    """The arena on a 32-bit board with TFLite Micro's reference kernels, conservatively: the host's less the
    pointer bytes that surely go (TfLiteEvalTensor 24 -> 12 bytes, NodeAndRegistration 64 -> 32). Optimised
    kernels (CMSIS-NN) may ask for more scratch than this saves: budget those boards with the host figure."""
    return host_arena - BOARD_SAVING_PER_TENSOR * tensors - BOARD_SAVING_PER_OP * ops


def ships_normalised(space: SearchSpace) -> bool:
    """Whether the files of `space`'s subnets carry the per-channel normalisation in front
    (`export.contract.NormalisedInput`), as a search judges them before any dataset is loaded: every colour
    dataset edgenas trains on has channels whose statistics differ (computed from the images for the sets held in
    memory, ImageNet's for folders), a grey one has one channel. The deploy stage checks the guess against each
    file's input contract (`deploy.mcu_deploy.finish_candidate`)."""
    return space.in_channels > 1


def predict(space: SearchSpace, arch: Arch, normalised_input: bool = False) -> MemoryPrediction:
    """The arena (the greedy planner run on the arch's graph) and the file size of one arch (`normalised_input`:
    see `micro_graph`)."""
    return graph_prediction(micro_graph(space, arch, normalised_input=normalised_input))


# How far a board's SRAM may fall short of the predicted 32-bit arena before "does not fit" is said without
# converting and measuring: `board_arena` removes only the pointer bytes that surely go, and other structs shrink
# a little more on a 32-bit board (the tail is a few KiB of hundreds); the planned tensors (the head) are the
# same on every board, so a head over the SRAM never fits.
FIT_MARGIN = 0.10


def board_fit(prediction: MemoryPrediction, sram_bytes: float) -> bool | None:
    """Whether an arch's int8 model fits a board's SRAM, from the predicted arena alone: False when it clearly
    does not (its planned tensors alone exceed the SRAM, or its 32-bit arena exceeds it by more than FIT_MARGIN),
    True when the host arena (an upper bound for reference kernels) fits, None in between (convert and check it
    in TFLite Micro). Optimised kernels (CMSIS-NN) add scratch that no prediction here counts."""
    if prediction.head > sram_bytes or prediction.board_arena > (1 + FIT_MARGIN) * sram_bytes:
        return False
    if prediction.arena <= sram_bytes:
        return True
    return None


def predict_arena(space: SearchSpace, arch: Arch) -> int:
    """`predict(space, arch).arena`: the TFLite Micro arena of one arch on a 64-bit host, in bytes."""
    return predict(space, arch).arena


# ---- batched: whole populations ---------------------------------------------------------------------

class MemoryTable:
    """Predicted arena and flash for many archs of one space (the search's constraint), from per-block tables.

    Per resolution and per block slot, kernel and expand ratio, a block's peak of live planned bytes, its
    Counts and the shared constants it reads are tabulated once; `compute(archs)` gathers them: the head is
    the largest peak (between blocks only one tensor is alive), the rest are sums, and a shared constant
    counts once per arch. Agrees with `predict` wherever the greedy planner packs to the live peak.
    """

    COUNT_FIELDS = len(Counts().values())

    def __init__(self, space: SearchSpace, *, check_archs: int = 48, seed: int = 0) -> None:
        self.space = space
        nr, nslot, nk, ne = len(space.variants), space.max_blocks, len(space.kernels), len(space.expands)
        self.block_peak = np.zeros((nr, nslot, nk, ne), dtype=np.int64)
        self.block_buffers = np.zeros((nr, nslot, nk, ne), dtype=np.int64)
        self.block_counts = np.zeros((self.COUNT_FIELDS, nr, nslot, nk, ne), dtype=np.int64)
        self.fixed_peak = np.zeros(nr, dtype=np.int64)
        self.fixed_buffers = np.zeros(nr, dtype=np.int64)
        self.fixed_counts = np.zeros((self.COUNT_FIELDS, nr), dtype=np.int64)
        keys: dict[str, int] = {}
        block_keys: dict[tuple[int, int, int, int], list[str]] = {}
        fixed_keys: dict[int, list[str]] = {}
        for ri, (width, res) in enumerate(space.variants):
            slots = space.block_slots(width)  # the wiring of every block, as the space describes it
            stem = MicroGraph()
            first_out, _ = _stem(stem, space, res, width=width)
            stem.graph_output = first_out  # alive until the first elastic block reads it
            sizes = space.feature_sizes(res)
            last = slots[-1].out_channels
            head = MicroGraph()
            head.graph_input = head.tensor(last * sizes.head ** 2, "add.out")  # the last block's output
            _head(head, space, head.graph_input, last, sizes.head)
            stem_buffers, head_buffers = planner_buffers(stem), planner_buffers(head)
            self.fixed_peak[ri] = max(live_peak(stem_buffers), live_peak(head_buffers))
            self.fixed_buffers[ri] = len(stem_buffers) + len(head_buffers) - 1
            counts = count_ops(stem, stem.ops) + count_ops(head, head.ops) + _graph_input_counts()
            self.fixed_counts[:, ri] = counts.values()
            fixed_keys[ri] = sorted(set(shared_constants(stem)) | set(shared_constants(head)))
            for slot, bs in enumerate(slots):
                hw = sizes.slot_in[slot]
                for ki, k in enumerate(space.kernels):
                    for ei, e in enumerate(space.expands):
                        b = MicroGraph()
                        b.graph_input = b.tensor(bs.in_channels * hw ** 2, "add.out")
                        b.graph_output, _ = b.mbconv(b.graph_input, bs.in_channels, bs.out_channels, hw, k, e,
                                                     bs.stride, bs.act, bs.se, bs.residual)
                        buffers = planner_buffers(b)
                        self.block_peak[ri, slot, ki, ei] = live_peak(buffers)
                        self.block_buffers[ri, slot, ki, ei] = len(buffers) - 1  # its input is counted before
                        self.block_counts[:, ri, slot, ki, ei] = count_ops(b, b.ops).values()
                        block_keys[(ri, slot, ki, ei)] = shared_constants(b)
        for names in list(block_keys.values()) + list(fixed_keys.values()):
            for key in names:
                keys.setdefault(key, len(keys))
        self.constant_keys = list(keys)
        self.constant_counts = np.array([_shared_constant(k).values() for k in self.constant_keys],
                                        dtype=np.int64).reshape(len(keys), self.COUNT_FIELDS)
        self.block_uses = np.zeros((nr, nslot, nk, ne, len(keys)), dtype=bool)
        for (ri, slot, ki, ei), names in block_keys.items():
            self.block_uses[ri, slot, ki, ei, [keys[k] for k in names]] = True
        self.fixed_uses = np.zeros((nr, len(keys)), dtype=bool)
        for ri, names in fixed_keys.items():
            self.fixed_uses[ri, [keys[k] for k in names]] = True
        self.planner_gap = self._check(check_archs, seed) if check_archs else None

    def _check(self, n: int, seed: int) -> float:
        """Largest relative shortfall of the table's head against the real greedy planner over `n` random archs."""
        archs = self.space.sample_many(np.random.default_rng(seed), n)
        table = self.compute(archs)["head"]
        exact = np.array([predict(self.space, a).head for a in archs], dtype=np.float64)
        return float(max(0.0, (exact / table - 1.0).max()))

    def indices(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Resolution, kernel and expand indices and the active-slot mask (`SearchSpace.choice_indices`)."""
        return self.space.choice_indices(list(archs))

    def compute(self, archs: Sequence[Arch]) -> dict[str, np.ndarray]:
        """Predicted `arena`, `head`, `tail`, `flash`, `board_arena` (bytes, int64 arrays) of every arch."""
        return self.from_indices(*self.indices(archs))

    def from_indices(self, ri: np.ndarray, ki: np.ndarray, ei: np.ndarray, active: np.ndarray) -> dict[str, np.ndarray]:
        """`compute` on archs given as index arrays (see `edgenas.cost.StatsTable.indices`)."""
        slots = np.arange(self.block_peak.shape[1])[None, :]
        peak = np.where(active, self.block_peak[ri[:, None], slots, ki, ei], 0)
        head = np.maximum(peak.max(axis=1), self.fixed_peak[ri])
        planned = np.where(active, self.block_buffers[ri[:, None], slots, ki, ei], 0).sum(axis=1) + self.fixed_buffers[ri]
        counts = np.where(active[None], self.block_counts[:, ri[:, None], slots, ki, ei], 0).sum(axis=2)
        counts = counts + self.fixed_counts[:, ri]
        uses = np.any(self.block_uses[ri[:, None], slots, ki, ei] & active[:, :, None], axis=1) | self.fixed_uses[ri]
        counts = counts + (uses.astype(np.int64) @ self.constant_counts).T
        c = Counts(*counts)
        tail = tail_bytes(c)
        arena = np.maximum(head, planning_bytes(c, planned)) + tail
        flash = file_bytes(c)
        return {"arena": arena, "head": head, "tail": tail, "flash": flash,
                "board_arena": board_arena(arena, c.tensors, c.ops)}


def memory_table(space: SearchSpace) -> MemoryTable:
    """The (cached) MemoryTable of a space."""
    table = space._cache.get("memory_table")
    if table is None:
        table = space._cache["memory_table"] = MemoryTable(space)
    return table


# ---- patch-based inference (MCUNetV2): the first ops on N x N patches ------------------------------------

def patch_cuts(g: MicroGraph) -> list[int]:
    """Op counts at which `g`'s leading ops can run patch by patch (all spatially local, one tensor handed on)."""
    local = [op.geometry for op in g.ops]
    consumers = consumers_of(local, [op.inputs for op in g.ops])
    out = []
    for count in range(1, len(local)):
        if local[count - 1] is None:
            break
        try:
            check_prefix(local, count, consumers, [g.graph_output])
        except NotPatchable:
            continue
        out.append(count)
    return out


def patch_plan(g: MicroGraph, count: int, n: int) -> PatchPlan:
    """The patch schedule of `g`'s first `count` ops on `n` x `n` patches (`edgenas.patching.plan_patches`)."""
    local = [op.geometry for op in g.ops]
    return plan_patches(local, count, g.shapes, n, consumers_of(local, [op.inputs for op in g.ops]),
                        [g.graph_output])


def patched_graph(g: MicroGraph, count: int, n: int) -> MicroGraph:
    """`g` with its first `count` ops run on `n` x `n` patches, as `edgenas.export.patches` writes it: slices,
    border pads, copies of the ops (the first copy of each counts its weights, the others share them),
    concatenations, then the rest of `g` unchanged."""
    plan = patch_plan(g, count, n)
    pg = MicroGraph()
    index: dict[int, int] = {}   # plan tensor -> pg tensor
    whole: dict[int, int] = {}   # g tensor -> pg tensor
    if g.graph_input is not None:
        whole[g.graph_input] = pg.tensor(g.sizes[g.graph_input], g.roles[g.graph_input])
        pg.graph_input = whole[g.graph_input]
    for pi, pt in enumerate(plan.tensors):
        if pt.original and pt.source in whole:
            index[pi] = whole[pt.source]
    copied: set[int] = set()
    for step in plan.steps:
        pt = plan.tensors[step.output]
        h, w = g.shapes[pt.source]
        size = g.sizes[pt.source] // (h * w) * pt.height * pt.width
        ins = [index[i] for i in step.inputs]
        if step.kind == "slice":
            channels = g.sizes[pt.source] // (h * w)
            begin = (0, step.begin[0], step.begin[1], 0)
            end = (1, step.begin[0] + pt.height, step.begin[1] + pt.width, channels)
            out = pg.op("STRIDED_SLICE", ins, size, "slice.out", consts=(f"slice{begin}", f"slice{end}", "slice1"))
        elif step.kind == "pad":
            out = pg.op("PAD", ins, size, "pad.out", consts=(f"border{step.pads}",))
        elif step.kind == "concat":
            out = pg.op("CONCATENATION", ins, size, "concat.out")
        else:
            op = g.ops[step.op.ref]
            role = "patch.out" if step.op.ref in copied else g.roles[op.output]
            out = pg.op(op.kind, ins, size, role, channels=op.channels, weight_bytes=op.weight_bytes,
                        bias=op.bias, scratch=op.scratch, shared_weights=step.op.ref in copied)
            copied.add(step.op.ref)
        index[step.output] = out
        if pt.original:
            whole[pt.source] = out
    for op in g.ops[count:]:
        ins = [whole[t] for t in op.inputs]
        whole[op.output] = pg.op(op.kind, ins, g.sizes[op.output], g.roles[op.output], channels=op.channels,
                                 weight_bytes=op.weight_bytes, bias=op.bias, scratch=op.scratch, consts=op.consts)
    pg.graph_output = whole[g.graph_output]
    return pg


def graph_prediction(g: MicroGraph) -> MemoryPrediction:
    """Arena (the greedy planner on `g`) and file size of a MicroGraph."""
    buffers = planner_buffers(g)
    head, _ = plan_greedy(buffers)
    counts = count_ops(g, g.ops) + _graph_input_counts()
    for key in shared_constants(g):
        counts = counts + _shared_constant(key)
    tail = tail_bytes(counts)
    arena = max(head, planning_bytes(counts, len(buffers))) + tail
    return MemoryPrediction(arena, head, tail, file_bytes(counts), counts.tensors, counts.ops)


@dataclass(frozen=True)
class PatchChoice:
    """A patch-based schedule of an arch: `n` x `n` patches over its first `ops` ops (ending after `stage`), and
    the predicted memory of the file."""

    n: int
    ops: int
    prediction: MemoryPrediction

    def to_dict(self) -> dict:
        return {"patches": self.n, "patch_ops": self.ops, **self.prediction.to_dict()}


PATCH_COUNTS = (2, 3, 4)


def block_cuts(space: SearchSpace, arch: Arch, int8_io: bool = True, normalised_input: bool = False) -> list[int]:
    """The op counts that end a block (the cuts worth trying: a block's output is its narrowest map)."""
    g = micro_graph(space, arch, int8_io, normalised_input)
    valid = set(patch_cuts(g))
    return sorted(i + 1 for i, op in enumerate(g.ops) if i + 1 in valid and op.kind in ("ADD", "CONV_2D")
                  and _ends_block(g, i))


def _ends_block(g: MicroGraph, i: int) -> bool:
    """Op i writes a block's output: a residual ADD, or a 1x1 projection no ADD follows."""
    op = g.ops[i]
    if op.kind == "ADD":
        return True
    nxt = g.ops[i + 1] if i + 1 < len(g.ops) else None
    return (op.geometry is not None and op.geometry.kernel == (1, 1) and not (nxt and nxt.kind == "ADD")
            and nxt is not None and nxt.kind == "CONV_2D" and nxt.geometry is not None
            and nxt.geometry.kernel == (1, 1))


def predict_patched(space: SearchSpace, arch: Arch, n: int | None = None, ops: int | None = None,
                    int8_io: bool = True, normalised_input: bool = False) -> PatchChoice:
    """The patch-based schedule with the smallest predicted arena: `n` x `n` patches (None: 2, 3 or 4) ending after
    `ops` ops (None: the block end that needs least). `ops` counts the ops of the file's graph: with
    `normalised_input`, the per-channel normalisation (`NormalisedInput`) is its first op after the input."""
    g = micro_graph(space, arch, int8_io, normalised_input)
    counts = [ops] if ops is not None else block_cuts(space, arch, int8_io, normalised_input)
    best = None
    for c in counts:
        for k in ([n] if n is not None else PATCH_COUNTS):
            try:
                pred = graph_prediction(patched_graph(g, c, k))
            except ValueError:
                continue
            if best is None or pred.arena < best.prediction.arena:
                best = PatchChoice(k, c, pred)
    if best is None:
        raise ValueError(f"arch {arch} has no patch-based schedule" + (f" with {n} x {n} patches" if n else ""))
    return best


def _op_counts(g: MicroGraph) -> np.ndarray:
    """Counts of each op of `g` (one row per op), for sums over suffixes."""
    return np.array([count_ops(g, [op]).values() for op in g.ops], dtype=np.int64).reshape(len(g.ops), -1)


_PATCH_PART_CACHE: dict[tuple, tuple] = {}


def _patch_part(g: MicroGraph, count: int, n: int) -> tuple[int, int, np.ndarray, int]:
    """The part of `quick_patched_arena` that depends on the first `count` ops only: the patch part's live peak
    (graph input, the middle patch's live maps, the outputs made so far), the cut tensor's bytes, one patch's
    Counts and its step count."""
    local = [op.geometry for op in g.ops]
    consumers = consumers_of(local, [op.inputs for op in g.ops])
    cut = check_prefix(local, count, consumers, [g.graph_output])
    prefix = fold_pads(list(local[:count]), consumers)
    height, width = g.shapes[cut]
    if n < 2 or n > min(height, width):
        raise ValueError(f"{n} x {n} patches of a {height} x {width} map")
    plan = PatchPlan(n, cut, count)
    sources = sorted({t for op in prefix for t in op.inputs} - {op.output for op in prefix})
    whole = {t: plan.tensor(PatchTensor(t, (0, g.shapes[t][0]), (0, g.shapes[t][1]), original=True)) for t in sources}
    mid = n // 2
    _one_patch(plan, prefix, g.shapes, whole, cut, tiles(height, n)[mid], tiles(width, n)[mid])
    sizes, last = [], []
    for i, step in enumerate(plan.steps):
        pt = plan.tensors[step.output]
        h, w = g.shapes[pt.source]
        sizes.append(align(g.sizes[pt.source] // (h * w) * pt.height * pt.width))
        last.append(i)
        for j in step.inputs:
            if j >= len(whole):
                last[j - len(whole)] = i
    cut_bytes = align(g.sizes[cut])
    patch_head = sum(align(g.sizes[t]) for t in sources) + live_peak(
        [(size, i, lst) for i, (size, lst) in enumerate(zip(sizes, last))]) + cut_bytes
    copies = [MicroOp(g.ops[st.op.ref].kind, (), 0, channels=g.ops[st.op.ref].channels,
                      weight_bytes=g.ops[st.op.ref].weight_bytes, shared_weights=True,
                      scratch=g.ops[st.op.ref].scratch) for st in plan.steps if st.kind == "op"]
    per_patch = np.array((count_ops(g, copies) + Counts(tensors=len(plan.steps),
                                                         ops=len(plan.steps) - len(copies))).values())
    return patch_head, cut_bytes, per_patch, len(plan.steps)


def quick_patched_arena(g: MicroGraph, count: int, n: int, *, op_counts: np.ndarray | None = None,
                        whole_buffers: list | None = None) -> int:
    """A fast estimate of `graph_prediction(patched_graph(g, count, n)).arena` for ranking schedules in a search:
    only the middle patch is planned (its halo is the widest; the result is cached per first `count` ops); the
    head is the larger of the patch part's live peak and the rest of the graph's; the tail counts that patch's
    ops n*n times. It came out 0-15 % under the exact figure on random mcunet archs: a search decides
    feasibility with `graph_prediction` where this estimate is under the limit."""
    key = (n, count, g.sizes[g.graph_input] if g.graph_input is not None else 0,
           tuple((op.kind, op.channels, op.weight_bytes, op.inputs, op.output, g.sizes[op.output],
                  op.geometry and (op.geometry.kind, op.geometry.kernel, op.geometry.stride, op.geometry.pad))
                 for op in g.ops[:count]))
    part = _PATCH_PART_CACHE.get(key)
    if part is None:
        part = _patch_part(g, count, n)
        if len(_PATCH_PART_CACHE) > 50_000:
            _PATCH_PART_CACHE.clear()
        _PATCH_PART_CACHE[key] = part
    patch_head, cut_bytes, per_patch, steps = part
    whole_buffers = planner_buffers(g) if whole_buffers is None else whole_buffers
    rest = [(size, max(f, count + 1), lst) for size, f, lst in whole_buffers if lst > count]
    head = max(patch_head, 2 * cut_bytes, live_peak(rest))
    op_counts = _op_counts(g) if op_counts is None else op_counts
    concat = np.array(Counts(tensors=n + 1, ops=n + 1, op_data=(n + 1) * align(OP_DATA_BYTES["CONCATENATION"])).values())
    total = op_counts[count:].sum(axis=0) + np.array(_graph_input_counts().values()) + n * n * per_patch + concat
    counts = Counts(*(int(v) for v in total))
    tail = tail_bytes(counts)
    return int(max(head, planning_bytes(counts, len(whole_buffers) + n * n * steps)) + tail)


def quick_patch_choice(space: SearchSpace, arch: Arch, n: int | None = None, int8_io: bool = True,
                       max_fraction: float = 0.5, normalised_input: bool = False) -> tuple[int, int, int]:
    """(estimated arena, ops, n) of the best schedule by `quick_patched_arena`, over the block ends in the first
    `max_fraction` of the graph's ops (later cuts have wide halos and hundreds of op copies) and n = 2, 3, 4."""
    g = micro_graph(space, arch, int8_io, normalised_input)
    limit = max_fraction * len(g.ops)
    cuts = [i + 1 for i, op in enumerate(g.ops) if i + 1 <= limit and op.kind in ("ADD", "CONV_2D") and _ends_block(g, i)]
    op_counts, whole_buffers = _op_counts(g), planner_buffers(g)
    best = None
    for c in cuts:
        for k in ([n] if n is not None else PATCH_COUNTS):
            try:
                est = quick_patched_arena(g, c, k, op_counts=op_counts, whole_buffers=whole_buffers)
            except ValueError:
                continue
            if best is None or est < best[0]:
                best = (est, c, k)
    if best is None:
        raise ValueError(f"arch {arch} has no patch-based schedule")
    return best
