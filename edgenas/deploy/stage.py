"""The deploy stage: export the top candidates of a search exactly as they ship, measure, evaluate, pick, ship.

1. Each candidate is prepared and exported by the export code itself (`edgenas.export.subnet`: the same BN
   recalibration, calibration images, converter settings and checks as `edgenas export`), in the one format
   the device runs (`DEPLOYED_FORMATS`).
2. Its real accuracy is the supernet's subnet on the holdout split, BN recalibrated (the split the accuracy
   predictor is not judged on; the card reports the files' accuracy on the validation split).
3. The candidates' files are timed together, interleaved over one window, and judged by the one rule,
   `edgenas.devices.measurement.meets_budget`.
4. The winner is the best-predicted candidate that meets the budget and that no other candidate beats on the
   holdout images by more than noise (`pick_winner`), preferring those whose export checks passed. With
   `ship_dir`, the winner is exported in every requested format there, its measured file copied byte for byte
   (same sha256), and its card carries that measurement. Every check its files must pass (int8 verification,
   TFLite Micro, SRAM and flash) is part of choosing: a winner whose shipped files fail one is passed over with
   its reason, and the next pick among the candidates that meet the budget ships (`ship_first_passing`). Only
   when none passes does the first pick ship with its problems, and every candidate's reason with it.
5. One more round only where the measurements show the latency predictor misled the search
   (`measured_scale`): none met the budget and all measured over their predictions, or the winner uses less
   than 75 % of the budget and all measured under theirs. The search runs again with the measured correction,
   its new candidates are measured, and the winner is picked among all of them.

Measured latencies go into the store as whole-subnet (`arch`) measurements, which calibration reads, and
the accuracies into the evaluations table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgenas.accuracy.dataset import top1_metric
from edgenas.artifacts import sha256_file
from edgenas.deploy.mcu_deploy import finish_candidate
from edgenas.devices.measurement import Measurement, meets_budget
from edgenas.export.card import write_card
from edgenas.export.mcu import write_card_section
from edgenas.export.subnet import (
    ExportOptions,
    ExportResult,
    PreparedExport,
    deployed_format,
    export_prepared,
    measurement_entry,
    prepare_export,
)
from edgenas.export.tflite import TFLiteConversionError
from edgenas.export.verify import paired_difference, torch_logits
from edgenas.progress import Progress
from edgenas.search.loop import SearchResult
from edgenas.space import Arch


@dataclass
class MeasuredCandidate:
    """One candidate of a search after the deploy stage: predicted figures, the exported file, its
    measurement on the device, its holdout accuracy, whether it meets the budget and what checks failed."""

    arch: Arch
    predicted: dict[str, float]
    model: Path | None = None
    sha256: str | None = None
    accuracy: float | None = None
    correct: list[bool] | None = None
    measurement: Measurement | None = None
    meets_budget: bool = False
    problems: list[str] = field(default_factory=list)
    round: int = 1  # the deploy round that measured it (2: the search again after a misleading first round)

    @property
    def latency_ms(self) -> float | None:
        return self.measurement.latency_ms if self.measurement is not None and self.measurement.ok else None

    @property
    def checks_passed(self) -> bool:
        return self.model is not None and not self.problems

    def to_dict(self) -> dict[str, Any]:
        m = self.measurement
        return {"arch": self.arch.to_dict(), "predicted": self.predicted, "measured": {
            "accuracy": self.accuracy, "holdout_images": None if self.correct is None else len(self.correct),
            "holdout_correct": pack_correct(self.correct),
            "latency_ms": self.latency_ms,
            "latency_median_ms": None if m is None else m.median_ms, "timing": {} if m is None else m.timing,
            "error": None if m is None else m.error, "meets_latency": self.meets_budget,
            "model": None if self.model is None else str(self.model), "sha256": self.sha256,
            "problems": list(self.problems)}, "round": self.round}


@dataclass
class PassedOver:
    """A candidate that met the budget but whose shipped files failed a check, so the next one was tried."""

    arch: Arch
    accuracy: float | None
    latency_ms: float | None
    reasons: list[str]

    @property
    def summary(self) -> str:
        acc = "?" if self.accuracy is None else f"{100 * self.accuracy:.1f} %"
        return f"{acc} candidate: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "accuracy": self.accuracy, "latency_ms": self.latency_ms,
                "reasons": list(self.reasons), "summary": self.summary}


@dataclass
class Deployment:
    """What the deploy stage did for one search result on one device."""

    device: str
    runtime: str
    precision: str
    format: str
    budget_ms: float | None
    candidates: list[MeasuredCandidate]
    winner: MeasuredCandidate | None
    shipped: ExportResult | None = None
    latency_scale: float | None = None  # the correction a second search round used (None: one round)
    passed_over: list[PassedOver] = field(default_factory=list)  # tried before the winner, their files failed

    @property
    def problems(self) -> list[str]:
        """Failed checks of what ships (the winner's export, every format when shipped); when nothing passed,
        every other candidate's reason too."""
        if self.shipped is not None:
            if self.shipped.ok:
                return []
            others = [p.summary for p in self.passed_over if p.arch != (self.winner.arch if self.winner else None)]
            return list(self.shipped.problems) + [f"also failed: {o}" for o in others]
        return list(self.winner.problems) if self.winner is not None else []

    @property
    def choice_note(self) -> str:
        """What the choice passed over, in one line ("" when the first pick shipped)."""
        if not self.passed_over or self.winner is None:
            return ""
        if self.shipped is not None and not self.shipped.ok:
            return "no candidate passed every check: " + "; ".join(p.summary for p in self.passed_over)
        acc = "?" if self.winner.accuracy is None else f"{100 * self.winner.accuracy:.1f} %"
        return "; ".join(p.summary for p in self.passed_over) + f"; shipped the {acc} one"

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "runtime": self.runtime, "precision": self.precision, "format": self.format,
                "budget_ms": self.budget_ms, "latency_scale": self.latency_scale,
                "winner": self.winner.to_dict() if self.winner else None,
                "candidates": [c.to_dict() for c in self.candidates],
                "shipped": None if self.shipped is None else str(self.shipped.out_dir), "problems": self.problems,
                "passed_over": [p.to_dict() for p in self.passed_over], "choice_note": self.choice_note}


