"""Once-for-All's own code as the reference (a fetched checkout, never vendored): path, shims, table loading.

Its model and tutorial modules import its data loaders and ImageNet helpers, which need torchvision (not
installed here, and unused by the models, the predictor, the latency tables and the evolution finder):
empty stand-ins for those two modules are enough. Its `LatencyEstimator` downloads its table and reads it
with `yaml.load` without a loader (refused by PyYAML 6): `ofa_latency_table` builds the same objects from
local files with `yaml.safe_load`, and every query and sum is Once-for-All's code as it is.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path


def load_ofa(src: str | Path) -> None:
    """Make `import ofa` work from the checkout at `src`."""
    sys.path.insert(0, str(src))
    sys.modules.setdefault("ofa.utils.my_dataloader", types.ModuleType("ofa.utils.my_dataloader"))
    helper = types.ModuleType("ofa.tutorial.imagenet_eval_helper")
    helper.evaluate_ofa_subnet = helper.evaluate_ofa_specialized = None
    sys.modules.setdefault("ofa.tutorial.imagenet_eval_helper", helper)


def ofa_latency_table(files: dict[int, str | Path]):
    """Once-for-All's `LatencyTable` over local YAML files {resolution: path}."""
    import yaml
    from ofa.tutorial.latency_table import LatencyEstimator, LatencyTable

    table = LatencyTable.__new__(LatencyTable)
    table.latency_tables = {}
    for resolution, path in files.items():
        estimator = LatencyEstimator.__new__(LatencyEstimator)
        with open(path) as f:
            estimator.lut = yaml.safe_load(f)
        table.latency_tables[resolution] = estimator
    return table
