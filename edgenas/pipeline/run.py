"""Run the whole pipeline for a RunConfig: train → accuracy predictor → calibrate → search → export → report.

Every stage writes into the run folder and records, in `stages.json`, the key of its inputs (a hash
of its settings and of the files it read). A stage whose key and outputs are unchanged is reused;
a stage whose inputs changed runs again. Stages that were interrupted resume from their own state
(the trainer from `last.pt`, calibration and accuracy evaluation from the SQLite store), so Ctrl-C
or a crash loses at most the item in progress.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.artifacts import atomic_write_json, sha256_file, sha256_json
from edgenas.devices.measurement import meets_budget
from edgenas.errors import UsageError
from edgenas.pipeline.config import DeviceTarget, RunConfig
from edgenas.pipeline.report import BudgetResult, DeviceReport, ReportData, render_report

STAGES_FILE = "stages.json"


def log(message: str) -> None:
    print(f"edgenas: {message}", file=sys.stderr, flush=True)


class StageBook:
    """`stages.json`: per stage, the key of its inputs, its outputs and how long it took."""

    def __init__(self, out: Path) -> None:
        self.path = out / STAGES_FILE
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.ran: list[str] = []
        self.reused: list[str] = []
        self.seconds: dict[str, float] = {}

    def run(self, name: str, key: dict[str, Any], fn: Callable[[], dict[str, Any]],
            outputs_exist: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """Return the stage's outputs, running `fn` only when its inputs changed or its outputs are gone."""
        digest = sha256_json(key)
        entry = self.data.get(name)
        if entry and entry.get("key") == digest and (outputs_exist is None or outputs_exist(entry["outputs"])):
            self.reused.append(name)
            self.seconds[name] = 0.0
            log(f"stage {name}: reused (inputs unchanged)")
            return entry["outputs"]
        log(f"stage {name}: running")
        t0 = time.perf_counter()
        outputs = fn()
        seconds = time.perf_counter() - t0
        self.seconds[name] = seconds
        self.data[name] = {"key": digest, "outputs": outputs, "seconds": round(seconds, 2),
                           "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_json(self.path, self.data)
        self.ran.append(name)
        log(f"stage {name}: done in {seconds:.1f} s")
        return outputs


def _files_exist(*keys: str) -> Callable[[dict[str, Any]], bool]:
    return lambda outputs: all(Path(outputs[k]).exists() for k in keys if outputs.get(k))


@dataclass
class RunResult:
    out: Path
    report: Path
    checkpoint: Path
    ran: list[str]
    reused: list[str]
    seconds: dict[str, float]
    budgets: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "report": str(self.report), "checkpoint": str(self.checkpoint),
                "ran": self.ran, "reused": self.reused, "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "budgets": self.budgets}


def run_pipeline(config: RunConfig, *, progress: bool = True) -> RunResult:
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "run-config.json", config.to_dict())
    book = StageBook(out)
    store_path = out / "store.sqlite"
    tables_dir = out / "latency_tables"

    checkpoint = _train_stage(config, book, progress)
    ckpt_sha = sha256_file(checkpoint)
    from edgenas.train.checkpoint import load_checkpoint_info

    info = load_checkpoint_info(checkpoint)
    space_dict = info["space"]
    from edgenas.space import SearchSpace

    space = SearchSpace.from_dict(space_dict)

    predictor_out = book.run(
        "predictor",
        {"checkpoint": ckpt_sha, "samples": config.predictor_samples, "test": config.predictor_test, "seed": config.seed},
        lambda: _fit_accuracy(config, checkpoint, store_path, out, progress),
        _files_exist("path"),
    )
    accuracy_path = Path(predictor_out["path"])

    devices: list[DeviceReport] = []
    budgets: list[dict[str, Any]] = []
    calibrated: list[Path] = []  # latency predictors so far: the sources of a transfer calibration
    for target in config.devices:
        device_report, device_budgets = _device_stages(config, target, book, space, checkpoint, ckpt_sha, accuracy_path,
                                                       store_path, tables_dir, calibrated, progress)
        devices.append(device_report)
        budgets.extend(device_budgets)

    metrics_path = checkpoint.parent / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] \
        if metrics_path.is_file() else []
    summary = info.get("summary") or {}
    training_summary = {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}
    data = ReportData(
        title=f"edgenas run: {config.dataset}, {space.name} space, {len(config.devices)} device(s)",
        dataset=config.dataset, space=space.name, training_metrics=metrics, training_summary=training_summary,
        predictor_summary={k: v for k, v in predictor_out.items() if k != "path"}, devices=devices,
        stage_seconds=dict(book.seconds),
    )
    report = render_report(data, out)
    return RunResult(out, report, checkpoint, book.ran, book.reused, dict(book.seconds), budgets)


