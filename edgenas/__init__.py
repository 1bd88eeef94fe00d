"""edgenas: hardware-aware neural architecture search for edge deployment.

Heavy parts (torch, paramiko, TensorFlow) load lazily on first use, so that
`import edgenas` and `edgenas --help` stay fast.
"""

from __future__ import annotations

import os as _os
import sys as _sys

from edgenas._lazy import lazy_attributes

# PyTorch's CPU threads wait for work without spinning: on a machine whose cores other programs also use, two
# spinning threads made a training step 6x slower than one thread (measured on 2 cores at load 9); waiting
# passively, two threads cost no more than one there and use both cores when they are free. libgomp reads this
# when torch loads, so it holds only when edgenas is imported first (`edgenas` the command always is).
OMP_PASSIVE = "torch" not in _sys.modules and _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE").upper() == "PASSIVE"

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
