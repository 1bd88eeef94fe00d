"""Evaluation of a device's latency predictors on held-out subnets measured on the device.

`evaluate(device, space, holdout=100, store=...)` measures `holdout` random subnets that were not
used in fitting (through the store, so a re-run measures nothing twice) and reports, for the table
sum, the calibrated predictor, a whole-model-only predictor and a MACs baseline (both fitted on
the calibration's own measurements, so they cost no extra device time), and optionally a transfer
predictor from other calibrated devices fitted on a handful of those measurements: the share within
±5 % and ±10 %, RMSE, Spearman and Kendall rank correlation, and the device time each needed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.errors import UsageError
from edgenas.latency.calibrate import MODEL_CACHE_MB, Calibrator, _resolve_setup, load_latency_predictor
from edgenas.latency.predictors import (
    BasePredictor,
    MacsPredictor,
    TablePredictor,
    TransferPredictor,
    WholeModelPredictor,
)
from edgenas.latency.table import table_path
from edgenas.space import Arch, SearchSpace
from edgenas.store import Store


@dataclasses.dataclass
class PredictorScore:
    """How one predictor did on the held-out subnets."""

    name: str
    within_5: float
    within_10: float
    rmse_ms: float
    spearman: float
    kendall: float
    calibration_measurements: int
    device_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class LatencyEvaluation:
    """Scores of every predictor on one device's held-out subnets."""

    device: str
    runtime: str
    precision: str
    holdout: int
    median_ms: float
    scores: list[PredictorScore]
    statistic: str = "latency"

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in ("device", "runtime", "precision", "holdout", "median_ms", "statistic")},
                "scores": [s.to_dict() for s in self.scores]}

    def score(self, name: str) -> PredictorScore:
        for s in self.scores:
            if s.name == name:
                return s
        raise KeyError(name)

    def format(self) -> str:
        head = (f"{self.device} ({self.runtime}/{self.precision}): {self.holdout} held-out subnets, "
                f"median {self.median_ms:.3f} ms (latency = {_STATISTIC_WORDS.get(self.statistic, self.statistic)})")
        lines = [head, f"  {'predictor':<13} {'±5%':>6} {'±10%':>6} {'RMSE ms':>8} {'Spearman':>8} {'Kendall':>8} "
                       f"{'measured':>8} {'device s':>8}"]
        for s in self.scores:
            lines.append(f"  {s.name:<13} {s.within_5:6.1%} {s.within_10:6.1%} {s.rmse_ms:8.4f} {s.spearman:8.3f} "
                         f"{s.kendall:8.3f} {s.calibration_measurements:8d} {s.device_seconds:8.1f}")
        return "\n".join(lines)


_STATISTIC_WORDS = {"latency": "each model's figure timed interleaved", "median": "median of each model's timed runs",
                    "min": "fastest of each model's timed runs"}


def score(name: str, predicted: np.ndarray, measured: np.ndarray, *, measurements: int,
          device_seconds: float) -> PredictorScore:
    """Accuracy figures of `predicted` against `measured` (both ms)."""
    # deferred: scipy loads only when this runs, not on import
    from scipy.stats import kendalltau, spearmanr

    rel = np.abs(predicted - measured) / measured
    return PredictorScore(
        name=name,
        within_5=float((rel <= 0.05).mean()),
        within_10=float((rel <= 0.10).mean()),
        rmse_ms=float(np.sqrt(((predicted - measured) ** 2).mean())),
        spearman=float(spearmanr(predicted, measured).statistic),
        kendall=float(kendalltau(predicted, measured).statistic),
        calibration_measurements=measurements,
        device_seconds=float(device_seconds),
    )


def _repeat_score(cal: Calibrator, archs: Sequence[Arch], measured: np.ndarray) -> PredictorScore:
    """The held-out subnets timed again on the device, scored against their stored figures."""
    jobs = cal.export_archs(archs, files=True)
    t0 = time.monotonic()
    again = cal.device.measure([str(j.path) for j in jobs])
    seconds = time.monotonic() - t0
    cal.pending.difference_update(j.path for j in jobs)
    cal.trim_cache()
    figure = {"latency": "latency_ms", "median": "median_ms", "min": "min_ms"}[cal.statistic]
    pairs = [(float(getattr(m, figure)), ms) for m, ms in zip(again, measured) if m.ok and getattr(m, figure)]
    if len(pairs) < 3:
        raise UsageError(f"only {len(pairs)} held-out subnets measured fine again on {cal.device.name}: check the device")
    repeated, first = (np.array(x, dtype=np.float64) for x in zip(*pairs))
    return score("repeat", repeated, first, measurements=0, device_seconds=seconds)


def holdout_archs(space: SearchSpace, n: int, exclude: Sequence[Arch], seed: int) -> list[Arch]:
    """`n` random subnets not in `exclude` (a fixed function of the seed)."""
    rng = np.random.default_rng([seed, 104729])
    seen = set(exclude)
    out: list[Arch] = []
    for a in space.sample_many(rng, 4 * n + 50):
        if a not in seen:
            seen.add(a)
            out.append(a)
        if len(out) == n:
            break
    return out


