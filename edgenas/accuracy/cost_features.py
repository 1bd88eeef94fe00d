"""Features of a subnet beyond its one-hot encoding: its cost (log MACs, log params, resolution) and, where a supernet
is given, a zero-cost proxy of its trained weights (log synflow), standardised on the fitting subnets.

White et al. (NeurIPS 2021) found such features help a predictor most at small sample sizes; the comparison on the
demo's supernet is in docs/decisions.md ("Accuracy side: predictor variants").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgenas.accuracy.gp import cost_columns
from edgenas.accuracy.proxies import ProxyPredictor, dataset_batches
from edgenas.space import Arch, SearchSpace


@dataclass
class CostFeatures:
    """encoding + standardised cost columns (+ log synflow with a supernet): `features(archs) -> (n, d)`."""

    space: SearchSpace
    mean: np.ndarray
    scale: np.ndarray
    proxy: Any = None  # a ProxyPredictor (synflow) or None

    @classmethod
    def fit(cls, space: SearchSpace, archs: Sequence[Arch], *, supernet: Any = None, dataset: Any = None) -> CostFeatures:
        proxy = None
        if supernet is not None and dataset is not None:
            proxy = ProxyPredictor("synflow", supernet=supernet, batches=dataset_batches(dataset))
        raw = cls._raw(space, archs, proxy)
        return cls(space, raw.mean(axis=0), raw.std(axis=0) + 1e-9, proxy)

    @staticmethod
    def _raw(space: SearchSpace, archs: Sequence[Arch], proxy: Any) -> np.ndarray:
        cols = cost_columns(space, archs)
        if proxy is not None:
            cols = np.concatenate([cols, np.log(np.maximum(proxy.raw(archs), 1e-30))[:, None]], axis=1)
        return cols

    def __call__(self, archs: Sequence[Arch]) -> np.ndarray:
        archs = list(archs)
        z = (self._raw(self.space, archs, self.proxy) - self.mean) / self.scale
        return np.concatenate([self.space.encode(archs), z], axis=1).astype(np.float64)
