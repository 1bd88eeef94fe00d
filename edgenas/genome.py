"""Archs as rows of an integer matrix, with vectorised sampling, mutation, crossover, encoding and statistics.

Search evaluates tens of thousands of candidates; building them one `Arch` at a time through
`SearchSpace.sample/mutate/crossover` costs 35-75 µs each (measured, the `mobilenetv3` space), which
alone would eat the 5 s budget of a 100 × 500 evolution. A genome row holds choice *indices*:

    [resolution, depth of each stage, kernel of each block slot, expand ratio of each block slot(, width)]

(the width gene only where the space offers several widths, so a one-width space's rows are as they were).

Slots beyond a stage's depth are inactive but keep their genes (as Once-for-All's evolution), so a
stage that grows again re-activates them. `canonical` zeroes inactive genes, giving one row per arch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np

from edgenas.cost import stats_table
from edgenas.space import Arch, SearchSpace


class GenomeCodec:
    """Converts between archs of one space and genome rows, and varies genomes in bulk."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.num_stages = space.num_stages
        self.num_slots = space.max_blocks
        self.elastic_width = space.elastic_width
        self.width = 1 + self.num_stages + 2 * self.num_slots + int(self.elastic_width)  # genes per row
        self.widths = np.asarray(space.widths, dtype=np.float64)
        self.resolutions = np.asarray(space.resolutions, dtype=np.int64)
        self.kernels = np.asarray(space.kernels, dtype=np.int64)
        self.expands = np.asarray(space.expands, dtype=np.int64)
        self.stage_depths = [np.asarray(s.depths, dtype=np.int64) for s in space.stages]
        # How many choices each gene has (for sampling and mutation).
        cardinality = [len(space.resolutions)] + [len(s.depths) for s in space.stages]
        cardinality += [len(space.kernels)] * self.num_slots + [len(space.expands)] * self.num_slots
        cardinality += [len(space.widths)] * int(self.elastic_width)
        self.cardinality = np.asarray(cardinality, dtype=np.int64)
        self.slot_stage = np.repeat(np.arange(self.num_stages), [s.max_depth for s in space.stages])
        self.slot_index = np.concatenate([np.arange(s.max_depth) for s in space.stages])
        # depth value table padded to a rectangle: depth_values[stage, depth index]
        width = max(len(d) for d in self.stage_depths)
        self.depth_values = np.zeros((self.num_stages, width), dtype=np.int64)
        for s, d in enumerate(self.stage_depths):
            self.depth_values[s, : len(d)] = d
        self._r = {int(r): i for i, r in enumerate(space.resolutions)}
        self._k = {int(k): i for i, k in enumerate(space.kernels)}
        self._e = {int(e): i for i, e in enumerate(space.expands)}
        self._w = {float(w): i for i, w in enumerate(space.widths)}
        self._d = [{int(d): i for i, d in enumerate(s.depths)} for s in space.stages]
        self._table = stats_table(space)

    # ---- layout ---------------------------------------------------------------------------
    @property
    def depth_cols(self) -> slice:
        return slice(1, 1 + self.num_stages)

    @property
    def kernel_cols(self) -> slice:
        return slice(1 + self.num_stages, 1 + self.num_stages + self.num_slots)

    @property
    def expand_cols(self) -> slice:
        return slice(1 + self.num_stages + self.num_slots, 1 + self.num_stages + 2 * self.num_slots)

    @property
    def width_col(self) -> int | None:
        """The width gene's column (the last), or None where the space has one width."""
        return self.width - 1 if self.elastic_width else None

    def variant_indices(self, genomes: np.ndarray) -> np.ndarray:
        """Each row's index into `space.variants` (width-major (width, resolution) pairs)."""
        if not self.elastic_width:
            return genomes[:, 0]
        return genomes[:, self.width - 1] * len(self.resolutions) + genomes[:, 0]

    def arch_widths(self, genomes: np.ndarray) -> list[float]:
        """Each row's width multiplier."""
        if not self.elastic_width:
            return [float(self.widths[0])] * len(genomes)
        return self.widths[genomes[:, self.width - 1]].tolist()

    def depths(self, genomes: np.ndarray) -> np.ndarray:
        """Depth of every stage, (n, stages)."""
        return self.depth_values[np.arange(self.num_stages)[None, :], genomes[:, self.depth_cols]]

    def active(self, genomes: np.ndarray) -> np.ndarray:
        """Which block slots each genome runs, (n, slots) bool."""
        return self.slot_index[None, :] < self.depths(genomes)[:, self.slot_stage]

    # ---- conversion -----------------------------------------------------------------------
    def from_archs(self, archs: Sequence[Arch]) -> np.ndarray:
        """Genome rows of archs of this space (validated); inactive genes are 0."""
        out = np.zeros((len(archs), self.width), dtype=np.int64)
        offsets = np.cumsum([0] + [s.max_depth for s in self.space.stages])
        ks, es = self.kernel_cols.start, self.expand_cols.start
        for row, arch in enumerate(archs):
            self.space.validate(arch)
            out[row, 0] = self._r[arch.resolution]
            if self.elastic_width:
                out[row, self.width - 1] = self._w[arch.width]
            i = 0
            for s, depth in enumerate(arch.depths):
                out[row, 1 + s] = self._d[s][depth]
                for j in range(depth):
                    out[row, ks + offsets[s] + j] = self._k[arch.kernels[i]]
                    out[row, es + offsets[s] + j] = self._e[arch.expands[i]]
                    i += 1
        return out

    def to_arch(self, genome: np.ndarray) -> Arch:
        return self.to_archs(np.asarray(genome).reshape(1, -1))[0]

    def to_archs(self, genomes: np.ndarray) -> list[Arch]:
        """The archs of genome rows (built in bulk: search converts tens of thousands)."""
        genomes = np.asarray(genomes, dtype=np.int64).reshape(-1, self.width)
        active = self.active(genomes)
        res = self.resolutions[genomes[:, 0]].tolist()
        depths = [tuple(d) for d in self.depths(genomes).tolist()]
        kernels = self.kernels[genomes[:, self.kernel_cols]][active].tolist()
        expands = self.expands[genomes[:, self.expand_cols]][active].tolist()
        ends = np.cumsum(active.sum(axis=1)).tolist()
        widths = self.arch_widths(genomes)
        out = []
        start = 0
        for i, end in enumerate(ends):
            out.append(_valid_arch(res[i], depths[i], tuple(kernels[start:end]), tuple(expands[start:end]), widths[i]))
            start = end
        return out

    def canonical(self, genomes: np.ndarray) -> np.ndarray:
        """The same archs with inactive genes zeroed: equal rows ⇔ equal archs."""
        out = genomes.copy()
        inactive = ~self.active(genomes)
        out[:, self.kernel_cols][inactive] = 0  # basic slices are views: this writes into `out`
        out[:, self.expand_cols][inactive] = 0
        return out

    def keys(self, genomes: np.ndarray) -> np.ndarray:
        """One bytes key per arch (its canonical row), as a 1-d array of numpy void scalars: equal keys ⇔ equal archs."""
        canon = np.ascontiguousarray(self.canonical(genomes).astype(np.int8))
        return canon.view(np.dtype((np.void, self.width))).reshape(-1)

    # ---- variation (all vectorised) ------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` uniformly random genomes (each gene uniform over its choices, as `SearchSpace.sample`)."""
        return (rng.random((n, self.width)) * self.cardinality[None, :]).astype(np.int64)

    def mutate(self, genomes: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
        """Resample each gene with probability `prob` (Once-for-All's mutation, per gene)."""
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"mutation probability {prob} must be between 0 and 1")
        fresh = self.sample(rng, len(genomes))
        flip = rng.random(genomes.shape) < prob
        return np.where(flip, fresh, genomes)

    def crossover(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Uniform crossover of paired rows: each gene from either parent with equal chance."""
        take_a = rng.random(a.shape) < 0.5
        return np.where(take_a, a, b)

    def smallest(self) -> np.ndarray:
        """The genome of `space.smallest()`: the least MACs, memory and flash the space offers."""
        return np.zeros((1, self.width), dtype=np.int64)

    def largest(self) -> np.ndarray:
        return (self.cardinality - 1)[None, :].copy()

    # ---- features ---------------------------------------------------------------------------
    def encode(self, genomes: np.ndarray) -> np.ndarray:
        """One-hot features, identical to `space.encode(archs)`, without building archs."""
        space = self.space
        n = len(genomes)
        nres, nk, ne = len(space.resolutions), len(space.kernels), len(space.expands)
        slot_w = nk + ne
        out = np.zeros((n, space.encoding_size), dtype=np.float32)
        rows = np.arange(n)
        out[rows, genomes[:, 0]] = 1.0
        active = self.active(genomes)
        base = nres + np.arange(self.num_slots)[None, :] * slot_w
        r_idx, s_idx = np.nonzero(active)
        out[r_idx, (base + genomes[:, self.kernel_cols])[r_idx, s_idx]] = 1.0
        out[r_idx, (base + nk + genomes[:, self.expand_cols])[r_idx, s_idx]] = 1.0
        if self.elastic_width:
            out[rows, nres + self.num_slots * slot_w + genomes[:, self.width - 1]] = 1.0
        return out

    def stats(self, genomes: np.ndarray, *, memory: bool = False) -> dict[str, np.ndarray]:
        """`stats_table(space).compute(archs, memory=memory)` for genomes, without building archs."""
        return self._table.from_indices(self.variant_indices(genomes), genomes[:, self.kernel_cols], genomes[:, self.expand_cols],
                                        self.active(genomes), memory=memory)


def _valid_arch(resolution: int, depths: tuple, kernels: tuple, expands: tuple, width: float = 1.0) -> Arch:
    """An Arch from values a genome guarantees valid (Python ints, matching lengths), skipping
    `Arch.__post_init__`'s per-item checks, which cost 47 µs an arch (measured) — most of a search's time."""
    arch = object.__new__(Arch)
    object.__setattr__(arch, "resolution", resolution)
    object.__setattr__(arch, "depths", depths)
    object.__setattr__(arch, "kernels", kernels)
    object.__setattr__(arch, "expands", expands)
    object.__setattr__(arch, "width", width)
    return arch


class ArchBatch(Sequence[Arch]):
    """Genomes seen as a sequence of archs, built lazily.

    Any predictor can take it as a list of archs; a predictor that knows genomes (the accuracy
    predictor) reads `.genomes` and `.codec` instead and skips building `Arch` objects.
    """

    def __init__(self, codec: GenomeCodec, genomes: np.ndarray) -> None:
        self.codec = codec
        self.genomes = genomes
        self._archs: list[Arch] | None = None

    def __len__(self) -> int:
        return len(self.genomes)

    def archs(self) -> list[Arch]:
        if self._archs is None:
            self._archs = self.codec.to_archs(self.genomes)
        return self._archs

    @overload
    def __getitem__(self, i: int) -> Arch: ...

    @overload
    def __getitem__(self, i: slice) -> list[Arch]: ...

    def __getitem__(self, i):
        return self.archs()[i]

    def __iter__(self) -> Iterator[Arch]:
        return iter(self.archs())

    def encode(self) -> np.ndarray:
        return self.codec.encode(self.genomes)

    def stats(self) -> dict[str, np.ndarray]:
        return self.codec.stats(self.genomes)
