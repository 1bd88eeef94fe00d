"""Run the whole pipeline for a RunConfig: train → accuracy predictor → calibrate → search → export → report.

Every stage writes into the run folder and records, in `stages.json`, the key of its inputs (a hash
of its settings and of the files it read). A stage whose key and outputs are unchanged is reused;
a stage whose inputs changed runs again. Stages that were interrupted resume from their own state
(the trainer from `last.pt`, calibration and accuracy evaluation from the SQLite store), so Ctrl-C
or a crash loses at most the item in progress.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.accuracy import DEFAULT_KIND
from edgenas.accuracy.fit import fit_predictor
from edgenas.artifacts import atomic_write_json, sha256_file, sha256_json
from edgenas.deploy.budget import BudgetJob, BudgetOutcome, search_and_deploy, search_device
from edgenas.devices import load_device
from edgenas.devices.device_files import find_device_file
from edgenas.errors import UsageError
from edgenas.latency import load_latency_predictor
from edgenas.latency.calibrate import Calibrator, calibrate, calibrate_transfer
from edgenas.latency.predictor_eval import holdout_archs, score
from edgenas.latency.table import predictor_path
from edgenas.pipeline.report import BudgetResult, DeviceReport, ReportData, render_report
from edgenas.pipeline.run_config import DeviceTarget, RunConfig
from edgenas.run_folder import write_manifest
from edgenas.search.problem import Constraints, InfeasibleConstraintError
from edgenas.search.registry import check_algorithm
from edgenas.store import Store
from edgenas.train.checkpoint import OpenedCheckpoint, load_checkpoint_info
from edgenas.train.config import load_config
from edgenas.train.gate import TrainingGateFailed, training_verdict
from edgenas.train.trainer import train

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
    calibrations: list[dict[str, Any]] = field(default_factory=list)  # per device: the held-out check

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "report": str(self.report), "checkpoint": str(self.checkpoint),
                "ran": self.ran, "reused": self.reused, "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "budgets": self.budgets, "calibrations": self.calibrations}


# A latency predictor passes its held-out check when at least this share of the held-out subnets (random, never
# used in its fit) lands within ±10 % of what the device measured. Quiet calibrations of the demo put 19-20 of 20
# there; a fit taken in a slow spell of the machine (every figure 1.24x) put 1 of 20. Below it, the searches
# still ran and every shipped model was measured, but the predictor that chose them disagreed with the device.
HOLDOUT_WITHIN_10_NEEDED = 0.5
HOLDOUT_TO_JUDGE = 10  # fewer held-out subnets than this (a quick trial's 3) are shown, not judged


def calibration_check(label: str, summary: dict[str, Any]) -> dict[str, Any]:
    """The held-out check of one device's latency predictor: {device, held_out, within_10, passed, message}."""
    held = int(summary.get("held-out subnets") or 0)
    share = summary.get("within ±10 %")
    within = round(float(share) * held) if share is not None else 0
    judged = held >= HOLDOUT_TO_JUDGE
    passed = not judged or (share is not None and float(share) >= HOLDOUT_WITHIN_10_NEEDED)
    message = f"latency predictor for {label}: {within} of {held} held-out subnets within ±10 % of the device"
    if not judged:
        message += f" (too few to judge: holdout = {HOLDOUT_TO_JUDGE} or more is checked)"
    elif not passed:
        message += (f" (check FAILED: fewer than {HOLDOUT_WITHIN_10_NEEDED:.0%}; the device's speed changed between "
                    "its timing windows, or something else ran on it: check it with `edgenas devices check`, then "
                    "run again with a new --out and train.checkpoint set to this run's supernet/supernet.pt)")
    return {"device": label, "held_out": held, "within_10": within, "passed": passed, "message": message}


