"""Numeric verification of exported files against the PyTorch model on real validation images.

fp32 files (ONNX, TFLite) must match PyTorch's logits to `atol` (max absolute difference). An int8
file must agree with the fp32 model on the top-1 class for at least `min_agreement` of the images,
and (with labels) lose at most `max_drop_points` accuracy points, judged paired: the drop is what the
images fp32 and int8 disagree on say (right in fp32 only minus right in int8 only), with its 95 %
interval; the check fails when even the interval's low end is above the limit. A drop of 1 point on
a few hundred images is a handful of images, about the size of its own sampling error: judging the
point estimate alone fails files by chance. A failed check raises `VerificationError` naming the file
and the failing figure; the files stay on disk for inspection.

Agreement is not judged on a network near chance (with labels: even the high end of the fp32 accuracy's 95 %
interval is under twice chance, `near_chance`): its top-two logits are near ties on most images, and any int8
rounding flips some of them between wrong classes (measured on a 14 %-top-1 mcunet subnet of 10 classes: 95.3 %
agreement from the direct writer, the disagreements' median top-two margin 0.012 against 0.074 for all images,
and as many images turned right as wrong). There the paired accuracy drop decides, and the message says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgenas.export.onnx import run_onnx
from edgenas.export.tflite import run_tflite

DEFAULT_ATOL = 1e-4
DEFAULT_MIN_AGREEMENT = 0.98
DEFAULT_MAX_DROP_POINTS = 1.0  # int8 accuracy drop limit (points), judged on its paired 95 % interval
INTERVAL_Z = 1.96  # a two-sided 95 % interval


class VerificationError(RuntimeError):
    """An exported file does not compute what the PyTorch model computes."""


@dataclass(frozen=True)
class Check:
    """One file's verification. Accuracies are fractions in [0, 1]; the drop is in percentage points."""

    format: str
    path: str
    passed: bool
    images: int
    quantized: bool
    max_abs_diff: float
    top1_agreement: float
    accuracy: float | None = None
    reference_accuracy: float | None = None
    accuracy_drop_points: float | None = None
    message: str = ""
    problem: str = ""  # what failed, in a few words without the path ("" when it passed)
    drop_interval_points: tuple[float, float] | None = None  # the drop's 95 % interval (paired)
    fp32_only_correct: int | None = None  # images right in fp32 and wrong in int8
    int8_only_correct: int | None = None  # images right in int8 and wrong in fp32
    agreement_judged: bool = True  # False: the network is near chance, the paired drop decided (`near_chance`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def torch_logits(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of the PyTorch model (eval mode, CPU) for NCHW float images."""
    was_training = model.training
    model.eval()
    try:
        out = [model(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32))).numpy()
               for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(out, axis=0)


