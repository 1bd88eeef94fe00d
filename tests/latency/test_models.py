"""The exported-model cache of latency measurement: content-keyed files (fp32 TFLite written in process, int8
conversions in worker processes)."""

from __future__ import annotations

import numpy as np
from latency_helpers import MICRO

from edgenas.latency.blocks import block_index
from edgenas.latency.models import PARALLEL_MIN_MODELS, ModelCache, arch_description, piece_description


def test_missing_tflite_files_are_converted_and_then_reused(tmp_path):
    pieces = block_index(MICRO).pieces[:PARALLEL_MIN_MODELS]
    descriptions = [piece_description(p) for p in pieces]
    cache = ModelCache(tmp_path)
    done = []
    first = cache.get_many(descriptions, "tflite", workers=2, on_done=lambda: done.append(1))
    assert len(done) == len(pieces) and len({path for path, _ in first}) == len(pieces)
    for (path, sha), d in zip(first, descriptions):
        assert path == cache.path_for(d, "tflite") and path.is_file() and len(sha) == 64
    # every file runs in the TFLite interpreter with the piece's input shape
    from ai_edge_litert.interpreter import Interpreter

    for (path, _), p in zip(first, pieces):
        interp = Interpreter(model_path=str(path))
        interp.allocate_tensors()
        (inp,) = interp.get_input_details()
        assert list(inp["shape"]) == [1, p.hw, p.hw, p.cin]
        interp.set_tensor(inp["index"], np.zeros(inp["shape"], np.float32))
        interp.invoke()
    # a second call finds them all in the cache: same files, same hashes, nothing converted again
    stamps = [path.stat().st_mtime_ns for path, _ in first]
    assert cache.get_many(descriptions, "tflite", workers=2) == first
    assert [path.stat().st_mtime_ns for path, _ in first] == stamps


def test_onnx_files_are_exported_in_process_in_order(tmp_path):
    rng = np.random.default_rng(0)
    descriptions = [arch_description(MICRO, a) for a in MICRO.sample_many(rng, 5)]
    got = ModelCache(tmp_path).get_many(descriptions, "onnx")
    assert [path for path, _ in got] == [ModelCache(tmp_path).path_for(d, "onnx") for d in descriptions]
    assert all(path.suffix == ".onnx" and path.is_file() for path, _ in got)


def test_trim_removes_the_least_recently_used_files_first_and_keeps_what_is_asked(tmp_path):
    import os

    descriptions = [piece_description(p) for p in block_index(MICRO).pieces[:4]]
    cache = ModelCache(tmp_path)
    got = cache.get_many(descriptions, "onnx")
    sizes = [path.stat().st_size for path, _ in got]
    for k, (path, _) in enumerate(got):  # used in order 0, 1, 2, 3 (access times a second apart)
        os.utime(path, ns=(10**18 + k * 10**9, path.stat().st_mtime_ns))
    cache.get(descriptions[0], "onnx")  # used again now: the most recent
    removed = cache.trim(sizes[0] + sizes[1] + sizes[3], keep={got[1][0]})
    # 2 goes: the least recently used but 1, which is kept (kept files count towards the bound)
    left = [path.is_file() for path, _ in got]
    assert left == [True, True, False, True] and removed == sizes[2]
    assert cache.known_sha256(descriptions[2], "onnx") == got[2][1]  # its hash stays
    path, sha = cache.get(descriptions[2], "onnx")  # exported again when wanted: the same file
    assert path.is_file() and sha == got[2][1]
    assert cache.size_bytes() == sum(sizes)


def test_an_int8_latency_model_is_written_directly_whatever_its_numbers(tmp_path, monkeypatch):
    """A latency model is timed, never used: its int8 file comes from the direct writer even where the writer's
    numeric check fails (random weights give near-tied logits: it failed for 5 of 6 w1.2 subnets at 132-220 px),
    not from a litert-torch conversion of the same graph (15-30 s more a 224 px subnet)."""
    import sys

    import edgenas.export.tflite_int8 as int8

    monkeypatch.setattr(int8, "check_int8", lambda *a, **k: "the logits differ")  # every check fails
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # and litert-torch cannot convert
    path, sha = ModelCache(tmp_path).get(arch_description(MICRO, MICRO.largest()), "tflite-int8")
    assert path.is_file() and len(sha) == 64


def test_a_built_model_is_kept_for_the_next_format_within_its_bound(monkeypatch):
    """Two devices' calibrations export the same models: each is built once while the kept models' weights stay
    within `BUILT_MB`, and a model built again after being dropped has the same weights."""
    import torch

    from edgenas.latency import models

    monkeypatch.setattr(models, "_BUILT", models.OrderedDict())
    monkeypatch.setattr(models, "_built_bytes", 0)
    descriptions = [piece_description(p) for p in block_index(MICRO).pieces[:6]]
    first = [models.build_model(d) for d in descriptions]
    assert [models.build_model(d) for d in descriptions] == first  # the same objects: built once
    sizes = [models._model_bytes(m) for m in first]
    monkeypatch.setattr(models, "BUILT_MB", (sizes[-1] + sizes[-2]) / 1e6)
    last = models.build_model(descriptions[-1])
    assert list(models._BUILT) == [models.sha256_json(d) for d in descriptions[-2:]] and last is first[-1]
    again = models.build_model(descriptions[0])  # dropped: built again, the same weights
    assert again is not first[0]
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), first[0].state_dict().values()))