def run_pipeline(config: RunConfig, *, progress: bool = True, force: bool = False) -> RunResult:
    """Run every stage. A supernet that did not learn (`edgenas.train.gate`) stops the run after training with
    TrainingGateFailed (its checkpoint kept), unless `force`."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "run-config.json", config.to_dict())
    book = StageBook(out)
    store_path = out / "store.sqlite"
    tables_dir = out / "latency_tables"

    checkpoint = _train_stage(config, book, progress)
    manifest: dict[str, Any] = {"supernet": checkpoint, "store": store_path, "run_config": out / "run-config.json"}
    write_manifest(out, made_by="edgenas run", **manifest)
    trained = load_checkpoint_info(checkpoint)
    try:
        verdict = _training_gate(checkpoint, trained, force)
    except TrainingGateFailed as exc:  # nothing ships; the report still shows the training curves and the verdict
        metrics, training_summary = _training_figures(checkpoint, exc.verdict, trained)
        space_name = str((trained.get("space") or {}).get("name", "?"))
        exc.report = render_report(ReportData(
            title=f"edgenas run: {config.dataset}, stopped at the training check", dataset=config.dataset,
            space=space_name, training_metrics=metrics, training_summary=training_summary,
            stage_seconds=dict(book.seconds),
            stopped=f"Stopped after training: {exc.verdict.message} Nothing was searched or shipped; "
                    "`edgenas run --force` goes on with this supernet."), out)
        raise
    opened = _Checkpoint(checkpoint)  # read once, for every stage that needs it
    info = opened.get().info
    ckpt_sha = info["sha256"]
    space = opened.get().space

    predictor_out = book.run(
        "predictor",
        {"checkpoint": ckpt_sha, "samples": config.predictor_samples, "test": config.predictor_test, "seed": config.seed,
         **_bn_key(config), "kind": DEFAULT_KIND},
        lambda: _fit_accuracy(config, checkpoint, store_path, out, progress),
        _files_exist("path"),
    )
    accuracy_path = Path(predictor_out["path"])
    manifest["accuracy_predictor"] = accuracy_path
    manifest["devices"], manifest["budgets"] = {}, []
    write_manifest(out, made_by="edgenas run", **manifest)

    devices: list[DeviceReport] = []
    budgets: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    calibrated: list[Path] = []  # latency predictors so far: the sources of a transfer calibration
    for target in config.devices:
        device_report, device_budgets = _device_stages(config, target, book, space, checkpoint, opened, ckpt_sha,
                                                       accuracy_path, store_path, tables_dir, calibrated, progress)
        devices.append(device_report)
        budgets.extend(device_budgets)
        entry = manifest["devices"].setdefault(device_report.name, {"device_file": _device_file(target.name),
                                                                    "runtime": device_report.runtime, "latency": {}})
        entry["latency"][target.precision] = calibrated[-1]
        manifest["budgets"] += [{k: b[k] for k in ("device", "runtime", "precision", "budget_ms", "budget_source",
                                                   "export_dir", "meets_budget")} for b in device_budgets]
        write_manifest(out, made_by="edgenas run", **manifest)
        if device_report.calibration_summary:
            checks.append(calibration_check(target.label, device_report.calibration_summary))
            device_report.calibration_check = checks[-1]

    metrics, training_summary = _training_figures(checkpoint, verdict, info)
    data = ReportData(
        title=f"edgenas run: {config.dataset}, {space.name} space, {len(config.devices)} device(s)",
        dataset=config.dataset, space=space.name, training_metrics=metrics, training_summary=training_summary,
        predictor_summary={k: v for k, v in predictor_out.items() if k != "path"}, devices=devices,
        stage_seconds=dict(book.seconds),
    )
    report = render_report(data, out)
    manifest["exports"] = sorted({b["export_dir"] for b in budgets if b.get("export_dir")})
    write_manifest(out, made_by="edgenas run", **manifest, report=report)
    return RunResult(out, report, checkpoint, book.ran, book.reused, dict(book.seconds), budgets, checks)


def _training_figures(checkpoint: Path, verdict: Any, info: dict[str, Any]) -> tuple[list[dict], dict]:
    """The report's training part: every metrics.jsonl record (the curves of every phase) and the summary's
    figures (`info`: the checkpoint's) with the comparison run, the learning-rate factor and the verdict."""
    metrics_path = checkpoint.parent / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] \
        if metrics_path.is_file() else []
    summary = info.get("summary") or {}
    training_summary = {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}
    if (summary.get("alone") or {}).get("top1") is not None:
        training_summary["largest network trained alone (same steps)"] = summary["alone"]["top1"]
    if (summary.get("lr_backoff") or {}).get("factor") is not None:  # the learning-rate back-off's factor
        training_summary["learning-rate factor (x the preset's)"] = summary["lr_backoff"]["factor"]
    training_summary["training check"] = verdict.message
    if getattr(verdict, "gap", None) is not None:  # how far the smallest subnet trails the largest, and the allowance
        training_summary["smallest subnet below the largest (points)"] = (
            f"{100 * verdict.gap:.1f} (the check allows {100 * verdict.allowed:.1f})")
    return metrics, training_summary


