"""`edgenas predictor eval`: how well an accuracy predictor ranks subnets it never saw, beside how well the
measurement itself can rank them.

N subnets are drawn uniformly (seeded) among those the store holds no evaluation of for this supernet (so none the
predictor was fitted or tested on), measured paired on every validation and holdout image (`measure.py`), and the
predictor's figures against that measurement are: Kendall tau, Spearman rho, RMSE (points), the top-k hit rate (of
the k measured best, how many are among the k predicted best), and the noise ceiling (tau between two disjoint
halves of the images).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.accuracy.measure import PAIRED_METRICS, PairedMeasurement, SupernetEvaluator, measure_paired
from edgenas.accuracy.predictor import free_cores, kendall_tau, load_accuracy_predictor, rmse
from edgenas.errors import UsageError
from edgenas.space import Arch, SearchSpace
from edgenas.store import Store, default_store_path


def fitted_archs(store: Any, supernet_sha256: str) -> set[Arch]:
    """Every arch the store holds an evaluation of for this supernet other than a paired measurement's: the
    predictor's fitting and test subnets are among them; the paired ones were measured for judging, never fitting."""
    return {Arch.from_dict(a) for a, _split, metric in store.evaluated(supernet_sha256)
            if not metric.startswith(PAIRED_METRICS)}


def unseen_archs(space: SearchSpace, n: int, seed: int, exclude: set[Arch]) -> list[Arch]:
    """`n` distinct archs drawn uniformly with `seed`, none of them in `exclude`."""
    rng = np.random.default_rng([seed, 43])
    out: dict[Arch, None] = {}
    for _ in range(1000):
        for arch in (space.sample(rng) for _ in range(4 * n)):
            if arch not in exclude and arch not in out:
                out[arch] = None
                if len(out) == n:
                    return list(out)
    raise UsageError(f"the space holds fewer than {n} archs the store has not evaluated: lower --holdout")


def rank_figures(predicted: np.ndarray, measured: np.ndarray, *, k: int) -> dict[str, float]:
    """Kendall tau, Spearman rho, RMSE in points and the top-k hit rate of `predicted` against `measured`."""
    # deferred: scipy loads only when this runs, not on import
    from scipy.stats import spearmanr

    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    k = max(1, min(k, len(measured)))
    top_measured = set(np.argsort(-measured, kind="stable")[:k].tolist())
    top_predicted = set(np.argsort(-predicted, kind="stable")[:k].tolist())
    return {"kendall_tau": kendall_tau(predicted, measured),
            "spearman": float(spearmanr(predicted, measured).statistic),
            "rmse_points": 100.0 * rmse(predicted, measured),
            f"top{k}_hit_rate": len(top_measured & top_predicted) / k}


@dataclass(frozen=True)
class PredictorEval:
    """A predictor's figures on `holdout` unseen subnets, and the measurement's own."""

    predictor: str
    holdout: int
    seed: int
    images: int
    bn_batches: int
    figures: dict[str, float]
    noise_ceiling: float
    split_ceiling: float
    top1_range_points: tuple[float, float]
    standard_error_points: float
    paired_standard_error_points: float
    # the mean log-likelihood of the true class on the same images: its own ceiling, how well it ranks top-1 on the
    # other half, and the predictor's tau against it (None where the measurement kept none)
    loglik_ceiling: float | None = None
    loglik_to_top1: float | None = None
    tau_vs_loglik: float | None = None
    archs: list[dict[str, Any]] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_predictor(predictor: Any, measurement: PairedMeasurement, *, name: str, seed: int,
                       k: int = 5) -> PredictorEval:
    """The figures of `predictor` (anything with `.predict(archs)`) against `measurement`."""
    measured = measurement.accuracy()
    predicted = np.asarray(predictor.predict(measurement.archs), dtype=float)
    scored = measurement.loglik is not None and len(measurement.archs) > 1
    return PredictorEval(
        predictor=name, holdout=len(measurement.archs), seed=seed, images=measurement.images(),
        bn_batches=measurement.bn_batches, figures=rank_figures(predicted, measured, k=k),
        noise_ceiling=measurement.noise_ceiling(seed), split_ceiling=measurement.split_ceiling(),
        top1_range_points=(100.0 * float(measured.min()), 100.0 * float(measured.max())),
        standard_error_points=100.0 * float(np.median(measurement.standard_error())),
        paired_standard_error_points=100.0 * measurement.median_paired_standard_error(seed=seed),
        loglik_ceiling=measurement.noise_ceiling(seed, statistic="loglik") if scored else None,
        loglik_to_top1=measurement.noise_ceiling(seed, statistic="loglik", against="top1") if scored else None,
        tau_vs_loglik=kendall_tau(predicted, measurement.mean_loglik()) if scored else None,
        archs=[{"arch": a.to_dict(), "predicted": float(p), "measured": float(m)}
               for a, p, m in zip(measurement.archs, predicted, measured)])


