"""Tests of latency tables and predictors: fitting, batched prediction, and round trips through their files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from latency_helpers import MICRO

from edgenas.errors import UsageError
from edgenas.latency import load_latency_predictor
from edgenas.latency.blocks import block_index
from edgenas.latency.predictors import (
    CalibratedPredictor,
    LatencyPredictor,
    MacsPredictor,
    TablePredictor,
    TransferPredictor,
    WholeModelPredictor,
    load_predictor_file,
)
from edgenas.latency.table import LatencyTable, predictor_path, table_path
from edgenas.space import SearchSpace

IDENT = dict(device="dev", runtime="onnxruntime", precision="fp32", space=MICRO)


def _table(seed: int = 0) -> dict[str, float]:
    """Piece latencies that grow with their MACs (any positive values would do)."""
    index = block_index(MICRO)
    costs = index.analytic_costs()
    noise = np.random.default_rng(seed).uniform(0.9, 1.1, len(index))
    return dict(zip(index.keys, (0.02 + costs[:, 0] * 0.5 + costs[:, 1] * 2.0) * noise))


def _archs(n: int, seed: int = 0):
    return MICRO.sample_many(np.random.default_rng(seed), n)


def test_calibrated_predictor_recovers_a_whole_model_correction():
    table = TablePredictor(table=_table(), **IDENT)
    archs = _archs(60)
    groups = table.group_sums(archs)
    n_blocks = np.array([sum(a.depths) for a in archs])

    def truth(g, nb):  # fused whole model: cheaper blocks, one invocation overhead, less per-block overhead
        return 0.05 + 0.9 * (g[:, 0] + g[:, -1]) + 0.7 * g[:, 1:-1].sum(axis=1) - 0.01 * nb

    cal = CalibratedPredictor(table=table.table, **IDENT).fit(archs[:40], truth(groups, n_blocks)[:40])
    test = slice(40, None)
    rel = np.abs(cal.predict(archs[test]) - truth(groups, n_blocks)[test]) / truth(groups, n_blocks)[test]
    assert rel.max() < 0.01
    plain = np.abs(table.predict(archs[test]) - truth(groups, n_blocks)[test]) / truth(groups, n_blocks)[test]
    assert plain.mean() > 0.1  # the uncorrected table sum really is off


def test_whole_model_and_macs_predictors_fit_costs_linear_in_their_features():
    archs = _archs(80, seed=3)
    macs = MacsPredictor(**IDENT)
    y = 0.1 + 0.002 * macs.features(archs)[:, 1]
    np.testing.assert_allclose(macs.fit(archs, y).predict(archs), y, rtol=1e-3)
    whole = WholeModelPredictor(**IDENT)
    X = whole.features(archs)
    y = X @ np.linspace(0.01, 0.2, X.shape[1])
    np.testing.assert_allclose(whole.fit(archs, y).predict(archs), y, rtol=0.02)


def test_transfer_from_ten_measurements():
    source = CalibratedPredictor(table=_table(), **IDENT).fit(_archs(20), np.ones(20))
    source.weights = source.prior() + np.eye(len(source.feature_names))[0] * 0.01  # the plain table sum + a constant
    archs = _archs(300, seed=5)
    target = 3.0 * source.predict(archs) ** 0.8  # another device: slower, with other relative op costs
    t = TransferPredictor(sources=[source], **{**IDENT, "device": "new"}).fit(archs[:10], target[:10])
    # The transfer predictor is additive over the pieces; a power of a sum is not, hence 5 %.
    np.testing.assert_allclose(t.predict(archs), target, rtol=0.05)


def test_predict_is_batched_float64_and_matches_one_at_a_time():
    pred = CalibratedPredictor(table=_table(), **IDENT).fit(_archs(30), np.linspace(1, 2, 30))
    archs = MICRO.sample_many(np.random.default_rng(9), 2000, unique=False)
    batch = pred.predict(archs)
    assert batch.dtype == np.float64 and batch.shape == (2000,)
    np.testing.assert_allclose(batch[:5], [pred.predict([a])[0] for a in archs[:5]])
    assert isinstance(pred, LatencyPredictor)
    assert pred.predict([]).shape == (0,)


@pytest.mark.parametrize("kind", ["table", "calibrated", "whole_model", "macs", "transfer"])
def test_predictors_round_trip_through_files(tmp_path, kind):
    archs = _archs(30)
    y = np.linspace(1.0, 3.0, 30)
    source = CalibratedPredictor(table=_table(), **IDENT).fit(archs, y)
    pred = {
        "table": lambda: TablePredictor(table=_table(), **IDENT),
        "calibrated": lambda: source,
        "whole_model": lambda: WholeModelPredictor(**IDENT).fit(archs, y),
        "macs": lambda: MacsPredictor(**IDENT).fit(archs, y),
        "transfer": lambda: TransferPredictor(sources=[source], **{**IDENT, "device": "new"}).fit(archs[:10], y[:10]),
    }[kind]()
    path = pred.save(tmp_path / "p.json")
    assert (tmp_path / "p.json.manifest.json").is_file()
    back = load_predictor_file(path, space=MICRO)
    assert type(back) is type(pred) and back.device == pred.device
    probe = _archs(50, seed=11)
    np.testing.assert_array_equal(back.predict(probe), pred.predict(probe))
    assert back.training_set[0] == pred.training_set[0]


def test_load_by_device_name_and_refusals(tmp_path):
    pred = CalibratedPredictor(table=_table(), **IDENT).fit(_archs(20), np.linspace(1, 2, 20))
    path = pred.save(predictor_path("dev", "onnxruntime", "fp32", tmp_path))
    got = load_latency_predictor("dev", tables_dir=tmp_path, space=MICRO)
    np.testing.assert_array_equal(got.predict(_archs(5)), pred.predict(_archs(5)))
    with pytest.raises(UsageError, match="no latency predictor for device 'other'"):
        load_latency_predictor("other", tables_dir=tmp_path)
    with pytest.raises(UsageError, match="runtime 'onnxruntime', not 'tflite'"):
        load_predictor_file(path, runtime="tflite")
    with pytest.raises(UsageError, match="device 'dev', not 'pi'"):
        load_predictor_file(path, device="pi")
    with pytest.raises(UsageError, match="search space 'micro'"):
        load_predictor_file(path, space=SearchSpace.preset("tiny"))
    data = json.loads(path.read_text())
    data["schema"] = "edgenas.latency_predictor/0"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="schema 'edgenas.latency_predictor/0'"):
        load_predictor_file(path)


def test_table_round_trip_and_refusals(tmp_path):
    table = LatencyTable("pi", "tflite", "int8", runtime_version="2.3.0", device_description={"threads": 4})
    for i, key in enumerate(block_index(MICRO).keys):
        table.add(key, latency_ms=0.1 + i, median_ms=0.1 + i, std_ms=0.01, runs=30, model_sha256=f"{i:064x}")
    path = table.save(table_path("pi", "tflite", "int8", tmp_path))
    assert path == tmp_path / "pi" / "tflite-int8.json"
    back = LatencyTable.load(path, device="pi", runtime="tflite", precision="int8")
    assert back.entries == table.entries and back.runtime_version == "2.3.0" and back.created
    assert back.device_description == {"threads": 4}
    np.testing.assert_array_equal(back.values(block_index(MICRO).keys), table.values(block_index(MICRO).keys))
    with pytest.raises(UsageError, match="device 'pi', not 'phone'"):
        LatencyTable.load(path, device="phone")
    with pytest.raises(UsageError, match="runtime 'tflite', not 'onnxruntime'"):
        LatencyTable.load(path, runtime="onnxruntime")
    with pytest.raises(UsageError, match="precision 'int8', not 'fp32'"):
        LatencyTable.load(path, precision="fp32")
    with pytest.raises(UsageError, match="lacks 1 of"):
        back.values([*block_index(MICRO).keys, "block-missing"])
    data = json.loads(path.read_text())
    data["schema"] = "edgenas.latency_table/99"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="re-run `edgenas calibrate`"):
        LatencyTable.load(path)
    path.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        LatencyTable.load(path)
