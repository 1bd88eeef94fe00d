"""The distinct pieces (stem, MBConv blocks, head) a search space's subnets are made of, and arch → piece lookup.

A latency table has one entry per *distinct* piece: two block slots that build the same module
on the same input size (for instance every non-first block of a stage at one resolution, or the
same stage block at two resolutions that reach it at the same size) share an entry. A piece's key
names the module it builds (channels, kernel, stride, hidden width, activation, squeeze-excite,
residual, input size), so a table can serve several spaces whose blocks coincide.

`BlockIndex(space).lookup(archs)` maps thousands of archs at once to an (n, positions) matrix of
piece indices (-1 where a stage is shallower than its largest depth), and `group_sums` adds any
per-piece values (latencies, analytic costs) per group: stem, each stage, head. No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from edgenas.cost import _GraphBuilder, stats_table
from edgenas.space import STEM_KERNEL, Arch, SearchSpace, se_channels


@dataclass(frozen=True)
class Piece:
    """One standalone model of a latency table: kind 'stem' (stem conv + fixed first block),
    'block' (one MBConv) or 'head' (final expand, pool, feature mix, classifier)."""

    kind: str
    cin: int
    cout: int
    hw: int
    kernel: int = 1
    stride: int = 1
    mid: int = 0
    act: str = "relu"
    se_mid: int = 0
    residual: bool = False
    extra: int = 0  # stem: the first block's width; head: the feature width

    @property
    def key(self) -> str:
        if self.kind == "stem":
            return f"stem-i{self.cin}-o{self.mid}-s{self.stride}-f{self.cout}-r{int(self.residual)}-hw{self.hw}"
        if self.kind == "head":
            return f"head-i{self.cin}-m{self.mid}-f{self.extra}-c{self.cout}-hw{self.hw}"
        return (f"block-i{self.cin}-o{self.cout}-k{self.kernel}-s{self.stride}-m{self.mid}-{self.act}"
                f"-se{self.se_mid}-r{int(self.residual)}-hw{self.hw}")

    def to_dict(self) -> dict:
        return asdict(self)

    def analytic_costs(self) -> np.ndarray:
        """Cost features of the piece computed from its op graph (no device): see `ANALYTIC_FEATURES`."""
        g = _GraphBuilder()
        x = g.tensor(self.cin * self.hw * self.hw)
        if self.kind == "stem":
            h, hw = g.conv("stem", x, self.cin, self.mid, self.hw, STEM_KERNEL, self.stride, act="hswish")
            g.mbconv("first", h, self.mid, self.cout, hw, 3, 1, 1, "relu", False, self.residual, has_expand=False)
        elif self.kind == "head":
            h, _ = g.conv("final_expand", x, self.cin, self.mid, self.hw, 1, 1, act="hswish")
            p = g.add("pool", "pool", (h,), self.mid)
            f = g.add("feature_mix", "conv", (p,), self.extra, macs=self.mid * self.extra)
            g.add("hswish", "hswish", (f,), self.extra)
            g.add("classifier", "linear", (f,), self.cout, macs=self.extra * self.cout)
        else:
            # Widths are multiples of 8, so the hidden width is exactly cin * expand (as mid_channels gives).
            g.mbconv("b", x, self.cin, self.cout, self.hw, self.kernel, self.mid // self.cin, self.stride,
                     self.act, bool(self.se_mid), self.residual)
        return _costs(g, self)


ANALYTIC_FEATURES = ("dense_mmacs", "depthwise_mmacs", "elementwise_mvalues", "weights_mvalues", "ops")


def _costs(g: _GraphBuilder, piece: Piece) -> np.ndarray:
    dense = sum(op.macs for op in g.ops if op.kind in ("conv", "linear"))
    depthwise = sum(op.macs for op in g.ops if op.kind == "dwconv")
    elementwise = sum(op.out_size for op in g.ops if op.kind in ("hswish", "add", "se_scale", "pool"))
    weights = sum(op.weights for op in g.ops)
    return np.array([dense / 1e6, depthwise / 1e6, elementwise / 1e6, weights / 1e6, len(g.ops)], dtype=np.float64)


class BlockIndex:
    """Every distinct piece of `space`, and a vectorised map from archs to the pieces they run.

    Groups: 0 = stem, 1..S = stages, S+1 = head (`group_names`). With `per_resolution`, a piece is one entry
    per input resolution (key `r<res>/<piece key>`): for tables measured one resolution at a time, such as
    Once-for-All's, where the same module reached at two resolutions has two figures.
    """

    def __init__(self, space: SearchSpace, *, per_resolution: bool = False) -> None:
        self.space = space
        self.per_resolution = per_resolution
        self.pieces: list[Piece] = []
        self.scopes: list[int | None] = []  # the resolution a piece's entry is for (per_resolution), else None
        self._index: dict[tuple[int | None, Piece], int] = {}
        self._scope: int | None = None
        slots = space.block_slots()  # the wiring of every block, as the space describes it
        nr, nslot, nk, ne = len(space.variants), len(slots), len(space.kernels), len(space.expands)
        self.stem_of = np.zeros(nr, dtype=np.int64)
        self.head_of = np.zeros(nr, dtype=np.int64)
        self.block_of = np.zeros((nr, nslot, nk, ne), dtype=np.int64)
        for ri, (width, res) in enumerate(space.variants):  # (width, resolution) pairs: `SearchSpace.variants`
            slots = space.block_slots(width)  # the wiring of every block at this width
            first = space.first_block_at(width)
            last = slots[-1].out_channels
            self._scope = res if per_resolution else None
            self.stem_of[ri] = self._add(Piece("stem", space.in_channels, first.out_channels, res, STEM_KERNEL,
                                               space.stem_stride, mid=first.in_channels, residual=first.residual))
            sizes = space.feature_sizes(res)
            for i, slot in enumerate(slots):
                for ki, k in enumerate(space.kernels):
                    for ei, e in enumerate(space.expands):
                        mid = slot.mid_channels(e)
                        piece = Piece("block", slot.in_channels, slot.out_channels, sizes.slot_in[i], k, slot.stride, mid,
                                      slot.act, se_channels(mid) if slot.se else 0, slot.residual)
                        self.block_of[ri, i, ki, ei] = self._add(piece)
            self.head_of[ri] = self._add(Piece("head", last, space.num_classes, sizes.head,
                                               mid=space.scaled(space.final_expand_width),
                                               extra=space.scaled(space.feature_width)))
        self.slot_group = np.array([1 + slot.stage for slot in slots], dtype=np.int64)
        self.num_groups = space.num_stages + 2
        self.group_names = ["stem"] + [f"stage{s}" for s in range(space.num_stages)] + ["head"]
        self._analytic: np.ndarray | None = None

    def _add(self, piece: Piece) -> int:
        entry = (self._scope, piece)
        if entry not in self._index:
            self._index[entry] = len(self.pieces)
            self.pieces.append(piece)
            self.scopes.append(self._scope)
        return self._index[entry]

    @property
    def keys(self) -> list[str]:
        return [p.key if r is None else f"r{r}/{p.key}" for p, r in zip(self.pieces, self.scopes)]

    def __len__(self) -> int:
        return len(self.pieces)

    def lookup(self, archs: Sequence[Arch]) -> np.ndarray:
        """(n, 2 + max_blocks) piece indices: stem, every block slot (-1 if inactive), head."""
        codec = getattr(archs, "codec", None)
        if codec is not None and codec.space == self.space:  # a search's genomes hold the indices already
            g = archs.genomes
            ri, ki, ei, active = (codec.variant_indices(g), g[:, codec.kernel_cols], g[:, codec.expand_cols],
                                  codec.active(g))
        else:
            ri, ki, ei, active = stats_table(self.space).indices(list(archs))
        slots = np.arange(self.space.max_blocks)[None, :]
        blocks = np.where(active, self.block_of[ri[:, None], slots, ki, ei], -1)
        return np.concatenate([self.stem_of[ri][:, None], blocks, self.head_of[ri][:, None]], axis=1)

    def pieces_of(self, arch: Arch) -> list[Piece]:
        """The pieces `arch` runs, in order."""
        return [self.pieces[i] for i in self.lookup([arch])[0] if i >= 0]

    def group_sums(self, values: np.ndarray, archs: Sequence[Arch] | None = None, *,
                   index: np.ndarray | None = None) -> np.ndarray:
        """Per-arch, per-group sums of per-piece `values` (shape (pieces,) or (pieces, f)):
        shape (n, groups) or (n, groups, f)."""
        idx = self.lookup(archs) if index is None else index
        values = np.asarray(values, dtype=np.float64)
        padded = np.concatenate([values, np.zeros((1,) + values.shape[1:])], axis=0)  # index -1 → zeros
        gathered = padded[idx]  # (n, positions, ...)
        groups = np.concatenate([[0], self.slot_group, [self.num_groups - 1]])
        onehot = np.eye(self.num_groups)[groups]  # (positions, groups)
        if gathered.ndim == 2:
            return gathered @ onehot
        return np.einsum("npf,pg->ngf", gathered, onehot)

    def analytic_costs(self) -> np.ndarray:
        """(pieces, len(ANALYTIC_FEATURES)) cost features of every piece."""
        if self._analytic is None:
            self._analytic = np.stack([p.analytic_costs() for p in self.pieces])
        return self._analytic

    def block_counts(self, index: np.ndarray) -> np.ndarray:
        """Active blocks per arch, from a `lookup` matrix."""
        return (index[:, 1:-1] >= 0).sum(axis=1)


def block_index(space: SearchSpace, *, per_resolution: bool = False) -> BlockIndex:
    """The (cached) BlockIndex of a space."""
    name = "latency_block_index_per_resolution" if per_resolution else "latency_block_index"
    idx = space._cache.get(name)
    if idx is None:
        idx = space._cache[name] = BlockIndex(space, per_resolution=per_resolution)
    return idx
