"""Train a small `mcunet` supernet on CPU in minutes, for `tools/bench/mcu.py` and the 256 KB search of docs/mcu.md.

`edgenas train` runs progressive shrinking with a validation check at each of its six phases; on two shared cores
those checks alone took longer than the training (77 s a phase for 44 steps in all, and a supernet at 13 % top-1:
too little for an accuracy predictor to see anything, resolution included). This script trains the same supernet
class with the sandwich rule instead (BigNAS: every step the largest subnet on the labels, the smallest and one
random subnet distilled from it, all at one random resolution and, where the space has several, random widths), for
a fixed number of seconds, and writes the checkpoint `edgenas predictor fit` and `edgenas search` read.

    python tools/bench/mcu_supernet.py --out runs/mcu --seconds 900 \\
        [--space mcunet] [--dataset shapes:image_size=160,samples=3000] [--resolutions 64,96,...]

Then `edgenas predictor fit --supernet runs/mcu/supernet.pt --samples N` and `edgenas search ... --board B`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def train(space, dataset: str, seconds: float, batch_size: int, lr: float, seed: int, sandwich: bool = True,
          log=print):
    """The supernet after `seconds` of steps, and the steps taken. A step trains at one random resolution: with
    `sandwich`, the largest subnet on the labels and the smallest and a random one distilled from it; without (a
    third of the cost on a busy CPU), two random subnets on the labels (single-path uniform sampling)."""
    import torch
    import torch.nn.functional as F

    from edgenas.data import load_dataset
    from edgenas.supernet import Supernet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = Supernet(space)
    data = load_dataset(dataset, seed=seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=4e-5, nesterov=True)
    net.train()
    start, step, epoch = time.monotonic(), 0, 0
    while time.monotonic() - start < seconds:
        for x, y in data.loader("train", batch_size=batch_size, resolution=max(space.resolutions), shuffle=True,
                                seed=epoch):
            elapsed = time.monotonic() - start
            if elapsed >= seconds:
                break
            for group in opt.param_groups:  # cosine over the time budget
                group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * min(1.0, elapsed / seconds)))
            resolution = int(rng.choice(space.resolutions))
            x = net.resize(x, resolution)
            opt.zero_grad()
            if sandwich:
                net.set_active(space.largest(resolution))
                logits = net(x)
                loss = F.cross_entropy(logits, y)
                loss.backward()
                teacher = logits.detach().softmax(1)
                archs = (space.smallest(resolution), space.sample(rng, resolutions=[resolution]))
            else:
                teacher, archs = y, [space.sample(rng, resolutions=[resolution]) for _ in range(2)]
            for arch in archs:
                net.set_active(arch)
                loss = F.cross_entropy(net(x), teacher)
                loss.backward()
            opt.step()
            step += 1
            if step % 20 == 0:
                log(f"step {step}, {elapsed:.0f} s, loss {loss.item():.3f}", flush=True)
        epoch += 1
    net.set_active(space.largest())
    return net, data, step


def main(argv: list[str] | None = None) -> int:
    from edgenas.space import SearchSpace
    from edgenas.train.checkpoint import save_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--space", default="mcunet")
    p.add_argument("--dataset", default="shapes:image_size=160,samples=3000")
    p.add_argument("--resolutions", help="comma-separated subset of the space's (default: all of them)")
    p.add_argument("--seconds", type=float, default=900)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--uniform", action="store_true", help="two random subnets a step on the labels, no sandwich")
    args = p.parse_args(argv)
    from edgenas.data import load_dataset

    data = load_dataset(args.dataset, seed=args.seed)  # its channels and classes make the space (digits: grey)
    space = SearchSpace.preset(args.space, num_classes=data.num_classes, in_channels=data.in_channels)
    if args.resolutions:
        space = space.replace(resolutions=tuple(int(r) for r in args.resolutions.split(",")))
    net, data, steps = train(space, args.dataset, args.seconds, args.batch_size, args.lr, args.seed,
                              sandwich=not args.uniform)
    args.out.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(args.out / "supernet.pt", {
        "space": space.to_dict(), "model": net.state_dict(), "dataset": args.dataset,
        "dataset_fingerprint": data.fingerprint, "seed": args.seed,
        "config": {"trainer": f"tools/bench/mcu_supernet.py ({'uniform' if args.uniform else 'sandwich'})",
                   "steps": steps,
                   "seconds": args.seconds, "batch_size": args.batch_size, "lr": args.lr}, "complete": True})
    print(f"{steps} steps in {args.seconds:g} s; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
