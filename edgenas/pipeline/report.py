"""The run report: one self-contained `report.html` (PNG plots embedded, no network) plus the PNG files.

Per device: the accuracy/latency Pareto front (predicted points, and the measured ones), each
budget's chosen model with its card (the TFLite Micro arena and int8 file measured beside the
figures the search predicted), and calibration quality (predicted vs measured latency with the
±10 % band); for the supernet: training curves.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgenas.artifacts import atomic_write_text

if TYPE_CHECKING:
    from edgenas.deploy.budget import BudgetOutcome


@dataclass
class BudgetResult:
    """One device budget's outcome: the chosen arch, predicted and measured figures, and its card."""

    budget_ms: float
    arch: dict | None
    predicted_accuracy: float | None = None
    measured_accuracy: float | None = None
    predicted_latency_ms: float | None = None
    measured_latency_ms: float | None = None
    meets_budget: bool | None = None
    export_dir: str | None = None
    card: dict | None = None
    note: str = ""
    problems: list[str] = field(default_factory=list)  # failed checks of the shipped files
    choice: str = ""  # candidates passed over because their files failed a check, and what shipped instead
    source: str = ""  # where the budget came from ("25th percentile of the predicted latency of ...")
    deployed_file: str | None = None  # the file the budget was judged on; its accuracy is the card's
    accuracy_split: str = ""  # the split and image count of measured_accuracy (the card's)
    accuracy_images: int | None = None
    holdout_accuracy: float | None = None  # the same file on the holdout images (the deploy stage's pick)
    holdout_images: int | None = None

    @classmethod
    def from_outcome(cls, outcome: BudgetOutcome) -> BudgetResult:
        """The report's view of one budget's search and deploy; a failed check or a pass-over is its note. The budget
        is the one the deploy stage judged the files against (`outcome.budget_ms`), not a copy kept beside it."""
        shipped = outcome.card is not None
        card = json.loads(Path(outcome.card).read_text()) if shipped else None
        accuracy, split, images = card_accuracy(card, outcome.deployed_file)
        holdout = next((c for c in outcome.candidates if c.get("arch") == outcome.arch), {}) if shipped else {}
        note = outcome.note
        if outcome.problems:
            note = "export checks failed: " + "; ".join(outcome.problems)
        elif outcome.choice:
            note = outcome.choice
        return cls(budget_ms=outcome.budget_ms, arch=outcome.arch, predicted_accuracy=outcome.predicted_accuracy,
                   predicted_latency_ms=outcome.predicted_latency_ms, note=note, problems=list(outcome.problems),
                   choice=outcome.choice, export_dir=outcome.export_dir if shipped else None,
                   card=card, measured_accuracy=accuracy, accuracy_split=split, accuracy_images=images,
                   deployed_file=outcome.deployed_file,
                   holdout_accuracy=holdout.get("accuracy") if holdout.get("holdout_images") else None,
                   holdout_images=holdout.get("holdout_images") or None,
                   measured_latency_ms=outcome.measured_latency_ms if shipped else None,
                   meets_budget=outcome.meets_budget if shipped else None)


def card_accuracy(card: dict | None, file: str | None) -> tuple[float | None, str, int | None]:
    """A shipped file's accuracy as its model card states it: (top-1, split, images). The one figure the summary,
    the card and the report show for a file."""
    acc = (card or {}).get("accuracy") or {}
    files = acc.get("files") or {}
    if file is None and files:
        file = next(iter(files))
    value = files.get(file) if file is not None else None
    images = acc.get("images")
    return value, str(acc.get("split", "val")), int(images) if isinstance(images, (int, float)) else None


def accuracy_text(accuracy: float | None, split: str, images: int | None, holdout: float | None = None,
                  holdout_images: int | None = None) -> str:
    """"92.5 % (val, 359 images; holdout 91.0 %, 199 images)": a figure always with where it was measured."""
    if accuracy is None:
        return "–"
    text = f"{100 * accuracy:.1f} % ({split}, {images if images is not None else '?'} images"
    if holdout is not None:
        text += f"; holdout {100 * holdout:.1f} %, {holdout_images} images"
    return text + ")"


