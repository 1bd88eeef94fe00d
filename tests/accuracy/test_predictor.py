"""Tests for edgenas.accuracy: sampling, the resumable accuracy dataset in a real SQLite store, the predictor.

The evaluation function is injected (a deterministic function of the arch), so these tests run in
seconds; tests/cli/test_accuracy.py runs the real supernet evaluation end to end.
"""

import json

import numpy as np
import pytest

from edgenas.accuracy.dataset import AccuracyDataset, sample_archs, shard
from edgenas.accuracy.fit import fit_and_test, split_archs
from edgenas.accuracy.predictor import AccuracyPredictor, FitConfig, kendall_tau, load_accuracy_predictor, rmse
from edgenas.cost import stats_table
from edgenas.errors import UsageError
from edgenas.genome import ArchBatch, GenomeCodec
from edgenas.space import SearchSpace
from edgenas.store import Store

SPACE = SearchSpace.preset("tiny")
FAST = FitConfig(hidden=(64, 64), max_epochs=200, patience=15, batch_size=256, lr=3e-3)


def synthetic_top1(archs):
    """A made-up but learnable accuracy: capacity (log MACs) plus a kernel-size effect."""
    archs = list(archs)
    macs = stats_table(SPACE).compute(archs)["macs"]
    k = np.array([np.mean(a.kernels) for a in archs])
    return np.clip(0.3 + 0.08 * np.log(macs / 1e6) + 0.01 * k, 0, 1)


def test_sample_archs_are_distinct_and_span_the_cost_range():
    rng = np.random.default_rng(0)
    archs = sample_archs(SPACE, 200, rng)
    assert len(set(archs)) == 200
    macs = stats_table(SPACE).compute(archs)["macs"]
    uniform = stats_table(SPACE).compute(SPACE.sample_many(np.random.default_rng(1), 5000))["macs"]
    # the spread half reaches both tails that uniform sampling rarely visits
    assert macs.min() <= np.quantile(uniform, 0.01) and macs.max() >= np.quantile(uniform, 0.99)
    assert sample_archs(SPACE, 200, np.random.default_rng(0)) == archs


def test_shards_cover_every_arch_once():
    items = list(range(23))
    parts = [shard(items, r, 4) for r in range(4)]
    assert sorted(sum(parts, [])) == items
    with pytest.raises(ValueError, match="rank 4 is outside 0..3"):
        shard(items, 4, 4)


def test_accuracy_dataset_is_stored_and_resumes(tmp_path):
    archs = sample_archs(SPACE, 30, np.random.default_rng(2))
    calls = []

    def evaluate(arch):
        calls.append(arch)
        if len(calls) == 12:
            raise KeyboardInterrupt  # interrupted mid-way: what was finished is kept
        return float(synthetic_top1([arch])[0])

    with Store(tmp_path / "store.sqlite") as store:
        data = AccuracyDataset(store, "sha-supernet", "fp-data")
        with pytest.raises(KeyboardInterrupt):
            data.build(archs, evaluate, progress=False)
        assert len(data.missing(archs)) == 30 - 11
    calls.clear()
    with Store(tmp_path / "store.sqlite") as store:  # a new process: resumes from the file
        data = AccuracyDataset(store, "sha-supernet", "fp-data")
        # two ranks share the archs (every other one), each evaluating what the store lacks of its share: rank 0's
        # share is archs 0, 2, ..., 28, of which 0-10 were stored before the interruption
        assert data.build(archs, lambda a: float(synthetic_top1([a])[0]), rank=0, world_size=2, progress=False) == 9
        assert data.build(archs, lambda a: float(synthetic_top1([a])[0]), rank=0, world_size=1, progress=False) == 10
        got_archs, values = data.load(archs)
        assert got_archs == archs
        assert np.allclose(values, synthetic_top1(archs))
        other = AccuracyDataset(store, "sha-other-supernet", "fp-data")
        assert len(other.missing(archs)) == 30  # keyed by supernet
        with pytest.raises(ValueError, match="expected \\[0, 1\\]"):
            other.build(archs[:1], lambda a: 93.0, progress=False)


