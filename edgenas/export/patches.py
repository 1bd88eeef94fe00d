"""Patch-based inference written into a .tflite file of stock TFLite Micro operators (STRIDED_SLICE, PAD, the
model's own CONV_2D / DEPTHWISE_CONV_2D / ADD / ..., CONCATENATION), from an int8 (or any) TFLite file.

`patch_tflite(data, ops, n)` rewrites the first `ops` operators of the file to run on `n` x `n` patches
(`edgenas.patching` plans the slices, border pads and halos). Every patch op reuses the whole model's weights,
biases and quantization (the patch tensors copy the quantization of the whole-map tensor they are part of),
so the patch-based file computes exactly the whole file's integers: its int8 outputs are bit-identical.
The rest of the graph is untouched; tensors and buffers only the replaced ops used are dropped.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from edgenas.errors import require
from edgenas.patching import LocalOp, NotPatchable, PatchPlan, check_prefix, consumers_of, plan_patches

_POINTWISE = ("QUANTIZE", "DEQUANTIZE", "HARD_SWISH", "RELU", "RELU6", "RELU_N1_TO_1", "LOGISTIC", "TANH")
_BINARY = ("ADD", "MUL", "SUB")
# Operator versions for int8 tensors (the TFLite interpreter checks them; TFLite Micro reads any).
_VERSIONS = {"STRIDED_SLICE": 2, "CONCATENATION": 2, "PAD": 2}


def _schema():
    return require("ai_edge_litert.schema_py_generated", extra="tflite", purpose="writing TFLite files")


def _builtin(model: Any, op: Any) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


class _File:
    """A parsed .tflite file's first subgraph, with its ops described as `LocalOp`s."""

    def __init__(self, data: bytes) -> None:
        s = self.s = _schema()
        self.model = s.ModelT.InitFromPackedBuf(bytearray(data), 0)
        self.graph = self.model.subgraphs[0]
        names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
        self.kinds = [names.get(_builtin(self.model, op), "?") for op in self.graph.operators]
        self.local: list[LocalOp | None] = []
        self.reads: list[list[int]] = []
        for i, op in enumerate(self.graph.operators):
            acts = [t for t in op.inputs if t >= 0 and not self.is_const(t)]
            self.reads.append(acts)
            self.local.append(self._local(i, op, acts))

    def is_const(self, t: int) -> bool:
        buf = self.model.buffers[self.graph.tensors[t].buffer]
        return buf is not None and buf.data is not None and len(buf.data) > 0

    def shape(self, t: int) -> list[int]:
        return [int(v) for v in self.graph.tensors[t].shape]

    def const(self, t: int) -> np.ndarray:
        tensor = self.graph.tensors[t]
        dtype = {2: np.int32, 4: np.int64}.get(tensor.type, np.int32)
        return np.frombuffer(bytes(self.model.buffers[tensor.buffer].data), dtype=dtype).reshape(self.shape(t))

    def _local(self, i: int, op: Any, acts: list[int]) -> LocalOp | None:
        kind = self.kinds[i]
        out = op.outputs[0]
        if len(op.outputs) != 1 or len(self.shape(out)) != 4 or any(len(self.shape(t)) != 4 for t in acts):
            return None
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            o = op.builtinOptions
            if o.dilationHFactor not in (0, 1) or o.dilationWFactor not in (0, 1):
                return None
            kh, kw = self.shape(op.inputs[1])[1:3]
            stride = (o.strideH, o.strideW)
            pad = (0, 0)
            if o.padding == self.s.Padding.SAME:
                size, out_size = self.shape(op.inputs[0])[1:3], self.shape(out)[1:3]
                pad = tuple(max((out_size[a] - 1) * stride[a] + (kh, kw)[a] - size[a], 0) // 2 for a in (0, 1))
            return LocalOp("conv", (op.inputs[0],), out, (kh, kw), stride, pad, ref=i)
        if kind in ("PAD", "PADV2") and len(acts) == 1:
            pads = self.const(op.inputs[1])
            if pads[0].any() or pads[3].any():
                return None
            return LocalOp("pad", (acts[0],), out, pad=(int(pads[1][0]), int(pads[2][0])), ref=i)
        if kind in _POINTWISE and len(acts) == 1:
            return LocalOp("pointwise", (acts[0],), out, ref=i)
        if kind in _BINARY and len(acts) == 2 and all(self.shape(t) == self.shape(out) for t in acts):
            return LocalOp("pointwise", tuple(acts), out, ref=i)
        return None

    def plan(self, count: int, n: int) -> PatchPlan:
        shapes = {}
        for t in range(len(self.graph.tensors)):
            shape = self.shape(t)
            if len(shape) == 4:
                shapes[t] = (shape[1], shape[2])
        for i, op in enumerate(self.local[:count]):
            if op is None:
                raise NotPatchable(f"op {i} ({self.kinds[i]}) is not spatially local: the patches must end before it")
        return plan_patches(self.local, count, shapes, n, consumers_of(self.local, self.reads), list(self.graph.outputs))


def local_prefixes(data: bytes) -> list[int]:
    """The op counts at which the file's leading ops can be cut into patches (one tensor handed on)."""
    f = _File(data)
    consumers = consumers_of(f.local, f.reads)
    out = []
    for count in range(1, len(f.local)):
        try:
            check_prefix(f.local, count, consumers, list(f.graph.outputs))
        except NotPatchable:
            if f.local[count - 1] is None:
                break
            continue
        out.append(count)
    return out


def op_kinds(data: bytes) -> list[str]:
    """The builtin operator names of the file's first subgraph, in order (to hold it against the graph its memory
    was predicted on: a patch schedule counts ops)."""
    s = _schema()
    model = s.ModelT.InitFromPackedBuf(bytearray(data), 0)
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    return [names.get(_builtin(model, op), "?") for op in model.subgraphs[0].operators]


def patch_tflite(data: bytes, count: int, n: int) -> bytes:
    """The file `data` with its first `count` ops run on `n` x `n` patches (see the module's docstring)."""
    # deferred: flatbuffers (the [tflite] extra), torch load only when this runs, not on import
    import flatbuffers

    from edgenas.export.tflite_direct import _AlignedBuffer

    f = _File(data)
    plan = f.plan(count, n)
    s, model, graph = f.s, f.model, f.graph
    tensors = list(graph.tensors)
    consts: dict[bytes, int] = {}

    def opcode(name: str) -> int:
        builtin = getattr(s.BuiltinOperator, name)
        for i, code in enumerate(model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
                return i
        code = s.OperatorCodeT()
        code.builtinCode = builtin
        code.deprecatedBuiltinCode = min(builtin, 127)
        code.version = _VERSIONS.get(name, 1)
        model.operatorCodes.append(code)
        return len(model.operatorCodes) - 1

    def const_int32(name: str, value: np.ndarray) -> int:
        raw = np.ascontiguousarray(value, dtype=np.int32)
        key = raw.tobytes() + str(raw.shape).encode()
        if key not in consts:
            buffer = s.BufferT()
            buffer.data = np.frombuffer(raw.tobytes(), dtype=np.uint8)
            model.buffers.append(buffer)
            t = s.TensorT()
            t.shape = np.asarray(raw.shape, dtype=np.int32)
            t.type = s.TensorType.INT32
            t.name = name.encode()
            t.buffer = len(model.buffers) - 1
            tensors.append(t)
            consts[key] = len(tensors) - 1
        return consts[key]

    index: dict[int, int] = {}  # plan tensor -> file tensor
    for pi, pt in enumerate(plan.tensors):
        if pt.original:
            index[pi] = pt.source
    operators = []
    for step in plan.steps:
        pt = plan.tensors[step.output]
        if pt.original:
            out = pt.source
        else:
            src = graph.tensors[pt.source]
            t = copy.copy(src)
            t.quantization = copy.deepcopy(src.quantization)
            t.shape = np.asarray([1, pt.height, pt.width, int(src.shape[3])], dtype=np.int32)
            t.shapeSignature = None
            base = src.name.decode() if isinstance(src.name, bytes) else str(src.name)
            t.name = f"{base}/patch_r{pt.rows[0]}_{pt.rows[1]}_c{pt.cols[0]}_{pt.cols[1]}".encode()
            t.buffer = 0
            tensors.append(t)
            out = len(tensors) - 1
        index[step.output] = out
        ins = [index[i] for i in step.inputs]
        op = s.OperatorT()
        op.outputs = [out]
        if step.kind == "slice":
            channels = int(graph.tensors[pt.source].shape[3])
            begin = np.array([0, step.begin[0], step.begin[1], 0])
            end = begin + np.array([1, pt.height, pt.width, channels])
            op.opcodeIndex = opcode("STRIDED_SLICE")
            op.inputs = [ins[0], const_int32("patch_begin", begin), const_int32("patch_end", end),
                         const_int32("patch_strides", np.ones(4))]
            op.builtinOptionsType = s.BuiltinOptions.StridedSliceOptions
            op.builtinOptions = s.StridedSliceOptionsT()
        elif step.kind == "pad":
            op.opcodeIndex = opcode("PAD")
            pads = np.array([[0, 0], list(step.pads[0]), list(step.pads[1]), [0, 0]])
            op.inputs = [ins[0], const_int32("patch_paddings", pads)]
            op.builtinOptionsType = s.BuiltinOptions.PadOptions
            op.builtinOptions = s.PadOptionsT()
        elif step.kind == "concat":
            op.opcodeIndex = opcode("CONCATENATION")
            op.inputs = ins
            op.builtinOptionsType = s.BuiltinOptions.ConcatenationOptions
            op.builtinOptions = s.ConcatenationOptionsT()
            op.builtinOptions.axis = step.axis
        else:
            original = graph.operators[step.op.ref]
            op.opcodeIndex = original.opcodeIndex
            op.builtinOptionsType = original.builtinOptionsType
            op.builtinOptions = copy.copy(original.builtinOptions)
            if step.op.kind == "conv":
                op.builtinOptions.padding = s.Padding.VALID
            acts = iter(ins)
            op.inputs = [next(acts) if _is_act(f, t) else t for t in original.inputs]
        operators.append(op)
    graph.operators = operators + list(graph.operators[count:])
    graph.tensors = tensors
    _compact(model, graph, s)
    model.buffers = [_AlignedBuffer(None if b.data is None or len(b.data) == 0 else bytes(b.data))
                     for b in model.buffers]
    size = sum(len(b.data) for b in model.buffers if b.data is not None)
    builder = flatbuffers.Builder(size + 16 * len(model.buffers) + 512 * len(graph.tensors) + 65536)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _is_act(f: _File, t: int) -> bool:
    return t >= 0 and not f.is_const(t)


def _compact(model: Any, graph: Any, s: Any) -> None:
    """Drop the tensors no op reads or writes any more, and the buffers only they held; renumber the rest."""
    used = set(graph.inputs) | set(graph.outputs)
    for op in graph.operators:
        used |= {t for t in op.inputs if t >= 0} | set(op.outputs)
    keep = sorted(used)
    new = {old: i for i, old in enumerate(keep)}
    graph.tensors = [graph.tensors[i] for i in keep]
    for op in graph.operators:
        op.inputs = [new[t] if t >= 0 else -1 for t in op.inputs]
        op.outputs = [new[t] for t in op.outputs]
    graph.inputs = [new[t] for t in graph.inputs]
    graph.outputs = [new[t] for t in graph.outputs]
    for sig in model.signatureDefs or []:
        for entry in list(sig.inputs or []) + list(sig.outputs or []):
            entry.tensorIndex = new[entry.tensorIndex]
    buffers_used = {0} | {t.buffer for t in graph.tensors} | {m.buffer for m in model.metadata or []}
    order = sorted(buffers_used)
    renumber = {old: i for i, old in enumerate(order)}
    model.buffers = [model.buffers[i] for i in order]
    for t in graph.tensors:
        t.buffer = renumber[t.buffer]
    for m in model.metadata or []:
        m.buffer = renumber[m.buffer]
