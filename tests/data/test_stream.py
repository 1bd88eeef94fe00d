"""Tests for streamed image folders (edgenas.data.stream, folders, images, transforms): read at the step's resolution,
the same images in the same order on resume and whatever the workers, and every bad file refused in one line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgenas.data import SPLITS, StepResolutions, StreamingDataset, load_dataset
from edgenas.data.images import ImageReadError, open_image
from edgenas.data.transforms import crop_box, eval_transform, train_transform
from edgenas.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def photo(rng: np.random.Generator, c: int, w: int, h: int, mode: str = "RGB") -> Image.Image:
    """A small 'photo' whose class is in its colour."""
    base = rng.uniform(0, 80, (h, w, 3)) + np.array([150 * (c % 2), 150 * ((c // 2) % 2), 60 * c])[None, None] % 256
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).convert(mode)


def photo_folder(root: Path, classes: int = 3, per_class: int = 10, seed: int = 0, lo: int = 72, hi: int = 110) -> Path:
    """JPEGs and PNGs of 72-110 px a side (larger than 64 px: streamed, not held in memory)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(lo, hi + 1, 2))
            photo(rng, c, w, h).save(root / f"class{c}" / (f"{i}.jpg" if i % 3 else f"{i}.png"))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return photo_folder(tmp_path_factory.mktemp("photos") / "data")


def test_a_folder_of_photos_is_streamed_and_read_at_the_asked_resolution(folder):
    ds = load_dataset(f"folder:{folder}", seed=0, min_holdout=3)
    assert isinstance(ds, StreamingDataset) and ds.streamed and ds.in_channels == 3 and ds.num_classes == 3
    assert sum(ds.size(s) for s in SPLITS) == 30 and ds.side_range[0] >= 72
    assert "streamed from disk, read at 24-32 px" in ds.describe((24, 28, 32))
    for res in (40, 96):  # evaluation: resize + centre crop straight to the size asked for
        x, y = next(iter(ds.loader("val", batch_size=4, resolution=res, workers=0)))
        assert x.shape == (4, 3, res, res) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 3  # normalised (ImageNet's statistics)
    # the split is stratified and seeded: the same seed, the same files; another seed, others
    again = load_dataset(f"folder:{folder}", seed=0, min_holdout=3)
    other = load_dataset(f"folder:{folder}", seed=1, min_holdout=3)
    assert again.fingerprint == ds.fingerprint != other.fingerprint
    assert np.bincount(ds.labels["val"]).tolist() == [2, 2, 2]
    record = ds.split_record()
    assert sorted(f for s in SPLITS for f, _ in record["splits"][s]) == sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*.*"))


def test_every_training_batch_arrives_at_its_steps_resolution(folder):
    """The loader reads each step's images at the resolution the trainer draws for that step (StepResolutions.rng,
    the generator `train_step` takes its resolution and subnets from)."""
    ds = load_dataset(f"folder:{folder}", seed=0, min_holdout=3)
    steps = StepResolutions(seed=3, phase=1, resolutions=(24, 28, 32, 40))
    loader = ds.loader("train", batch_size=4, shuffle=True, augment=True, seed=5, drop_last=True,
                       step_resolution=steps, workers=0)
    batches = loader.batches_from(0)
    seen = set()
    for step in range(2 * len(loader) + 1):  # across two epoch boundaries
        x, _ = next(batches)
        trainer_rng, resolution = steps.rng(step)
        assert x.shape[-2:] == (resolution, resolution) == (steps(step),) * 2
        assert resolution == int(np.random.default_rng([3, 1, step]).choice((24, 28, 32, 40)))
        seen.add(resolution)
    assert len(seen) > 1


