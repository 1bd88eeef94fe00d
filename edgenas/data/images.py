"""Image files on disk: class folders listed, every file's header checked up front, one image decoded (Pillow).

A folder is checked before training starts, cheaply: each file is opened (Pillow reads the header only), its size
and mode read, and JPEG and PNG files must end with their end marker (a truncated copy does not). So a bad file
is refused in one line naming it before the first step, not as a worker's traceback mid-epoch; a file that still
fails to decode later (damaged inside) is refused the same way when it is read (`ImageReadError`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenas.errors import UsageError
from edgenas.inputs import input_file, one_line
from edgenas.progress import Progress

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_IMAGE_PIXELS = 8192 * 8192  # one image of a folder dataset
GREY_MODES = ("L", "1", "I;16", "I", "LA")  # "LA": grey with alpha, composited on white
REMEDY = "remove or replace the file"


class ImageReadError(UsageError):
    """An image that passed the up-front check but could not be decoded when read."""


@dataclass(frozen=True)
class ImageInfo:
    """What the up-front check learnt of one file: its size (as stored, before EXIF rotation) and Pillow mode."""

    width: int
    height: int
    mode: str

    @property
    def grey(self) -> bool:
        return self.mode in GREY_MODES


def dataset_folder(root: Path, what: str, expected: str) -> Path:
    """`root` if it is a folder; one line naming what is there instead otherwise."""
    if root.is_dir():
        return root
    if root.exists():
        raise UsageError(f"{what} {root} is not a folder: give {expected}")
    raise UsageError(f"{what} {root} does not exist: give {expected}")


def class_folders(root: Path) -> list[str]:
    """The class sub-folders of `root` (sorted, hidden ones left out); at least 2, else one line saying so."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise UsageError(f"dataset folder {root} has {len(classes)} class sub-folder(s): it needs one sub-folder "
                         "per class, at least 2")
    return classes


def list_images(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, class index) of every PNG or JPEG in the class folders, in a fixed order (class, then file name)."""
    files: list[tuple[Path, int]] = []
    for c, name in enumerate(classes):
        folder = root / name
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if not found:
            raise UsageError(f"class folder {folder} has no PNG or JPEG images")
        files.extend((p, c) for p in found)
    return files


def _ends_whole(path: Path, fmt: str | None) -> bool:
    """Whether a JPEG ends with its EOI marker and a PNG with its IEND chunk (a cut-off copy does not)."""
    tails = {"JPEG": (b"\xff\xd9",), "PNG": (b"IEND\xaeB`\x82",)}.get(fmt or "")
    if tails is None:
        return True
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64))
        tail = f.read().rstrip(b"\x00\r\n ")  # some writers pad after the marker
    return any(tail.endswith(t) for t in tails)


def check_image(path: Path) -> ImageInfo:
    """The header of one image file, checked: readable, a sane size, not truncated; UsageError naming it if not."""
    # deferred: PIL loads only when this runs, not on import
    from PIL import Image, UnidentifiedImageError

    input_file(path, "image")  # a folder, a pipe or /dev/zero named like an image is refused unread
    try:
        with Image.open(path) as im:
            w, h, mode, fmt = im.size[0], im.size[1], im.mode, im.format
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UsageError(f"cannot read image {path}: {type(exc).__name__}: {one_line(str(exc))[:100]}; {REMEDY}"
                         ) from None
    except Exception as exc:  # a damaged file makes Pillow's header parsers raise many kinds of errors
        raise UsageError(f"cannot read image {path} ({type(exc).__name__}): it is damaged; {REMEDY}") from None
    if w < 1 or h < 1 or w * h > MAX_IMAGE_PIXELS:
        raise UsageError(f"image {path} is {w}x{h} pixels: expected at most {MAX_IMAGE_PIXELS} pixels; resize or "
                         "remove it")
    if not _ends_whole(path, fmt):
        raise UsageError(f"image {path} is truncated (its {fmt} data stops before the end marker); {REMEDY}")
    return ImageInfo(w, h, mode)


def check_images(paths: Iterable[Path], total: int, *, what: str) -> list[ImageInfo]:
    """`check_image` of every file, with a progress bar when there are many."""
    infos = []
    with Progress(total, f"checking {what}", unit="img", enabled=total >= 2000, log_every=15.0) as bar:
        for path in paths:
            infos.append(check_image(path))
            bar.update(1)
    return infos


def open_image(path: str | Path, mode: str, draft: int | None = None) -> Any:
    """One image decoded upright (EXIF orientation applied) in `mode` ("RGB" or "L"), transparency on white.

    `draft` lets the JPEG decoder scale down by a power of two while the shorter side stays at least `draft`
    pixels (decoding a 4000 px photo for a 224 px crop is then 8x to 60x cheaper). Raises ImageReadError."""
    # deferred: PIL loads only when this runs, not on import
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            if draft is not None and im.format == "JPEG":
                short = min(im.size)
                im.draft(im.mode if im.mode in ("RGB", "L") else None,
                         (max(1, im.size[0] * draft // short), max(1, im.size[1] * draft // short)))
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            return im.convert(mode)
    except Exception as exc:  # damaged inside: Pillow's decoders raise many kinds of errors
        raise ImageReadError(f"cannot decode image {path} ({type(exc).__name__}: {one_line(str(exc))[:80]}) while "
                             f"training: it passed the header check but is damaged inside; {REMEDY}") from None
