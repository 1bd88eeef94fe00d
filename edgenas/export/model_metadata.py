"""Each exported file's contract in its own metadata: TFLite Support metadata inside a .tflite, `metadata_props`
inside a .onnx.

TFLite: the `ModelMetadata` flatbuffer of TFLite Support's `metadata_schema.fbs` (built with the `flatbuffers`
package and the schema's generated module, vendored as `edgenas.export.tflite_metadata_schema`) stored in a
model buffer named by a `TFLITE_METADATA` entry of the model (the model rewritten with TFLite's own generated
schema module, `ai_edge_litert.schema_py_generated`), and the associated files (labels.txt, contract.json)
appended to the file as an uncompressed zip, as TFLite Support's MetadataPopulator packs them. The input
tensor carries `ImageProperties` (colour space, size) and `NormalizationOptions` (mean and std on 0-255 values),
which MediaPipe's ImageClassifier needs; the output tensor carries the class names as a `TENSOR_AXIS_LABELS`
file.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.artifacts import atomic_write_bytes
from edgenas.export.contract import LABELS_TXT, labels_text

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
TFLITE_IDENTIFIER = b"TFL3"
MIN_PARSER_VERSION = "1.0.0"  # ImageProperties, NormalizationOptions, TENSOR_AXIS_LABELS: all in version 1.0.0
CONTRACT_JSON = "contract.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so exporting twice writes the same bytes


def file_contract(contract: Mapping[str, Any], io_: Mapping[str, Any]) -> dict[str, Any]:
    """The contract one file carries: the model's, with the file's own layout, shapes, dtypes and quantization."""
    return {**contract, **io_}


def onnx_props(contract: Mapping[str, Any]) -> dict[str, str]:
    """`metadata_props` of an ONNX file: the contract's keys, each value a string (JSON for all but strings)."""
    return {key: value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            for key, value in contract.items()}


def write_onnx_metadata(path: str | os.PathLike, contract: Mapping[str, Any], io_: Mapping[str, Any]) -> None:
    """Set the file's contract as `metadata_props` (replacing earlier entries of the same keys)."""
    # deferred: onnx loads only when this runs, not on import
    import onnx

    model = onnx.load(str(path))
    props = onnx_props(file_contract(contract, io_))
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    atomic_write_bytes(Path(path), model.SerializeToString())


def _metadata_buffer(contract: Mapping[str, Any], io_: Mapping[str, Any], name: str) -> bytes:
    """The ModelMetadata flatbuffer of one .tflite file."""
    # deferred: flatbuffers (the [tflite] extra) loads only when this runs, not on import
    import flatbuffers

    from edgenas.export import tflite_metadata_schema as md

    mean, std = [float(v) for v in contract["mean"]], [float(v) for v in contract["std"]]
    image = md.ImagePropertiesT()
    image.colorSpace = md.ColorSpaceType.RGB if contract["color_space"] == "RGB" else md.ColorSpaceType.GRAYSCALE
    image.defaultSize = md.ImageSizeT()
    image.defaultSize.width, image.defaultSize.height = int(contract["width"]), int(contract["height"])
    normalisation = md.ProcessUnitT()
    normalisation.optionsType = md.ProcessUnitOptions.NormalizationOptions
    normalisation.options = md.NormalizationOptionsT()
    normalisation.options.mean, normalisation.options.std = mean, std
    stats = md.StatsT()
    stats.min = [(0.0 - m) / s for m, s in zip(mean, std)]
    stats.max = [(255.0 - m) / s for m, s in zip(mean, std)]

    inp = md.TensorMetadataT()
    inp.name = "image"
    inp.description = (f"{contract['color_space']} image, {contract['height']}x{contract['width']}, "
                       f"{io_['layout']}, {io_['input_dtype']}: (value - mean) / std of 0-255 values"
                       + ("" if not io_.get("input_quantization") else
                          ", then quantized with the tensor's scale and zero point"))
    inp.content = md.ContentT()
    inp.content.contentPropertiesType = md.ContentProperties.ImageProperties
    inp.content.contentProperties = image
    inp.processUnits = [normalisation]
    inp.stats = stats

    labels = md.AssociatedFileT()
    labels.name = LABELS_TXT
    labels.description = "class names, one a line, in the order of the output"
    labels.type = md.AssociatedFileType.TENSOR_AXIS_LABELS
    out = md.TensorMetadataT()
    out.name = "logits"
    out.description = f"{contract['output']} over {contract['num_classes']} classes (softmax gives probabilities)"
    out.content = md.ContentT()
    out.content.contentPropertiesType = md.ContentProperties.FeatureProperties
    out.content.contentProperties = md.FeaturePropertiesT()
    out.stats = md.StatsT()
    out.associatedFiles = [labels]

    graph = md.SubGraphMetadataT()
    graph.name = "image_classifier"
    graph.inputTensorMetadata = [inp]
    graph.outputTensorMetadata = [out]
    contract_file = md.AssociatedFileT()
    contract_file.name = CONTRACT_JSON
    contract_file.description = "the input contract as JSON (the keys of card.json's contract)"
    contract_file.type = md.AssociatedFileType.UNKNOWN
    model = md.ModelMetadataT()
    model.name = name
    model.description = "Image classifier exported by edgenas: see contract.json and the model card (card.md)."
    model.author = "edgenas"
    model.subgraphMetadata = [graph]
    model.associatedFiles = [contract_file]
    model.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