def test_a_resumed_stream_reads_exactly_the_uninterrupted_images_whatever_the_workers(folder):
    ds = load_dataset(f"folder:{folder}", seed=0, min_holdout=3)
    steps = StepResolutions(0, 0, (24, 32))

    def read(start: int, count: int, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = ds.loader("train", batch_size=4, shuffle=True, augment=True, seed=7, drop_last=True,
                           step_resolution=steps, workers=workers)
        batches = loader.batches_from(start)
        return [next(batches) for _ in range(count)]

    whole = read(0, 9, workers=0)  # 9 steps: more than one epoch of 5 batches
    resumed = read(4, 5, workers=2)  # interrupted after step 4, resumed with worker processes
    for (x0, y0), (x1, y1) in zip(whole[4:], resumed):
        assert torch.equal(y0, y1) and torch.equal(x0, x1)
    assert not torch.equal(whole[0][0][:1], whole[5][0][:1])  # augmentation differs between epochs


def test_transforms_follow_once_for_all(folder):
    rng = np.random.default_rng(0)
    boxes = [crop_box(300, 200, rng) for _ in range(300)]
    areas = np.array([(r - left) * (b - t) for left, t, r, b in boxes]) / 60000
    ratios = np.array([(r - left) / (b - t) for left, t, r, b in boxes])
    assert 0.07 < areas.min() and areas.max() <= 1.0 and areas.std() > 0.15
    assert ratios.min() > 0.7 and ratios.max() < 1.4
    assert all(0 <= left < r <= 300 and 0 <= t < b <= 200 for left, t, r, b in boxes)
    image = Image.fromarray(np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (100, 1, 3)))  # a horizontal ramp
    centre = eval_transform(image, 64)
    assert centre.shape == (3, 64, 64)  # shorter side to ceil(64 / 0.875) = 74, centre crop: the ramp's middle
    assert 60 < centre[0, 32].mean() < 140
    a = train_transform(image, 48, np.random.default_rng(1))
    assert a.shape == (3, 48, 48) and np.array_equal(a, train_transform(image, 48, np.random.default_rng(1)))


def _exif_rotated_jpeg(path: Path) -> None:
    """A 90x60 JPEG whose EXIF orientation (6: rotate 90° clockwise) makes it stand upright at 60x90."""
    image = Image.new("RGB", (90, 60), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes())


def test_grey_rgba_mixed_sizes_and_exif_rotation_are_converted(tmp_path):
    root = photo_folder(tmp_path / "mixed", classes=2, per_class=6)
    rng = np.random.default_rng(1)
    photo(rng, 0, 100, 80, "L").save(root / "class0" / "grey.png")
    photo(rng, 1, 120, 90, "RGBA").save(root / "class1" / "alpha.png")
    _exif_rotated_jpeg(root / "class1" / "rotated.jpg")
    ds = load_dataset(f"folder:{root}", seed=0, min_holdout=2)
    assert ds.in_channels == 3  # grey images join a colour folder as RGB
    for split in SPLITS:
        for x, _ in ds.loader(split, batch_size=8, resolution=32, workers=0):
            assert x.shape[1:] == (3, 32, 32) and torch.isfinite(x).all()
    assert open_image(root / "class1" / "rotated.jpg", "RGB").size == (60, 90)  # upright
    transparent = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    transparent.save(root / "class1" / "clear.png")
    assert np.asarray(open_image(root / "class1" / "clear.png", "RGB")).min() == 255  # on white, not black
    grey = photo_folder(tmp_path / "grey", classes=2, per_class=8)
    for p in grey.rglob("*.*"):
        Image.open(p).convert("L").save(p)
    g = load_dataset(f"folder:{grey}", seed=0, min_holdout=4, val_fraction=0.25)
    assert g.in_channels == 1 and next(iter(g.loader("val", batch_size=2, resolution=24, workers=0)))[0].shape[1] == 1


def _truncated_jpeg(path: Path) -> None:
    buf = io.BytesIO()
    photo(np.random.default_rng(2), 0, 100, 100).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def _damaged_inside_png(path: Path) -> None:
    """A PNG whose header and end marker are whole but whose pixel data is not: only decoding finds out."""
    buf = io.BytesIO()
    photo(np.random.default_rng(3), 0, 100, 100).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    start = data.index(b"IDAT") + 8
    data[start:start + 200] = b"\x00" * 200
    path.write_bytes(bytes(data))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgenas.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)