def test_predictor_ranks_held_out_archs_and_round_trips(tmp_path):
    archs = sample_archs(SPACE, 400, np.random.default_rng(3))
    y = synthetic_top1(archs) + np.random.default_rng(4).normal(0, 0.005, len(archs))
    predictor, report, tested = fit_and_test(SPACE, archs, y, test=100, seed=0, config=FAST)
    assert report.train_size + report.val_size == 300 and tested["test_size"] == 100
    assert tested["test_kendall_tau"] > 0.7
    assert tested["test_rmse"] < 0.03
    assert report.best_epoch <= report.epochs
    p = predictor.predict(archs)
    assert p.shape == (400,) and np.all((p >= 0) & (p <= 1))
    # the search's genome batches take the fast path and agree with plain archs
    codec = GenomeCodec(SPACE)
    assert np.allclose(predictor.predict(ArchBatch(codec, codec.from_archs(archs))), p)
    path = predictor.save(tmp_path / "accuracy_predictor.npz", seed=0)
    loaded = load_accuracy_predictor(tmp_path)
    assert np.array_equal(loaded.predict(archs), p)
    manifest = json.loads((tmp_path / "accuracy_predictor.npz.manifest.json").read_text())
    assert manifest["kind"] == "accuracy_predictor" and manifest["sha256"]
    assert path.read_bytes()[:2] == b"PK"  # a plain npz, loaded without pickle


def test_same_seed_same_predictor():
    archs = sample_archs(SPACE, 60, np.random.default_rng(5))
    y = synthetic_top1(archs)
    cfg = FitConfig(hidden=(32, 32), max_epochs=30, patience=10)
    a, _ = AccuracyPredictor.fit(SPACE, archs, y, seed=7, config=cfg)
    b, _ = AccuracyPredictor.fit(SPACE, archs, y, seed=7, config=cfg)
    assert np.array_equal(a.predict(archs), b.predict(archs))


def test_bad_inputs_are_usage_errors(tmp_path):
    archs = sample_archs(SPACE, 20, np.random.default_rng(6))
    with pytest.raises(UsageError, match="fractions in \\[0, 1\\]"):
        AccuracyPredictor.fit(SPACE, archs, np.full(20, 93.0))
    with pytest.raises(UsageError, match="at least 10 evaluated archs"):
        AccuracyPredictor.fit(SPACE, archs[:5], np.full(5, 0.9))
    with pytest.raises(UsageError, match="does not exist: fit one"):
        load_accuracy_predictor(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="is not an edgenas accuracy predictor"):
        load_accuracy_predictor(tmp_path / "junk.npz")
    with pytest.raises(UsageError, match="test set of 20 archs"):
        split_archs(archs, 20, 0)


def test_metrics():
    assert rmse(np.array([0.5, 0.7]), np.array([0.5, 0.5])) == pytest.approx(np.sqrt(0.02))
    assert kendall_tau(np.arange(10), np.arange(10)) == pytest.approx(1.0)
    assert kendall_tau(np.arange(10), -np.arange(10)) == pytest.approx(-1.0)


def test_evaluations_with_another_bn_batch_count_are_not_reused(tmp_path):
    from edgenas.accuracy.dataset import top1_metric
    from edgenas.space import SearchSpace
    from edgenas.store import Store

    space = SearchSpace.preset("tiny")
    archs = space.sample_many(np.random.default_rng(0), 3)
    with Store(tmp_path / "s.sqlite") as store:
        bn2 = AccuracyDataset(store, "sha-supernet", "fp-data", metric=top1_metric(2))
        bn8 = AccuracyDataset(store, "sha-supernet", "fp-data", metric=top1_metric(8))
        assert bn2.build(archs, lambda a: 0.5, progress=False) == 3
        assert bn8.missing(archs) == archs  # figures taken with 2 batches do not stand in for 8
        assert bn8.build(archs, lambda a: 0.75, progress=False) == 3
        assert list(bn2.load(archs)[1]) == [0.5] * 3 and list(bn8.load(archs)[1]) == [0.75] * 3
    assert top1_metric(8) == "top1@bn8"


def test_a_predictor_with_an_undefined_rank_metric_saves_and_reads_back(tmp_path):
    """One test arch (or tied accuracies) makes Kendall's tau NaN: the file still reads back, the metric null."""
    archs = sample_archs(SPACE, 12, np.random.default_rng(6))
    predictor, _, tested = fit_and_test(SPACE, archs, synthetic_top1(archs), test=1, seed=0,
                                        config=FitConfig(hidden=(16,), max_epochs=5, patience=5))
    assert np.isnan(tested["test_kendall_tau"])
    predictor.info["test"] = tested
    predictor.save(tmp_path / "accuracy_predictor.npz")
    loaded = load_accuracy_predictor(tmp_path)  # readers refuse NaN: it must not be written
    assert loaded.info["test"]["test_kendall_tau"] is None and loaded.info["test"]["test_size"] == 1
    assert np.array_equal(loaded.predict(archs), predictor.predict(archs))


