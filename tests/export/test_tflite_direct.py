"""Tests for edgenas.export.tflite_direct: the fp32 file written without a converter is litert-torch's graph op
for op, computes what PyTorch computes, and anything the writer does not know goes to litert-torch."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from edgenas.export.tflite import TFLiteConversionError, export_tflite, run_tflite, tflite_interpreter
from edgenas.export.tflite_direct import INPUT_NAME, OUTPUT_NAME, check_against_torch, op_sequence, write_tflite
from edgenas.latency.blocks import block_index
from edgenas.latency.models import _example, arch_description, build_model, piece_description
from edgenas.nn.static import ConvBNAct, MBConv
from edgenas.space import SearchSpace
from tests.export.test_subnet import trained_subnet


def _torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def _close(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the largest magnitude (1e-6-ish for float rounding)."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _latency_models():
    """Random-weight models as latency calibration builds them: tiny archs, a mobilenetv3 arch, table pieces."""
    tiny, mnv3 = SearchSpace.preset("tiny"), SearchSpace.preset("mobilenetv3")
    rng = np.random.default_rng(7)
    arch = tiny.sample(rng)
    pieces = block_index(tiny).pieces_of(arch)
    block = next(p for p in pieces if p.kind == "block" and p.se_mid and p.stride == 2)
    head = pieces[-1]
    small = mnv3.sample(rng, resolutions=[min(mnv3.resolutions)])  # the smallest: litert-torch takes a minute
    return {
        "tiny-nchw": (arch_description(tiny, arch), False),
        "mobilenetv3-nhwc": (arch_description(mnv3, small), True),
        "block-se-hswish-stride2": (piece_description(block), True),
        "head": (piece_description(head), True),
    }


CASES = _latency_models()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_direct_file_is_litert_graph_op_for_op_and_computes_the_same(name, tmp_path):
    description, channels_last = CASES[name]
    model = build_model(description)
    example = _example(model)
    ref = export_tflite(model, tmp_path / "litert.tflite", example=example, channels_last=channels_last,
                        converter="litert-torch")
    direct = export_tflite(model, tmp_path / "direct.tflite", example=example, channels_last=channels_last)
    assert ref.converter == "litert-torch" and direct.converter == "direct" and direct.fallback_reason == ""
    assert op_sequence(direct.path) == op_sequence(ref.path)
    assert direct.ops == ref.ops and direct.input_dtype == ref.input_dtype == "float32"
    for path in (ref.path, direct.path):  # the names and signature litert-torch gives its files
        interpreter = tflite_interpreter(path)
        assert interpreter.get_input_details()[0]["name"] == INPUT_NAME
        assert interpreter.get_output_details()[0]["name"] == OUTPUT_NAME
        assert list(interpreter.get_signature_list()) == ["serving_default"]
    x = torch.randn((3,) + tuple(example.shape[1:]), generator=torch.Generator().manual_seed(1)).numpy()
    want = _torch(model, x)
    got_direct, got_litert = run_tflite(direct.path, x), run_tflite(ref.path, x)
    errors = (_close(got_direct, want.reshape(got_direct.shape)), _close(got_litert, want.reshape(got_litert.shape)),
              _close(got_direct, got_litert))
    print(name, "relative differences direct-torch {:.2e} litert-torch {:.2e} direct-litert {:.2e}".format(*errors))
    # as close to PyTorch as litert-torch's own file (1.2e-5 on mobilenetv3's 1000 logits in one CI run)
    assert errors[0] <= max(1e-5, 1.5 * errors[1])
    # litert-torch's own rounding on a deep random-weight net with 1000 logits reaches ~1.5e-5 of the largest
    assert errors[1] <= 5e-5 and errors[2] <= 5e-5


def test_trained_subnet_is_written_directly_and_matches_torch(tmp_path):
    _, arch, model = trained_subnet()
    result = export_tflite(model, tmp_path / "m.tflite")
    assert result.converter == "direct" and result.to_dict()["converter"] == "direct"
    ops = [op[0] for op in op_sequence(result.path)]
    assert ops[-1] == "FULLY_CONNECTED" and "TRANSPOSE" not in ops  # NHWC input, logits out
    x = torch.randn(8, 1, arch.resolution, arch.resolution, generator=torch.Generator().manual_seed(2)).numpy()
    assert _close(run_tflite(result.path, x), _torch(model, x)) <= 1e-5


def test_nchw_input_is_one_transpose_in_front(tmp_path):
    _, arch, model = trained_subnet()
    data = write_tflite(model.eval(), (1, 1, arch.resolution, arch.resolution), channels_last=False)
    ops = op_sequence(data)
    assert ops[0][0] == "TRANSPOSE" and ops[0][2][0] == [1, 1, arch.resolution, arch.resolution]
    assert [op[0] for op in ops].count("TRANSPOSE") == 1


def test_fp32_needs_no_litert_torch(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # an install without the converter
    _, _, model = trained_subnet()
    assert export_tflite(model, tmp_path / "m.tflite").converter == "direct"


class _Gelu(nn.Module):
    """A layer the direct writer does not know."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x)


class _LyingPlan(nn.Module):
    """Says its forward is one block when it runs that block twice: the check against PyTorch must catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.block = MBConv(8, 8, 3, 1, mid=16, act="relu", se_mid=None, residual=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.block(x))

    def tflite_plan(self):
        return [("block", self.block)]


def _small(extra: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(ConvBNAct(3, 8, 3, 1, act="relu"), extra).eval()


def test_unknown_layer_falls_back_to_litert_and_says_why(tmp_path):
    model = _small(_Gelu())
    example = torch.randn(1, 3, 8, 8)
    result = export_tflite(model, tmp_path / "m.tflite", example=example)
    assert result.converter == "litert-torch" and "_Gelu" in result.fallback_reason
    x = torch.randn(2, 3, 8, 8).numpy()
    assert _close(run_tflite(result.path, x), _torch(model, x).reshape(2, -1)) <= 1e-5  # NCHW out, as PyTorch
    with pytest.raises(TFLiteConversionError, match="_Gelu"):
        export_tflite(model, tmp_path / "d.tflite", example=example, converter="direct")


def test_a_file_that_computes_something_else_is_not_used(tmp_path):
    model = _small(_LyingPlan())
    example = torch.randn(1, 3, 8, 8)
    data = write_tflite(model, tuple(example.shape))  # the writer believes the plan ...
    assert "differs" in check_against_torch(data, model, example)  # ... the check does not
    result = export_tflite(model, tmp_path / "m.tflite", example=example)
    assert result.converter == "litert-torch" and "differs" in result.fallback_reason
    x = torch.randn(2, 3, 8, 8).numpy()
    assert _close(run_tflite(result.path, x), _torch(model, x).reshape(2, -1)) <= 1e-5


def test_converter_choices(tmp_path):
    _, _, model = trained_subnet()
    with pytest.raises(ValueError, match="unknown TFLite converter 'tflite'"):
        export_tflite(model, tmp_path / "m.tflite", converter="tflite")
    with pytest.raises(TFLiteConversionError, match="NHWC inputs only"):
        export_tflite(model, tmp_path / "m.tflite", quantization="int8", calibration=np.zeros((1, 1, 24, 24), np.float32),
                      converter="direct", channels_last=False)
