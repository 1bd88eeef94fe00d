"""Tests for edgenas.export.micro: the real TFLite Micro interpreter runs the int8 model; smallest arena; missing ops."""

from __future__ import annotations

import numpy as np
import pytest

from edgenas.cost import arch_stats
from edgenas.export.micro import _runtime, _try_run, check_micro
from tests.export.test_subnet import exported_bundle, trained_subnet


@pytest.fixture(scope="module")
def bundle():
    return exported_bundle()


def test_int8_model_runs_in_tflite_micro_in_the_smallest_arena(bundle):
    result, val_x, _ = bundle
    space, arch, _ = trained_subnet()
    check = result.micro
    assert check.ok and not check.unsupported_ops
    assert check.analytic_peak_bytes == arch_stats(space, arch).peak_activation_int8
    # the arena holds at least the peak activations the memory planner must place at once
    assert check.arena_bytes >= 0.5 * check.analytic_peak_bytes
    assert check.top1_agrees_with_tflite and check.max_abs_diff_vs_tflite < 0.5
    assert check.activation_bytes + check.persistent_bytes == check.arena_bytes  # TFLite Micro's own record
    data = result.files["tflite-int8"].read_bytes()
    sample = np.zeros((1, arch.resolution, arch.resolution, 1), np.float32)
    assert _try_run(_runtime(), data, check.arena_bytes, sample)[0]
    assert not _try_run(_runtime(), data, check.arena_bytes - 16, sample)[0]  # minimal to 16 bytes
    # found from TFLite Micro's record of the first run, then checked at it and one step below (a bisection from
    # zero loaded the model 25 times)
    assert check.trials == 3


def test_the_smallest_arena_is_found_when_the_record_is_unreadable(bundle, monkeypatch):
    """Without TFLite Micro's allocation record the bisection alone finds the same smallest arena."""
    from edgenas.export import micro

    result, val_x, _ = bundle
    monkeypatch.setattr(micro, "_arena_parts", lambda text: (None, None))
    check = micro.check_micro(result.files["tflite-int8"], images=val_x[:1])
    assert check.ok and check.arena_bytes == result.micro.arena_bytes and check.trials > 10


def _rename_op(data: bytes, old: str, new: str) -> bytes:
    """The same model with every `old` builtin op relabelled `new` (shapes and tensors untouched)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    old_code, new_code = getattr(schema.BuiltinOperator, old), getattr(schema.BuiltinOperator, new)
    for code in model.operatorCodes:
        if max(code.builtinCode, code.deprecatedBuiltinCode) == old_code:
            code.builtinCode, code.deprecatedBuiltinCode = new_code, min(new_code, 127)
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_unsupported_op_is_reported_by_name(bundle, tmp_path):
    # RELU_0_TO_1 is what TensorFlow's Keras converter makes of a hard-sigmoid; TFLite Micro lacks it
    result, val_x, _ = bundle
    path = tmp_path / "relu0to1.tflite"
    path.write_bytes(_rename_op(result.files["tflite"].read_bytes(), "HARD_SWISH", "RELU_0_TO_1"))
    check = check_micro(path)
    assert not check.ok and check.arena_bytes is None
    assert check.unsupported_ops == ["RELU_0_TO_1"]
    assert "RELU_0_TO_1" in check.summary()


def test_fp32_model_also_runs_in_tflite_micro(bundle):
    result, val_x, _ = bundle
    check = check_micro(result.files["tflite"], images=val_x[:1])
    assert check.ok and check.max_abs_diff_vs_tflite < 1e-4
    assert check.arena_bytes > result.micro.arena_bytes  # fp32 activations take 4 bytes a value