def test_a_saturating_accuracy_is_predicted_below_one_and_in_order(tmp_path):
    """A well-trained supernet's accuracies crowd just under 1.0 and rise with capacity. Fitted on log-odds, the
    predictor keeps ranking the largest subnets (no plateau of 1.0 for the search to pick arbitrarily from); a
    file written before (clipped output) still reads and predicts as it was fitted."""
    archs = sample_archs(SPACE, 200, np.random.default_rng(8))
    macs = stats_table(SPACE).compute(archs)["macs"]
    y = 1.0 - 0.08 * (macs.min() / macs) ** 1.5  # 0.92 for the smallest, closing on 1.0 for the largest
    predictor, _ = AccuracyPredictor.fit(SPACE, archs, y, seed=0, config=FAST)
    big = sample_archs(SPACE, 400, np.random.default_rng(9))
    p = predictor.predict(big)
    assert np.all(p < 1.0) and np.all(p > 0.0)
    top = np.argsort(-p)[:40]  # the search's corner: the most accurate subnets by prediction
    assert len(np.unique(p[top])) == len(top)  # no ties for the search to break by size
    assert kendall_tau(p[top], stats_table(SPACE).compute([big[i] for i in top])["macs"]) > 0.3
    clipped = AccuracyPredictor(SPACE, predictor.weights, predictor.biases, output="clip", scalars=predictor.scalars)
    clipped.save(tmp_path / "accuracy_predictor.npz")
    assert load_accuracy_predictor(tmp_path).output == "clip"
    assert np.all(load_accuracy_predictor(tmp_path).predict(big) <= 1.0)


def test_the_run_evaluates_the_accuracy_dataset_on_every_core_it_may_use():
    """`edgenas run` evaluates in one process per usable core (one thread each) when there are enough archs to
    pay for starting them; a small dataset stays in process."""
    import os

    from edgenas.pipeline.runner import ARCHS_PER_WORKER, evaluation_workers

    cores = len(os.sched_getaffinity(0))
    assert evaluation_workers(16) == 1
    assert evaluation_workers(150) == min(cores, 150 // ARCHS_PER_WORKER)
    assert evaluation_workers(10_000) == cores


def test_the_fitted_mlp_reads_resolution_and_width_as_ordinal_features(tmp_path):
    """Beside the one-hot encoding, a fitted MLP reads log pixels and the width multiplier (SCALARS): with the
    resolution one-hot only, tens of archs over a dozen resolutions leave its resolution preference to noise. The
    features round-trip through the file, and a file fitted before them reads as it was."""
    from edgenas.accuracy.predictor import SCALARS

    space = SearchSpace.preset("mcunet", num_classes=10)
    rng = np.random.default_rng(0)
    archs = space.sample_many(rng, 40)
    y = 0.3 + 0.3 * np.log([a.resolution / 48 for a in archs]) / np.log(224 / 48) + 0.05 * np.array([a.width
                                                                                                      for a in archs])
    fitted, _ = AccuracyPredictor.fit(space, archs, y, seed=0, config=FitConfig(hidden=(32, 32), max_epochs=200))
    assert fitted.scalars == SCALARS and fitted.weights[0].shape[0] == space.encoding_size + 2
    again = load_accuracy_predictor(fitted.save(tmp_path / "with.npz"))
    assert again.scalars == SCALARS and np.allclose(again.predict(archs), fitted.predict(archs))
    codec = GenomeCodec(space)
    batch = ArchBatch(codec, codec.from_archs(archs))  # the search's genomes give the same features
    assert np.array_equal(fitted.features(batch), fitted.features(archs))
    old, _ = AccuracyPredictor.fit(space, archs, y, seed=0, config=FitConfig(hidden=(8,), max_epochs=5, scalars=()))
    assert load_accuracy_predictor(old.save(tmp_path / "old.npz")).scalars == ()


def test_ranks_cover_every_arch_whenever_each_starts(tmp_path):
    """Each rank takes its share of the archs, then what the store lacks of it: a rank that starts after another one
    finished (a spawned worker starting late) still takes its own share, and together they leave no arch out."""
    archs = sample_archs(SPACE, 21, np.random.default_rng(4))
    with Store(tmp_path / "store.sqlite") as store:
        data = AccuracyDataset(store, "sha-supernet", "fp-data")
        done = [data.build(archs, lambda a: float(synthetic_top1([a])[0]), rank=r, world_size=3, progress=False)
                for r in (2, 0, 1)]
        assert done == [7, 7, 7] and data.missing(archs) == []
