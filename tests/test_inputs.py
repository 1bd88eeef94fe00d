"""Tests for edgenas.inputs: good files of every kind still read; the limits refuse what they should, naming the field.

The hostile cases through the CLI are in tests/test_hostile_inputs.py; here, the layer's own rules.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from edgenas.errors import UsageError
from edgenas.inputs import (
    check_model_file,
    check_store_path,
    check_tree,
    load_data_pickle,
    output_dir,
    output_file,
    parse_arch,
    parse_json,
    parse_toml,
    read_text,
    space_from_dict,
)
from edgenas.space import SearchSpace

SPACE = SearchSpace.preset("tiny")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_data_pickles_of_arrays_lists_dicts_bytes_and_str_read_back(protocol):
    batch = {b"batch_label": b"batch 1", b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072),
             b"labels": [3, 7], b"filenames": [b"a.png", b"b.png"], "note": "str keys too",
             b"scalars": [np.int64(3), np.float32(0.5)], b"nested": (1.5, None, True)}
    back = load_data_pickle(pickle.dumps(batch, protocol=protocol), "batch")
    np.testing.assert_array_equal(back[b"data"], batch[b"data"])
    assert back[b"labels"] == [3, 7] and back[b"filenames"] == [b"a.png", b"b.png"] and back["note"] == "str keys too"


@pytest.mark.parametrize("value", [
    pytest.param(__import__("collections").OrderedDict(a=1), id="OrderedDict"),
    pytest.param(__import__("datetime").date(2020, 1, 1), id="date"),
    pytest.param({1, 2}, id="set"),
])
def test_data_pickles_refuse_every_other_type(value):
    with pytest.raises(UsageError, match="batch is refused: it asks for the Python object|batch holds"):
        load_data_pickle(pickle.dumps({b"x": value}), "batch")


def test_object_arrays_are_refused_after_the_fact():
    with pytest.raises(UsageError, match="holds an array of object"):
        load_data_pickle(pickle.dumps(np.array([1, "a"], dtype=object)), "batch")


def test_check_tree_names_the_field_and_the_depth():
    with pytest.raises(UsageError, match=r"f: a\[1\]\.b = nan: expected a finite number"):
        check_tree({"a": [1, {"b": float("nan")}]}, "f")
    deep: list = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(UsageError, match="more than 32 levels"):
        check_tree(deep, "f")
    check_tree([[[[1.0]]]], "f")  # shallow and finite: fine


def test_json_and_toml_refusals_are_one_line():
    for text in ("[" * 50_000, '{"a": 1e999}', "{'a': 1}", "9" * 5000):
        with pytest.raises(UsageError) as err:
            parse_json(text, "x.json")
        assert "\n" not in str(err.value) and str(err.value).startswith("x.json")
    for text in ("a = " + "[" * 50_000, "a = nan", "a = 1\na = 2", "a = " + "9" * 5000):
        with pytest.raises(UsageError) as err:
            parse_toml(text, "x.toml")
        assert "\n" not in str(err.value) and str(err.value).startswith("x.toml")
    assert parse_toml('a = 1\n[b]\nc = [1, 2]\n', "x.toml") == {"a": 1, "b": {"c": [1, 2]}}


def test_text_files_must_be_utf8_regular_and_small(tmp_path):
    good = tmp_path / "a.toml"
    good.write_bytes("\ufeffname = 'café'\n".encode())
    assert read_text(good, "config") == "name = 'café'\n"  # a byte-order mark is dropped
    (tmp_path / "latin.toml").write_bytes("name = 'café'".encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8 text"):
        read_text(tmp_path / "latin.toml", "config")
    (tmp_path / "big.toml").write_bytes(b"#" * (2 << 20))
    with pytest.raises(UsageError, match="larger than the 1.0 MiB"):
        read_text(tmp_path / "big.toml", "config")
    os.mkfifo(tmp_path / "pipe.toml")
    with pytest.raises(UsageError, match="not a regular file"):  # refused unopened: reading it would block
        read_text(tmp_path / "pipe.toml", "config")


def test_output_paths(tmp_path):
    (tmp_path / "file").write_text("x")
    assert output_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert output_dir(tmp_path, "--out") == tmp_path
    with pytest.raises(UsageError, match="is an existing file"):
        output_dir(tmp_path / "file", "--out")
    with pytest.raises(UsageError, match="is a file, so no folder can be made there"):
        output_dir(tmp_path / "file" / "sub", "--out")
    assert output_file(tmp_path / "file", "--out") == tmp_path / "file"  # overwritten atomically later
    with pytest.raises(UsageError, match="is a folder"):
        output_file(tmp_path, "--out")


def test_store_paths(tmp_path):
    import sqlite3

    check_store_path(tmp_path / "new.sqlite")
    sqlite3.connect(tmp_path / "real.sqlite").execute("CREATE TABLE t (x)").connection.close()
    check_store_path(tmp_path / "real.sqlite")
    (tmp_path / "empty.sqlite").write_bytes(b"")
    check_store_path(tmp_path / "empty.sqlite")  # SQLite makes a database of an empty file
    (tmp_path / "junk.sqlite").write_bytes(b"junk" * 10)
    with pytest.raises(UsageError, match="not an SQLite database"):
        check_store_path(tmp_path / "junk.sqlite")


def test_every_preset_space_reads_back():
    for name in SearchSpace.presets():
        space = SearchSpace.preset(name)
        assert space_from_dict(json.loads(json.dumps(space.to_dict())), "f") == space
    with pytest.raises(UsageError, match=r"space.stages\[0\].width = 'x'"):
        space_from_dict({**SPACE.to_dict(), "stages": [{**SPACE.to_dict()["stages"][0], "width": "x"}]}, "f")


def test_archs_read_from_inline_json_files_results_and_cards(tmp_path):
    arch = SPACE.sample(np.random.default_rng(0))
    assert parse_arch(arch.to_json(), SPACE) == arch
    (tmp_path / "result.json").write_text(json.dumps({"arch": arch.to_dict(), "predicted": {"latency_ms": 1.0}}))
    assert parse_arch(str(tmp_path / "result.json"), SPACE) == arch
    with pytest.raises(UsageError, match="--arch is empty"):
        parse_arch("  ", SPACE)
    with pytest.raises(UsageError, match="neither inline JSON nor an existing JSON file"):
        parse_arch("largest", SPACE)


def test_model_files_are_checked_by_their_first_bytes(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    assert check_model_file(path) == path
    (tmp_path / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(32))
    check_model_file(tmp_path / "m.tflite")
    (tmp_path / "bad.tflite").write_bytes(bytes(40))
    with pytest.raises(UsageError, match="not a TFLite model"):
        check_model_file(tmp_path / "bad.tflite")


def test_a_good_latency_table_and_predictor_still_load(tmp_path):
    from edgenas.latency.blocks import block_index
    from edgenas.latency.predictors import CalibratedPredictor, load_predictor_file
    from edgenas.latency.table import LatencyTable

    table = LatencyTable("pi", "tflite", "int8")
    for i, key in enumerate(block_index(SPACE).keys):
        table.add(key, latency_ms=0.1 + i * 1e-3, median_ms=None if i % 2 else 0.11, std_ms=0.0, runs=5,
                  model_sha256="ab" * 32)
    path = table.save(tmp_path / "t.json")
    assert LatencyTable.load(path, device="pi").entries == table.entries
    ident = dict(device="pi", runtime="tflite", precision="int8", space=SPACE)
    pred = CalibratedPredictor(table={k: e["latency_ms"] for k, e in table.entries.items()}, **ident)
    pred.weights = pred.prior()  # the plain table sum: what a calibration starts from
    pred.save(tmp_path / "p.json")
    loaded = load_predictor_file(tmp_path / "p.json", device="pi", space=SPACE)
    assert loaded.path == tmp_path / "p.json"
    np.testing.assert_allclose(loaded.predict([SPACE.largest()]), pred.predict([SPACE.largest()]))
    with pytest.raises(UsageError, match="is for device 'pi', not 'phone'"):
        load_predictor_file(tmp_path / "p.json", device="phone")
