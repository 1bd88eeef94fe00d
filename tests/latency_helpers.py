"""Shared helpers of the latency tests: a micro search space (few pieces, fast exports) and a fast local device file."""

from __future__ import annotations

import json
from pathlib import Path

from edgenas.space import SearchSpace, StageSpec

MICRO = SearchSpace(
    name="micro",
    stages=(StageSpec(16, 2, "relu", False, (1, 2)), StageSpec(24, 2, "hswish", True, (1, 2))),
    kernels=(3, 5),
    expands=(3, 4),
    resolutions=(16, 20),
    stem_width=8,
    stem_stride=2,
    first_block_width=8,
    final_expand_width=48,
    feature_width=64,
    num_classes=4,
)


def local_device_file(folder: Path, name: str = "testlocal") -> Path:
    """A local ONNX Runtime device that times each model briefly (the real agent, in a subprocess)."""
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\nkind = "local"\nruntime = "onnxruntime"\nthreads = 1\n\n'
                    "[measure]\nwarmup = 1\nruns = 5\nwindow_s = 0.2\nretime = 0\nmin_fast_runs = 0\n")
    return path


def space_file(folder: Path, space: SearchSpace = MICRO) -> Path:
    path = folder / f"{space.name}.json"
    path.write_text(json.dumps(space.to_dict()))
    return path
