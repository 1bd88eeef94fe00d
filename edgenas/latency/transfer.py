"""Few-shot latency transfer: a new device's latency of any arch from calibrated source devices and a handful of its own.

The encoding is generic: an arch is one token per position (a layer's op, a block slot's piece), one-hot
encoded as position × token. Each source device is an additive table over that encoding (an intercept plus
one latency per position × token: the sum of a latency table's pieces, or an additive fit to whole-model
measurements, which also averages out their noise). The target device's latency is modelled as

    y(x) = prior(x) + [1, F(x), Z(x), T(x), x] · β

with prior(x) the sources' average shape, F the sources' own latencies (the target as a mix of them),
Z the sources' per-position op costs (each position of the target may weigh its ops differently),
T the count of each token (an op may cost relatively more or less everywhere on the target) and x the
one-hot itself (anything else, per op). β has a Gaussian prior, one scale per block, learned on the
*sources*: each source in turn plays the target, the others its sources, with the same number of
measurements drawn at random (leave-one-source-out); the target's own measurements then set only the
noise level (closed-form leave-one-out). Every block is linear in x, so the fitted model is itself an
additive table (`TransferModel.additive`): intercept + one latency per position × token.

A target whose runtime differs from every source's (ONNX Runtime sources, a TFLite target) may price one
kind of op very differently from all of them: TFLite's 7x7 depthwise convolution measured 6.6-8.9x ONNX
Runtime's while its 3x3 and 5x5 ones measured 0.7-1.1x (docs/decisions.md). No mix of the sources has
that shape, and a handful of measurements cannot learn it per position. So before that fit, the prior
mean may take a few *cost features* on top of the sources' average: for each token attribute (a part of
a token such as `k7`, `hswish` or `hw14`), the sources' cost of the positions whose token has it (where
the source tables hold each piece's own cost, as those read off calibrated predictors do), and where the
space gives analytic op costs (MACs of dense and depthwise convolutions, elementwise values), those
costs of the same positions. A benchmark CSV gives neither, so there the model is as before. They are
added one at a time, greedily, while each cuts the closed-form leave-one-out error of the target's own
measurements by at least a fifth, at most one per `SAMPLES_PER_COST_FEATURE` measurements; a target the
sources already describe takes none.

Which archs to measure: `choose_samples(..., how="active")` spreads them over the sources' latency range
(one per quantile bin of the sources' mean log latency) and, inside each bin, takes the arch the model is
least sure of given those already chosen (largest prior variance: where the sources disagree, or where an
op has not been seen yet).

`read_latency_csv` reads the benchmark format `idx, arch_str, <device>_ms, ...` (tokens joined by `|`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from edgenas import inputs
from edgenas.errors import UsageError
from edgenas.latency.blocks import ANALYTIC_FEATURES, block_index

# The prior scale of each block of β relative to the intercept's (normalised units: the target's mean is 1).
DEFAULT_SCALES = {"span": 1.0, "position": 1.0, "token": 0.3, "onehot": 0.1}
SCALE_GRID = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)
# Relative noise levels the target's own measurements choose from (leave-one-out).
NOISE_GRID = (1e-4, 1e-3, 0.003, 0.01, 0.03, 0.1, 0.3)
SOURCE_RIDGE = 1e-6
SAMPLE_CURVE = (5, 10, 20, 50, 100)
SAMPLES_PER_COST_FEATURE = 8  # at most one cost feature per this many target measurements
COST_FEATURE_GAIN = 0.8  # a cost feature is taken only if it cuts the leave-one-out error to this share or less


# -- the encoding ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OneHotEncoding:
    """Position × token one-hot columns; `columns[j]` is (position, token)."""

    positions: int
    columns: tuple[tuple[int, str], ...]

    @classmethod
    def from_tokens(cls, rows: Sequence[Sequence[str]]) -> OneHotEncoding:
        """Every (position, token) that occurs in `rows` (all of one length), in a stable order."""
        if not rows:
            raise UsageError("no archs to build an encoding from: give at least one")
        positions = len(rows[0])
        seen: set[tuple[int, str]] = set()
        for row in rows:
            seen.update(enumerate(row))
        return cls(positions, tuple(sorted(seen)))

    @property
    def size(self) -> int:
        return len(self.columns)

    @property
    def _lookup(self) -> dict[tuple[int, str], int]:
        cache = self.__dict__.get("_lookup_cache")
        if cache is None:
            cache = {c: j for j, c in enumerate(self.columns)}
            object.__setattr__(self, "_lookup_cache", cache)
        return cache

    def column_positions(self) -> np.ndarray:
        return np.array([p for p, _ in self.columns], dtype=np.int64)

    def column_tokens(self) -> tuple[list[str], np.ndarray]:
        """The distinct tokens, and each column's index among them."""
        names = sorted({t for _, t in self.columns})
        at = {t: i for i, t in enumerate(names)}
        return names, np.array([at[t] for _, t in self.columns], dtype=np.int64)

    def encode(self, rows: Sequence[Sequence[str]]) -> np.ndarray:
        """(n, size) float64 one-hot; refuses a row of another length or an unseen (position, token)."""
        lookup = self._lookup
        out = np.zeros((len(rows), self.size))
        for i, row in enumerate(rows):
            if len(row) != self.positions:
                raise UsageError(f"arch {i} has {len(row)} positions, the encoding has {self.positions}: "
                                 "give one token per position")
            for p, tok in enumerate(row):
                j = lookup.get((p, tok))
                if j is None:
                    raise UsageError(f"arch {i} has token {tok!r} at position {p}, which the sources never saw: "
                                     "give the sources' pool an arch with it")
                out[i, j] = 1.0
        return out


