"""Closing the loop: export the top archs of a search, measure them on the real device, evaluate their real
accuracy, pick the best arch that meets the constraints when measured, and feed the measurements back.

Each candidate's BN statistics are recalibrated before export (so the exported model is the one whose
accuracy is reported); the supernet's own statistics are restored afterwards. Measured latencies go
into the store as whole-subnet (`arch`) measurements of the device, runtime and precision, which is
what calibration reads, and measured accuracies into the evaluations table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.search.base import Candidate, SearchResult


@dataclass
class Verification:
    """The measured side of a search: every checked candidate, and the winner (None if none met the limits)."""

    candidates: list[Candidate]
    winner: Candidate | None
    device: str
    runtime: str
    precision: str

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "runtime": self.runtime, "precision": self.precision,
                "winner": self.winner.to_dict() if self.winner else None,
                "candidates": [c.to_dict() for c in self.candidates]}


def export_candidate(supernet: Any, arch: Any, dataset: Any, path: Path, *, runtime: str, precision: str,
                     bn_batches: int = 8) -> Path:
    """Export `arch` with BN statistics recalibrated for it: ONNX for onnxruntime, TFLite (fp32 or int8) for tflite."""
    from edgenas.train.bn import preserved_bn
    from edgenas.train.evaluate import recalibrate_for

    with preserved_bn(supernet):
        recalibrate_for(supernet, arch, dataset, bn_batches=bn_batches)
        model = supernet.extract(arch).eval()
    if runtime == "onnxruntime":
        from edgenas.export.onnx import export_onnx

        return export_onnx(model, path.with_suffix(".onnx")).path
    if runtime == "tflite":
        from edgenas.export.tflite import export_tflite

        calibration = None
        if precision == "int8":
            import torch

            x, _ = dataset.arrays("train")
            x = torch.nn.functional.interpolate(torch.from_numpy(x[:256]), size=(arch.resolution,) * 2,
                                                mode="bilinear", align_corners=False).numpy()
            calibration = x
        return export_tflite(model, path.with_suffix(".tflite"), quantization="int8" if precision == "int8" else None,
                             calibration=calibration).path
    from edgenas.errors import UsageError

    raise UsageError(f"cannot export for runtime {runtime!r}: choose a device running onnxruntime or tflite")


def verify(
    result: SearchResult,
    *,
    supernet: Any,
    dataset: Any,
    device: Any,
    out_dir: str | os.PathLike,
    precision: str = "fp32",
    store: Any | None = None,
    supernet_sha256: str | None = None,
    split: str = "holdout",
    top_k: int | None = None,
    bn_batches: int = 8,
    progress: bool = True,
) -> Verification:
    """Export, measure and evaluate the top `top_k` candidates of `result` (all of `result.top` by default),
    fill each candidate's `measured`, and choose the most accurate one that meets the limit when measured.

    The candidates are timed together, interleaved over one window (see edgenas.devices.agent), and judged by
    the one rule, `edgenas.devices.measurement.meets_budget`."""
    from edgenas.accuracy.dataset import top1_metric
    from edgenas.progress import Progress
    from edgenas.train.evaluate import evaluate

    out_dir = Path(out_dir)
    candidates = result.top[: top_k or len(result.top)]
    paths = []
    with Progress(len(candidates), f"export and evaluate top {len(candidates)}", unit="arch", enabled=progress) as bar:
        for i, cand in enumerate(candidates):
            paths.append(export_candidate(supernet, cand.arch, dataset, out_dir / f"candidate-{i}", runtime=device.runtime,
                                          precision=precision, bn_batches=bn_batches))
            top1 = float(evaluate(supernet, cand.arch, dataset, split, bn_batches=bn_batches))
            cand.measured["accuracy"] = top1
            cand.measured["model"] = str(paths[-1])
            if store is not None and supernet_sha256:
                store.add_evaluation(supernet_sha256=supernet_sha256, dataset=dataset.fingerprint, split=split,
                                     arch=cand.arch, metric=top1_metric(bn_batches), value=top1,
                                     extra={"source": "search-verify"})
            bar.update(1, top1=top1)
    from edgenas.devices.measurement import meets_budget

    limit = result.constraints.get("max_latency_ms")
    for cand, m in zip(candidates, device.measure([str(p) for p in paths])):
        cand.measured["latency_ms"] = m.latency_ms
        cand.measured["latency_median_ms"] = m.median_ms
        cand.measured["timing"] = m.timing
        cand.measured["error"] = m.error
        cand.measured["meets_latency"] = meets_budget(m.latency_ms if m.ok else None, limit)
        if store is not None:  # the candidates' figures feed calibration
            store.add_measurement(m, model_kind="arch", model_description=cand.arch.to_json(),
                                  device=device.name, runtime=device.runtime, precision=precision)
    ok = [c for c in candidates if c.measured["meets_latency"]]
    winner = None
    if ok:
        order = np.argsort([-c.measured["accuracy"] for c in ok], kind="stable")
        winner = ok[int(order[0])]
    return Verification(candidates, winner, device.name, device.runtime, precision)
