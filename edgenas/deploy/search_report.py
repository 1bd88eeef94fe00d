"""A search's result and its deployment on disk and on screen: JSON with a manifest, the Pareto-front plot, the
side-by-side table of predicted and measured figures."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from edgenas.artifacts import atomic_write_bytes, atomic_write_json, write_manifest
from edgenas.deploy.stage import Deployment
from edgenas.search.loop import SearchResult


def result_dict(result: SearchResult, verification: Deployment | None = None) -> dict[str, Any]:
    """The saved form: `arch` is the winner (measured when verified, else the predicted best)."""
    d = result.to_dict()
    d["predicted_best"] = d.pop("best")
    if verification is not None:
        d["verification"] = verification.to_dict()
        if verification.winner is not None:
            d["arch"] = verification.winner.arch.to_dict()
        d["verified"] = verification.winner is not None
    else:
        d["verified"] = False
    return d


def save_result(result: SearchResult, path: str | os.PathLike, *, verification: Deployment | None = None,
                inputs: dict[str, Any] | None = None, seed: int | None = None) -> Path:
    """Write the result JSON (atomically) and its manifest beside it."""
    path = Path(path)
    atomic_write_json(path, result_dict(result, verification))
    write_manifest(path, kind="search_result", inputs=inputs, seed=seed,
                   config={"algorithm": result.algorithm, **result.config, "constraints": result.constraints.to_dict()},
                   extra={"device": result.device})
    return path


def plot_front(result: SearchResult, path: str | os.PathLike, *, verification: Deployment | None = None) -> Path:
    """Accuracy against latency: the predicted Pareto front, the top candidates, and measured points marked."""
    # deferred: matplotlib loads only when this runs, not on import
    import matplotlib

    matplotlib.use("Agg")
    # deferred: matplotlib loads only when this runs, not on import
    import matplotlib.pyplot as plt

    has_latency = any(c.predicted.get("latency_ms") == c.predicted.get("latency_ms") for c in result.front)
    key, label = ("latency_ms", "latency (ms)") if has_latency else ("macs", "MACs")
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    fx = [c.predicted[key] for c in result.front]
    fy = [100 * c.predicted["accuracy"] for c in result.front]
    ax.plot(fx, fy, "-o", ms=3, color="tab:blue", label=f"predicted Pareto front ({len(fx)})")
    ax.scatter([c.predicted[key] for c in result.top], [100 * c.predicted["accuracy"] for c in result.top],
               marker="s", s=28, color="tab:orange", label="top candidates (predicted)", zorder=3)
    if verification is not None:
        measured = [c for c in verification.candidates if c.latency_ms is not None and c.accuracy is not None]
        ax.scatter([c.latency_ms for c in measured], [100 * c.accuracy for c in measured],
                   marker="*", s=90, color="tab:red", label="measured on device", zorder=4)
        for c in measured:
            ax.annotate("", xy=(c.latency_ms, 100 * c.accuracy),
                        xytext=(c.predicted[key], 100 * c.predicted["accuracy"]),
                        arrowprops={"arrowstyle": "->", "color": "0.6", "lw": 0.8})
    limit = result.constraints.max_latency_ms
    if limit and has_latency:
        ax.axvline(limit, color="0.4", ls="--", lw=1, label=f"limit {limit:g} ms")
    ax.set_xlabel(label)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{result.space} on {result.device or 'no device'}: accuracy vs {label.split(' ')[0]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def format_table(result: SearchResult, verification: Deployment | None = None) -> str:
    """Predicted and measured figures side by side, one row per top candidate."""
    lines = [f"{result.algorithm} on {result.device or '-'} ({result.candidates} candidates, "
             f"{result.predicted} predicted, {result.seconds:.2f} s); constraints: "
             + ", ".join(f"{k}={v}" for k, v in result.constraints.to_dict().items() if v is not None and k != "precision")]
    rows = verification.candidates if verification else result.top
    lines.append(f"{'#':>2} {'pred top1':>9} {'meas top1':>9} {'pred ms':>8} {'meas ms':>8} {'SRAM KB':>8} "
                 f"{'flash KB':>9} {'MMACs':>7}  arch")
    for i, c in enumerate(rows):
        accuracy, latency = getattr(c, "accuracy", None), getattr(c, "latency_ms", None)
        error = c.measurement.error if getattr(c, "measurement", None) is not None else None
        meas_acc = f"{100 * accuracy:8.2f}%" if accuracy is not None else f"{'-':>9}"
        meas_ms = f"{latency:8.3f}" if latency is not None else f"{error or '-':>8}"
        win = " <- winner" if verification and verification.winner is c else ""
        if getattr(c, "problems", None):
            win += " (export check failed: " + "; ".join(c.problems) + ")"
        lines.append(f"{i:>2} {100 * c.predicted['accuracy']:8.2f}% {meas_acc} {c.predicted['latency_ms']:8.3f} "
                     f"{meas_ms} {c.predicted['sram_bytes'] / 1024:8.1f} {c.predicted['flash_bytes'] / 1024:9.1f} "
                     f"{c.predicted['macs'] / 1e6:7.2f}  {c.arch}{win}")
    if verification is not None and verification.winner is None:
        lines.append("no candidate met the latency limit when measured: the predictor is optimistic for this device; "
                     "the measurements were added to its calibration, re-run 'edgenas calibrate' and search again")
    return "\n".join(lines)
