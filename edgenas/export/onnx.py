"""ONNX export of a static subnet: one self-contained .onnx file, checked in ONNX Runtime against PyTorch.

Exporter choice (measured on this project's 2-core CPU machine, torch 2.13.0, a `tiny` subnet):
the TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`, opset 17) took 0.13-0.34 s
per model, the dynamo exporter 3.0-4.6 s (and 1.0-2.5 s for a small MobileNetV3 in
../shared/notes/dependencies.md). Latency calibration exports hundreds of block and subnet
models, so a 20x difference is minutes of a user's time: edgenas uses the TorchScript exporter
and falls back to dynamo only where a future torch has removed it. Both give a single file here
(`external_data=False` for dynamo); outputs match ONNX Runtime within 1e-5. Faster still, and the
default (`exporter="auto"`): edgenas's own layers are written directly (`edgenas.export.onnx_direct`,
the TorchScript exporter's graph node for node, 0.01-0.15 s with its check against PyTorch instead of
0.02-0.36 s); anything else goes to torch's exporters.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgenas.export.onnx_direct import direct_onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17
EXPORTERS = ("auto", "direct", "torchscript", "dynamo")


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote: the file, how long it took, and (when verified) the max abs difference."""

    path: Path
    seconds: float
    exporter: str
    opset: int
    max_abs_diff: float | None = None
    fallback_reason: str = ""  # why "auto" used torch's exporter (empty: not asked, or direct)


def _export(model: nn.Module, example: torch.Tensor, path: Path, exporter: str, opset: int,
            dynamic_batch: bool) -> str:
    common = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    if exporter in ("auto", "torchscript"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, (example,), str(path), dynamo=False, opset_version=opset,
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
                    **common,
                )
            return "torchscript"
        except (TypeError, RuntimeError, AttributeError) as exc:
            if exporter == "torchscript":
                raise
            if "dynamo" not in str(exc) and not isinstance(exc, TypeError):
                raise
    batch = torch.export.Dim("batch", min=1) if dynamic_batch else None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, external_data=False, opset_version=max(opset, 18),
            dynamic_shapes=({0: batch},) if dynamic_batch else None, verbose=False, **common,
        )
    return "dynamo"


def _file_opset(path: Path) -> int:
    # deferred: onnx loads only when this runs, not on import
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def onnx_weight_bytes(path: str | os.PathLike) -> int:
    """The bytes of the weights an ONNX file holds (its initializers): what an fp32 flash limit counts
    (`search.problem.Constraints`: fp32 flash is the weights, `cost.ArchStats.flash_fp32`). The file is larger by its
    graph's names and structure (18-24 KB on the tiny preset's subnets)."""
    # deferred: onnx loads only when this runs, not on import
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer))


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    example: torch.Tensor | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    dynamic_batch: bool = False,
    verify: bool = True,
    atol: float = 1e-4,
) -> OnnxExport:
    """Export `model` (eval mode, on CPU) to a single ONNX file at `path`.

    `exporter`: "auto" (the default) writes edgenas's own layers directly (`edgenas.export.onnx_direct`, the
    TorchScript exporter's graph node for node, in milliseconds) when the file computes what the model computes
    on `example`, else exports with torch (the result's `exporter` and `fallback_reason` say which and why);
    "direct" insists on the direct writer; "torchscript" and "dynamo" always use torch's exporters.
    `example` defaults to `model.example_input()` (a StaticNet knows its resolution). With
    `verify`, the file is run in ONNX Runtime on `example` and compared with PyTorch; a difference
    above `atol` raises `OnnxMismatchError` (the file is kept for inspection).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {exporter!r}: choose from {', '.join(EXPORTERS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model = model.eval().cpu()
    if example is None:
        example = model.example_input()  # type: ignore[operator]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    t0 = time.perf_counter()
    fallback = ""
    try:
        data = None
        if exporter in ("auto", "direct") and opset == DEFAULT_OPSET:
            data, fallback = direct_onnx(model, example, dynamic_batch=dynamic_batch)
            if data is None and exporter == "direct":
                raise OnnxMismatchError(f"the direct ONNX writer could not write the model: {fallback}")
        if data is not None:
            tmp.write_bytes(data)
            used = "direct"
        else:
            used = _export(model, example, tmp, "auto" if exporter == "direct" else exporter, opset, dynamic_batch)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    seconds = time.perf_counter() - t0
    diff = None
    if verify:
        with torch.no_grad():
            expected = model.eval()(example).numpy()
        model.train(was_training)
        got = run_onnx(path, example.numpy())
        diff = float(np.abs(got - expected).max())
        if not diff <= atol:
            raise OnnxMismatchError(
                f"ONNX model {path} differs from PyTorch by {diff:.3g} (max abs), more than {atol:g}; "
                f"the file is kept for inspection")
    return OnnxExport(path, seconds, used, _file_opset(path), diff, fallback)


class OnnxMismatchError(RuntimeError):
    """The exported ONNX file does not compute what the PyTorch model computes."""


def onnx_session(path: str | os.PathLike, threads: int = 1):
    # deferred: onnxruntime loads only when this runs, not on import
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(path: str | os.PathLike, inputs: np.ndarray, *, session=None) -> np.ndarray:
    """Run an ONNX model on a batch (looping one sample at a time when the model's batch is fixed)."""
    sess = session or onnx_session(path)
    meta = sess.get_inputs()[0]
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    fixed = meta.shape[0] if isinstance(meta.shape[0], int) else None
    if fixed is None or fixed == inputs.shape[0]:
        return sess.run(None, {meta.name: inputs})[0]
    outs = [sess.run(None, {meta.name: inputs[i:i + fixed]})[0] for i in range(0, inputs.shape[0], fixed)]
    return np.concatenate(outs, axis=0)
