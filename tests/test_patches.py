"""Patch-based inference in a stock TFLite Micro file (issue 44): the `mcunet` space's int8 files rewritten to run
their first stages on N x N patches, checked in the real TFLite Micro interpreter and LiteRT.

- a 160 px subnet exported whole and with 4 x 4 patches: the patch file's arena (TFLite Micro, measured by the
  smallest arena that works) is at least 3x smaller and its int8 outputs are bit-identical on 20 random inputs;
- the predicted patch-based arena (`micro_memory.predict_patched`) is within 10 % of TFLite Micro's own record
  for 20 random subnets.
Weights are the untrained supernet's with BatchNorm statistics recalibrated on random images (so the logits
spread), which is all bit-identity and memory need.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgenas.micro_memory import graph_prediction, micro_graph, predict_patched
from edgenas.patching import LocalOp, NotPatchable, consumers_of, plan_patches
from edgenas.space import SearchSpace

pytest.importorskip("tflite_micro")
pytest.importorskip("ai_edge_litert")


def _int8_file(space: SearchSpace, arch, seed: int = 0) -> bytes:
    from edgenas.export.tflite_int8 import write_int8_tflite
    from edgenas.supernet import Supernet
    from edgenas.train.bn import recalibrate_bn

    torch.manual_seed(seed)
    net = Supernet(space, space.num_classes).extract(arch)
    images = torch.from_numpy(np.random.default_rng(seed).normal(size=(4, 3, arch.resolution, arch.resolution))
                              .astype(np.float32))
    recalibrate_bn(net, [images])
    net.eval()
    return write_int8_tflite(net, images[:2].numpy(), int8_io=True)


def _run_micro(data: bytes, inputs: list[np.ndarray], arena: int) -> list[np.ndarray]:
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_bytes(data, arena_size=arena)
    out = []
    for x in inputs:
        interpreter.set_input(x, 0)
        interpreter.invoke()
        out.append(np.array(interpreter.get_output(0)).copy())
    return out


def _run_litert(data: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=data, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    out = []
    for x in inputs:
        it.set_tensor(i["index"], x)
        it.invoke()
        out.append(it.get_tensor(o["index"]).copy())
    return out


def test_plan_pads_only_at_the_border_and_covers_the_map():
    # a 3x3 stride-1 SAME conv then a 3x3 stride-2 conv after an explicit PAD, on an 8x8 map, 2x2 patches
    ops = [LocalOp("conv", (0,), 1, (3, 3), (1, 1), (1, 1)), LocalOp("pad", (1,), 2, pad=(1, 1)),
           LocalOp("conv", (2,), 3, (3, 3), (2, 2), (0, 0)), LocalOp("pointwise", (3,), 4)]
    shapes = {0: (8, 8), 1: (8, 8), 2: (10, 10), 3: (4, 4), 4: (4, 4)}
    consumers = consumers_of(ops, [op.inputs for op in ops])
    plan = plan_patches(ops, 3, shapes, 2, consumers)
    pads = [s.pads for s in plan.steps if s.kind == "pad"]
    assert all(min(min(p) for p in pad) == 0 for pad in pads)  # never on both sides: the border only
    last = plan.tensors[plan.steps[-1].output]
    assert last.original and (last.rows, last.cols) == ((0, 4), (0, 4))
    with pytest.raises(NotPatchable):
        plan_patches(ops, 3, shapes, 1, consumers)


@pytest.fixture(scope="module")
def mcunet():
    return SearchSpace.preset("mcunet", num_classes=10)


def test_patches_cut_the_arena_3x_with_bit_identical_outputs(mcunet, tmp_path):
    from edgenas.export.micro import check_micro
    from edgenas.export.patches import patch_tflite

    arch = mcunet.arch(160, (1, 1, 1, 1, 1), (3, 3, 3, 3, 3), (6, 3, 3, 3, 3))
    whole = _int8_file(mcunet, arch)
    choice = predict_patched(mcunet, arch, 4)
    patched = patch_tflite(whole, choice.ops, 4)
    paths = {}
    for name, data in (("whole", whole), ("patches", patched)):
        paths[name] = tmp_path / f"{name}.tflite"
        paths[name].write_bytes(data)
    checks = {name: check_micro(path) for name, path in paths.items()}
    assert all(c.ok for c in checks.values()), [c.error for c in checks.values()]
    assert checks["whole"].arena_bytes >= 3 * checks["patches"].arena_bytes, \
        (checks["whole"].arena_bytes, checks["patches"].arena_bytes)
    rng = np.random.default_rng(7)
    inputs = [rng.integers(-128, 128, size=(1, 160, 160, 3), dtype=np.int8) for _ in range(20)]
    want = _run_micro(whole, inputs, checks["whole"].arena_bytes)
    got = _run_micro(patched, inputs, checks["patches"].arena_bytes)
    assert all(np.array_equal(a, b) for a, b in zip(want, got))
    assert len({a.tobytes() for a in want}) > 1  # the outputs differ between inputs: the comparison means something
    assert all(np.array_equal(a, b) for a, b in zip(_run_litert(whole, inputs[:3]), _run_litert(patched, inputs[:3])))
    # the prediction of both files against TFLite Micro's smallest working arena
    whole_pred = graph_prediction(micro_graph(mcunet, arch, int8_io=True)).arena
    assert abs(whole_pred / checks["whole"].arena_bytes - 1) < 0.10
    assert abs(choice.prediction.arena / checks["patches"].arena_bytes - 1) < 0.10


def test_predicted_patch_arena_within_10_percent_for_20_subnets(mcunet):
    from edgenas.export.micro import _runtime, arena_split
    from edgenas.export.patches import patch_tflite

    small = mcunet.replace(resolutions=(48, 64, 80))  # the rule is the same at every size; small maps convert fast
    rng = np.random.default_rng(44)
    runtime = _runtime()
    errors = []
    for i, arch in enumerate(small.sample_many(rng, 20)):
        n = int(rng.integers(2, 5))
        choice = predict_patched(small, arch, n)
        data = patch_tflite(_int8_file(small, arch, seed=i), choice.ops, n)
        head, tail = arena_split(runtime, data, 4 << 20, None)
        measured = head + tail
        errors.append(abs(choice.prediction.arena / measured - 1))
    assert max(errors) < 0.10, errors