# ---- stages -------------------------------------------------------------------------------------
def _train_stage(config: RunConfig, book: StageBook, progress: bool) -> Path:
    if config.checkpoint is not None:
        return config.checkpoint
    from edgenas.train.config import load_config

    tconfig = load_config(config.train_config, preset=config.preset, dataset=config.dataset, seed=config.seed,
                          batch_size=config.train_overrides.get("batch_size"))
    if "steps_scale" in config.train_overrides:
        tconfig = tconfig.scale_epochs(config.train_overrides["steps_scale"])
    train_dir = config.out / "supernet"
    key = {"train": tconfig.result_dict()}

    def run() -> dict[str, Any]:
        from edgenas.train.trainer import train

        result = train(tconfig, train_dir, resume=True, progress=progress)
        return {"checkpoint": str(result.checkpoint)}

    outputs = book.run("train", key, run, _files_exist("checkpoint"))
    return Path(outputs["checkpoint"])


def _fit_accuracy(config: RunConfig, checkpoint: Path, store_path: Path, out: Path, progress: bool) -> dict[str, Any]:
    from edgenas.accuracy.fit import fit_predictor

    result = fit_predictor(checkpoint, samples=config.predictor_samples, test=config.predictor_test, seed=config.seed,
                           store_path=store_path, out=out / "accuracy_predictor.npz", progress=progress)
    d = result.to_dict()
    return {"path": str(result.path), **{k: v for k, v in d.items() if isinstance(v, (int, float))}}