@dataclass
class DeviceReport:
    name: str
    runtime: str
    precision: str
    description: dict = field(default_factory=dict)
    pareto_predicted: list[tuple[float, float]] = field(default_factory=list)  # (latency ms, accuracy)
    pareto_measured: list[tuple[float, float]] = field(default_factory=list)
    calibration_predicted: list[float] = field(default_factory=list)
    calibration_measured: list[float] = field(default_factory=list)
    calibration_summary: dict = field(default_factory=dict)
    calibration_check: dict = field(default_factory=dict)  # edgenas.pipeline.runner.calibration_check
    budgets: list[BudgetResult] = field(default_factory=list)


@dataclass
class ReportData:
    title: str
    dataset: str
    space: str
    training_metrics: list[dict] = field(default_factory=list)
    training_summary: dict = field(default_factory=dict)
    predictor_summary: dict = field(default_factory=dict)
    devices: list[DeviceReport] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stopped: str = ""  # why the run stopped before shipping anything (shown first)


def _plt():
    # deferred: matplotlib loads only when this runs, not on import
    import matplotlib

    matplotlib.use("Agg")
    # deferred: matplotlib loads only when this runs, not on import
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(dev: DeviceReport, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    if dev.pareto_predicted:
        pts = sorted(dev.pareto_predicted)
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", color="#4c72b0", ms=4, label="Pareto front (predicted)")
    if dev.pareto_measured:
        ax.scatter([p[0] for p in dev.pareto_measured], [100 * p[1] for p in dev.pareto_measured], marker="*", s=140,
                   color="#dd8452", edgecolor="black", zorder=5, label="top candidates (measured)")
    for b in dev.budgets:
        ax.axvline(b.budget_ms, color="gray", ls="--", lw=1)
        ax.text(b.budget_ms, ax.get_ylim()[0], f" {b.budget_ms:g} ms", rotation=90, va="bottom", fontsize=8, color="gray")
    ax.set_xlabel(f"latency on {dev.name} ({dev.runtime}, {dev.precision}) [ms]")
    ax.set_ylabel("top-1 accuracy [%]")
    ax.set_title(f"{dev.name}: accuracy vs latency")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # an empty plot (nothing measured) has no legend
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_calibration(dev: DeviceReport, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4), dpi=110)
    pred, meas = dev.calibration_predicted, dev.calibration_measured
    if pred and meas:
        lo, hi = min(min(pred), min(meas)) * 0.85, max(max(pred), max(meas)) * 1.15
        xs = [lo, hi]
        ax.fill_between(xs, [x * 0.9 for x in xs], [x * 1.1 for x in xs], color="#55a868", alpha=0.2, label="±10 %")
        ax.plot(xs, xs, color="#55a868", lw=1)
        ax.scatter(meas, pred, s=14, color="#4c72b0", label="held-out subnets")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency [ms]")
    ax.set_ylabel("predicted latency [ms]")
    ax.set_title(f"{dev.name}: calibration")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # an empty plot (nothing measured) has no legend
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_training(metrics: Sequence[dict], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    steps = [m for m in metrics if m.get("event", "step") == "step" and "loss" in m and "global_step" in m]
    if steps:
        ax.plot([m["global_step"] for m in steps], [m["loss"] for m in steps], lw=1, color="#4c72b0",
                label="training loss")
        phases: dict[str, int] = {}
        for m in steps:
            phases.setdefault(str(m.get("phase", "")), m["global_step"] - m.get("step", 0))
        for name, start in phases.items():
            if name:
                ax.axvline(start, color="gray", ls=":", lw=1)
                ax.text(start, ax.get_ylim()[1], f" {name}", va="top", fontsize=8, color="gray")
    evals = [m for m in metrics if m.get("event") == "val"]  # each phase's validation checks
    if evals:
        ax2 = ax.twinx()
        for key, color in (("largest", "#dd8452"), ("smallest", "#55a868")):
            points = [m for m in evals if key in m]
            ax2.plot([m["global_step"] for m in points], [100 * m[key] for m in points], "s", color=color, ms=3,
                     label=f"validation top-1, {key} subnet [%]")
        ax2.set_ylabel("validation top-1 [%]")
        ax2.legend(loc="center right", fontsize=7)
    ax.set_xlabel("training step (all phases)")
    ax.set_ylabel("loss")
    ax.set_title("supernet training (progressive shrinking)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value: Any, spec: str = ".2f", scale: float = 1.0, suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value * scale:{spec}}{suffix}"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1240px;color:#222;padding:0 1rem}
table.top{width:100%}table.top code{word-break:break-all}svg.front{border:1px solid #eee;max-width:100%;height:auto}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.3rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plots img{max-width:100%;border:1px solid #eee}
code{background:#f6f8fa;padding:.1rem .3rem;border-radius:3px;font-size:.85rem}
details{margin:.3rem 0}.muted{color:#666;font-size:.9rem}
"""


def render_report(data: ReportData, out_dir: str | Path) -> Path:
    """Write `report.html` and its PNGs into `out_dir`; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(data.title)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(data.title)}</h1>",
             f"<p>Dataset <code>{html.escape(data.dataset)}</code>, search space <code>{html.escape(data.space)}</code>.</p>"]
    if data.stopped:
        parts.append(f"<p class=bad>{html.escape(data.stopped)}</p>")

    parts.append("<h2>Chosen models</h2><table class=top><tr><th class=l>device</th><th>budget</th>"
                 "<th>latency measured / predicted</th><th>meets budget</th><th class=l>accuracy of the file "
                 "(its card's)</th><th>predicted</th><th>TFLite Micro arena / int8 file (measured)</th>"
                 "<th class=l>export checks</th><th class=l>files</th></tr>")
    for dev in data.devices:
        for b in dev.budgets:
            meets = ("<span class=ok>yes</span>" if b.meets_budget else "<span class=bad>no</span>"
                     if b.meets_budget is not None else "–")
            sram, flash = (b.card or {}).get("sram") or {}, (b.card or {}).get("flash") or {}
            parts.append(
                f"<tr><td class=l>{html.escape(dev.name)}<br><span class=muted>{dev.runtime}, {dev.precision}</span>"
                f"</td><td title='{html.escape(b.source)}'>{b.budget_ms:g} ms</td>"
                f"<td>{_fmt(b.measured_latency_ms, '.3f', suffix=' ms')} / "
                f"{_fmt(b.predicted_latency_ms, '.3f', suffix=' ms')}</td><td>{meets}</td>"
                f"<td class=l>{html.escape(_budget_accuracy(b))}</td>"
                f"<td>{_fmt(b.predicted_accuracy, '.1f', 100, ' %')}</td>"
                f"<td>{_kib(sram.get('tflm_arena_bytes'))} / {_kib(flash.get('int8_file_bytes'))}</td>"
                f"<td class=l>{_checks_cell(b)}</td>"
                f"<td class=l><code>{html.escape(_short_path(b.export_dir))}</code></td></tr>")
    parts.append("</table><p class=muted>Accuracy: top-1 of the file the budget was judged on, as its model card "
                 "states it, with the split and image count (and the holdout images the pick used beside it). "
                 "Hover a budget for where it came from; each device's section says it too.</p>")

    for dev in data.devices:
        slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in dev.name)
        parts.append(f"<h2>Device {html.escape(dev.name)}</h2>")
        desc = {k: v for k, v in dev.description.items() if k in ("kind", "host", "runtime", "threads", "machine")}
        if desc:
            parts.append("<table class=settings><tr>" + "".join(f"<th class=l>{html.escape(k)}</th>" for k in desc)
                         + "</tr><tr>" + "".join(f"<td class=l>{html.escape(_plain(v))}</td>" for v in desc.values())
                         + "</tr></table>")
        plot_pareto(dev, out / f"pareto-{slug}.png")  # the same front as a PNG file, for slides
        calib = plot_calibration(dev, out / f"calibration-{slug}.png")
        parts.append(f"<div class=plots>{front_svg(dev)}{_img(calib, 'calibration ' + dev.name)}</div>")
        if dev.calibration_check:
            ok = dev.calibration_check.get("passed")
            parts.append(f"<p class={'ok' if ok else 'bad'}>{html.escape(dev.calibration_check.get('message', ''))}</p>")
        if dev.calibration_summary:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(k))}</th>" for k in dev.calibration_summary)
                         + "</tr><tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in dev.calibration_summary.values())
                         + "</tr></table>")
        for b in dev.budgets:
            parts.append(f"<h3>Budget {b.budget_ms:g} ms</h3>")
            if b.source:
                parts.append(f"<p class=muted>Budget: {html.escape(b.source)}.</p>")
            if b.note:
                parts.append(f"<p>{html.escape(b.note)}</p>")
            if b.arch:
                parts.append(_arch_table(b.arch))
            if b.card:
                parts.append(_card_summary(b.card))
                parts.append("<details><summary>full model card</summary><table>")
                for key, value in _card_rows(b.card):
                    parts.append(f"<tr><th class=l>{html.escape(key)}</th><td class=l>{html.escape(value)}</td></tr>")
                parts.append("</table></details>")

    parts.append("<h2>Supernet training</h2>")
    if data.training_metrics:
        curves = plot_training(data.training_metrics, out / "training.png")
        parts.append(f"<div class=plots>{_img(curves, 'training curves')}</div>")
    if data.training_summary:
        parts.append(_kv_table(data.training_summary))
    if data.predictor_summary:
        parts.append("<h2>Accuracy predictor</h2>" + _kv_table(data.predictor_summary))
    if data.stage_seconds:
        parts.append("<h2>Time per stage</h2>" + _kv_table({k: f"{v:.1f} s" for k, v in data.stage_seconds.items()}))
    parts.append("<p class=muted>Made by edgenas. Everything on this page was computed or measured in this run.</p>")
    parts.append("</body></html>")
    return atomic_write_text(out / "report.html", "\n".join(parts))


