"""Starting a training run from a pretrained supernet (`edgenas train --init SUPERNET.pt`): its weights checked
against the run's space and loaded, the classifier replaced by a new one where the class count differs, and the
lineage (file name and SHA-256) the run's checkpoints record.

Any edgenas supernet checkpoint will do: one trained here, or Once-for-All's published supernet brought in by
`edgenas import ofa`. It is read with `torch.load(weights_only=True)` (through `read_checkpoint`): nothing in it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgenas.artifacts import sha256_file
from edgenas.errors import UsageError
from edgenas.space import SearchSpace
from edgenas.train.checkpoint import read_checkpoint

HEAD = ("classifier.weight", "classifier.bias")


@dataclass
class InitWeights:
    """A pretrained supernet's weights, fitted to the run's space: the backbone as stored, the head new or kept."""

    path: Path
    sha256: str
    space: SearchSpace  # the stored space (its own class count)
    weights: dict[str, torch.Tensor]
    new_head: bool

    def lineage(self) -> dict[str, Any]:
        """What a checkpoint records of where its training started."""
        return {"file": self.path.name, "path": str(self.path), "sha256": self.sha256,
                "space": self.space.name, "classes": self.space.num_classes,
                "classifier": "new" if self.new_head else "kept"}

    def describe(self, num_classes: int) -> str:
        head = (f"a new classifier for {num_classes} classes (it had {self.space.num_classes})" if self.new_head
                else f"its classifier kept ({num_classes} classes)")
        return (f"starting from {self.path.name} (sha256 {self.sha256[:12]}): space {self.space.name}, backbone "
                f"loaded, {head}")


def init_space_name(path: str | Path) -> str:
    """The search-space name stored in a supernet checkpoint (a run with `--init` and no `--space` takes it)."""
    return init_space(path).name


def init_space(path: str | Path) -> SearchSpace:
    """The search space stored in a supernet checkpoint (a run of its preset trains on it, resolutions included)."""
    return SearchSpace.from_dict(read_checkpoint(path)["space"])


def read_init(path: str | Path, space: SearchSpace, fresh: dict[str, torch.Tensor]) -> InitWeights:
    """The weights of the supernet at `path` for a run on `space`; `fresh` is the run's own initial state (its new
    classifier where the class counts differ). One line, exit 2, where the two spaces differ in anything but the
    class count (another width, other stages or kernels)."""
    state = read_checkpoint(path)
    stored = SearchSpace.from_dict(state["space"])
    mine = space.replace(num_classes=stored.num_classes)
    if mine != stored:
        diff = [k for k in ("name", "width_mult", "stages", "kernels", "expands", "in_channels", "stem_width",
                            "final_expand_width", "feature_width", "resolutions")
                if getattr(mine, k, None) != getattr(stored, k, None)]
        shown = ", ".join(f"{k} {getattr(stored, k)!r} there, {getattr(mine, k)!r} here" for k in diff[:2])
        raise UsageError(f"--init {path}: its supernet is of space '{stored.name}' (width x{stored.width_mult}), not "
                         f"this run's '{space.name}' (width x{space.width_mult}){': ' + shown if shown else ''}; "
                         f"train with --space {stored.name}, or start from a supernet of space '{space.name}'")
    weights = dict(state["model"])
    new_head = stored.num_classes != space.num_classes
    if new_head:
        for key in HEAD:
            weights[key] = fresh[key].detach().clone().cpu()
    return InitWeights(Path(path), sha256_file(path), stored, weights, new_head)


def freeze_backbone_grads(net: torch.nn.Module) -> None:
    """Drop every gradient but the classifier's: SGD then leaves the backbone as it is (the head warms up first)."""
    for name, p in net.named_parameters():
        if name not in HEAD:
            p.grad = None
