"""Tests for edgenas.export.tflite_int8: the int8 file written without a converter is litert-torch's int8 graph op
for op (so TFLite Micro plans the same arena), keeps TFLite's quantization rules, computes what the float model
computes within int8 rounding, and anything the writer does not know or gets wrong goes to litert-torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgenas.export.micro import check_micro
from edgenas.export.tflite import describe_tflite, export_friendly, export_tflite, run_tflite
from edgenas.export.tflite_direct import op_sequence
from edgenas.export.tflite_int8 import check_int8, write_int8_tflite
from edgenas.nn.static import ConvBNAct, MBConv
from edgenas.space import SearchSpace, StageSpec
from tests.export.test_tflite_direct import _Gelu, _small


def odd_shapes():
    """A stride-2 stem, a ReLU stage with squeeze-excite, an h-swish stage, odd feature maps (SAME and explicit
    PAD convolutions), trained-like parameters (random biases and BatchNorm means), calibration images."""
    from edgenas import Supernet

    space = SearchSpace(name="int8-test", stages=(StageSpec(16, 2, "relu", True, (1, 2)),
                                                  StageSpec(24, 2, "hswish", False, (1, 2))),
                        kernels=(3, 5), expands=(3, 4), resolutions=(26,), stem_width=8, stem_stride=2,
                        first_block_width=16, final_expand_width=48, feature_width=64, num_classes=5)
    arch = space.arch(26, (2, 2), (5, 3, 3, 5), (4, 3, 4, 3))
    torch.manual_seed(0)
    supernet = Supernet(space).eval()
    with torch.no_grad():
        for name, value in list(supernet.named_parameters()) + list(supernet.named_buffers()):
            if name.endswith(("bias", "running_mean")):
                value.normal_(0.0, 0.1)
    images = np.random.default_rng(0).random((64, 3, 26, 26)).astype(np.float32)
    return space, arch, supernet.extract(arch).eval(), images


def _model_t(path):
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    return model, model.subgraphs[0]


@pytest.mark.slow
def test_direct_int8_is_litert_graph_op_for_op_with_the_same_arena(tmp_path):
    _, _, model, images = odd_shapes()
    direct = export_tflite(model, tmp_path / "direct.tflite", quantization="int8", calibration=images)
    litert = export_tflite(model, tmp_path / "litert.tflite", quantization="int8", calibration=images,
                           converter="litert-torch")
    assert direct.converter == "direct" and litert.converter == "litert-torch"
    assert op_sequence(direct.path) == op_sequence(litert.path)  # op kinds, options, shapes, in order
    a, b = check_micro(direct.path), check_micro(litert.path)
    assert a.ok and b.ok and a.arena_bytes == b.arena_bytes and a.activation_bytes == b.activation_bytes
    # both quantize as well: the logits' error against the float model is int8 rounding, of the same size
    x = images[:32]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    spread = want.std()
    err_direct = np.sqrt(np.mean((run_tflite(direct.path, x) - want) ** 2)) / spread
    err_litert = np.sqrt(np.mean((run_tflite(litert.path, x) - want) ** 2)) / spread
    assert err_direct < 0.1 and err_direct < 2 * err_litert, (err_direct, err_litert)


def test_quantization_follows_tflite_rules(tmp_path):
    _, _, model, images = odd_shapes()
    path = tmp_path / "m.tflite"
    path.write_bytes(write_int8_tflite(export_friendly(model), images))
    m, g = _model_t(path)
    names = {i: c for i, c in enumerate(m.operatorCodes)}
    from ai_edge_litert import schema_py_generated as schema

    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    seen = set()
    for op in g.operators:
        code = names[op.opcodeIndex]
        kind = ops[max(code.builtinCode, code.deprecatedBuiltinCode)]
        seen.add(kind)
        inp, out = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
        if kind in ("PAD", "RESHAPE"):  # TFLite requires the input's quantization on the output
            assert list(out.quantization.scale) == list(inp.quantization.scale)
            assert list(out.quantization.zeroPoint) == list(inp.quantization.zeroPoint)
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            w, b = g.tensors[op.inputs[1]], g.tensors[op.inputs[2]]
            q = np.frombuffer(bytes(m.buffers[w.buffer].data), dtype=np.int8)
            assert w.type == 9 and np.abs(q.astype(int)).max() <= 127 and not np.any(w.quantization.zeroPoint)
            assert w.quantization.quantizedDimension == (3 if kind == "DEPTHWISE_CONV_2D" else 0)
            assert len(w.quantization.scale) == out.shape[-1]  # per output channel
            assert b.type == 2 and not np.any(b.quantization.zeroPoint)
            np.testing.assert_allclose(b.quantization.scale, inp.quantization.scale[0] * np.asarray(w.quantization.scale),
                                       rtol=1e-6)
        if kind not in ("QUANTIZE", "DEQUANTIZE"):
            assert inp.type == 9 and out.type == 9, kind  # every op between the ends computes in int8
    assert {"QUANTIZE", "PAD", "CONV_2D", "DEPTHWISE_CONV_2D", "HARD_SWISH", "MEAN", "RESHAPE", "ADD", "MUL",
            "FULLY_CONNECTED", "DEQUANTIZE"} <= seen
    info = describe_tflite(path)
    assert info["input_dtype"] == "float32" and info["output_dtype"] == "float32"
    assert check_int8(path.read_bytes(), export_friendly(model), images) == ""


def test_int8_io_file_has_int8_ends_and_the_same_answers(tmp_path):
    _, _, model, images = odd_shapes()
    float_io = export_tflite(model, tmp_path / "f.tflite", quantization="int8", calibration=images)
    int8_io = export_tflite(model, tmp_path / "i.tflite", quantization="int8", calibration=images, int8_io=True)
    assert float_io.converter == int8_io.converter == "direct"
    assert int8_io.input_dtype == "int8" and int8_io.output_dtype == "int8"
    assert "QUANTIZE" not in int8_io.ops and "DEQUANTIZE" not in int8_io.ops
    a, b = run_tflite(float_io.path, images[:16]), run_tflite(int8_io.path, images[:16])
    scale = describe_tflite(int8_io.path)["output_quantization"][0]
    assert np.abs(a - b).max() <= 2 * scale  # the input rounding, at most a step or two of the output


@pytest.mark.slow
def test_unknown_layer_falls_back_to_litert_int8(tmp_path):
    model = _small(_Gelu())
    images = np.random.default_rng(0).random((16, 3, 8, 8)).astype(np.float32)
    result = export_tflite(model, tmp_path / "m.tflite", quantization="int8", calibration=images,
                           example=torch.zeros(1, 3, 8, 8))
    assert result.converter == "litert-torch" and "_Gelu" in result.fallback_reason
    assert result.input_dtype == "float32" and "QUANTIZE" in result.ops


class _LyingClassifier(nn.Module):
    """Its plan says one block before the head, its forward runs the block twice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = ConvBNAct(3, 8, 3, 1, act="relu")
        self.block = MBConv(8, 8, 3, 1, mid=16, act="relu", se_mid=None, residual=True)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():  # make the second pass of the block matter
            for p in self.block.parameters():
                p.mul_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.block(self.stem(x))).mean((2, 3)))

    def tflite_plan(self):
        return [("stem", self.stem), ("block", self.block), ("pool", "mean"), ("flatten", "flatten"), ("fc", self.fc)]