def compare(
    fmt: str,
    path: str | os.PathLike,
    logits: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    quantized: bool = False,
    atol: float = DEFAULT_ATOL,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_drop_points: float = DEFAULT_MAX_DROP_POINTS,
) -> Check:
    """Judge a file's `logits` against the PyTorch `reference` logits (same images, same order)."""
    if logits.shape != reference.shape:
        return Check(fmt, str(path), False, len(reference), quantized, float("inf"), 0.0,
                     message=f"{fmt} file {path} gives logits of shape {list(logits.shape)}, PyTorch "
                             f"{list(reference.shape)}")
    diff = float(np.abs(logits - reference).max()) if logits.size else 0.0
    agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
    acc = ref_acc = drop = interval = None
    fp32_only = int8_only = None
    if labels is not None:
        right, ref_right = logits.argmax(1) == labels, reference.argmax(1) == labels
        acc, ref_acc = float(right.mean()), float(ref_right.mean())
        fp32_only, int8_only = int((ref_right & ~right).sum()), int((right & ~ref_right).sum())
        drop, half = paired_drop(fp32_only, int8_only, len(labels))
        interval = (drop - half, drop + half)
    problems = []
    judged = not (quantized and ref_acc is not None and near_chance(ref_acc, len(reference), reference.shape[1]))
    if not quantized and not diff <= atol:
        problems.append(f"max abs difference {diff:.3g} on logits exceeds {atol:g}")
    if quantized and judged and agreement < min_agreement:
        problems.append(f"top-1 agrees with fp32 on {agreement:.1%} of images, below {min_agreement:.0%}")
    if quantized and interval is not None and interval[0] > max_drop_points:
        problems.append(f"accuracy drops {drop:.2f} points ({ref_acc:.2%} -> {acc:.2%}; 95 % interval "
                        f"{interval[0]:.2f} to {interval[1]:.2f}), more than {max_drop_points:g}")
    name = Path(path).name
    paired = "" if interval is None else (f" (95 % interval {interval[0]:.2f} to {interval[1]:.2f}; {fp32_only} images "
                                          f"right in fp32 only, {int8_only} in int8 only)")
    if problems:
        message = f"{fmt} file {path} failed verification on {len(reference)} images: " + "; ".join(problems) + \
            " (the file is kept for inspection)"
    elif quantized:
        message = (f"{name}: top-1 agreement {agreement:.1%} on {len(reference)} images"
                   + ("" if judged else f" (not judged: fp32 is near chance at {ref_acc:.1%}, its logits near ties; "
                                        "the paired accuracy drop decides)")
                   + ("" if drop is None else f", accuracy drop {drop:.2f} points{paired}, limit {max_drop_points:g}"))
    else:
        message = f"{name}: max abs difference {diff:.2g}"
    return Check(fmt, str(path), not problems, len(reference), quantized, diff, agreement, acc, ref_acc, drop, message,
                 "; ".join(problems), interval, fp32_only, int8_only, judged)


def near_chance(accuracy: float, images: int, classes: int) -> bool:
    """Whether a model's top-1 `accuracy` on `images` is near chance among `classes`: even the high end of its 95 %
    interval is under twice chance (14 % on 600 images of 10 classes: 11.2-16.8 %, near; 25 %: not)."""
    if images <= 0 or classes < 2:
        return False
    half = INTERVAL_Z * (accuracy * (1 - accuracy) / images) ** 0.5
    return accuracy + half < 2.0 / classes


def paired_difference(only_first: int, only_second: int, images: int) -> tuple[float, float]:
    """The difference of two models' accuracies on the same `images` (a fraction) and its standard error, from
    the images they disagree on (`only_first` right for the first model only, `only_second` for the second only):
    the paired standard error of a difference of proportions, as McNemar's test reads it."""
    if images <= 0:
        return 0.0, 0.0
    d = only_first - only_second
    variance = max(only_first + only_second - d * d / images, 0.0) / (images * (images - 1) if images > 1 else 1)
    return d / images, variance ** 0.5


def paired_drop(fp32_only: int, int8_only: int, images: int) -> tuple[float, float]:
    """The accuracy drop in points (`paired_difference` of the fp32 and int8 files) and the half width of its
    95 % interval, in points."""
    diff, se = paired_difference(fp32_only, int8_only, images)
    return 100.0 * diff, 100.0 * INTERVAL_Z * se


def file_logits(fmt: str, path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Run an exported file on NCHW float images in its runtime: ONNX Runtime or the TFLite interpreter."""
    if fmt == "onnx":
        return run_onnx(path, images)

    return run_tflite(path, images)


def verify_file(
    fmt: str,
    path: str | os.PathLike,
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    reference: np.ndarray | None = None,
    atol: float = DEFAULT_ATOL,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_drop_points: float = DEFAULT_MAX_DROP_POINTS,
) -> Check:
    """Verify one exported file (`fmt` is onnx, tflite or tflite-int8) against `model` on `images`."""
    if reference is None:
        reference = torch_logits(model, images)
    logits = file_logits(fmt, path, images)
    return compare(fmt, path, logits, reference, labels, quantized=fmt.endswith("int8"), atol=atol,
                   min_agreement=min_agreement, max_drop_points=max_drop_points)


def raise_for_failures(checks: Sequence[Check]) -> None:
    """Raise `VerificationError` with every failing check's message (one line each)."""
    failed = [c.message for c in checks if not c.passed]
    if failed:
        raise VerificationError("; ".join(failed))
