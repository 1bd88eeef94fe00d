"""What ships works in the app unchanged: each exported file carries its input contract, MediaPipe's
ImageClassifier and ONNX Runtime load the files as they are, and a client that reads card.json alone gets the
top-1 `edgenas eval` gets.

One bundle is built per test run (`shared_work`): a supernet trained briefly (`edgenas train --total-steps`) on a
folder of RGB photos (streamed, so normalised with ImageNet's per-channel statistics, which the files apply
inside), then `edgenas export` of one subnet in every format.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shared_work import shared_file

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).resolve().parents[1] / "card_client.py"
ARCH = {"resolution": 32, "depths": [2, 1, 1, 1], "kernels": [3, 5, 3, 5, 3], "expands": [3, 4, 6, 3, 4]}
CLASSES = ("amber", "moss", "slate", "rose")
TINTS = np.array([[90, 45, -45], [-45, 70, -20], [-45, -20, 80], [70, -45, 45]], np.float32)
TFLITE = ("model_fp32.tflite", "model_int8.tflite")


def _photos(root: Path, per_class: int = 40, seed: int = 5) -> None:
    """JPEG and PNG 'photos' of 72-110 px (streamed from disk): textured noise, the class a faint colour tint."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(72, 111, 2))
            base = rng.uniform(40, 200) + rng.normal(0, 35, (h, w, 1)) + rng.normal(0, 20, (h, w, 3))
            pixels = np.clip(base + TINTS[c] * rng.uniform(0.4, 1.2), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / (f"{i}.png" if i % 4 == 0 else f"{i}.jpg"), quality=90)


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edgenas.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, check=False, timeout=600)


def _build(path: Path) -> None:
    path.mkdir()
    _photos(path / "photos")
    train = _cli("train", "--dataset", f"folder:{path / 'photos'}", "--preset", "tiny", "--total-steps", "40",
                 "--no-compare", "--threads", "1", "--data-workers", "0", "--no-progress", "--out", str(path / "run"))
    assert train.returncode == 0, train.stderr[-2000:]
    export = _cli("export", "--supernet", str(path / "run" / "supernet.pt"), "--arch", json.dumps(ARCH), "--out",
                  str(path / "bundle"))
    assert export.returncode == 0, export.stderr[-2000:]


@functools.lru_cache(maxsize=1)
def built() -> Path:
    return shared_file("contract_bundle", _build)


@pytest.fixture(scope="module")
def bundle() -> Path:
    return built() / "bundle"


@pytest.fixture(scope="module")
def card(bundle) -> dict:
    return json.loads((bundle / "card.json").read_text())


def _all_photos() -> list[str]:
    return sorted(str(p) for p in (built() / "photos").rglob("*") if p.is_file())


def _client(bundle: Path, file_name: str, images: list[str]) -> list[int]:
    """card_client.py in its own process (where it asserts it never imported edgenas)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(CLIENT), str(bundle), file_name, *images], capture_output=True,
                          text=True, env=env, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _mediapipe_top(model: Path, pixels: list[np.ndarray]) -> tuple[list[str], set[str]]:
    """MediaPipe ImageClassifier's top class name per image, and every category name it gave."""
    import mediapipe as mp
    from mediapipe.tasks import python as mp_tasks
    from mediapipe.tasks.python import vision

    options = vision.ImageClassifierOptions(base_options=mp_tasks.BaseOptions(model_asset_path=str(model)),
                                            max_results=-1)
    top, names = [], set()
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for x in pixels:
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(x)))
            categories = result.classifications[0].categories
            names |= {c.category_name for c in categories}
            top.append(max(categories, key=lambda c: c.score).category_name)
    return top, names


def test_mediapipe_loads_every_tflite_unchanged_and_agrees_with_onnx_runtime(bundle, card):
    sys.path.insert(0, str(CLIENT.parent))
    from card_client import predict, prepare

    contract = card["contract"]
    photos = _all_photos()
    assert len(photos) >= 100
    # MediaPipe resizes by stretching; it gets each photo prepared (resized and cropped) as the contract says, and
    # normalises it itself from the file's metadata
    pixels = [prepare(p, contract).astype(np.uint8) for p in photos]
    onnx_top = [contract["labels"][i] for i in predict(bundle, "model.onnx", photos)]
    before = {name: (bundle / name).read_bytes() for name in TFLITE}
    for name in TFLITE:
        top, names = _mediapipe_top(bundle / name, pixels)
        assert names == set(contract["labels"]), name  # the labels packed in the file name the classes
        agreement = float(np.mean([a == b for a, b in zip(top, onnx_top)]))
        print(f"{name}: MediaPipe's top class agrees with ONNX Runtime's on {agreement:.2%} of {len(photos)} images")
        if name == "model_fp32.tflite":
            assert agreement >= 0.99
        assert (bundle / name).read_bytes() == before[name]  # loaded as it is