# -- source devices as additive tables -----------------------------------------------------------------
@dataclasses.dataclass
class AdditiveTable:
    """One device's latency as intercept + one value per encoding column (ms)."""

    name: str
    intercept: float
    weights: np.ndarray

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.intercept + X @ self.weights


def fit_additive(name: str, X: np.ndarray, y: np.ndarray, *, lam: float = SOURCE_RIDGE) -> AdditiveTable:
    """Least squares of `y` on one-hot `X` with an intercept and a slight ridge (columns absent stay 0)."""
    n, d = X.shape
    mean = y.mean()
    Xc = X - X.mean(axis=0)
    if d <= n:
        w = np.linalg.solve(Xc.T @ Xc + lam * n * np.eye(d), Xc.T @ (y - mean))
    else:  # more columns than archs: the dual form
        w = Xc.T @ np.linalg.solve(Xc @ Xc.T + lam * n * np.eye(n), y - mean)
    return AdditiveTable(name, float(mean - X.mean(axis=0) @ w), w)


# -- the model ------------------------------------------------------------------------------------------
class TransferModel:
    """The target's latency from additive source tables and a handful of its measurements (see module doc)."""

    def __init__(self, encoding: OneHotEncoding, sources: Sequence[AdditiveTable], pool: np.ndarray,
                 scales: Mapping[str, float] | None = None,
                 analytic: Mapping[str, np.ndarray] | None = None, absolute_costs: bool = False) -> None:
        if not sources:
            raise UsageError("transfer needs at least one source device")
        self.encoding = encoding
        self.sources = list(sources)
        self.scales = dict(DEFAULT_SCALES if scales is None else scales)
        W = np.stack([s.weights for s in self.sources])  # (K, D)
        c = np.array([s.intercept for s in self.sources])
        # Each source in units of its own mean latency over the pool, so no device dominates by speed.
        self.norm = np.maximum(c + (pool @ W.T).mean(axis=0), 1e-12)
        Wn, cn = W / self.norm[:, None], c / self.norm
        pos = encoding.column_positions()
        # The sources' mean op cost, centred per position: Z's per-position columns.
        m = Wn.mean(axis=0)
        P = encoding.positions
        counts = np.bincount(pos, minlength=P).astype(np.float64)
        m = m - (np.bincount(pos, weights=m, minlength=P) / np.maximum(counts, 1))[pos]
        _, tok = encoding.column_tokens()
        D = encoding.size
        # Every feature block as a linear map of [1, x]: row 0 (intercept) and rows 1.. (columns); sparse
        # where it is a column-to-feature assignment (a space may have thousands of columns).
        rows = np.arange(1, D + 1)
        V = int(tok.max()) + 1
        self.blocks: dict[str, Any] = {
            "const": sparse.csr_matrix(([1.0], ([0], [0])), shape=(D + 1, 1)),
            "span": np.vstack([cn[None, :], Wn.T]),
            "position": sparse.csr_matrix((m, (rows, pos)), shape=(D + 1, P)),
            "token": sparse.csr_matrix((np.full(D, 1.0 / P), (rows, tok)), shape=(D + 1, V)),
            "onehot": sparse.csr_matrix((np.full(D, 1.0 / math.sqrt(P)), (rows, np.arange(D))), shape=(D + 1, D)),
        }
        self.prior_map = np.concatenate([[cn.mean()], Wn.mean(axis=0)])  # [1, x] -> the sources' average shape
        # Per-column source costs are a feature only where the tables hold each piece's own cost (read off a
        # calibrated predictor); a table fitted to whole-arch figures knows its columns only up to a constant
        # per position, so a sum over some of them means nothing there.
        self.cost_features = _cost_features(encoding, Wn.mean(axis=0) if absolute_costs else None, analytic or {})
        self.chosen_features: list[str] = []
        self.noise: float | None = None
        self.coef: np.ndarray | None = None  # weights of [1, x] (ms)
        self.samples = 0

    # -- features -----------------------------------------------------------------------------------
    def _design(self, X: np.ndarray) -> np.ndarray:
        return np.hstack([np.ones((len(X), 1)), X])

    def block(self, X1: np.ndarray, name: str) -> np.ndarray:
        """One feature block of design rows `X1` ([1, x]), unscaled."""
        return np.asarray(X1 @ self.blocks[name])

    def _phi(self, X1: np.ndarray, scales: Mapping[str, float]) -> np.ndarray:
        parts = [self.block(X1, "const")]
        parts += [scales[k] * self.block(X1, k) for k in ("span", "position", "token", "onehot") if scales[k] > 0]
        return np.hstack(parts)

    # -- fitting --------------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray, *, noise: float | None = None) -> TransferModel:
        """Fit to the target's measurements `y` (ms) of one-hot archs `X`; the noise level by leave-one-out."""
        y = np.asarray(y, dtype=np.float64)
        if len(y) < 2 or len(y) != len(X):
            raise UsageError(f"transfer needs at least 2 target measurements, one per arch; got {len(y)} for {len(X)}")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise UsageError("target latencies must be positive, finite milliseconds")
        X1 = self._design(X)
        scale = float(y.mean())
        prior_map = self._prior_with_cost_features(X1, y)
        prior = X1 @ prior_map
        prior_scale = float(prior.mean())
        yn = y / scale
        r = yn - prior / prior_scale
        phi = self._phi(X1, self.scales)
        G = phi @ phi.T
        self.noise = float(noise) if noise is not None else _loo_noise(G, r, yn)
        alpha = np.linalg.solve(G + np.diag((self.noise * yn) ** 2 + 1e-10), r)
        # β in feature space, mapped back to weights of [1, x]; the prior term and the scale folded in.
        beta = phi.T @ alpha
        at = 0
        back = np.zeros(len(self.prior_map))
        for k in ("const", "span", "position", "token", "onehot"):
            s = 1.0 if k == "const" else self.scales[k]
            if s > 0:
                width = self.blocks[k].shape[1]
                back += s * (self.blocks[k] @ beta[at:at + width])
                at += width
        self.coef = scale * (prior_map / prior_scale + back)
        self.samples = len(y)
        return self

    def _prior_with_cost_features(self, X1: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The prior mean as weights of [1, x]: the sources' average shape, scaled and offset to the target's
        measurements, plus the cost features that the leave-one-out error shows it needs (module doc)."""
        self.chosen_features = []
        names = list(self.cost_features)
        most = len(y) // SAMPLES_PER_COST_FEATURE
        if not names or most < 1:
            return self.prior_map
        maps = np.column_stack([self.cost_features[n] for n in names])
        F = X1 @ maps
        usable = [j for j in range(F.shape[1]) if np.ptp(F[:, j]) > 1e-12 * max(1.0, float(np.abs(F[:, j]).max()))]
        base = np.column_stack([np.ones(len(y)), X1 @ self.prior_map])
        chosen: list[int] = []
        err = _loo_relative(base, y)
        while len(chosen) < most and err > 1e-6:  # a target the prior already fits needs nothing more
            trials = [(_loo_relative(np.column_stack([base, F[:, chosen + [j]]]), y), j)
                      for j in usable if j not in chosen]
            if not trials:
                break
            best_err, best = min(trials)
            if not best_err <= COST_FEATURE_GAIN * err:
                break
            chosen.append(best)
            err = best_err
        if not chosen:
            return self.prior_map
        D = np.column_stack([base, F[:, chosen]])
        w = 1.0 / y
        coef = np.linalg.lstsq(D * w[:, None], y * w, rcond=None)[0]
        self.chosen_features = [names[j] for j in chosen]
        prior_map = coef[1] * self.prior_map + maps[:, chosen] @ coef[2:]
        prior_map[0] += coef[0]
        if np.mean(X1 @ prior_map) <= 0:  # a degenerate fit: keep the sources' shape
            self.chosen_features = []
            return self.prior_map
        return prior_map

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.coef is None:
            raise UsageError("the transfer model is not fitted: call fit() with the target's measurements first")
        return np.maximum(self._design(X) @ self.coef, 1e-9)

    @property
    def additive(self) -> AdditiveTable:
        """The fitted target as an additive table over the encoding."""
        if self.coef is None:
            raise UsageError("the transfer model is not fitted")
        return AdditiveTable("target", float(self.coef[0]), self.coef[1:].copy())

    # -- choosing archs to measure -------------------------------------------------------------------------
    def guide(self, X: np.ndarray) -> np.ndarray:
        """The sources' mean log latency (each in its own units): the axis to spread measurements over."""
        F = self.block(self._design(X), "span")
        return np.log(np.maximum(F, 1e-12)).mean(axis=1)


def _token_attributes(token: str) -> set[str]:
    """The parts of a token (`r24:block-i16-o24-k7-s2-m48-relu-se0-r0-hw24` -> r24, k7, relu, hw24, ...)."""
    return {part for part in re.split(r"[-:|_/,\s]+", token) if part}


def _cost_features(encoding: OneHotEncoding, source_cost: np.ndarray | None,
                   analytic: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Candidate cost features as weights of [1, x]: per token attribute, the sources' mean cost of the columns
    whose token has it (when given), and each analytic cost of those columns (and of all columns)."""
    families = ([] if source_cost is None else [("source", np.asarray(source_cost, dtype=np.float64))])
    families += [(n, np.asarray(v, dtype=np.float64)) for n, v in analytic.items()]
    if not families:
        return {}
    D = encoding.size
    by_attr: dict[str, list[int]] = {}
    for j, (_, token) in enumerate(encoding.columns):
        if token == INACTIVE:
            continue
        for part in _token_attributes(token):
            by_attr.setdefault(part, []).append(j)
    out: dict[str, np.ndarray] = {}
    for name, cost in families:
        if name != "source":
            out[f"{name}:all"] = np.concatenate([[0.0], cost])
        for attr, cols in by_attr.items():
            if len(cols) == D:
                continue
            m = np.zeros(D + 1)
            m[1 + np.asarray(cols)] = cost[cols]
            if np.any(m):
                out[f"{name}:{attr}"] = m
    return out


def _loo_relative(D: np.ndarray, y: np.ndarray, lam: float = 1e-8) -> float:
    """Closed-form leave-one-out relative error of the least-squares fit of y on the columns of D (weights 1/y)."""
    w = 1.0 / y
    A = D * w[:, None]
    b = y * w
    gram = A.T @ A
    H = A @ np.linalg.solve(gram + lam * np.trace(gram) / max(1, gram.shape[0]) * np.eye(gram.shape[0]), A.T)
    r = b - H @ b
    return float(np.sqrt(np.mean((r / np.maximum(1.0 - np.diag(H), 1e-3)) ** 2)))


def _loo_noise(G: np.ndarray, r: np.ndarray, yn: np.ndarray) -> float:
    """The relative noise level with the smallest closed-form leave-one-out relative error."""
    best, best_err = NOISE_GRID[-1], np.inf
    for nz in NOISE_GRID:
        Ci = np.linalg.inv(G + np.diag((nz * yn) ** 2 + 1e-10))
        loo = (Ci @ r) / np.diag(Ci)
        err = float(np.mean((loo / yn) ** 2))
        if err < best_err:
            best, best_err = nz, err
    return best


def choose_samples(model: TransferModel, X: np.ndarray, n: int, rng: np.random.Generator, *,
                   how: str = "active", candidates: int = 64) -> np.ndarray:
    """Indices of `n` distinct rows of `X` to measure on the target: "random", or "active" (see module doc)."""
    N = len(X)
    if n > N:
        raise UsageError(f"cannot choose {n} archs to measure from a pool of {N}: lower the number of samples")
    if how == "random":
        return rng.choice(N, n, replace=False)
    if how != "active":
        raise UsageError(f"unknown sample choice {how!r}: choose random or active")
    order = np.argsort(model.guide(X), kind="stable")
    bins = np.array_split(order, n)
    picks: list[int] = []
    phi = model._phi(model._design(X), model.scales)
    noise = 0.03
    for b in bins:
        cand = b if len(b) <= candidates else rng.choice(b, candidates, replace=False)
        if not picks:
            var = (phi[cand] ** 2).sum(axis=1)
        else:
            Ps = phi[picks]
            A = Ps @ Ps.T + noise ** 2 * np.eye(len(picks))
            Kc = phi[cand] @ Ps.T
            var = (phi[cand] ** 2).sum(axis=1) - np.einsum("ij,ij->i", Kc, np.linalg.solve(A, Kc.T).T)
        picks.append(int(cand[int(np.argmax(var))]))
    return np.array(picks, dtype=np.int64)


def choose_scales(encoding: OneHotEncoding, pool: np.ndarray, measured: np.ndarray, names: Sequence[str], *,
                  samples: int, draws: int = 6, seed: int = 0, sweeps: int = 2,
                  tables: Sequence[AdditiveTable] | None = None) -> dict[str, float]:
    """Prior scales by leave-one-source-out: each source plays the target with `samples` random measurements.

    `measured` is (N, K): each source's latency of the pool archs (what the source tables were fitted to).
    The score is the mean squared log ratio on the pool archs not measured. With one source there is no
    one to leave out: the defaults. `tables`: the sources' additive tables, when not fitted to `measured`."""
    K = measured.shape[1]
    if K < 2:
        return dict(DEFAULT_SCALES)
    samples = min(samples, len(pool) - 1)
    folds = []
    for k in range(K):
        others = [j for j in range(K) if j != k]
        fold_tables = [tables[j] if tables is not None else fit_additive(names[j], pool, measured[:, j]) for j in others]
        model = TransferModel(encoding, fold_tables, pool)
        X1 = model._design(pool)
        prior = X1 @ model.prior_map
        blocks = {name: model.block(X1, name) for name in model.blocks}
        y = measured[:, k]
        for d in range(draws):
            idx = np.random.default_rng([seed, k, d]).choice(len(pool), samples, replace=False)
            rest = np.ones(len(pool), bool)
            rest[idx] = False
            # Per block, the Gram between every pool arch and the measured ones: combined per scale choice.
            grams = {name: B @ B[idx].T for name, B in blocks.items()}
            folds.append((grams, prior, idx, rest, y))

    def score(scales: Mapping[str, float]) -> float:
        errs = []
        for grams, prior, idx, rest, y in folds:
            K_all = grams["const"] + sum(scales[b] ** 2 * grams[b] for b in DEFAULT_SCALES)
            G = K_all[idx]
            ys = y[idx]
            scale = ys.mean()
            yn = ys / scale
            ps = prior[idx].mean()
            r = yn - prior[idx] / ps
            nz = _loo_noise(G, r, yn)
            pred = scale * (prior / ps + K_all @ np.linalg.solve(G + np.diag((nz * yn) ** 2 + 1e-10), r))
            errs.append(np.mean(np.log(np.maximum(pred[rest], 1e-9 * scale) / y[rest]) ** 2))
        return float(np.mean(errs))

    best = dict(DEFAULT_SCALES)
    best_err = score(best)
    for _ in range(sweeps):
        changed = False
        for key in DEFAULT_SCALES:
            for value in SCALE_GRID:
                if value == best[key]:
                    continue
                trial = {**best, key: value}
                err = score(trial)
                if err < best_err - 1e-12:
                    best, best_err, changed = trial, err, True
        if not changed:
            break
    return best


# -- baselines ------------------------------------------------------------------------------------------
RIDGE_LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def ridge_log_fit(F: np.ndarray, y: np.ndarray, *, prior_slope: float | None = None) -> np.ndarray:
    """The floor: log y = a + Σ b_k log F_k, slopes ridge-pulled to `prior_slope` (1/K), λ by leave-one-out.

    `F` (n, K) holds the sources' latencies of the measured archs; returns [a, b_1..b_K]."""
    A = np.hstack([np.ones((len(F), 1)), np.log(F)])
    yl = np.log(y)
    n, d = A.shape
    prior = np.full(d, 1.0 / (d - 1) if prior_slope is None else prior_slope)
    prior[0] = 0.0
    pen = np.ones(d)
    pen[0] = 0.0

    def solve(rows: np.ndarray, lam: float) -> np.ndarray:
        As = A[rows]
        return np.linalg.solve(As.T @ As + lam * len(rows) * np.diag(pen) + 1e-9 * np.eye(d),
                               As.T @ yl[rows] + lam * len(rows) * pen * prior)

    every = np.arange(n)
    best, best_err = RIDGE_LAMBDAS[-1], np.inf
    for lam in RIDGE_LAMBDAS:
        err = np.mean([(A[i] @ solve(np.delete(every, i), lam) - yl[i]) ** 2 for i in range(n)])
        if err < best_err:
            best, best_err = lam, float(err)
    return solve(every, best if n >= 6 else max(best, 1.0))


def ridge_log_predict(coef: np.ndarray, F: np.ndarray) -> np.ndarray:
    return np.exp(coef[0] + np.log(F) @ coef[1:])


def whole_model_fit(X: np.ndarray, y: np.ndarray) -> AdditiveTable:
    """The target's own measurements alone: an additive one-hot fit, ridge strength by leave-one-out."""
    n = len(y)
    best, best_err = RIDGE_LAMBDAS[-1], np.inf
    if n >= 3:
        for lam in RIDGE_LAMBDAS:
            errs = []
            for i in range(n):
                keep = np.arange(n) != i
                t = fit_additive("target", X[keep], y[keep], lam=lam)
                errs.append(((t.predict(X[i:i + 1])[0] - y[i]) / y[i]) ** 2)
            if np.mean(errs) < best_err:
                best, best_err = lam, float(np.mean(errs))
    return fit_additive("target", X, y, lam=best)


# -- the benchmark format ---------------------------------------------------------------------------------
@dataclasses.dataclass
class LatencyCSV:
    """A benchmark file: archs (one token list each) and their latency (ms) per device."""

    path: Path
    idx: list[str]
    tokens: list[list[str]]
    devices: list[str]
    ms: np.ndarray  # (archs, devices)

    def column(self, device: str) -> np.ndarray:
        return self.ms[:, self.device_index(device)]

    def device_index(self, device: str) -> int:
        if device not in self.devices:
            raise UsageError(f"{self.path} has no column {device}_ms: its devices are {', '.join(self.devices)}")
        return self.devices.index(device)


def read_latency_csv(path: str | os.PathLike, *, devices: Sequence[str] = ()) -> LatencyCSV:
    """Read `idx, arch_str, <device>_ms...`; refuse, in one line naming the row and column, anything malformed.

    `devices` must all be columns of the file. A latency must be a positive finite number of milliseconds;
    every row has the header's number of fields and every arch the same number of `|`-joined tokens."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UsageError(f"no latency CSV at {path}: give a file with columns idx, arch_str, <device>_ms, ...")
    text = inputs.read_text(path, "latency CSV", limit=inputs.MAX_JSON_BYTES)  # a regular UTF-8 file, size-capped
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise UsageError(f"cannot read latency CSV {path}: {exc}") from None
    if not rows:
        raise UsageError(f"{path} is empty: expected a header idx, arch_str, <device>_ms, ...")
    header = [h.strip() for h in rows[0]]
    if len(header) < 3 or header[0] != "idx" or header[1] != "arch_str":
        raise UsageError(f"{path} line 1: header {','.join(header)!r} must start idx,arch_str and name one "
                         "<device>_ms column or more")
    bad = [h for h in header[2:] if not h.endswith("_ms") or len(h) <= 3]
    if bad:
        raise UsageError(f"{path} line 1: column {bad[0]!r} is not <device>_ms: name every latency column so")
    names = [h[:-3] for h in header[2:]]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UsageError(f"{path} line 1: device column {dup}_ms appears twice: keep one")
    for d in devices:
        if d not in names:
            raise UsageError(f"{path} has no column {d}_ms: its devices are {', '.join(names)}")
    idx, tokens, values = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise UsageError(f"{path} line {line}: {len(row)} fields, the header has {len(header)}: give every "
                             "row idx, arch_str and one latency per device")
        toks = [t.strip() for t in row[1].split("|")]
        if not row[1].strip() or any(not t for t in toks):
            raise UsageError(f"{path} line {line}, column arch_str: {row[1]!r} is not tokens joined by '|'")
        if tokens and len(toks) != len(tokens[0]):
            raise UsageError(f"{path} line {line}, column arch_str: {len(toks)} tokens, line 2 has "
                             f"{len(tokens[0])}: give one token per position")
        vals = []
        for col, cell in zip(header[2:], row[2:]):
            try:
                v = float(cell)
            except ValueError:
                raise UsageError(f"{path} line {line}, column {col}: {cell!r} is not a number of milliseconds") from None
            if not math.isfinite(v) or v <= 0:
                raise UsageError(f"{path} line {line}, column {col}: {cell!r} is not a positive finite latency in "
                                 "milliseconds")
            vals.append(v)
        idx.append(row[0])
        tokens.append(toks)
        values.append(vals)
    if not tokens:
        raise UsageError(f"{path} has a header but no archs")
    return LatencyCSV(path, idx, tokens, names, np.array(values, dtype=np.float64))


def transfer_report(model: TransferModel) -> dict[str, Any]:
    """What a fitted model chose (for files and logs)."""
    return {"scales": dict(model.scales), "noise": model.noise, "samples": model.samples,
            "sources": [s.name for s in model.sources], "cost_features": list(model.chosen_features)}


# -- the edgenas search space as a position × token encoding ------------------------------------------------
INACTIVE = "none"


def space_encoding(space: Any) -> OneHotEncoding:
    """Every (position, token) of `space`: positions are the stem, each block slot and the head; a token is
    the piece a position runs at one input resolution (`r<res>:<piece key>`), or `none` for an inactive slot."""
    index = block_index(space)
    keys = index.keys
    columns: set[tuple[int, str]] = set()
    optional = _optional_slots(space)
    for ri, res in enumerate(space.resolutions):
        columns.add((0, f"r{res}:{keys[index.stem_of[ri]]}"))
        for slot in range(space.max_blocks):
            for piece in np.unique(index.block_of[ri, slot]):
                columns.add((1 + slot, f"r{res}:{keys[piece]}"))
        columns.add((space.max_blocks + 1, f"r{res}:{keys[index.head_of[ri]]}"))
    for slot in np.flatnonzero(optional):
        columns.add((1 + int(slot), INACTIVE))
    return OneHotEncoding(space.max_blocks + 2, tuple(sorted(columns)))


def _optional_slots(space: Any) -> np.ndarray:
    """Per block slot: whether some allowed depth leaves it inactive."""
    out = []
    for spec in space.stages:
        out += [j >= min(spec.depths) for j in range(spec.max_depth)]
    return np.array(out, dtype=bool)


def space_tokens(space: Any, archs: Sequence[Any]) -> list[list[str]]:
    """Each arch as one token per position (see `space_encoding`)."""
    index = block_index(space)
    keys = index.keys
    lookup = index.lookup(list(archs))
    return [[INACTIVE if i < 0 else f"r{a.resolution}:{keys[i]}" for i in row] for a, row in zip(archs, lookup)]


def space_source_table(predictor: Any, space: Any, encoding: OneHotEncoding, check: Sequence[Any]) -> AdditiveTable:
    """A calibrated predictor of `space` as an additive table over `encoding`.

    A predictor that sums per-piece costs (a table, a calibrated table, a whole-model fit, a transfer) is
    additive over positions, so its table is read off exactly from a few hundred probe archs per resolution:
    one piece changed at a time from a base arch, and each stage shortened to each allowed depth. The table is
    checked on the archs `check`; a predictor that is not additive gets a least-squares fit on them instead."""
    lookup = encoding._lookup
    w = np.zeros(encoding.size)
    probes: list[Any] = []
    plan: list[tuple[str, Any]] = []
    starts = np.cumsum([0] + [s.max_depth for s in space.stages])
    for res in space.resolutions:
        depths = [s.max_depth for s in space.stages]
        base = space.arch(res, depths, [space.kernels[0]] * sum(depths), [space.expands[0]] * sum(depths))
        first = len(probes)
        probes.append(base)
        for slot in range(space.max_blocks):
            for k in space.kernels:
                for e in space.expands:
                    kernels, expands = list(base.kernels), list(base.expands)
                    kernels[slot], expands[slot] = k, e
                    probes.append(space.arch(res, depths, kernels, expands))
                    plan.append(("piece", (first, len(probes) - 1, slot)))
        for s, spec in enumerate(space.stages):
            for d in spec.depths:
                if d == spec.max_depth:
                    continue
                short = list(depths)
                short[s] = d
                keep = [i for i in range(sum(depths)) if not (starts[s] + d <= i < starts[s + 1])]
                probes.append(space.arch(res, short, [base.kernels[i] for i in keep], [base.expands[i] for i in keep]))
                plan.append(("depth", (first, len(probes) - 1, s, d)))
        plan.append(("base", first))
    ms = np.asarray(predictor.predict(probes), dtype=np.float64)
    tokens = space_tokens(space, probes)
    slot_base: dict[tuple[int, int], float] = {}
    depth_probe = {(it[0], it[2], it[3]): it[1] for kind, it in plan if kind == "depth"}
    for kind, item in plan:
        if kind != "depth":
            continue
        first, at, s, d = item
        spec = space.stages[s]
        longer = min(x for x in spec.depths if x > d)
        deeper = ms[first] if longer == spec.max_depth else ms[depth_probe[(first, s, longer)]]
        slot_base[(first, int(starts[s]) + d)] = float(deeper - ms[at])
    for kind, item in plan:
        if kind == "piece":
            first, at, slot = item
            w[lookup[(1 + slot, tokens[at][1 + slot])]] = slot_base.get((first, slot), 0.0) + ms[at] - ms[first]
    for kind, item in plan:
        if kind == "base":
            first = item
            shift = sum(v for (f, _), v in slot_base.items() if f == first)
            w[lookup[(0, tokens[first][0])]] = ms[first] - shift
    table = AdditiveTable(f"{predictor.device}:{predictor.runtime}-{predictor.precision}", 0.0, w)
    X = encoding.encode(space_tokens(space, check))
    truth = np.asarray(predictor.predict(list(check)), dtype=np.float64)
    if np.max(np.abs(table.predict(X) - truth) / np.maximum(np.abs(truth), 1e-12)) > 1e-6:
        table = fit_additive(table.name, X, truth)
    return table


@dataclasses.dataclass
class SpaceTransfer:
    """A transfer model for an edgenas space built from calibrated source predictors, and its pool of archs."""

    space: Any
    model: TransferModel
    pool: list[Any]
    X: np.ndarray
    exact_sources: list[bool]  # whether each source's table reproduces it exactly (else a least-squares fit)

    def encode(self, archs: Sequence[Any]) -> np.ndarray:
        return self.model.encoding.encode(space_tokens(self.space, archs))


def space_transfer(space: Any, sources: Sequence[Any], *, samples: int, seed: int = 0,
                   pool_size: int = 2000) -> SpaceTransfer:
    """The transfer model of `space` from source predictors, its prior scales chosen leave-one-source-out on
    their predictions for a pool of random archs, for `samples` measurements on the target."""
    # Unique archs: at most half a small space (sampling all of one would take long to find the last ones).
    pool = space.sample_many(np.random.default_rng([seed, 7919]), max(2, min(pool_size, space.size() // 2)))
    encoding = space_encoding(space)
    X = encoding.encode(space_tokens(space, pool))
    tables = [space_source_table(s, space, encoding, pool[:256]) for s in sources]
    exact = [bool(np.allclose(t.predict(X[:256]), s.predict(pool[:256]), rtol=1e-6)) for t, s in zip(tables, sources)]
    measured = np.stack([np.asarray(s.predict(pool), dtype=np.float64) for s in sources], axis=1)
    scales = choose_scales(encoding, X, measured, [t.name for t in tables], samples=samples, seed=seed, tables=tables)
    model = TransferModel(encoding, tables, X, scales=scales, analytic=space_analytic_costs(space, encoding),
                          absolute_costs=all(exact))
    return SpaceTransfer(space, model, pool, X, exact)


def space_analytic_costs(space: Any, encoding: OneHotEncoding) -> dict[str, np.ndarray]:
    """Per column of `encoding`, the analytic costs of its piece (dense and depthwise MACs, elementwise values)."""
    index = block_index(space)
    piece_of = {key: i for i, key in enumerate(index.keys)}
    costs = index.analytic_costs()
    out = {}
    for f, name in enumerate(ANALYTIC_FEATURES[:3]):
        column = np.zeros(encoding.size)
        for j, (_, token) in enumerate(encoding.columns):
            if token != INACTIVE:
                column[j] = costs[piece_of[token.split(":", 1)[1]], f]
        out[name] = column
    return out