def _checks_cell(b: BudgetResult) -> str:
    """Whether the shipped files passed every check, and which candidates were passed over on the way."""
    if b.problems:
        return "<span class=bad>FAILED</span>: " + html.escape("; ".join(b.problems))
    if b.card is None:
        return "–"
    return "<span class=ok>passed</span>" + (f" ({html.escape(b.choice)})" if b.choice else "")


def _kib(value: Any) -> str:
    return _fmt(value, ".1f", 1 / 1024, " KiB")


def _memory_cells(card: dict | None) -> str:
    """Two cells: the TFLite Micro arena and the int8 file, measured / predicted (– where not known)."""
    sram, flash = (card or {}).get("sram") or {}, (card or {}).get("flash") or {}
    return (f"<td>{_kib(sram.get('tflm_arena_bytes'))} / {_kib(sram.get('predicted_arena_bytes'))}</td>"
            f"<td>{_kib(flash.get('int8_file_bytes'))} / {_kib(flash.get('predicted_int8_bytes'))}</td>")


def _timing(measured: dict) -> str:
    """How a file's latency was taken, in a few words: the window, the slow share, retimes, unsteadiness."""
    timing = measured.get("timing") or {}
    window = timing.get("window") or {}
    if window.get("seconds") is None:
        return "–"
    text = f"{window['seconds']:.0f} s window, slow {window.get('slow_share') or 0:.0%}"
    if timing.get("retimed"):
        text += f", retimed {timing['retimed']}x"
    if window.get("unsteady"):
        text += f", UNSTEADY: {window['unsteady']}"
    return text


