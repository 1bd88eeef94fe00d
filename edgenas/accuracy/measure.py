"""A measurement that can rank subnets: every subnet on the same images, BatchNorm recalibrated on the same batches.

Each subnet's per-image correctness on the validation and holdout images (every image no training step saw) is
kept, not just its top-1, so that
- two subnets' difference is paired (the same images; its standard error counts only the images they disagree on,
  far below the unpaired one for subnets sharing a supernet's weights);
- the noise ceiling can be stated: Kendall tau between the same subnets' top-1 on two disjoint image sets. Those
  two sets are the pooled images split in stratified halves (as equal as the data allows: the ceiling is set by the
  smaller set, so halves beat val against holdout's 359/199 images on digits);
- a subnet's top-1 is taken on all of them (on digits 558 images: 0.18 points each, against 0.5 on holdout alone).

Beside each image's correctness, the log-likelihood the subnet gives its true class is kept (`loglik`, the same
forward pass): a continuous figure per image, so the subnets' mean log-likelihood is a far less noisy statistic than
their top-1 on the same images (on the demo's supernet its noise ceiling is in docs/decisions.md, issue 43,
"measuring better"), and it ranks their top-1 on unseen images at least as well as top-1 itself does.

Bits and log-likelihoods (float16) are committed to the SQLite store per subnet (metric `scored@bn<N>`, split
`val+holdout`), so a re-run, `edgenas predictor eval` and `tools/bench/regret.py` reuse them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgenas.accuracy.dataset import AccuracyDataset, top1_metric
from edgenas.accuracy.predictor import kendall_tau
from edgenas.space import Arch

SPLITS = ("val", "holdout")
POOLED = "+".join(SPLITS)
HALVINGS = 20  # random halvings the noise ceiling is averaged over


def correct_metric(bn_batches: int) -> str:
    """The store's metric for per-image correctness and log-likelihood after BN recalibration on `bn_batches`
    batches (`correct@bn<N>`, correctness alone, was this metric's name before the log-likelihoods were kept)."""
    return f"scored@bn{int(bn_batches)}"


PAIRED_METRICS = ("correct@", "scored@")  # the paired measurements' metric prefixes: for judging, never for fitting


def _pack(bits: np.ndarray) -> str:
    return np.packbits(np.asarray(bits, dtype=bool)).tobytes().hex()


def _unpack(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)


def _pack_floats(values: np.ndarray) -> str:
    return np.asarray(values, dtype="<f2").tobytes().hex()


def _unpack_floats(text: Any, n: int) -> np.ndarray | None:
    if not isinstance(text, str) or len(text) != 4 * n:
        return None
    return np.frombuffer(bytes.fromhex(text), dtype="<f2").astype(np.float32)


@dataclass
class PairedMeasurement:
    """Per-image correctness of subnets on the same images: `correct[i, j]` for arch i and image j (the splits'
    images side by side, `columns[split]` says where each is), `labels[j]` each image's class."""

    archs: list[Arch]
    correct: np.ndarray
    columns: dict[str, slice]
    labels: np.ndarray
    bn_batches: int
    loglik: np.ndarray | None = None  # `loglik[i, j]`: log-probability arch i gives image j's true class

    def _cols(self, split: str | None) -> Any:
        return slice(None) if split in (None, POOLED) else self.columns[split]

    def images(self, split: str | None = None) -> int:
        return int(self.labels[self._cols(split)].shape[0])

    def accuracy(self, split: str | None = None) -> np.ndarray:
        """Top-1 of each arch on `split` (None: all the measured images)."""
        return self.correct[:, self._cols(split)].mean(axis=1)

    def mean_loglik(self, split: str | None = None) -> np.ndarray:
        """Each arch's mean log-likelihood of the true class on `split` (None: all the measured images)."""
        if self.loglik is None:
            raise ValueError("this measurement kept no log-likelihoods")
        return self.loglik[:, self._cols(split)].mean(axis=1)

    def statistic(self, name: str) -> np.ndarray:
        """Per arch, per image: `top1` (0/1 correctness) or `loglik`."""
        if name == "top1":
            return self.correct.astype(float)
        if name == "loglik":
            if self.loglik is None:
                raise ValueError("this measurement kept no log-likelihoods")
            return self.loglik.astype(float)
        raise ValueError(f"unknown statistic {name!r}: top1 or loglik")

    def standard_error(self, split: str | None = None) -> np.ndarray:
        """Each arch's top-1 standard error (binomial) on `split`."""
        p, n = self.accuracy(split), self.images(split)
        return np.sqrt(p * (1.0 - p) / max(n, 1))

    def paired_standard_error(self, i: int, j: int, split: str | None = None) -> float:
        """Standard error of top-1(i) - top-1(j) on the same images (from the images they disagree on)."""
        d = self.correct[i, self._cols(split)].astype(float) - self.correct[j, self._cols(split)].astype(float)
        return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")

    def median_paired_standard_error(self, split: str | None = None, *, pairs: int = 500, seed: int = 0) -> float:
        """The median paired standard error over random pairs of the measured archs."""
        n = len(self.archs)
        if n < 2:
            return float("nan")
        rng = np.random.default_rng([seed, 7])
        i = rng.integers(0, n, pairs)
        j = (i + rng.integers(1, n, pairs)) % n
        return float(np.median([self.paired_standard_error(a, b, split) for a, b in zip(i, j)]))

    def halves(self, seed: int = 0, draw: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Two disjoint, stratified, equal halves of the measured images (column indices); `draw` picks another."""
        rng = np.random.default_rng([seed, 11, draw])
        a, b = [], []
        for c in np.unique(self.labels):
            idx = rng.permutation(np.flatnonzero(self.labels == c))
            a.append(idx[: len(idx) // 2])
            b.append(idx[len(idx) // 2:])
        return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))

    def noise_ceiling(self, seed: int = 0, draws: int = HALVINGS, *, statistic: str = "top1",
                      against: str | None = None) -> float:
        """Kendall tau between the archs' top-1 on two disjoint halves of the images, averaged over `draws` random
        halvings: how well the measurement itself ranks them (a predictor judged against one image set can hardly
        rank better than a second set does). One halving is a noisy figure (on the demo's 60 eval subnets 0.33 to
        0.62 over 50 halvings, sd 0.06); the mean of 20 is stable to about 0.015.

        `statistic` (`top1` or `loglik`) is what is averaged on the first half, `against` (default: the same) on the
        second: `statistic="loglik", against="top1"` says how well the mean log-likelihood on some images ranks top-1
        on others, beside top-1's own ceiling."""
        first, second = self.statistic(statistic), self.statistic(against or statistic)
        taus = []
        for draw in range(draws):
            a, b = self.halves(seed, draw)
            taus.append(kendall_tau(first[:, a].mean(axis=1), second[:, b].mean(axis=1)))
        return float(np.mean(taus))

    def split_ceiling(self) -> float:
        """Kendall tau between the archs' top-1 on val and on holdout (the two splits as they are)."""
        return kendall_tau(self.accuracy(SPLITS[0]), self.accuracy(SPLITS[1]))

    def subset(self, rows: Sequence[int]) -> PairedMeasurement:
        rows = list(rows)
        return PairedMeasurement([self.archs[i] for i in rows], self.correct[rows], self.columns, self.labels,
                                 self.bn_batches, None if self.loglik is None else self.loglik[rows])


class SupernetEvaluator:
    """A checkpoint's supernet and the dataset it was trained on (fingerprint checked), ready to evaluate archs."""

    def __init__(self, checkpoint: str, split: str, bn_batches: int) -> None:
        # deferred: torch loads only when this runs, not on import
        from edgenas.train.checkpoint import OpenedCheckpoint

        opened = OpenedCheckpoint(checkpoint)  # read once: info, supernet and the checked dataset
        self.info, self.supernet, self.dataset = opened.info, opened.supernet, opened.dataset()
        self.split, self.bn_batches = split, bn_batches

    def accuracy_dataset(self, store) -> AccuracyDataset:
        return AccuracyDataset(store, self.info["sha256"], self.dataset.fingerprint, self.split,
                               metric=top1_metric(self.bn_batches))

    def evaluate(self, arch: Arch) -> float:
        # deferred: torch loads only when this runs, not on import
        from edgenas.train.evaluate import evaluate

        return evaluate(self.supernet, arch, self.dataset, self.split, bn_batches=self.bn_batches)


def measure_paired(evaluator: Any, archs: Sequence[Arch], store: Any, *, bn_batches: int,
                   progress: bool = True) -> PairedMeasurement:
    """Per-image correctness and true-class log-likelihood of `archs` on val and holdout, each BN-recalibrated on the
    same `bn_batches` training batches; taken from the store where it is there, else evaluated now and committed
    arch by arch. `evaluator` is a `SupernetEvaluator` (its supernet, dataset and checkpoint hash)."""
    # deferred: torch loads only when this runs, not on import
    from edgenas.train.evaluate import evaluate_scored_splits

    dataset = evaluator.dataset
    labels = [np.asarray(dataset.labels[s]) for s in SPLITS]
    sizes = [len(v) for v in labels]
    n = sum(sizes)
    key = {"supernet_sha256": evaluator.info["sha256"], "dataset": dataset.fingerprint, "split": POOLED,
           "metric": correct_metric(bn_batches)}
    rows: dict[Arch, tuple[np.ndarray, np.ndarray]] = {}
    for e in store.evaluations(key["supernet_sha256"], POOLED, key["metric"], dataset=key["dataset"]):
        bits, ll = e.extra.get("correct"), _unpack_floats(e.extra.get("loglik"), n)
        if isinstance(bits, str) and len(bits) == 2 * ((n + 7) // 8) and ll is not None:
            rows[Arch.from_dict(e.arch)] = (_unpack(bits, n), ll)
    todo = list(dict.fromkeys(a for a in archs if a not in rows))
    if todo:
        for arch, correct, loglik in evaluate_scored_splits(evaluator.supernet, todo, dataset, SPLITS,
                                                            bn_batches=bn_batches, progress=progress):
            bits = np.concatenate([correct[s] for s in SPLITS])
            ll = np.concatenate([loglik[s] for s in SPLITS]).astype(np.float32)
            if len(bits) != n or len(ll) != n:
                raise ValueError(f"evaluated {len(bits)} images of {POOLED}, expected {n}")
            store.add_evaluation(**key, arch=arch, value=float(bits.mean()),
                                 extra={"correct": _pack(bits), "loglik": _pack_floats(ll)})
            rows[arch] = (bits, _unpack_floats(_pack_floats(ll), n))  # as stored: a re-run gives the same figures
    columns, start = {}, 0
    for s, size in zip(SPLITS, sizes):
        columns[s] = slice(start, start + size)
        start += size
    return PairedMeasurement(list(archs),
                             np.stack([rows[a][0] for a in archs]) if archs else np.zeros((0, n), bool),
                             columns, np.concatenate(labels), bn_batches,
                             np.stack([rows[a][1] for a in archs]) if archs else np.zeros((0, n), np.float32))
