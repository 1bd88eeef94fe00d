"""Tests for edgenas.export.tflite: fp32 and full-integer int8 conversion, layout, I/O types, missing converter."""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edgenas.errors import MissingDependencyError
from edgenas.export.subnet import dataset_arrays
from edgenas.export.tflite import (
    ExportFriendlyHardsigmoid,
    describe_tflite,
    export_friendly,
    export_tflite,
    run_tflite,
    tflite_interpreter,
)
from edgenas.export.verify import torch_logits
from tests.export.test_subnet import digits, exported_bundle, trained_subnet


@functools.lru_cache(maxsize=1)
def int8_io_model():
    space, arch, model = trained_subnet()
    calibration, _ = dataset_arrays(digits(), "train", arch.resolution, limit=128, shuffle=True)
    out = Path(tempfile.mkdtemp(prefix="edgenas-tflite-test-")) / "int8io.tflite"
    return export_tflite(model, out, quantization="int8", calibration=calibration, int8_io=True)


@pytest.fixture(scope="module")
def bundle():
    return exported_bundle()


def test_fp32_is_nhwc_and_matches_torch(bundle):
    result, val_x, _ = bundle
    _, arch, model = trained_subnet()
    info = describe_tflite(result.files["tflite"])
    assert info["input_shape"] == [1, arch.resolution, arch.resolution, 1]  # NHWC
    assert info["input_dtype"] == "float32" and "TRANSPOSE" not in info["ops"]
    diff = np.abs(run_tflite(result.files["tflite"], val_x[:40]) - torch_logits(model, val_x[:40])).max()
    assert diff <= 1e-4


def test_int8_is_full_integer_with_float_interface(bundle):
    result, _, _ = bundle
    path = result.files["tflite-int8"]
    info = describe_tflite(path)
    assert info["input_dtype"] == "float32" and info["output_dtype"] == "float32"
    interpreter = tflite_interpreter(path, delegates=False)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    assert ops[0]["op_name"] == "QUANTIZE" and ops[-1]["op_name"] == "DEQUANTIZE"
    for op in ops[1:-1]:  # every op in between computes in int8 (no float islands)
        activations = [tensors[i] for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0
                       and tensors[i]["dtype"] not in (np.int32,)]
        assert all(t["dtype"] == np.int8 for t in activations), (op["op_name"], [t["dtype"] for t in activations])
    assert {"HARD_SWISH", "MEAN", "MUL", "ADD"} <= set(info["ops"])  # hard-swish, SE and residuals all int8


def test_int8_io_option_gives_int8_tensors_and_the_same_answers(bundle):
    result, val_x, _ = bundle
    int8_io = int8_io_model()
    assert int8_io.input_dtype == "int8" and int8_io.output_dtype == "int8"
    assert int8_io.calibration_images == 128 and int8_io.quantization == "int8"
    a = run_tflite(int8_io.path, val_x[:50])
    b = run_tflite(result.files["tflite-int8"], val_x[:50])
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.96  # same calibration images, shuffled the same way
    scale = describe_tflite(int8_io.path)["output_quantization"][0]
    assert np.abs(a - b).max() <= 4 * scale


def test_export_friendly_hardsigmoid_matches_and_leaves_model_alone():
    x = torch.linspace(-6, 6, 1001)
    assert torch.allclose(ExportFriendlyHardsigmoid()(x), torch.nn.Hardsigmoid()(x), atol=1e-6)
    _, _, model = trained_subnet()
    friendly = export_friendly(model)
    assert not any(isinstance(m, torch.nn.Hardsigmoid) for m in friendly.modules())
    assert any(isinstance(m, torch.nn.Hardsigmoid) for m in model.modules())
    x = torch.randn(4, 1, 24, 24)
    with torch.no_grad():
        assert torch.allclose(friendly(x), model.eval()(x), atol=1e-5)


def test_int8_needs_calibration_images(tmp_path):
    _, _, model = trained_subnet()
    with pytest.raises(ValueError, match="calibration"):
        export_tflite(model, tmp_path / "m.tflite", quantization="int8")


def test_missing_converter_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # what an install without [tflite] looks like
    _, _, model = trained_subnet()
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgenas\[tflite\]'"):
        export_tflite(model, tmp_path / "m.tflite", converter="litert-torch")  # fp32 by default needs no converter


def test_the_converter_check_finds_litert_torch_without_importing_it():
    """`edgenas export` checks for litert-torch before any work; importing it takes 5-6 s and the direct writers
    seldom need it."""
    import subprocess

    code = ("import sys; from edgenas.export.tflite import require_converter; require_converter(); "
            "print('litert_torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
