"""One budget searched and deployed: `search_and_deploy(BudgetJob) -> BudgetOutcome`, the one function behind
`edgenas search` (`search_device`, per device) and `edgenas run` (one `deploy:` stage per budget).

The job is data: its fields decide the outcome, so the run's stage-book key is derived from them (`BudgetJob.key`),
and the outcome is what the stage book keeps (`BudgetOutcome.to_dict` / `from_dict`). The search runs before torch
is imported or the supernet loaded, so an impossible constraint is reported within a second or two; the deploy
stage (export, measure, evaluate, pick by the one rule, ship) comes after.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgenas.accuracy.fit import default_store_path
from edgenas.accuracy.predictor import load_accuracy_predictor
from edgenas.artifacts import sha256_file, undefined_as_null
from edgenas.board import load_board
from edgenas.deploy.mcu_deploy import McuTarget
from edgenas.deploy.search_report import plot_front, save_result
from edgenas.deploy.stage import Deployment, deploy, pack_correct
from edgenas.devices import device_from_config
from edgenas.devices.device_files import DeviceConfig
from edgenas.devices.device_files import load_config as load_device_config
from edgenas.errors import UsageError
from edgenas.export.subnet import ExportOptions, load_search_result
from edgenas.latency import load_latency_predictor
from edgenas.micro_memory import ships_normalised
from edgenas.search.budget_candidates import SEARCH_MARGINS, search_for_budget
from edgenas.search.loop import SearchResult
from edgenas.search.problem import Constraints
from edgenas.search.search_settings import DEFAULT_POPULATION, DEFAULT_TOP_K
from edgenas.store import Store
from edgenas.train.checkpoint import OpenedCheckpoint

DEFAULT_FORMATS = ("onnx", "tflite", "tflite-int8")

# What else decides a deploy's outcome, beside the job's fields: the search's margins, how candidates are timed and
# which checks the shipped files pass. A change here re-runs every deploy stage of a run.
DEPLOY_POLICY = {"margins": SEARCH_MARGINS, "timing": "interleaved",
                 "checks": "every shipped file, paired int8 drop on val+holdout"}


def _file(**kw: Any) -> Any:
    """A field naming an input file: the stage key holds the file's SHA-256, not its path."""
    return field(metadata={"key": "sha256"}, **kw)


def _place(**kw: Any) -> Any:
    """A field saying where outputs go (or the store they are recorded in): not part of the stage key."""
    return field(metadata={"key": None}, **kw)


@dataclass(frozen=True)
class BudgetJob:
    """One budget to search and deploy on one device, and every setting that decides the outcome."""

    checkpoint: Path = _file()
    device: str = field(metadata={"key": "device"})  # a device name or file; keyed by the device's description
    constraints: Constraints = field(default_factory=Constraints)  # precision: the latency predictor's, if it has one
    out_dir: Path = _place(default=Path("search"))  # the search's record(s), its plot, candidates in out_dir/models
    accuracy_predictor: Path | None = _file(default=None)  # default: the one beside the checkpoint
    latency_predictor: Path | None = _file(default=None)  # default: the device's calibrated one
    algorithm: str = "evolution"
    population: int = DEFAULT_POPULATION  # the defaults: edgenas.search.search_settings, one per setting for every door
    generations: int | None = None  # None: the algorithm's default
    top_k: int = DEFAULT_TOP_K
    seed: int = 0
    formats: tuple[str, ...] = DEFAULT_FORMATS  # what the winner ships in (candidates: the deployed format only)
    bn_batches: int = 8
    max_int8_drop_points: float | None = None  # None: the export's default
    deploy_top: bool = True  # False: search only (`edgenas search --no-verify`, a Pareto front)
    ship_dir: Path | None = _place(default=None)  # where the winner ships in every format; None: not shipped
    store: Path | None = _place(default=None)  # the measurement store; None: the default one
    # "auto" or N: archs missing the SRAM limit are judged patch-based (issue 44); keyed only when set
    patches: str | int | None = field(default=None, metadata={"key": "if_set"})
    int8_io: bool = field(default=False, metadata={"key": "if_set"})  # memory of the int8-I/O file (a board's)
    board: str | None = field(default=None, metadata={"key": "if_set"})  # a board preset or TOML: its C files ship

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(constraints=self.constraints.to_dict(), formats=list(self.formats))
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BudgetJob:
        paths = {f.name for f in fields(cls) if "Path" in str(f.type)}
        values = {k: Path(v) if k in paths and v is not None else v for k, v in d.items()}
        return cls(**{**values, "constraints": Constraints.from_dict(d.get("constraints") or {}),
                      "formats": tuple(d.get("formats") or DEFAULT_FORMATS)})

    def key(self, device_description: dict[str, Any]) -> dict[str, Any]:
        """The stage-book key: every field that decides the outcome (input files by their SHA-256, the device by its
        description), and the deploy policy; not where the outputs go."""
        d = self.to_dict()
        key: dict[str, Any] = {}
        for f in fields(self):
            how = f.metadata.get("key", "value")
            if how == "sha256":
                key[f.name] = None if d[f.name] is None else sha256_file(d[f.name])
            elif how == "device":
                key[f.name] = device_description
            elif how == "value" or (how == "if_set" and d[f.name] not in (None, False)):
                key[f.name] = d[f.name]
        return {**key, **DEPLOY_POLICY}