def _card_summary(card: dict) -> str:
    """The model card's key facts: per file its size, accuracy, measured latency and checksum; memory; cost."""
    acc = (card.get("accuracy") or {}).get("files", {})
    _, split, images = card_accuracy(card, None)
    lat = {m.get("file"): m for m in (card.get("latency") or {}).get("measured", []) if isinstance(m, dict)}
    rows = [f"<table><tr><th class=l>file</th><th>size</th><th>accuracy ({html.escape(split)}, "
            f"{images if images is not None else '?'} images)</th><th>measured latency</th>"
            "<th>median run</th><th>timing</th><th class=l>sha256</th></tr>"]
    for f in card.get("files") or []:
        if not isinstance(f, dict):
            continue
        name = f.get("name", "?")
        m = lat.get(name) or {}
        ms = m.get("latency_ms", m.get("median_ms"))
        rows.append(f"<tr><td class=l><code>{html.escape(name)}</code></td><td>{f.get('bytes', 0) / 1024:.1f} KiB</td>"
                    f"<td>{_fmt(acc.get(name), '.1f', 100, ' %')}</td><td>{_fmt(ms, '.3f', suffix=' ms')}</td>"
                    f"<td>{_fmt(m.get('median_ms'), '.3f', suffix=' ms')}</td><td>{html.escape(_timing(m))}</td>"
                    f"<td class=l><code>{html.escape(str(f.get('sha256', ''))[:16])}…</code></td></tr>")
    rows.append("</table>")
    sram = card.get("sram") or {}
    facts = {"MACs": f"{card.get('macs', 0) / 1e6:.2f} M", "parameters": f"{card.get('params', 0):,}"}
    if sram.get("tflm_arena_bytes"):
        facts["SRAM (TFLite Micro arena)"] = f"{sram['tflm_arena_bytes'] / 1024:.1f} KiB"
    if sram.get("predicted_arena_bytes"):
        facts["SRAM (arena predicted, 64-bit host / 32-bit board)"] = (
            f"{_kib(sram['predicted_arena_bytes'])} / {_kib(sram.get('predicted_board_arena_bytes'))}")
    flash = card.get("flash") or {}
    if flash.get("predicted_int8_bytes"):
        facts["flash (int8 file, measured / predicted)"] = (
            f"{_kib(flash.get('int8_file_bytes'))} / {_kib(flash['predicted_int8_bytes'])}")
    if sram.get("analytic_peak_int8_bytes"):
        facts["SRAM (analytic peak, int8)"] = f"{sram['analytic_peak_int8_bytes'] / 1024:.1f} KiB"
    if card.get("problems"):
        facts["problems"] = "; ".join(card["problems"])
    return "\n".join(rows) + _kv_table(facts)


