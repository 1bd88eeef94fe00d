"""Tests of few-shot latency transfer: recovery of a target that is a mix of its sources, the sources' exact
additive tables, the choice of archs to measure, the benchmark CSV's refusals and the predictor file's records."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from latency_helpers import MICRO, local_device_file
from scipy.stats import spearmanr

from edgenas.errors import UsageError
from edgenas.latency.blocks import block_index
from edgenas.latency.predictors import CalibratedPredictor, TransferPredictor, WholeModelPredictor, load_predictor_file
from edgenas.latency.transfer import (
    OneHotEncoding,
    TransferModel,
    choose_samples,
    choose_scales,
    fit_additive,
    read_latency_csv,
    space_encoding,
    space_source_table,
    space_tokens,
    space_transfer,
)

ROOT = Path(__file__).resolve().parents[2]
IDENT = dict(runtime="onnxruntime", precision="fp32", space=MICRO)


def _devices(rng: np.random.Generator, n_archs: int = 400, positions: int = 10, tokens: int = 5, devices: int = 4):
    """Archs as token lists and additive devices mixing two op-cost bases (compute-bound, memory-bound)."""
    rows = [[f"op{v}" for v in rng.integers(0, tokens, positions)] for _ in range(n_archs)]
    enc = OneHotEncoding.from_tokens(rows)
    X = enc.encode(rows)
    bases = rng.uniform(0.1, 2.0, (2, enc.size))
    mix = rng.uniform(0.2, 1.0, (devices, 2))
    return rows, enc, X, 1.0 + X @ (mix @ bases).T


def test_a_target_that_is_a_linear_mix_of_its_sources_is_recovered_exactly():
    rng = np.random.default_rng(0)
    _, enc, X, S = _devices(rng)
    target = 0.5 + 0.3 * S[:, 0] + 1.2 * S[:, 2]
    tables = [fit_additive(f"s{k}", X, S[:, k]) for k in range(S.shape[1])]
    scales = choose_scales(enc, X, S, [t.name for t in tables], samples=10, draws=3)
    model = TransferModel(enc, tables, X, scales=scales)
    idx = rng.choice(len(X), 10, replace=False)
    predicted = model.fit(X[idx], target[idx]).predict(X)
    np.testing.assert_allclose(predicted, target, rtol=1e-4)
    # The fitted model is itself an additive table over the encoding.
    np.testing.assert_allclose(model.additive.predict(X), predicted, rtol=1e-12)


def test_transfer_beats_the_sources_mean_and_the_target_alone_on_a_device_outside_their_span():
    rng = np.random.default_rng(1)
    _, enc, X, S = _devices(rng, devices=5)
    target = S[:, 4] * (1 + X @ rng.normal(0, 0.05, enc.size) / 10)  # another mix, and per-op costs of its own
    tables = [fit_additive(f"s{k}", X, S[:, k]) for k in range(4)]
    model = TransferModel(enc, tables, X)
    idx = rng.choice(len(X), 10, replace=False)
    rest = np.setdiff1d(np.arange(len(X)), idx)
    transfer = spearmanr(model.fit(X[idx], target[idx]).predict(X[rest]), target[rest]).statistic
    mean_of_sources = spearmanr(S[rest, :4].mean(axis=1), target[rest]).statistic
    assert transfer > 0.97 and transfer > mean_of_sources


def test_an_op_the_target_prices_apart_from_every_source_is_learned_as_a_cost_feature():
    """Sources that agree (one runtime) and a target that runs one kind of op 8x slower than they do (as TFLite's
    7x7 depthwise against ONNX Runtime's): from 10 measurements the transfer takes that op's cost as a feature
    and ranks held-out archs almost exactly; the model stays an additive table. Source tables that hold each
    op's own cost (as tables read off calibrated predictors do) make the feature."""
    from edgenas.latency.transfer import AdditiveTable

    rng = np.random.default_rng(4)
    rows = [[f"dw-k{k}-e{e}" for k, e in zip(rng.choice([3, 5, 7], 12), rng.choice([3, 4, 6], 12))]
            for _ in range(500)]
    enc = OneHotEncoding.from_tokens(rows)
    X = enc.encode(rows)
    cost = rng.uniform(0.5, 1.5, enc.size)
    tables = [AdditiveTable(f"s{k}", 0.2 * f, cost * rng.uniform(0.9, 1.1, enc.size) * f)
              for k, f in enumerate((1.0, 1.3, 2.0, 0.7))]
    slow = np.array([token.startswith("dw-k7") for _, token in enc.columns])
    target = 0.1 + X @ (cost * np.where(slow, 8.0, 0.9))
    idx = rng.choice(len(X), 10, replace=False)
    rest = np.setdiff1d(np.arange(len(X)), idx)
    model = TransferModel(enc, tables, X, absolute_costs=True)
    predicted = model.fit(X[idx], target[idx]).predict(X[rest])
    assert model.chosen_features == ["source:k7"]
    assert spearmanr(predicted, target[rest]).statistic > 0.98
    assert np.mean(np.abs(predicted / target[rest] - 1) <= 0.1) > 0.9
    np.testing.assert_allclose(model.additive.predict(X[rest]), predicted, rtol=1e-9)
    plain = TransferModel(enc, tables, X)  # tables fitted to whole archs: no source cost features
    assert plain.cost_features == {}
    assert spearmanr(plain.fit(X[idx], target[idx]).predict(X[rest]), target[rest]).statistic < 0.9


def test_active_choice_spreads_over_the_sources_range_and_is_reproducible():
    rng = np.random.default_rng(2)
    _, enc, X, S = _devices(rng)
    model = TransferModel(enc, [fit_additive(f"s{k}", X, S[:, k]) for k in range(4)], X)
    picks = choose_samples(model, X, 8, np.random.default_rng(5))
    assert len(set(picks.tolist())) == 8
    np.testing.assert_array_equal(picks, choose_samples(model, X, 8, np.random.default_rng(5)))
    guide = model.guide(X)
    ranks = np.argsort(np.argsort(guide))[picks]  # one pick per eighth of the range
    assert sorted(ranks // (len(X) // 8 + 1)) == list(range(8))
    with pytest.raises(UsageError, match="random or active"):
        choose_samples(model, X, 8, rng, how="best")


@pytest.mark.parametrize("kind", ["calibrated", "whole_model"])
def test_source_predictors_become_exact_additive_tables(kind):
    index = block_index(MICRO)
    costs = index.analytic_costs()
    archs = MICRO.sample_many(np.random.default_rng(3), 120)
    table = dict(zip(index.keys, 0.01 + costs[:, 0] * 0.5 + costs[:, 1] * 2.0))
    pred = CalibratedPredictor(table=table, device="a", **IDENT)
    pred.weights = _calibrated_weights(pred, const=0.05, table=(1.1, 0.8), block=0.002)
    if kind == "whole_model":
        pred = WholeModelPredictor(device="a", **IDENT).fit(archs[:60], pred.predict(archs[:60]))
    enc = space_encoding(MICRO)
    t = space_source_table(pred, MICRO, enc, archs[:20])
    np.testing.assert_allclose(t.predict(enc.encode(space_tokens(MICRO, archs))), pred.predict(archs), rtol=1e-9)


def _calibrated_weights(pred, *, const, table, block):
    """Weights of a CalibratedPredictor: the constant, a factor per table group (alternating `table`), a block term."""
    groups = len(block_index(pred.space).group_names)
    w = np.full(len(pred.feature_names), block)
    w[0] = const
    w[1:1 + groups] = [table[g % 2] for g in range(groups)]
    return w


def _sources():
    index = block_index(MICRO)
    costs = index.analytic_costs()
    out = []
    for name, dense, dw in (("a", 0.5, 2.0), ("b", 1.0, 0.5), ("c", 0.2, 3.0)):
        p = CalibratedPredictor(table=dict(zip(index.keys, 0.01 + costs[:, 0] * dense + costs[:, 1] * dw)),
                                device=name, **IDENT)
        p.weights = _calibrated_weights(p, const=0.05, table=(1.0, 1.0), block=0.001)
        out.append(p)
    return out


def test_transfer_predictor_file_records_sources_and_target_measurements(tmp_path):
    sources = _sources()
    archs = MICRO.sample_many(np.random.default_rng(4), 200)
    target = 0.1 + 0.6 * sources[0].predict(archs) + 0.9 * sources[1].predict(archs)
    transfer = space_transfer(MICRO, sources, samples=6, pool_size=300)
    pred = TransferPredictor(sources=sources, device="new", **IDENT).fit(archs[:6], target[:6], transfer=transfer)
    np.testing.assert_allclose(pred.predict(archs), target, rtol=1e-3)
    path = pred.save(tmp_path / "new" / "predictor-onnxruntime-fp32.json")
    back = load_predictor_file(path, device="new", space=MICRO)
    assert isinstance(back, TransferPredictor)
    np.testing.assert_array_equal(back.predict(archs), pred.predict(archs))
    info = json.loads(path.read_text())["fit"]
    assert info["target_measurements"] == 6
    assert [MICRO.parse_arch(a) for a, _ in info["samples"]] == archs[:6]
    assert [ms for _, ms in info["samples"]] == pytest.approx(target[:6].tolist())
    assert info["sources"] == [f"{s}:onnxruntime-fp32 (calibrated)" for s in "abc"]
    assert [s["device"] for s in json.loads(path.read_text())["sources"]] == ["a", "b", "c"]


def test_calibrate_transfer_on_a_real_device_measures_budget_subnets_and_records_them(tmp_path):
    from edgenas.devices import load_device
    from edgenas.latency.calibrate import calibrate_transfer
    from edgenas.store import Store

    device = load_device(local_device_file(tmp_path))
    with device, Store(tmp_path / "store.sqlite") as store:
        pred = calibrate_transfer(device, MICRO, sources=_sources()[:2], samples=4, store=store,
                                  tables_dir=tmp_path / "tables", cache_dir=tmp_path / "models", progress=False)
        again = calibrate_transfer(device, MICRO, sources=_sources()[:2], samples=4, store=store,
                                   tables_dir=tmp_path / "tables", cache_dir=tmp_path / "models", progress=False)
        assert pred.report.measured_now == 4 and again.report.measured_now == 0  # the same choice: nothing re-measured
        saved = json.loads((tmp_path / "tables" / "testlocal" / "predictor-onnxruntime-fp32.json").read_text())
        assert saved["fit"]["target_measurements"] == 4 and len(saved["fit"]["samples"]) == 4
        stored = {MICRO.parse_arch(json.loads(r.model_description)) for r in store.measurements(model_kind="arch")}
    assert {MICRO.parse_arch(a) for a, _ in saved["fit"]["samples"]} == stored  # the archs measured, recorded
    manifest = json.loads((tmp_path / "tables" / "testlocal" / "predictor-onnxruntime-fp32.json.manifest.json").read_text())
    assert manifest["sources"] == ["a:onnxruntime-fp32", "b:onnxruntime-fp32"] and manifest["target_measurements"] == 4
    assert (pred.predict(MICRO.sample_many(np.random.default_rng(0), 50)) > 0).all()


# -- the benchmark CSV --------------------------------------------------------------------------------------
GOOD = "idx,arch_str,dev_a_ms,dev_b_ms\n0,x|y,1.5,2.0\n1,y|y,2.5,3.0\n"


@pytest.mark.parametrize("text, line, column", [
    ("idx,arch_str,dev_a_ms,dev_b_ms\n0,x|y,1.5,2.0\n1,y|y,abc,3.0\n", "line 3", "dev_a_ms"),
    ("idx,arch_str,dev_a_ms,dev_b_ms\n0,x|y,1.5,-2.0\n", "line 2", "dev_b_ms"),
    ("idx,arch_str,dev_a_ms,dev_b_ms\n0,x|y,nan,2.0\n", "line 2", "dev_a_ms"),
    ("idx,arch_str,dev_a_ms,dev_b_ms\n0,x|y,1.5,2.0\n1,y|y,2.5\n", "line 3", "fields"),
    ("idx,arch_str,dev_a_ms,dev_b_ms\n0,x|y,1.5,2.0\n1,y|y|x,2.5,3.0\n", "line 3", "arch_str"),
])
def test_csv_refusals_name_the_row_and_column(tmp_path, text, line, column):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        read_latency_csv(path)
    message = str(err.value)
    assert "\n" not in message and line in message and column in message


def test_csv_refuses_a_missing_device_and_reads_a_good_file(tmp_path):
    path = tmp_path / "good.csv"
    path.write_text(GOOD)
    with pytest.raises(UsageError, match="no column dev_c_ms.*dev_a, dev_b"):
        read_latency_csv(path, devices=["dev_c"])
    data = read_latency_csv(path, devices=["dev_a"])
    assert data.devices == ["dev_a", "dev_b"] and data.tokens == [["x", "y"], ["y", "y"]]
    np.testing.assert_array_equal(data.column("dev_b"), [2.0, 3.0])


def _bench():
    spec = importlib.util.spec_from_file_location("bench_latency_transfer", ROOT / "tools" / "bench" / "latency_transfer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_prints_one_json_object_per_predictor_and_target_and_exits_2_on_bad_input(tmp_path, capsys):
    rng = np.random.default_rng(6)
    rows, _, _, S = _devices(rng, n_archs=150, devices=4)
    path = tmp_path / "lat.csv"
    path.write_text("idx,arch_str," + ",".join(f"d{k}_ms" for k in range(4)) + "\n"
                    + "".join(f"{i},{'|'.join(r)}," + ",".join(f"{v:.6f}" for v in S[i]) + "\n"
                              for i, r in enumerate(rows)))
    bench = _bench()
    assert bench.main(["--csv", str(path), "--target", "d3", "--sources", "d0,d1,d2", "--samples", "6",
                       "--draws", "2", "--curve", "", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["predictor"] for x in lines] == ["transfer-random", "transfer-active", "ridge", "whole-model"]
    for x in lines:
        assert x["target"] == "d3" and x["samples"] == 6 and 0 <= x["within_10"] <= 1
        assert {"spearman", "kendall", "rmse_ms"} <= set(x)
    assert lines[1]["spearman"] > 0.99  # d3 is a mix of the sources' two op-cost bases
    (tmp_path / "bad.csv").write_text(GOOD.replace("2.5", "-1"))
    assert bench.main(["--csv", str(tmp_path / "bad.csv"), "--target", "dev_a", "--sources", "dev_b"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 3, column dev_a_ms" in err


def test_calibrate_command_transfers_from_predictor_files(tmp_path, capsys):
    from edgenas.cli import main

    files = [str(s.save(tmp_path / "src" / f"{s.device}.json")) for s in _sources()[:2]]
    (tmp_path / "micro.json").write_text(json.dumps(MICRO.to_dict()))
    argv = ["calibrate", "--device", str(local_device_file(tmp_path)), "--space", str(tmp_path / "micro.json"),
            "--transfer-from", ",".join(files), "--budget", "3", "--tables", str(tmp_path / "tables"),
            "--store", str(tmp_path / "store.sqlite"), "--quiet", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["type"] == "transfer" and result["target_measurements"] == 3 and result["measured_now"] == 3
    assert result["sources"] == ["a:onnxruntime-fp32 (calibrated)", "b:onnxruntime-fp32 (calibrated)"]
    manifest = json.loads(Path(result["predictor_path"] + ".manifest.json").read_text())
    assert [v["path"] for v in manifest["inputs"].values()] == files  # the source files, with their sha256
