"""Shared by the microcontroller tests (issue 44): an int8 file of a subnet with int8 I/O, quickly."""

from __future__ import annotations

import numpy as np
import torch

from edgenas.space import SearchSpace


def int8_file(space: SearchSpace, arch, seed: int = 0) -> bytes:
    """The int8 .tflite (int8 I/O) of `arch` with the untrained supernet's weights, BatchNorm statistics
    recalibrated on random images (so the logits spread)."""
    from edgenas.export.tflite_int8 import write_int8_tflite
    from edgenas.supernet import Supernet
    from edgenas.train.bn import recalibrate_bn

    torch.manual_seed(seed)
    net = Supernet(space, space.num_classes).extract(arch)
    images = torch.from_numpy(np.random.default_rng(seed).normal(size=(4, 3, arch.resolution, arch.resolution))
                              .astype(np.float32))
    recalibrate_bn(net, [images])
    net.eval()
    return write_int8_tflite(net, images[:2].numpy(), int8_io=True)
