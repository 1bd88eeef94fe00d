"""Zero-cost proxies: score archs without training (synflow, grad-norm, snip, NASWOT, Jacobian covariance, MACs, params).

A proxy looks at one network once, on one batch, and returns one number that should rank networks
the way their trained accuracy does. Each torch proxy is a plain function of an `nn.Module` and a
batch, so it can be checked by hand on a two-layer net (tests/accuracy/test_proxies.py does):

- `synflow` (Tanaka et al. 2020): every parameter replaced by its absolute value, BatchNorm in eval
  mode, the input all ones, in float64; R = sum of the outputs; score = Σ |θ ⊙ ∂R/∂θ| over the
  weights of every conv and linear layer. No data needed.
- `grad_norm` (Abdelfattah et al. 2021): Σ over conv/linear layers of ‖∂L/∂W‖₂ (cross-entropy on the batch).
- `snip` (Lee et al. 2019): Σ |W ⊙ ∂L/∂W| over conv/linear weights.
- `naswot` (Mellor et al. 2021): the binary code of every unit before each ReLU / hard-swish for
  each image (pre-activation > 0); K[i, j] = number of units where images i and j agree;
  score = log |det K|. Higher when the net separates the images of the batch.
- `jacov` (Mellor et al. 2020, v1): J_i = ∂(Σ_k f(x_i)_k)/∂x_i; C = correlation matrix of the J_i;
  score = -Σ_λ [log(λ + 1e-5) + 1/(λ + 1e-5)] over the eigenvalues of C.
- `macs`, `params`: the analytic counts of `edgenas.cost` (no torch): the trivial baselines.

`ProxyPredictor(name, ...)` scores archs of a supernet (at its trained weights, or at a seeded fresh
initialisation with `at_init=True`) and has `.predict(archs) -> np.ndarray`, so any proxy can stand in
for the accuracy predictor in a search (e.g. to warm-start before a predictor is fitted).
`proxy_report(checkpoint, samples=N)` computes every proxy's Kendall tau against real (BN-recalibrated)
holdout accuracy, reusing the evaluations the accuracy-predictor fit stored in the SQLite store.
The `edgenas proxies` command is in `edgenas.cli.accuracy`.

torch is imported inside functions only: this module is imported when the CLI builds its help.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgenas.errors import UsageError
from edgenas.space import Arch, SearchSpace

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

TORCH_PROXIES = ("synflow", "grad_norm", "snip", "naswot", "jacov")
STAT_PROXIES = ("macs", "params")
PROXIES = TORCH_PROXIES + STAT_PROXIES


def _weighted_layers(model: nn.Module) -> list[nn.Module]:
    # deferred: torch loads only when this runs, not on import
    from torch import nn

    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# ---- the proxies, one network at a time -----------------------------------------------------------
def synflow(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Σ |θ ⊙ ∂R/∂θ| over conv/linear weights of the linearised net (|θ|, BN eval, float64), R = Σ f(1).

    `input_shape` is one image's (C, H, W) or (features,). The model is left unchanged.
    """
    # deferred: torch loads only when this runs, not on import
    import torch

    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad()
    x = torch.ones((1, *input_shape), dtype=torch.float64)
    net(x).sum().backward()
    score = 0.0
    for layer in _weighted_layers(net):
        if layer.weight.grad is not None:
            score += float((layer.weight.detach() * layer.weight.grad).abs().sum())
    return score


def _loss_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, ∂CE/∂weight) of every conv/linear layer; the model's grads and mode are restored."""
    # deferred: torch loads only when this runs, not on import
    import torch
    import torch.nn.functional as F
    from torch import nn

    was_training = model.training
    saved = [p.grad for p in model.parameters()]
    try:
        model.train()
        for m in model.modules():  # BN on batch statistics, but no random dropout: the score must repeat
            if isinstance(m, nn.Dropout):
                m.eval()
        for p in model.parameters():
            p.grad = None
        layers = _weighted_layers(model)
        with _frozen_bn_stats(model):  # restored after the backward pass, which reads the running buffers
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, [m.weight for m in layers], allow_unused=True)
        return [(m.weight.detach(), g.detach()) for m, g in zip(layers, grads) if g is not None]
    finally:
        for p, g in zip(model.parameters(), saved):
            p.grad = g
        model.train(was_training)


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Σ over conv/linear layers of the L2 norm of ∂CE/∂W on the batch (BN in training mode, statistics kept)."""
    return float(sum(float(g.norm()) for _w, g in _loss_grads(model, x, y)))


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Σ |W ⊙ ∂CE/∂W| over conv/linear weights on the batch (connection sensitivity)."""
    return float(sum(float((w * g).abs().sum()) for w, g in _loss_grads(model, x, y)))


