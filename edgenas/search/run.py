"""One device's search end to end: load the predictors, search, verify the top archs on the device, save.

The search itself runs before torch is imported or the supernet loaded, so an impossible constraint
is reported within a second or two; verification (export, measure, evaluate) comes after.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.errors import UsageError
from edgenas.search.base import SearchResult, run_search
from edgenas.search.problem import Constraints, Problem
from edgenas.search.verify import Verification


@dataclass
class DeviceSearch:
    """What `search_device` did for one device: the search result, the verification and the files written."""

    result: SearchResult
    verification: Verification | None
    result_path: Path
    plot_path: Path


def search_device(
    checkpoint: str | os.PathLike,
    device_name: str,
    constraints: Constraints,
    *,
    pareto: bool = False,
    top_k: int = 5,
    seed: int = 0,
    population: int = 100,
    generations: int | None = None,
    accuracy_predictor: str | os.PathLike | None = None,
    latency_predictor: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    store_path: str | os.PathLike | None = None,
    verify_top: bool = True,
    bn_batches: int = 8,
    progress: bool = True,
) -> DeviceSearch:
    """Search `device_name`'s best arch under `constraints` (evolution; NSGA-II with `pareto`), verify the
    top `top_k` on the device unless `verify_top` is False, and save the result JSON and the front plot."""
    from edgenas.accuracy.predictor import load_accuracy_predictor
    from edgenas.latency import load_latency_predictor
    from edgenas.search.evolution import Evolution, EvolutionConfig
    from edgenas.search.nsga import NSGA2, NSGA2Config
    from edgenas.search.report import plot_front, save_result

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UsageError(f"supernet checkpoint {checkpoint} does not exist: train one with 'edgenas train'")
    acc = load_accuracy_predictor(accuracy_predictor or checkpoint.parent)
    space = acc.space
    from edgenas.devices.config import load_config as load_device_config

    device_id = load_device_config(device_name).name  # a predictor file made for another device is refused
    lat = load_latency_predictor(latency_predictor or device_name, space=space,
                                 device=device_id if latency_predictor else None)
    precision = getattr(lat, "precision", None) or constraints.precision
    if constraints.precision != precision and precision in ("int8", "fp32"):
        constraints = Constraints(**{**constraints.to_dict(), "precision": precision})
    problem = Problem(space, acc, lat, constraints, device=device_name)
    rng = np.random.default_rng(seed)
    if pareto:
        algorithm = NSGA2(space, rng=rng, n_constraints=len(problem.limit_names),
                          config=NSGA2Config(population=population, generations=generations or 100))
    else:
        algorithm = Evolution(space, rng=rng, config=EvolutionConfig(population=population,
                                                                     generations=500 if generations is None else generations))
    result = run_search(algorithm, problem, top_k=top_k)

    out = Path(out_dir) if out_dir else checkpoint.parent / "search" / device_name
    verification = None
    if verify_top:
        verification = _verify(result, checkpoint, device_name, out / "models", precision, store_path, top_k,
                               bn_batches, progress)
    inputs: dict[str, Any] = {"supernet": str(checkpoint), "accuracy_predictor": acc.info.get("path") or str(
        accuracy_predictor or checkpoint.parent / "accuracy_predictor.npz")}
    if getattr(lat, "path", None):
        inputs["latency_predictor"] = str(lat.path)
    result_path = save_result(result, out / "search-result.json", verification=verification, inputs=inputs, seed=seed)
    plot_path = plot_front(result, out / "pareto.png", verification=verification)
    return DeviceSearch(result, verification, result_path, plot_path)


def _verify(result: SearchResult, checkpoint: Path, device_name: str, models_dir: Path, precision: str,
            store_path: str | os.PathLike | None, top_k: int, bn_batches: int, progress: bool) -> Verification:
    from edgenas import load_device
    from edgenas.accuracy.fit import SupernetEvaluator, default_store_path
    from edgenas.search.verify import verify
    from edgenas.store import Store

    ctx = SupernetEvaluator(str(checkpoint), "holdout", bn_batches)
    device = load_device(device_name)
    with Store(store_path or default_store_path()) as store:
        try:
            return verify(result, supernet=ctx.supernet, dataset=ctx.dataset, device=device, out_dir=models_dir,
                          precision=precision, store=store, supernet_sha256=ctx.info["sha256"], top_k=top_k,
                          bn_batches=bn_batches, progress=progress)
        finally:
            close = getattr(device, "close", None)
            if close:
                close()
