"""Closing the loop: export a search's top candidates as they ship, measure them on the device, evaluate them, pick.

    deploy(result, checkpoint, device, out_dir=..., precision=..., options=ExportOptions(...)) -> Deployment
    MeasuredCandidate                      one candidate's exported file, its measurement and accuracy
    Deployment                             every candidate, the winner (by the one rule) and what shipped

`edgenas search` and `edgenas run` both call `deploy`; the winner's shipped file is the file measured.
"""

from __future__ import annotations

from edgenas._lazy import lazy_attributes

_LAZY = {
    "deploy": "edgenas.deploy.stage",
    "Deployment": "edgenas.deploy.stage",
    "MeasuredCandidate": "edgenas.deploy.stage",
    "pick_winner": "edgenas.deploy.stage",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes("edgenas.deploy", _LAZY, globals())
