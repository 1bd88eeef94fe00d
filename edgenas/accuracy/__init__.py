"""Accuracy dataset (arch, top-1 on the holdout split) and the accuracy predictor fitted on it.

Public interface: `load_accuracy_predictor(path)`, `AccuracyPredictor` (`.predict(archs)`, `.fit`,
`.save`), `AccuracyDataset`, `sample_archs`, `fit_predictor(checkpoint, ...)`. Nothing heavy is
imported until a name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AccuracyPredictor": "edgenas.accuracy.predictor",
    "FitConfig": "edgenas.accuracy.predictor",
    "load_accuracy_predictor": "edgenas.accuracy.predictor",
    "kendall_tau": "edgenas.accuracy.predictor",
    "rmse": "edgenas.accuracy.predictor",
    "AccuracyDataset": "edgenas.accuracy.dataset",
    "sample_archs": "edgenas.accuracy.dataset",
    "fit_predictor": "edgenas.accuracy.fit",
    "default_store_path": "edgenas.accuracy.fit",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgenas.accuracy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