def test_a_client_reading_card_json_alone_gets_the_top1_of_edgenas_eval(bundle, card):
    from edgenas.data import load_dataset

    run = built() / "run"
    evaluated = _cli("eval", "--supernet", str(run / "supernet.pt"), "--arch", json.dumps(ARCH), "--dataset",
                     f"folder:{built() / 'photos'}", "--json")  # the folder it was trained on, moved into place
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    top1 = json.loads(evaluated.stdout)["results"][0]["top1"]
    dataset = load_dataset(f"folder:{built() / 'photos'}", seed=0)
    images = [os.fsdecode(bytes(f)) for f in dataset.files["val"]]
    labels = dataset.labels["val"]
    for entry in card["files"]:
        accuracy = float(np.mean(np.array(_client(bundle, entry["name"], images)) == labels))
        print(f"{entry['name']}: client top-1 {accuracy:.4f}, edgenas eval {top1:.4f}, card "
              f"{card['accuracy']['files'][entry['name']]:.4f} on {len(images)} val images")
        assert accuracy == pytest.approx(card["accuracy"]["files"][entry["name"]])  # what edgenas measured the file at
        if entry["format"] != "tflite-int8":
            assert accuracy == pytest.approx(top1)


def test_the_files_metadata_is_read_by_readers_that_are_not_edgenas(bundle, card):
    import onnx
    from ai_edge_litert import schema_py_generated as tflite_schema
    from mediapipe.tasks.metadata import metadata_schema_py_generated as metadata_schema

    contract = card["contract"]
    files = {f["name"]: f for f in card["files"]}
    props = {p.key: p.value for p in onnx.load(str(bundle / "model.onnx")).metadata_props}
    assert json.loads(props["labels"]) == contract["labels"] == (bundle / "labels.txt").read_text().splitlines()
    assert json.loads(props["mean"]) == contract["mean"] and json.loads(props["std"]) == contract["std"]
    assert json.loads(props["resize"]) == contract["resize"] and props["layout"] == "NCHW"
    assert {k: props[k] for k in ("color_space", "output")} == {"color_space": "RGB", "output": "logits"}
    for name in TFLITE:
        data = (bundle / name).read_bytes()
        model = tflite_schema.Model.GetRootAs(data, 0)
        entry = next(model.Metadata(i) for i in range(model.MetadataLength())
                     if model.Metadata(i).Name() == b"TFLITE_METADATA")
        buffer = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
        assert metadata_schema.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0)
        meta = metadata_schema.ModelMetadataT.InitFromObj(metadata_schema.ModelMetadata.GetRootAs(buffer, 0))
        graph = meta.subgraphMetadata[0]
        image = graph.inputTensorMetadata[0]
        assert image.content.contentPropertiesType == metadata_schema.ContentProperties.ImageProperties
        assert image.content.contentProperties.colorSpace == metadata_schema.ColorSpaceType.RGB
        size = image.content.contentProperties.defaultSize
        assert (size.width, size.height) == (contract["width"], contract["height"])
        unit = image.processUnits[0]
        assert unit.optionsType == metadata_schema.ProcessUnitOptions.NormalizationOptions
        assert list(unit.options.mean) == contract["mean"] and list(unit.options.std) == contract["std"]
        labels_file = graph.outputTensorMetadata[0].associatedFiles[0]
        assert labels_file.name == b"labels.txt"
        assert labels_file.type == metadata_schema.AssociatedFileType.TENSOR_AXIS_LABELS
        with zipfile.ZipFile(io.BytesIO(data)) as packed:
            assert packed.read("labels.txt").decode().splitlines() == contract["labels"]
            carried = json.loads(packed.read("contract.json"))
        assert carried == {**contract, **files[name]["io"]} and carried["layout"] == "NHWC"


def test_every_card_written_here_validates_against_the_schema(bundle, card, tmp_path_factory):
    from edgenas.export.card import CARD_SCHEMA
    from tests.export.test_subnet import exported_bundle

    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(CARD_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    cards = {"contract bundle": card, "digits bundle": exported_bundle()[0].card, "grey bundle": grey_bundle().card}
    # and every card the suite's tests have written by now, on every worker (those of files that are models)
    base = tmp_path_factory.getbasetemp()
    for path in sorted((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base).rglob("card.json")):
        written = json.loads(path.read_text())
        if all(f.get("io") is not None for f in written.get("files", [])):
            cards[str(path)] = written
    for where, written in cards.items():
        errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(json.loads(json.dumps(written)))]
        assert not errors, (where, errors[:5])
    bad = json.loads(json.dumps(card))
    bad["lineage"]["supernet"]["path"] = "/home/someone/supernet.pt"
    assert not validator.is_valid(bad)  # an absolute path in the lineage is refused