def pack_correct(correct: list[bool] | None) -> str | None:
    """Per-image holdout results as hex (8 images a byte), as results files keep them; None stays None."""
    if correct is None:
        return None
    return bytes(int("".join("1" if c else "0" for c in correct[i:i + 8]).ljust(8, "0"), 2)
                 for i in range(0, len(correct), 8)).hex()


def unpack_correct(text: str | None, images: int | None) -> list[bool] | None:
    """`pack_correct`'s inverse, for `images` images."""
    if text is None or images is None:
        return None
    bits = "".join(f"{b:08b}" for b in bytes.fromhex(text))
    return [c == "1" for c in bits[:images]]


def pick_order(candidates: list[MeasuredCandidate]) -> list[MeasuredCandidate]:
    """The order `pick_winner` reads the candidates in: the search's order for one round; with a second round,
    by predicted accuracy across both (stable: the measuring order on ties)."""
    if all(c.round == 1 for c in candidates):
        return list(candidates)
    return sorted(candidates, key=lambda c: -c.predicted.get("accuracy", 0.0))


#: How many paired standard errors a holdout accuracy advantage must exceed to count as real (about 95 %).
SIGNIFICANT_Z = 2.0


def accuracy_advantage(better: MeasuredCandidate, worse: MeasuredCandidate) -> tuple[float, float] | None:
    """`better`'s holdout accuracy minus `worse`'s and the standard error of that difference, from the two
    candidates' per-image results on the same images (paired: only the images on which they disagree carry
    information). None when either lacks per-image results."""
    a, b = better.correct, worse.correct
    if a is None or b is None or len(a) != len(b) or not a:
        return None
    only_better = sum(1 for x, y in zip(a, b) if x and not y)
    only_worse = sum(1 for x, y in zip(a, b) if y and not x)
    return paired_difference(only_better, only_worse, len(a))


