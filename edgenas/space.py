"""The search space: a MobileNetV3-style network family, its archs, and how to sample and vary them (no torch).

A `SearchSpace` is a value: a stem, a fixed first block, N elastic stages, a head, and the
choices for kernel size, expand ratio, depth, input resolution and (where the space offers more
than one) width. An `Arch` is one subnet of it, stored as JSON-ready tuples: one depth per stage,
and one kernel and one expand ratio per *active* block, stage by stage (so `len(kernels) == sum(depths)`),
and its width multiplier (1.0, the supernet's full width, unless the space offers narrower ones).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.errors import did_you_mean

ACTIVATIONS = ("relu", "hswish")
STEM_KERNEL = 3  # the stem convolution's kernel size


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor` without dropping more than 10 % (as MobileNet)."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def normal_width(width: float) -> float:
    """A width multiplier as archs and spaces hold it (rounded to 4 decimals, so 0.35 from JSON equals 0.35)."""
    return round(float(width), 4)


def mid_channels(in_channels: int, expand: int) -> int:
    """Hidden width of an MBConv block (Once-for-All: rounded to a multiple of 8)."""
    return make_divisible(round(in_channels * expand), 8)


def se_channels(channels: int) -> int:
    """Squeeze width of a squeeze-excite module (reduction 4, multiple of 8)."""
    return make_divisible(channels // 4, 8)


def skip_fits(in_channels: int, out_channels: int, stride: int) -> bool:
    """The residual rule: a block adds its input to its output when both have the same shape."""
    return stride == 1 and in_channels == out_channels


@dataclass(frozen=True)
class BlockSlot:
    """One MBConv block slot of the supernet, as plain data: everything about its wiring that does not
    depend on the arch. The supernet, the statistics, the latency pieces and the memory model read these
    (`SearchSpace.block_slots()`, `SearchSpace.first_block`), so the network is described in one place.

    `residual` is whether the block adds its input to its output; left out, the residual rule
    (`skip_fits`: same shape in and out) decides it."""

    stage: int  # -1 for the fixed first block after the stem
    index: int  # position in its stage; the block is active when index < the stage's depth
    in_channels: int
    out_channels: int
    stride: int
    act: str
    se: bool
    residual: bool | None = None  # None: the residual rule decides (a bool after construction)

    def __post_init__(self) -> None:
        if self.residual is None:
            object.__setattr__(self, "residual", skip_fits(self.in_channels, self.out_channels, self.stride))
        elif self.residual and not skip_fits(self.in_channels, self.out_channels, self.stride):
            raise ValueError(f"block slot {self.stage}.{self.index} cannot add its input: {self.in_channels} channels "
                             f"in, {self.out_channels} out, stride {self.stride}")

    def mid_channels(self, expand: int) -> int:
        """Hidden width at expand ratio `expand`."""
        return mid_channels(self.in_channels, expand)


@dataclass(frozen=True)
class FeatureSizes:
    """Spatial sizes (height = width) of the feature maps at one input resolution (`SearchSpace.feature_sizes`)."""

    resolution: int
    stem: int  # out of the stem convolution: in and out of the fixed first block
    slot_in: tuple[int, ...]  # into each block slot, in `block_slots()` order
    slot_out: tuple[int, ...]  # out of each block slot
    head: int  # into the head: out of the last stage


@dataclass(frozen=True)
class StageSpec:
    """One elastic stage: `depths` are the block counts a subnet may choose."""

    width: int
    stride: int
    act: str = "relu"
    se: bool = False
    depths: tuple[int, ...] = (2, 3, 4)

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(sorted(int(d) for d in self.depths)))
        if self.width < 1:
            raise ValueError(f"stage width {self.width} must be positive")
        if self.stride not in (1, 2):
            raise ValueError(f"stage stride {self.stride} is not supported: choose 1 or 2")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.act!r}: choose from {', '.join(ACTIVATIONS)}")
        if not self.depths or self.depths[0] < 1:
            raise ValueError(f"stage depth choices {self.depths} must be positive integers")

    @property
    def max_depth(self) -> int:
        return self.depths[-1]


def _fmt_choices(choices: Iterable[Any]) -> str:
    return ", ".join(str(c) for c in choices)


@dataclass(frozen=True)
class Arch:
    """One subnet: `resolution`, a depth per stage, a kernel and expand ratio per active block, and `width`, the
    multiplier of the stem's, first block's and every stage's channels (1.0: the supernet's full width; the
    `mcunet` space offers narrower ones, run as the first channels of the supernet's weights).

    Frozen and hashable, so archs can be deduplicated and used as dict keys. Construct through
    `SearchSpace` methods or `Arch.from_dict`, and check against a space with `space.validate(arch)`.
    """

    resolution: int
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    width: float = 1.0

    def __post_init__(self) -> None:
        for name in ("depths", "kernels", "expands"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise ValueError(f"arch field '{name}' must be a list of integers, got {value!r}")
            items = tuple(value)
            for item in items:
                if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
                    raise ValueError(f"arch field '{name}' must hold integers, got {item!r}")
            object.__setattr__(self, name, tuple(int(v) for v in items))
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, (int, np.integer)):
            raise ValueError(f"arch field 'resolution' must be an integer, got {self.resolution!r}")
        object.__setattr__(self, "resolution", int(self.resolution))
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float, np.integer, np.floating)) \
                or not 0.0 < float(self.width) <= 16.0:
            raise ValueError(f"arch field 'width' must be a positive number (a width multiplier), got {self.width!r}")
        object.__setattr__(self, "width", normal_width(self.width))
        n_blocks = sum(self.depths)
        if len(self.kernels) != n_blocks or len(self.expands) != n_blocks:
            raise ValueError(
                f"arch has {len(self.kernels)} kernels and {len(self.expands)} expand ratios but its depths "
                f"{list(self.depths)} give {n_blocks} blocks: give one kernel and one expand ratio per block"
            )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; `width` only where it is not the full width (1.0), so a one-width space's archs read as
        they always did."""
        d: dict[str, Any] = {
            "resolution": self.resolution,
            "depths": list(self.depths),
            "kernels": list(self.kernels),
            "expands": list(self.expands),
        }
        if self.width != 1.0:
            d["width"] = self.width
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], space: SearchSpace | None = None) -> Arch:
        """Build an arch from its JSON form; with `space`, also validate it and accept
        Once-for-All's layout (a kernel and expand ratio for every block slot, active or not)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"an arch must be a JSON object with resolution, depths, kernels, expands; got {d!r}")
        missing = [k for k in ("resolution", "depths", "kernels", "expands") if k not in d]
        if missing:
            raise ValueError(f"arch is missing {', '.join(missing)}: expected keys resolution, depths, kernels, expands")
        unknown = sorted(set(d) - {"resolution", "depths", "kernels", "expands", "width"})
        if unknown:
            raise ValueError(f"arch has unknown keys {', '.join(unknown)}: expected resolution, depths, kernels, expands"
                             f" (and width)")
        kernels, expands = d["kernels"], d["expands"]
        if space is not None:
            kernels = space._active_slots(d["depths"], kernels, "kernels")
            expands = space._active_slots(d["depths"], expands, "expands")
        arch = cls(d["resolution"], d["depths"], kernels, expands, d.get("width", 1.0))
        if space is not None:
            space.validate(arch)
        return arch

    @classmethod
    def from_json(cls, text: str, space: SearchSpace | None = None) -> Arch:
        return cls.from_dict(json.loads(text), space)

    def blocks(self) -> list[tuple[int, int, int, int]]:
        """(stage index, index within stage, kernel, expand) for every active block."""
        out = []
        i = 0
        for s, depth in enumerate(self.depths):
            for j in range(depth):
                out.append((s, j, self.kernels[i], self.expands[i]))
                i += 1
        return out

    def stage_blocks(self, stage: int) -> list[tuple[int, int]]:
        """(kernel, expand) of each active block of one stage."""
        start = sum(self.depths[:stage])
        stop = start + self.depths[stage]
        return list(zip(self.kernels[start:stop], self.expands[start:stop]))

    def __str__(self) -> str:
        parts = []
        for s in range(len(self.depths)):
            parts.append("-".join(f"k{k}e{e}" for k, e in self.stage_blocks(s)))
        width = "" if self.width == 1.0 else f"w{self.width:g}"
        return f"r{self.resolution}{width}|" + "|".join(parts)


_PRESETS: dict[str, Callable[[], SearchSpace]] = {}


def register_preset(name: str) -> Callable[[Callable[[], SearchSpace]], Callable[[], SearchSpace]]:
    """Decorator adding a search-space factory to the registry used by `SearchSpace.preset`."""

    def wrap(fn: Callable[[], SearchSpace]) -> Callable[[], SearchSpace]:
        _PRESETS[name] = fn
        return fn

    return wrap


@dataclass(frozen=True)
class SearchSpace:
    """A MobileNetV3-style family of networks (Once-for-All's design).

    Network: stem conv (3×3, `stem_stride`) → fixed first block (depthwise 3×3, expand 1) →
    elastic stages of MBConv blocks → 1×1 final expand → global pool → 1×1 feature mix →
    classifier. `width_mult` scales every width (rounded to multiples of 8).

    `widths` are the width multipliers an arch may choose (elastic width; default only 1.0): an arch at width w runs
    the stem, the first block and every stage at `scaled(width, w)` channels, the first channels of the supernet's
    weights (as Once-for-All's and slimmable networks' elastic width); the head (final expand, feature mix) keeps
    its width, as MobileNetV2 keeps its last layer's for multipliers below 1.
    """

    name: str
    stages: tuple[StageSpec, ...]
    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[int, ...] = (3, 4, 6)
    resolutions: tuple[int, ...] = (224,)
    stem_width: int = 16
    stem_stride: int = 2
    first_block_width: int = 16
    final_expand_width: int = 960
    feature_width: int = 1280
    width_mult: float = 1.0
    widths: tuple[float, ...] = (1.0,)
    num_classes: int = 1000
    in_channels: int = 3
    dropout: float = 0.1
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(
            s if isinstance(s, StageSpec) else StageSpec(**s) for s in self.stages))
        for name in ("kernels", "expands", "resolutions"):
            object.__setattr__(self, name, tuple(sorted(int(v) for v in getattr(self, name))))
        object.__setattr__(self, "widths", tuple(sorted({normal_width(w) for w in self.widths})))
        if not self.widths or self.widths[-1] != 1.0 or self.widths[0] <= 0:
            raise ValueError(f"widths {list(self.widths)} must be multipliers in (0, 1] that include 1.0 (the "
                             f"supernet's full width)")
        if not self.stages:
            raise ValueError("a search space needs at least one stage")
        bad = [k for k in self.kernels if k < 1 or k % 2 == 0]
        if bad:
            raise ValueError(f"kernel sizes must be odd and positive, got {bad}")
        if not self.expands or min(self.expands) < 1:
            raise ValueError(f"expand ratios must be positive integers, got {list(self.expands)}")
        if not self.resolutions or min(self.resolutions) < 8:
            raise ValueError(f"resolutions must be at least 8 pixels, got {list(self.resolutions)}")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem stride {self.stem_stride} is not supported: choose 1 or 2")
        if self.width_mult <= 0:
            raise ValueError(f"width multiplier {self.width_mult} must be positive")
        if self.num_classes < 2:
            raise ValueError(f"num_classes {self.num_classes} must be at least 2")

    # ---- registry -------------------------------------------------------------------------
    @staticmethod
    def presets() -> list[str]:
        """Names accepted by `SearchSpace.preset`."""
        return sorted(_PRESETS)

    @staticmethod
    def preset(name: str, **overrides: Any) -> SearchSpace:
        """A named search space (`tiny`, `mobilenetv3`, `mobilenetv3-w1.2`); keyword overrides replace fields,
        e.g. `SearchSpace.preset("tiny", num_classes=10)`."""
        try:
            factory = _PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown search-space preset {name!r}{did_you_mean(name, SearchSpace.presets())}: "
                             f"choose from {_fmt_choices(SearchSpace.presets())}") from None
        space = factory()
        return space.replace(**overrides) if overrides else space

    def replace(self, **changes: Any) -> SearchSpace:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self) if f.init})
        if unknown:
            raise ValueError(f"unknown search-space field(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        d["stages"] = [dataclasses.asdict(s) for s in self.stages]
        for key in ("kernels", "expands", "resolutions"):
            d[key] = list(d[key])
        if self.widths == (1.0,):  # a one-width space's JSON reads as it always did
            del d["widths"]
        else:
            d["widths"] = list(self.widths)
        for s in d["stages"]:
            s["depths"] = list(s["depths"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        d = dict(d)
        d["stages"] = tuple(StageSpec(**{**s, "depths": tuple(s["depths"])}) for s in d["stages"])
        if "widths" in d:
            d["widths"] = tuple(d["widths"])
        return cls(**d)

    # ---- derived widths --------------------------------------------------------------------
    def scaled(self, width: int, multiplier: float = 1.0) -> int:
        """Channels of a layer of nominal `width` at the space's `width_mult` times an arch's `multiplier`."""
        return make_divisible(width * self.width_mult * multiplier, 8)

    @property
    def stage_widths(self) -> tuple[int, ...]:
        return self.stage_widths_at(1.0)

    def stage_widths_at(self, multiplier: float) -> tuple[int, ...]:
        """Every stage's channels at an arch's width `multiplier`."""
        return tuple(self.scaled(s.width, multiplier) for s in self.stages)

    @property
    def elastic_width(self) -> bool:
        """Whether archs choose a width (the space offers more than one)."""
        return len(self.widths) > 1

    @property
    def variants(self) -> tuple[tuple[float, int], ...]:
        """Every (width, resolution) pair, width-major: the first index of the per-variant tables (statistics,
        memory, latency pieces); `choice_indices` gives an arch's. With one width it is the resolution index."""
        return tuple((w, r) for w in self.widths for r in self.resolutions)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def max_blocks(self) -> int:
        """Block slots in the supernet (every stage at its largest depth)."""
        return sum(s.max_depth for s in self.stages)

    def choice_indices(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each arch's variant index (n,) (`variants`: width and resolution; the resolution index when the space has
        one width), per-slot kernel and expand indices (n, slots) and active-slot mask: the form the batched
        statistics and memory tables read."""
        r_index = {(w, r): i for i, (w, r) in enumerate(self.variants)}
        k_index = {k: i for i, k in enumerate(self.kernels)}
        e_index = {e: i for i, e in enumerate(self.expands)}
        offsets = np.concatenate([[0], np.cumsum([spec.max_depth for spec in self.stages])])
        n, nslot = len(archs), self.max_blocks
        ri = np.empty(n, dtype=np.int64)
        ki = np.zeros((n, nslot), dtype=np.int64)
        ei = np.zeros((n, nslot), dtype=np.int64)
        active = np.zeros((n, nslot), dtype=bool)
        for row, arch in enumerate(archs):
            ri[row] = r_index[(arch.width, arch.resolution)]
            i = 0
            for s, depth in enumerate(arch.depths):
                base = int(offsets[s])
                for j in range(depth):
                    ki[row, base + j] = k_index[arch.kernels[i]]
                    ei[row, base + j] = e_index[arch.expands[i]]
                    active[row, base + j] = True
                    i += 1
        return ri, ki, ei, active

    @property
    def first_block(self) -> BlockSlot:
        """The fixed first block after the stem (stage -1): depthwise 3×3 without expansion, ReLU, no squeeze-excite;
        it adds its input when the stem and it have the same width."""
        return BlockSlot(-1, 0, self.scaled(self.stem_width), self.scaled(self.first_block_width), 1, "relu", False)

    def first_block_at(self, multiplier: float) -> BlockSlot:
        """`first_block` at an arch's width `multiplier` (its residual is the full width's: the supernet's wiring)."""
        if multiplier == 1.0:
            return self.first_block
        return BlockSlot(-1, 0, self.scaled(self.stem_width, multiplier), self.scaled(self.first_block_width,
                         multiplier), 1, "relu", False, residual=self.first_block.residual)

    @property
    def first_block_residual(self) -> bool:
        """Whether the fixed first block adds its input (`first_block.residual`)."""
        return self.first_block.residual

    def block_slots(self, multiplier: float = 1.0) -> tuple[BlockSlot, ...]:
        """Every elastic block slot of the supernet in order (stage by stage, each at its largest depth), at an
        arch's width `multiplier` (default the full width). Only a stage's first slot strides, and it is always
        active. A slot adds its input at every width where it does at the full width (the supernet's wiring)."""
        full = None if multiplier == 1.0 else self.block_slots()
        slots = []
        cin = self.first_block_at(multiplier).out_channels
        for s, (spec, width) in enumerate(zip(self.stages, self.stage_widths_at(multiplier))):
            for j in range(spec.max_depth):
                residual = None if full is None else full[len(slots)].residual
                slots.append(BlockSlot(s, j, cin, width, spec.stride if j == 0 else 1, spec.act, spec.se, residual))
                cin = width
        return tuple(slots)

    def feature_sizes(self, resolution: int) -> FeatureSizes:
        """Spatial sizes of the feature maps at input `resolution`: after the stem, into and out of every block
        slot (`block_slots()` order), into the head. A slot's sizes do not depend on the arch, because only a
        stage's first slot strides and a stage always runs it."""
        stem = conv_out(resolution, STEM_KERNEL, self.stem_stride)
        hw = conv_out(stem, 3, self.first_block.stride)
        slot_in, slot_out = [], []
        for slot in self.block_slots():
            slot_in.append(hw)
            hw = conv_out(hw, 3, slot.stride)  # a 'same' output size does not depend on the (odd) kernel size
            slot_out.append(hw)
        return FeatureSizes(resolution, stem, tuple(slot_in), tuple(slot_out), hw)

    # ---- validation ------------------------------------------------------------------------
    def _active_slots(self, depths: Sequence[int], values: Sequence[int], name: str) -> Sequence[int]:
        """Accept Once-for-All's per-slot lists (length `max_blocks`) by keeping the active slots."""
        try:
            depths = [int(d) for d in depths]
            values = list(values)
        except (TypeError, ValueError):
            return values
        if len(values) == self.max_blocks and len(values) != sum(depths) and len(depths) == self.num_stages:
            out: list[int] = []
            start = 0
            for spec, d in zip(self.stages, depths):
                out.extend(values[start:start + min(d, spec.max_depth)])
                start += spec.max_depth
            return out
        return values

    def validate(self, arch: Arch) -> Arch:
        """Return `arch` if it belongs to this space, else raise ValueError naming the bad value."""
        if arch.width not in self.widths:
            raise ValueError(f"width {arch.width:g} is not offered by the '{self.name}' space: choose from "
                             f"{_fmt_choices(f'{w:g}' for w in self.widths)}")
        if arch.resolution not in self.resolutions:
            raise ValueError(
                f"resolution {arch.resolution} is not offered by the '{self.name}' space: choose from "
                f"{_fmt_choices(self.resolutions)}")
        if len(arch.depths) != self.num_stages:
            raise ValueError(
                f"arch has {len(arch.depths)} depths but the '{self.name}' space has {self.num_stages} stages")
        for s, (d, spec) in enumerate(zip(arch.depths, self.stages)):
            if d not in spec.depths:
                raise ValueError(f"depth {d} in stage {s} is not offered: choose from {_fmt_choices(spec.depths)}")
        for i, (k, e) in enumerate(zip(arch.kernels, arch.expands)):
            if k not in self.kernels:
                raise ValueError(f"unknown kernel size {k} in block {i}: choose from {_fmt_choices(self.kernels)}")
            if e not in self.expands:
                raise ValueError(f"unknown expand ratio {e} in block {i}: choose from {_fmt_choices(self.expands)}")
        return arch

    def common_resolutions(self, other: SearchSpace) -> SearchSpace | None:
        """This space at the resolutions `other` offers too, when the two differ in nothing else; None when they
        differ otherwise or share no resolution. Predictors made for the same network at different resolutions
        (an imported phone table has 160-224 px, an imported accuracy predictor 128-224 px in steps of 16) search
        together over the resolutions both know."""
        if self == other:
            return self
        shared = tuple(r for r in self.resolutions if r in other.resolutions)
        if not shared or dataclasses.replace(other, resolutions=self.resolutions) != self:
            return None
        return self if shared == self.resolutions else self.replace(resolutions=shared)

    def contains(self, arch: Arch) -> bool:
        try:
            self.validate(arch)
        except ValueError:
            return False
        return True

    def arch(self, resolution: int, depths: Sequence[int], kernels: Sequence[int], expands: Sequence[int],
             width: float = 1.0) -> Arch:
        """A validated arch of this space."""
        return self.validate(Arch(resolution, tuple(depths), tuple(kernels), tuple(expands), width))

    def parse_arch(self, value: str | Mapping[str, Any] | Arch) -> Arch:
        """An arch from inline JSON, a JSON file path, a dict or an Arch; validated against this space."""
        if isinstance(value, Arch):
            return self.validate(value)
        if isinstance(value, Mapping):
            return Arch.from_dict(value, self)
        text = str(value).strip()
        if not text.startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise ValueError(f"arch {text!r} is neither inline JSON nor an existing JSON file")
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"arch is not valid JSON ({exc.msg} at character {exc.pos})") from None
        if isinstance(data, Mapping) and "arch" in data and isinstance(data["arch"], Mapping):
            data = data["arch"]  # a search result or model card holding an arch
        return Arch.from_dict(data, self)

    # ---- special archs -------------------------------------------------------------------
    def largest(self, resolution: int | None = None) -> Arch:
        depths = tuple(s.max_depth for s in self.stages)
        n = sum(depths)
        return Arch(resolution or self.resolutions[-1], depths, (self.kernels[-1],) * n, (self.expands[-1],) * n,
                    self.widths[-1])

    def smallest(self, resolution: int | None = None) -> Arch:
        depths = tuple(s.depths[0] for s in self.stages)
        n = sum(depths)
        return Arch(resolution or self.resolutions[0], depths, (self.kernels[0],) * n, (self.expands[0],) * n,
                    self.widths[0])

    # ---- sampling and variation ------------------------------------------------------------
    def sample(
        self,
        rng: np.random.Generator,
        *,
        kernels: Sequence[int] | None = None,
        expands: Sequence[int] | None = None,
        depths: Sequence[Sequence[int]] | None = None,
        resolutions: Sequence[int] | None = None,
        widths: Sequence[float] | None = None,
    ) -> Arch:
        """A uniformly random arch; the keyword choices restrict it (progressive shrinking uses them). The width is
        drawn last, and only where there is a choice, so a one-width space draws what it always drew."""
        ks = tuple(kernels or self.kernels)
        es = tuple(expands or self.expands)
        rs = tuple(resolutions or self.resolutions)
        ds = [tuple(depths[i]) if depths else spec.depths for i, spec in enumerate(self.stages)]
        depth = tuple(int(rng.choice(d)) for d in ds)
        n = sum(depth)
        resolution = int(rng.choice(rs))
        kernel_choice = tuple(int(k) for k in rng.choice(ks, size=n))
        expand_choice = tuple(int(e) for e in rng.choice(es, size=n))
        ws = tuple(widths or self.widths)
        width = float(rng.choice(ws)) if len(ws) > 1 else ws[0]
        return Arch(resolution, depth, kernel_choice, expand_choice, width)

    def sample_many(self, rng: np.random.Generator, n: int, *, unique: bool = True) -> list[Arch]:
        """`n` random archs (distinct when `unique`, as far as the space allows: a space of fewer archs gives each
        once, in the order first drawn, without drawing on to the attempts' limit)."""
        out: list[Arch] = []
        seen: set[Arch] = set()
        attempts, limit = 0, n * 50
        if unique:
            n = min(n, self.size())
        while len(out) < n and attempts < limit:
            attempts += 1
            a = self.sample(rng)
            if unique and a in seen:
                continue
            seen.add(a)
            out.append(a)
        return out

    def mutate(self, arch: Arch, rng: np.random.Generator, prob: float = 0.1) -> Arch:
        """Resample each gene (resolution, each stage depth, each block's kernel and expand) with probability `prob`.

        Kernels and expands are kept per block slot, so growing a stage re-activates fresh random blocks
        at its end and shrinking it drops the last blocks.
        """
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"mutation probability {prob} must be between 0 and 1")
        resolution = arch.resolution
        if rng.random() < prob:
            resolution = int(rng.choice(self.resolutions))
        new_depths, new_kernels, new_expands = [], [], []
        for s, spec in enumerate(self.stages):
            blocks = arch.stage_blocks(s)
            depth = arch.depths[s]
            if rng.random() < prob:
                depth = int(rng.choice(spec.depths))
            for j in range(depth):
                if j < len(blocks):
                    k, e = blocks[j]
                else:
                    k, e = int(rng.choice(self.kernels)), int(rng.choice(self.expands))
                if rng.random() < prob:
                    k = int(rng.choice(self.kernels))
                if rng.random() < prob:
                    e = int(rng.choice(self.expands))
                new_kernels.append(k)
                new_expands.append(e)
            new_depths.append(depth)
        width = arch.width
        if self.elastic_width and rng.random() < prob:
            width = float(rng.choice(self.widths))
        return Arch(resolution, tuple(new_depths), tuple(new_kernels), tuple(new_expands), width)

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Uniform crossover: every gene comes from either parent with equal chance.

        A block that only one parent has (its stage is deeper there) comes from that parent.
        """
        resolution = a.resolution if rng.random() < 0.5 else b.resolution
        depths, kernels, expands = [], [], []
        for s in range(self.num_stages):
            ba, bb = a.stage_blocks(s), b.stage_blocks(s)
            depth = a.depths[s] if rng.random() < 0.5 else b.depths[s]
            for j in range(depth):
                if j < len(ba) and j < len(bb):
                    k = ba[j][0] if rng.random() < 0.5 else bb[j][0]
                    e = ba[j][1] if rng.random() < 0.5 else bb[j][1]
                else:
                    k, e = ba[j] if j < len(ba) else bb[j]
                kernels.append(k)
                expands.append(e)
            depths.append(depth)
        width = a.width
        if self.elastic_width and rng.random() >= 0.5:
            width = b.width
        return Arch(resolution, tuple(depths), tuple(kernels), tuple(expands), width)

    # ---- encoding and size -----------------------------------------------------------------
    @property
    def encoding_size(self) -> int:
        width = len(self.widths) if self.elastic_width else 0
        return len(self.resolutions) + self.max_blocks * (len(self.kernels) + len(self.expands)) + width

    def encode(self, archs: Arch | Sequence[Arch]) -> np.ndarray:
        """One-hot features, shape (n, encoding_size), float32: resolution, then per block slot its kernel
        and expand ratio (all zeros for a slot the arch leaves inactive), as Once-for-All's predictor; then, where
        the space offers several widths, the width."""
        if isinstance(archs, Arch):
            archs = [archs]
        nk, ne = len(self.kernels), len(self.expands)
        slot = nk + ne
        nres = len(self.resolutions)
        out = np.zeros((len(archs), self.encoding_size), dtype=np.float32)
        r_index = {r: i for i, r in enumerate(self.resolutions)}
        k_index = {k: i for i, k in enumerate(self.kernels)}
        e_index = {e: i for i, e in enumerate(self.expands)}
        offsets = np.cumsum([0] + [s.max_depth for s in self.stages])
        w_base = nres + self.max_blocks * slot
        w_index = {w: i for i, w in enumerate(self.widths)}
        for row, arch in enumerate(archs):
            out[row, r_index[arch.resolution]] = 1.0
            if self.elastic_width:
                out[row, w_base + w_index[arch.width]] = 1.0
            i = 0
            for s, depth in enumerate(arch.depths):
                for j in range(depth):
                    base = nres + (offsets[s] + j) * slot
                    out[row, base + k_index[arch.kernels[i]]] = 1.0
                    out[row, base + nk + e_index[arch.expands[i]]] = 1.0
                    i += 1
        return out

    def size(self, per_resolution: bool = False) -> int:
        """Number of distinct subnets (per resolution when `per_resolution`), every width counted."""
        per_block = len(self.kernels) * len(self.expands)
        total = 1
        for spec in self.stages:
            total *= sum(per_block ** d for d in spec.depths)
        total *= len(self.widths)
        return total if per_resolution else total * len(self.resolutions)

    def describe(self) -> str:
        lines = [f"search space '{self.name}': {self.num_stages} stages, {self.size():.3g} subnets "
                 f"({self.size(per_resolution=True):.3g} per resolution)",
                 f"  kernels {list(self.kernels)}, expand ratios {list(self.expands)}, "
                 f"resolutions {list(self.resolutions)}, width x{self.width_mult}"
                 + (f" (elastic: x{', x'.join(f'{w:g}' for w in self.widths)})" if self.elastic_width else "")
                 + f", {self.num_classes} classes"]
        for i, (spec, w) in enumerate(zip(self.stages, self.stage_widths)):
            lines.append(f"  stage {i}: width {w}, stride {spec.stride}, {spec.act}, "
                         f"SE {'on' if spec.se else 'off'}, depths {list(spec.depths)}")
        return "\n".join(lines)


@register_preset("mobilenetv3")
def _mobilenetv3() -> SearchSpace:
    """Once-for-All's ImageNet MobileNetV3 space (OFA-MBv3, width 1.0)."""
    return SearchSpace(
        name="mobilenetv3",
        stages=(
            StageSpec(24, 2, "relu", False, (2, 3, 4)),
            StageSpec(40, 2, "relu", True, (2, 3, 4)),
            StageSpec(80, 2, "hswish", False, (2, 3, 4)),
            StageSpec(112, 1, "hswish", True, (2, 3, 4)),
            StageSpec(160, 2, "hswish", True, (2, 3, 4)),
        ),
        kernels=(3, 5, 7),
        expands=(3, 4, 6),
        resolutions=tuple(range(128, 225, 4)),
        stem_width=16,
        stem_stride=2,
        first_block_width=16,
        final_expand_width=960,
        feature_width=1280,
        num_classes=1000,
        dropout=0.1,
    )


