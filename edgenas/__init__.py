"""edgenas: hardware-aware neural architecture search for edge deployment.

Heavy parts (torch, paramiko, TensorFlow) load lazily on first use, so that
`import edgenas` and `edgenas --help` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgenas' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
