"""What a search optimises: predictors, device constraints, and batched, cached evaluation of candidates.

Search never sees a `torch.nn.Module`: it sees archs (as genome rows), anything with
`.predict(archs) -> np.ndarray` for accuracy and latency, and limits on latency, SRAM, flash
and MACs, computed for whole batches. For an int8 deployment SRAM is the TFLite Micro arena and
flash the .tflite file size, both predicted from the graph the converter emits (`edgenas.micro_memory`);
for fp32 they are the analytic peak of live activations and the weights (`edgenas.cost`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgenas.errors import UsageError
from edgenas.genome import ArchBatch, GenomeCodec
from edgenas.micro_memory import graph_prediction, memory_table, micro_graph, patched_graph, predict_arena, quick_patch_choice
from edgenas.space import Arch, SearchSpace


@runtime_checkable
class Predictor(Protocol):
    """Anything that predicts one number per arch: accuracy (top-1 in [0, 1]) or latency (ms)."""

    def predict(self, archs: Sequence[Arch]) -> np.ndarray: ...


class InfeasibleConstraintError(UsageError):
    """No arch of the space meets the constraints; the message names the smallest achievable values."""

    def __init__(self, message: str, smallest: dict[str, float]) -> None:
        super().__init__(message)
        self.smallest = smallest


# name -> (statistics field for int8 / fp32 deployment, unit label, scale to the unit)
_STAT_LIMITS = {
    "sram": (("arena_int8", "peak_activation_fp32"), "KB", 1024.0),
    "flash": (("tflite_int8", "flash_fp32"), "KB", 1024.0),
    "macs": (("macs", "macs"), "M MACs", 1e6),
}


@dataclass(frozen=True)
class Constraints:
    """Upper limits an arch must meet (None: no limit). Memory in bytes, at the deployed precision."""

    max_latency_ms: float | None = None
    max_sram_bytes: int | None = None  # int8: TFLite Micro's arena; fp32: the peak of live activations
    max_flash_bytes: int | None = None  # int8: the .tflite file; fp32: the weights
    max_macs: int | None = None
    precision: str = "int8"  # memory figures for an int8 (TFLite Micro) or an fp32 deployment

    def __post_init__(self) -> None:
        if self.precision not in ("int8", "fp32"):
            raise UsageError(f"memory precision {self.precision!r} is not supported: choose int8 or fp32")
        for name in ("max_latency_ms", "max_sram_bytes", "max_flash_bytes", "max_macs"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"constraint {name.replace('_', '-')} = {value} must be positive")

    @classmethod
    def from_user_units(cls, *, max_latency_ms: float | None = None, max_sram_kb: float | None = None,
                        max_flash_kb: float | None = None, max_macs_m: float | None = None,
                        precision: str = "int8") -> Constraints:
        """Constraints from the units users write (`--max-sram-kb`, `max_macs = 300` in a run config): latency in
        ms, memory in KB (1024 bytes), compute in millions of MACs. The CLI and the run config both build theirs
        here, so one number means one thing in both."""
        return cls(max_latency_ms=None if max_latency_ms is None else float(max_latency_ms),
                   max_sram_bytes=None if max_sram_kb is None else int(max_sram_kb * 1024),
                   max_flash_bytes=None if max_flash_kb is None else int(max_flash_kb * 1024),
                   max_macs=None if max_macs_m is None else int(max_macs_m * 1e6), precision=precision)

    def limits(self) -> dict[str, float]:
        """Active limits by short name: latency (ms), sram, flash (bytes), macs."""
        out = {"latency": self.max_latency_ms, "sram": self.max_sram_bytes, "flash": self.max_flash_bytes,
               "macs": self.max_macs}
        return {k: float(v) for k, v in out.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"max_latency_ms": self.max_latency_ms, "max_sram_bytes": self.max_sram_bytes,
                "max_flash_bytes": self.max_flash_bytes, "max_macs": self.max_macs, "precision": self.precision}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Constraints:
        return cls(**{k: d[k] for k in ("max_latency_ms", "max_sram_bytes", "max_flash_bytes", "max_macs", "precision")
                      if k in d})

    def describe(self) -> str:
        parts = []
        if self.max_latency_ms is not None:
            parts.append(f"latency <= {self.max_latency_ms:g} ms")
        if self.max_sram_bytes is not None:
            parts.append(f"SRAM <= {self.max_sram_bytes / 1024:g} KB")
        if self.max_flash_bytes is not None:
            parts.append(f"flash <= {self.max_flash_bytes / 1024:g} KB")
        if self.max_macs is not None:
            parts.append(f"MACs <= {self.max_macs / 1e6:g} M")
        return ", ".join(parts) or "no constraints"


@dataclass
class Evaluation:
    """Metrics of a batch of candidates, one entry per row (latency NaN without a latency predictor)."""

    accuracy: np.ndarray
    latency_ms: np.ndarray
    sram: np.ndarray
    flash: np.ndarray
    macs: np.ndarray
    feasible: np.ndarray
    violation: np.ndarray  # (n, constraints): value / limit - 1; <= 0 where met

    def __len__(self) -> int:
        return len(self.accuracy)

    def take(self, index: np.ndarray) -> Evaluation:
        return Evaluation(**{k: getattr(self, k)[index] for k in self.__dataclass_fields__})

    @staticmethod
    def concat(parts: Sequence[Evaluation]) -> Evaluation:
        return Evaluation(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in Evaluation.__dataclass_fields__})

    def row(self, i: int) -> dict[str, float]:
        return {"accuracy": float(self.accuracy[i]), "latency_ms": float(self.latency_ms[i]),
                "sram_bytes": int(self.sram[i]), "flash_bytes": int(self.flash[i]), "macs": int(self.macs[i])}


@dataclass
class Problem:
    """Predictors and constraints over one search space; `evaluate(genomes)` scores whole batches.

    Predictions are cached per distinct arch (evolution revisits archs often), so `predicted`
    counts the archs actually sent to the predictors and `candidates` every row evaluated.
    With `score_infeasible` False (for algorithms that never look at an infeasible candidate's accuracy,
    such as evolution), accuracy is predicted only for candidates within the latency limit (NaN for the
    others), as Once-for-All's finder does. Memory and MACs figures that no limit needs are left NaN during the
    search and computed for the results kept (`with_memory`).
    """

    space: SearchSpace
    accuracy: Predictor
    latency: Predictor | None = None
    constraints: Constraints = field(default_factory=Constraints)
    device: str | None = None
    cache: bool = True
    score_infeasible: bool = True
    # Microcontrollers (issue 44): int8 memory of the file with int8 I/O, and with `patches` ("auto" or N) an arch
    # whose whole-map arena misses the SRAM limit is judged on its patch-based schedule (`micro_memory`).
    int8_io: bool = False
    patches: int | str | None = None
    # the files carry the per-channel normalisation (`export.contract.NormalisedInput`, a dataset whose channels
    # differ): one more op at the input's size, in the arena and in the op count a patch schedule cuts at
    normalised_input: bool = False

    def __post_init__(self) -> None:
        for role, predictor in (("accuracy", self.accuracy), ("latency", self.latency)):
            if predictor is not None and not callable(getattr(predictor, "predict", None)):
                raise TypeError(f"the {role} predictor {predictor!r} has no predict(archs) method")
        if self.constraints.max_latency_ms is not None and self.latency is None:
            raise UsageError("a latency limit needs a latency predictor for the device: calibrate it first "
                             "(edgenas calibrate --device NAME --supernet CKPT)")
        self.codec = GenomeCodec(self.space)
        self.candidates = 0
        self.predicted = 0
        self._cache: dict[bytes, tuple[float, float]] = {}
        self._arena_cache: dict[bytes, int] = {}
        self._mcu_cache: dict[bytes, tuple[int, int, tuple[int, int] | None]] = {}
        limits = self.constraints.limits()
        self._limit_names = list(limits)
        self._limit_values = np.array([limits[k] for k in limits], dtype=np.float64)
        self._precision_index = 0 if self.constraints.precision == "int8" else 1
        self._memory_limited = self.constraints.max_sram_bytes is not None or self.constraints.max_flash_bytes is not None
        # MACs stand in for latency without a latency predictor (the front's cost)
        self._stats_needed = self._memory_limited or self.constraints.max_macs is not None or self.latency is None

    @property
    def limit_names(self) -> list[str]:
        return list(self._limit_names)

    def _predict(self, genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = ArchBatch(self.codec, genomes)
        if self.latency is not None:
            lat = np.asarray(self.latency.predict(batch), dtype=np.float64).reshape(-1)
        else:
            lat = np.full(len(genomes), np.nan)
        limit = self.constraints.max_latency_ms
        if self.score_infeasible or limit is None or len(lat) != len(genomes):
            acc = np.asarray(self.accuracy.predict(batch), dtype=np.float64).reshape(-1)
        else:  # only the candidates the latency limit lets in are worth an accuracy prediction
            acc = np.full(len(genomes), np.nan)
            rows = np.flatnonzero(lat <= limit)
            if len(rows):
                acc[rows] = np.asarray(self.accuracy.predict(ArchBatch(self.codec, genomes[rows])),
                                       dtype=np.float64).reshape(-1)
        if len(acc) != len(genomes) or len(lat) != len(genomes):
            raise ValueError(f"a predictor returned {len(acc)}/{len(lat)} values for {len(genomes)} archs")
        self.predicted += len(genomes)
        return acc, lat

    def predictions(self, genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted accuracy and latency of each row (cached per distinct arch)."""
        if not self.cache:
            return self._predict(genomes)
        keys = self.codec.keys(genomes).tolist()
        missing: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in self._cache and key not in missing:
                missing[key] = i
        if missing:
            rows = np.fromiter(missing.values(), dtype=np.int64, count=len(missing))
            acc, lat = self._predict(genomes[rows])
            for key, a, t in zip(missing, acc.tolist(), lat.tolist()):
                self._cache[key] = (a, t)
        values = np.array([self._cache[k] for k in keys], dtype=np.float64).reshape(len(keys), 2)
        return values[:, 0], values[:, 1]

    def evaluate(self, genomes: np.ndarray) -> Evaluation:
        """Predicted accuracy and latency, memory and MACs, and constraint status of every row."""
        genomes = np.asarray(genomes, dtype=np.int64).reshape(-1, self.codec.width)
        self.candidates += len(genomes)
        acc, lat = self.predictions(genomes)
        p = self._precision_index
        unneeded = np.full(len(genomes), np.nan)  # figures no limit asks for: computed for the results (with_memory)
        values = {"latency": lat, "sram": unneeded, "flash": unneeded, "macs": unneeded}
        if self._stats_needed:
            memory = p == 0 and self._memory_limited
            stats = self.codec.stats(genomes, memory=memory)
            values["macs"] = stats["macs"]
            if p == 1 or memory:
                values["sram"], values["flash"] = (stats[_STAT_LIMITS[k][0][p]] for k in ("sram", "flash"))
        if p == 0 and self._memory_limited and (self.int8_io or self.patches is not None):
            values["sram"], values["flash"] = self._mcu_memory(genomes)
        elif p == 0 and self.constraints.max_sram_bytes is not None:
            values["sram"] = self._exact_arena_near_limit(genomes, values["sram"])
        if self._limit_names:
            measured = np.stack([values[k].astype(np.float64) for k in self._limit_names], axis=1)
            violation = measured / self._limit_values[None, :] - 1.0
            violation = np.where(np.isnan(violation), np.inf, violation)
        else:
            violation = np.zeros((len(genomes), 0))
        feasible = np.all(violation <= 0, axis=1)
        return Evaluation(acc, lat, values["sram"], values["flash"], values["macs"], feasible, violation)

    def with_memory(self, genomes: np.ndarray, ev: Evaluation) -> Evaluation:
        """`ev` with the memory and MACs figures the search left out (`evaluate`: no limit asked for them) filled in."""
        if not (np.isnan(ev.sram).any() or np.isnan(ev.macs).any()):
            return ev
        p = self._precision_index
        stats = self.codec.stats(np.asarray(genomes, dtype=np.int64).reshape(-1, self.codec.width), memory=p == 0)
        return replace(ev, sram=stats[_STAT_LIMITS["sram"][0][p]], flash=stats[_STAT_LIMITS["flash"][0][p]],
                       macs=stats["macs"])

    def _exact_arena_near_limit(self, genomes: np.ndarray, arena: np.ndarray) -> np.ndarray:
        """Where the table's check found TFLite Micro's greedy planner packing worse than the live peak in this
        space, run the planner itself (cached per arch) on the rows within that gap under the SRAM limit."""
        gap = memory_table(self.space).planner_gap or 0.0
        if gap <= 0.0:
            return arena
        limit = float(self.constraints.max_sram_bytes)
        rows = np.nonzero((arena <= limit) & (arena * (1.0 + 2.0 * gap) > limit))[0]
        if not len(rows):
            return arena
        arena = arena.copy()
        keys = self.codec.keys(genomes[rows]).tolist()
        archs = self.codec.to_archs(genomes[rows])
        for row, key, arch in zip(rows, keys, archs):
            if key not in self._arena_cache:
                self._arena_cache[key] = predict_arena(self.space, arch)
            arena[row] = self._arena_cache[key]
        return arena

    def _mcu_memory(self, genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Arena and file size of every row's int8 file with int8 I/O, patch-based where that is what fits."""
        keys = self.codec.keys(genomes).tolist()
        archs = self.codec.to_archs(genomes)
        sram, flash = np.empty(len(keys)), np.empty(len(keys))
        for row, (key, arch) in enumerate(zip(keys, archs)):
            if key not in self._mcu_cache:
                self._mcu_cache[key] = self._mcu_one(arch)
            sram[row], flash[row], _ = self._mcu_cache[key]
        return sram, flash

    def _mcu_one(self, arch: Arch) -> tuple[int, int, tuple[int, int] | None]:
        g = micro_graph(self.space, arch, int8_io=True, normalised_input=self.normalised_input)
        whole = graph_prediction(g)
        limit = self.constraints.max_sram_bytes
        if self.patches is None or limit is None or whole.arena <= limit:
            return whole.arena, whole.flash, None
        try:
            estimate, ops, n = quick_patch_choice(self.space, arch, None if self.patches == "auto" else int(self.patches),
                                                  normalised_input=self.normalised_input)
        except ValueError:
            return whole.arena, whole.flash, None
        if estimate > limit:  # the estimate runs under the exact figure: this schedule does not fit either
            return min(estimate, whole.arena), whole.flash, None
        exact = graph_prediction(patched_graph(g, ops, n))
        if exact.arena >= whole.arena:
            return whole.arena, whole.flash, None
        return exact.arena, exact.flash, (ops, n)

    def patch_schedule(self, arch: Arch) -> tuple[int, int] | None:
        """(ops, n) of the patch-based schedule the search judged `arch` on, or None (the whole-map file)."""
        if self.patches is None:
            return None
        key = self.codec.keys(self.codec.from_archs([arch])).tolist()[0]
        if key not in self._mcu_cache:
            self._mcu_cache[key] = self._mcu_one(arch)
        return self._mcu_cache[key][2]

    def evaluate_archs(self, archs: Sequence[Arch]) -> Evaluation:
        return self.evaluate(self.codec.from_archs(list(archs)))

    # ---- infeasibility ------------------------------------------------------------------------
    def smallest_achievable(self, rng: np.random.Generator, probes: int = 512) -> dict[str, float]:
        """Per constrained quantity, the smallest value found: exact for memory and MACs (the space's
        smallest arch minimises them), the least predicted latency over the smallest arch and random probes."""
        genomes = np.concatenate([self.codec.smallest(), self.codec.sample(rng, probes)])
        ev = self.evaluate(genomes)
        named = {"latency": ev.latency_ms, "sram": ev.sram, "flash": ev.flash, "macs": ev.macs}
        return {k: float(np.nanmin(named[k])) for k in self._limit_names}

    def infeasible_error(self, smallest: dict[str, float]) -> InfeasibleConstraintError:
        limits = self.constraints.limits()
        where = f" on device '{self.device}'" if self.device else ""
        parts = []
        for name, low in smallest.items():
            if low > limits[name]:
                parts.append(f"the smallest achievable {_fmt(name, low)}, but {_fmt(name, limits[name], bare=True)} was asked")
        if not parts:  # each limit alone is reachable, not all together
            parts = [f"{_fmt(k, v)} is reachable alone" for k, v in smallest.items()]
            parts.append("no arch found meets all limits together")
        return InfeasibleConstraintError(
            f"no arch of the '{self.space.name}' space meets {self.constraints.describe()}{where}: "
            + "; ".join(parts) + ". Relax the limit or use a smaller search space", smallest)


def _fmt(name: str, value: float, bare: bool = False) -> str:
    """`latency 3.07 ms`, `peak SRAM 96 KB`, ...; with `bare` the value alone (`<= 3 ms`)."""
    _fields, unit, scale = _STAT_LIMITS.get(name, ((), "ms", 1.0))
    number = f"{value / scale:.4g} {unit}"
    if bare:
        return f"<= {number}"
    label = {"latency": "latency", "sram": "SRAM", "flash": "flash", "macs": "MACs"}[name]
    return f"{label} is {number}" if name != "macs" else f"MACs count is {number}"
