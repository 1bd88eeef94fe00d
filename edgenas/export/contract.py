"""The input contract of an exported model, decided once from the dataset it was trained on, and written
everywhere a client looks (card.json, labels.txt, each file's metadata).

A client prepares an image as the dataset's evaluation transform does, then feeds `(value - mean) / std`,
`value` the 0-255 pixel values, in the file's layout. MediaPipe's ImageClassifier accepts only one mean and one
std for all channels; a model trained with per-channel statistics (ImageNet's, or a folder's own) therefore
takes its input normalised uniformly, `(value - 127.5) / 127.5`, and applies the per-channel part itself, as a
depthwise 1x1 convolution in front of the network (`NormalisedInput`). That convolution is exact: it maps
the uniform values to the trained ones, `(value / 255 - m_c) / s_c`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from edgenas.data.transforms import CROP_FRACTION
from edgenas.nn.static import ConvBNAct

CONTRACT_VERSION = 1
LABELS_TXT = "labels.txt"
UNIFORM_MEAN = 127.5  # the file's input when the training normalisation differs between channels: [-1, 1]
UNIFORM_STD = 127.5


def _uniform(values: Sequence[float]) -> bool:
    return all(abs(v - values[0]) <= 1e-6 * max(1.0, abs(values[0])) for v in values)


def input_contract(dataset: Any, resolution: int) -> dict[str, Any]:
    """The contract of a model trained on `dataset`, fed at `resolution` (the arch's): what every file takes
    (colour space, size, resize rule, mean and std on 0-255 values) and gives (logits over the class names)."""
    channels = int(dataset.in_channels)
    trained_mean = [float(m) * 255.0 for m in np.asarray(dataset.mean).reshape(-1)]
    trained_std = [float(s) * 255.0 for s in np.asarray(dataset.std).reshape(-1)]
    inside = not (_uniform(trained_mean) and _uniform(trained_std))
    streamed = bool(getattr(dataset, "streamed", False))
    if streamed:  # edgenas.data.transforms.eval_transform, on images opened by edgenas.data.images.open_image
        resize = {"rule": "shorter_side_then_centre_crop", "shorter_side": math.ceil(resolution / CROP_FRACTION),
                  "crop_fraction": CROP_FRACTION, "interpolation": "bilinear", "jpeg_draft": True}
    else:  # a small set held in memory: each image stretched to the set's size, then to the resolution
        resize = {"rule": "stretch", "shorter_side": None, "crop_fraction": 1.0, "interpolation": "bilinear",
                  "jpeg_draft": False}
        held = int(getattr(dataset, "image_size", resolution))
        if held != resolution:
            resize["held_at"] = held  # stretched to held x held first, then resized (bilinear) to the resolution
    return {
        "contract_version": CONTRACT_VERSION,
        "color_space": "RGB" if channels == 3 else "GRAYSCALE",
        "channels": channels,
        "height": int(resolution),
        "width": int(resolution),
        "resize": resize,
        "exif_orientation": "applied" if streamed else "ignored",
        "transparency": "composited on white" if streamed else "dropped",
        "value_range": [0, 255],
        "mean": [UNIFORM_MEAN] * channels if inside else [round(v, 6) for v in trained_mean],
        "std": [UNIFORM_STD] * channels if inside else [round(v, 6) for v in trained_std],
        "normalised_inside": ({"mean": [round(v, 6) for v in trained_mean], "std": [round(v, 6) for v in trained_std]}
                              if inside else None),
        "output": "logits",
        "num_classes": len(dataset.class_names),
        "labels": [str(name) for name in dataset.class_names],
        "labels_file": LABELS_TXT,
    }


class NormalisedInput(nn.Module):
    """A static subnet fed uniformly normalised input: a depthwise 1x1 convolution maps it to the network's
    per-channel normalisation, then the network. The TFLite and ONNX writers walk it (`tflite_plan`)."""

    def __init__(self, net: nn.Module, contract: Mapping[str, Any]) -> None:
        super().__init__()
        inside = contract["normalised_inside"]
        c = int(contract["channels"])
        file_mean, file_std = np.array(contract["mean"]), np.array(contract["std"])
        net_mean, net_std = np.array(inside["mean"]), np.array(inside["std"])
        # value = file_mean + file_std * u; the network wants (value - net_mean) / net_std = a * u + b
        a, b = file_std / net_std, (file_mean - net_mean) / net_std
        self.normalise = ConvBNAct(c, c, 1, groups=c, bn=False, bias=True)
        with torch.no_grad():
            self.normalise.conv.weight.copy_(torch.tensor(a, dtype=torch.float32).view(c, 1, 1, 1))
            self.normalise.conv.bias.copy_(torch.tensor(b, dtype=torch.float32))
        self.net = net
        for name in ("resolution", "in_channels", "arch"):
            if hasattr(net, name):
                setattr(self, name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(x))

    def tflite_plan(self) -> list[tuple[str, Any]]:
        return [("normalise", self.normalise), ("net", self.net)]

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return self.net.example_input(batch)


def to_file_input(images: np.ndarray | None, contract: Mapping[str, Any]) -> np.ndarray | None:
    """Images normalised as the network was trained (NCHW float32) turned into what the files take (the
    contract's uniform normalisation) when the model normalises per channel inside; else unchanged."""
    inside = contract.get("normalised_inside")
    if images is None or not inside:
        return images
    shape = (1, -1, 1, 1)
    net_mean, net_std = np.array(inside["mean"]).reshape(shape), np.array(inside["std"]).reshape(shape)
    mean, std = np.array(contract["mean"]).reshape(shape), np.array(contract["std"]).reshape(shape)
    values = images.astype(np.float64) * net_std + net_mean
    return np.ascontiguousarray((values - mean) / std, dtype=np.float32)


def file_io(fmt: str, path: Any) -> dict[str, Any]:
    """What one exported file takes and gives, read from the file: layout, shapes, dtypes and, for quantized
    input or output, the scale and zero point (`real = scale * (q - zero_point)`)."""
    if fmt == "onnx":
        # deferred: onnx loads only when this runs, not on import
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        types = {1: "float32", 3: "int8", 2: "uint8"}

        def tensor(value: Any) -> tuple[list[int], str]:
            t = value.type.tensor_type
            return [int(d.dim_value) if d.dim_value else -1 for d in t.shape.dim], types.get(t.elem_type, str(t.elem_type))

        (in_shape, in_dtype), (out_shape, out_dtype) = tensor(model.graph.input[0]), tensor(model.graph.output[0])
        in_quant = out_quant = None
        in_name, out_name = model.graph.input[0].name, model.graph.output[0].name
    else:
        # deferred: ai_edge_litert (the [tflite] extra) loads only when this runs, not on import
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        in_shape, out_shape = [int(d) for d in inp["shape"]], [int(d) for d in out["shape"]]
        in_dtype, out_dtype = np.dtype(inp["dtype"]).name, np.dtype(out["dtype"]).name
        in_quant, out_quant = _quant(inp), _quant(out)
        in_name, out_name = str(inp["name"]), str(out["name"])
    layout = "NHWC" if len(in_shape) == 4 and in_shape[3] in (1, 3) and in_shape[1] != in_shape[3] else "NCHW"
    return {"layout": layout, "input_name": in_name, "input_shape": in_shape, "input_dtype": in_dtype,
            "input_quantization": in_quant, "output_name": out_name, "output_shape": out_shape,
            "output_dtype": out_dtype, "output_quantization": out_quant}


def _quant(detail: Mapping[str, Any]) -> dict[str, float] | None:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if not scale:
        return None
    return {"scale": float(scale), "zero_point": int(zero_point)}


def labels_text(contract: Mapping[str, Any]) -> str:
    """labels.txt: one class name a line, in the order of the output."""
    return "".join(f"{name}\n" for name in contract["labels"])