@dataclass
class BudgetOutcome:
    """What one budget's search and deploy gave: the winner as shipped, every candidate as measured, the records
    written. `to_dict` is the stage book's entry; `search` and `deployment` are the objects, in memory only."""

    budget_ms: float | None = None
    arch: dict[str, Any] | None = None  # the winner (None: infeasible, or no candidate met the budget)
    note: str = ""  # why there is no winner
    result: str | None = None  # the search's record (search-result.json; `edgenas run`'s cards name it)
    deployed_result: str | None = None  # the measured record beside it, when the winner ships
    plot: str | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    predicted_accuracy: float | None = None
    predicted_latency_ms: float | None = None
    measured_latency_ms: float | None = None
    meets_budget: bool | None = None  # the one rule's verdict on the winner's measured file (None: nothing measured)
    accuracy: float | None = None  # the shipped file's holdout accuracy
    export_dir: str | None = None
    card: str | None = None
    deployed_file: str | None = None
    sha256: str | None = None
    problems: list[str] = field(default_factory=list)  # failed checks of what ships
    passed_over: list[dict[str, Any]] = field(default_factory=list)
    choice: str = ""  # candidates passed over, and what shipped instead
    search: SearchResult | None = field(default=None, repr=False, compare=False, metadata={"saved": False})
    deployment: Deployment | None = field(default=None, repr=False, compare=False, metadata={"saved": False})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("saved", True)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BudgetOutcome:
        saved = {f.name for f in fields(cls) if f.metadata.get("saved", True)}
        return cls(**{k: v for k, v in d.items() if k in saved})

    @classmethod
    def infeasible(cls, budget_ms: float | None, why: str) -> BudgetOutcome:
        return cls(budget_ms, note=why)


def deploy_options(constraints: Constraints, *, formats: tuple[str, ...] = DEFAULT_FORMATS,
                   seed: int = 0, bn_batches: int = 8, max_drop_points: float | None = None,
                   patches: int | str | None = None, int8_io: bool = False) -> Any:
    """The export options candidates are exported and shipped with, from the search's constraints: the same for
    `edgenas search` and `edgenas run`, so a candidate is measured as it would ship. With `patches`, the whole-map
    int8 file is not held to the SRAM limit (its patch-based file is, `deploy.mcu.finish_candidate`)."""
    kb = {name: None if value is None else value / 1024 for name, value in
          (("target_sram_kb", constraints.max_sram_bytes), ("target_flash_kb", constraints.max_flash_bytes))}
    extra: dict[str, Any] = {} if max_drop_points is None else {"max_drop_points": max_drop_points}
    if patches is not None:
        kb["target_sram_kb"] = None
    if int8_io or patches is not None:
        extra["int8_io"] = True
    return ExportOptions(formats=formats, bn_batches=bn_batches, seed=seed, **kb, **extra)


def load_predictors(checkpoint: Path, device_name: str, *, accuracy_predictor: str | os.PathLike | None = None,
                    latency_predictor: str | os.PathLike | None = None,
                    device_id: str | None = None) -> tuple[Any, Any]:
    """The accuracy predictor (default: beside the checkpoint) and the device's latency predictor (default: its
    calibrated one; a file made for another device is refused). `device_id` is the device file's `name` where the
    caller has read it (else it is read here)."""
    acc = load_accuracy_predictor(accuracy_predictor or checkpoint.parent)
    device_id = device_id or load_device_config(device_name).name
    lat = load_latency_predictor(latency_predictor or device_name, space=acc.space,
                                 device=device_id if latency_predictor else None)
    return acc, lat


