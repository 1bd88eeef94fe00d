"""Calibration: measure a device's latency table and whole subnets, fit its predictor, resumably.

`calibrate(device, space, budget=..., store=...)`:

1. exports every distinct piece of the space (cached by content) and measures those the store does
   not hold yet, then writes the table `latency_tables/<device>/<runtime>-<precision>.json`;
2. measures up to `budget` whole subnets: 70 % stratified over the table's predicted latency range
   (one per quantile bin of a large random pool, plus the smallest and largest subnet), then, round
   by round, those the predictor is least sure of (largest bootstrap spread);
3. fits the calibrated predictor and writes it with a manifest beside the table.

Every measurement is committed to the store as it arrives, and every choice is a function of the
seed and of stored figures, so a run killed at any point and started again measures only what it
had not measured, and makes the same choices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.cost import arch_stats, stats_table
from edgenas.errors import UsageError
from edgenas.latency.blocks import ANALYTIC_FEATURES, block_index
from edgenas.latency.predictors import (
    BasePredictor,
    CalibratedPredictor,
    TablePredictor,
    TransferPredictor,
    WholeModelPredictor,
    load_predictor_file,
)
from edgenas.latency.table import LatencyTable, predictor_path, table_path
from edgenas.progress import Progress, WindowEta
from edgenas.space import Arch, SearchSpace
from edgenas.store import Store

POOL_SIZE = 2000
# What a model's latency is: "latency", the device's figure timed interleaved (its fast-state cost plus the
# mean stall; see edgenas.devices.agent.window_stats), which agrees with itself when timed again; or, for
# comparison, "median" or "min" of the same runs.
STATISTICS = ("latency", "median", "min")
# Models handed to the device at once; the device times them in windows of its [measure] batch_size, and
# every result is stored as it arrives.
MEASURE_CHUNK = 400
# The most megabytes of model files exported and timed at once (a chunk; see Calibrator.chunks): what the agent
# loads for one window at most (its --max-group-mb), so chunks add no window.
CHUNK_MB = 1024
# Bytes of an exported file besides its weights (graph, names, quantisation parameters), for chunk sizes.
FILE_OVERHEAD = 4096
# The most megabytes of exported model files a calibration leaves in its model cache (least recently used go
# first; their hashes stay, and the store keeps every figure, so a re-run needs none of them): the mobilenetv3
# space at 224 px left 3.1 GB before this bound. --keep-models keeps them all.
MODEL_CACHE_MB = 500
# The fewest subnets an active-learning round measures: a round costs one timing window on the device whatever
# it holds (the window spans the device's speed changes), so a 30-subnet budget takes 2 rounds, not 5 of 2.
MIN_PER_ROUND = 4


@dataclasses.dataclass
class ModelJob:
    """One model to time: what it is (kind, description) and its exported file."""

    kind: str  # "piece" or "arch"
    description: str  # piece key or arch JSON
    path: Path
    sha256: str  # "" until exported
    model: dict | None = None  # the description its file is exported from, until it is (see Calibrator.measure)
    bytes_guess: float = 0.0  # what its file will take, from its weights (see Calibrator.chunks)


@dataclasses.dataclass
class CalibrationReport:
    """What a calibration did: how many models were measured now, reused from the store, and device time."""

    measured_now: int = 0
    reused: int = 0
    failed: int = 0
    device_seconds: float = 0.0
    table_device_seconds: float = 0.0
    arch_device_seconds: float = 0.0
    table_path: str | None = None
    predictor_path: str | None = None
    models_dir: str | None = None
    models_mb: float | None = None  # what the model cache holds after the calibration

    def cache_line(self) -> str:
        """One line: what the model cache keeps, and how to clear it."""
        return (f"model cache: {self.models_mb:.0f} MB of exported files kept in {self.models_dir} (bound "
                f"{MODEL_CACHE_MB} MB unless --keep-models; the store keeps every figure, so deleting the folder "
                "loses nothing)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Calibrator:
    """Exports, measures through the store, and remembers what each figure cost; one per device setup."""

    def __init__(self, device: Any, space: SearchSpace, *, runtime: str, precision: str, store: Store,
                 cache_dir: str | Path, progress: bool = True, statistic: str = "latency",
                 cache_mb: float | None = MODEL_CACHE_MB) -> None:
        # deferred: torch loads only when this runs, not on import
        from edgenas.latency.models import ModelCache, export_format

        if statistic not in STATISTICS:
            raise UsageError(f"unknown latency statistic {statistic!r}: choose from {', '.join(STATISTICS)}")
        self.statistic = statistic
        self.device = device
        self.space = space
        self.runtime = runtime
        self.precision = precision
        self.store = store
        self.format = export_format(runtime, precision)
        self.cache = ModelCache(cache_dir)
        self.cache_mb = cache_mb  # None: keep every exported file
        self.pending: set[Path] = set()  # files exported for this calibration and not measured yet: never trimmed
        self.progress = progress
        self.report = CalibrationReport()
        self.riders: list[ModelJob] = []  # measured with the next models timed, whatever for (see `ride_along`)
        self.window_share: float | None = None  # where this device's windows ended between plan and most (ETA)
        self._one_bar: tuple[Progress, Callable[[], None]] | None = None  # set inside `one_bar`
        self.clock: Callable[[], float] = time.monotonic

    def ride_along(self, jobs: Sequence[ModelJob]) -> None:
        """Time `jobs` with the next models this calibrator times, in the same windows (mixed among them, see
        `mixed`): a window costs the same for 20 more small models, and on a device whose speed changes every window
        is a chance to wait or retime."""
        self.riders.extend(jobs)

    # -- exporting ------------------------------------------------------------------------------
    def export_pieces(self, pieces: Sequence[Any]) -> list[ModelJob]:
        # deferred: torch loads only when this runs, not on import
        from edgenas.latency.models import piece_description

        weights = [float(p.analytic_costs()[ANALYTIC_FEATURES.index("weights_mvalues")]) * 1e6 for p in pieces]
        return self._jobs("piece", [p.key for p in pieces], [piece_description(p) for p in pieces], weights)

    def export_archs(self, archs: Sequence[Arch], *, files: bool = False) -> list[ModelJob]:
        """A job per arch; `files`: every file on disk now, even of subnets the store has measured already."""
        # deferred: torch loads only when this runs, not on import
        from edgenas.latency.models import arch_description

        jobs = self._jobs("arch", [a.to_json() for a in archs], [arch_description(self.space, a) for a in archs],
                          [float(arch_stats(self.space, a).params) for a in archs], files=files)
        if files:
            self.export_now(jobs)
        return jobs

    def _jobs(self, kind: str, labels: list[str], descriptions: list[dict], weights: list[float], *,
              files: bool = False) -> list[ModelJob]:
        """Jobs for the models `descriptions` name (with `weights` values each). A model this device has a figure
        for (found by the hash its export had) needs no file, so a re-run exports only what it has still to
        measure; the others are exported when `measure` comes to them, a chunk at a time (see `chunks`)."""
        jobs = []
        per_weight = 1 if self.precision == "int8" else 4
        for label, d, w in zip(labels, descriptions, weights):
            path = self.cache.path_for(d, self.format)
            sha = "" if files else self.cache.known_sha256(d, self.format)
            if sha and self.store.measurement_for(sha, self.device.name, self.runtime, self.precision):
                jobs.append(ModelJob(kind, label, path, sha))
            else:
                jobs.append(ModelJob(kind, label, path, "", model=d, bytes_guess=w * per_weight + FILE_OVERHEAD))
        return jobs

    def export_now(self, jobs: Sequence[ModelJob]) -> None:
        """Export the files of `jobs` not exported yet (each job learns its file's hash)."""
        todo = [j for j in jobs if j.model is not None]
        if not todo:
            return
        what = {"piece": "pieces", "arch": "subnets"}.get(todo[0].kind, "models") \
            if len({j.kind for j in todo}) == 1 else "models"
        with Progress(len(todo), f"export {self.format} {what}", enabled=self.progress, unit="model") as bar:
            got = self.cache.get_many([j.model for j in todo], self.format, on_done=lambda: bar.update(1))
        for job, (path, sha) in zip(todo, got):
            job.path, job.sha256, job.model = path, sha, None
            self.pending.add(path)

    def chunks(self, todo: Sequence[ModelJob]) -> Iterator[list[ModelJob]]:
        """Consecutive chunks of `todo`, each to be exported and timed before the next is exported: at most
        MEASURE_CHUNK models and CHUNK_MB of files (as their weights tell), the cache first trimmed to its bound. So
        while measuring, the files on disk stay within the bound plus one window's files however many models a
        calibration times: exported all at once, the 150 subnets and 1,226 pieces of a 224 px calibration took
        2.1-3.3 GB. (Chunks of half the 500 MB bound cost time instead: 8 windows for 70 subnets, not 3, and on a
        busy machine each window runs to its cap whatever it holds.)"""
        start = 0
        while start < len(todo):
            self.trim_cache()
            end, used = start + 1, todo[start].bytes_guess
            while end < len(todo) and end - start < MEASURE_CHUNK and used + todo[end].bytes_guess <= CHUNK_MB * 1e6:
                used += todo[end].bytes_guess
                end += 1
            yield list(todo[start:end])
            start = end

    def trim_cache(self) -> None:
        """Hold the model cache to its bound (`cache_mb`), keeping files still to be measured."""
        if self.cache_mb is not None:
            self.cache.trim(int(self.cache_mb * 1e6), keep=self.pending)

    def finish(self) -> CalibrationReport:
        """Trim the cache and record in the report what it keeps."""
        self.trim_cache()
        self.report.models_dir = str(self.cache.root)
        self.report.models_mb = self.cache.size_bytes() / 1e6
        return self.report

    # -- measuring -------------------------------------------------------------------------------
    def measure(self, jobs: Sequence[ModelJob], desc: str) -> dict[str, Any]:
        """Stored measurement per job sha256 (measuring on the device only what the store lacks; files are
        exported a chunk at a time, see `chunks`). Every job learns its file's hash."""
        found: dict[str, Any] = {}
        todo: list[ModelJob] = []
        twins: dict[str, list[ModelJob]] = {}  # jobs for the same file: the first is exported and timed
        riders, self.riders = self.riders, []
        for job in list(jobs) + riders:
            m = None if job.model is not None else self.stored(job)
            if m is not None:
                found[job.sha256] = m
                continue
            key = job.sha256 or str(job.path)
            if key not in twins:
                twins[key] = []
                todo.append(job)
            twins[key].append(job)
        self.report.reused += len(found)
        if self._one_bar is not None:
            self._one_bar[0].update(len(jobs) - len(todo))
        if todo:
            riding = sum(1 for j in todo if j in riders)
            if riding:
                desc = f"{desc} (with {riding} held-out subnets)"
            with self._bar(len(todo), desc) as (bar, window_done):
                for chunk in self.chunks(mixed(todo)):
                    self.export_now(chunk)
                    self._time_chunk(chunk, found, bar, window_done)
                    self.trim_cache()
            for first, *others in twins.values():
                for twin in others:
                    twin.path, twin.sha256, twin.model = first.path, first.sha256, None
            for job in todo:
                m = self.stored(job)
                if m is not None:
                    found[job.sha256] = m
        rider_shas = {j.sha256 for j in riders} - {j.sha256 for j in jobs}
        return {sha: m for sha, m in found.items() if sha not in rider_shas}

    def stored(self, job: ModelJob) -> Any:
        """The store's measurement of the job's file on this device setup, or None."""
        return self.store.measurement_for(job.sha256, self.device.name, self.runtime, self.precision)

    def _time_chunk(self, chunk: list[ModelJob], found: dict[str, Any], bar: Progress,
                    window_done: Callable[[], None]) -> None:
        """Time the exported files of `chunk` on the device, each result stored as it arrives (a file the store
        knows already, exported under another description, is not timed again)."""
        by_sha: dict[str, ModelJob] = {}
        for job in chunk:
            m = self.stored(job)
            if m is not None:
                found[job.sha256] = m
                self.pending.discard(job.path)
                bar.update(1, failed=self.report.failed)
            else:
                by_sha.setdefault(job.sha256, job)
        if not by_sha:
            return
        clock = [time.monotonic()]

        def on_result(m: Any) -> None:
            now = time.monotonic()
            job = by_sha[m.model_sha256]
            record = {**m.to_dict(), "device_seconds": now - clock[0]}
            clock[0] = now
            self.store.add_measurement(record, model_kind=job.kind, model_description=job.description,
                                       device=self.device.name, runtime=self.runtime, precision=self.precision)
            self.pending.discard(job.path)
            if m.ok:
                self.report.measured_now += 1
            else:
                self.report.failed += 1
            window_done()
            bar.update(1, failed=self.report.failed)

        self.device.measure([str(j.path) for j in by_sha.values()], on_result=on_result)

    @contextlib.contextmanager
    def one_bar(self, total: int, desc: str) -> Iterator[None]:
        """Show the `measure` calls made inside as one bar of `total` models, its ETA counting the calls still to
        come at the cost per model so far (the rounds of uncertain subnets: with a bar per round of 6 subnets, each
        bar was one window, and its first tick cannot tell a window that finds fast moments, 20 s at 224 px once
        timed again, from one that waits to its cap twice, 47 s)."""
        with self._new_bar(total, desc) as shown:
            self._one_bar = shown
            try:
                yield
            finally:
                self._one_bar = None

    @contextlib.contextmanager
    def _bar(self, total: int, desc: str) -> Iterator[tuple[Progress, Callable[[], None]]]:
        """The bar a `measure` call shows, with what to call on each result: `one_bar`'s inside it, else its own."""
        if self._one_bar is not None:
            yield self._one_bar
            return
        with self._new_bar(total, desc) as shown:
            yield shown

    @contextlib.contextmanager
    def _new_bar(self, total: int, desc: str) -> Iterator[tuple[Progress, Callable[[], None]]]:
        with Progress(total, desc, enabled=self.progress, unit="model") as bar, \
                self.eta_from_windows(bar) as window_done:
            yield bar, window_done

    @contextlib.contextmanager
    def eta_from_windows(self, bar: Progress) -> Iterator[Callable[[], None]]:
        """While measuring, the device's events set the bar's ETA (see `WindowEta`), scaled at first by what this
        device's windows took against their plans earlier in this calibration (`window_share`). Yields what to call
        on each result."""
        before = getattr(self.device, "on_event", None)
        eta = WindowEta(bar, share=self.window_share, clock=self.clock)

        def on_event(kind: str, event: dict[str, Any]) -> None:
            eta.on_event(kind, event)
            if before is not None and kind != "tick":
                before(kind, event)

        if hasattr(self.device, "on_event"):
            self.device.on_event = on_event
        try:
            yield eta.window_done
        finally:
            self.window_share = eta.share
            if hasattr(self.device, "on_event"):
                self.device.on_event = before

    def failure_summary(self, jobs: Sequence[ModelJob]) -> str:
        rows = [r for r in self.store.measurements(device=self.device.name, runtime=self.runtime,
                                                   precision=self.precision, ok=False)
                if r.model_sha256 in {j.sha256 for j in jobs}]
        if not rows:
            return "no result"
        last = rows[-1]
        return f"{last.error}: {last.measurement.get('error_message') or ''}".strip().rstrip(":")

    # -- the table -------------------------------------------------------------------------------
    def build_table(self, path: Path) -> LatencyTable:
        index = block_index(self.space)
        table = LatencyTable.load(path, device=self.device.name, runtime=self.runtime, precision=self.precision) \
            if path.is_file() else LatencyTable(self.device.name, self.runtime, self.precision)
        missing = [p for p in index.pieces if p.key not in table.entries]
        self.report.reused += len(index.pieces) - len(missing)  # measurements the table already holds
        if missing:
            jobs = self.export_pieces(missing)
            got = self.measure(jobs, f"measure pieces on {self.device.name}")
            lacking = [j for j in jobs if j.sha256 not in got]
            if lacking:
                raise UsageError(
                    f"{len(lacking)} of {len(jobs)} table pieces failed on device {self.device.name} "
                    f"({self.failure_summary(lacking)}): check it with `edgenas devices check {self.device.name}`, "
                    "then run the same command again to measure only those")
            for job in jobs:
                m = got[job.sha256]
                table.add(job.description, latency_ms=m.latency_ms, median_ms=m.median_ms, std_ms=m.std_ms, runs=m.runs or 0,
                          model_sha256=job.sha256)
                table.runtime_version = m.runtime_version or table.runtime_version
            table.device_description = self.device.describe()
            table.created = ""
            table.save(path, extra={"device": self.device.describe()})
        self.report.table_device_seconds = self.seconds_of(table.entries[p.key]["model_sha256"] for p in index.pieces)
        return table

    def seconds_of(self, shas: Any) -> float:
        total = 0.0
        for sha in shas:
            m = self.store.measurement_for(sha, self.device.name, self.runtime, self.precision)
            if m is not None:
                total += float(m.measurement.get("device_seconds") or 0.0)
        return total

    def measure_archs(self, archs: Sequence[Arch], desc: str) -> tuple[list[Arch], np.ndarray, float]:
        """Measured latency of each arch that measured fine, and the device seconds they cost."""
        jobs = self.export_archs(archs)
        got = self.measure(jobs, desc)
        keep = [(a, got[j.sha256]) for a, j in zip(archs, jobs) if j.sha256 in got]
        seconds = sum(float(m.measurement.get("device_seconds") or 0.0) for _, m in keep)
        return [a for a, _ in keep], np.array([self.value(m) for _, m in keep], dtype=np.float64), seconds

    def value(self, m: Any) -> float:
        """The latency figure of a stored measurement under this calibration's statistic."""
        if self.statistic == "latency":
            return float(m.latency_ms)
        return float(m.median_ms if self.statistic == "median" else m.measurement["min_ms"])

    def piece_values(self, table: LatencyTable) -> dict[str, float]:
        """Piece latencies under the statistic (the table holds the figures; other statistics come from the store)."""
        if self.statistic == "latency":
            return {k: v["latency_ms"] for k, v in table.entries.items()}
        out = {}
        for key in block_index(self.space).keys:
            m = self.store.measurement_for(table.entries[key]["model_sha256"], self.device.name, self.runtime,
                                           self.precision)
            if m is None:
                raise UsageError(f"the store lacks the measurement behind table entry {key}: use the store that "
                                 "built the table (--store), or calibrate with --statistic latency")
            out[key] = self.value(m)
        return out


def mixed(jobs: Sequence[ModelJob]) -> list[ModelJob]:
    """`jobs` in a seeded shuffled order, so that each chunk (each window) holds pieces and subnets, small and large,
    in the proportions of the whole, and the cost per model of the chunks timed so far stands for the rest. In the
    order given (the table's pieces, then the held-out subnets riding along), the first window timed only small
    pieces: at 128-160 px its first ETA said 37 s, for a bar that ran 3:46 in all. (Mixed, the first ETA of a
    224 px calibration's 70-subnet bar came to 0.60 of the time truly left, 0.38 before; its pieces bar's to 0.43.)"""
    order = np.random.default_rng(len(jobs)).permutation(len(jobs))
    return [jobs[i] for i in order]


def _resolve_setup(device: Any, runtime: str | None, precision: str | None) -> tuple[str, str]:
    runtime = runtime or device.runtime
    precision = precision or "fp32"
    if runtime != device.runtime:
        raise UsageError(f"device {device.name} runs {device.runtime}, not {runtime}: drop --runtime or choose "
                         f"--runtime {device.runtime}")
    return runtime, precision


def stratified(pool: Sequence[Arch], predicted: np.ndarray, n: int, rng: np.random.Generator) -> list[Arch]:
    """`n` archs covering the predicted range: the fastest, the slowest, and one per quantile bin between."""
    order = np.argsort(predicted, kind="stable")
    if n <= 2:
        return [pool[order[0]], pool[order[-1]]][:n]
    picks = [order[0], order[-1]]
    bins = np.array_split(order[1:-1], n - 2)
    picks += [int(rng.choice(b)) for b in bins if len(b)]
    return [pool[i] for i in picks]


def calibrate(
    device: Any,
    space: SearchSpace,
    *,
    budget: int = 100,
    runtime: str | None = None,
    precision: str | None = None,
    store: Store,
    use_table: bool = True,
    seed: int = 0,
    tables_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    rounds: int = 5,
    statistic: str = "latency",
    save: bool = True,
    progress: bool = True,
    holdout: Sequence[Arch] = (),
    cache_mb: float | None = MODEL_CACHE_MB,
) -> BasePredictor:
    """Calibrate `device` for `space`; returns the fitted predictor (with `.report`, a CalibrationReport).

    `use_table=False` fits a whole-model-only predictor (no table: fewer models, less accuracy).
    `statistic` is "latency" (the device's interleaved figure), or "median" or "min" of each model's runs.
    `holdout`: subnets to judge the predictor on afterwards (`Calibrator.measure_archs` finds them in the
    store): never measured for the fit, timed in the first window the calibration opens.
    `rounds`: windows of the subnets the fit is least sure of, after the first; 0 chooses all `budget` subnets
    (stratified over MACs) before the table and times them in its window: one window in all.
    The predictor is saved to `latency_tables/<device>/predictor-<runtime>-<precision>.json` when `save`.
    `cache_mb`: the most megabytes of exported model files left in `cache_dir` (None: keep them all).
    """
    runtime, precision = _resolve_setup(device, runtime, precision)
    if budget < 2:
        raise UsageError(f"--budget {budget} is too small: give at least 2 whole-model measurements (100 is typical)")
    tables_dir = Path(tables_dir) if tables_dir is not None else None
    tpath = table_path(device.name, runtime, precision, tables_dir)
    cal = Calibrator(device, space, runtime=runtime, precision=precision, store=store,
                     cache_dir=cache_dir or tpath.parent.parent / ".models", progress=progress, statistic=statistic,
                     cache_mb=cache_mb)
    ident = dict(device=device.name, runtime=runtime, precision=precision, space=space)
    rng = np.random.default_rng(seed)
    pool = space.sample_many(rng, POOL_SIZE)
    pool = list(dict.fromkeys([space.smallest(), space.largest(), *pool]))
    if holdout:
        held = set(holdout)
        pool = [a for a in pool if a not in held]
        cal.ride_along(cal.export_archs(list(dict.fromkeys(holdout))))

    predictor: BasePredictor
    if use_table and rounds > 0:
        table = cal.build_table(tpath)
        cal.report.table_path = str(tpath)
        predictor = CalibratedPredictor(table=cal.piece_values(table), **ident)
        guide = TablePredictor(table=predictor.table, **ident).predict(pool)
    else:  # spread over MACs: with rounds=0 the subnets are chosen before the table, to ride in its window

        guide = stats_table(space).compute(pool)["macs"].astype(np.float64)
        predictor = WholeModelPredictor(**ident)

    # Mostly stratified (held-out subnets are random, and the criterion is over them), the rest where
    # the fit is least sure (those lie at the edges of the space). With rounds=0, all of them stratified and
    # timed in one window with the table's pieces and the held-out subnets: one window in all, where each round
    # is another (4 s on the demo's devices, and up to 24 s when a slow spell makes the window wait for fast
    # moments), and the fit and the held-out figures share the device's state.
    first = budget if rounds == 0 else max(2, min(budget, (7 * budget) // 10 if budget >= 10 else budget))
    chosen = stratified(pool, guide, first, rng)
    if use_table and rounds == 0:
        cal.ride_along(cal.export_archs(chosen))
        table = cal.build_table(tpath)
        cal.report.table_path = str(tpath)
        predictor = CalibratedPredictor(table=cal.piece_values(table), **ident)
    archs, ms, seconds = cal.measure_archs(chosen, f"measure subnets on {device.name}")
    left = budget - len(chosen)
    rounds = max(1, min(rounds, left // MIN_PER_ROUND)) if rounds > 0 else 0
    per_round = max(1, -(-left // rounds)) if left > 0 and rounds > 0 else 0  # 0: no rounds
    spent = {a for a in chosen}
    rounds_bar = cal.one_bar(min(left, len(pool) - len(spent)), f"measure uncertain subnets on {device.name}") \
        if per_round else contextlib.nullcontext()  # one bar over the rounds (see `one_bar`)
    with rounds_bar:
        while per_round and len(spent) < budget and len(archs) >= 2:
            predictor.fit(archs, ms, seed=seed)
            rest = [a for a in pool if a not in spent]
            if not rest:
                break
            spread = predictor.uncertainty(rest, archs, ms, rng=np.random.default_rng([seed, len(spent)]))
            take = [rest[i] for i in np.argsort(-spread, kind="stable")[: min(per_round, budget - len(spent))]]
            spent.update(take)
            more, more_ms, more_s = cal.measure_archs(take, f"measure uncertain subnets on {device.name}")
            archs += more
            ms = np.concatenate([ms, more_ms])
            seconds += more_s
    if len(archs) < 2:
        raise UsageError(f"only {len(archs)} subnets measured fine on device {device.name}: check it with "
                         f"`edgenas devices check {device.name}` and run again")
    predictor.fit(archs, ms, seed=seed)
    cal.finish()
    cal.report.arch_device_seconds = seconds
    cal.report.device_seconds = seconds + cal.report.table_device_seconds
    predictor.fit_info["device_seconds"] = cal.report.device_seconds
    predictor.fit_info["table_device_seconds"] = cal.report.table_device_seconds
    predictor.fit_info["statistic"] = statistic
    if save:
        ppath = predictor_path(device.name, runtime, precision, tables_dir)
        predictor.save(ppath, inputs={"table": str(tpath)} if use_table else None,
                       extra={"device": device.describe(), "budget": budget, "seed": seed,
                              "report": cal.report.to_dict()})
        cal.report.predictor_path = str(ppath)
    predictor.report = cal.report  # type: ignore[attr-defined]
    return predictor


def calibrate_transfer(
    device: Any,
    space: SearchSpace,
    *,
    sources: Sequence[BasePredictor],
    samples: int = 10,
    runtime: str | None = None,
    precision: str | None = None,
    store: Store,
    seed: int = 0,
    tables_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    statistic: str = STATISTICS[0],
    save: bool = True,
    progress: bool = True,
    cache_mb: float | None = MODEL_CACHE_MB,
) -> TransferPredictor:
    """A new device from calibrated ones and `samples` whole-model measurements of its own.

    The subnets to measure are chosen actively from the sources alone (spread over their latency range,
    and inside each stretch where the transfer model is least sure): the same seed and sources choose the
    same subnets, so a re-run measures nothing twice. The predictor file records its sources, how many
    target measurements it used and which subnets they were (`fit.samples`)."""
    # deferred: scipy loads only when this runs, not on import
    from edgenas.latency.transfer import choose_samples, space_transfer

    runtime, precision = _resolve_setup(device, runtime, precision)
    if samples < 2:
        raise UsageError(f"transfer needs at least 2 measurements on the new device, got --budget {samples}")
    if not sources:
        raise UsageError("transfer needs at least one calibrated source device: pass --transfer-from NAME")
    tpath = table_path(device.name, runtime, precision, tables_dir)
    cal = Calibrator(device, space, runtime=runtime, precision=precision, store=store,
                     cache_dir=cache_dir or tpath.parent.parent / ".models", progress=progress, statistic=statistic,
                     cache_mb=cache_mb)
    predictor = TransferPredictor(sources=sources, device=device.name, runtime=runtime, precision=precision,
                                  space=space)
    transfer = space_transfer(space, sources, samples=samples, seed=seed)
    picks = choose_samples(transfer.model, transfer.X, min(samples, len(transfer.pool)), np.random.default_rng(seed))
    archs, ms, seconds = cal.measure_archs([transfer.pool[i] for i in picks], f"measure subnets on {device.name}")
    if len(archs) < 2:
        raise UsageError(f"only {len(archs)} subnets measured fine on device {device.name}: check the device")
    predictor.fit(archs, ms, seed=seed, transfer=transfer)
    cal.finish()
    cal.report.device_seconds = cal.report.arch_device_seconds = seconds
    predictor.fit_info["device_seconds"] = seconds
    predictor.fit_info["statistic"] = statistic
    if save:
        ppath = predictor_path(device.name, runtime, precision, tables_dir)
        inputs = {f"source {s.device}:{s.runtime}-{s.precision}": str(getattr(s, "path", "")) or s.kind
                  for s in sources}
        predictor.save(ppath, inputs=inputs,
                       extra={"device": device.describe(), "samples": samples, "seed": seed,
                              "target_measurements": len(archs),
                              "sources": [f"{s.device}:{s.runtime}-{s.precision}" for s in sources]})
        cal.report.predictor_path = str(ppath)
    predictor.report = cal.report  # type: ignore[attr-defined]
    return predictor


def load_latency_predictor(path_or_device_name: str | Path, *, runtime: str | None = None,
                           precision: str | None = None, space: SearchSpace | None = None,
                           tables_dir: str | Path | None = None, device: str | None = None) -> BasePredictor:
    """A saved predictor: from a file, or a device's default `latency_tables/<device>/predictor-*.json`.

    `device` refuses a predictor file made for another device (a NAME is always checked)."""
    candidate = Path(path_or_device_name)
    if candidate.suffix == ".json" or candidate.is_file():
        return load_predictor_file(candidate, device=device, runtime=runtime, precision=precision, space=space)
    name = str(path_or_device_name)
    folder = (Path(tables_dir) if tables_dir else table_path(name, "x", "x").parent.parent) / name
    files = sorted(folder.glob("predictor-*.json")) if folder.is_dir() else []
    files = [f for f in files if not f.name.endswith(".manifest.json")]
    wanted = [f for f in files
              if (runtime is None or f.name.startswith(f"predictor-{runtime}-"))
              and (precision is None or f.name.endswith(f"-{precision}.json"))]
    if not wanted:
        have = ", ".join(f.name for f in files) or "none"
        raise UsageError(f"no latency predictor for device {name!r}"
                         f"{' runtime ' + runtime if runtime else ''}{' precision ' + precision if precision else ''} "
                         f"in {folder} (found: {have}): run `edgenas calibrate --device {name}`")
    if len(wanted) > 1:
        raise UsageError(f"device {name!r} has predictors {', '.join(f.name for f in wanted)}: choose one with "
                         "runtime= and precision=")
    return load_predictor_file(wanted[0], device=name, runtime=runtime, precision=precision, space=space)