def evaluate(
    device: Any,
    space: SearchSpace,
    *,
    holdout: int = 100,
    runtime: str | None = None,
    precision: str | None = None,
    store: Store,
    predictor: BasePredictor | None = None,
    transfer_from: Sequence[BasePredictor | str] = (),
    transfer_samples: int = 10,
    seed: int = 0,
    tables_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    repeat: bool = False,
    cache_mb: float | None = MODEL_CACHE_MB,
) -> LatencyEvaluation:
    """Measure `holdout` unseen subnets on `device` and score every predictor on them.

    With `repeat`, the held-out files are timed once more on the device (a fresh run, not from the store)
    and that second figure is scored like a predictor ("repeat"): how well the device agrees with
    itself, the ceiling no predictor can beat on that device."""
    runtime, precision = _resolve_setup(device, runtime, precision)
    if holdout < 3:
        raise UsageError(f"--holdout {holdout} is too small to judge a predictor: give at least 3 (50 is the default)")
    if predictor is None:
        predictor = load_latency_predictor(device.name, runtime=runtime, precision=precision, space=space,
                                           tables_dir=tables_dir)
    if (predictor.device, predictor.runtime, predictor.precision) != (device.name, runtime, precision):
        raise UsageError(f"predictor is for {predictor.device} {predictor.runtime}/{predictor.precision}, not "
                         f"{device.name} {runtime}/{precision}")
    train_archs, train_ms = predictor.training_set
    if len(train_archs) < 2:
        raise UsageError(f"the predictor of {device.name} holds no calibration measurements: re-run edgenas calibrate")
    tpath = table_path(device.name, runtime, precision, tables_dir)
    # Judge by the figure the predictor was fitted to (the interleaved figure unless calibrated with another).
    statistic = str(predictor.fit_info.get("statistic", "latency"))
    cal = Calibrator(device, space, runtime=runtime, precision=precision, store=store,
                     cache_dir=cache_dir or tpath.parent.parent / ".models", progress=progress, statistic=statistic,
                     cache_mb=cache_mb)
    archs, measured, _ = cal.measure_archs(holdout_archs(space, holdout, train_archs, seed),
                                           f"measure held-out subnets on {device.name}")
    if len(archs) < 3:
        raise UsageError(f"only {len(archs)} held-out subnets measured fine on {device.name}: check the device")
    # The device time of the calibration's own measurements (all in the store: nothing is re-measured).
    _, _, arch_seconds = cal.measure_archs(train_archs, "calibration subnets (stored)")
    table_seconds = float(predictor.fit_info.get("table_device_seconds") or 0.0)
    ident = dict(device=device.name, runtime=runtime, precision=precision, space=space)
    n_train = len(train_archs)
    scores = []
    if isinstance(predictor, TablePredictor):
        table = TablePredictor(table=predictor.table, **ident)
        scores.append(score("table sum", table.predict(archs), measured, measurements=0, device_seconds=table_seconds))
    if not isinstance(predictor, TransferPredictor):
        scores.append(score(predictor.kind, predictor.predict(archs), measured, measurements=n_train,
                            device_seconds=table_seconds + arch_seconds))
    if predictor.kind != "whole_model":
        whole = WholeModelPredictor(**ident).fit(train_archs, train_ms, seed=seed)
        scores.append(score("whole_model", whole.predict(archs), measured, measurements=n_train,
                            device_seconds=arch_seconds))
    sources = [s if isinstance(s, BasePredictor) else load_latency_predictor(s, space=space, tables_dir=tables_dir)
               for s in transfer_from]
    if isinstance(predictor, TransferPredictor):
        scores.append(score("transfer", predictor.predict(archs), measured, measurements=n_train,
                            device_seconds=arch_seconds))
    elif sources:
        # The few measurements a transfer may use: chosen actively (as `calibrate --transfer-from` does)
        # among this device's calibration subnets, which the store already holds.
        # deferred: scipy loads only when this runs, not on import
        from edgenas.latency.transfer import choose_samples, space_transfer

        model = space_transfer(space, sources, samples=min(transfer_samples, n_train), seed=seed)
        picks = choose_samples(model.model, model.encode(train_archs), min(transfer_samples, n_train),
                               np.random.default_rng(seed))
        few_archs, few_ms, few_seconds = cal.measure_archs([train_archs[i] for i in picks], "transfer subnets (stored)")
        transfer = TransferPredictor(sources=sources, **ident).fit(few_archs, few_ms, seed=seed, transfer=model)
        scores.append(score("transfer", transfer.predict(archs), measured, measurements=len(few_archs),
                            device_seconds=few_seconds))
    macs = MacsPredictor(**ident).fit(train_archs, train_ms, seed=seed)
    scores.append(score("macs", macs.predict(archs), measured, measurements=n_train, device_seconds=arch_seconds))
    if repeat:
        scores.append(_repeat_score(cal, archs, measured))
    return LatencyEvaluation(device.name, runtime, precision, len(archs), float(np.median(measured)), scores,
                             statistic)
