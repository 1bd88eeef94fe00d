"""edgenas: hardware-aware neural architecture search for edge deployment.

Heavy parts (torch, paramiko, TensorFlow) load lazily on first use, so that
`import edgenas` and `edgenas --help` stay fast.
"""

from __future__ import annotations

from edgenas._lazy import lazy_attributes

__version__ = "0.1.0"

_LAZY = {
    "SearchSpace": "edgenas.space",
    "Arch": "edgenas.space",
    "StageSpec": "edgenas.space",
    "Supernet": "edgenas.supernet",
    "load_supernet": "edgenas.train.checkpoint",
    "load_device": "edgenas.devices",
    "UsageError": "edgenas.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


__getattr__, __dir__ = lazy_attributes('edgenas', _LAZY, globals())