# ---- stages -------------------------------------------------------------------------------------
def _training_gate(checkpoint: Path, info: dict[str, Any], force: bool) -> Any:
    """The verdict on the supernet (edgenas.train.gate; `info`: the checkpoint's); raise TrainingGateFailed when
    it failed, unless `force`."""
    verdict = training_verdict(info.get("summary") or {}, num_classes=info["space"].get("num_classes"))
    if not verdict.passed:
        if not force:
            raise TrainingGateFailed(verdict, checkpoint)
        log(f"{verdict.message} (going on: --force)")
    return verdict


def _train_stage(config: RunConfig, book: StageBook, progress: bool) -> Path:
    if config.checkpoint is not None:
        return config.checkpoint

    tconfig = config.train_config_of(load_config)
    if "total_steps" in config.train_overrides:
        tconfig = tconfig.spread_steps(config.train_overrides["total_steps"])
    train_dir = config.out / "supernet"
    key = {"train": tconfig.result_dict()}
    if tconfig.time_budget is not None:
        key["time_budget"] = tconfig.time_budget

    def run() -> dict[str, Any]:
        result = train(tconfig, train_dir, resume=True, progress=progress)
        return {"checkpoint": str(result.checkpoint)}

    outputs = book.run("train", key, run, _files_exist("checkpoint"))
    return Path(outputs["checkpoint"])


# Archs a spawned evaluation worker must have to earn its start (importing torch and reading the checkpoint,
# a few seconds; a tiny subnet evaluates in about a second on one thread): the demo's 60 archs took 66 s in one.
ARCHS_PER_WORKER = 20


def evaluation_workers(samples: int) -> int:
    """Processes to evaluate the accuracy dataset in: one per core this process may use, one thread each (small
    subnets use a second thread poorly), no more than `samples / ARCHS_PER_WORKER`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, samples // ARCHS_PER_WORKER))


def _bn_key(config: RunConfig) -> dict[str, int]:
    """The BatchNorm recalibration in a stage's key, where it is not the default (older stage books stay valid)."""
    return {"bn_batches": config.bn_batches} if config.bn_batches != 8 else {}


def _fit_accuracy(config: RunConfig, checkpoint: Path, store_path: Path, out: Path, progress: bool) -> dict[str, Any]:
    result = fit_predictor(checkpoint, samples=config.predictor_samples, test=config.predictor_test, seed=config.seed,
                           store_path=store_path, out=out / "accuracy_predictor.npz",
                           workers=evaluation_workers(config.predictor_samples), bn_batches=config.bn_batches,
                           progress=progress)
    d = result.to_dict()
    # a metric that is undefined (Kendall tau of one test arch) is left out: the stage book holds finite numbers
    return {"path": str(result.path), **{k: v for k, v in d.items() if isinstance(v, (int, float)) and np.isfinite(v)}}


