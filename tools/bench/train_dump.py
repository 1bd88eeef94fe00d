"""Train a short digits run (24 steps, the tiny preset, one thread) and print its weights' SHA-256, the validation
top-1 of its subnets and its metrics (times left out): a before/after check that a change leaves CPU training's
numbers bit for bit as they were.

    git archive OLD | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before python tools/bench/train_dump.py > before.json
    PYTHONPATH=. python tools/bench/train_dump.py > after.json && cmp before.json after.json
"""

import hashlib
import json
import tempfile
from pathlib import Path

import torch

from edgenas.train.config import load_config
from edgenas.train.trainer import train

config = load_config(None, preset="tiny").spread_steps(24).replace(compare_alone=False, final_samples=1)
with tempfile.TemporaryDirectory() as tmp:
    r = train(config, Path(tmp) / "run", threads=1, progress=False, tensorboard=False, device="cpu")
    state = torch.load(r.checkpoint, weights_only=True)
    h = hashlib.sha256()
    for k, v in sorted(state["model"].items()):
        h.update(k.encode())
        h.update(v.cpu().numpy().tobytes())
    metrics = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    kept = ("event", "step", "loss", "acc", "lr", "global_step")
    keep = [{k: v for k, v in m.items() if k in kept or k.startswith("val_")} for m in metrics]
    print(json.dumps({"model_sha256": h.hexdigest(), "val": state["summary"]["val"], "metrics": keep}, sort_keys=True))
