"""A direct fp32 TFLite writer for edgenas's static networks: the flatbuffer built with numpy, no converter.

litert-torch converts a small subnet in about ten seconds (torch.export, three decompositions, MLIR
lowering, all Python); a latency table needs hundreds of such files. The networks edgenas exports are
made of a handful of layers (`edgenas.nn.static`), so this module writes the graph litert-torch emits
for them op for op, in milliseconds:

- BatchNorm folded into the convolution's weights and bias; ReLU fused into the convolution, hard-swish
  as a HARD_SWISH op of its own;
- a convolution whose PyTorch padding equals TFLite's SAME padding runs SAME (1x1: VALID); otherwise
  (a stride-2 convolution on an even-sized map) an explicit PAD op, then VALID;
- squeeze-excite as MEAN(keep_dims) → CONV_2D 1x1 (fused RELU) → CONV_2D 1x1 (bias + 3, fused RELU6)
  → MUL by the scalar 1/6 → MUL; residual ADDs; the head as MEAN, CONV_2D, HARD_SWISH, FULLY_CONNECTED
  (an all-zero classifier bias dropped, as the converter does);
- NHWC input (or a TRANSPOSE of an NCHW input), the input and output names and the `serving_default`
  signature of litert-torch's files, equal constants stored once, as its constant folding leaves them.

What it does not know (any other layer, a subclass, a different forward) raises `Unsupported`, and
`export_tflite` falls back to litert-torch. A module outside `edgenas.nn.static` can opt in by
defining `tflite_plan()`: the (name, layer) pairs its forward applies in order, each layer a module
this writer knows or the string "mean" (a global mean keeping dims) or "flatten".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgenas.errors import require
from edgenas.export.quiet import captured_output
from edgenas.micro_memory import same_padding  # the rule the int8 memory model uses for the same converter
from edgenas.nn.static import ConvBNAct, MBConv, SqueezeExcite, StaticNet

INPUT_NAME = "serving_default_args_0"
OUTPUT_NAME = "serving_default_output_0_output"
SIGNATURE = ("serving_default", "args_0", "output_0")
_FLOAT32, _INT32, _INT8 = 0, 2, 9
_NUMPY = {_FLOAT32: np.float32, _INT32: np.int32, _INT8: np.int8}
_METADATA = (("min_runtime_version", b"1.15.0".ljust(16, b"\0")), ("keep_stablehlo_constant", b"true"))


class ExportFriendlyHardsigmoid(nn.Module):
    """Hard-sigmoid as `relu6(x + 3) * (1/6)`: same values as `nn.Hardsigmoid` (within 1 ulp), but made of
    ops that quantize to int8 TFLite builtins (ADD with fused RELU6, MUL) that TFLite Micro runs
    (`edgenas.export.tflite.export_friendly` puts it in place of every `nn.Hardsigmoid`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) * (1.0 / 6.0)