def search_and_deploy(job: BudgetJob, *, checkpoint: Any = None, device: Any = None,
                      progress: bool = True) -> BudgetOutcome:
    """Search `job`'s budget (`search_for_budget`: the budget and its margins) and, unless `job.deploy_top` is
    False, deploy the top candidates on the device (`deploy.stage.deploy`: export as shipped, measure, evaluate,
    pick by the one rule; a second round when the predictor misled the first), shipping the winner into
    `job.ship_dir` when set. An impossible budget raises InfeasibleConstraintError (a UsageError).

    `checkpoint` (an `OpenedCheckpoint`) and `device` (an open Device) are the caller's when it has them open
    already; else they are opened here. When the winner ships, the search's record is written before deploying
    (the cards name it by its SHA-256) and the measured record beside it; else one record holds both."""
    if not job.checkpoint.is_file():
        raise UsageError(f"supernet checkpoint {job.checkpoint} does not exist: train one with 'edgenas train'")
    described = device.config if device is not None else load_device_config(job.device)  # the device file, read once
    acc, lat = load_predictors(job.checkpoint, job.device, accuracy_predictor=job.accuracy_predictor,
                               latency_predictor=job.latency_predictor, device_id=described.name)
    constraints = job.constraints
    precision = getattr(lat, "precision", None) or constraints.precision
    if job.patches is not None or job.int8_io:  # a board runs int8 TFLite Micro files
        precision = "int8"
    if constraints.precision != precision and precision in ("int8", "fp32"):
        constraints = Constraints(**{**constraints.to_dict(), "precision": precision})
    settings = dict(algorithm=job.algorithm, population=job.population, generations=job.generations, seed=job.seed,
                    top_k=job.top_k, device=described.name, patches=job.patches, int8_io=job.int8_io,
                    normalised_input=ships_normalised(acc.space))  # the deploy stage checks it against the files
    space = acc.space.common_resolutions(lat.space) or acc.space  # the resolutions both predictors know
    result = search_for_budget(space, acc, lat, constraints, **settings)
    inputs: dict[str, Any] = {"supernet": str(job.checkpoint), "accuracy_predictor": acc.info.get("path") or str(
        job.accuracy_predictor or job.checkpoint.parent / "accuracy_predictor.npz")}
    if getattr(lat, "path", None):
        inputs["latency_predictor"] = str(lat.path)
    record = job.out_dir / "search-result.json"
    if not job.deploy_top:
        save_result(result, record, inputs=inputs, seed=job.seed)
        plot = plot_front(result, job.out_dir / "pareto.png")
        return BudgetOutcome(constraints.max_latency_ms, result=str(record), plot=str(plot), search=result)

    def search_again(scale: float) -> SearchResult | None:
        try:
            return search_for_budget(space, acc, lat, constraints, latency_scale=scale, **settings)
        except UsageError:  # nothing is predicted to meet the corrected budget: the first round stands
            return None

    lineage = None
    if job.ship_dir is not None:
        lineage = load_search_result(str(save_result(result, record, seed=job.seed, inputs=inputs)))
    mcu = _mcu_target(job, constraints, described.runtime, settings["normalised_input"])
    formats = job.formats if mcu is None or "tflite-int8" in job.formats else (*job.formats, "tflite-int8")
    options = deploy_options(constraints, formats=formats, seed=job.seed, bn_batches=job.bn_batches,
                             max_drop_points=job.max_int8_drop_points, patches=job.patches, int8_io=job.int8_io)
    done = _deploy(job, result, checkpoint, device if device is not None else described, precision, options, lineage,
                   search_again, progress, mcu, lambda arch: _accuracy_prediction(acc, arch))
    if job.ship_dir is not None:  # the search's own record stays as the cards name it; the measured side beside it
        deployed = save_result(result, job.out_dir / "deployed-result.json", verification=done, seed=job.seed,
                               inputs={**inputs, "search_result": str(record)})
    else:
        deployed = None
        save_result(result, record, verification=done, inputs=inputs, seed=job.seed)
    plot = plot_front(result, job.out_dir / "pareto.png", verification=done)
    return _outcome(result, done, record, deployed, plot)


def _accuracy_prediction(acc: Any, arch: Any) -> dict[str, Any]:
    """The card's `accuracy_prediction` (how sure the choice was): the predictor's top-1 for the winner with its 95 %
    interval where the predictor gives one (a GP's; None for an MLP), the predictor's own figures on subnets it never
    saw, and the regret where the run measured it (None: `tools/bench/regret.py` measures it after a run)."""
    interval = None
    if callable(getattr(acc, "interval", None)):
        lo, hi = acc.interval([arch])
        interval = [float(lo[0]), float(hi[0])]
    return undefined_as_null({
        "predicted_top1": float(acc.predict([arch])[0]), "interval_95": interval,
        "predictor": acc.info.get("kind", "mlp"), "predictor_test": acc.info.get("test"), "regret_points": None})


