"""The gate before anything ships: did the supernet learn?

`training_verdict(summary)` reads a training summary (the trainer's, also in the checkpoint and its
manifest) and fails it when

- the largest subnet's validation top-1 is not far above chance: below chance + a quarter of the way
  from chance to 100 %, or within 3 standard errors of chance on this validation split; or
- the smallest subnet is far below the largest (more than 10 points).

A failed verdict carries a hint chosen from the training curves: more epochs (or a larger time
budget) when the curves were still rising or the time ran out, a bigger dataset when the network
fitted its training images but not the validation ones, a larger preset otherwise. The comparison with
the largest network trained alone is reported, not gated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# The largest subnet must close at least this share of the gap from chance to 100 %.
ABOVE_CHANCE_SHARE = 0.25
# ... and stand this many standard errors (of a top-1 at chance on the validation split) above chance.
ABOVE_CHANCE_SE = 3.0
# The smallest subnet may trail the largest by at most this much (top-1, 0..1).
SMALLEST_GAP = 0.10
# Training top-1 this far above validation top-1 means memorising, not learning.
MEMORISED_GAP = 0.25


@dataclass
class Verdict:
    passed: bool
    largest: float | None
    smallest: float | None
    chance: float | None
    alone: float | None = None
    problems: list[str] = field(default_factory=list)
    hint: str = ""

    @property
    def message(self) -> str:
        named = (("largest subnet", self.largest), ("smallest", self.smallest), ("chance", self.chance),
                 ("largest network trained alone", self.alone))
        figures = [f"{label} {100 * value:.1f} %" for label, value in named if value is not None]
        head = "training check passed" if self.passed else "training check FAILED: " + "; ".join(self.problems)
        text = f"{head} (val top-1: {', '.join(figures)})" if figures else head
        return f"{text}. {self.hint}" if self.hint else text

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "largest": self.largest, "smallest": self.smallest, "chance": self.chance,
                "alone": self.alone, "problems": list(self.problems), "hint": self.hint, "message": self.message}


def required_top1(chance: float, val_size: int | None) -> float:
    """The lowest validation top-1 of the largest subnet that counts as far above chance."""
    need = chance + ABOVE_CHANCE_SHARE * (1.0 - chance)
    if val_size:
        need = max(need, chance + ABOVE_CHANCE_SE * math.sqrt(chance * (1.0 - chance) / val_size))
    return min(need, 1.0)


def _named(summary: dict[str, Any], name: str) -> float | None:
    for row in summary.get("val") or []:
        if row.get("name") == name:
            return float(row["top1"])
    return None


class TrainingGateFailed(Exception):
    """The supernet did not learn enough to ship anything from it (`edgenas run` exits 1 unless --force)."""

    def __init__(self, verdict: Verdict, checkpoint: Any = None) -> None:
        super().__init__(verdict.message)
        self.verdict, self.checkpoint = verdict, checkpoint
        self.report: Any = None  # the report `edgenas run` wrote (training curves and the verdict), if any


def training_verdict(summary: dict[str, Any], *, num_classes: int | None = None) -> Verdict:
    """The verdict on a training summary: passed, the figures, what failed and what to try.

    A summary written before chance was recorded falls back on 1 / `num_classes`."""
    largest, smallest = _named(summary, "largest"), _named(summary, "smallest")
    chance = summary.get("chance", 1.0 / num_classes if num_classes else None)
    alone = (summary.get("alone") or {}).get("top1")
    verdict = Verdict(True, largest, smallest, chance, alone)
    imported = summary.get("imported_from")
    if largest is None and isinstance(imported, dict):  # trained elsewhere (edgenas import ofa): no curves here
        where = f"imported from {imported.get('file') or imported.get('format') or 'another tool'}"
        if imported.get("classifier") == "new, untrained":
            verdict.passed = False
            verdict.problems.append(f"the supernet was {where} with a new, untrained classifier")
            verdict.hint = ("Its accuracies mean nothing until that classifier is trained on your data; `edgenas run "
                            "--force` runs every other stage with it.")
        else:
            verdict.hint = f"The supernet was {where}: trained elsewhere, not checked here."
        return verdict
    if largest is None or chance is None:
        verdict.passed = False
        verdict.problems.append("the summary holds no final validation of the largest subnet")
        verdict.hint = "Run the training to its end (`edgenas train` with --resume)."
        return verdict
    need = required_top1(float(chance), summary.get("val_size"))
    far_above = largest >= need
    if not far_above:
        verdict.problems.append(f"the largest subnet ({100 * largest:.1f} %) is not far above chance "
                                f"({100 * chance:.1f} %; needs {100 * need:.1f} %)")
    if smallest is not None and smallest < largest - SMALLEST_GAP:
        verdict.problems.append(f"the smallest subnet ({100 * smallest:.1f} %) is more than "
                                f"{100 * SMALLEST_GAP:.0f} points below the largest")
    verdict.passed = not verdict.problems
    if not verdict.passed:
        verdict.hint = _hint(summary, largest, far_above)
    return verdict


def _hint(summary: dict[str, Any], largest: float, far_above: bool) -> str:
    phases = summary.get("phases") or []
    stopped = {p.get("stopped") for p in phases}
    train_acc = [pt["train_acc"] for p in phases[:1] for pt in p.get("curve", []) if "train_acc" in pt]
    if not far_above and train_acc and max(train_acc) - largest >= MEMORISED_GAP:
        return ("The network fitted its training images but not the validation ones: it needs a bigger dataset "
                "(more images per class), or labels that follow from the images.")
    if summary.get("stopped_unlearned"):
        return ("Training stopped after its first phase, where the full network did not learn: check that the labels "
                "follow from the images, give it a bigger dataset or a larger preset (`small`); stop_unlearned = false "
                "in a training config trains every phase anyway.")
    if "time" in stopped:
        return "Its time budget cut phases short: give it more time (--time-budget, time_budget) or a smaller dataset."
    if stopped & {"max_epochs", "length"}:
        return ("A phase ended while its validation top-1 was still rising: give it more epochs "
                "(--epochs-scale, or max_epochs in a training config), or a bigger dataset.")
    if far_above:
        return ("The small subnets lag: a larger preset (`small`: longer shrinking phases, more subnets per step) "
                "or more epochs in the depth and expand phases.")
    return ("It stopped learning early (its validation top-1 reached a plateau): check the labels, try a larger "
            "preset (`small`) or a bigger dataset (more images per class).")