def predictor_eval(checkpoint: str | os.PathLike, *, predictor_path: str | os.PathLike | None = None,
                   holdout: int = 60, seed: int = 0, store_path: str | os.PathLike | None = None,
                   bn_batches: int = 8, k: int = 5, progress: bool = True) -> PredictorEval:
    """Measure `holdout` subnets the store never saw (paired, val + holdout images) and judge the predictor on them."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UsageError(f"supernet checkpoint {checkpoint} does not exist: train one with 'edgenas train'")
    path = Path(predictor_path) if predictor_path else checkpoint.parent / "accuracy_predictor.npz"
    predictor = load_accuracy_predictor(path)
    evaluator = SupernetEvaluator(str(checkpoint), "holdout", bn_batches)
    space = evaluator.supernet.space
    with Store(Path(store_path) if store_path else default_store_path()) as store:
        exclude = fitted_archs(store, evaluator.info["sha256"])
        archs = unseen_archs(space, holdout, seed, exclude)
        # deferred: torch loads only when this runs, not on import
        import torch

        torch.set_num_threads(free_cores())
        measurement = measure_paired(evaluator, archs, store, bn_batches=bn_batches, progress=progress)
    return evaluate_predictor(predictor, measurement, name=str(path), seed=seed, k=k)


def format_eval(result: PredictorEval) -> str:
    """The figures as a table."""
    f = result.figures
    topk = next(key for key in f if key.startswith("top"))
    rows = [
        ("subnets (never seen by the predictor)", f"{result.holdout}"),
        ("images per subnet (val + holdout, paired)", f"{result.images}"),
        ("BN recalibration batches (the same for all)", f"{result.bn_batches}"),
        ("measured top-1 range", f"{result.top1_range_points[0]:.1f} - {result.top1_range_points[1]:.1f} %"),
        ("top-1 standard error (median)", f"{result.standard_error_points:.2f} points"),
        ("paired difference standard error (median)", f"{result.paired_standard_error_points:.2f} points"),
        ("Kendall tau", f"{f['kendall_tau']:.3f}"),
        ("Spearman rho", f"{f['spearman']:.3f}"),
        ("RMSE", f"{f['rmse_points']:.2f} points"),
        (f"top-{topk[3:-9]} hit rate", f"{f[topk]:.2f}"),
        ("noise ceiling (tau, two halves of the images, mean of 20 halvings)", f"{result.noise_ceiling:.3f}"),
        ("tau val vs holdout (the splits as they are)", f"{result.split_ceiling:.3f}"),
    ]
    if result.loglik_ceiling is not None:
        rows += [
            ("Kendall tau against the mean log-likelihood of the true class", f"{result.tau_vs_loglik:.3f}"),
            ("noise ceiling of the mean log-likelihood (two halves)", f"{result.loglik_ceiling:.3f}"),
            ("tau log-likelihood on one half vs top-1 on the other", f"{result.loglik_to_top1:.3f}"),
        ]
    width = max(len(r[0]) for r in rows)
    lines = [f"accuracy predictor {result.predictor} (seed {result.seed})"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)