def write_tflite_metadata(path: str | os.PathLike, contract: Mapping[str, Any], io_: Mapping[str, Any],
                          name: str = "edgenas image classifier") -> None:
    """Write the file's metadata and associated files into the .tflite at `path` (in place, atomically); an
    earlier edgenas metadata entry is replaced, the graph and weights are kept as they are."""
    # deferred: flatbuffers, ai_edge_litert (the [tflite] extra) load only when this runs, not on import
    import flatbuffers
    from ai_edge_litert import schema_py_generated as tfl

    path = Path(path)
    data = path.read_bytes()
    end = _flatbuffer_end(data)
    model = tfl.ModelT.InitFromObj(tfl.Model.GetRootAs(data[:end], 0))
    if any(getattr(b, "offset", 0) for b in model.buffers or []):
        raise ValueError(f"{path.name} keeps buffers after its flatbuffer (a model over 2 GB): its metadata is not "
                         "written in place")
    entries = [m for m in (model.metadata or []) if _name(m.name) != METADATA_NAME]
    model.buffers = [_AlignedBuffer(b.data) for b in (model.buffers or [])]
    model.buffers.append(_AlignedBuffer(np.frombuffer(_metadata_buffer(contract, io_, name), np.uint8)))
    entry = tfl.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = entries + [entry]
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), TFLITE_IDENTIFIER)
    packed = io.BytesIO(bytes(builder.Output()))
    with zipfile.ZipFile(packed, "a", compression=zipfile.ZIP_STORED) as archive:
        for file_name, text in ((LABELS_TXT, labels_text(contract)),
                                (CONTRACT_JSON, json.dumps(file_contract(contract, io_), indent=1) + "\n")):
            archive.writestr(zipfile.ZipInfo(file_name, date_time=_ZIP_TIME), text.encode("utf-8"))
    atomic_write_bytes(path, packed.getvalue())


class _AlignedBuffer:
    """A model buffer packed with its bytes aligned to 16, as TFLite's schema asks (`force_align: 16`; the
    generated Python module aligns to the element size only)."""

    ALIGN = 16

    def __init__(self, data: Any) -> None:
        self.data = None if data is None else np.ascontiguousarray(np.asarray(data, dtype=np.uint8).reshape(-1))

    def Pack(self, builder: Any) -> int:  # noqa: N802 (the generated modules' name)
        # deferred: ai_edge_litert (the [tflite] extra) loads only when this runs, not on import
        from ai_edge_litert import schema_py_generated as tfl

        offset = None
        if self.data is not None:
            payload = self.data.tobytes()
            builder.StartVector(1, len(payload), self.ALIGN)
            builder.head = builder.head - len(payload)
            builder.Bytes[builder.head:builder.head + len(payload)] = payload
            builder.vectorNumElems = len(payload)
            offset = builder.EndVector()
        tfl.BufferStart(builder)
        if offset is not None:
            tfl.BufferAddData(builder, offset)
        return tfl.BufferEnd(builder)


def _name(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _flatbuffer_end(data: bytes) -> int:
    """The flatbuffer's length in a .tflite that may carry a zip of associated files after it (from an earlier
    metadata write): the offset of that zip's first local header, else the whole file."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        offsets = [info.header_offset for info in archive.infolist()]
    return min(offsets) if offsets else len(data)


def read_tflite_associated_file(path: str | os.PathLike, name: str) -> bytes:
    """One associated file packed in a .tflite (labels.txt, contract.json)."""
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)
