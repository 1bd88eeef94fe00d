"""Tests for edgenas.export.verify: thresholds on fp32 difference, int8 agreement and accuracy drop; real ONNX runs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgenas.export.onnx import export_onnx
from edgenas.export.subnet import dataset_arrays
from edgenas.export.verify import VerificationError, compare, raise_for_failures, torch_logits, verify_file
from tests.export.test_subnet import digits, trained_subnet


def _logits(n=200, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n, classes)).astype(np.float32)
    labels = ref.argmax(1).copy()
    labels[: n // 10] = (labels[: n // 10] + 1) % classes  # 90 % accurate reference
    return ref, labels


def test_fp32_passes_within_tolerance_and_fails_beyond():
    ref, labels = _logits()
    ok = compare("tflite", "m.tflite", ref + 5e-5, ref, labels)
    assert ok.passed and ok.max_abs_diff == pytest.approx(5e-5, rel=1e-2) and ok.top1_agreement == 1.0
    bad = compare("tflite", "m.tflite", ref + np.float32(3e-3), ref, labels)
    assert not bad.passed and "0.003 on logits" in bad.message and "m.tflite" in bad.message and "kept" in bad.message


def test_int8_judged_on_agreement_and_accuracy_drop_not_on_difference():
    ref, labels = _logits()
    noisy = ref + 0.05  # a large max-abs difference is fine for int8 when the classes agree
    assert compare("tflite-int8", "q.tflite", noisy, ref, labels, quantized=True).passed
    flipped = ref.copy()
    wrong = np.flatnonzero(ref.argmax(1) == labels)[:6]  # 6 of 200 correct images turn wrong: 97 % agreement
    flipped[wrong, ref.argmax(1)[wrong]] = -10
    check = compare("tflite-int8", "q.tflite", flipped, ref, labels, quantized=True)
    assert not check.passed
    assert check.top1_agreement == pytest.approx(0.97)
    assert check.accuracy_drop_points == pytest.approx(3.0)
    assert (check.fp32_only_correct, check.int8_only_correct) == (6, 0)
    assert "97.0%" in check.message
    lenient = compare("tflite-int8", "q.tflite", flipped, ref, labels, quantized=True, min_agreement=0.95,
                      max_drop_points=5)
    assert lenient.passed


def test_int8_accuracy_drop_is_judged_paired_with_its_interval():
    """6 images of 200 lost is a 3-point drop whose 95 % interval (0.6 to 5.4) reaches under a 1-point limit: not
    shown to exceed it. The same 3 points on 2,000 images (60 lost) is: the check fails, naming the interval.
    Images int8 gets right that fp32 got wrong count against the loss (paired)."""
    from edgenas.export.verify import paired_drop

    drop, half = paired_drop(6, 0, 200)
    assert drop == pytest.approx(3.0) and half == pytest.approx(2.37, abs=0.01)
    assert paired_drop(6, 6, 200)[0] == 0.0 and paired_drop(0, 0, 200) == (0.0, 0.0)
    for n, lost, verdict in ((200, 6, True), (2000, 60, False)):
        ref, labels = _logits(n)
        flipped = ref.copy()
        wrong = np.flatnonzero(ref.argmax(1) == labels)[:lost]
        flipped[wrong, ref.argmax(1)[wrong]] = -10
        check = compare("tflite-int8", "q.tflite", flipped, ref, labels, quantized=True, min_agreement=0.9)
        assert check.passed is verdict, check.message
        low, high = check.drop_interval_points
        assert low < 3.0 < high and (low <= 1.0) is verdict
        assert f"{low:.2f} to {high:.2f}" in check.message
    gained = ref.copy()  # 3 lost and 3 gained: no drop at all
    right = np.flatnonzero(ref.argmax(1) == labels)[:3]
    wrong = np.flatnonzero(ref.argmax(1) != labels)[:3]
    gained[right, ref.argmax(1)[right]] = -10
    gained[wrong, labels[wrong]] = 10
    check = compare("tflite-int8", "q.tflite", gained, ref, labels, quantized=True)
    assert check.accuracy_drop_points == pytest.approx(0.0) and (check.fp32_only_correct, check.int8_only_correct) == (3, 3)


def test_int8_agreement_is_not_judged_near_chance_where_the_paired_drop_decides():
    """A 14 %-top-1 network of 10 classes (near chance: its accuracy's 95 % interval stays under 20 %) whose int8 file
    flips 5 % of the images among near-tied classes, as many right as wrong: the paired drop passes it and says why
    agreement was not judged. The same flips with a clear loss fail on the drop; a 60 % network is judged on
    agreement as before."""
    from edgenas.export.verify import near_chance

    assert near_chance(0.14, 600, 10) and not near_chance(0.18, 600, 10) and not near_chance(0.6, 600, 10)
    assert not near_chance(0.14, 600, 1) and not near_chance(0.0, 0, 10)
    rng = np.random.default_rng(0)
    n = 600
    ref = rng.normal(size=(n, 10)).astype(np.float32)
    top = ref.argmax(1)
    labels = (top + 1 + rng.integers(0, 9, n)) % 10  # wrong for all ...
    labels[:84] = top[:84]  # ... but 84 images: 14 %
    flipped = ref.copy()
    swaps = np.r_[np.arange(5), np.arange(100, 125)]  # 5 right turn wrong, 25 wrong change class (5 to the label)
    for i in swaps:
        other = (top[i] + 1) % 10 if (top[i] + 1) % 10 != labels[i] else (top[i] + 2) % 10
        second = labels[i] if 100 <= i < 105 else other
        flipped[i, second] = ref[i, top[i]] + 1
    check = compare("tflite-int8", "q.tflite", flipped, ref, labels, quantized=True)
    assert check.top1_agreement == pytest.approx(0.95) and (check.fp32_only_correct, check.int8_only_correct) == (5, 5)
    assert check.passed and not check.agreement_judged and "near chance" in check.message, check.message
    lost = flipped.copy()
    lost[np.arange(5, 45), top[5:45]] = -10  # 40 more right images turn wrong: a 6.7-point drop
    assert not compare("tflite-int8", "q.tflite", lost, ref, labels, quantized=True).passed
    labels[:360] = top[:360]  # 60 %: agreement is judged again
    judged = compare("tflite-int8", "q.tflite", flipped, ref, labels, quantized=True)
    assert judged.agreement_judged and not judged.passed and "95.0%" in judged.message


def test_shape_mismatch_fails():
    ref, _ = _logits()
    assert not compare("onnx", "m.onnx", ref[:, :5], ref).passed


def test_onnx_file_verified_against_its_model_and_caught_against_another(tmp_path):
    _, arch, model = trained_subnet()
    x, y = dataset_arrays(digits(), "val", arch.resolution, limit=64)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, verify=False)
    good = verify_file("onnx", path, model, x, y)
    assert good.passed and good.max_abs_diff <= 1e-4 and good.accuracy == good.reference_accuracy
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.classifier.bias.add_(0.5)
    bad = verify_file("onnx", path, other, x, y)
    assert not bad.passed and bad.max_abs_diff == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(VerificationError, match="m.onnx"):
        raise_for_failures([good, bad])
    raise_for_failures([good])
    assert torch_logits(model, x).shape == (64, 10)