@dataclass(frozen=True)
class Quant:
    """A tensor's quantization: scale and zero point (one each, or one per channel along `axis`)."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0

    def key(self) -> tuple:
        return (self.scale, self.zero_point, self.axis)


class Unsupported(ValueError):
    """The model holds something the direct writer does not write (litert-torch converts it instead)."""


def _schema():
    return require("ai_edge_litert.schema_py_generated", extra="tflite", purpose="writing TFLite files")


def _array(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy().astype(np.float64)


class _Graph:
    """The tensors and ops of one subgraph, in the order litert-torch lays them out."""

    def __init__(self) -> None:
        self.schema = _schema()
        self.tensors: list[Any] = []
        self.kinds: list[str] = []      # "input", "const" or "act" per tensor
        self.data: list[bytes | None] = []
        self.consts: dict[tuple, int] = {}
        self.ops: list[Any] = []
        self.opcodes: dict[int, int] = {}  # builtin -> index in codes
        self.codes: list[Any] = []
        self.names: dict[str, int] = {}
        self.graph_input = -1
        self.versions: dict[int, int] = {}  # builtin -> operator version (int8 kernels need newer ones)

    def _tensor(self, name: str, shape, dtype: int, kind: str, data: bytes | None = None,
                quant: Quant | None = None) -> int:
        s = self.schema
        t = s.TensorT()
        t.shape = np.asarray(shape, dtype=np.int32)
        t.type = dtype
        t.name = name.encode()
        t.quantization = s.QuantizationParametersT()
        if quant is not None:
            t.quantization.scale = np.asarray(quant.scale, dtype=np.float32).reshape(-1)
            t.quantization.zeroPoint = np.asarray(quant.zero_point, dtype=np.int64).reshape(-1)
            t.quantization.quantizedDimension = quant.axis
        t.hasRank = kind != "late"
        self.tensors.append(t)
        self.kinds.append(kind)
        self.data.append(data)
        return len(self.tensors) - 1

    def input(self, shape, *, dtype: int = _FLOAT32, quant: Quant | None = None, name: str = INPUT_NAME,
              kind: str = "input") -> int:
        self.graph_input = self._tensor(name, shape, dtype, kind, quant=quant)
        return self.graph_input

    def const(self, name: str, value: np.ndarray, dtype: int = _FLOAT32, quant: Quant | None = None) -> int:
        arr = np.array(value, dtype=_NUMPY[dtype], order="C")
        raw = arr.tobytes()
        key = (dtype, arr.shape, raw, quant.key() if quant is not None else None)
        if key not in self.consts:  # equal constants are one tensor, as the converter's folding leaves them
            self.consts[key] = self._tensor(name, arr.shape, dtype, "const", raw, quant)
        return self.consts[key]

    def shape(self, index: int) -> list[int]:
        return [int(v) for v in self.tensors[index].shape]

    def op(self, builtin: int, inputs: list[int], shape, name: str, options_type: int = 0, options: Any = None, *,
           dtype: int = _FLOAT32, quant: Quant | None = None, kind: str = "act") -> int:
        s = self.schema
        n = self.names.get(name, 0)
        self.names[name] = n + 1
        out = self._tensor(name if n == 0 else f"{name}{n}", shape, dtype, kind, quant=quant)
        if builtin not in self.opcodes:
            code = s.OperatorCodeT()
            code.builtinCode = builtin
            code.deprecatedBuiltinCode = min(builtin, 127)
            code.version = self.versions.get(builtin, 1)
            self.opcodes[builtin] = len(self.codes)
            self.codes.append(code)
        op = s.OperatorT()
        op.opcodeIndex = self.opcodes[builtin]
        op.inputs = list(inputs)
        op.outputs = [out]
        op.builtinOptionsType = options_type
        op.builtinOptions = options
        self.ops.append(op)
        return out

    def finish(self, output: int) -> bytes:
        # deferred: flatbuffers (the [tflite] extra) loads only when this runs, not on import
        import flatbuffers

        s = self.schema
        self.tensors[output].name = OUTPUT_NAME.encode()
        # The converter's file order: the input, constants, activations, then (int8 with float I/O) the float
        # input and output its QUANTIZE / DEQUANTIZE ops were given.
        order = [i for kind in ("input", "const", "act", "late") for i, k in enumerate(self.kinds) if k == kind]
        new = {old: pos for pos, old in enumerate(order)}
        model = s.ModelT()
        model.version = 3
        model.description = b"MLIR Converted."
        model.operatorCodes = self.codes
        buffers = [_AlignedBuffer(None)]
        tensors = []
        for old in order:  # one buffer per tensor (empty for activations), as the converter writes them
            t = self.tensors[old]
            buffers.append(_AlignedBuffer(self.data[old]))
            t.buffer = len(buffers) - 1
            tensors.append(t)
        for op in self.ops:
            op.inputs = [new[i] if i >= 0 else -1 for i in op.inputs]
            op.outputs = [new[i] for i in op.outputs]
        graph = s.SubGraphT()
        graph.tensors = tensors
        graph.inputs = [new[self.graph_input]]
        graph.outputs = [new[output]]
        graph.operators = self.ops
        graph.name = b"main"
        model.subgraphs = [graph]
        model.metadata = []
        for name, raw in _METADATA:
            buffers.append(_AlignedBuffer(raw))
            entry = s.MetadataT()
            entry.name = name.encode()
            entry.buffer = len(buffers) - 1
            model.metadata.append(entry)
        model.buffers = buffers
        signature = s.SignatureDefT()
        signature.signatureKey = SIGNATURE[0].encode()
        signature.subgraphIndex = 0
        signature.inputs = [_tensor_map(SIGNATURE[1], graph.inputs[0])]
        signature.outputs = [_tensor_map(SIGNATURE[2], graph.outputs[0])]
        model.signatureDefs = [signature]
        size = sum(len(d) for d in self.data if d is not None)
        builder = flatbuffers.Builder(size + 16 * len(buffers) + 512 * len(tensors) + 65536)  # no regrowth
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _tensor_map(name: str, index: int):
    entry = _schema().TensorMapT()
    entry.name = name.encode()
    entry.tensorIndex = index
    return entry


class _AlignedBuffer:
    """A constant buffer packed in one copy, 16-byte aligned (the schema's `force_align: 16`)."""

    def __init__(self, data: bytes | None) -> None:
        self.data = data

    def Pack(self, builder):  # noqa: N802 (the flatbuffers object API's name)
        s = _schema()
        vector = None
        if self.data is not None:
            builder.StartVector(1, len(self.data), 16)
            builder.head -= len(self.data)
            builder.Bytes[builder.head:builder.head + len(self.data)] = self.data
            vector = builder.EndVector()
        s.BufferStart(builder)
        if vector is not None:
            s.BufferAddData(builder, vector)
        return s.BufferEnd(builder)


@dataclass
class ConvParams:
    """A convolution with its BatchNorm folded in: float64 weight (O, I, kh, kw) and bias, geometry."""

    weight: np.ndarray
    bias: np.ndarray
    kernel: int
    stride: int
    pad: int
    depthwise: bool
    out_channels: int


def conv_params(in_shape: list[int], conv: nn.Conv2d, bn: nn.BatchNorm2d | None, name: str) -> ConvParams:
    """The folded convolution, or `Unsupported` for one the direct writers do not write."""
    if type(conv) is not nn.Conv2d:
        raise Unsupported(f"{name}: {type(conv).__name__} is not an nn.Conv2d")
    k = conv.kernel_size
    if (k[0] != k[1] or conv.stride[0] != conv.stride[1] or tuple(conv.dilation) != (1, 1)
            or conv.padding_mode != "zeros" or not isinstance(conv.padding, tuple)
            or tuple(conv.padding) != (k[0] // 2, k[0] // 2) or k[0] % 2 == 0):
        raise Unsupported(f"{name}: only odd square kernels with 'same' symmetric padding are written directly")
    c = in_shape[3]
    if c != conv.in_channels:
        raise Unsupported(f"{name}: {c} channels in, the convolution takes {conv.in_channels}")
    depthwise = conv.groups > 1
    if depthwise and not (conv.groups == conv.in_channels == conv.out_channels):
        raise Unsupported(f"{name}: grouped convolution that is not depthwise")
    weight = _array(conv.weight)
    bias = _array(conv.bias) if conv.bias is not None else np.zeros(conv.out_channels)
    if bn is not None:
        if type(bn) is not nn.BatchNorm2d or not bn.track_running_stats or bn.running_mean is None:
            raise Unsupported(f"{name}: BatchNorm without running statistics")
        scale = _array(bn.weight) / np.sqrt(_array(bn.running_var) + bn.eps) if bn.affine else \
            1.0 / np.sqrt(_array(bn.running_var) + bn.eps)
        shift = _array(bn.bias) if bn.affine else 0.0
        weight = weight * scale[:, None, None, None]
        bias = (bias - _array(bn.running_mean)) * scale + shift
    return ConvParams(weight, bias, k[0], conv.stride[0], k[0] // 2, depthwise, conv.out_channels)


def conv_value(x: torch.Tensor, p: ConvParams, bias_offset: float, fused: int, acts: Any) -> torch.Tensor:
    """The folded convolution with its fused activation on float NCHW values (the int8 writer's calibration)."""
    w = torch.from_numpy(p.weight.astype(np.float32))
    b = torch.from_numpy((p.bias + bias_offset).astype(np.float32))
    y = F.conv2d(x, w, b, stride=p.stride, padding=p.pad, groups=p.out_channels if p.depthwise else 1)
    if fused == acts.RELU:
        return F.relu(y)
    if fused == acts.RELU6:
        return F.relu6(y)
    return y


class LayerWalker:
    """Walks edgenas's static layers in the order their forward applies them, calling one method per op kind
    (`conv`, `mean`, `add`, `linear`, `squeeze_excite`, `flatten`); the TFLite and ONNX writers fill them in.
    Anything else raises `Unsupported`."""

    flat = False

    def shape(self, x: Any) -> list[int]:
        raise NotImplementedError

    def flatten(self, x: Any, name: str) -> Any:
        raise NotImplementedError

    def mbconv(self, x: int, block: MBConv, name: str) -> int:
        h = x
        if block.expand is not None:
            h = self.layer(h, block.expand, f"{name}/expand")
        h = self.layer(h, block.depthwise, f"{name}/depthwise")
        if block.se is not None:
            h = self.layer(h, block.se, f"{name}/se")
        h = self.layer(h, block.project, f"{name}/project")
        if block.residual:
            if self.shape(x) != self.shape(h):
                raise Unsupported(f"{name}: a residual between shapes {self.shape(x)} and {self.shape(h)}")
            h = self.add(x, h, name)
        return h

    def layer(self, x: int, m: Any, name: str) -> int:
        if isinstance(m, str):
            if m == "mean":
                return self.mean(x, name)
            if m == "flatten":
                self.flat = True
                return self.flatten(x, name)
            raise Unsupported(f"{name}: unknown step {m!r}")
        kind = type(m)
        if self.flat and kind is not nn.Linear and kind not in (nn.Identity, nn.Dropout):
            raise Unsupported(f"{name}: {kind.__name__} after flatten")
        if kind is ConvBNAct:
            return self.conv(x, m.conv, m.bn, m.act, name)
        if kind is MBConv:
            return self.mbconv(x, m, name)
        if kind is SqueezeExcite:
            return self.squeeze_excite(x, m, name)
        if kind is nn.Sequential:
            for i, child in enumerate(m):
                x = self.layer(x, child, f"{name}/{i}" if name else str(i))
            return x
        if kind in (nn.Identity, nn.Dropout):
            return x
        if kind is nn.Linear:
            return self.linear(x, m, name)
        if kind is StaticNet:
            return self.plan(x, static_net_plan(m), name)
        plan = getattr(m, "tflite_plan", None)
        if callable(plan):
            return self.plan(x, plan(), name)
        raise Unsupported(f"{name or 'model'}: {kind.__module__}.{kind.__name__} is not written directly")

    def plan(self, x: int, steps: list[tuple[str, Any]], name: str) -> int:
        for step_name, step in steps:
            x = self.layer(x, step, f"{name}/{step_name}" if name else step_name)
        return x



class _Writer(LayerWalker):
    """Lowers edgenas's static layers onto a `_Graph`, one NHWC tensor at a time."""

    def __init__(self) -> None:
        self.g = _Graph()
        self.s = self.g.schema
        self.flat = False

    def shape(self, x: int) -> list[int]:
        return self.g.shape(x)

    def flatten(self, x: int, name: str) -> int:
        return x  # FULLY_CONNECTED reads the (n, 1, 1, c) map as it is

    # ---- ops -------------------------------------------------------------------------------
    def conv(self, x: int, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, act: nn.Module | None, name: str,
             bias_offset: float = 0.0, relu6: bool = False) -> int:
        s = self.s
        p = conv_params(self.g.shape(x), conv, bn, name)
        fused, hswish = self._activation(act, name)
        if relu6:
            fused = s.ActivationFunctionType.RELU6
        source = x
        x, padding, (oh, ow) = self.pad_for(x, p, name)
        builtin, opts_type, opts, filt = self.conv_options(p, padding, fused)
        weight, bias = self.conv_constants(x, p, filt, name, bias_offset)
        n = self.g.shape(x)[0]
        y = self.emit(builtin, [x, weight, bias], [n, oh, ow, p.out_channels], name, opts_type, opts,
                      value=lambda: conv_value(self.value(source), p, bias_offset, fused, s.ActivationFunctionType))
        if hswish:
            pre = y
            y = self.emit(s.BuiltinOperator.HARD_SWISH, [pre], self.g.shape(pre), f"{name}/hswish",
                          value=lambda: F.hardswish(self.value(pre)))
        return y

    def conv_constants(self, x: int, p: ConvParams, filt: np.ndarray, name: str, bias_offset: float) -> tuple[int, int]:
        """The weight and bias tensors of a convolution reading `x`."""
        return self.g.const(f"{name}/weight", filt), self.g.const(f"{name}/bias", p.bias + bias_offset)

    def emit(self, builtin: int, inputs: list[int], shape, name: str, options_type: int = 0, options: Any = None, *,
             value: Any = None, same_as: int | None = None) -> int:
        """Add an op; `value` (a thunk: the op's float output on the calibration images, NCHW) and `same_as`
        (an input whose quantization the output keeps) matter to the int8 writer only."""
        return self.g.op(builtin, inputs, shape, name, options_type, options)

    def value(self, index: int) -> torch.Tensor:
        raise NotImplementedError("the fp32 writer does not run the model")

    def pad_for(self, x: int, p: ConvParams, name: str) -> tuple[int, int, tuple[int, int]]:
        """(the convolution's input, TFLite padding, output size): SAME where PyTorch's padding is TFLite's
        SAME (1x1: VALID), else an explicit PAD op (keeping its input's quantization) and VALID."""
        s = self.s
        n, h, w, c = self.g.shape(x)
        k, stride, pad = p.kernel, p.stride, p.pad
        if pad == 0:
            padding = s.Padding.VALID
        elif same_padding(h, k, stride) and same_padding(w, k, stride):
            padding = s.Padding.SAME
        else:
            paddings = np.array([[0, 0], [pad, pad], [pad, pad], [0, 0]])
            x = self.emit(s.BuiltinOperator.PAD, [x, self.g.const("pad", paddings, _INT32)],
                          [n, h + 2 * pad, w + 2 * pad, c], f"{name}/pad", s.BuiltinOptions.PadOptions, s.PadOptionsT(),
                          same_as=x)
            h, w, padding = h + 2 * pad, w + 2 * pad, s.Padding.VALID
        if padding == s.Padding.SAME:
            return x, padding, (-(-h // stride), -(-w // stride))
        return x, padding, ((h - k) // stride + 1, (w - k) // stride + 1)

    def conv_options(self, p: ConvParams, padding: int, fused: int) -> tuple[int, int, Any, np.ndarray]:
        """(builtin, options type, options, filter in TFLite's layout) of the convolution `p`."""
        s = self.s
        if p.depthwise:
            opts = s.DepthwiseConv2DOptionsT()
            opts.depthMultiplier = 1
            filt = p.weight.transpose(1, 2, 3, 0)  # (C, 1, kh, kw) -> (1, kh, kw, C)
            builtin, opts_type = s.BuiltinOperator.DEPTHWISE_CONV_2D, s.BuiltinOptions.DepthwiseConv2DOptions
        else:
            opts = s.Conv2DOptionsT()
            filt = p.weight.transpose(0, 2, 3, 1)  # (O, I, kh, kw) -> (O, kh, kw, I)
            builtin, opts_type = s.BuiltinOperator.CONV_2D, s.BuiltinOptions.Conv2DOptions
        opts.padding, opts.strideW, opts.strideH, opts.fusedActivationFunction = padding, p.stride, p.stride, fused
        return builtin, opts_type, opts, filt

    def _activation(self, act: nn.Module | None, name: str) -> tuple[int, bool]:
        A = self.s.ActivationFunctionType
        if act is None or type(act) is nn.Identity:
            return A.NONE, False
        if type(act) is nn.ReLU:
            return A.RELU, False
        if type(act) is nn.ReLU6:
            return A.RELU6, False
        if type(act) is nn.Hardswish:
            return A.NONE, True
        raise Unsupported(f"{name}: activation {type(act).__name__} is not written directly")

    def mean(self, x: int, name: str) -> int:
        s = self.s
        n, _, _, c = self.g.shape(x)
        opts = s.ReducerOptionsT()
        opts.keepDims = True
        axes = self.g.const("mean_axes", np.array([1, 2]), _INT32)
        return self.emit(s.BuiltinOperator.MEAN, [x, axes], [n, 1, 1, c], name, s.BuiltinOptions.ReducerOptions, opts,
                         value=lambda: self.value(x).mean((2, 3), keepdim=True))

    def mul(self, a: int, b: int, shape, name: str) -> int:
        s = self.s
        return self.emit(s.BuiltinOperator.MUL, [a, b], shape, name, s.BuiltinOptions.MulOptions, s.MulOptionsT(),
                         value=lambda: self.value(a) * self.value(b))

    def add(self, a: int, b: int, name: str) -> int:
        s = self.s
        return self.emit(s.BuiltinOperator.ADD, [a, b], self.g.shape(a), name, s.BuiltinOptions.AddOptions,
                         s.AddOptionsT(), value=lambda: self.value(a) + self.value(b))

    def linear(self, x: int, linear: nn.Linear, name: str) -> int:
        s = self.s
        if not self.flat:
            raise Unsupported(f"{name}: a Linear layer on an unflattened map")
        shape = self.g.shape(x)
        if int(np.prod(shape[1:])) != linear.in_features or shape[1:-1] != [1] * (len(shape) - 2):
            raise Unsupported(f"{name}: a Linear layer on a {shape} map")
        bias = _array(linear.bias)
        if bias is not None and not np.any(bias):
            bias = None  # an all-zero bias is dropped, as the converter does
        inputs = [x, *self.linear_constants(x, _array(linear.weight), bias, name)]
        opts = s.FullyConnectedOptionsT()

        def value() -> torch.Tensor:
            with torch.no_grad():
                return F.linear(self.value(x).flatten(1), linear.weight.float(),
                                None if bias is None else linear.bias.float())

        return self.emit(s.BuiltinOperator.FULLY_CONNECTED, inputs, [shape[0], linear.out_features], name,
                         s.BuiltinOptions.FullyConnectedOptions, opts, value=value)

    def linear_constants(self, x: int, weight: np.ndarray, bias: np.ndarray | None, name: str) -> list[int]:
        """The weight and bias (-1: none) tensors of a fully-connected layer reading `x`."""
        return [self.g.const(f"{name}/weight", weight), -1 if bias is None else self.g.const(f"{name}/bias", bias)]

    # ---- layers ----------------------------------------------------------------------------
    def squeeze_excite(self, x: int, se: SqueezeExcite, name: str) -> int:
        if type(se.relu) is not nn.ReLU or type(se.gate) not in (nn.Hardsigmoid, ExportFriendlyHardsigmoid):
            raise Unsupported(f"{name}: squeeze-excite with other activations")
        s = self.g.shape(x)
        m = self.mean(x, f"{name}/mean")
        r = self.conv(m, se.reduce, None, nn.ReLU(), f"{name}/reduce")
        e = self.conv(r, se.expand, None, None, f"{name}/gate", bias_offset=3.0, relu6=True)
        g = self.mul(e, self.g.const("one_sixth", np.float32(1.0 / 6.0)), self.g.shape(e), f"{name}/gate/scale")
        return self.mul(x, g, s, f"{name}/mul")

def static_net_plan(net: StaticNet) -> list[tuple[str, Any]]:
    """The layers `StaticNet.forward` applies, in order."""
    return [("stem", net.stem), ("first", net.first), ("blocks", net.blocks), ("final_expand", net.final_expand),
            ("pool", "mean"), ("feature_mix", net.feature_mix), ("flatten", "flatten"), ("dropout", net.dropout),
            ("classifier", net.classifier)]


def write_tflite(model: nn.Module, example_shape: tuple[int, ...] | list[int], *, channels_last: bool = True) -> bytes:
    """The fp32 .tflite file of `model` (eval semantics) for NCHW inputs of `example_shape`, as bytes.

    Raises `Unsupported` for a model holding anything this writer does not write."""
    if len(example_shape) != 4:
        raise Unsupported(f"input of shape {list(example_shape)}: the direct writer takes NCHW images")
    n, c, h, w = (int(v) for v in example_shape)
    writer = _Writer()
    g, s = writer.g, writer.s
    if channels_last:
        x = g.input([n, h, w, c])
    else:
        x = g.input([n, c, h, w])
        perm = g.const("perm", np.array([0, 2, 3, 1]), _INT32)
        x = g.op(s.BuiltinOperator.TRANSPOSE, [x, perm], [n, h, w, c], "transpose", s.BuiltinOptions.TransposeOptions,
                 s.TransposeOptionsT())
    with torch.no_grad():
        y = writer.layer(x, model, "")
    shape = g.shape(y)
    if len(shape) == 4 and not writer.flat:  # PyTorch returns the map NCHW: the converter transposes it back
        perm = g.const("perm_out", np.array([0, 3, 1, 2]), _INT32)
        y = g.op(s.BuiltinOperator.TRANSPOSE, [y, perm], [shape[0], shape[3], shape[1], shape[2]], "output",
                 s.BuiltinOptions.TransposeOptions, s.TransposeOptionsT())
    return g.finish(y)


# A wrong graph is off by the size of the output; float rounding in a deep random-weight net is ~1e-6 of it.
CHECK_RTOL = 1e-3


def check_against_torch(data: bytes, model: nn.Module, example: torch.Tensor, *, channels_last: bool = True) -> str:
    """Run the file `data` and `model` (eval mode) on `example` (NCHW); an empty string when they agree within
    `CHECK_RTOL` of the output's largest magnitude, else what differs."""
    interp_mod = require("ai_edge_litert.interpreter", extra="tflite", purpose="checking TFLite files")
    with captured_output():
        interpreter = interp_mod.Interpreter(
            model_content=data, num_threads=1,
            experimental_op_resolver_type=interp_mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
    x = example.detach().cpu().float()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], np.ascontiguousarray((x.permute(0, 2, 3, 1) if channels_last else x).numpy()))
    interpreter.invoke()
    got = interpreter.get_tensor(out["index"])
    with torch.no_grad():
        want = model(x).numpy()
    if got.shape != want.shape:
        return f"the written file returns shape {list(got.shape)}, the model {list(want.shape)}"
    err, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
    if not np.isfinite(err) or err > CHECK_RTOL * scale:
        return f"the written file differs from the model by {err:.3g} (outputs up to {scale:.3g})"
    return ""


def direct_tflite(model: nn.Module, example: torch.Tensor, *, channels_last: bool = True,
                  check: bool = True) -> tuple[bytes | None, str]:
    """The fp32 file of `model` (eval mode) written directly and, with `check`, run against the model on
    `example`: (bytes, "") or (None, why the direct writer does not apply)."""
    try:
        data = write_tflite(model, tuple(example.shape), channels_last=channels_last)
    except Unsupported as exc:
        return None, str(exc)
    if check:
        problem = check_against_torch(data, model, example, channels_last=channels_last)
        if problem:
            return None, problem
    return data, ""


def op_sequence(source: str | bytes | Any) -> list[tuple[str, dict, list, list]]:
    """The ops of a .tflite file (a path or its bytes) in order: (name, builtin options, input shapes, output
    shapes), an absent optional input as None; what two files must share to run the same kernels."""
    s = _schema()
    data = source if isinstance(source, (bytes, bytearray)) else open(os.fspath(source), "rb").read()
    model = s.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        options = {k: v for k, v in vars(op.builtinOptions).items()} if op.builtinOptions is not None else {}
        shapes = [None if i < 0 else [int(v) for v in graph.tensors[i].shape] for i in op.inputs]
        outs = [[int(v) for v in graph.tensors[i].shape] for i in op.outputs]
        ops.append((names[max(code.builtinCode, code.deprecatedBuiltinCode)], options, shapes, outs))
    return ops
