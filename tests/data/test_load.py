"""Tests for edgenas.data: every format read from small files written here, splits, loaders, clear errors."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgenas.cli import main
from edgenas.data import SPLITS, load_dataset, make_shapes
from edgenas.errors import UsageError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_digits_splits_are_disjoint_stratified_and_complete(digits):
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 8)
    sizes = {s: digits.size(s) for s in SPLITS}
    assert sum(sizes.values()) == 1797
    assert sizes["holdout"] >= 199 and 300 < sizes["val"] < 400
    # every class appears in every split in about the same proportion
    for split in SPLITS:
        counts = np.bincount(digits.labels[split], minlength=10)
        assert counts.min() >= 0.8 * counts.max()
    # no image is in two splits (digits has a few exact duplicates, so compare with multiplicity)
    from sklearn.datasets import load_digits

    # (digits are read from scikit-learn's file without its loader: the same images with the same labels)
    ours = [row.tobytes() + bytes([label]) for s in SPLITS
            for row, label in zip(digits.images[s].reshape(digits.size(s), -1), digits.labels[s])]
    reference = load_digits()
    original = np.round(reference.images * (255 / 16)).astype(np.uint8).reshape(1797, 64)
    assert sorted(ours) == sorted(row.tobytes() + bytes([label]) for row, label in zip(original, reference.target))


def test_fingerprint_depends_on_seed_not_on_reload(digits):
    assert load_dataset("digits", seed=0).fingerprint == digits.fingerprint
    assert load_dataset("digits", seed=1).fingerprint != digits.fingerprint


def test_arrays_are_normalised_with_training_statistics(digits):
    x, y = digits.arrays("train")
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (digits.size("train"), 1, 8, 8)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2


def test_loader_resizes_shuffles_and_augments_deterministically(digits):
    loader = digits.loader("train", batch_size=16, resolution=28, shuffle=True, augment=True, seed=3)
    assert len(loader) == -(-digits.size("train") // 16)
    a = list(loader.iterate(2, start=5))
    b = list(loader.iterate(2, start=5))
    x, y = a[0]
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    # a batch reached by skipping equals the same batch reached by iterating
    full = list(loader.iterate(2))
    assert torch.equal(full[5][0], x)
    assert not torch.equal(list(loader.iterate(3))[5][0], x)  # another epoch, another order
    plain = next(iter(digits.loader("val", batch_size=8, resolution=24)))[0]
    again = next(iter(digits.loader("val", batch_size=8, resolution=24)))[0]
    assert torch.equal(plain, again) and plain.shape == (8, 1, 24, 24)


def test_loader_shards_are_disjoint_and_equal(digits):
    shards = [digits.loader("train", batch_size=10, shuffle=True, seed=1, rank=r, world_size=2).indices(0)
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == digits.size("train") // 2
    assert not set(shards[0]) & set(shards[1])


def test_shapes_are_seeded_any_size_and_balanced():
    a = load_dataset("shapes:image_size=20,samples=300", seed=4)
    b = load_dataset("shapes:image_size=20,samples=300", seed=4)
    c = load_dataset("shapes:image_size=20,samples=300", seed=5)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert (a.in_channels, a.image_size, a.num_classes) == (3, 20, 10)
    x, y = make_shapes(100, 12, np.random.default_rng(0))
    assert x.shape == (100, 3, 12, 12) and np.bincount(y).tolist() == [10] * 10
    assert x.std() > 20  # not blank


def _png_folder(root: Path, classes=("cat", "dog"), per_class=8, size=12) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.uniform(0, 60, (size, size, 3)) + 180 * c).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png" if i % 2 else root / name / f"{i}.jpg")
    return root


def test_folder_of_pngs_and_jpegs(tmp_path):
    root = _png_folder(tmp_path / "data")
    ds = load_dataset(f"folder:{root}", seed=0, val_fraction=0.25, min_holdout=2)
    assert ds.class_names == ["cat", "dog"] and ds.in_channels == 3 and ds.image_size == 12
    assert sum(ds.size(s) for s in SPLITS) == 16
    x, y = ds.arrays("val")
    assert x.shape[1:] == (3, 12, 12) and set(y.tolist()) == {0, 1}
    # the class is in the pixels: dog images are brighter
    raw = ds.images["train"].mean(axis=(1, 2, 3))
    assert raw[ds.labels["train"] == 1].min() > raw[ds.labels["train"] == 0].max()


def test_folder_errors_name_the_problem(tmp_path):
    root = _png_folder(tmp_path / "data")
    (root / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(UsageError, match=r"3\.png"):
        load_dataset(f"folder:{root}")
    with pytest.raises(UsageError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    with pytest.raises(UsageError, match="at least 2"):
        load_dataset(f"folder:{one}")


def _cifar(root: Path, n=30) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for name, count in (("data_batch_1", n), ("data_batch_2", n), ("test_batch", n)):
        labels = (np.arange(count) % 10).tolist()
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        data[:, :1024] = np.array(labels, dtype=np.uint8)[:, None] * 25  # the label is in the red channel
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root


def test_cifar10_batches(tmp_path):
    root = _cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset(f"cifar10:{tmp_path}", seed=0, min_holdout=10)  # the parent folder works too
    assert ds.class_names[3] == "c3" and ds.image_size == 32 and ds.in_channels == 3
    assert ds.size("val") == 30 and ds.size("train") + ds.size("holdout") == 60
    x = ds.images["val"]
    assert np.array_equal(x[:, 0, 0, 0] // 25, ds.labels["val"])
    (root / "data_batch_2").write_bytes((root / "data_batch_2").read_bytes()[:100])
    with pytest.raises(UsageError, match="data_batch_2"):
        load_dataset(f"cifar10:{root}")


def _idx(path: Path, array: np.ndarray, zipped: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if zipped else data)


@pytest.mark.parametrize("zipped", [True, False])
def test_idx_files(tmp_path, zipped):
    rng = np.random.default_rng(2)
    suffix = ".gz" if zipped else ""
    for prefix, n in (("train", 60), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, (n, 10, 10))
        images[:, 0, 0] = labels * 20
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, zipped)
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, zipped)
    ds = load_dataset(f"idx:{tmp_path}", seed=0, min_holdout=10)
    assert (ds.in_channels, ds.image_size, ds.num_classes) == (1, 10, 10)
    assert ds.size("val") == 20
    assert np.array_equal(ds.images["val"][:, 0, 0, 0] // 20, ds.labels["val"])


def test_idx_errors(tmp_path):
    for prefix in ("train", "t10k"):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", np.zeros((20, 4, 4)), True)
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(20) % 10, True)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x09\x01" + b"\x00" * 10))
    with pytest.raises(UsageError, match="magic"):
        load_dataset(f"idx:{tmp_path}")
    bad.write_bytes(gzip.compress(struct.pack(">BBBBI", 0, 0, 8, 1, 20) + b"\x01" * 7))
    with pytest.raises(UsageError, match="holds 7 bytes"):
        load_dataset(f"idx:{tmp_path}")
    bad.write_bytes(b"\x1f\x8b garbage that is not gzip")
    with pytest.raises(UsageError, match="cannot read IDX"):
        load_dataset(f"idx:{tmp_path}")
    bad.unlink()
    with pytest.raises(UsageError, match="no t10k labels"):
        load_dataset(f"idx:{tmp_path}")


@pytest.mark.parametrize("spec, names", [
    ("mnist", ["'mnist'", "digits, shapes, folder:PATH, imagenet:PATH, cifar10:PATH, idx:PATH"]),
    ("folder:", ["'folder:'", "folder:PATH"]),
    ("digits:x", ["'digits:x'", "no argument"]),
    ("shapes:size=3", ["'size=3'", "image_size=N,samples=N"]),
    ("", ["''", "digits, shapes"]),
])
def test_bad_specs_name_the_bad_value_and_what_would_be_right(spec, names):
    with pytest.raises(UsageError) as refused:
        load_dataset(spec)
    message = str(refused.value)
    assert "\n" not in message
    for part in names:
        assert part in message, (part, message)


def test_cli_reports_missing_data_in_one_line(tmp_path, capsys):
    status = main(["train", "--dataset", f"folder:{tmp_path / 'missing'}", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "missing" in err and "Traceback" not in err
