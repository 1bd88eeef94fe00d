"""`edgenas predictor eval` and the paired measurement under it: real BN-recalibrated evaluation of a tiny supernet's
subnets, each on the same images, stored as bits and reused; the figures' arithmetic on known matrices."""

import json

import numpy as np
import pytest

from edgenas.accuracy.evaluation import rank_figures, unseen_archs
from edgenas.accuracy.measure import PairedMeasurement
from edgenas.cli import main
from edgenas.space import SearchSpace
from tests.cli.test_accuracy import make_checkpoint


def _measurement(correct, labels):
    n = len(labels)
    return PairedMeasurement([], np.asarray(correct, bool), {"val": slice(0, n // 2), "holdout": slice(n // 2, n)},
                             np.asarray(labels), 1)


def test_paired_measurement_halves_ceiling_and_standard_errors():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    base = rng.random(200) < 0.8
    # nested subnets: each one right on a superset of the previous one's images: a perfect ranking on any images
    rows = [base | (rng.random(200) < q) for q in (0.0, 0.2, 0.5, 0.9)]
    rows = [np.logical_or.reduce(rows[: i + 1]) for i in range(4)]
    m = _measurement(rows, labels)
    a, b = m.halves(seed=1)
    assert len(a) == len(b) == 100 and not set(a) & set(b)
    assert all((labels[a] == c).sum() == 25 for c in range(4))  # stratified
    assert m.noise_ceiling(seed=1) == pytest.approx(1.0)
    # paired: two subnets differing on 2 images have a far smaller difference error than each top-1's own
    twin = base.copy()
    twin[:2] = ~twin[:2]
    pair = _measurement([base, twin], labels)
    assert pair.paired_standard_error(0, 1) < 0.25 * pair.standard_error()[0]


def test_loglik_ranks_where_top1_cannot_and_survives_the_store_encoding():
    from edgenas.accuracy.measure import _pack_floats, _unpack_floats

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 50)
    # four subnets right on the same images (top-1 ties: it cannot rank them) whose true-class log-likelihood
    # differs by a constant step on every image: a continuous statistic ranks them perfectly on any half
    correct = np.tile(rng.random(200) < 0.9, (4, 1))
    base = -rng.random(200).astype(np.float32)
    loglik = np.stack([base - 0.1 * k for k in range(4)]).astype(np.float32)
    m = PairedMeasurement([], correct, {"val": slice(0, 100), "holdout": slice(100, 200)}, labels, 1, loglik)
    assert np.isnan(m.noise_ceiling(seed=2))  # top-1 ties on every half: no ranking at all
    assert m.noise_ceiling(seed=2, statistic="loglik") == pytest.approx(1.0)
    assert np.all(np.diff(m.mean_loglik()) < 0)
    back = _unpack_floats(_pack_floats(loglik[0]), 200)
    assert back is not None and np.allclose(back, loglik[0], atol=1e-3)
    assert _unpack_floats(_pack_floats(loglik[0]), 199) is None  # a record of another image count is not reused
    with pytest.raises(ValueError, match="no log-likelihoods"):
        _measurement(correct, labels).noise_ceiling(statistic="loglik")


def test_rank_figures_and_unseen_archs():
    measured = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    f = rank_figures(measured + 0.01, measured, k=2)
    assert f["kendall_tau"] == pytest.approx(1.0) and f["spearman"] == pytest.approx(1.0)
    assert f["top2_hit_rate"] == 1.0
    assert abs(f["rmse_points"] - 1.0) < 1e-9
    assert rank_figures(-measured, measured, k=2)["top2_hit_rate"] == 0.0
    space = SearchSpace.preset("tiny")
    seen = set(unseen_archs(space, 5, 0, set()))
    fresh = unseen_archs(space, 5, 0, seen)
    assert len(set(fresh)) == 5 and not set(fresh) & seen


def test_predictor_eval_command_measures_paired_and_reuses_the_store(tmp_path, capsys):
    from edgenas.accuracy import AccuracyPredictor, FitConfig
    from edgenas.store import Store

    ckpt = make_checkpoint(tmp_path)
    space = SearchSpace.preset("tiny")
    fitted = space.sample_many(np.random.default_rng(5), 10)
    predictor, _ = AccuracyPredictor.fit(space, fitted, np.linspace(0.1, 0.3, 10),
                                         config=FitConfig(hidden=(8,), max_epochs=3))
    predictor.save(tmp_path / "accuracy_predictor.npz")
    store = tmp_path / "store.sqlite"
    with Store(store) as s:  # one of the fitted subnets in the store: never drawn for the eval
        s.add_evaluation(supernet_sha256=_sha(ckpt), dataset="x", split="holdout", arch=fitted[0], metric="top1@bn1",
                         value=0.2)
    argv = ["predictor", "eval", "--supernet", str(ckpt), "--holdout", "4", "--top-k", "2", "--bn-batches", "1",
            "--store", str(store), "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["holdout"] == 4 and len(first["archs"]) == 4 and first["images"] > 100
    assert {"kendall_tau", "spearman", "rmse_points", "top2_hit_rate"} <= set(first["figures"])
    assert fitted[0].to_dict() not in [a["arch"] for a in first["archs"]]
    with Store(store) as s:
        assert len(s.evaluations(_sha(ckpt), "val+holdout", "scored@bn1")) == 4
    assert main(argv[:-1]) == 0  # the same subnets again, from the store; as a table
    table = capsys.readouterr().out
    assert "noise ceiling" in table and "Kendall tau" in table
    assert "noise ceiling of the mean log-likelihood" in table
    with Store(store) as s:
        assert len(s.evaluations(_sha(ckpt), "val+holdout", "scored@bn1")) == 4
    assert main(["predictor", "eval", "--supernet", str(ckpt), "--holdout", "2"]) == 2
    assert "--holdout = 2" in capsys.readouterr().err


def _sha(ckpt):
    from edgenas.train.checkpoint import load_checkpoint_info

    return load_checkpoint_info(ckpt)["sha256"]


def test_gp_predictor_fits_saves_loads_and_gives_an_interval(tmp_path):
    from edgenas.accuracy.cost_features import cost_columns
    from edgenas.accuracy.gp import GPAccuracyPredictor
    from edgenas.accuracy.predictor import load_accuracy_predictor
    from edgenas.genome import ArchBatch, GenomeCodec

    space = SearchSpace.preset("tiny")
    rng = np.random.default_rng(0)
    archs = space.sample_many(rng, 30)
    macs = cost_columns(space, archs)[:, 0]
    y = 0.9 + 0.02 * (macs - macs.mean()) / macs.std()  # accuracy rising with MACs
    gp = GPAccuracyPredictor.fit(space, archs, y)
    new = space.sample_many(rng, 8)
    p = gp.predict(new)
    lo, hi = gp.interval(new)
    assert np.all((lo < p) & (p < hi)) and np.all((p > 0) & (p < 1))
    new_macs = cost_columns(space, new)[:, 0]
    assert rank_figures(p, new_macs, k=2)["kendall_tau"] > 0.6  # it learnt the trend
    loaded = load_accuracy_predictor(gp.save(tmp_path / "gp.npz"))
    assert np.allclose(loaded.predict(new), p)
    codec = GenomeCodec(space)
    batch = ArchBatch(codec, codec.sample(rng, 5))  # the search's batches: the same figures as the archs
    assert np.allclose(gp.predict(batch), gp.predict(list(batch)))


def test_a_shard_measures_its_share_of_the_paired_test_archs(tmp_path):
    """The workers that evaluate the accuracy dataset also measure the test archs paired (each its share), so that
    `paired_figures` after them finds them in the store and measures nothing one by one."""
    from edgenas.accuracy.fit import _evaluate_shard
    from edgenas.accuracy.measure import POOLED, correct_metric
    from edgenas.store import Store

    ckpt = make_checkpoint(tmp_path)
    pairs = [a.to_dict() for a in SearchSpace.preset("tiny").sample_many(np.random.default_rng(2), 2)]
    store = tmp_path / "store.sqlite"
    _evaluate_shard(str(ckpt), [], str(store), 1, 2, "holdout", 1, 1, False, pairs)  # the second of two workers
    with Store(store) as s:
        rows = s.evaluations(_sha(ckpt), POOLED, correct_metric(1))
    assert [json.dumps(r.arch, sort_keys=True) for r in rows] == [json.dumps(pairs[1], sort_keys=True)]


def test_test_archs_evaluated_once_and_two_evaluators_give_the_serial_figures(tmp_path):
    """The test archs' top-1 on the dataset's split comes from their paired measurement (not a second evaluation),
    equal to what `evaluate` gives them; two evaluators (this process and a spawned one) store exactly the figures
    one evaluator stores, and fit the same predictor."""
    from edgenas.accuracy.dataset import sample_archs
    from edgenas.accuracy.fit import fit_predictor, split_archs
    from edgenas.accuracy.measure import SupernetEvaluator
    from edgenas.store import Store

    ckpt = make_checkpoint(tmp_path)
    fits = {}
    for workers in (1, 2):
        store = tmp_path / f"store-{workers}.sqlite"
        fit = fit_predictor(ckpt, samples=13, test=3, seed=0, store_path=store, out=tmp_path / f"p{workers}.npz",
                            workers=workers, bn_batches=1, progress=False)
        with Store(store) as s:
            rows = s.evaluations(_sha(ckpt), "holdout", "top1@bn1")
            fits[workers] = (fit, {json.dumps(r.arch, sort_keys=True): (r.value, "from" in r.extra) for r in rows})
    (serial, serial_rows), (parallel, parallel_rows) = fits[1], fits[2]
    assert {k: v[0] for k, v in serial_rows.items()} == {k: v[0] for k, v in parallel_rows.items()}
    assert len(serial_rows) == 13 and serial.evaluated_now == parallel.evaluated_now == 13
    figures = ("test_rmse", "test_kendall_tau", "paired_kendall_tau", "paired_rmse_points", "noise_ceiling")
    np.testing.assert_equal([getattr(serial, f) for f in figures], [getattr(parallel, f) for f in figures])
    ctx = SupernetEvaluator(str(ckpt), "holdout", 1)
    test_archs = split_archs(sample_archs(ctx.supernet.space, 13, np.random.default_rng(0)), 3, 0)[1]
    for arch in test_archs:  # taken from the paired measurement, and what evaluating them gives
        value, derived = serial_rows[json.dumps(arch.to_dict(), sort_keys=True)]
        assert derived and value == ctx.evaluate(arch)
    assert sum(d for _, d in serial_rows.values()) == 3
