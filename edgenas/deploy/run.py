"""One device's search end to end, as `edgenas search` runs it: load the predictors, search the budget, deploy
the top candidates on the device, save the result and its plot.

The search itself runs before torch is imported or the supernet loaded, so an impossible constraint
is reported within a second or two; the deploy stage (export, measure, evaluate) comes after.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenas.deploy.stage import Deployment
from edgenas.errors import UsageError
from edgenas.search.base import SearchResult
from edgenas.search.problem import Constraints


@dataclass
class DeviceSearch:
    """What `search_device` did for one device: the search result, the deployment and the files written."""

    result: SearchResult
    deployment: Deployment | None
    result_path: Path
    plot_path: Path

    @property
    def verification(self) -> Deployment | None:  # the name the search's result JSON keeps
        return self.deployment


def deploy_options(constraints: Constraints, *, formats: tuple[str, ...] = ("onnx", "tflite", "tflite-int8"),
                   seed: int = 0, bn_batches: int = 8, max_drop_points: float | None = None) -> Any:
    """The export options candidates are exported and shipped with, from the search's constraints: the same for
    `edgenas search` and `edgenas run`, so a candidate is measured as it would ship."""
    from edgenas.export.subnet import ExportOptions

    kb = {name: None if value is None else value / 1024 for name, value in
          (("target_sram_kb", constraints.max_sram_bytes), ("target_flash_kb", constraints.max_flash_bytes))}
    extra = {} if max_drop_points is None else {"max_drop_points": max_drop_points}
    return ExportOptions(formats=formats, bn_batches=bn_batches, seed=seed, **kb, **extra)


def load_predictors(checkpoint: Path, device_name: str, *, accuracy_predictor: str | os.PathLike | None = None,
                    latency_predictor: str | os.PathLike | None = None) -> tuple[Any, Any]:
    """The accuracy predictor (default: beside the checkpoint) and the device's latency predictor (default: its
    calibrated one; a file made for another device is refused)."""
    from edgenas.accuracy.predictor import load_accuracy_predictor
    from edgenas.devices.config import load_config as load_device_config
    from edgenas.latency import load_latency_predictor

    acc = load_accuracy_predictor(accuracy_predictor or checkpoint.parent)
    device_id = load_device_config(device_name).name
    lat = load_latency_predictor(latency_predictor or device_name, space=acc.space,
                                 device=device_id if latency_predictor else None)
    return acc, lat


def search_device(
    checkpoint: str | os.PathLike,
    device_name: str,
    constraints: Constraints,
    *,
    algorithm: str = "evolution",
    top_k: int = 5,
    seed: int = 0,
    population: int = 100,
    generations: int | None = None,
    accuracy_predictor: str | os.PathLike | None = None,
    latency_predictor: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    store_path: str | os.PathLike | None = None,
    deploy_top: bool = True,
    bn_batches: int = 8,
    progress: bool = True,
) -> DeviceSearch:
    """Search `device_name`'s best arch under `constraints` with `algorithm` (`search_for_budget`: the budget
    and its margins), deploy the top `top_k` on the device unless `deploy_top` is False, and save the result
    JSON and the front plot."""
    from edgenas.deploy.report import plot_front, save_result
    from edgenas.search.budget import search_for_budget

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UsageError(f"supernet checkpoint {checkpoint} does not exist: train one with 'edgenas train'")
    acc, lat = load_predictors(checkpoint, device_name, accuracy_predictor=accuracy_predictor,
                               latency_predictor=latency_predictor)
    precision = getattr(lat, "precision", None) or constraints.precision
    if constraints.precision != precision and precision in ("int8", "fp32"):
        constraints = Constraints(**{**constraints.to_dict(), "precision": precision})
    result = search_for_budget(acc.space, acc, lat, constraints, algorithm=algorithm, population=population,
                               generations=generations, seed=seed, top_k=top_k, device=device_name)

    out = Path(out_dir) if out_dir else checkpoint.parent / "search" / device_name
    deployment = None
    if deploy_top:
        def search_again(scale: float) -> SearchResult | None:
            try:
                return search_for_budget(acc.space, acc, lat, constraints, algorithm=algorithm,
                                         population=population, generations=generations, seed=seed, top_k=top_k,
                                         device=device_name, latency_scale=scale)
            except UsageError:  # nothing is predicted to meet the corrected budget: the first round stands
                return None

        deployment = _deploy(result, checkpoint, device_name, out / "models", precision, store_path, top_k,
                             deploy_options(constraints, seed=seed, bn_batches=bn_batches), progress, search_again)
    inputs: dict[str, Any] = {"supernet": str(checkpoint), "accuracy_predictor": acc.info.get("path") or str(
        accuracy_predictor or checkpoint.parent / "accuracy_predictor.npz")}
    if getattr(lat, "path", None):
        inputs["latency_predictor"] = str(lat.path)
    result_path = save_result(result, out / "search-result.json", verification=deployment, inputs=inputs, seed=seed)
    plot_path = plot_front(result, out / "pareto.png", verification=deployment)
    return DeviceSearch(result, deployment, result_path, plot_path)


def _deploy(result: SearchResult, checkpoint: Path, device_name: str, models_dir: Path, precision: str,
            store_path: str | os.PathLike | None, top_k: int, options: Any, progress: bool,
            search_again: Any = None) -> Deployment:
    import sys

    from edgenas import load_device
    from edgenas.accuracy.fit import default_store_path
    from edgenas.deploy.stage import deploy
    from edgenas.store import Store
    from edgenas.train.checkpoint import OpenedCheckpoint

    opened = OpenedCheckpoint(checkpoint)
    with load_device(device_name) as device, Store(store_path or default_store_path()) as store:
        return deploy(result, opened, device, out_dir=models_dir, precision=precision, options=options, top_k=top_k,
                      store=store, progress=progress, search_again=search_again,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
