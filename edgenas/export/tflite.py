"""TFLite export of a static subnet: fp32, and full-integer int8 calibrated on real images.

Files of edgenas's own layers are written directly by default: fp32 by `edgenas.export.tflite_direct`
(the graph litert-torch emits, op for op, in milliseconds instead of ~10 s), int8 by
`edgenas.export.tflite_int8` (litert-torch's int8 graph and quantization recipe, calibrated and
written in about a second instead of 15-30 s); `converter="litert-torch"` forces the converter, and
anything the direct writers do not know falls back to it.

Converter choice (measured; figures in docs/decisions.md): litert-torch converts the PyTorch
model directly, fp32 within 1e-6 of torch; its int8 path is PyTorch 2 Export (PT2E) quantization,
which edgenas drives with its own annotator so that *every* op is int8 (litert-torch's stock
quantizer leaves hard-swish, mean, residual adds and the squeeze-excite gate in float between
DEQUANTIZE/QUANTIZE pairs), and with an export-friendly hard-sigmoid `relu6(x + 3) * (1/6)`, whose
pieces fold into an int8 ADD with a fused RELU6 and an int8 MUL; the stock hard-sigmoid lowers to
float ops, and TensorFlow's Keras converter turns it into RELU_0_TO_1, which TFLite Micro lacks.

Layout: NHWC input by default (`channels_last=True`), as TFLite kernels and microcontroller
camera pipelines expect; the transpose is folded into the graph, not run on device.
An int8 model takes and returns float32 by default (a QUANTIZE op in front, a DEQUANTIZE op at the
end, both TFLite Micro builtins); `int8_io=True` leaves int8 tensors at the interface instead.
litert-torch is heavy (jax, torchao): it is imported lazily and only here.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgenas.errors import require
from edgenas.export.quiet import captured_output
from edgenas.export.tflite_direct import ExportFriendlyHardsigmoid, direct_tflite
from edgenas.export.tflite_int8 import direct_int8, quantize_input

QUANTIZATIONS = (None, "int8")
# "auto": files of the layers edgenas.export.tflite_direct knows are written directly (fp32 in milliseconds, int8
# with its calibration in about a second: the graph litert-torch emits op for op), anything else by litert-torch.
CONVERTERS = ("auto", "direct", "litert-torch")
CALIBRATION_BATCH = 32
_TFLITE_INT8 = 9
_TFLITE_FLOAT32 = 0


@dataclass(frozen=True)
class TFLiteExport:
    """What `export_tflite` wrote: the file, conversion time, quantization and the model's interface."""

    path: Path
    seconds: float
    quantization: str | None
    channels_last: bool
    input_dtype: str
    output_dtype: str
    ops: list[str] = field(default_factory=list)
    calibration_images: int = 0
    converter: str = "litert-torch"
    fallback_reason: str = ""  # why "auto" used litert-torch (empty: not asked, or direct)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "seconds": round(self.seconds, 3), "quantization": self.quantization,
                "channels_last": self.channels_last, "input_dtype": self.input_dtype,
                "output_dtype": self.output_dtype, "ops": self.ops, "calibration_images": self.calibration_images,
                "converter": self.converter, "fallback_reason": self.fallback_reason}


class ChannelsLastInput(nn.Module):
    """Takes NHWC images and runs an NCHW model on them; the converter folds the transpose into the graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


def export_friendly(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval mode) with every `nn.Hardsigmoid` replaced by `ExportFriendlyHardsigmoid`.

    The model itself is not touched, so training and the supernet keep their numerics. The copy is of the module
    tree only (`_module_tree`): it holds the model's own parameter and buffer tensors, which exporting reads and
    never writes. A deep copy of every module and tensor took 40 % of writing a small model's TFLite file
    (4 of 10.7 CPU-s for a calibration's 262 latency models)."""
    if any(t.device.type != "cpu" for t in (*model.parameters(), *model.buffers())):
        model = copy.deepcopy(model).cpu()  # its tensors moved to the CPU in the copy, not in the model
    return _module_tree(model).eval()


