"""Tests for edgenas.export.subnet: one subnet to verified ONNX, TFLite fp32 and int8 files with a card.

The exported bundle is built once per test session (`exported_bundle`) and shared with
test_tflite.py, test_micro.py and test_card.py: each TFLite conversion takes several seconds.
The subnet is a real digits classifier (a few epochs of training), so that int8 agreement and
accuracy figures mean something.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from shared_work import shared_file

from edgenas import SearchSpace, Supernet
from edgenas.artifacts import read_manifest, sha256_file

ARCH_SEED = 3


@functools.lru_cache(maxsize=1)
def digits():
    from edgenas.data import load_dataset

    return load_dataset("digits", seed=0)


@functools.lru_cache(maxsize=1)
def trained_subnet():
    """(space, arch, static model) for a small tiny-space subnet trained briefly on digits (about 95 % top-1).

    A trained network, not random weights: int8 agreement and accuracy figures only mean something
    for a model whose logits separate the classes (random features with a fitted head agreed on 92 %).
    Trained once per test run (`shared_work`): eight test files use it, on both workers."""
    space = SearchSpace.preset("tiny", in_channels=1)  # digits are grey
    torch.manual_seed(0)
    supernet = Supernet(space).eval()
    arch = space.arch(24, (1, 1, 1, 1), (3, 5, 3, 3), (3, 4, 6, 3))
    model = supernet.extract(arch)
    weights = shared_file("trained_subnet.pt", lambda path: torch.save(_train_digits(model, arch).state_dict(), path))
    model.load_state_dict(torch.load(weights, weights_only=True))
    return space, arch, model.eval()


def _train_digits(model, arch):
    data = digits()
    loader = data.loader("train", batch_size=64, resolution=arch.resolution, shuffle=True, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared CPU, one thread trains this small net faster than two
    try:
        model.train()
        for epoch in range(5):
            for x, y in loader.iterate(epoch):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model


@functools.lru_cache(maxsize=1)
def exported_bundle():
    """Export the trained subnet to all three formats (float I/O int8) into a temporary folder, once."""
    from edgenas.export.subnet import ExportOptions, dataset_arrays, export_subnet

    space, arch, model = trained_subnet()
    data = digits()
    calibration, _ = dataset_arrays(data, "train", arch.resolution, limit=128, shuffle=True)
    val_x, val_y = dataset_arrays(data, "val", arch.resolution)
    out = Path(tempfile.mkdtemp(prefix="edgenas-export-test-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)  # shared by several files' tests: gone when the process is
    result = export_subnet(model, out, space=space, arch=arch, calibration=calibration, val_images=val_x,
                           val_labels=val_y, options=ExportOptions(seed=0), lineage={"test": True}, log=lambda m: None)
    return result, val_x, val_y


@pytest.fixture(scope="module")
def bundle():
    return exported_bundle()


def test_bundle_has_every_format_verified_with_manifests_and_card(bundle):
    result, val_x, _ = bundle
    assert result.ok, result.problems
    assert set(result.files) == {"onnx", "tflite", "tflite-int8"}
    for fmt, path in result.files.items():
        assert path.is_file() and path.stat().st_size > 10_000
        manifest = read_manifest(path)
        assert manifest["kind"] == f"model-{fmt}" and manifest["sha256"] == sha256_file(path)
    checks = {c.format: c for c in result.checks}
    assert checks["onnx"].max_abs_diff <= 1e-4 and checks["tflite"].max_abs_diff <= 1e-4
    assert checks["tflite-int8"].top1_agreement >= 0.95
    assert checks["tflite-int8"].images == len(val_x)
    card = json.loads((result.out_dir / "card.json").read_text())
    assert card["sram"]["tflm_arena_bytes"] == result.micro.arena_bytes
    assert card["accuracy"]["pytorch"] > 0.5  # a real classifier, so int8 agreement is meaningful


def test_int8_accuracy_close_to_fp32(bundle):
    result, _, _ = bundle
    check = next(c for c in result.checks if c.format == "tflite-int8")
    assert check.accuracy_drop_points is not None and check.accuracy_drop_points <= 3.0
    assert check.accuracy == pytest.approx(result.card["accuracy"]["files"]["model_int8.tflite"])


def test_budget_exceeded_fails_but_keeps_files(tmp_path):
    from edgenas.export.subnet import ExportCheckError, ExportOptions, dataset_arrays, export_subnet

    space, arch, model = trained_subnet()
    val_x, val_y = dataset_arrays(digits(), "val", arch.resolution, limit=32)
    with pytest.raises(ExportCheckError, match="target-flash-kb"):
        export_subnet(model, tmp_path, space=space, arch=arch, calibration=val_x, val_images=val_x, val_labels=val_y,
                      options=ExportOptions(formats=("onnx",), target_flash_kb=1, target_sram_kb=1),
                      log=lambda m: None)
    assert (tmp_path / "model.onnx").is_file()
    card = json.loads((tmp_path / "card.json").read_text())
    assert any("target-sram-kb" in p for p in card["problems"])  # the predicted arena, without an int8 file


@pytest.mark.slow
def test_a_direct_int8_file_that_fails_its_check_is_converted_by_litert_instead(tmp_path, monkeypatch):
    """A flaw the writer's own check misses (here: every bias dropped, the check disabled) fails verification;
    litert-torch's file ships instead, with its check and a manifest of the file that ships."""
    import edgenas.export.tflite_int8 as int8
    from edgenas.export.subnet import ExportOptions, dataset_arrays, export_subnet

    monkeypatch.setattr(int8, "corrected_bias", lambda bias, *a, **k: np.zeros_like(bias))
    monkeypatch.setattr(int8, "check_int8", lambda *a, **k: "")
    space, arch, model = trained_subnet()
    calibration, _ = dataset_arrays(digits(), "train", arch.resolution, limit=64, shuffle=True)
    val_x, val_y = dataset_arrays(digits(), "val", arch.resolution)
    lines: list[str] = []
    result = export_subnet(model, tmp_path, space=space, arch=arch, calibration=calibration, val_images=val_x,
                           val_labels=val_y, options=ExportOptions(formats=("tflite-int8",), micro=False),
                           log=lines.append)
    assert result.ok, result.problems
    assert any("written directly) failed" in line for line in lines)
    path = result.files["tflite-int8"]
    assert read_manifest(path)["sha256"] == sha256_file(path)
    assert not list(tmp_path.glob(".*litert*"))
    assert b"ChannelsLastInput" in path.read_bytes()  # litert-torch names tensors after the module path