def _device_stages(config: RunConfig, target: DeviceTarget, book: StageBook, space: Any, checkpoint: Path,
                   opened: _Checkpoint,
                   ckpt_sha: str, accuracy_path: Path, store_path: Path, tables_dir: Path, calibrated: list[Path],
                   progress: bool) -> tuple[DeviceReport, list[dict[str, Any]]]:
    with load_device(target.name) as device:
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
             **({"rounds": target.calibration_rounds} if target.calibration_rounds != 5 else {}),
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
        sources = budget_sources(target, device.name, runtime, calib["summary"])
        report = DeviceReport(device.name, runtime, target.precision, describe,
                              calibration_predicted=calib["holdout_predicted"],
                              calibration_measured=calib["holdout_measured"],
                              calibration_summary=calib["summary"])
        front = book.run(
            f"pareto:{label}",
            {"accuracy": acc_sha, "latency": lat_sha, "seed": config.seed, "population": config.population,
             "limits": [target.max_sram_kb, target.max_flash_kb, target.max_macs]},  # the front is searched under them
            lambda: _pareto(checkpoint, device, target, accuracy_path, latency_path, config, store_path,
                            config.out / "search" / label / "pareto", progress),
        )
        report.pareto_predicted = [tuple(p) for p in front["front"]]
        results = []
        for budget in budgets_ms:
            job = _budget_job(config, target, checkpoint, label, budget, accuracy_path, latency_path, store_path)
            found = BudgetOutcome.from_dict(book.run(
                f"deploy:{label}:{budget:g}ms", job.key(describe),
                lambda j=job: _deploy(j, opened, device, progress).to_dict(),
                _files_exist("result", "card"),
            ))
            report.pareto_measured.extend((c["latency_ms"], c["accuracy"]) for c in found.candidates
                                          if c.get("latency_ms") is not None and c.get("accuracy") is not None)
            budget_result = BudgetResult.from_outcome(found)
            report.budgets.append(budget_result)
            budget_result.source = sources[len(results)]
            results.append({"device": device.name, "runtime": runtime, "precision": target.precision,
                            "budget_ms": budget_result.budget_ms,
                            "budget_source": budget_result.source, "arch": budget_result.arch,
                            "measured_latency_ms": budget_result.measured_latency_ms,
                            "accuracy": budget_result.measured_accuracy, "accuracy_split": budget_result.accuracy_split,
                            "accuracy_images": budget_result.accuracy_images, "deployed_file": budget_result.deployed_file,
                            "holdout_accuracy": budget_result.holdout_accuracy,
                            "holdout_images": budget_result.holdout_images, "meets_budget": budget_result.meets_budget,
                            "export_dir": budget_result.export_dir, "note": budget_result.note,
                            "problems": budget_result.problems, "choice": budget_result.choice,
                            "passed_over": found.passed_over})
        return report, results


def _calibrate(device: Any, space: Any, target: DeviceTarget, store_path: Path, tables_dir: Path, sources: list[Path],
               seed: int, progress: bool) -> dict[str, Any]:
    runtime = device.runtime
    with Store(store_path) as store:
        common = dict(runtime=runtime, precision=target.precision, store=store, seed=seed, tables_dir=tables_dir,
                      cache_dir=tables_dir / ".models", progress=progress)
        if target.calibration == "transfer":
            predictor = calibrate_transfer(device, space, sources=[load_latency_predictor(p, space=space) for p in sources],
                                           samples=target.calibration_budget, **common)
            held = holdout_archs(space, target.holdout, predictor.training_set[0], seed)
        else:  # the held-out subnets are timed in the calibration's first window (one window fewer)
            held = holdout_archs(space, target.holdout, [], seed)
            predictor = calibrate(device, space, budget=target.calibration_budget, rounds=target.calibration_rounds,
                                  use_table=target.calibration == "table", holdout=held, **common)
        train_archs, _ = predictor.training_set
        cal = Calibrator(device, space, runtime=runtime, precision=target.precision, store=store,
                         cache_dir=tables_dir / ".models", progress=progress)
        archs, measured, _ = cal.measure_archs(held, f"measure held-out subnets on {device.name}")
    predicted = predictor.predict(archs)
    s = score("calibrated", predicted, measured, measurements=len(train_archs),
              device_seconds=float(predictor.fit_info.get("device_seconds") or 0.0))
    summary = {"held-out subnets": len(archs), "within ±5 %": round(s.within_5, 4), "within ±10 %": round(s.within_10, 4),
               "RMSE ms": round(s.rmse_ms, 4), "Spearman": round(s.spearman, 4), "Kendall": round(s.kendall, 4),
               "calibration measurements": len(train_archs), "device seconds": round(s.device_seconds, 1)}
    return {"predictor": str(predictor_path(device.name, runtime, target.precision, tables_dir)), "summary": summary,
            "holdout_predicted": predicted.tolist(),
            "holdout_measured": measured.tolist()}


QUANTILE_SAMPLES = 2000  # random subnets whose predicted latency the quantile budgets are taken over