def _module_tree(module: nn.Module) -> nn.Module:
    """A new module object for `module` and each of its children (Hardsigmoid swapped), with fresh containers
    (children, parameter and buffer dicts, hooks: what export code may add to or register on its copy) and the
    same tensors."""
    tree = copy.copy(module)
    for name, value in vars(module).items():
        if isinstance(value, dict):
            tree.__dict__[name] = value.copy()
    tree.__dict__["_modules"] = {
        name: None if child is None else (ExportFriendlyHardsigmoid() if isinstance(child, nn.Hardsigmoid)
                                          else _module_tree(child))
        for name, child in module._modules.items()}
    return tree


def litert_torch():
    """Import litert-torch quietly (it prints CUDA library warnings from torchao), or explain how to install it."""
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with captured_output():
        return require("litert_torch", extra="tflite", purpose="TFLite export")


def require_converter() -> None:
    """Fail early, with the install command, when the TFLite converter or interpreter is missing. litert-torch is
    looked for, not imported: its import takes 5-6 s here, and the direct writers need it only for what they cannot
    write (it is imported then)."""
    require("litert_torch", extra="tflite", purpose="TFLite export", load=False)
    require("ai_edge_litert.interpreter", extra="tflite", purpose="checking TFLite files")


def _full_integer_quantizer():
    """litert-torch's PT2E quantizer (per-channel int8 weights, int8 activations) extended to every op of a
    MobileNetV3 block, so the converted graph has no float islands."""
    # deferred: litert_torch (the [tflite] extra), torchao (comes with litert-torch) load only when this runs, not on import
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    aten = torch.ops.aten
    elementwise = {aten.hardswish.default, aten.hardtanh.default, aten.relu.default, aten.relu6.default,
                   aten.mean.dim, aten.add.Tensor, aten.mul.Tensor, aten.clamp.default}

    class FullIntegerQuantizer(pt2e_quantizer.PT2EQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            spec = self.global_config.input_activation
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in elementwise:
                    continue
                done = node.meta.get("quantization_annotation")
                if done is not None and done._annotated:
                    continue
                inputs = {a: spec for a in node.args if isinstance(a, torch.fx.Node)}
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map=inputs, output_qspec=spec, _annotated=True)
            return model

    return FullIntegerQuantizer().set_global(pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))