def naswot(model: nn.Module, x: torch.Tensor) -> float:
    """log |det K| with K[i, j] = units (before every ReLU / hard-swish) where images i and j share the sign."""
    # deferred: torch loads only when this runs, not on import
    import torch
    from torch import nn

    codes: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        codes.append((inputs[0].detach().flatten(1) > 0).to(torch.float64))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, (nn.ReLU, nn.Hardswish))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not codes:
        raise ValueError("naswot needs a network with ReLU or hard-swish activations")
    c = torch.cat(codes, dim=1)
    k = c @ c.T + (1 - c) @ (1 - c).T
    return float(torch.linalg.slogdet(k).logabsdet)


def jacov(model: nn.Module, x: torch.Tensor) -> float:
    """-Σ [log(λ + 1e-5) + 1/(λ + 1e-5)] over eigenvalues λ of the correlation matrix of input Jacobians."""
    # deferred: torch loads only when this runs, not on import
    import torch

    was_training = model.training
    try:
        model.eval()
        xi = x.detach().clone().requires_grad_(True)
        (jac,) = torch.autograd.grad(model(xi).sum(), xi)
    finally:
        model.train(was_training)
    j = jac.flatten(1).double().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(j)
    corr = np.nan_to_num(corr, nan=0.0)  # a constant Jacobian row has no defined correlation
    eig = np.linalg.eigvalsh(corr)
    k = 1e-5
    return float(-np.sum(np.log(np.abs(eig) + k) + 1.0 / (np.abs(eig) + k)))


def score_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: Sequence[str] = TORCH_PROXIES) -> dict[str, float]:
    """The torch proxies `names` of one network on one batch (x at the network's input size)."""
    unknown = [n for n in names if n not in TORCH_PROXIES]
    if unknown:
        raise UsageError(f"unknown torch proxy {unknown[0]!r}: choose from {', '.join(TORCH_PROXIES)}")
    out: dict[str, float] = {}
    for name in names:
        if name == "synflow":
            out[name] = synflow(model, tuple(x.shape[1:]))
        elif name in ("grad_norm", "snip"):
            out[name] = (grad_norm if name == "grad_norm" else snip)(model, x, y)
        elif name == "naswot":
            out[name] = naswot(model, x)
        else:
            out[name] = jacov(model, x)
    return out


class _frozen_bn_stats:
    """BatchNorm in training mode without updating running statistics (gradient proxies must not change the net)."""

    def __init__(self, model: nn.Module) -> None:
        # deferred: torch loads only when this runs, not on import
        from torch import nn

        self.bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self) -> None:
        self.saved = [(bn.momentum, bn.running_mean.clone() if bn.running_mean is not None else None,
                       bn.running_var.clone() if bn.running_var is not None else None,
                       bn.num_batches_tracked.clone() if bn.num_batches_tracked is not None else None)
                      for bn in self.bns]

    def __exit__(self, *exc: Any) -> None:
        # deferred: torch loads only when this runs, not on import
        import torch

        with torch.no_grad():
            for bn, (momentum, mean, var, count) in zip(self.bns, self.saved):
                bn.momentum = momentum
                if mean is not None:
                    bn.running_mean.copy_(mean)
                    bn.running_var.copy_(var)
                if count is not None:
                    bn.num_batches_tracked.copy_(count)