def budget_sources(target: DeviceTarget, device: str, runtime: str, calibration: dict[str, Any]) -> list[str]:
    """Where each budget of `target` came from, in words ("30th percentile of ...")."""
    if target.budgets_ms:
        return [f"given in the run config (budgets_ms) for {device}, {target.precision}"] * len(target.budgets_ms)
    measured = calibration.get("calibration measurements")
    fitted = f", predictor fitted on {measured} measured subnets" if measured else ""
    return [f"{_ordinal(round(100 * q))} percentile of the predicted latency of {QUANTILE_SAMPLES} random subnets "
            f"on {device} ({runtime}, {target.precision}{fitted})" for q in target.budget_quantiles]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _device_file(name: str) -> Path:
    return find_device_file(name).resolve()


def _quantile_budgets(latency_path: Path, space: Any, quantiles: tuple[float, ...], seed: int) -> list[float]:
    """Budgets at quantiles of the predicted latency of random subnets, rounded to 2 significant digits."""
    lat = load_latency_predictor(latency_path, space=space)
    ms = lat.predict(space.sample_many(np.random.default_rng([seed, 7]), QUANTILE_SAMPLES))
    return [float(f"{np.quantile(ms, q):.2g}") for q in quantiles]


def _constraints(target: DeviceTarget, budget: float | None):
    return Constraints.from_user_units(max_latency_ms=budget, max_sram_kb=target.max_sram_kb,
                                       max_flash_kb=target.max_flash_kb, max_macs_m=target.max_macs,
                                       precision=target.precision)


def _pareto(checkpoint: Path, device: Any, target: DeviceTarget, accuracy_path: Path, latency_path: Path,
            config: RunConfig, store_path: Path, out_dir: Path, progress: bool) -> dict[str, Any]:
    found = search_device(checkpoint, target.name, _constraints(target, None), algorithm="nsga2", top_k=config.top_k,
                          seed=config.seed, population=config.population, generations=max(20, _generations(config) // 4),
                          accuracy_predictor=accuracy_path, latency_predictor=latency_path, out_dir=out_dir,
                          store=store_path, deploy_top=False, progress=progress, device=device)
    front = sorted((c.predicted["latency_ms"], c.predicted["accuracy"]) for c in found.result.front)
    return {"front": [list(p) for p in front], "result": str(found.result_path)}


def _generations(config: RunConfig) -> int:
    """The run's generations: its config's, else the algorithm's default."""
    return config.generations or check_algorithm(config.algorithm).default_generations


class _Checkpoint:
    """The run's checkpoint, opened (read once) the first time a stage needs its supernet and dataset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._opened: Any = None

    def get(self) -> Any:
        if self._opened is None:
            self._opened = OpenedCheckpoint(self.path)
        return self._opened


def _budget_job(config: RunConfig, target: DeviceTarget, checkpoint: Path, label: str, budget: float,
                accuracy_path: Path, latency_path: Path, store_path: Path) -> BudgetJob:
    """One budget of the run's device as a job; the search's records go to search/<device>-<precision>/budget-<T>ms/,
    the winner ships into export/<device>-<precision>/budget-<T>ms/."""
    return BudgetJob(checkpoint, target.name, _constraints(target, budget),
                     out_dir=config.out / "search" / label / f"budget-{budget:g}ms",
                     accuracy_predictor=accuracy_path, latency_predictor=latency_path, algorithm=config.algorithm,
                     population=config.population, generations=config.generations, top_k=config.top_k,
                     seed=config.seed, formats=tuple(config.formats), bn_batches=config.bn_batches,
                     max_int8_drop_points=config.max_int8_drop_points,
                     ship_dir=config.out / "export" / label / f"budget-{budget:g}ms", store=store_path)


def _deploy(job: BudgetJob, checkpoint: _Checkpoint, device: Any, progress: bool) -> BudgetOutcome:
    """One budget: `search_and_deploy`, as `edgenas search` runs it; a budget no arch is predicted to meet is
    reported in the run, and the other budgets go on."""
    try:
        return search_and_deploy(job, checkpoint=checkpoint.get(), device=device, progress=progress)
    except InfeasibleConstraintError as exc:
        log(f"budget {job.constraints.max_latency_ms:g} ms on {device.name}: {exc}")
        return BudgetOutcome.infeasible(job.constraints.max_latency_ms, str(exc))