def _device_stages(config: RunConfig, target: DeviceTarget, book: StageBook, space: Any, checkpoint: Path,
                   ckpt_sha: str, accuracy_path: Path, store_path: Path, tables_dir: Path, calibrated: list[Path],
                   progress: bool) -> tuple[DeviceReport, list[dict[str, Any]]]:
    from edgenas.devices import load_device

    device = load_device(target.name)
    try:
        runtime = device.runtime
        if runtime == "onnxruntime" and target.precision == "int8":
            raise UsageError(f"device {device.name} runs ONNX Runtime, which edgenas deploys in fp32: set its "
                             "precision to \"fp32\" (int8 is for TFLite devices)")
        describe = device.describe()
        label = f"{device.name}-{target.precision}"
        sources = list(calibrated) if target.calibration == "transfer" else []
        calib = book.run(
            f"calibrate:{label}",
            {"device": describe, "space": space.to_dict(), "precision": target.precision, "how": target.calibration,
             "budget": target.calibration_budget, "holdout": target.holdout, "seed": config.seed,
             "sources": [sha256_file(p) for p in sources]},
            lambda: _calibrate(device, space, target, store_path, tables_dir, sources, config.seed, progress),
            _files_exist("predictor"),
        )
        latency_path = Path(calib["predictor"])
        calibrated.append(latency_path)
        lat_sha = sha256_file(latency_path)
        acc_sha = sha256_file(accuracy_path)
        budgets_ms = list(target.budgets_ms) or _quantile_budgets(latency_path, space, target.budget_quantiles,
                                                                  config.seed)
        report = DeviceReport(device.name, runtime, target.precision, describe,
                              calibration_predicted=calib["holdout_predicted"],
                              calibration_measured=calib["holdout_measured"],
                              calibration_summary=calib["summary"])
        front = book.run(
            f"pareto:{label}",
            {"accuracy": acc_sha, "latency": lat_sha, "seed": config.seed, "population": config.population},
            lambda: _pareto(checkpoint, device.name, target, accuracy_path, latency_path, config, store_path,
                            config.out / "search" / label / "pareto", progress),
        )
        report.pareto_predicted = [tuple(p) for p in front["front"]]
        results = []
        for budget in budgets_ms:
            bdir = config.out / "search" / label / f"budget-{budget:g}ms"
            found = book.run(
                f"search:{label}:{budget:g}ms",
                {"accuracy": acc_sha, "latency": lat_sha, "checkpoint": ckpt_sha, "budget": budget,
                 "limits": [target.max_sram_kb, target.max_flash_kb, target.max_macs], "seed": config.seed,
                 "population": config.population, "generations": config.generations, "top_k": config.top_k,
                 "margins": SEARCH_MARGINS, "timing": "interleaved"},
                lambda b=budget, d=bdir: _search(checkpoint, device.name, target, b, accuracy_path, latency_path,
                                                 config, store_path, d, progress),
                _files_exist("result"),
            )
            for cand in found.get("candidates", []):
                if cand.get("latency_ms") is not None and cand.get("accuracy") is not None:
                    report.pareto_measured.append((cand["latency_ms"], cand["accuracy"]))
            budget_result = BudgetResult(budget_ms=budget, arch=found.get("arch"),
                                         predicted_accuracy=found.get("predicted_accuracy"),
                                         predicted_latency_ms=found.get("predicted_latency_ms"), note=found.get("note", ""))
            if found.get("arch") is not None:
                edir = config.out / "export" / label / f"budget-{budget:g}ms"
                exported = book.run(
                    f"export:{label}:{budget:g}ms",
                    {"checkpoint": ckpt_sha, "arch": found["arch"], "formats": list(config.formats), "device": describe,
                     "precision": target.precision, "seed": config.seed,
                     "limits": [target.max_sram_kb, target.max_flash_kb]},
                    lambda f=found, d=edir: _export(checkpoint, f, d, device, target, config),
                    _files_exist("card"),
                )
                card = json.loads(Path(exported["card"]).read_text())
                budget_result.export_dir = str(edir)
                budget_result.card = card
                budget_result.measured_accuracy = exported.get("accuracy")
                budget_result.measured_latency_ms = exported.get("measured_latency_ms")
                if budget_result.measured_latency_ms is not None:
                    budget_result.meets_budget = meets_budget(budget_result.measured_latency_ms, budget)
                if exported.get("problems"):
                    budget_result.note = "export checks failed: " + "; ".join(exported["problems"])
            report.budgets.append(budget_result)
            results.append({"device": device.name, "runtime": runtime, "precision": target.precision,
                            "budget_ms": budget, "arch": budget_result.arch,
                            "measured_latency_ms": budget_result.measured_latency_ms,
                            "accuracy": budget_result.measured_accuracy, "meets_budget": budget_result.meets_budget,
                            "export_dir": budget_result.export_dir, "note": budget_result.note})
        return report, results
    finally:
        close = getattr(device, "close", None)
        if close:
            close()


def _calibrate(device: Any, space: Any, target: DeviceTarget, store_path: Path, tables_dir: Path, sources: list[Path],
               seed: int, progress: bool) -> dict[str, Any]:
    from edgenas.latency import load_latency_predictor
    from edgenas.latency.calibrate import Calibrator, calibrate, calibrate_transfer
    from edgenas.latency.evaluate import holdout_archs, score
    from edgenas.latency.table import predictor_path
    from edgenas.store import Store

    runtime = device.runtime
    with Store(store_path) as store:
        common = dict(runtime=runtime, precision=target.precision, store=store, seed=seed, tables_dir=tables_dir,
                      cache_dir=tables_dir / ".models", progress=progress)
        if target.calibration == "transfer":
            predictor = calibrate_transfer(device, space, sources=[load_latency_predictor(p, space=space) for p in sources],
                                           samples=target.calibration_budget, **common)
        else:
            predictor = calibrate(device, space, budget=target.calibration_budget,
                                  use_table=target.calibration == "table", **common)
        train_archs, _ = predictor.training_set
        cal = Calibrator(device, space, runtime=runtime, precision=target.precision, store=store,
                         cache_dir=tables_dir / ".models", progress=progress)
        archs, measured, _ = cal.measure_archs(holdout_archs(space, target.holdout, train_archs, seed),
                                               f"measure held-out subnets on {device.name}")
    predicted = predictor.predict(archs)
    s = score("calibrated", predicted, measured, measurements=len(train_archs),
              device_seconds=float(predictor.fit_info.get("device_seconds") or 0.0))
    summary = {"held-out subnets": len(archs), "within ±5 %": round(s.within_5, 4), "within ±10 %": round(s.within_10, 4),
               "RMSE ms": round(s.rmse_ms, 4), "Spearman": round(s.spearman, 4), "Kendall": round(s.kendall, 4),
               "calibration measurements": len(train_archs), "device seconds": round(s.device_seconds, 1)}
    return {"predictor": str(predictor_path(device.name, runtime, target.precision, tables_dir)), "summary": summary,
            "holdout_predicted": predicted.tolist(),
            "holdout_measured": measured.tolist()}


