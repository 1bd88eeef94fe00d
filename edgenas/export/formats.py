"""The export formats and the file each device runs: names only, no torch (a run config is checked with them
before anything heavy is imported)."""

from __future__ import annotations

from edgenas.errors import UsageError

FORMATS = ("onnx", "tflite", "tflite-int8")
FILE_NAMES = {"onnx": "model.onnx", "tflite": "model_fp32.tflite", "tflite-int8": "model_int8.tflite"}
# The file a device runs, by (runtime, deployed precision): the one table the deploy stage, the export's
# measurement and the pipeline's report read.
DEPLOYED_FORMATS = {
    ("onnxruntime", "fp32"): "onnx",
    ("tflite", "fp32"): "tflite",
    ("tflite", "int8"): "tflite-int8",
}


def deployed_format(runtime: str, precision: str) -> str:
    """The export format a device of `runtime` runs at `precision` (one line naming the choices otherwise)."""
    try:
        return DEPLOYED_FORMATS[(runtime, precision)]
    except KeyError:
        offered = ", ".join(f"{r} {p}" for r, p in DEPLOYED_FORMATS)
        raise UsageError(f"edgenas does not deploy {precision} models to a {runtime} device: choose one of "
                         f"{offered}") from None