@pytest.mark.slow
def test_an_int8_file_that_computes_something_else_is_not_used(tmp_path):
    model = _LyingClassifier().eval()
    images = np.random.default_rng(0).random((16, 3, 8, 8)).astype(np.float32)
    data = write_int8_tflite(export_friendly(model), images)  # the writer believes the plan ...
    assert "differ" in check_int8(data, export_friendly(model), images)  # ... the check does not
    result = export_tflite(model, tmp_path / "m.tflite", quantization="int8", calibration=images,
                           example=torch.zeros(1, 3, 8, 8))
    assert result.converter == "litert-torch" and "differ" in result.fallback_reason


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["block", "stem"])
def test_latency_pieces_are_written_directly_as_litert_writes_them(kind, tmp_path):
    """A latency table's int8 pieces return maps (NCHW, as PyTorch): a TRANSPOSE then the DEQUANTIZE."""
    from edgenas.latency.blocks import block_index
    from edgenas.latency.models import _example, build_model, piece_description

    tiny = SearchSpace.preset("tiny")
    pieces = block_index(tiny).pieces_of(tiny.sample(np.random.default_rng(7)))
    piece = pieces[0] if kind == "stem" else next(p for p in pieces if p.kind == "block" and p.se_mid and p.stride == 2)
    model = build_model(piece_description(piece))
    example = _example(model)
    images = torch.randn((8,) + tuple(example.shape[1:]), generator=torch.Generator().manual_seed(1)).numpy()
    direct = export_tflite(model, tmp_path / "d.tflite", quantization="int8", calibration=images, example=example)
    litert = export_tflite(model, tmp_path / "l.tflite", quantization="int8", calibration=images, example=example,
                           converter="litert-torch")
    assert direct.converter == "direct", direct.fallback_reason
    assert op_sequence(direct.path) == op_sequence(litert.path)
    assert [op[0] for op in op_sequence(direct.path)][-2:] == ["TRANSPOSE", "DEQUANTIZE"]
    with torch.no_grad():
        want = model(torch.from_numpy(images)).numpy()
    got = run_tflite(direct.path, images).reshape(want.shape)
    assert np.sqrt(np.mean((got - want) ** 2)) / want.std() < 0.1