def _quantile_budgets(latency_path: Path, space: Any, quantiles: tuple[float, ...], seed: int) -> list[float]:
    """Budgets at quantiles of the predicted latency of random subnets, rounded to 2 significant digits."""
    from edgenas.latency import load_latency_predictor

    lat = load_latency_predictor(latency_path, space=space)
    ms = lat.predict(space.sample_many(np.random.default_rng([seed, 7]), 2000))
    return [float(f"{np.quantile(ms, q):.2g}") for q in quantiles]


def _constraints(target: DeviceTarget, budget: float | None):
    from edgenas.search.problem import Constraints

    return Constraints(max_latency_ms=budget,
                       max_sram_bytes=int(target.max_sram_kb * 1024) if target.max_sram_kb else None,
                       max_flash_bytes=int(target.max_flash_kb * 1024) if target.max_flash_kb else None,
                       max_macs=target.max_macs, precision=target.precision)


def _pareto(checkpoint: Path, device_name: str, target: DeviceTarget, accuracy_path: Path, latency_path: Path,
            config: RunConfig, store_path: Path, out_dir: Path, progress: bool) -> dict[str, Any]:
    from edgenas.search.run import search_device

    found = search_device(checkpoint, device_name, _constraints(target, None), pareto=True, top_k=config.top_k,
                          seed=config.seed, population=config.population, generations=max(20, config.generations // 4),
                          accuracy_predictor=accuracy_path, latency_predictor=latency_path, out_dir=out_dir,
                          store_path=store_path, verify_top=False, progress=progress)
    front = sorted((c.predicted["latency_ms"], c.predicted["accuracy"]) for c in found.result.front)
    return {"front": [list(p) for p in front], "result": str(found.result_path)}


# The predictor is within a few per cent of the device, so the arch that sits exactly on the budget by
# prediction measures over it about half the time. Searching also at tighter budgets gives the
# verification step candidates below the budget by more than the predictor's error; the most accurate
# candidate that meets the budget when measured wins (edgenas.devices.measurement.meets_budget).
SEARCH_MARGINS = (1.0, 0.93, 0.86)


def _candidates(checked: list[Any]) -> list[dict[str, Any]]:
    return [{"arch": c.arch.to_dict(), "latency_ms": c.measured.get("latency_ms"), "accuracy": c.measured.get("accuracy")}
            for c in checked]


def _search(checkpoint: Path, device_name: str, target: DeviceTarget, budget: float, accuracy_path: Path,
            latency_path: Path, config: RunConfig, store_path: Path, out_dir: Path, progress: bool) -> dict[str, Any]:
    from edgenas.accuracy.fit import SupernetEvaluator
    from edgenas.accuracy.predictor import load_accuracy_predictor
    from edgenas.devices import load_device
    from edgenas.latency import load_latency_predictor
    from edgenas.search.base import run_search
    from edgenas.search.evolution import Evolution, EvolutionConfig
    from edgenas.search.problem import Problem
    from edgenas.search.report import plot_front, save_result
    from edgenas.search.verify import verify
    from edgenas.store import Store

    acc = load_accuracy_predictor(accuracy_path)
    lat = load_latency_predictor(latency_path, space=acc.space)
    results = []
    for margin in SEARCH_MARGINS:
        problem = Problem(acc.space, acc, lat, _constraints(target, budget * margin), device=device_name)
        evolution = Evolution(acc.space, rng=np.random.default_rng(config.seed),
                              config=EvolutionConfig(population=config.population, generations=config.generations))
        try:
            results.append(run_search(evolution, problem, top_k=config.top_k))
        except UsageError as exc:  # impossible at this budget: reported in the run, the others go on
            if not results:
                log(f"budget {budget:g} ms on {device_name}: {exc}")
                return {"arch": None, "note": str(exc), "result": None, "candidates": []}
            break
    result = results[0]
    result.constraints["max_latency_ms"] = budget  # verified against the real budget
    picks = list(dict.fromkeys([r.best.arch for r in results] + [c.arch for c in result.top]))
    picks = picks[: max(config.top_k, len(results))]
    by_arch = {c.arch: c for r in results for c in [r.best, *r.top]}
    result.top = [by_arch[a] for a in picks]
    ctx = SupernetEvaluator(str(checkpoint), "holdout", 8)
    with load_device(device_name) as device, Store(store_path) as store:
        ver = verify(result, supernet=ctx.supernet, dataset=ctx.dataset, device=device, out_dir=out_dir / "models",
                     precision=target.precision, store=store, supernet_sha256=ctx.info["sha256"], progress=progress)
    result_path = save_result(result, out_dir / "search-result.json", verification=ver, seed=config.seed,
                              inputs={"supernet": str(checkpoint), "accuracy_predictor": str(accuracy_path),
                                      "latency_predictor": str(latency_path)})
    plot_front(result, out_dir / "pareto.png", verification=ver)
    candidates = _candidates(ver.candidates)
    winner = ver.winner
    if winner is None:
        note = (f"none of the {len(candidates)} candidates met {budget:g} ms when measured on {device_name}; "
                "re-run with a larger budget or more calibration measurements")
        return {"arch": None, "note": note, "result": str(result_path), "candidates": candidates}
    return {"arch": winner.arch.to_dict(), "predicted_accuracy": winner.predicted.get("accuracy"),
            "predicted_latency_ms": winner.predicted.get("latency_ms"), "result": str(result_path),
            "candidates": candidates, "note": ""}


def _export(checkpoint: Path, found: dict[str, Any], out_dir: Path, device: Any, target: DeviceTarget,
            config: RunConfig) -> dict[str, Any]:
    from edgenas.data import load_dataset
    from edgenas.export.commands import export_one, load_search_result
    from edgenas.export.pipeline import ExportCheckError, ExportOptions
    from edgenas.train.checkpoint import load_checkpoint_info, load_supernet

    info = load_checkpoint_info(checkpoint)
    supernet = load_supernet(checkpoint)
    arch = supernet.space.parse_arch(found["arch"])
    dataset = load_dataset(info["dataset"], seed=info.get("seed", 0))
    formats = tuple(config.formats)
    options = ExportOptions(formats=formats, target_sram_kb=target.max_sram_kb, target_flash_kb=target.max_flash_kb,
                            seed=config.seed)
    search = load_search_result(found["result"]) if found.get("result") else {}
    # the card's predicted figures are the chosen arch's (the measured winner), not the search's top pick
    search["best"] = {"arch": found["arch"], "predicted": {"latency_ms": found.get("predicted_latency_ms"),
                                                           "accuracy": found.get("predicted_accuracy")}}
    problems: list[str] = []
    try:
        export_one(supernet, arch, dataset, out_dir, options=options, info=info, search=search, device=device,
                   dataset_spec=info["dataset"])
    except ExportCheckError as exc:
        problems.append(str(exc))
    card_path = out_dir / "card.json"
    if not card_path.is_file():
        raise UsageError(f"export into {out_dir} wrote no card.json: {'; '.join(problems) or 'see the log above'}")
    card = json.loads(card_path.read_text())
    deployed = _deployed_file(device.runtime, target.precision)
    accuracy = (card.get("accuracy") or {}).get("files", {}).get(deployed, (card.get("accuracy") or {}).get("pytorch"))
    measured = [m for m in (card.get("latency") or {}).get("measured", []) if m.get("file") == deployed]
    latency = measured[0].get("latency_ms") if measured and measured[0].get("ok") else None
    return {"card": str(card_path), "deployed_file": deployed, "accuracy": accuracy, "measured_latency_ms": latency,
            "problems": problems}


def _deployed_file(runtime: str, precision: str) -> str:
    """The exported file a device of this runtime runs at this precision."""
    from edgenas.export.pipeline import FILE_NAMES

    if runtime == "onnxruntime":
        return FILE_NAMES["onnx"]
    return FILE_NAMES["tflite-int8" if precision == "int8" else "tflite"]