@pytest.mark.parametrize("bad", ["truncated.jpg", "text.jpg", "empty.png"])
def test_a_bad_file_is_refused_up_front_in_one_line_naming_it(tmp_path, bad):
    root = photo_folder(tmp_path / "data", classes=2, per_class=4)
    path = root / "class1" / bad
    if bad == "truncated.jpg":
        _truncated_jpeg(path)
    elif bad == "text.jpg":
        path.write_text("this is not an image\n")
    else:
        path.write_bytes(b"")
    with pytest.raises(UsageError, match=bad.replace(".", r"\.")):
        load_dataset(f"folder:{root}")
    if bad != "truncated.jpg":  # the command's one line and exit status: once is enough
        return
    result = _cli("train", "--dataset", f"folder:{root}", "--out", str(tmp_path / "run"), "--no-progress")
    assert result.returncode == 2 and bad in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_file_damaged_inside_fails_mid_epoch_in_one_line_not_a_worker_traceback(tmp_path):
    root = photo_folder(tmp_path / "data", classes=2, per_class=8)
    for i in range(4):  # in whichever split they land, training or its evaluation reads one of them
        _damaged_inside_png(root / "class0" / f"broken{i}.png")
    ds = load_dataset(f"folder:{root}", seed=0, min_holdout=4, val_fraction=0.25)  # the header check passes
    with pytest.raises(ImageReadError, match=r"broken\d\.png.*damaged inside"):
        for split in SPLITS:
            for _ in ds.loader(split, batch_size=2, resolution=24, workers=2):
                pass
    config = tmp_path / "train.toml"
    config.write_text('space = "tiny"\nbatch_size = 4\nbn_batches = 1\nfinal_samples = 0\ncompare_alone = false\n'
                      '[[phases]]\nname = "full"\nsteps = 6\ndistill = false\n')
    result = _cli("train", "--dataset", f"folder:{root}", "--config", str(config), "--out", str(tmp_path / "run"),
                  "--no-progress", "--data-workers", "1", "--threads", "1")
    lines = [line for line in result.stderr.splitlines() if "broken" in line]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_imagenet_layout_uses_its_val_folder(tmp_path):
    root = tmp_path / "imagenet"
    photo_folder(root / "train", classes=3, per_class=8)
    photo_folder(root / "val", classes=3, per_class=2, seed=1)
    ds = load_dataset(f"imagenet:{root}", seed=0, min_holdout=3)
    assert ds.size("val") == 6 and ds.size("train") + ds.size("holdout") == 24
    assert all("/val/" in ds.path("val", i) for i in range(6))
    (root / "val" / "zebra").mkdir()
    with pytest.raises(UsageError, match="zebra.*no train/ counterpart"):
        load_dataset(f"imagenet:{root}")


def test_a_streamed_training_run_says_what_it_reads_at_and_records_its_split(tmp_path, folder):
    config = tmp_path / "train.toml"
    config.write_text('space = "tiny"\nbatch_size = 6\nbn_batches = 1\nfinal_samples = 0\n'  # the comparison on
                      '[[phases]]\nname = "full"\nsteps = 3\ndistill = false\n'
                      '[[phases]]\nname = "kernel"\nsteps = 2\nkernels = "all"\n')
    result = _cli("train", "--dataset", f"folder:{folder}", "--config", str(config), "--out", str(tmp_path / "run"),
                  "--no-progress", "--data-workers", "1", "--threads", "1", "--json", "--force")  # 5 steps: no check
    assert result.returncode == 0, result.stderr[-2000:]
    first = result.stderr.splitlines()[0]
    assert "streamed from disk, read at 24-32 px" in first and "72-" in first
    record = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert record["seed"] == 0 and sum(len(v) for v in record["splits"].values()) == 30
    summary = json.loads(result.stdout)
    assert summary["global_step"] == 5 and summary["alone"]["steps"] == 5  # the comparison read the same stream


def test_thumbnails_are_held_in_memory_only_while_their_decoded_copy_is_small(tmp_path, monkeypatch):
    """A folder of images of at most 64 px is decoded once and held (faster than decoding every epoch) unless the
    decoded copy would pass the bound: then it streams, as a folder of photos does, and memory stays flat."""
    import edgenas.data.folders as folders

    root = photo_folder(tmp_path / "thumbs", classes=2, per_class=12, lo=24, hi=40)
    held = load_dataset(f"folder:{root}", seed=0)
    assert not isinstance(held, StreamingDataset)
    monkeypatch.setattr(folders, "IN_MEMORY_BYTES", 24 * 3 * 24 * 24 - 1)  # short of 24 RGB images of the smallest size
    streamed = load_dataset(f"folder:{root}", seed=0)
    assert isinstance(streamed, StreamingDataset)
    assert sum(streamed.size(s) for s in SPLITS) == sum(held.size(s) for s in SPLITS) == 24