def export_tflite(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    quantization: str | None = None,
    calibration: np.ndarray | None = None,
    int8_io: bool = False,
    channels_last: bool = True,
    example: torch.Tensor | None = None,
    converter: str = "auto",
    check: bool = True,
) -> TFLiteExport:
    """Convert `model` (a static subnet) to a TFLite file at `path` (written atomically).

    `quantization="int8"` makes a full-integer model calibrated on `calibration` (float32 NCHW images at
    the model's resolution, preprocessed as for the PyTorch model; a few hundred training images).
    `example` (NCHW) defaults to `model.example_input()`.
    `converter`: "auto" (the default) writes the file directly (`edgenas.export.tflite_direct`, int8:
    `edgenas.export.tflite_int8`) when the model is made of layers the writers know and the file computes
    what the model computes (fp32: on `example`; int8: within int8 rounding, on calibration images), else
    converts with litert-torch (the result's `converter` and `fallback_reason` say which and why);
    "direct" insists on the direct writers; "litert-torch" always converts with litert-torch.
    `check=False` skips the int8 file's numeric check (a model timed, never used: its graph is what counts, and
    the direct writer's graph is litert-torch's op for op, tests/export/test_tflite_int8.py).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown TFLite quantization {quantization!r}: choose None (fp32) or 'int8'")
    if converter not in CONVERTERS:
        raise ValueError(f"unknown TFLite converter {converter!r}: choose {', '.join(CONVERTERS)}")
    if quantization == "int8" and (calibration is None or len(calibration) == 0):
        raise ValueError("int8 export needs calibration images: pass a few hundred training images (NCHW float32)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if example is None:
        example = model.example_input()  # type: ignore[operator]
    net = export_friendly(model)
    data, used, fallback = None, "litert-torch", ""
    t0 = time.perf_counter()
    if converter != "litert-torch":
        if quantization is None:
            data, fallback = direct_tflite(net, example, channels_last=channels_last)
        elif not channels_last:
            fallback = "the direct int8 writer writes NHWC inputs only"
        else:
            data, fallback = direct_int8(net, calibration, int8_io=int8_io, check=check)
        if data is not None:
            used = "direct"
        elif converter == "direct":
            raise TFLiteConversionError(f"the direct TFLite writer could not write the model: {fallback}")
    if data is None:
        lt = litert_torch()
        if channels_last:
            net = ChannelsLastInput(net).eval()
            example = example.permute(0, 2, 3, 1).contiguous()
        t0 = time.perf_counter()
        with captured_output() as log:
            try:
                if quantization is None:
                    data = lt.convert(net, (example,)).model_content()
                else:
                    data = _convert_int8(lt, net, example, _layout(calibration, channels_last))
                    if not int8_io:
                        data = with_float_io(data)
            except Exception as exc:
                raise TFLiteConversionError(f"litert-torch could not convert the model: {type(exc).__name__}: {exc}") from exc
        del log
    seconds = time.perf_counter() - t0
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    info = describe_tflite(path)
    return TFLiteExport(path, seconds, quantization, channels_last, info["input_dtype"], info["output_dtype"],
                        info["ops"], 0 if calibration is None or quantization is None else len(calibration),
                        used, fallback)


class TFLiteConversionError(RuntimeError):
    """The converter failed on this model."""


def _layout(images: np.ndarray, channels_last: bool) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return x.permute(0, 2, 3, 1).contiguous() if channels_last else x


@torch.no_grad()
def _convert_int8(lt: Any, net: nn.Module, example: torch.Tensor, calibration: torch.Tensor) -> bytes:
    # deferred: litert_torch (the [tflite] extra), torchao (comes with litert-torch) load only when this runs, not on import
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e

    quantizer = _full_integer_quantizer()
    # Calibrate in batches (observers cost a Python call per op per forward); the batch dimension is
    # dynamic only here, and the deployed model is converted with the batch-1 example.
    batch = torch.export.Dim("batch", min=1, max=max(2, CALIBRATION_BATCH))
    graph = torch.export.export(net, (example.expand(2, *example.shape[1:]).contiguous(),),
                                dynamic_shapes=({0: batch},)).module()
    graph = quantize_pt2e.prepare_pt2e(graph, quantizer)
    for i in range(0, calibration.shape[0], CALIBRATION_BATCH):
        graph(calibration[i:i + CALIBRATION_BATCH])
    graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
    graph = move_exported_model_to_eval(graph)
    graph.training = False
    return lt.convert(graph, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).model_content()


def with_float_io(data: bytes) -> bytes:
    """Give an int8 TFLite model float32 inputs and outputs: a QUANTIZE op before each int8 input and a
    DEQUANTIZE op after each int8 output (what TensorFlow's converter does with float I/O)."""
    # deferred: flatbuffers, ai_edge_litert (the [tflite] extra) load only when this runs, not on import
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]

    def opcode(builtin: int) -> int:
        for i, code in enumerate(model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
                return i
        code = schema.OperatorCodeT()
        code.builtinCode = builtin
        code.deprecatedBuiltinCode = min(builtin, 127)
        code.version = 1
        model.operatorCodes.append(code)
        return len(model.operatorCodes) - 1

    def float_twin(index: int) -> int:
        tensor = graph.tensors[index]
        twin = schema.TensorT()
        twin.shape = tensor.shape
        twin.shapeSignature = tensor.shapeSignature
        twin.type = _TFLITE_FLOAT32
        twin.name = tensor.name
        tensor.name = (tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)) + "_int8"
        model.buffers.append(schema.BufferT())
        twin.buffer = len(model.buffers) - 1
        graph.tensors.append(twin)
        return len(graph.tensors) - 1

    renamed: dict[int, int] = {}
    added: dict[bool, list] = {True: [], False: []}  # is_input -> new ops
    for is_input, ends, builtin in ((True, graph.inputs, schema.BuiltinOperator.QUANTIZE),
                                    (False, graph.outputs, schema.BuiltinOperator.DEQUANTIZE)):
        for pos, index in enumerate(ends):
            if graph.tensors[index].type != _TFLITE_INT8:
                continue
            twin = float_twin(index)
            op = schema.OperatorT()
            op.opcodeIndex = opcode(builtin)
            op.inputs, op.outputs = ([twin], [index]) if is_input else ([index], [twin])
            added[is_input].append(op)
            ends[pos] = renamed[index] = twin
    graph.operators = added[True] + list(graph.operators) + added[False]
    for signature in model.signatureDefs or []:
        for entry in list(signature.inputs or []) + list(signature.outputs or []):
            entry.tensorIndex = renamed.get(entry.tensorIndex, entry.tensorIndex)
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tflite_interpreter(path: str | os.PathLike, threads: int = 1, *, delegates: bool = True):
    """An allocated TFLite interpreter (ai_edge_litert) for `path`.

    With `delegates` (the default, what a device runs) fp32 ops go to XNNPACK; without, every op runs in
    TFLite's builtin kernels and `_get_ops_details()` lists the model's own ops."""
    interp_mod = require("ai_edge_litert.interpreter", extra="tflite", purpose="running TFLite files")
    resolver = interp_mod.OpResolverType.AUTO if delegates else interp_mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with captured_output():
        interpreter = interp_mod.Interpreter(model_path=str(path), num_threads=threads,
                                             experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    return interpreter


def describe_tflite(path: str | os.PathLike) -> dict[str, Any]:
    """Input/output shapes and dtypes, quantization parameters and the sorted set of builtin ops of a TFLite file."""
    interpreter = tflite_interpreter(path, delegates=False)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    ops = sorted({op["op_name"] for op in interpreter._get_ops_details()})
    return {
        "input_shape": [int(v) for v in inp["shape"]], "input_dtype": np.dtype(inp["dtype"]).name,
        "input_quantization": [float(v) for v in inp["quantization"]],
        "output_shape": [int(v) for v in out["shape"]], "output_dtype": np.dtype(out["dtype"]).name,
        "output_quantization": [float(v) for v in out["quantization"]],
        "ops": ops,
    }


def to_model_input(images: np.ndarray, shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """NCHW float images in the layout of a model input of `shape` (NHWC when the last axis is the channels)."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    if tuple(shape[1:]) == images.shape[1:]:
        return images
    nhwc = images.transpose(0, 2, 3, 1)
    if tuple(shape[1:]) == nhwc.shape[1:]:
        return np.ascontiguousarray(nhwc)
    raise ValueError(f"images of shape {list(images.shape[1:])} (CHW) do not fit a model input of shape {list(shape)}")


def run_tflite(path: str | os.PathLike, images: np.ndarray, *, interpreter=None) -> np.ndarray:
    """Float logits of a TFLite model for NCHW float images, one image at a time (quantizing the input and
    dequantizing the output of an int8-I/O model)."""
    interpreter = interpreter or tflite_interpreter(path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = to_model_input(images, inp["shape"])
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    logits = []
    for i in range(x.shape[0]):
        sample = x[i:i + 1]
        if np.dtype(inp["dtype"]) != np.float32:
            sample = quantize_input(sample, in_scale, in_zero, np.dtype(inp["dtype"]))
        interpreter.set_tensor(inp["index"], sample)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if np.dtype(out["dtype"]) != np.float32:
            y = (y.astype(np.float32) - out_zero) * out_scale
        logits.append(np.asarray(y, dtype=np.float32).reshape(1, -1))
    return np.concatenate(logits, axis=0)
