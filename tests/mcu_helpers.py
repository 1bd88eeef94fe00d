"""Shared by the microcontroller tests (issue 44): an int8 file of a subnet with int8 I/O, quickly."""

from __future__ import annotations

import numpy as np
import torch

from edgenas.space import SearchSpace


def int8_file(space: SearchSpace, arch, seed: int = 0, normalised: bool = False) -> bytes:
    """The int8 .tflite (int8 I/O) of `arch` with the untrained supernet's weights, BatchNorm statistics
    recalibrated on random images (so the logits spread); with `normalised`, behind the per-channel normalisation
    a colour dataset's files carry (`NormalisedInput`)."""
    from edgenas.export.tflite_int8 import write_int8_tflite
    from edgenas.supernet import Supernet
    from edgenas.train.bn import recalibrate_bn

    torch.manual_seed(seed)
    net = Supernet(space, space.num_classes).extract(arch)
    images = torch.from_numpy(np.random.default_rng(seed).normal(size=(4, 3, arch.resolution, arch.resolution))
                              .astype(np.float32))
    recalibrate_bn(net, [images])
    net.eval()
    if normalised:
        from edgenas.export.contract import NormalisedInput

        net = NormalisedInput(net, {"channels": 3, "mean": [127.5] * 3, "std": [127.5] * 3,
                                    "normalised_inside": {"mean": [124.0, 116.0, 104.0], "std": [58.0, 57.0, 57.5]}}).eval()
    return write_int8_tflite(net, images[:2].numpy(), int8_io=True)


def mcunet_checkpoint(folder, space: SearchSpace, dataset: str = "shapes:samples=600", steps: int = 0,
                      resolution: int = 96):
    """A supernet checkpoint of `space` (an mcunet space, 10 classes) tied to `dataset`, trained `steps` SGD steps
    on random subnets at `resolution` px (enough for int8 files whose top-1 agrees with PyTorch's: an untrained
    net's logits are near ties)."""
    from edgenas.data import load_dataset
    from edgenas.supernet import Supernet
    from edgenas.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = Supernet(space)
    data = load_dataset(dataset, seed=0)
    if steps:
        rng = np.random.default_rng(0)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        net.train()
        done = 0
        while done < steps:
            for x, y in data.loader("train", batch_size=32, resolution=resolution, shuffle=True, seed=done):
                net.set_active(space.sample(rng))
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x), y).backward()
                opt.step()
                done += 1
                if done == steps:
                    break
    return save_checkpoint(folder / "supernet.pt", {
        "space": space.to_dict(), "model": net.state_dict(), "dataset": dataset,
        "dataset_fingerprint": data.fingerprint, "seed": 0, "config": {}, "complete": True})
