"""A Gaussian-process accuracy predictor on a subnet's encoding and cost: a prediction with its interval.

Fitted with scikit-learn's `GaussianProcessRegressor` (a constant times an RBF kernel on the one-hot encoding and the
standardised cost columns of `cost_features`, plus a white-noise term for the measurement's own noise) on the
log-odds of top-1; predicts in numpy from the saved training features and weights (no scikit-learn, no torch at
search time). Saved as `.npz` arrays with a JSON header (no pickle), read by `load_accuracy_predictor`.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.artifacts import atomic_write_bytes, undefined_as_null, write_manifest
from edgenas.cost import stats_table
from edgenas.errors import UsageError
from edgenas.space import Arch, SearchSpace

FORMAT = "edgenas-accuracy-gp"


def cost_columns(space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
    """(n, 3): log MACs, log params, resolution of each arch."""
    stats = stats_table(space).compute(list(archs))
    return np.stack([np.log(np.asarray(stats["macs"], float)), np.log(np.asarray(stats["params"], float)),
                     np.array([a.resolution for a in archs], float)], axis=1)


def _cost_of(space: SearchSpace, archs: Any) -> np.ndarray:
    """log MACs, log params, resolution of `archs` (a list, or a search's ArchBatch: from its genomes)."""
    stats_of = getattr(archs, "stats", None)
    if callable(stats_of) and getattr(archs, "codec", None) is not None and archs.codec.space == space:
        stats = stats_of()
        res = np.asarray(archs.codec.space.resolutions)[np.asarray(archs.genomes)[:, 0]]
        return np.stack([np.log(np.asarray(stats["macs"], float)), np.log(np.asarray(stats["params"], float)),
                         np.asarray(res, float)], axis=1)
    return cost_columns(space, list(archs))


class GPAccuracyPredictor:
    """`.predict(archs)` -> top-1 in (0, 1); `.interval(archs, z)` -> (low, high) at z standard deviations."""

    def __init__(self, space: SearchSpace, *, train_x: np.ndarray, alpha: np.ndarray, chol: np.ndarray,
                 cost_mean: np.ndarray, cost_scale: np.ndarray, constant: float, length_scale: float, noise: float,
                 y_mean: float, y_scale: float, info: dict[str, Any] | None = None) -> None:
        self.space = space
        self.train_x, self.alpha, self.chol = train_x, alpha, chol
        self.cost_mean, self.cost_scale = cost_mean, cost_scale
        self.constant, self.length_scale, self.noise = float(constant), float(length_scale), float(noise)
        self.y_mean, self.y_scale = float(y_mean), float(y_scale)
        self.info = dict(info or {})

    # ---- features and prediction -----------------------------------------------------------------
    def features(self, archs: Any) -> np.ndarray:
        if isinstance(archs, Arch):
            archs = [archs]
        encode = getattr(archs, "encode", None)
        if callable(encode) and getattr(archs, "codec", None) is not None and archs.codec.space == self.space:
            enc = encode()
        else:
            archs = list(archs)
            enc = self.space.encode(archs)
        z = (_cost_of(self.space, archs) - self.cost_mean) / self.cost_scale
        return np.concatenate([np.asarray(enc, float), z], axis=1)

    def _kernel(self, x: np.ndarray) -> np.ndarray:
        d2 = (x * x).sum(1)[:, None] + (self.train_x * self.train_x).sum(1)[None, :] - 2.0 * x @ self.train_x.T
        return self.constant * np.exp(-0.5 * np.maximum(d2, 0.0) / self.length_scale ** 2)

    def latent(self, archs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of log-odds(top-1) (the subnet's own value, without the noise)."""
        k = self._kernel(self.features(archs))
        mean = k @ self.alpha
        v = np.linalg.solve(self.chol, k.T) if len(self.train_x) else np.zeros((0, len(k)))
        var = np.maximum(self.constant - (v * v).sum(0), 1e-12)
        return mean * self.y_scale + self.y_mean, np.sqrt(var) * self.y_scale

    def predict(self, archs: Any) -> np.ndarray:
        mean, _ = self.latent(archs)
        return 1.0 / (1.0 + np.exp(-mean))

    def interval(self, archs: Any, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
        """The predicted top-1's interval at `z` posterior standard deviations (1.96: about 95 %)."""
        mean, sd = self.latent(archs)
        return 1.0 / (1.0 + np.exp(-(mean - z * sd))), 1.0 / (1.0 + np.exp(-(mean + z * sd)))

    # ---- fitting -----------------------------------------------------------------------------------
    @classmethod
    def fit(cls, space: SearchSpace, archs: Sequence[Arch], accuracies: Sequence[float], *, seed: int = 0,
            restarts: int = 2) -> GPAccuracyPredictor:
        # deferred: sklearn loads only when this runs, not on import
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        archs = list(archs)
        y = np.asarray(accuracies, float)
        if len(y) != len(archs) or len(y) < 5:
            raise ValueError(f"a GP predictor needs at least 5 (arch, accuracy) pairs, got {len(archs)}, {len(y)}")
        cost = _cost_of(space, archs)
        cost_mean, cost_scale = cost.mean(0), cost.std(0) + 1e-9
        x = np.concatenate([space.encode(archs).astype(float), (cost - cost_mean) / cost_scale], axis=1)
        q = np.clip(y, 1e-3, 1 - 1e-3)
        z = np.log(q / (1 - q))
        y_mean, y_scale = float(z.mean()), float(z.std() + 1e-9)
        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(3.0, (1e-1, 1e3)) + WhiteKernel(0.3, (1e-4, 10.0))
        gp = GaussianProcessRegressor(kernel, n_restarts_optimizer=restarts, random_state=seed)

        # deferred: sklearn loads only when this runs, not on import
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():  # a noise level at its bound is an answer (noise-free targets), not a fault
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(x, (z - y_mean) / y_scale)
        k = gp.kernel_
        constant, length, noise = float(k.k1.k1.constant_value), float(k.k1.k2.length_scale), float(k.k2.noise_level)
        kxx = constant * np.exp(-0.5 * _sqdist(x, x) / length ** 2) + noise * np.eye(len(x))
        chol = np.linalg.cholesky(kxx)
        alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, (z - y_mean) / y_scale))
        info = {"kind": "gaussian-process", "fit": {"train_size": len(y), "constant": constant, "length_scale": length,
                                                   "noise": noise, "mean_accuracy": float(y.mean())}, "seed": seed}
        return cls(space, train_x=x, alpha=alpha, chol=chol, cost_mean=cost_mean, cost_scale=cost_scale,
                   constant=constant, length_scale=length, noise=noise, y_mean=y_mean, y_scale=y_scale, info=info)

    # ---- files ---------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, inputs: dict[str, Any] | None = None, seed: int | None = None) -> Path:
        path = Path(path)
        info = undefined_as_null(self.info)
        header = {"format": FORMAT, "version": 1, "space": self.space.to_dict(), "constant": self.constant,
                  "length_scale": self.length_scale, "noise": self.noise, "y_mean": self.y_mean,
                  "y_scale": self.y_scale, "info": info}
        buf = io.BytesIO()
        np.savez(buf, train_x=self.train_x, alpha=self.alpha, chol=self.chol, cost_mean=self.cost_mean,
                 cost_scale=self.cost_scale, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
        atomic_write_bytes(path, buf.getvalue())
        write_manifest(path, kind="accuracy_predictor", inputs=inputs, seed=seed,
                       config={"space": self.space.name, "kind": "gaussian-process"},
                       extra={"fit": info.get("fit"), "test": info.get("test")})
        return path

    @classmethod
    def from_arrays(cls, space: SearchSpace, header: dict[str, Any], data: Any, source: str) -> GPAccuracyPredictor:
        arrays = {}
        for name, ndim in (("train_x", 2), ("alpha", 1), ("chol", 2), ("cost_mean", 1), ("cost_scale", 1)):
            a = np.asarray(data[name], dtype=np.float64)
            if a.ndim != ndim or not np.isfinite(a).all():
                raise UsageError(f"{source}: {name} is not a finite {ndim}-D array: fit a new predictor")
            arrays[name] = a
        n, d = arrays["train_x"].shape
        if (d != space.encoding_size + 3 or arrays["alpha"].shape != (n,) or arrays["chol"].shape != (n, n)
                or arrays["cost_mean"].shape != (3,) or arrays["cost_scale"].shape != (3,)):
            raise UsageError(f"{source}: the arrays' shapes do not fit together or the space: fit a new predictor")
        scalars = {}
        for key in ("constant", "length_scale", "noise", "y_mean", "y_scale"):
            v = header.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
                raise UsageError(f"{source}: {key} = {v!r}: expected a number; fit a new predictor")
            scalars[key] = float(v)
        if scalars["length_scale"] <= 0 or scalars["constant"] <= 0 or scalars["y_scale"] <= 0:
            raise UsageError(f"{source}: the kernel's scales must be positive: fit a new predictor")
        info = header.get("info") if isinstance(header.get("info"), dict) else {}
        return cls(space, **arrays, **scalars, info=info)


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)
