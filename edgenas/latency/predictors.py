"""Latency predictors: table sum, table + calibrated correction, whole-model only, MACs baseline, transfer.

Every predictor maps thousands of archs at once to milliseconds (`predict(archs) -> np.ndarray`)
from a per-arch feature matrix and a small linear model, fitted to whole-model measurements by
minimising *relative* error (the criterion users judge by is "within ±10 %"), with a ridge pull
towards a prior chosen by cross-validation:

- `TablePredictor`: the sum of the table's pieces (stem + blocks + head). No fitting.
- `CalibratedPredictor`: the table sums of the fixed pieces (stem, head) and of the blocks each get a
  factor, plus a constant and a per-block term: what fusion, caches and per-invocation overhead
  change when the pieces run as one model. The prior is the plain table sum, so a handful of
  measurements is safe. (A factor per stage fitted noise on this project's shared test machine:
  held-out error grew, so the groups are pooled.)
- `WholeModelPredictor`: no table: analytic costs (dense and depthwise MACs per group, elementwise
  volume, weights, op count) weighted by fitted per-op costs.
- `MacsPredictor`: ms = a + b·MACs, the baseline.
- `TransferPredictor`: a new device from calibrated ones and a handful of its own measurements: an
  additive table over position × piece with the sources' structure as its prior (`latency/transfer.py`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from edgenas.artifacts import atomic_write_json, write_manifest
from edgenas.cost import stats_table
from edgenas.errors import UsageError
from edgenas.inputs import field_of, is_number, mapping, require, space_from_dict
from edgenas.latency.blocks import ANALYTIC_FEATURES, block_index
from edgenas.latency.table import (
    LATENCY_REMEDY,
    MAX_TABLE_ENTRIES,
    check_identity,
    check_identity_fields,
    positive_ms,
    read_json,
)
from edgenas.space import Arch, SearchSpace

PREDICTOR_SCHEMA = "edgenas.latency_predictor/1"
LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@runtime_checkable
class LatencyPredictor(Protocol):
    """What search and the pipeline rely on: batched latency in milliseconds for one device setup."""

    device: str
    runtime: str
    precision: str
    space: SearchSpace

    def predict(self, archs: Sequence[Arch]) -> np.ndarray: ...

    def save(self, path: str | os.PathLike) -> Path: ...


def fit_relative(X: np.ndarray, y: np.ndarray, prior: np.ndarray, lam: float) -> np.ndarray:
    """argmin_w Σ((Xw − y)/y)² + lam·n·Σ(d_j (w_j − prior_j))², with d_j the RMS of column j of X/y."""
    A = X / y[:, None]
    d2 = (A ** 2).mean(axis=0) + 1e-12
    n = len(y)
    lhs = A.T @ A + lam * n * np.diag(d2)
    rhs = A.T @ np.ones(n) + lam * n * d2 * prior
    return np.linalg.solve(lhs, rhs)


def choose_lambda(X: np.ndarray, y: np.ndarray, prior: np.ndarray, rng: np.random.Generator,
                  folds: int = 5) -> float:
    """The ridge strength with the smallest cross-validated relative RMS error."""
    n = len(y)
    if n < 4:
        return LAMBDAS[-1]
    folds = min(folds, n)
    order = rng.permutation(n)
    best, best_err = LAMBDAS[-1], np.inf
    for lam in LAMBDAS:
        errs = []
        for f in range(folds):
            test = order[f::folds]
            train = np.setdiff1d(order, test)
            w = fit_relative(X[train], y[train], prior, lam)
            errs.append(((X[test] @ w - y[test]) / y[test]) ** 2)
        err = float(np.concatenate(errs).mean())
        if err < best_err:
            best, best_err = lam, err
    return best


class BasePredictor:
    """Shared parts: identity (device, runtime, precision, space), features → linear model, JSON files."""

    kind: ClassVar[str] = ""
    feature_names: list[str]

    def __init__(self, *, device: str, runtime: str, precision: str, space: SearchSpace,
                 weights: Sequence[float] | None = None, fit: dict[str, Any] | None = None) -> None:
        self.device = device
        self.runtime = runtime
        self.precision = precision
        self.space = space
        self.index = block_index(space)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.fit_info: dict[str, Any] = dict(fit or {})

    # -- to override --------------------------------------------------------------------------
    def features(self, archs: Sequence[Arch]) -> np.ndarray:
        raise NotImplementedError

    def prior(self) -> np.ndarray:
        return np.zeros(len(self.feature_names))

    def _params(self) -> dict[str, Any]:
        return {}

    # -- shared --------------------------------------------------------------------------------
    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        """Latency in milliseconds of each arch (float64, shape (n,))."""
        if isinstance(archs, Arch):
            archs = [archs]
        if len(archs) == 0:
            return np.zeros(0)
        self.check_resolutions(archs)
        if self.weights is None:
            raise UsageError(f"{type(self).__name__} for {self.device} is not fitted: call fit() or calibrate first")
        return self.features(archs) @ self.weights

    def check_resolutions(self, archs: Sequence[Arch]) -> None:
        """UsageError for an arch at a resolution this predictor has no figures for, naming those it has."""
        codec = getattr(archs, "codec", None)
        if codec is not None and codec.space == self.space:  # a search over this very space
            return
        offered = self.space.resolutions
        bad = sorted({a.resolution for a in archs} - set(offered))
        if bad:
            raise UsageError(f"resolution {bad[0]} is not in the latency predictor of {self.device} "
                             f"({self.runtime}/{self.precision}): it has {', '.join(map(str, offered))}")

    def fit(self, archs: Sequence[Arch], measured_ms: Sequence[float], *, seed: int = 0,
            lam: float | None = None) -> BasePredictor:
        """Fit to whole-model measurements (relative error, ridge towards the prior)."""
        y = np.asarray(measured_ms, dtype=np.float64)
        if len(archs) != len(y) or len(y) == 0:
            raise UsageError(f"fit needs one measurement per arch, got {len(archs)} archs and {len(y)} measurements")
        X = self.features(archs)
        prior = self.prior()
        if lam is None:
            lam = choose_lambda(X, y, prior, np.random.default_rng(seed))
        self.weights = fit_relative(X, y, prior, lam)
        rel = (X @ self.weights - y) / y
        self.fit_info = {"lambda": lam, "samples": [[a.to_dict(), float(v)] for a, v in zip(archs, y)],
                         "train_rel_rmse": float(np.sqrt((rel ** 2).mean()))}
        return self

    def uncertainty(self, archs: Sequence[Arch], train_archs: Sequence[Arch], train_ms: Sequence[float], *,
                    rng: np.random.Generator, rounds: int = 16) -> np.ndarray:
        """Relative spread (std / mean) of predictions over bootstrap refits: where the fit is least sure."""
        X = self.features(archs)
        Xt = self.features(train_archs)
        y = np.asarray(train_ms, dtype=np.float64)
        lam = float(self.fit_info.get("lambda", 1e-2))
        preds = []
        for _ in range(rounds):
            pick = rng.integers(0, len(y), len(y))
            preds.append(X @ fit_relative(Xt[pick], y[pick], self.prior(), lam))
        p = np.stack(preds)
        return p.std(axis=0) / np.maximum(np.abs(p.mean(axis=0)), 1e-9)

    @property
    def training_set(self) -> tuple[list[Arch], np.ndarray]:
        samples = self.fit_info.get("samples", [])
        return [Arch.from_dict(a) for a, _ in samples], np.array([v for _, v in samples], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PREDICTOR_SCHEMA,
            "type": self.kind,
            "device": self.device,
            "runtime": self.runtime,
            "precision": self.precision,
            "space": self.space.to_dict(),
            "feature_names": list(self.feature_names),
            "weights": None if self.weights is None else [float(w) for w in self.weights],
            "fit": self.fit_info,
            **self._params(),
        }

    def save(self, path: str | os.PathLike, *, inputs: dict[str, Any] | None = None,
             extra: dict[str, Any] | None = None) -> Path:
        """Write the predictor as JSON (atomically) with a manifest beside it."""
        path = atomic_write_json(path, self.to_dict())
        write_manifest(path, kind="latency_predictor", inputs=inputs,
                       config={"type": self.kind, "device": self.device, "runtime": self.runtime,
                               "precision": self.precision, "space": self.space.name}, extra=extra)
        return path

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.device} {self.runtime}/{self.precision} space={self.space.name}>"


class TablePredictor(BasePredictor):
    """The sum of the latency table's pieces."""

    kind = "table"

    def __init__(self, *, table: dict[str, float], per_resolution: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.per_resolution = bool(per_resolution)  # one entry per piece and resolution (imported phone tables)
        if self.per_resolution:
            self.index = block_index(self.space, per_resolution=True)
        self.table = dict(table)
        keys = self.index.keys
        missing = [k for k in keys if k not in self.table]
        if missing:
            raise UsageError(f"the latency table of {self.device} lacks {len(missing)} pieces of space "
                             f"'{self.space.name}' (e.g. {missing[0]}): calibrate this space on the device")
        self.piece_ms = np.array([self.table[k] for k in keys], dtype=np.float64)
        self.feature_names = ["table_sum"]
        if self.weights is None and self.kind == "table":
            self.weights = np.ones(1)

    def group_sums(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.index.group_sums(self.piece_ms, archs)

    def slot_table(self, resolution_index: int) -> tuple[np.ndarray, float]:
        """The table's pieces at one resolution as arrays: the block of each (slot, kernel, expand) in ms, and
        stem plus head in ms. What a search over the table's expectation (differentiable search) reads."""
        index, ms = self.index, self.piece_ms
        fixed = ms[index.stem_of[resolution_index]] + ms[index.head_of[resolution_index]]
        return ms[index.block_of[resolution_index]], float(fixed)

    def features(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.group_sums(archs).sum(axis=1, keepdims=True)

    def prior(self) -> np.ndarray:
        return np.ones(1)

    def _params(self) -> dict[str, Any]:
        table = {"table": {k: self.table[k] for k in self.index.keys}}
        return {**table, "per_resolution": True} if self.per_resolution else table


class CalibratedPredictor(TablePredictor):
    """The table's sum per group (stem, each stage, head) with a fitted factor each, plus a constant and a term per
    block of each stage: what whole models do differently from their pieces timed alone (fusion, per-call and
    per-layer overhead), stage by stage.

    Chosen by measurement on this project's machine (100 calibration and 100 held-out `tiny` subnets, ONNX
    Runtime, interleaved figures): one factor for all blocks put 88 % of held-out subnets within ±10 % (49 %
    within ±5 %); a factor per group 100 % (75 %); with the per-stage block terms 100 % (87 %)."""

    kind = "calibrated"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        stages = self.space.num_stages
        self.feature_names = (["const"] + [f"table_{g}" for g in self.index.group_names]
                              + [f"blocks_stage{s}" for s in range(stages)])
        if self.weights is not None and len(self.weights) != len(self.feature_names):
            raise UsageError(f"calibrated predictor has {len(self.weights)} weights for {len(self.feature_names)} "
                             "features: the file is from another edgenas version or for another space; re-calibrate")

    def features(self, archs: Sequence[Arch]) -> np.ndarray:
        idx = self.index.lookup(archs)
        groups = self.index.group_sums(self.piece_ms, index=idx)
        depths = np.array([a.depths for a in archs], dtype=np.float64).reshape(len(idx), -1)
        return np.concatenate([np.ones((len(idx), 1)), groups, depths], axis=1)

    def prior(self) -> np.ndarray:
        p = np.zeros(len(self.feature_names))
        p[1:1 + len(self.index.group_names)] = 1.0  # the table's pieces, as measured
        return p


class WholeModelPredictor(BasePredictor):
    """No table: fitted per-op costs over the arch's analytic costs."""

    kind = "whole_model"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.costs = self.index.analytic_costs()
        names = self.index.group_names
        self.feature_names = (["const"] + [f"dense_mmacs_{g}" for g in names] + [f"dw_mmacs_{g}" for g in names]
                              + list(ANALYTIC_FEATURES[2:]))

    def features(self, archs: Sequence[Arch]) -> np.ndarray:
        g = self.index.group_sums(self.costs, archs)  # (n, groups, features)
        return np.concatenate([np.ones((g.shape[0], 1)), g[:, :, 0], g[:, :, 1], g[:, :, 2:].sum(axis=1)], axis=1)


class MacsPredictor(BasePredictor):
    """The baseline: latency linear in MACs."""

    kind = "macs"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.feature_names = ["const", "mmacs"]

    def features(self, archs: Sequence[Arch]) -> np.ndarray:
        macs = stats_table(self.space).compute(list(archs))["macs"].astype(np.float64) / 1e6
        return np.stack([np.ones_like(macs), macs], axis=1)


class TransferPredictor(BasePredictor):
    """A new device from devices already calibrated and a handful of its own measurements.

    An additive table over the space's position × piece encoding (`edgenas.latency.transfer`): the sources'
    tables, their per-position and per-piece structure, with a prior learned leave-one-source-out, fitted to
    the target's measurements. The file keeps the sources, how many target measurements it used and which."""

    kind = "transfer"

    def __init__(self, *, sources: Sequence[BasePredictor], **kw: Any) -> None:
        # deferred: scipy loads only when this runs, not on import
        from edgenas.latency.transfer import space_encoding

        super().__init__(**kw)
        if not sources:
            raise UsageError("transfer needs at least one calibrated source device: pass --transfer-from NAME")
        for s in sources:
            if s.space.to_dict() != self.space.to_dict():
                raise UsageError(f"source predictor of {s.device} is for space '{s.space.name}', not "
                                 f"'{self.space.name}': calibrate {s.device} on this space first")
        self.sources = list(sources)
        self.encoding = space_encoding(self.space)
        self.feature_names = ["const"] + [f"p{p}:{t}" for p, t in self.encoding.columns]
        if self.weights is not None and len(self.weights) != len(self.feature_names):
            raise UsageError(f"transfer predictor has {len(self.weights)} weights for {len(self.feature_names)} "
                             "features: the file is damaged or for another space; re-calibrate")

    def features(self, archs: Sequence[Arch]) -> np.ndarray:
        # deferred: scipy loads only when this runs, not on import
        from edgenas.latency.transfer import space_tokens

        return np.hstack([np.ones((len(archs), 1)), self.encoding.encode(space_tokens(self.space, archs))])

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.maximum(super().predict(archs), 1e-9)

    def fit(self, archs: Sequence[Arch], measured_ms: Sequence[float], *, seed: int = 0,
            lam: float | None = None, transfer: Any = None) -> TransferPredictor:
        """Fit to the target's measurements; `transfer`: a `space_transfer` model already built from the sources."""
        # deferred: scipy loads only when this runs, not on import
        from edgenas.latency.transfer import space_transfer, transfer_report

        y = np.asarray(measured_ms, dtype=np.float64)
        if len(archs) != len(y) or len(y) < 2:
            raise UsageError(f"transfer needs at least 2 measurements, one per arch; got {len(archs)} archs and "
                             f"{len(y)} measurements")
        if transfer is None:
            transfer = space_transfer(self.space, self.sources, samples=len(y), seed=seed)
        model = transfer.model.fit(transfer.encode(archs), y)
        self.weights = model.coef.copy()
        rel = (self.predict(archs) - y) / y
        self.fit_info = {
            "samples": [[a.to_dict(), float(v)] for a, v in zip(archs, y)],
            "target_measurements": len(y),
            "sources": [f"{s.device}:{s.runtime}-{s.precision} ({s.kind})" for s in self.sources],
            "sources_exact": transfer.exact_sources,
            "transfer": transfer_report(model),
            "train_rel_rmse": float(np.sqrt((rel ** 2).mean())),
        }
        return self

    def _params(self) -> dict[str, Any]:
        return {"sources": [s.to_dict() for s in self.sources]}


PREDICTOR_TYPES: dict[str, type[BasePredictor]] = {
    cls.kind: cls for cls in (TablePredictor, CalibratedPredictor, WholeModelPredictor, MacsPredictor, TransferPredictor)
}


def predictor_from_dict(d: dict[str, Any], *, source: str = "latency predictor") -> BasePredictor:
    """Rebuild a predictor from its JSON form; refuses other schemas and unknown types."""
    if not isinstance(d, dict) or d.get("schema") != PREDICTOR_SCHEMA:
        got = d.get("schema") if isinstance(d, dict) else None
        raise UsageError(f"{source} has schema {got!r}, this edgenas reads {PREDICTOR_SCHEMA!r}: "
                         "re-run `edgenas calibrate` to rebuild it")
    cls = PREDICTOR_TYPES.get(d.get("type", ""))
    if cls is None:
        raise UsageError(f"{source} has unknown type {d.get('type')!r}: choose from {', '.join(PREDICTOR_TYPES)}")
    space = check_latency_predictor(d, source, tuple(PREDICTOR_TYPES))
    kw: dict[str, Any] = dict(device=d["device"], runtime=d["runtime"], precision=d["precision"],
                              space=space, weights=d.get("weights"), fit=d.get("fit"))
    if cls in (TablePredictor, CalibratedPredictor):
        kw["table"] = d["table"]
        kw["per_resolution"] = d.get("per_resolution") is True
    if cls is TransferPredictor:
        kw["sources"] = [predictor_from_dict(s, source=source) for s in d["sources"]]
    return cls(**kw)


def load_predictor_file(path: str | os.PathLike, *, device: str | None = None, runtime: str | None = None,
                        precision: str | None = None, space: SearchSpace | None = None) -> BasePredictor:
    """Read a predictor file; refuse one made for another device, runtime, precision, space or schema."""
    path = Path(path)
    pred = predictor_from_dict(read_json(path, "latency predictor"), source=f"latency predictor {path}")
    check_latency_predictions(pred, f"latency predictor {path}")
    pred.path = path  # type: ignore[attr-defined]  # what a search result records as its input
    check_identity(path, "latency predictor", (("device", device, pred.device), ("runtime", runtime, pred.runtime),
                                               ("precision", precision, pred.precision)))
    if space is not None and space.common_resolutions(pred.space) is None:
        raise UsageError(f"latency predictor {path} was calibrated for search space '{pred.space.name}' "
                         f"({pred.space.num_classes} classes), not this '{space.name}' space "
                         f"({space.num_classes} classes): calibrate the device with this supernet")
    return pred


def check_latency_predictor(d: Mapping[str, Any], source: str, types: Any) -> Any:
    """Every field of a latency predictor's JSON (`types`: the known type names); returns its SearchSpace."""
    require(d.get("type") in types, source, "type", d.get("type"), f"one of {', '.join(types)}", LATENCY_REMEDY)
    check_identity_fields(d, source)
    space = space_from_dict(field_of(d, "space", source, "the search space", LATENCY_REMEDY), source, LATENCY_REMEDY)
    weights = d.get("weights")
    require(weights is None or (isinstance(weights, list) and 0 < len(weights) <= 10_000_000
                                and all(is_number(w) for w in weights)),
            source, "weights", weights, "a list of finite numbers", LATENCY_REMEDY)
    if d["type"] in ("table", "calibrated"):
        table = field_of(d, "table", source, "the latency of every piece", LATENCY_REMEDY)
        require(isinstance(table, Mapping) and len(table) <= MAX_TABLE_ENTRIES, source, "table",
                "..." if isinstance(table, Mapping) else table, "a table of piece latencies", LATENCY_REMEDY)
        for key, value in table.items():
            positive_ms(value, source, f"table.{key}")
    fit = d.get("fit")
    require(fit is None or isinstance(fit, Mapping), source, "fit", fit, "a table", LATENCY_REMEDY)
    samples = (fit or {}).get("samples", [])
    require(isinstance(samples, list), source, "fit.samples", samples, "a list of [arch, ms] pairs", LATENCY_REMEDY)
    for i, sample in enumerate(samples):
        ok = isinstance(sample, list) and len(sample) == 2 and isinstance(sample[0], Mapping)
        require(ok, source, f"fit.samples[{i}]", sample, "an [arch, ms] pair", LATENCY_REMEDY)
        positive_ms(sample[1], source, f"fit.samples[{i}][1]")
    if d["type"] == "transfer":
        sources = field_of(d, "sources", source, "the source predictors", LATENCY_REMEDY)
        require(isinstance(sources, list) and 0 < len(sources) <= 64, source, "sources", sources,
                "a list of source predictors", LATENCY_REMEDY)
        for i, s in enumerate(sources):
            check_latency_predictor(mapping(s, source, f"sources[{i}]", LATENCY_REMEDY), f"{source} sources[{i}]", types)
    return space


def check_latency_predictions(predictor: Any, source: str) -> None:
    """A loaded predictor must predict a finite latency > 0 for the smallest and the largest subnet."""
    space = predictor.space
    n_weights = len(predictor.weights) if predictor.weights is not None else None
    n_features = len(getattr(predictor, "feature_names", []) or [])
    if n_weights is not None and n_features and n_weights != n_features:
        raise UsageError(f"{source}: weights has {n_weights} values for {n_features} features; {LATENCY_REMEDY}")
    if predictor.weights is None:
        return
    for name, arch in (("smallest", space.smallest()), ("largest", space.largest())):
        with np.errstate(all="ignore"):
            ms = float(np.asarray(predictor.predict([arch]))[0])
        if not (math.isfinite(ms) and ms > 0):
            raise UsageError(f"{source} predicts {ms:g} ms for the {name} subnet of its space: a latency must be a "
                             f"finite number > 0; {LATENCY_REMEDY}")
