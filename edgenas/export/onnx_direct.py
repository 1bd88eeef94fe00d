"""A direct ONNX writer for edgenas's static networks: the graph built with `onnx.helper`, no tracing.

`torch.onnx.export` (TorchScript) takes 0.1-0.4 s per subnet on this project's 2-core machine; a latency
table and its calibration export hundreds of models, so the export was a third of calibrating an ONNX
Runtime device. The networks are made of a handful of layers, so this module writes the graph the
TorchScript exporter emits for them, node for node (opset 17): Conv with BatchNorm folded in, Relu / Clip
(ReLU6) / HardSwish, ReduceMean over (2, 3) keeping dims, the squeeze-excite gate as HardSigmoid
(alpha 1/6) then Mul, residual Adds, Flatten and Gemm (transB) at the head; input `input`, output
`logits`. Anything else raises `Unsupported` and `export_onnx` falls back to the exporter, as it does when
the written file does not compute what the model computes on the example.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edgenas.export.tflite_direct import (
    ExportFriendlyHardsigmoid,
    LayerWalker,
    Unsupported,
    _array,
    conv_params,
)
from edgenas.nn.static import SqueezeExcite

OPSET = 17
IR_VERSION = 8


class _OnnxWriter(LayerWalker):
    """Lowers edgenas's static layers onto ONNX nodes, one NCHW tensor at a time."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.shapes: dict[str, list[int]] = {}
        self.used: dict[str, int] = {}
        self.flat = False

    def shape(self, x: str) -> list[int]:
        return self.shapes[x]

    def _name(self, base: str) -> str:
        n = self.used.get(base, 0)
        self.used[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def const(self, name: str, value: np.ndarray) -> str:
        # deferred: onnx loads only when this runs, not on import
        from onnx import numpy_helper

        name = self._name(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], shape: list[int], name: str, **attrs: Any) -> str:
        # deferred: onnx loads only when this runs, not on import
        from onnx import helper

        node_name = self._name(f"/{name}/{op}" if name else f"/{op}")
        out = f"{node_name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=node_name, **attrs))
        self.shapes[out] = list(shape)
        return out

    # ---- ops -------------------------------------------------------------------------------
    def conv(self, x: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, act: nn.Module | None, name: str) -> str:
        n, c, h, w = self.shape(x)
        p = conv_params([n, h, w, c], conv, bn, name)
        oh, ow = (h + 2 * p.pad - p.kernel) // p.stride + 1, (w + 2 * p.pad - p.kernel) // p.stride + 1
        inputs = [x, self.const(f"{name}.weight", p.weight)]
        if bn is not None or conv.bias is not None:
            inputs.append(self.const(f"{name}.bias", p.bias))
        y = self.node("Conv", inputs, [n, p.out_channels, oh, ow], f"{name}/conv" if bn is not None else name,
                      dilations=[1, 1], group=p.out_channels if p.depthwise else 1, kernel_shape=[p.kernel] * 2,
                      pads=[p.pad] * 4, strides=[p.stride] * 2)
        return self.activation(y, act, name)

    def activation(self, x: str, act: nn.Module | None, name: str) -> str:
        kind = type(act)
        if act is None or kind is nn.Identity:
            return x
        if kind is nn.ReLU:
            return self.node("Relu", [x], self.shape(x), f"{name}/act")
        if kind is nn.ReLU6:
            low, high = self.const(f"{name}.min", np.float32(0.0)), self.const(f"{name}.max", np.float32(6.0))
            return self.node("Clip", [x, low, high], self.shape(x), f"{name}/act")
        if kind is nn.Hardswish:
            return self.node("HardSwish", [x], self.shape(x), f"{name}/act")
        if kind in (nn.Hardsigmoid, ExportFriendlyHardsigmoid):
            return self.node("HardSigmoid", [x], self.shape(x), f"{name}/gate", alpha=1.0 / 6.0)
        raise Unsupported(f"{name}: activation {kind.__name__} is not written directly")

    def mean(self, x: str, name: str) -> str:
        n, c, _, _ = self.shape(x)
        return self.node("ReduceMean", [x], [n, c, 1, 1], name, axes=[2, 3], keepdims=1)

    def add(self, a: str, b: str, name: str) -> str:
        return self.node("Add", [a, b], self.shape(a), name)

    def flatten(self, x: str, name: str) -> str:
        shape = self.shape(x)
        return self.node("Flatten", [x], [shape[0], int(np.prod(shape[1:]))], name, axis=1)

    def linear(self, x: str, linear: nn.Linear, name: str) -> str:
        shape = self.shape(x)
        if len(shape) != 2 or shape[1] != linear.in_features:
            raise Unsupported(f"{name}: a Linear layer on a {shape} tensor")
        inputs = [x, self.const(f"{name}.weight", _array(linear.weight))]
        if linear.bias is not None:
            inputs.append(self.const(f"{name}.bias", _array(linear.bias)))
        return self.node("Gemm", inputs, [shape[0], linear.out_features], name, alpha=1.0, beta=1.0, transB=1)

    def squeeze_excite(self, x: str, se: SqueezeExcite, name: str) -> str:
        if type(se.relu) is not nn.ReLU:
            raise Unsupported(f"{name}: squeeze-excite with other activations")
        m = self.mean(x, name)
        r = self.conv(m, se.reduce, None, None, f"{name}/reduce")
        r = self.node("Relu", [r], self.shape(r), f"{name}/relu")
        e = self.conv(r, se.expand, None, None, f"{name}/expand")
        g = self.activation(e, se.gate, name)
        return self.node("Mul", [x, g], self.shape(x), name)