# ---- archs of a supernet ---------------------------------------------------------------------------
class ProxyPredictor:
    """One proxy as an accuracy estimate: `.predict(archs) -> np.ndarray` (higher = predicted better).

    Torch proxies need `supernet` (a `Supernet`) and `batches`, a function resolution -> (x, y) giving the
    scoring batch at that resolution; with `at_init=True` they score a freshly initialised copy of the
    supernet (seeded with `seed`) instead of its trained weights. `macs` and `params` need only the space.
    Scores are cached per arch, so a search that revisits archs pays once. The raw score is returned;
    searches that need a value in [0, 1] (RL's multiplicative reward) take `normalized=True`, which maps a
    score to its rank among `reference` archs' scores (the empirical CDF).
    """

    def __init__(self, name: str, *, space: SearchSpace | None = None, supernet: Any = None,
                 batches: Callable[[int], tuple[Any, Any]] | None = None, at_init: bool = False, seed: int = 0,
                 reference: Sequence[Arch] | None = None) -> None:
        if name not in PROXIES:
            raise UsageError(f"unknown proxy {name!r}: choose from {', '.join(PROXIES)}")
        if space is None and supernet is None:
            raise UsageError("a proxy needs a search space (macs, params) or a supernet (torch proxies)")
        self.name = name
        self.space = space if space is not None else supernet.space
        if name in TORCH_PROXIES:
            if supernet is None or batches is None:
                raise UsageError(f"proxy {name!r} needs a supernet and a batches(resolution) function")
            if at_init:
                supernet = fresh_supernet(supernet.space, seed)
        self.supernet = supernet
        self.batches = batches
        self.at_init = at_init
        self.evaluated = 0
        self.seconds = 0.0
        self._cache: dict[Arch, float] = {}
        self._reference: np.ndarray | None = None
        if reference is not None:
            self._reference = np.sort(self.raw(list(reference)))

    def raw(self, archs: Sequence[Arch]) -> np.ndarray:
        archs = list(archs)
        if self.name in STAT_PROXIES:
            # deferred: edgenas.cost loads only when this runs (`edgenas --help` imports this module)
            from edgenas.cost import stats_table

            stats = stats_table(self.space).compute(archs)
            return np.asarray(stats[self.name], dtype=np.float64)
        out = np.empty(len(archs))
        for i, arch in enumerate(archs):
            if arch not in self._cache:
                t0 = time.perf_counter()
                net = self.supernet.extract(arch)
                x, y = self.batches(arch.resolution)
                self._cache[arch] = score_model(net, x, y, [self.name])[self.name]
                self.evaluated += 1
                self.seconds += time.perf_counter() - t0
            out[i] = self._cache[arch]
        return out

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        scores = self.raw(archs)
        if self._reference is None:
            return scores
        ref = self._reference
        return (np.searchsorted(ref, scores, side="right") / max(len(ref), 1)).astype(np.float64)

    @property
    def normalized(self) -> bool:
        return self._reference is not None


def fresh_supernet(space: SearchSpace, seed: int) -> Any:
    """A newly initialised supernet of `space`, its weights drawn from a torch generator seeded with `seed`."""
    # deferred: torch loads only when this runs, not on import
    import torch

    from edgenas.supernet import Supernet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Supernet(space).eval()


def dataset_batches(dataset: Any, *, batch_size: int = 32, seed: int = 0, split: str = "train") -> Callable[[int], tuple]:
    """resolution -> the same (x, y) batch of `split` (first shuffled batch for `seed`) at that resolution."""
    cache: dict[int, tuple] = {}

    def get(resolution: int) -> tuple:
        if resolution not in cache:
            loader = dataset.loader(split, batch_size=batch_size, resolution=resolution, shuffle=True, seed=seed)
            cache[resolution] = next(iter(loader))
        return cache[resolution]

    return get


# ---- Kendall tau against real accuracy -------------------------------------------------------------
@dataclass
class ProxyReport:
    """Kendall tau of each proxy against real holdout top-1 on `samples` archs, and what it cost."""

    checkpoint: str
    samples: int
    evaluated_now: int
    at_init: bool
    batch_size: int
    tau: dict[str, float]
    seconds_per_arch: dict[str, float]
    scores: dict[str, list[float]] = field(default_factory=dict, repr=False)
    accuracy: list[float] = field(default_factory=list, repr=False)
    archs: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self, *, with_scores: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_scores:
            for key in ("scores", "accuracy", "archs"):
                d.pop(key)
        return d