@register_preset("mobilenetv3-w1.2")
def _mobilenetv3_w12() -> SearchSpace:
    """Once-for-All's ImageNet MobileNetV3 space at width 1.2 (OFA-MBv3 w1.2, the one its tutorial searches)."""
    return _mobilenetv3().replace(name="mobilenetv3-w1.2", width_mult=1.2)


@register_preset("tiny")
def _tiny() -> SearchSpace:
    """A small space for 24-32 pixel inputs (digits, shapes, CIFAR): 3 downsamplings, narrow stages."""
    return SearchSpace(
        name="tiny",
        stages=(
            StageSpec(24, 2, "relu", False, (1, 2, 3)),
            StageSpec(32, 2, "hswish", True, (1, 2, 3)),
            StageSpec(48, 1, "hswish", True, (1, 2, 3)),
            StageSpec(64, 2, "hswish", True, (1, 2, 3)),
        ),
        kernels=(3, 5, 7),
        expands=(3, 4, 6),
        resolutions=(24, 28, 32),
        stem_width=16,
        stem_stride=1,
        first_block_width=16,
        final_expand_width=192,
        feature_width=256,
        num_classes=10,
        dropout=0.1,
    )


@register_preset("mcunet")
def _mcunet() -> SearchSpace:
    """A microcontroller space after MCUNet's TinyNAS (Lin et al. 2020): MobileNetV2-style inverted residual
    blocks (ReLU, no squeeze-excite, so every block is spatially local and can run patch by patch), kernel
    3/5/7, expand 3/4/6, 1-3 blocks per stage, inputs of 48-224 px, and the width multiplier a
    searchable gene: 0.35, 0.5, 0.75 or 1.0, each the first channels of the supernet's weights. The `mcunet-w0.5`
    preset is the older fixed-width space (width 0.5 only). See docs/decisions.md."""
    return SearchSpace(
        name="mcunet",
        stages=(
            StageSpec(24, 2, "relu", False, (1, 2, 3)),
            StageSpec(40, 2, "relu", False, (1, 2, 3)),
            StageSpec(80, 2, "relu", False, (1, 2, 3)),
            StageSpec(96, 1, "relu", False, (1, 2, 3)),
            StageSpec(192, 2, "relu", False, (1, 2, 3)),
        ),
        kernels=(3, 5, 7),
        expands=(3, 4, 6),
        resolutions=tuple(range(48, 225, 16)),
        widths=(0.35, 0.5, 0.75, 1.0),
        stem_width=16,
        stem_stride=2,
        first_block_width=16,
        final_expand_width=480,
        feature_width=640,
        num_classes=1000,
        dropout=0.1,
    )


@register_preset("mcunet-w0.5")
def _mcunet_w05() -> SearchSpace:
    """The `mcunet` space at width 0.5 (the smaller boards: nRF52840, RP2040)."""
    return _mcunet().replace(name="mcunet-w0.5", width_mult=0.5, widths=(1.0,))


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Spatial output size of a 'same'-padded convolution (padding kernel // 2)."""
    pad = kernel // 2
    return (size + 2 * pad - kernel) // stride + 1
