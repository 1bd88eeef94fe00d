"""Latency tables and calibrated latency predictors, one per device, runtime and precision.

Public interface (other stages build on it):

    LatencyPredictor                      protocol: .predict(archs) -> np.ndarray (ms), .device, .runtime,
                                          .precision, .space, .save(path)
    load_latency_predictor(path_or_device_name, *, runtime=None, precision=None, space=None)
    calibrate(device, space, *, budget, runtime, precision, store, ...) -> predictor
    calibrate_transfer(device, space, *, sources, samples=10, store, ...) -> predictor
    evaluate(device, space, *, holdout, store, ...) -> LatencyEvaluation
    LatencyTable, BlockIndex

Nothing heavy is imported until a name is used (torch loads only to export models). `calibrate` and
`evaluate` share their names with their modules: once `edgenas.latency.calibrate` (or `.evaluate`) has been
imported anywhere, Python's import system makes the package attribute that module, so import the functions
from their modules (`from edgenas.latency.calibrate import calibrate`).
"""

from __future__ import annotations

from edgenas._lazy import lazy_attributes

_LAZY = {
    "LatencyPredictor": "edgenas.latency.predictors",
    "CalibratedPredictor": "edgenas.latency.predictors",
    "TablePredictor": "edgenas.latency.predictors",
    "WholeModelPredictor": "edgenas.latency.predictors",
    "MacsPredictor": "edgenas.latency.predictors",
    "TransferPredictor": "edgenas.latency.predictors",
    "load_latency_predictor": "edgenas.latency.calibrate",
    "calibrate": "edgenas.latency.calibrate",
    "calibrate_transfer": "edgenas.latency.calibrate",
    "CalibrationReport": "edgenas.latency.calibrate",
    "evaluate": "edgenas.latency.predictor_eval",
    "LatencyEvaluation": "edgenas.latency.predictor_eval",
    "LatencyTable": "edgenas.latency.table",
    "BlockIndex": "edgenas.latency.blocks",
    "block_index": "edgenas.latency.blocks",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes('edgenas.latency', _LAZY, globals())