def significantly_more_accurate(better: MeasuredCandidate, worse: MeasuredCandidate,
                                z: float = SIGNIFICANT_Z) -> bool:
    """Whether `better`'s holdout accuracy exceeds `worse`'s by more than `z` paired standard errors (by any
    amount when per-image results are missing)."""
    paired = accuracy_advantage(better, worse)
    if paired is None:
        return _accuracy(better) > _accuracy(worse)
    diff, se = paired
    return diff > z * se


def _accuracy(c: MeasuredCandidate) -> float:
    return c.accuracy if c.accuracy is not None else -1.0


def pick_winner(candidates: list[MeasuredCandidate], z: float = SIGNIFICANT_Z) -> MeasuredCandidate | None:
    """The winner among the candidates that meet the budget when measured (None when none does), preferring
    those whose export checks passed: the best-predicted (earliest) candidate that no other is significantly
    more accurate than on the holdout images (`significantly_more_accurate`). A holdout of a few hundred images
    cannot tell apart subnets a point apart, and letting its noise decide ships smaller models than the budget
    allows; a real advantage, measured on enough images, still wins."""
    meeting = [c for c in candidates if c.meets_budget]
    if not meeting:
        return None
    pool = [c for c in meeting if c.checks_passed] or meeting
    best = max(pool, key=lambda c: (_accuracy(c), -candidates.index(c)))
    return next(c for c in pool if not significantly_more_accurate(best, c, z))


#: A winner that uses less than this share of its budget is worth a second search when the predictor was off.
FILL_TARGET = 0.75
#: Candidates count as mispredicted when every one measured off its prediction by more than this (relative).
MISPREDICTED = 0.05