def test_unknown_format_is_a_usage_error():
    from edgenas.errors import UsageError
    from edgenas.export.subnet import parse_formats

    assert parse_formats("tflite-int8, onnx,onnx") == ("tflite-int8", "onnx")
    with pytest.raises(UsageError, match="tflite16"):
        parse_formats("onnx,tflite16")


def test_dataset_arrays_resizes_without_augmentation():
    from edgenas.export.subnet import dataset_arrays

    x, y = dataset_arrays(digits(), "val", 28, limit=10)
    assert x.shape == (10, 1, 28, 28) and x.dtype == np.float32 and y.shape == (10,)
    x2, _ = dataset_arrays(digits(), "val", 28, limit=10)
    np.testing.assert_array_equal(x, x2)


def test_the_checks_images_are_bounded_and_drawn_seeded_from_a_large_split(monkeypatch):
    """The int8 check holds at most `VERIFY_IMAGES` images of a split (a real validation split at 224 px would not fit
    in memory): all of a small split in order, a seeded draw of a larger one."""
    import numpy as np

    import edgenas.export.subnet as subnet
    from edgenas.data import load_dataset

    dataset = load_dataset("shapes:samples=600", seed=0)
    n = dataset.size("val")
    all_x, all_y = subnet.verification_images(dataset, "val", 24)
    assert len(all_y) == n
    monkeypatch.setattr(subnet, "VERIFY_IMAGES", n // 3)
    x, y = subnet.verification_images(dataset, "val", 24, seed=1)
    assert x.shape == (n // 3, *all_x.shape[1:]) and x.dtype == np.float32
    again, _ = subnet.verification_images(dataset, "val", 24, seed=1)
    assert np.array_equal(x, again)  # seeded: the same images each time
    assert not np.array_equal(x, all_x[: n // 3])  # drawn from the whole split, not its first third