def _budget_accuracy(b: BudgetResult) -> str:
    return accuracy_text(b.measured_accuracy, b.accuracy_split or "val", b.accuracy_images, b.holdout_accuracy,
                         b.holdout_images)


def _short_path(path: str | None) -> str:
    """An export folder as the last three parts of its path (export/<device>/budget-<T>ms): the table stays narrow."""
    if not path:
        return "–"
    parts = Path(path).parts
    return str(Path(*parts[-3:])) if len(parts) > 3 else path


def _arch_table(arch: dict) -> str:
    """An arch as a small table (resolution, then one row per list): no JSON on the page."""
    rows = "".join(f"<tr><th class=l>{html.escape(str(k))}</th><td class=l>{html.escape(_plain(v))}</td></tr>"
                   for k, v in arch.items())
    return f"<table class=arch>{rows}</table>"


def _plain(value: Any) -> str:
    """A value as words and numbers, not JSON: lists joined by commas, mappings as `key: value; ...`."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    if value is None:
        return "–"
    return _cell(value)


def front_svg(dev: DeviceReport, width: int = 560, height: int = 340) -> str:
    """The accuracy-latency front of one device as inline SVG: the predicted front, the measured candidates, the
    budgets as dashed lines and each shipped file as a marked, labelled point."""
    shipped = [(b.measured_latency_ms, b.measured_accuracy, b.budget_ms) for b in dev.budgets
               if b.measured_latency_ms is not None and b.measured_accuracy is not None]
    points = list(dev.pareto_predicted) + list(dev.pareto_measured) + [(x, y) for x, y, _ in shipped]
    title = f"{dev.name} ({dev.runtime}, {dev.precision}): accuracy vs latency"
    if not points:
        return f"<p class=muted>{html.escape(title)}: no front was searched.</p>"
    left, right, top, bottom = 56, 16, 28, 44
    xs = [p[0] for p in points] + [b.budget_ms for b in dev.budgets]
    ys = [p[1] for p in points]
    x0, x1 = min(xs) * 0.95, max(xs) * 1.05
    y0, y1 = min(ys) - 0.02, min(1.0, max(ys) + 0.02)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 0.01)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    e = html.escape
    out = [f"<svg class=front xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' role='img' aria-label='{e(title)}'>",
           f"<text x='{left}' y='16' font-size='13' font-weight='600'>{e(title)}</text>",
           f"<rect x='{left}' y='{top}' width='{width - left - right}' height='{height - top - bottom}' "
           "fill='none' stroke='#bbb'/>"]
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        out.append(f"<text x='{sx(xv):.1f}' y='{height - bottom + 16}' font-size='10' text-anchor='middle'>"
                   f"{xv:.3g}</text>")
        out.append(f"<text x='{left - 6}' y='{sy(yv) + 3:.1f}' font-size='10' text-anchor='end'>{100 * yv:.1f}</text>")
    out.append(f"<text x='{(left + width - right) / 2:.0f}' y='{height - 8}' font-size='11' text-anchor='middle'>"
               "latency on the device [ms]</text>")
    out.append(f"<text x='14' y='{(top + height - bottom) / 2:.0f}' font-size='11' text-anchor='middle' "
               f"transform='rotate(-90 14 {(top + height - bottom) / 2:.0f})'>top-1 [%]</text>")
    for b in dev.budgets:
        out.append(f"<line x1='{sx(b.budget_ms):.1f}' x2='{sx(b.budget_ms):.1f}' y1='{top}' y2='{height - bottom}' "
                   f"stroke='#999' stroke-dasharray='4 3'><title>budget {b.budget_ms:g} ms: {e(b.source)}</title>"
                   "</line>")
    front = sorted(dev.pareto_predicted)
    if front:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in front)
        out.append(f"<polyline points='{path}' fill='none' stroke='#4c72b0' stroke-width='1.5'/>")
        out += [f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2.5' fill='#4c72b0'/>" for x, y in front]
    out += [f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='4' fill='none' stroke='#dd8452' stroke-width='1.5'>"
            f"<title>candidate measured: {x:.3f} ms, {100 * y:.1f} %</title></circle>" for x, y in dev.pareto_measured]
    for x, y, budget in shipped:
        cx, cy = sx(x), sy(y)
        star = " ".join(f"{cx + r * math.cos(math.pi / 2 + k * math.pi / 5):.1f},"
                        f"{cy - r * math.sin(math.pi / 2 + k * math.pi / 5):.1f}"
                        for k, r in zip(range(10), [8, 3.5] * 5))
        out.append(f"<polygon class=shipped points='{star}' fill='#c62828' stroke='black' stroke-width='0.6'>"
                   f"<title>shipped for {budget:g} ms: {x:.3f} ms measured, {100 * y:.1f} %</title></polygon>")
        out.append(f"<text x='{cx + 9:.1f}' y='{cy - 6:.1f}' font-size='10' fill='#c62828'>shipped ({budget:g} ms)"
                   "</text>")
    legend = [("#4c72b0", "front (predicted)"), ("#dd8452", "candidates (measured)"), ("#c62828", "shipped file")]
    for i, (color, label) in enumerate(legend):
        lx = left + 8 + 150 * i
        out.append(f"<rect x='{lx}' y='{height - bottom - 14}' width='8' height='8' fill='{color}'/>"
                   f"<text x='{lx + 12}' y='{height - bottom - 6}' font-size='10'>{label}</text>")
    out.append("</svg>")
    return "".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _kv_table(d: dict) -> str:
    rows = "".join(f"<tr><th class=l>{html.escape(str(k))}</th><td class=l>{html.escape(_cell(v))}</td></tr>"
                   for k, v in d.items())
    return f"<table>{rows}</table>"


def _card_rows(card: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in card.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and len(json.dumps(value)) > 120:
            rows.extend(_card_rows(value, name + "."))
        else:
            rows.append((name, _plain(value)))
    return rows