def _mcu_target(job: BudgetJob, constraints: Constraints, runtime: str, normalised_input: bool = False) -> Any:
    """The microcontroller side of the deploy stage (None: not a board's search)."""
    if job.patches is None and not job.int8_io and job.board is None:
        return None
    if runtime != "tflite":
        raise UsageError(f"--patches / --board deploy int8 TFLite files, but device {job.device} runs {runtime}: "
                         "give a tflite device (a board, or local-tflite), or add --no-verify")
    try:
        board = load_board(job.board) if job.board else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return McuTarget(job.patches, board, constraints.max_sram_bytes, constraints.max_flash_bytes,
                     normalised_input=normalised_input)


def _deploy(job: BudgetJob, result: SearchResult, checkpoint: Any, device: Any, precision: str, options: Any,
            lineage: dict[str, Any] | None, search_again: Any, progress: bool, mcu: Any = None,
            accuracy_prediction: Any = None) -> Deployment:
    """The deploy stage on the device (an open Device, or its description, opened here), opening the checkpoint and
    the store where not given."""
    with contextlib.ExitStack() as stack:
        if isinstance(device, DeviceConfig):
            device = stack.enter_context(device_from_config(device))
        store = stack.enter_context(Store(job.store or default_store_path()))
        return deploy(result, checkpoint or OpenedCheckpoint(job.checkpoint), device, out_dir=job.out_dir / "models",
                      precision=precision, options=options, top_k=job.top_k, store=store, search=lineage,
                      ship_dir=job.ship_dir, search_again=search_again, progress=progress,
                      log=lambda line: print(line, file=sys.stderr, flush=True), mcu=mcu,
                      accuracy_prediction=accuracy_prediction)


def _outcome(result: SearchResult, done: Deployment, record: Path, deployed: Path | None,
             plot: Path) -> BudgetOutcome:
    """The outcome of a deployed budget, built once from the deployment (its budget: the one the files were judged
    against, `done.budget_ms`)."""
    budget = done.budget_ms
    candidates = [{"arch": c.arch.to_dict(), "latency_ms": c.latency_ms, "accuracy": c.accuracy,
                   "model": None if c.model is None else str(c.model), "sha256": c.sha256,
                   "meets_budget": c.meets_budget, "problems": c.problems, "round": c.round,
                   "predicted_accuracy": c.predicted.get("accuracy"), "holdout_images": len(c.correct or []),
                   "holdout_correct": pack_correct(c.correct)} for c in done.candidates]
    common = dict(result=str(record), deployed_result=None if deployed is None else str(deployed), plot=str(plot),
                  candidates=candidates, search=result, deployment=done)
    winner = done.winner
    if winner is None:
        where = f"{budget:g} ms" if budget is not None else "the budget"
        return BudgetOutcome(budget, note=f"none of the {len(candidates)} candidates met {where} when measured on "
                             f"{done.device}; re-run with a larger budget or more calibration measurements", **common)
    outcome = BudgetOutcome(budget, arch=winner.arch.to_dict(), predicted_accuracy=winner.predicted.get("accuracy"),
                            predicted_latency_ms=winner.predicted.get("latency_ms"),
                            measured_latency_ms=winner.latency_ms, meets_budget=winner.meets_budget,
                            sha256=winner.sha256, problems=done.problems,
                            passed_over=[p.to_dict() for p in done.passed_over], choice=done.choice_note, **common)
    shipped = done.shipped
    if shipped is not None:
        file_accuracy = {c.format: c.accuracy for c in shipped.checks}
        outcome.export_dir, outcome.card = str(shipped.out_dir), str(shipped.out_dir / "card.json")
        outcome.deployed_file = shipped.files[done.format].name
        if "mcu" in shipped.card:  # a board's file: patch-based where the search judged it so
            outcome.deployed_file = Path(shipped.card["mcu"]["file"]).name
        outcome.accuracy = file_accuracy.get(done.format, shipped.card["accuracy"]["pytorch"])
    return outcome


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


def search_device(checkpoint: str | os.PathLike, device_name: str, constraints: Constraints, *,
                  out_dir: str | os.PathLike | None = None, progress: bool = True, device: Any = None,
                  **settings: Any) -> DeviceSearch:
    """`edgenas search` for one device: `search_and_deploy` of one job (`settings`: BudgetJob's fields), its
    records in `out_dir` (default: `<checkpoint folder>/search/<device>`); `device`: the device, when the caller
    has it open already."""
    checkpoint = Path(checkpoint)
    out = Path(out_dir) if out_dir else checkpoint.parent / "search" / device_name
    paths = {k: None if settings.get(k) is None else Path(settings[k])
             for k in ("accuracy_predictor", "latency_predictor", "store")}
    job = BudgetJob(checkpoint, device_name, constraints, out, **{**settings, **paths})
    done = search_and_deploy(job, device=device, progress=progress)
    assert done.search is not None and done.result is not None and done.plot is not None
    return DeviceSearch(done.search, done.deployment, Path(done.result), Path(done.plot))
