"""Accuracy dataset (arch, top-1 on the holdout split) and the accuracy predictor fitted on it.

Public interface: `load_accuracy_predictor(path)`, `AccuracyPredictor` (`.predict(archs)`, `.fit`,
`.save`), `AccuracyDataset`, `sample_archs`, `fit_predictor(checkpoint, ...)`. Nothing heavy is
imported until a name is used.
"""

from __future__ import annotations

from edgenas._lazy import lazy_attributes

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

#: The accuracy predictors `fit_predictor` fits: Once-for-All's MLP on the one-hot encoding (the default), or a
#: Gaussian process on the one-hot encoding and the cost features (`--kind gp`, `edgenas.accuracy.gp`, with an
#: interval: on the demo's supernet it ranked 60 unseen subnets at tau 0.345 against the MLP's 0.273, and predicts a
#: search's batch 30x faster). The GP is not the default yet: fitted to the near-equal accuracies of an untrained or
#: barely trained supernet it predicts one figure for every subnet, and a run's accuracy-latency front collapses to one
#: point (tests/pipeline/test_run_config.py). docs/decisions.md ("The accuracy side ... issue 43") compares them.
KINDS = ("mlp", "gp")
DEFAULT_KIND = "mlp"


__getattr__, __dir__ = lazy_attributes('edgenas.accuracy', _LAZY, globals())
