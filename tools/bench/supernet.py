"""Benchmark the supernet on the CPU: forward+backward samples/s of the largest, smallest and random
subnets of each preset at batch 64, and the time of `extract` and of the ONNX export.

Usage: python tools/bench/supernet.py [--presets tiny,mobilenetv3] [--batch 64] [--iters 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edgenas import SearchSpace, Supernet  # noqa: E402
from edgenas.cost import arch_stats  # noqa: E402
from edgenas.export.onnx import export_onnx  # noqa: E402


def train_throughput(net: Supernet, arch, batch: int, iters: int) -> float:
    net.train().set_active(arch)
    x = torch.randn(batch, net.space.in_channels, arch.resolution, arch.resolution)
    y = torch.randint(0, net.num_classes, (batch,))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    times = []
    for i in range(iters + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        if i:  # the first iteration is warm-up
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="tiny,mobilenetv3")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--random", type=int, default=3, help="random subnets per preset")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"median of {args.iters} steps after 1 warm-up")
    print(f"{'preset':<12} {'subnet':<10} {'res':>4} {'MMACs':>8} {'params':>9} {'train samples/s':>16} "
          f"{'extract ms':>11} {'onnx export ms':>15}")
    rng = np.random.default_rng(0)
    for name in args.presets.split(","):
        space = SearchSpace.preset(name)
        net = Supernet(space)
        archs = [("largest", space.largest()), ("smallest", space.smallest())]
        archs += [(f"random{i}", space.sample(rng)) for i in range(args.random)]
        for label, arch in archs:
            sps = train_throughput(net, arch, args.batch, args.iters)
            net.eval()
            t0 = time.perf_counter()
            model = net.extract(arch)
            t_extract = time.perf_counter() - t0
            with tempfile.TemporaryDirectory() as tmp:
                result = export_onnx(model, Path(tmp) / "m.onnx")
            st = arch_stats(space, arch)
            print(f"{name:<12} {label:<10} {arch.resolution:>4} {st.macs / 1e6:>8.1f} {st.params:>9,} {sps:>16.1f} "
                  f"{t_extract * 1e3:>11.1f} {result.seconds * 1e3:>15.1f}")


if __name__ == "__main__":
    main()