def test_both_card_snippets_run_exactly_as_printed(bundle, card, tmp_path):
    from edgenas.export.card_snippets import card_snippets

    snippets = card_snippets((bundle / "card.md").read_text())
    assert len(snippets) == 2 and "onnxruntime" in snippets[0] and "ai_edge_litert" in snippets[1]
    folder = tmp_path / "app"
    shutil.copytree(bundle, folder)
    photo = next(p for p in _all_photos() if p.endswith(".jpg"))
    shutil.copyfile(photo, folder / "photo.jpg")
    expected = card["contract"]["labels"][_client(bundle, "model.onnx", [photo])[0]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for snippet in snippets:
        done = subprocess.run([sys.executable, "-c", snippet], cwd=folder, capture_output=True, text=True, env=env,
                              check=False, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == expected


@functools.lru_cache(maxsize=1)
def grey_bundle():
    """The digits subnet (grey, 8 px digits stretched to 24 px) exported to ONNX and fp32 TFLite with its contract."""
    from edgenas.export.contract import input_contract
    from edgenas.export.subnet import ExportOptions, dataset_arrays, export_subnet
    from tests.export.test_subnet import digits, trained_subnet

    space, arch, model = trained_subnet()
    val_x, val_y = dataset_arrays(digits(), "val", arch.resolution, limit=64)
    out = Path(tempfile.mkdtemp(prefix="edgenas-grey-contract-"))
    return export_subnet(model, out, space=space, arch=arch, calibration=val_x, val_images=val_x, val_labels=val_y,
                         options=ExportOptions(formats=("onnx", "tflite", "tflite-int8"), micro=False, int8_io=True,
                                               litert_fallback=False),
                         log=lambda m: None, raise_on_problems=False, contract=input_contract(digits(), arch.resolution))


def test_a_greyscale_model_says_so_and_which_clients_load_it():
    from mediapipe.tasks.metadata import metadata_schema_py_generated as metadata_schema

    from edgenas.export.card_snippets import card_snippets

    result = grey_bundle()
    card, folder = result.card, result.out_dir
    contract = card["contract"]
    assert contract["color_space"] == "GRAYSCALE" and contract["normalised_inside"] is None
    assert contract["labels"] == [str(d) for d in range(10)] == (folder / "labels.txt").read_text().splitlines()
    assert contract["resize"]["rule"] == "stretch" and contract["resize"]["held_at"] == 8
    tflite = next(f for f in card["files"] if f["format"] == "tflite")
    assert tflite["clients"]["MediaPipe ImageClassifier"].startswith("no:")
    int8 = next(f for f in card["files"] if f["format"] == "tflite-int8")  # --int8-io: int8 in, int8 out
    assert int8["io"]["input_dtype"] == "int8" and int8["io"]["input_quantization"]["scale"] > 0
    assert int8["io"]["output_dtype"] == "int8" and int8["io"]["output_quantization"]["scale"] > 0
    assert int8["clients"]["MediaPipe ImageClassifier"].startswith("no:")
    assert tflite["clients"]["LiteRT (ai_edge_litert)"] == "yes"
    data = (folder / tflite["name"]).read_bytes()
    from ai_edge_litert import schema_py_generated as tflite_schema

    model = tflite_schema.Model.GetRootAs(data, 0)
    entry = next(model.Metadata(i) for i in range(model.MetadataLength())
                 if model.Metadata(i).Name() == b"TFLITE_METADATA")
    meta = metadata_schema.ModelMetadata.GetRootAs(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes(), 0)
    image = meta.SubgraphMetadata(0).InputTensorMetadata(0).Content().ContentProperties()
    properties = metadata_schema.ImageProperties()
    properties.Init(image.Bytes, image.Pos)
    assert properties.ColorSpace() == metadata_schema.ColorSpaceType.GRAYSCALE
    md = (folder / "card.md").read_text()
    assert "takes RGB input only" in md
    from tests.export.test_subnet import digits

    pixels = digits().images["val"][0, 0]
    Image.fromarray(pixels).save(folder / "photo.jpg", quality=95)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for snippet in card_snippets(md):
        done = subprocess.run([sys.executable, "-c", snippet], cwd=folder, capture_output=True, text=True, env=env,
                              check=False, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() in contract["labels"]
    # a client reading card.json alone feeds the int8-input file (scale and zero point from the card) as well as
    # the float ones: on the digits' val images, saved as files
    data = digits()
    images = []
    for i, pixels in enumerate(data.images["val"][:64, 0]):
        images.append(str(folder / f"val{i}.png"))
        Image.fromarray(pixels).save(images[-1])
    labels = data.labels["val"][:64]
    for entry in card["files"]:
        accuracy = float(np.mean(np.array(_client(folder, entry["name"], images)) == labels))
        # Pillow's uint8 resize from the 8 px the set holds differs a little from edgenas's float resize
        assert abs(accuracy - card["accuracy"]["files"][entry["name"]]) <= 0.05, entry["name"]
