"""From a supernet checkpoint to a saved accuracy predictor: sample, evaluate (resumable, in parallel), fit, test.

The archs are split once, with the seed, into a fitting set and a test set that the predictor never
sees (not even for early stopping); RMSE and Kendall tau are reported on the test set.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.accuracy import DEFAULT_KIND, KINDS
from edgenas.accuracy.dataset import dist_rank, sample_archs
from edgenas.accuracy.evaluation import evaluate_predictor
from edgenas.accuracy.gp import GPAccuracyPredictor
from edgenas.accuracy.measure import POOLED, SPLITS, PairedMeasurement, SupernetEvaluator, correct_metric, measure_paired
from edgenas.accuracy.predictor import AccuracyPredictor, FitConfig, FitReport, free_cores, kendall_tau, rmse
from edgenas.errors import UsageError
from edgenas.space import Arch
from edgenas.store import (
    Store,
    default_store_path,  # noqa: F401  (re-exported: one rule for the shared store)
)

PREDICTOR_FILE = "accuracy_predictor.npz"


@dataclass(frozen=True)
class PredictorFitResult:
    path: Path | None
    samples: int
    evaluated_now: int
    fit: FitReport
    test_size: int
    test_rmse: float
    test_kendall_tau: float
    # the test subnets measured paired on every val + holdout image (`edgenas.accuracy.measure`), the predictor judged
    # on that measurement as `edgenas predictor eval` judges it; None where not measured (paired=False)
    paired_images: int | None = None
    paired_kendall_tau: float | None = None
    paired_spearman: float | None = None
    paired_rmse_points: float | None = None
    paired_top_k_hit_rate: float | None = None
    noise_ceiling: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path) if self.path else None
        d["fit"] = self.fit.to_dict()
        return d


def split_archs(archs: Sequence[Arch], test: int, seed: int) -> tuple[list[Arch], list[Arch]]:
    """(fitting archs, test archs): `test` archs drawn with `seed`, the rest for fitting."""
    if not 0 < test < len(archs):
        raise UsageError(f"test set of {test} archs must be between 1 and the {len(archs)} sampled - 1")
    order = np.random.default_rng([seed, 1]).permutation(len(archs))
    return [archs[i] for i in order[test:]], [archs[i] for i in order[:test]]




def fit_and_test(space, archs: Sequence[Arch], accuracy: np.ndarray, *, test: int, seed: int,
                 config: FitConfig | None = None, kind: str = DEFAULT_KIND) -> tuple[Any, FitReport, dict[str, float]]:
    """Fit on all but `test` archs, and measure RMSE and Kendall tau on those `test` archs."""
    if kind not in KINDS:
        raise UsageError(f"unknown predictor kind {kind!r}: choose from {', '.join(KINDS)}")
    values = dict(zip(archs, accuracy.tolist()))
    fit_archs, test_archs = split_archs(list(archs), test, seed)
    fit_y = [values[a] for a in fit_archs]
    if kind == "gp":
        t0 = time.perf_counter()
        predictor = GPAccuracyPredictor.fit(space, fit_archs, fit_y, seed=seed)
        report = FitReport(train_size=len(fit_archs), val_size=0, epochs=0, best_epoch=0, val_rmse=float("nan"),
                           val_kendall_tau=float("nan"), mean_accuracy=float(np.mean(fit_y)),
                           seconds=time.perf_counter() - t0)
    else:
        predictor, report = AccuracyPredictor.fit(space, fit_archs, fit_y, seed=seed, config=config)
    y = np.array([values[a] for a in test_archs])
    p = predictor.predict(test_archs)
    return predictor, report, {"test_size": len(test_archs), "test_rmse": rmse(p, y), "test_kendall_tau": kendall_tau(p, y)}


def paired_figures(ctx: SupernetEvaluator, predictor: Any, test_archs: Sequence[Arch], store: Any, bn_batches: int,
                   seed: int, progress: bool) -> dict[str, float]:
    """The test subnets measured paired on val + holdout, and the predictor's figures on that measurement."""
    m = measure_paired(ctx, list(test_archs), store, bn_batches=bn_batches, progress=progress)
    k = max(1, min(5, len(test_archs) // 3))
    e = evaluate_predictor(predictor, m, name="", seed=seed, k=k)
    return {"paired_images": e.images, "paired_kendall_tau": e.figures["kendall_tau"],
            "paired_spearman": e.figures["spearman"], "paired_rmse_points": e.figures["rmse_points"],
            "paired_top_k_hit_rate": e.figures[f"top{k}_hit_rate"], "noise_ceiling": e.noise_ceiling}


def add_split_top1(ctx: SupernetEvaluator, measured: PairedMeasurement, store: Any) -> int:
    """Each paired-measured arch's top-1 on the accuracy dataset's split, taken from its per-image results there (the
    same BN recalibration on the same batches, the same images: the figure `ctx.evaluate` gives, which evaluates
    them in batches of 64 where the paired measurement takes 256; tests/accuracy/test_evaluation.py checks that they
    agree), committed where the store lacks it. So a test arch is evaluated once, not once for the dataset and
    again for the paired figures. Returns how many were added."""
    # deferred: torch loads only when this runs, not on import
    import torch

    data = ctx.accuracy_dataset(store)
    if ctx.split not in measured.columns or measured.bn_batches != ctx.bn_batches:
        return 0
    missing = set(data.missing(measured.archs))
    added = 0
    for i, arch in enumerate(measured.archs):
        if arch in missing:
            bits = torch.from_numpy(np.ascontiguousarray(measured.correct[i, measured.columns[ctx.split]]))
            # as `edgenas.train.evaluate` averages: float32 mean of the per-image results
            value = float(bits.float().mean()) if bits.numel() else 0.0
            data.add(arch, value, {"from": f"{POOLED} {correct_metric(ctx.bn_batches)}"})
            missing.discard(arch)
            added += 1
    return added


def derives_split_top1(split: str) -> bool:
    """Whether the paired measurement (val + holdout) holds the accuracy dataset's `split`."""
    return split in SPLITS


def evaluate_share(ctx: SupernetEvaluator, store: Any, archs: Sequence[Arch], rank: int, world_size: int,
                   progress: bool, paired: Sequence[Arch] = ()) -> int:
    """One evaluator's share (every `world_size`-th from `rank`): its share of `paired` (the test archs) measured
    paired on val + holdout first, their top-1 on the dataset's split taken from it (`add_split_top1`), then its share
    of `archs` evaluated on the split, every figure committed to the store as it is done (where `paired_figures`
    and `AccuracyDataset.load` read them). Returns how many archs were evaluated on the split now."""
    share = list(paired)[rank::world_size]
    done = 0
    if share:
        measured = measure_paired(ctx, share, store, bn_batches=ctx.bn_batches, progress=progress)
        done += add_split_top1(ctx, measured, store)
    data = ctx.accuracy_dataset(store)
    return done + data.build(list(archs), ctx.evaluate, rank=rank, world_size=world_size, progress=progress)


def _evaluate_shard(checkpoint: str, archs: list[dict], store_path: str, rank: int, world_size: int,
                    split: str, bn_batches: int, threads: int, progress: bool, paired: Sequence[dict] = ()) -> int:
    """`evaluate_share` in a spawned worker process (a top-level function so that it can run there): it opens the
    checkpoint and the store itself."""
    # deferred: torch loads only when this runs, not on import
    import torch

    torch.set_num_threads(threads)  # one per worker: more threads than free cores slow torch down several times
    ctx = SupernetEvaluator(checkpoint, split, bn_batches)
    with Store(store_path) as store:
        return evaluate_share(ctx, store, [Arch.from_dict(a) for a in archs], rank, world_size, progress,
                              [Arch.from_dict(a) for a in paired])


def fit_predictor(
    checkpoint: str | os.PathLike,
    *,
    samples: int = 1000,
    test: int = 200,
    seed: int = 0,
    store_path: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    workers: int = 1,
    split: str = "holdout",
    bn_batches: int = 8,
    config: FitConfig | None = None,
    latency_cost: Callable[[Sequence[Arch]], np.ndarray] | None = None,
    progress: bool = True,
    paired: bool = True,
    kind: str = DEFAULT_KIND,
) -> PredictorFitResult | None:
    """Build the accuracy dataset of `samples` archs (`test` of them kept out of fitting), fit and save the
    predictor beside the checkpoint. Under torchrun each rank evaluates its share; rank 0 waits, fits and
    saves (other ranks return None). `workers` > 1 evaluates in that many processes (this one and
    `workers - 1` spawned ones)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UsageError(f"supernet checkpoint {checkpoint} does not exist: train one with 'edgenas train'")
    if samples < test + 10:
        raise UsageError(f"--samples {samples} leaves fewer than 10 archs to fit beside the {test} test archs")
    store_path = Path(store_path) if store_path else default_store_path()
    ctx = SupernetEvaluator(str(checkpoint), split, bn_batches)
    space = ctx.supernet.space
    archs = sample_archs(space, samples, np.random.default_rng(seed), cost=latency_cost)
    rank, world = dist_rank()
    # the test archs are measured paired (val + holdout) by the evaluators, each its share; their top-1 on the split
    # comes from that measurement, so they are not evaluated a second time (paired_figures finds them in the store)
    pairs = split_archs(archs, test, seed)[1] if paired and test >= 3 else []
    derived = set(pairs) if derives_split_top1(split) else set()
    if not derived:
        pairs = []  # measured after the fit, as before (paired_figures)
    with Store(store_path) as store:
        data = ctx.accuracy_dataset(store)
        before = len(data.missing(archs))
        # the same list for every evaluator (each takes its share of it, then what the store lacks of that share)
        todo = [a for a in archs if a not in derived]
        # deferred: torch loads only when this runs, not on import
        import torch

        main_threads = torch.get_num_threads()
        if workers <= 1:
            torch.set_num_threads(free_cores())
            try:
                evaluate_share(ctx, store, todo, rank, world, progress, pairs)
            finally:
                torch.set_num_threads(main_threads)
        else:
            # this process evaluates the first share itself (its supernet is open already), `workers - 1` spawned
            # processes the others, one thread each
            threads = max(1, free_cores() // workers)
            with ProcessPoolExecutor(workers - 1, mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(_evaluate_shard, str(checkpoint), [a.to_dict() for a in todo], str(store_path),
                                       rank * workers + i, world * workers, split, bn_batches, threads, False,
                                       [a.to_dict() for a in pairs])
                           for i in range(1, workers)]
                torch.set_num_threads(threads)
                try:
                    evaluate_share(ctx, store, todo, rank * workers, world * workers, progress, pairs)
                finally:
                    torch.set_num_threads(main_threads)
                for f in futures:
                    f.result()
        if rank != 0:
            return None
        data.wait_for(archs)
        evaluated_now = before - len(data.missing(archs))
        archs, accuracy = data.load(archs)
        predictor, report, tested = fit_and_test(space, archs, accuracy, test=test, seed=seed, config=config,
                                                  kind=kind)
        if paired and tested["test_size"] >= 3:
            tested.update(paired_figures(ctx, predictor, split_archs(list(archs), test, seed)[1], store, bn_batches,
                                         seed, progress))
    path = Path(out) if out else checkpoint.parent / PREDICTOR_FILE
    predictor.info["test"] = tested
    predictor.save(path, inputs={"supernet": str(checkpoint), "store": str(store_path)}, seed=seed)
    return PredictorFitResult(path, len(archs), evaluated_now, report, **tested)