def proxy_report(checkpoint: str | os.PathLike, *, samples: int = 100, names: Sequence[str] = PROXIES,
                 seed: int = 0, store_path: str | os.PathLike | None = None, at_init: bool = False,
                 batch_size: int = 32, bn_batches: int = 8, progress: bool = True) -> ProxyReport:
    """Each proxy's Kendall tau against the real holdout top-1 of `samples` archs.

    The archs are the first `samples` ones the accuracy-predictor fit stored for this checkpoint (holdout
    split); when the store has fewer, archs sampled with `seed` are evaluated now (BN-recalibrated) and
    stored, so a second run costs nothing.
    """
    # deferred: the modules it uses loads only when this runs (`edgenas --help` imports this module)
    from edgenas.accuracy.dataset import sample_archs
    from edgenas.accuracy.fit import SupernetEvaluator, default_store_path
    from edgenas.accuracy.predictor import kendall_tau
    from edgenas.progress import Progress
    from edgenas.store import Store

    unknown = [n for n in names if n not in PROXIES]
    if unknown:
        raise UsageError(f"unknown proxy {unknown[0]!r}: choose from {', '.join(PROXIES)}")
    if samples < 3:
        raise UsageError(f"--samples {samples} is too few for a rank correlation: give at least 3")
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UsageError(f"supernet checkpoint {checkpoint} does not exist: train one with 'edgenas train'")
    ctx = SupernetEvaluator(str(checkpoint), "holdout", bn_batches)
    space = ctx.supernet.space
    with Store(store_path or default_store_path()) as store:
        data = ctx.accuracy_dataset(store)
        stored, _ = data.load()
        archs = stored[:samples]
        if len(archs) < samples:
            extra = [a for a in sample_archs(space, samples * 2, np.random.default_rng(seed)) if a not in set(archs)]
            archs = archs + extra[: samples - len(archs)]
        before = len(data.missing(archs))
        data.build(archs, ctx.evaluate, progress=progress)
        archs, accuracy = data.load(archs)
    batches = dataset_batches(ctx.dataset, batch_size=batch_size, seed=seed)
    scorer = fresh_supernet(space, seed) if at_init else ctx.supernet
    torch_names = [n for n in names if n in TORCH_PROXIES]
    scores: dict[str, list[float]] = {n: [] for n in names}
    seconds: dict[str, float] = {n: 0.0 for n in names}
    with Progress(len(archs), "zero-cost proxies", unit="arch", enabled=progress) as bar:
        for arch in archs:
            net = scorer.extract(arch)
            x, y = batches(arch.resolution)
            for name in torch_names:
                t0 = time.perf_counter()
                scores[name].append(score_model(net, x, y, [name])[name])
                seconds[name] += time.perf_counter() - t0
            bar.update(1)
    for name in names:
        if name in STAT_PROXIES:
            t0 = time.perf_counter()
            scores[name] = ProxyPredictor(name, space=space).predict(archs).tolist()
            seconds[name] += time.perf_counter() - t0
    tau = {n: kendall_tau(np.asarray(scores[n]), accuracy) for n in names}
    return ProxyReport(str(checkpoint), len(archs), before, at_init, batch_size, tau,
                       {n: seconds[n] / len(archs) for n in names}, scores, accuracy.tolist(),
                       [a.to_dict() for a in archs])


def format_report(report: ProxyReport, extra: dict[str, float] | None = None) -> str:
    """A table: proxy, Kendall tau, seconds per arch (`extra` rows, e.g. the trained predictor's tau, first)."""
    where = "a fresh initialisation" if report.at_init else "the supernet's weights"
    lines = [f"Kendall tau against real holdout top-1, {report.samples} archs ({report.evaluated_now} evaluated now); "
             f"proxies at {where}, batch {report.batch_size}",
             f"{'estimator':<22}{'tau':>8}{'s/arch':>10}"]
    for name, tau in (extra or {}).items():
        lines.append(f"{name:<22}{tau:>8.3f}{'':>10}")
    for name, tau in report.tau.items():
        tau_s = "nan" if math.isnan(tau) else f"{tau:.3f}"
        lines.append(f"{name:<22}{tau_s:>8}{report.seconds_per_arch[name]:>10.4f}")
    return "\n".join(lines)
