"""The model card's contract table and its two client snippets (ONNX Runtime, LiteRT), written from the contract.

Each snippet loads `photo.jpg` with Pillow, prepares it as the contract says and prints the top class name
from labels.txt; it runs as printed in the card's folder (a test runs both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _numbers(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def contract_table(contract: Mapping[str, Any], files: Sequence[Mapping[str, Any]]) -> list[str]:
    """The contract as a short Markdown table, then each file's layout, dtype and clients."""
    resize = contract["resize"]
    if resize["rule"] == "stretch":
        rule = f"stretch to {contract['width']}x{contract['height']}, {resize['interpolation']}"
        if resize.get("held_at"):
            rule += f" (trained on images held at {resize['held_at']} px, then resized)"
    else:
        rule = (f"shorter side to {resize['shorter_side']} px ({resize['interpolation']}"
                f"{', JPEG draft decoding' if resize.get('jpeg_draft') else ''}), centre {contract['width']}x"
                f"{contract['height']} crop (fraction {resize['crop_fraction']:g})")
    inside = contract.get("normalised_inside")
    rows = [
        ("colour space", f"{contract['color_space']} ({contract['channels']} channel(s)); EXIF orientation "
                         f"{contract['exif_orientation']}; transparency {contract['transparency']}"),
        ("size", f"{contract['height']} x {contract['width']}"),
        ("resize", rule),
        ("normalise", f"(value - mean) / std on 0-255 values, mean {_numbers(contract['mean'])}, std "
                      f"{_numbers(contract['std'])}" + ("" if not inside else
                                                       f" (the file then applies the trained per-channel mean "
                                                       f"{_numbers(inside['mean'])}, std {_numbers(inside['std'])})")),
        ("output", f"{contract['output']} over {contract['num_classes']} classes (softmax for probabilities)"),
        ("labels", f"{contract['labels_file']}: {', '.join(contract['labels'][:10])}"
                   f"{', ...' if len(contract['labels']) > 10 else ''}"),
    ]
    lines = ["## Input contract", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "| file | layout | input | output | int8 input (scale, zero point) | int8 output | clients |",
              "|---|---|---|---|---|---|---|"]
    for f in files:
        io_ = f.get("io")
        if not io_:
            continue

        def quant(q: Mapping[str, Any] | None) -> str:
            return "-" if not q else f"{q['scale']:.6g}, {q['zero_point']}"

        loads = "; ".join(f"{name}: {verdict}" for name, verdict in (f.get("clients") or {}).items())
        lines.append(f"| {f['name']} | {io_['layout']} | {io_['input_dtype']} {io_['input_shape']} | "
                     f"{io_['output_dtype']} {io_['output_shape']} | {quant(io_['input_quantization'])} | "
                     f"{quant(io_['output_quantization'])} | {loads} |")
    return lines


def _prepare(contract: Mapping[str, Any]) -> list[str]:
    """Lines that open photo.jpg as `im` and leave `x`, the normalised HxWxC float32 array."""
    mode = "RGB" if contract["channels"] == 3 else "L"
    w, h = contract["width"], contract["height"]
    resize = contract["resize"]
    if resize["rule"] == "stretch":
        lines = [f'im = Image.open("photo.jpg").convert("{mode}").resize(({w}, {h}), Image.BILINEAR)']
    else:
        s = resize["shorter_side"]
        lines = ['im = Image.open("photo.jpg")',
                 f"im.draft(im.mode, (im.width * {s} // min(im.size), im.height * {s} // min(im.size)))",
                 f'im = ImageOps.exif_transpose(im).convert("{mode}")',
                 f"k = {s} / min(im.size)",
                 f"im = im.resize((max({w}, round(im.width * k)), max({h}, round(im.height * k))), Image.BILINEAR)",
                 f"left, top = (im.width - {w}) // 2, (im.height - {h}) // 2",
                 f"im = im.crop((left, top, left + {w}, top + {h}))"]
    mean, std = contract["mean"], contract["std"]
    lines.append(f"x = (np.asarray(im, np.float32).reshape({h}, {w}, {contract['channels']}) - "
                 f"np.float32({_numbers(mean)})) / np.float32({_numbers(std)})")
    return lines


def onnx_snippet(contract: Mapping[str, Any], file_name: str = "model.onnx") -> str:
    """ONNX Runtime: NCHW float32 input."""
    return "\n".join([
        "import numpy as np",
        "import onnxruntime as ort",
        "from PIL import Image, ImageOps",
        *_prepare(contract),
        f'session = ort.InferenceSession("{file_name}")',
        "logits = session.run(None, {session.get_inputs()[0].name: x.transpose(2, 0, 1)[None]})[0][0]",
        'labels = open("labels.txt", encoding="utf-8").read().splitlines()',
        "print(labels[int(np.argmax(logits))])",
    ]) + "\n"


def litert_snippet(contract: Mapping[str, Any], file_name: str) -> str:
    """LiteRT (ai_edge_litert): NHWC input, quantized with the input tensor's scale and zero point if it is int8."""
    return "\n".join([
        "import numpy as np",
        "from ai_edge_litert.interpreter import Interpreter",
        "from PIL import Image, ImageOps",
        *_prepare(contract),
        f'interpreter = Interpreter(model_path="{file_name}")',
        "interpreter.allocate_tensors()",
        "inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]",
        "if inp[\"dtype\"] != np.float32:  # int8 input: real = scale * (q - zero_point)",
        "    scale, zero = inp[\"quantization\"]",
        "    x = np.clip(np.round(x / scale + zero), -128, 127)",
        "interpreter.set_tensor(inp[\"index\"], x[None].astype(inp[\"dtype\"]))",
        "interpreter.invoke()",
        'labels = open("labels.txt", encoding="utf-8").read().splitlines()',
        "print(labels[int(np.argmax(interpreter.get_tensor(out[\"index\"])[0]))])",
    ]) + "\n"


def snippets_markdown(contract: Mapping[str, Any], files: Sequence[Mapping[str, Any]]) -> list[str]:
    """The card's "Run it" section: one ONNX Runtime and one LiteRT snippet for the files the bundle holds."""
    names = {f["format"]: f["name"] for f in files}
    lines = ["## Run it", "", "Each snippet prints the top class of `photo.jpg`, run in this folder."]
    if "onnx" in names:
        lines += ["", "ONNX Runtime:", "", "```python", onnx_snippet(contract, names["onnx"]).rstrip("\n"), "```"]
    tflite = names.get("tflite") or names.get("tflite-int8")
    if tflite:
        lines += ["", f"LiteRT (`pip install ai-edge-litert`; for `{names.get('tflite-int8', tflite)}` change the "
                  "file name):", "", "```python", litert_snippet(contract, tflite).rstrip("\n"), "```"]
    if contract["channels"] == 3:
        lines += ["", "MediaPipe Tasks' ImageClassifier loads each .tflite whose clients say so as it is: its "
                  "metadata holds the size, colour space, normalisation and labels."]
    else:
        lines += ["", "MediaPipe Tasks' ImageClassifier takes RGB input only: for this greyscale model use ONNX "
                  "Runtime, LiteRT or TFLite Micro (the snippets above)."]
    return lines


def card_snippets(card_md: str) -> list[str]:
    """The Python snippets of a card.md, as printed (for running them)."""
    out, block = [], None
    for line in card_md.splitlines():
        if line.strip() == "```python":
            block = []
        elif line.strip() == "```" and block is not None:
            out.append("\n".join(block) + "\n")
            block = None
        elif block is not None:
            block.append(line)
    return out
