"""Train a short digits run and dump weights' hash and metrics (no times): for a before/after bitwise comparison."""
import hashlib, json, sys, tempfile
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
        h.update(k.encode()); h.update(v.cpu().numpy().tobytes())
    metrics = [json.loads(l) for l in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    keep = [{k: v for k, v in m.items() if k in ("event", "step", "loss", "acc", "lr", "global_step") or k.startswith("val_")}
            for m in metrics]
    print(json.dumps({"model_sha256": h.hexdigest(), "val": state["summary"]["val"], "metrics": keep}, sort_keys=True))
