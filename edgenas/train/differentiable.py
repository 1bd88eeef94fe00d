"""Differentiable hardware-aware search (DARTS / ProxylessNAS style) over a supernet, with an expected-latency loss.

Architecture parameters: a softmax over kernel sizes and one over expand ratios for every block slot,
and one over depths for every stage (the resolution is fixed per run: see below). DARTS' bilevel
alternation: a weight step on a training batch (one arch sampled from the current distribution, as
ProxylessNAS trains one path), then an architecture step on a held-out batch minimising

    CE + λ · E[latency] / target,   E[latency] = stem + head + Σ_slot P(slot active) · Σ_{k,e} p_k p_e · T[slot, k, e]

where T comes from the device's latency table: the measured piece of each (resolution, slot, kernel,
expand), as the table predictor's `slot_table` gives it, so the expectation is exact for the table.
λ is a Lagrange multiplier raised by dual ascent while E[latency] exceeds the target and lowered (to 0
at least) when it is under, so one default serves every budget.

Mixed op — choice and why. Weighting the outputs of every (kernel, expand) path per block (DARTS) runs 9
block forwards per slot in the `tiny` space, about 8x the cost of a subnet step; sampling one path with
REINFORCE-style gradients (ProxylessNAS) is cheap but noisy. The supernet's choices *share weights*:
a smaller kernel is a transform of the largest's centre, and a narrower expand ratio is the first
channels. So a single forward at the largest width computes the exact mixture (Single-Path NAS's
superkernel, Stamoulis et al. 2019): the depthwise filter is Σ_k g_k · pad(filter_k) (convolution is
linear in its filter) and hidden channels are scaled by Σ_e g_e · [c < width(e)]; depth mixes the
stage's outputs after each block, Σ_d g_d · x_d. The gates g are straight-through Gumbel-softmax
samples: one-hot in the forward pass, so the forward *is* the sampled subnet (except that squeeze-excite
runs at the largest width), soft in the backward pass, so every choice gets a gradient. Measured on the
`tiny` space at 32 px, batch 32, one CPU thread (load average 2.8 on 2 cores; median of 5): forward +
backward of a largest-subnet step 0.61 s, of this mixed step 0.68 s, of the 9-path DARTS mixture 2.84 s.

The final arch is the argmax of every softmax; if the table says it exceeds the budget it is repaired
greedily (each step takes the cheaper alternative that loses the least log-probability) until it fits.
Resolution: the largest whose smallest arch fits the budget by the table, unless given.

Runs on the CPU, or on a GPU with `device="cuda"`. The supernet is copied; the caller's is untouched.
Seeded runs repeat exactly on the CPU (torch generators for the Gumbel noise and path sampling, seeded
data order). This module holds the architecture logits and the loop; the mixed forward pass is the
supernet's own (`Supernet.mixed_forward`, `edgenas.nn.mixed`). It trains weights, so it lives beside
training, not in `edgenas.search` (which imports no torch).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgenas.errors import UsageError
from edgenas.progress import Progress
from edgenas.space import Arch


@dataclass(frozen=True)
class DifferentiableConfig:
    """Defaults: 40 alternations of a weight step (SGD lr 0.005) and an arch step (Adam lr 0.05), batches of 32.

    λ starts at 0 (a Lagrange multiplier): starting it at 1 drove every budget's search to the space's
    smallest blocks within 15 steps on the `shapes` supernet (tools/bench/strategies.py), since the latency
    gradient is larger than the cross-entropy's early on; from 0 it grows only while E[latency] > target.
    """

    steps: int = 40
    batch_size: int = 32
    weight_lr: float = 0.005
    arch_lr: float = 0.05
    latency_weight: float = 0.0  # initial λ: the latency term bites only once E[latency] exceeds the target
    lambda_lr: float = 0.5  # dual-ascent rate of λ
    temperature: float = 1.0  # Gumbel-softmax temperature
    train_weights: bool = True
    resolution: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise UsageError(f"differentiable search needs steps >= 1 and batch size >= 2, got {self.steps}, "
                             f"{self.batch_size}")
        for name in ("weight_lr", "arch_lr", "temperature"):
            if not getattr(self, name) > 0:
                raise UsageError(f"differentiable search {name} {getattr(self, name)} must be positive")


@dataclass
class DifferentiableResult:
    """The argmax arch (repaired to the budget if needed), its table latency, and how the search went."""

    arch: Arch
    latency_ms: float
    max_latency_ms: float
    expected_latency_ms: float
    repaired: int  # greedy repair moves applied to the argmax arch
    resolution: int
    seconds: float
    steps: int
    config: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    probabilities: dict[str, list[list[float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = self.arch.to_dict()
        return d


class _ArchParams:
    """Logits of every decision, the latency table as tensors, and the expected latency."""

    def __init__(self, space, latency, ri: int, device: torch.device) -> None:
        slot_table = getattr(latency, "slot_table", None)
        if slot_table is None:
            raise UsageError(f"differentiable search needs a latency table (a TablePredictor or a calibrated "
                             f"predictor), got {type(latency).__name__}: calibrate the device first")
        block_ms, self.fixed_ms = slot_table(ri)
        self.space = space
        self.ri = ri
        nk, ne = len(space.kernels), len(space.expands)
        self.kernel = torch.zeros(space.max_blocks, nk, device=device, requires_grad=True)
        self.expand = torch.zeros(space.max_blocks, ne, device=device, requires_grad=True)
        nd = max(len(s.depths) for s in space.stages)
        self.depth = torch.zeros(space.num_stages, nd, device=device, requires_grad=True)
        mask = torch.full((space.num_stages, nd), float("-inf"), device=device)
        for s, spec in enumerate(space.stages):
            mask[s, : len(spec.depths)] = 0.0
        self.depth_mask = mask
        self.block_ms = torch.tensor(np.asarray(block_ms), dtype=torch.float32, device=device)  # (slots, nk, ne)
        # active[s, d, slot]: 1 where depth choice d of stage s runs that slot
        active = np.zeros((space.num_stages, nd, space.max_blocks), dtype=np.float32)
        slot = 0
        for s, spec in enumerate(space.stages):
            for j in range(spec.max_depth):
                for di, d in enumerate(spec.depths):
                    active[s, di, slot] = float(j < d)
                slot += 1
        self.active = torch.tensor(active, device=device)

    def parameters(self) -> list[torch.Tensor]:
        return [self.kernel, self.expand, self.depth]

    def probs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (F.softmax(self.kernel, -1), F.softmax(self.expand, -1), F.softmax(self.depth + self.depth_mask, -1))

    def expected_latency(self) -> torch.Tensor:
        pk, pe, pd = self.probs()
        per_slot = torch.einsum("sk,se,ske->s", pk, pe, self.block_ms)
        p_active = torch.einsum("td,tds->s", pd, self.active)
        return self.fixed_ms + (p_active * per_slot).sum()

    def gates(self, generator: torch.Generator, temperature: float) -> tuple[torch.Tensor, ...]:
        """Straight-through Gumbel-softmax samples of every decision: one-hot forward, soft backward."""
        out = []
        for logits in (self.kernel, self.expand, self.depth + self.depth_mask):
            u = torch.rand(logits.shape, generator=generator, device="cpu").to(logits.device)
            g = -torch.log((-torch.log(u.clamp_min(1e-10))).clamp_min(1e-10))  # Gumbel(0, 1)
            soft = F.softmax((logits + g) / temperature, -1)
            hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
            out.append(hard - soft.detach() + soft)
        return tuple(out)

    def sample(self, generator: torch.Generator) -> Arch:
        pk, pe, pd = (p.detach().cpu() for p in self.probs())
        k = torch.multinomial(pk, 1, generator=generator)[:, 0].tolist()
        e = torch.multinomial(pe, 1, generator=generator)[:, 0].tolist()
        d = torch.multinomial(pd, 1, generator=generator)[:, 0].tolist()
        return self._arch(k, e, d)

    def argmax(self) -> tuple[list[int], list[int], list[int]]:
        pk, pe, pd = self.probs()
        return pk.argmax(-1).tolist(), pe.argmax(-1).tolist(), pd.argmax(-1).tolist()

    def _arch(self, k: list[int], e: list[int], d: list[int]) -> Arch:
        space = self.space
        depths, kernels, expands = [], [], []
        slot = 0
        for s, spec in enumerate(space.stages):
            depth = spec.depths[d[s]]
            depths.append(depth)
            for j in range(spec.max_depth):
                if j < depth:
                    kernels.append(space.kernels[k[slot]])
                    expands.append(space.expands[e[slot]])
                slot += 1
        return space.arch(space.resolutions[self.ri], depths, kernels, expands)

    def table_ms(self, k: list[int], e: list[int], d: list[int]) -> float:
        total = self.fixed_ms
        slot = 0
        for s, spec in enumerate(self.space.stages):
            for j in range(spec.max_depth):
                if j < spec.depths[d[s]]:
                    total += float(self.block_ms[slot, k[slot], e[slot]])
                slot += 1
        return total


def _choose_resolution(space, latency, max_latency_ms: float, wanted: int | None) -> int:
    if wanted is not None:
        if wanted not in space.resolutions:
            raise UsageError(f"resolution {wanted} is not offered by the '{space.name}' space: choose from "
                             f"{', '.join(map(str, space.resolutions))}")
        return space.resolutions.index(wanted)
    smallest = latency.predict([space.smallest(r) for r in space.resolutions])
    fits = [i for i, ms in enumerate(smallest) if ms <= max_latency_ms]
    if not fits:
        raise UsageError(f"no arch of the '{space.name}' space meets latency <= {max_latency_ms:g} ms by the table: "
                         f"the smallest achievable is {float(smallest.min()):.4g} ms. Relax the limit")
    return fits[-1]


def _repair(params: _ArchParams, k: list[int], e: list[int], d: list[int], max_ms: float) -> int:
    """Cheaper choices, one at a time, each losing the least log-probability, until the table latency fits."""
    lk, le, ld = (torch.log(p.detach().cpu().clamp_min(1e-12)) for p in params.probs())
    block_ms = params.block_ms.cpu()
    moves = 0
    while params.table_ms(k, e, d) > max_ms:
        best = None  # (log-prob change, kind, index, new choice)
        slot = 0
        for s, spec in enumerate(params.space.stages):
            depth = spec.depths[d[s]]
            for di in range(d[s]):
                cand = (float(ld[s, di] - ld[s, d[s]]), "d", s, di)
                best = cand if best is None or cand[0] > best[0] else best
            for j in range(spec.max_depth):
                if j < depth:
                    now = float(block_ms[slot, k[slot], e[slot]])
                    for ki in range(block_ms.shape[1]):
                        for ei in range(block_ms.shape[2]):
                            if float(block_ms[slot, ki, ei]) < now:
                                change = float(lk[slot, ki] + le[slot, ei] - lk[slot, k[slot]] - le[slot, e[slot]])
                                cand = (change, "b", slot, (ki, ei))
                                best = cand if best is None or cand[0] > best[0] else best
                slot += 1
        if best is None:  # everything is already at its cheapest: the resolution choice rules this out
            raise UsageError(f"no arch meets latency <= {max_ms:g} ms at this resolution by the table")
        _change, kind, i, choice = best
        if kind == "d":
            d[i] = choice
        else:
            k[i], e[i] = choice
        moves += 1
    return moves


def differentiable_search(supernet, dataset, latency, *, max_latency_ms: float, seed: int = 0,
                          config: DifferentiableConfig | None = None, device: str | torch.device | None = None,
                          progress: bool = False) -> DifferentiableResult:
    """Search `supernet`'s space for the best arch under `max_latency_ms` by `latency`'s table (module docstring).

    `dataset` is an `edgenas.data.Dataset`: weights train on its `train` split, architecture parameters on
    its `holdout` split. Returns the argmax arch, valid in the space and within the budget by the table.
    """
    cfg = config or DifferentiableConfig()
    if not max_latency_ms > 0:
        raise UsageError(f"latency budget {max_latency_ms} ms must be positive")
    space = supernet.space
    if latency.space != space:
        raise UsageError(f"the latency predictor is for space '{latency.space.name}', the supernet's is '{space.name}'")
    dev = torch.device(device) if device else next(supernet.parameters()).device
    ri = _choose_resolution(space, latency, max_latency_ms, cfg.resolution)
    res = space.resolutions[ri]
    net = copy.deepcopy(supernet).to(dev).train()
    params = _ArchParams(space, latency, ri, dev)
    arch_opt = torch.optim.Adam(params.parameters(), lr=cfg.arch_lr, betas=(0.5, 0.999))
    weight_opt = torch.optim.SGD(net.parameters(), lr=cfg.weight_lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    train_batches = _cycle(dataset, "train", cfg.batch_size, res, seed)
    val_batches = _cycle(dataset, "holdout", cfg.batch_size, res, seed + 1)
    lam = cfg.latency_weight
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    # Dropout draws from torch's global generator: fork it and seed it, so a seeded run repeats exactly.
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), \
            Progress(cfg.steps, "differentiable search", unit="step", enabled=progress) as bar:
        torch.manual_seed(seed)
        for step in range(cfg.steps):
            if cfg.train_weights:
                x, y = (t.to(dev) for t in next(train_batches))
                net.set_active(params.sample(gen))
                weight_opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), y).backward()
                weight_opt.step()
            x, y = (t.to(dev) for t in next(val_batches))
            gates = params.gates(gen, cfg.temperature)
            arch_opt.zero_grad(set_to_none=True)
            net.zero_grad(set_to_none=True)
            ce = F.cross_entropy(net.mixed_forward(x, gates), y)
            expected = params.expected_latency()
            (ce + lam * expected / max_latency_ms).backward()
            arch_opt.step()
            ratio = float(expected.detach()) / max_latency_ms
            lam = max(0.0, lam + cfg.lambda_lr * (ratio - 1.0))
            history.append({"step": step, "ce": float(ce.detach()), "expected_latency_ms": float(expected.detach()),
                            "lambda": lam})
            bar.update(1, ce=float(ce.detach()), ms=float(expected.detach()))
    k, e, d = params.argmax()
    repaired = _repair(params, k, e, d, max_latency_ms)
    arch = params._arch(k, e, d)
    table = float(latency.predict([arch])[0])
    with torch.no_grad():
        expected = float(params.expected_latency())
        probs = {name: p.detach().cpu().tolist() for name, p in zip(("kernel", "expand", "depth"), params.probs())}
    return DifferentiableResult(arch, table, float(max_latency_ms), expected, repaired, res,
                                time.perf_counter() - t0, cfg.steps, asdict(cfg), history, probs)


def _cycle(dataset, split: str, batch_size: int, resolution: int, seed: int):
    """Endless batches of a split, reshuffled every epoch (deterministic in seed and epoch)."""
    epoch = 0
    while True:
        loader = dataset.loader(split, batch_size=min(batch_size, dataset.size(split)), resolution=resolution,
                                shuffle=True, seed=seed, epoch=epoch, drop_last=True)
        yield from loader
        epoch += 1
