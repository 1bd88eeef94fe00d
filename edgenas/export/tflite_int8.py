"""A direct full-integer int8 TFLite writer for edgenas's static networks: calibrated and written with numpy.

litert-torch makes an int8 file in 15-30 s (torch.export, PT2E observers, MLIR lowering); this module
writes the graph it emits for edgenas's layers (`edgenas.export.tflite_direct`'s traversal) op for op in
well under a second, with the same quantization recipe (litert-torch's symmetric per-channel config):

- activations: per-tensor affine int8 (-128..127), the range of each tensor chosen by PyTorch's
  `HistogramObserver` (the L2-optimal clipping PT2E uses, eps 2^-12) on the float values the network
  computes for the calibration images (fed 32 at a time, as PT2E's calibration does), each op's output
  observed after its fused ReLU / ReLU6;
- weights: per-channel symmetric int8 (-127..127, scale = max |w| / 127, at least 2^-12), BatchNorm folded
  in first; biases int32 at the input scale times each channel's weight scale, corrected for the weights'
  rounding (`corrected_bias`: on the demo's four shipped subnets it lowered the logits' RMS error in every
  case, and without it three of four failed the 1-point accuracy-drop check on an under-trained supernet);
- PAD and RESHAPE keep their input's quantization (TFLite requires it);
- the graph `edgenas.micro_memory` models for TFLite Micro: a QUANTIZE of the float input, HARD_SWISH as an
  op of its own, the squeeze-excite gate as MEAN → CONV_2D (fused RELU) → CONV_2D → RESHAPE →
  ADD(3, fused RELU6) → MUL(1/6) → RESHAPE → MUL (the hard-sigmoid's constants as int8 scalars), the
  head's MEAN, CONV_2D, HARD_SWISH, FULLY_CONNECTED (per-channel weights) and a DEQUANTIZE of the output;
  the operator versions litert-torch writes.

The file is run against the float model on calibration images before it is used (`direct_int8`): a
wrong graph (logits off by the size of the logits) makes `export_tflite` fall back to litert-torch, as
anything this writer does not know does (`Unsupported`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization.observer import HistogramObserver

from edgenas.errors import require
from edgenas.export.quiet import captured_output
from edgenas.export.tflite_direct import (
    _INT8,
    _INT32,
    INPUT_NAME,
    OUTPUT_NAME,
    ConvParams,
    ExportFriendlyHardsigmoid,
    Quant,
    Unsupported,
    _Writer,
)
from edgenas.nn.static import SqueezeExcite

EPS = 2.0 ** -12          # the smallest scale litert-torch's observers give (weights and activations)
WEIGHT_LEVELS = 127       # symmetric int8 weights: -127..127
# Operator versions in litert-torch's int8 files (TFLite Micro and the interpreter check them).
_VERSIONS = {"PAD": 2, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "MEAN": 2, "ADD": 2, "MUL": 2, "FULLY_CONNECTED": 4,
             "TRANSPOSE": 2}
# An int8 file is checked against the float model: RMS of the logit error over RMS of the logits. Int8
# rounding leaves a few percent; a wrong graph leaves about 1.
CHECK_RELATIVE_RMS = 0.25
CHECK_IMAGES = 64
OBSERVE_BATCH = 32  # calibration images per observer update (litert-torch's calibration batch)


def observe(values: torch.Tensor) -> Quant:
    """Per-tensor affine int8 quantization of `values` (PyTorch's HistogramObserver, as PT2E uses)."""
    observer = HistogramObserver(dtype=torch.qint8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
                                 eps=EPS)
    values = values.detach().float()
    for i in range(0, len(values), OBSERVE_BATCH):  # batch by batch, as PT2E calibration feeds its observers
        observer(values[i:i + OBSERVE_BATCH])
    scale, zero_point = observer.calculate_qparams()
    return Quant((float(scale.reshape(-1)[0]),), (int(zero_point.reshape(-1)[0]),))


def quantize_weights(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 weights along `axis` and their scales."""
    moved = np.moveaxis(weight, axis, 0)
    scales = np.maximum(np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1) / WEIGHT_LEVELS, EPS)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scales.reshape(shape)), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8)
    return q, scales


def corrected_bias(bias: np.ndarray, weight: np.ndarray, q: np.ndarray, scales: np.ndarray, axis: int,
                   inputs: torch.Tensor, *, depthwise: bool = False) -> np.ndarray:
    """Bias correction (Nagel et al., "Data-Free Quantization", ICCV 2019, with calibration data): rounding the
    weights shifts each output channel's mean by (Wq - W) times the mean input; the bias takes it back.
    `weight` and `q` in TFLite's layout with output channels on `axis`; `inputs` the layer's float NCHW inputs
    on the calibration images."""
    shape = [1] * weight.ndim
    shape[axis] = -1
    delta = q.astype(np.float64) * scales.reshape(shape) - weight
    mean_in = inputs.double().mean((0, 2, 3)).numpy()  # per input channel
    if depthwise:  # (1, kh, kw, C): channel c reads input channel c
        return bias - delta.sum(axis=(0, 1, 2)) * mean_in
    per_in = delta.reshape(delta.shape[0], -1, delta.shape[-1]).sum(axis=1) if delta.ndim == 4 else delta
    return bias - per_in @ mean_in


def quantize_bias(bias: np.ndarray, scales: np.ndarray) -> np.ndarray:
    info = np.iinfo(np.int32)
    return np.clip(np.round(bias / scales), info.min, info.max).astype(np.int32)


class _Int8Writer(_Writer):
    """`_Writer` with int8 tensors: every op also runs on the calibration images (float, NCHW) so its output
    can be observed."""

    def __init__(self) -> None:
        super().__init__()
        ops = self.s.BuiltinOperator
        self.g.versions = {getattr(ops, name): v for name, v in _VERSIONS.items()}
        self.values: dict[int, torch.Tensor] = {}
        self.quants: dict[int, Quant] = {}

    def emit(self, builtin: int, inputs: list[int], shape, name: str, options_type: int = 0, options: Any = None, *,
             value: Any = None, same_as: int | None = None) -> int:
        if same_as is not None:
            out_value, quant = self.values[same_as], self.quants[same_as]
        else:
            with torch.no_grad():
                out_value = value()
            quant = observe(out_value)
        out = self.g.op(builtin, inputs, shape, name, options_type, options, dtype=_INT8, quant=quant)
        self.values[out], self.quants[out] = out_value, quant
        return out

    def value(self, index: int) -> torch.Tensor:
        return self.values[index]

    def conv_constants(self, x: int, p: ConvParams, filt: np.ndarray, name: str, bias_offset: float) -> tuple[int, int]:
        axis = 3 if p.depthwise else 0
        q, scales = quantize_weights(filt, axis)
        bias_scales = self.quants[x].scale[0] * scales
        bias = corrected_bias(p.bias + bias_offset, filt, q, scales, axis, self.values[x], depthwise=p.depthwise)
        weight = self.g.const(f"{name}/weight", q, _INT8, _per_channel(scales, axis))
        bias = self.g.const(f"{name}/bias", quantize_bias(bias, bias_scales), _INT32, _per_channel(bias_scales, 0))
        return weight, bias

    def linear_constants(self, x: int, weight: np.ndarray, bias: np.ndarray | None, name: str) -> list[int]:
        q, scales = quantize_weights(weight, 0)
        bias_scales = self.quants[x].scale[0] * scales
        w = self.g.const(f"{name}/weight", q, _INT8, _per_channel(scales, 0))
        if bias is None:
            return [w, -1]
        bias = corrected_bias(bias, weight, q, scales, 0, self.values[x].flatten(1)[:, :, None, None])
        return [w, self.g.const(f"{name}/bias", quantize_bias(bias, bias_scales), _INT32, _per_channel(bias_scales, 0))]

    def scalar(self, name: str, value: float) -> int:
        """A positive int8 scalar constant stored as 127 with scale value / 255 (zero point -128)."""
        return self.g.const(name, np.int8(127), _INT8, Quant((float(np.float32(value / 255.0)),), (-128,)))

    def reshape(self, x: int, shape: list[int], name: str) -> int:
        s = self.s
        target = self.g.const("shape", np.array(shape), _INT32)
        return self.emit(s.BuiltinOperator.RESHAPE, [x, target], shape, name, same_as=x)

    def squeeze_excite(self, x: int, se: SqueezeExcite, name: str) -> int:
        s = self.s
        if type(se.relu) is not nn.ReLU or type(se.gate) not in (nn.Hardsigmoid, ExportFriendlyHardsigmoid):
            raise Unsupported(f"{name}: squeeze-excite with other activations")
        n, _, _, c = self.g.shape(x)
        m = self.mean(x, f"{name}/mean")
        r = self.conv(m, se.reduce, None, nn.ReLU(), f"{name}/reduce")
        e = self.conv(r, se.expand, None, None, f"{name}/gate")
        e = self.reshape(e, [n, c, 1, 1], f"{name}/gate/nchw")
        opts = s.AddOptionsT()
        opts.fusedActivationFunction = s.ActivationFunctionType.RELU6
        a = self.emit(s.BuiltinOperator.ADD, [e, self.scalar("three", 3.0)], [n, c, 1, 1], f"{name}/gate/add",
                      s.BuiltinOptions.AddOptions, opts, value=lambda: F.relu6(self.value(e) + 3.0))
        g = self.emit(s.BuiltinOperator.MUL, [a, self.scalar("one_sixth", 1.0 / 6.0)], [n, c, 1, 1],
                      f"{name}/gate/scale", s.BuiltinOptions.MulOptions, s.MulOptionsT(),
                      value=lambda: self.value(a) * (1.0 / 6.0))
        g = self.reshape(g, [n, 1, 1, c], f"{name}/gate/nhwc")
        return self.mul(x, g, self.g.shape(x), f"{name}/mul")


def _per_channel(scales: np.ndarray, axis: int) -> Quant:
    return Quant(tuple(float(v) for v in np.asarray(scales, dtype=np.float32)), (0,) * len(scales), axis)


def write_int8_tflite(model: torch.nn.Module, calibration: np.ndarray, *, int8_io: bool = False) -> bytes:
    """The full-integer int8 .tflite file of `model` (eval semantics; NHWC batch-1 input; logits, or a map
    returned NCHW as PyTorch returns it), calibrated on
    `calibration` (float32 NCHW images as the PyTorch model takes them), as bytes.

    With `int8_io` the file takes and returns int8 tensors; by default float32 (QUANTIZE / DEQUANTIZE).
    Raises `Unsupported` for a model holding anything the direct writers do not write."""
    images = np.asarray(calibration, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise Unsupported(f"calibration images of shape {list(images.shape)}: the direct writer takes NCHW images")
    _, c, h, w = images.shape
    writer = _Int8Writer()
    g, s = writer.g, writer.s
    x_value = torch.from_numpy(images)
    quant = observe(x_value)
    if int8_io:
        x = g.input([1, h, w, c], dtype=_INT8, quant=quant)
    else:
        float_in = g.input([1, h, w, c], kind="late")
        x = g.op(s.BuiltinOperator.QUANTIZE, [float_in], [1, h, w, c], f"{INPUT_NAME}_int8", dtype=_INT8, quant=quant)
    writer.values[x], writer.quants[x] = x_value, quant
    with torch.no_grad():
        y = writer.layer(x, model, "")
    shape = g.shape(y)
    if len(shape) == 4 and not writer.flat:  # PyTorch returns the map NCHW: the converter transposes it back
        perm = g.const("perm_out", np.array([0, 3, 1, 2]), _INT32)
        shape = [shape[0], shape[3], shape[1], shape[2]]
        y = writer.emit(s.BuiltinOperator.TRANSPOSE, [y, perm], shape, "output", s.BuiltinOptions.TransposeOptions,
                        s.TransposeOptionsT(), same_as=y)
    elif len(shape) != 2:
        raise Unsupported(f"the model returns a {shape} tensor: the int8 writer writes maps and logits")
    if not int8_io:
        g.tensors[y].name = f"{OUTPUT_NAME}_int8".encode()
        y = g.op(s.BuiltinOperator.DEQUANTIZE, [y], shape, OUTPUT_NAME, kind="late")
    return g.finish(y)


def quantize_input(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Float input values as the integers of a quantized input tensor (round, shift, clip to `dtype`)."""
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def check_int8(data: bytes, model: torch.nn.Module, images: np.ndarray) -> str:
    """Run the int8 file `data` and the float `model` on `images` (NCHW); an empty string when the logits
    agree within `CHECK_RELATIVE_RMS` (relative RMS error), else what differs."""
    interp_mod = require("ai_edge_litert.interpreter", extra="tflite", purpose="checking TFLite files")
    with captured_output():
        interpreter = interp_mod.Interpreter(
            model_content=data, num_threads=1,
            experimental_op_resolver_type=interp_mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = np.ascontiguousarray(images.transpose(0, 2, 3, 1), dtype=np.float32)
    got = []
    for i in range(len(x)):
        sample = x[i:i + 1]
        if np.dtype(inp["dtype"]) != np.float32:
            sample = quantize_input(sample, *inp["quantization"], np.dtype(inp["dtype"]))
        interpreter.set_tensor(inp["index"], sample)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).astype(np.float32)
        if np.dtype(out["dtype"]) != np.float32:
            y = (y - out["quantization"][1]) * out["quantization"][0]
        got.append(y.reshape(1, -1))
    got_logits = np.concatenate(got)
    with torch.no_grad():
        want = model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()
    want = want.reshape(len(want), -1)
    if got_logits.shape != want.shape:
        return f"the written int8 file returns shape {list(got_logits.shape)}, the model {list(want.shape)}"
    rms = float(np.sqrt(np.mean((want - want.mean()) ** 2))) or 1.0
    err = float(np.sqrt(np.mean((got_logits - want) ** 2))) / rms
    if not np.isfinite(err) or err > CHECK_RELATIVE_RMS:
        return f"the written int8 file's logits differ from the model's by {err:.2f} of their spread"
    return ""


def direct_int8(model: torch.nn.Module, calibration: np.ndarray, *, int8_io: bool = False,
                check: bool = True) -> tuple[bytes | None, str]:
    """The int8 file of `model` (eval mode) written directly and, with `check`, run against the float model
    on up to `CHECK_IMAGES` calibration images: (bytes, "") or (None, why the direct writer does not apply)."""
    try:
        data = write_int8_tflite(model, calibration, int8_io=int8_io)
    except Unsupported as exc:
        return None, str(exc)
    if check:
        problem = check_int8(data, model, np.asarray(calibration, dtype=np.float32)[:CHECK_IMAGES])
        if problem:
            return None, problem
    return data, ""
