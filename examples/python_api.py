"""The Python API in a page: a search space, a subnet sampled with an explicit Generator, a supernet, the subnet
extracted as a plain PyTorch model with the same outputs. `python examples/python_api.py` (the test suite runs it)."""

import numpy as np
import torch

from edgenas import SearchSpace, Supernet
from edgenas.cost import arch_stats

space = SearchSpace.preset("tiny")
rng = np.random.default_rng(0)
arch = space.sample(rng)
net = Supernet(space, num_classes=10).eval()
model = net.extract(arch)  # a plain nn.Module, same outputs as net.set_active(arch)
x = torch.randn(2, space.in_channels, arch.resolution, arch.resolution)
net.set_active(arch)
with torch.no_grad():
    assert torch.allclose(model(x), net(x), atol=1e-5)
print(arch.to_dict())
print(arch_stats(space, arch))  # params, MACs, peak activation memory, flash size
