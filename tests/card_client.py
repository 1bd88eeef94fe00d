"""An app developer's client: feeds an exported file using card.json alone (it never imports edgenas).

    python card_client.py BUNDLE_DIR FILE_NAME IMAGE...   prints one line of JSON: the top class index per image

Everything it needs (size, colour space, resize rule, mean and std on 0-255 values, layout, int8 scale and zero
point, labels) comes from BUNDLE_DIR/card.json.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def prepare(path: str, contract: dict) -> np.ndarray:
    """One image as the contract says: H x W x C uint8-valued pixels (float32), before normalisation."""
    mode = "RGB" if contract["color_space"] == "RGB" else "L"
    w, h, resize = contract["width"], contract["height"], contract["resize"]
    im = Image.open(path)
    if resize["rule"] == "stretch":
        im = im.convert(mode).resize((w, h), Image.BILINEAR)
    else:
        short = resize["shorter_side"]
        if resize["jpeg_draft"]:
            im.draft(im.mode, (im.width * short // min(im.size), im.height * short // min(im.size)))
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        im = im.convert(mode)
        k = short / min(im.size)
        im = im.resize((max(w, round(im.width * k)), max(h, round(im.height * k))), Image.BILINEAR)
        left, top = (im.width - w) // 2, (im.height - h) // 2
        im = im.crop((left, top, left + w, top + h))
    return np.asarray(im, np.float32).reshape(h, w, contract["channels"])


def predict(bundle: Path, file_name: str, images: list[str]) -> list[int]:
    card = json.loads((bundle / "card.json").read_text())
    contract = card["contract"]
    io = next(f["io"] for f in card["files"] if f["name"] == file_name)
    mean, std = np.float32(contract["mean"]), np.float32(contract["std"])
    out = []
    if file_name.endswith(".onnx"):
        import onnxruntime as ort

        run = ort.InferenceSession(str(bundle / file_name)).run
    else:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(bundle / file_name))
        interpreter.allocate_tensors()
        inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    for path in images:
        x = (prepare(path, contract) - mean) / std
        x = x.transpose(2, 0, 1)[None] if io["layout"] == "NCHW" else x[None]
        q = io["input_quantization"]
        if q is not None:
            x = np.clip(np.round(x / q["scale"] + q["zero_point"]), -128 if io["input_dtype"] == "int8" else 0,
                        127 if io["input_dtype"] == "int8" else 255)
        x = x.astype(io["input_dtype"])
        if file_name.endswith(".onnx"):
            y = run(None, {io["input_name"]: x})[0][0]
        else:
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            y = interpreter.get_tensor(outp["index"])[0]
        q = io["output_quantization"]
        y = y.astype(np.float32) if q is None else (y.astype(np.float32) - q["zero_point"]) * q["scale"]
        out.append(int(np.argmax(y)))
    assert len(contract["labels"]) == len(y) and math.isfinite(float(y.max()))
    return out


if __name__ == "__main__":
    top = predict(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
    assert not any(name == "edgenas" or name.startswith("edgenas.") for name in sys.modules), "edgenas imported"
    print(json.dumps(top))