def measured_scale(candidates: list[MeasuredCandidate], winner: MeasuredCandidate | None,
                   budget: float | None) -> float | None:
    """The factor (measured / predicted latency) to search this budget again with, or None when the first round
    did its job. A second round is what a measurement shows is needed, in two cases only: no candidate met the
    budget and every one measured over its prediction (the largest ratio: search tighter), or the winner uses
    less than `FILL_TARGET` of the budget and every candidate measured under its prediction (the median ratio:
    search larger). Candidates that scatter around their predictions change nothing."""
    if budget is None:
        return None
    ratios = sorted(c.latency_ms / c.predicted["latency_ms"] for c in candidates
                    if c.latency_ms is not None and c.predicted.get("latency_ms"))
    if len(ratios) < 2:
        return None
    if winner is None and ratios[0] > 1.0 + MISPREDICTED:
        return ratios[-1]
    if (winner is not None and winner.latency_ms is not None and winner.latency_ms < FILL_TARGET * budget
            and ratios[-1] < 1.0 - MISPREDICTED):
        return ratios[len(ratios) // 2]
    return None


def deploy(
    result: SearchResult,
    checkpoint: Any,
    device: Any,
    *,
    out_dir: str | os.PathLike,
    precision: str,
    options: ExportOptions | None = None,
    top_k: int | None = None,
    split: str = "holdout",
    store: Any | None = None,
    search: Mapping[str, Any] | None = None,
    ship_dir: str | os.PathLike | None = None,
    search_again: Callable[[float], SearchResult | None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    mcu: Any = None,
    accuracy_prediction: Callable[[Arch], dict[str, Any]] | None = None,
) -> Deployment:
    """Export, evaluate and measure the top `top_k` candidates of `result` (all of `result.top` by default) on
    `device` at `precision`, pick the winner (`pick_winner`) against `result`'s latency limit, and, with
    `ship_dir`, export the winner there in every format of `options`, its measured file kept.

    With `search_again` (the same search with predicted latencies multiplied by a factor), a first round that
    measurement shows was misled by the latency predictor (`measured_scale`) is followed by one more: the new
    search's candidates are exported and measured too, and the winner is picked among all of them, in order of
    predicted accuracy.

    `checkpoint` is an `OpenedCheckpoint` (info, supernet, dataset()); `store` (an open `Store`) receives
    the measurements and accuracies; `search` is the saved search result's JSON (`load_search_result`),
    recorded in each card's lineage. Candidates go to `out_dir/candidate-<i>/`. `mcu` (a `deploy.mcu.McuTarget`):
    each candidate's measured and shipped file is its int8 file with the patch schedule the search judged it on,
    held to the SRAM limit by its TFLite Micro arena; the winner ships with the board's files."""
    options = options or ExportOptions()
    fmt = deployed_format(device.runtime, precision)
    budget = result.constraints.max_latency_ms
    round_ = _Round(checkpoint, device, precision, fmt, budget, replace(options, formats=(fmt,)), split, store,
                    Path(out_dir), progress, log)
    round_.mcu = mcu
    round_.accuracy_prediction = accuracy_prediction
    round_.add(result, result.top[: top_k or len(result.top)], search)
    winner = pick_winner(pick_order(round_.candidates))
    scale = measured_scale(round_.candidates, winner, budget) if search_again is not None else None
    again = None
    if scale is not None and search_again is not None:
        log(f"deploy: the candidates measured {scale:.2f}x their predicted latency on {device.name}; "
            f"searching {budget:g} ms again with that correction")
        again = search_again(scale)
    if again is not None:
        seen = {c.arch for c in round_.candidates}
        fresh = [c for c in again.top if c.arch not in seen][: top_k or len(again.top)]
        if fresh:
            round_.add(again, fresh, search, round_number=2)
            winner = pick_winner(pick_order(round_.candidates))  # the list stays in measuring order
    deployment = Deployment(device.name, device.runtime, precision, fmt, budget, round_.candidates, winner,
                            latency_scale=scale if again is not None else None)
    if winner is not None and ship_dir is not None:
        formats = options.formats if fmt in options.formats else (*options.formats, fmt)  # the measured file ships
        deployment.winner, deployment.shipped, deployment.passed_over = ship_first_passing(
            round_, pick_order(round_.candidates), Path(ship_dir), replace(options, formats=formats))
    return deployment


def ship_first_passing(round_: _Round, ordered: list[MeasuredCandidate], ship_dir: Path,
                       options: ExportOptions) -> tuple[MeasuredCandidate, ExportResult, list[PassedOver]]:
    """Ship `pick_winner`'s choice among `ordered` into `ship_dir` in every format of `options`; when its files fail
    a check, pass it over (its reasons recorded) and ship the next pick among the rest, until one passes. When none
    passes, the first pick ships with its problems. Returns (winner, its shipped export, the passed-over ones)."""
    remaining = list(ordered)
    passed_over: list[PassedOver] = []
    first = winner = pick_winner(remaining)
    assert first is not None
    while winner is not None:
        shipped = round_.ship(winner, ship_dir, options)
        if shipped.ok:
            if passed_over:  # the card says what was passed over, and why
                shipped.card["passed_over"] = [p.to_dict() for p in passed_over]
            _add_accuracy_prediction(round_, shipped.card, winner.arch)
            write_shipped_card(ship_dir, shipped.card)  # once, after the pick
            return winner, shipped, passed_over
        passed_over.append(PassedOver(winner.arch, winner.accuracy, winner.latency_ms,
                                      list(shipped.reasons or shipped.problems)))
        round_.log(f"deploy: passed over the {passed_over[-1].summary}")
        remaining.remove(winner)
        winner = pick_winner(remaining)
    if len(passed_over) > 1:  # the later tries wrote over the first pick's files: ship it again, as it was
        shipped = round_.ship(first, ship_dir, options)
    shipped.card["passed_over"] = [p.to_dict() for p in passed_over]
    _add_accuracy_prediction(round_, shipped.card, first.arch)
    write_shipped_card(ship_dir, shipped.card)
    return first, shipped, passed_over


def _add_accuracy_prediction(round_: _Round, card: dict[str, Any], arch: Arch) -> None:
    """The card's `accuracy_prediction` (how sure the choice was), where the caller gave the predictor's view."""
    if round_.accuracy_prediction is not None:
        card["accuracy_prediction"] = round_.accuracy_prediction(arch)


def write_shipped_card(out_dir: Path, card: dict[str, Any]) -> None:
    """write_card, keeping a microcontroller card's MCU section (card.md is rendered again)."""
    write_card(out_dir, card)
    if "mcu" in card:
        write_card_section(out_dir, card["mcu"])


def model_correct(model: Any, dataset: Any, split: str, resolution: int) -> list[bool]:
    """Per image of `split`, in its order, whether `model` (a prepared export: the subnet with its BatchNorm
    statistics re-estimated, as `evaluate_correct` re-estimates them in the supernet) classifies it right: the
    model that ships, evaluated once, not the supernet recalibrated a second time."""
    correct: list[bool] = []
    with torch.no_grad():  # batch by batch: a large holdout split is never held in memory at once
        for x, y in dataset.loader(split, batch_size=256, resolution=resolution):
            images = np.ascontiguousarray(x.numpy(), dtype=np.float32)
            correct.extend(bool(v) for v in (torch_logits(model, images).argmax(1) == y.numpy()))
    return correct


class _Round:
    """The deploy stage's candidates so far: each exported, evaluated and measured, with what shipping needs."""

    def __init__(self, checkpoint: Any, device: Any, precision: str, fmt: str, budget: float | None,
                 options: ExportOptions, split: str, store: Any | None, out_dir: Path, progress: bool,
                 log: Callable[[str], None]) -> None:
        self.checkpoint, self.device, self.precision, self.fmt, self.budget = checkpoint, device, precision, fmt, budget
        self.options, self.split, self.store, self.out_dir, self.progress, self.log = (
            options, split, store, out_dir, progress, log)
        self.candidates: list[MeasuredCandidate] = []
        self.exports: dict[int, tuple[PreparedExport, ExportResult | None]] = {}
        self.mcu: Any = None  # a deploy.mcu.McuTarget: candidates are the files judged on the board
        self.accuracy_prediction: Callable[[Arch], dict[str, Any]] | None = None  # the card's, for the shipped arch
        self.schedules: dict[int, tuple[int, int] | None] = {}

    def ship(self, cand: MeasuredCandidate, ship_dir: Path, options: ExportOptions) -> ExportResult:
        """Export `cand` into `ship_dir` in every format of `options`, its measured file copied byte for byte."""
        prep, kept = self.exports[id(cand)]
        entry = measurement_entry(self.device.name, cand.model, cand.measurement)
        shipped = export_prepared(prep, ship_dir, space=self.checkpoint.supernet.space, options=options, kept=kept,
                                  measured=[entry], raise_on_problems=False, log=self.log, write_card_now=False)
        judged = shipped.card["latency"].get("judged_on")
        if judged is not None:  # the budget this file was judged against, and the verdict
            judged.update(budget_ms=self.budget, meets_budget=cand.meets_budget)
        if self.mcu is not None and "tflite-int8" in shipped.files:
            self._ship_mcu(cand, ship_dir, shipped)
        return shipped

    def _ship_mcu(self, cand: MeasuredCandidate, ship_dir: Path, shipped: ExportResult) -> None:
        """The board's file beside the shipped int8 file: the same schedule, so the measured bytes (checked by
        SHA-256), with the board's C files and the card's MCU section."""
        path, summary, problems = finish_candidate(self.mcu, ship_dir, shipped, self.checkpoint.supernet.space,
                                                   cand.arch, self.schedules.get(id(cand)), board=True)
        summary["sha256"] = sha256_file(path) if path.is_file() else None
        if summary["sha256"] != cand.sha256:
            problems.append(f"{path.name} is not the measured file {cand.model} (SHA-256 differs)")
        for line in problems:
            self.log(f"deploy: {line}")
        shipped.problems.extend(problems)
        shipped.reasons.extend(problems)
        shipped.card["mcu"] = summary
        if problems:
            shipped.card["problems"] = list(shipped.problems)

    def _candidate_mcu(self, cand: MeasuredCandidate, export: ExportResult, result: SearchResult, i: int) -> None:
        schedule = self.mcu.schedule(cand.arch, result.config)
        self.schedules[id(cand)] = schedule
        cand.model, summary, problems = finish_candidate(self.mcu, self.out_dir / f"candidate-{i}", export,
                                                         self.checkpoint.supernet.space, cand.arch, schedule)
        arena = summary.get("measured_arena_bytes")
        self.log(f"deploy: candidate {i} {cand.model.name}: TFLite Micro arena "
                 + ("?" if arena is None else f"{arena / 1024:.1f} KiB")
                 + ("" if schedule is None else f" ({schedule[1]}x{schedule[1]} patches over {schedule[0]} ops)"))
        cand.problems.extend(problems)

    def add(self, result: SearchResult, chosen: list[Any], search: Mapping[str, Any] | None,
            round_number: int = 1) -> None:
        """Export and evaluate `chosen` (candidates of `result`), then time them together on the device."""
        supernet, dataset, info = self.checkpoint.supernet, self.checkpoint.dataset(), self.checkpoint.info
        lineage = {"algorithm": result.algorithm, "device": result.device, "constraints": result.constraints.to_dict(),
                   "config": result.config, **dict(search or {})}
        added: list[MeasuredCandidate] = []
        with Progress(len(chosen), f"export and evaluate top {len(chosen)}", unit="arch",
                      enabled=self.progress) as bar:
            for found in chosen:
                i = len(self.candidates)
                cand = MeasuredCandidate(found.arch, dict(found.predicted), round=round_number)
                prep = prepare_export(supernet, found.arch, dataset, options=self.options, info=info,
                                      search={**lineage, "best": {"predicted": found.predicted}}, log=self.log)
                try:
                    export = export_prepared(prep, self.out_dir / f"candidate-{i}", space=supernet.space,
                                             options=self.options, raise_on_problems=False, log=self.log)
                    cand.model, cand.problems = export.files[self.fmt], list(export.problems)
                    if self.mcu is not None:  # the file the search judged: patch-based where that is what fits
                        self._candidate_mcu(cand, export, result, i)
                    cand.sha256 = sha256_file(cand.model)
                except TFLiteConversionError as exc:  # this arch does not convert: the others still compete
                    export = None
                    cand.problems = [str(exc)]
                # the holdout images the files were checked on are the split's, in its order, where the split fits
                # the check (`verification_images`): their kept logits give the same answers, computed once
                whole = self.split == "holdout" and prep.holdout_images is not None \
                    and len(prep.holdout_images) == dataset.size(self.split)
                cand.correct = (prep.holdout_correct() if whole else None) or \
                    model_correct(prep.model, dataset, self.split, found.arch.resolution)
                cand.accuracy = sum(cand.correct) / len(cand.correct) if cand.correct else 0.0
                if self.store is not None:
                    self.store.add_evaluation(supernet_sha256=info["sha256"], dataset=dataset.fingerprint,
                                              split=self.split, arch=found.arch,
                                              metric=top1_metric(self.options.bn_batches), value=cand.accuracy,
                                              extra={"source": "deploy"})
                self.candidates.append(cand)
                added.append(cand)
                self.exports[id(cand)] = (prep, export)
                bar.update(1, top1=cand.accuracy)
        exported = [c for c in added if c.model is not None]
        if exported:
            for cand, m in zip(exported, self.device.measure([str(c.model) for c in exported])):
                cand.measurement = m
                cand.meets_budget = meets_budget(m.latency_ms if m.ok else None, self.budget)
                if self.store is not None:  # the candidates' figures feed calibration
                    self.store.add_measurement(m, model_kind="arch", model_description=cand.arch.to_json(),
                                               device=self.device.name, runtime=self.device.runtime,
                                               precision=self.precision)
