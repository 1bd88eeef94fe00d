"""Reinforcement-learning search (Zoph & Le, MnasNet reward): a policy samples archs and learns by REINFORCE.

The controller is a per-decision policy: one categorical distribution (a vector of logits) per gene of
the genome (resolution, each stage's depth, each block slot's kernel and expand ratio). Zoph & Le's
LSTM conditions each decision on the earlier ones; here, with a few hundred to a few thousand rewards,
the factorised policy learns as fast and needs no backpropagation through time, so the search stays
numpy-only (search never needs torch).

Reward (MnasNet, Tan et al. 2019): accuracy × Π_c (value_c / limit_c)^w, with w = `alpha` where the
limit is met and `beta` where it is not. `alpha` = 0, `beta` = -1 (the defaults) is MnasNet's hard
constraint; -0.07 for both is its soft one. Every constraint of the problem (latency, SRAM, flash,
MACs) counts; a candidate whose latency could not be predicted earns 0.

Update: REINFORCE with a moving-average baseline b (b ← decay·b + (1 - decay)·mean reward) and Adam on
the logits: ∇ = mean over the batch of (r - b)·(onehot(choice) - softmax(logits)), over the genes the
arch actually uses (a block slot beyond its stage's depth does not change the arch, so it gets no credit),
plus an entropy bonus that keeps the policy from collapsing too early.

Ask/tell like every `SearchAlgorithm`: `run_search(RLSearch(space, rng=...), problem)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgenas.genome import ArchBatch
from edgenas.search.loop import NoFeasibleArch, SearchAlgorithm
from edgenas.search.problem import Evaluation
from edgenas.space import SearchSpace


@dataclass(frozen=True)
class RLConfig:
    """Defaults: 100 policy updates of 32 archs each; Adam lr 0.05; baseline decay 0.9; MnasNet hard constraint."""

    steps: int = 100
    batch_size: int = 32
    lr: float = 0.05
    baseline_decay: float = 0.9
    entropy: float = 1e-3
    alpha: float = 0.0
    beta: float = -1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"RL steps {self.steps} and batch size {self.batch_size} must be at least 1")
        if self.lr <= 0:
            raise ValueError(f"RL learning rate {self.lr} must be positive")
        if not 0 <= self.baseline_decay < 1:
            raise ValueError(f"baseline decay {self.baseline_decay} must be in [0, 1)")


class RLSearch(SearchAlgorithm):
    """Ask/tell REINFORCE search with a per-decision policy (see the module docstring)."""

    name = "rl"

    def __init__(self, space: SearchSpace, *, rng: np.random.Generator, config: RLConfig | None = None) -> None:
        super().__init__(space, rng)
        self.cfg = config or RLConfig()
        card = self.codec.cardinality
        self._offsets = np.concatenate([[0], np.cumsum(card)])
        self.logits = np.zeros(int(self._offsets[-1]))  # all genes' logits, gene g at offsets[g]:offsets[g+1]
        self._gene_of = np.repeat(np.arange(len(card)), card)
        self._m = np.zeros_like(self.logits)
        self._v = np.zeros_like(self.logits)
        self._t = 0
        self.baseline: float | None = None
        self.steps = 0
        self.rewards: list[float] = []  # mean reward per step

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    @property
    def done(self) -> bool:
        return self.steps >= self.cfg.steps

    def probabilities(self) -> list[np.ndarray]:
        """The policy: one probability vector per gene."""
        return [_softmax(self.logits[a:b]) for a, b in zip(self._offsets[:-1], self._offsets[1:])]

    def _probs_flat(self) -> np.ndarray:
        return np.concatenate(self.probabilities())

    def ask(self) -> ArchBatch:
        probs = self.probabilities()
        n = self.cfg.batch_size
        u = self.rng.random((n, len(probs)))
        genomes = np.empty((n, len(probs)), dtype=np.int64)
        for g, p in enumerate(probs):
            cdf = np.cumsum(p)
            genomes[:, g] = np.minimum(np.searchsorted(cdf, u[:, g] * cdf[-1], side="right"), len(p) - 1)
        return ArchBatch(self.codec, genomes)

    def reward(self, ev: Evaluation) -> np.ndarray:
        """MnasNet's reward of each candidate: accuracy × Π (value / limit)^(alpha if met else beta)."""
        ratio = 1.0 + ev.violation  # value / limit per constraint
        exponent = np.where(ev.violation <= 0, self.cfg.alpha, self.cfg.beta)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            factor = np.prod(np.where(np.isfinite(ratio), np.maximum(ratio, 1e-12) ** exponent, 0.0), axis=1)
        r = np.asarray(ev.accuracy, dtype=np.float64) * factor
        return np.where(np.isfinite(r), r, 0.0)

    def policy_argmax(self) -> np.ndarray:
        """The policy's most likely genome, shape (1, width)."""
        return np.array([[int(np.argmax(p)) for p in self.probabilities()]], dtype=np.int64)

    def tell(self, batch: ArchBatch, evaluation: Evaluation) -> None:
        self._record(batch, evaluation)
        r = self.reward(evaluation)
        mean = float(r.mean())
        if self.baseline is None:
            self.baseline = mean
        advantage = r - self.baseline
        self.baseline = self.cfg.baseline_decay * self.baseline + (1 - self.cfg.baseline_decay) * mean
        probs = self._probs_flat()
        genomes = batch.genomes
        n = len(genomes)
        # Which genes decide the arch: resolution, depths, and the kernel/expand of active slots only.
        used = np.ones(genomes.shape, dtype=bool)
        active = self.codec.active(genomes)
        used[:, self.codec.kernel_cols] = active
        used[:, self.codec.expand_cols] = active
        chosen = np.zeros((n, len(self.logits)))
        rows = np.repeat(np.arange(n), genomes.shape[1])
        cols = (self._offsets[:-1][None, :] + genomes).reshape(-1)
        chosen[rows, cols] = 1.0
        weight = (advantage[:, None] * used)[:, self._gene_of]  # (n, logits)
        grad = (weight * (chosen - probs[None, :])).mean(axis=0)
        # Entropy bonus: ∂H/∂logits = -p (log p + H) per gene.
        logp = np.log(np.maximum(probs, 1e-12))
        h_gene = -np.bincount(self._gene_of, weights=probs * logp)
        grad += self.cfg.entropy * (-probs * (logp + h_gene[self._gene_of]))
        self._adam(grad)
        self.steps += 1
        self.rewards.append(mean)
        if self.done and len(self.archive) == 0:
            raise NoFeasibleArch(f"none of the {self.told} archs the RL policy sampled is feasible")

    def _adam(self, grad: np.ndarray, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
        """One Adam ascent step on the logits."""
        self._t += 1
        self._m = b1 * self._m + (1 - b1) * grad
        self._v = b2 * self._v + (1 - b2) * grad ** 2
        m_hat = self._m / (1 - b1 ** self._t)
        v_hat = self._v / (1 - b2 ** self._t)
        self.logits += self.cfg.lr * m_hat / (np.sqrt(v_hat) + eps)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()