def write_onnx(model: nn.Module, example_shape: tuple[int, ...] | list[int], *, dynamic_batch: bool = False,
               input_name: str = "input", output_name: str = "logits") -> bytes:
    """The ONNX file of `model` (eval semantics) for NCHW inputs of `example_shape`, as bytes.

    Raises `Unsupported` for a model holding anything this writer does not write."""
    # deferred: onnx loads only when this runs, not on import
    from onnx import TensorProto, helper

    if len(example_shape) != 4:
        raise Unsupported(f"input of shape {list(example_shape)}: the direct writer takes NCHW images")
    writer = _OnnxWriter()
    shape = [int(v) for v in example_shape]
    writer.shapes[input_name] = shape
    with torch.no_grad():
        y = writer.layer(input_name, model, "")
    if not writer.nodes or writer.nodes[-1].output[0] != y:
        raise Unsupported("the model's output is not its last op's")
    out_shape: list[Any] = list(writer.shape(y))
    writer.nodes[-1].output[0] = output_name  # the last node writes the graph's output
    in_shape: list[Any] = list(shape)
    if dynamic_batch:
        in_shape[0] = out_shape[0] = "batch"
    graph = helper.make_graph(writer.nodes, "main_graph",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_shape)],
                              initializer=writer.initializers)
    model_proto = helper.make_model(graph, producer_name="edgenas", opset_imports=[helper.make_opsetid("", OPSET)])
    model_proto.ir_version = IR_VERSION
    return model_proto.SerializeToString()


# A wrong graph is off by the size of the output; float rounding in a deep net is ~1e-6 of it.
CHECK_RTOL = 1e-3


def direct_onnx(model: nn.Module, example: torch.Tensor, *, dynamic_batch: bool = False,
                check: bool = True) -> tuple[bytes | None, str]:
    """The ONNX file of `model` (eval mode) written directly and, with `check`, run in ONNX Runtime against the
    model on `example`: (bytes, "") or (None, why the direct writer does not apply)."""
    try:
        data = write_onnx(model, tuple(example.shape), dynamic_batch=dynamic_batch)
    except Unsupported as exc:
        return None, str(exc)
    if check:
        # deferred: onnxruntime loads only when this runs, not on import
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        x = example.detach().cpu().float()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        if got.shape != want.shape:
            return None, f"the written file returns shape {list(got.shape)}, the model {list(want.shape)}"
        err, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
        if not np.isfinite(err) or err > CHECK_RTOL * max(scale, 1e-12):
            return None, f"the written file differs from the model by {err:.3g} (outputs up to {scale:.3g})"
    return data, ""
