"""Tests for edgenas.space: presets, validation, sampling and variation, encoding, size."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgenas.space import Arch, SearchSpace, StageSpec

PRESETS = SearchSpace.presets()
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def test_the_w12_preset_is_once_for_alls_widths():
    """Once-for-All's w1.2 supernet: every width x1.2, rounded to multiples of 8 (the stem's 16 becomes 24)."""
    space = SearchSpace.preset("mobilenetv3-w1.2")
    assert space.stage_widths == (32, 48, 96, 136, 192)
    assert space.first_block.in_channels == 24 and space.first_block.residual
    assert (space.scaled(space.final_expand_width), space.scaled(space.feature_width)) == (1152, 1536)
    assert space.resolutions == SearchSpace.preset("mobilenetv3").resolutions


def test_common_resolutions_of_spaces_that_differ_only_there():
    space = SearchSpace.preset("mobilenetv3-w1.2")
    a, b = space.replace(resolutions=(128, 160, 192)), space.replace(resolutions=(160, 176, 192))
    assert a.common_resolutions(b).resolutions == (160, 192)
    assert a.common_resolutions(a) is a
    assert a.common_resolutions(space.replace(resolutions=(224,))) is None
    assert a.common_resolutions(SearchSpace.preset("mobilenetv3").replace(resolutions=(160,))) is None


def test_presets_are_registered():
    assert PRESETS == ["mcunet", "mcunet-w0.5", "mobilenetv3", "mobilenetv3-w1.2", "tiny"]
    with pytest.raises(ValueError, match="unknown search-space preset 'resnet': choose from mcunet, mcunet-w0.5, "
                                         "mobilenetv3, mobilenetv3-w1.2, tiny"):
        SearchSpace.preset("resnet")


def test_mobilenetv3_is_once_for_all_space():
    space = SearchSpace.preset("mobilenetv3")
    assert space.stage_widths == (24, 40, 80, 112, 160)
    assert [s.depths for s in space.stages] == [(2, 3, 4)] * 5
    assert space.resolutions == tuple(range(128, 225, 4))
    # Once-for-All: ((3*3)^2 + (3*3)^3 + (3*3)^4)^5 ≈ 2.2e19 subnets per resolution.
    per_res = space.size(per_resolution=True)
    assert per_res == (9**2 + 9**3 + 9**4) ** 5
    assert 2.0e19 < per_res < 2.3e19
    assert space.size() == per_res * 25


def test_tiny_preset_is_small_and_downsamples_less():
    tiny, big = SearchSpace.preset("tiny"), SearchSpace.preset("mobilenetv3")
    downsamples = lambda s: (s.stem_stride == 2) + sum(st.stride == 2 for st in s.stages)  # noqa: E731
    assert downsamples(tiny) < downsamples(big)
    assert max(tiny.resolutions) <= 32
    assert max(tiny.stage_widths) < max(big.stage_widths)


def test_preset_overrides_and_width_multiplier():
    space = SearchSpace.preset("tiny", num_classes=3, width_mult=0.5)
    assert space.num_classes == 3
    assert all(w % 8 == 0 for w in space.stage_widths)
    assert space.stage_widths[-1] == 32
    with pytest.raises(ValueError, match="unknown search-space field"):
        SearchSpace.preset("tiny", colour="red")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(resolution=30), "resolution 30 is not offered by the 'tiny' space: choose from 24, 28, 32"),
        (dict(kernels_at=(0, 4)), "unknown kernel size 4 in block 0: choose from 3, 5, 7"),
        (dict(expands_at=(2, 5)), "unknown expand ratio 5 in block 2: choose from 3, 4, 6"),
        (dict(depth_at=(1, 4)), "depth 4 in stage 1 is not offered: choose from 1, 2, 3"),
    ],
)
def test_validate_names_bad_value_and_choices(change, message):
    space = SearchSpace.preset("tiny")
    d = space.largest().to_dict()
    if "resolution" in change:
        d["resolution"] = change["resolution"]
    if "kernels_at" in change:
        i, v = change["kernels_at"]
        d["kernels"][i] = v
    if "expands_at" in change:
        i, v = change["expands_at"]
        d["expands"][i] = v
    if "depth_at" in change:
        s, v = change["depth_at"]
        d["depths"][s] = v
        d["kernels"] += [3] * (v - 3)
        d["expands"] += [3] * (v - 3)
    with pytest.raises(ValueError) as err:
        Arch.from_dict(d, space)
    assert str(err.value) == message


def test_arch_structure_errors():
    with pytest.raises(ValueError, match="give one kernel and one expand ratio per block"):
        Arch(32, (1, 1), (3,), (3, 3))
    with pytest.raises(ValueError, match="must hold integers"):
        Arch(32, (1,), ("3",), (3,))
    with pytest.raises(ValueError, match="missing depths"):
        Arch.from_dict({"resolution": 32, "kernels": [], "expands": []})
    with pytest.raises(ValueError, match="unknown keys width_mult"):
        Arch.from_dict({"resolution": 32, "depths": [], "kernels": [], "expands": [], "width_mult": 1})
    with pytest.raises(ValueError, match="width 0.5 is not offered by the 'tiny' space"):
        Arch.from_dict({"resolution": 32, "depths": [1] * 4, "kernels": [3] * 4, "expands": [3] * 4, "width": 0.5},
                       SearchSpace.preset("tiny"))
    space = SearchSpace.preset("tiny")
    with pytest.raises(ValueError, match="has 2 depths but the 'tiny' space has 4 stages"):
        space.validate(Arch(32, (1, 1), (3, 3), (3, 3)))


def test_arch_is_frozen_and_hashable():
    arch = SearchSpace.preset("tiny").largest()
    with pytest.raises(AttributeError):
        arch.resolution = 24  # type: ignore[misc]
    assert len({arch, Arch.from_dict(arch.to_dict())}) == 1


def test_once_for_all_slot_layout_is_accepted():
    """OFA writes a kernel and expand ratio for every block slot; only the active ones are kept."""
    space = SearchSpace.preset("mobilenetv3")
    ofa = {"resolution": 160, "depths": [2, 3, 4, 2, 3], "kernels": [3, 5, 7, 3] * 5, "expands": [6, 4, 3, 3] * 5}
    arch = Arch.from_dict(ofa, space)
    assert arch.depths == (2, 3, 4, 2, 3)
    assert arch.stage_blocks(0) == [(3, 6), (5, 4)]
    assert arch.stage_blocks(1) == [(3, 6), (5, 4), (7, 3)]  # slots 4..6 of OFA's list
    assert len(arch.kernels) == 14


def test_parse_arch_from_inline_json_file_and_result(tmp_path):
    space = SearchSpace.preset("tiny")
    arch = space.smallest()
    assert space.parse_arch(arch.to_json()) == arch
    path = tmp_path / "arch.json"
    path.write_text(json.dumps({"arch": arch.to_dict(), "accuracy": 0.9}))
    assert space.parse_arch(str(path)) == arch
    with pytest.raises(ValueError, match="neither inline JSON nor an existing JSON file"):
        space.parse_arch("nope.json")
    with pytest.raises(ValueError, match="not valid JSON"):
        space.parse_arch("{resolution: 3")


@pytest.mark.parametrize("name", PRESETS)
@settings(max_examples=60, deadline=None)
@given(seed=seeds)
def test_sample_mutate_crossover_are_valid(name, seed):
    space = SearchSpace.preset(name)
    rng = np.random.default_rng(seed)
    a, b = space.sample(rng), space.sample(rng)
    for arch in (a, b, space.mutate(a, rng, 0.5), space.mutate(a, rng, 1.0), space.crossover(a, b, rng)):
        assert space.validate(arch) is arch


@pytest.mark.parametrize("name", PRESETS)
@settings(max_examples=60, deadline=None)
@given(seed=seeds)
def test_round_trips_are_identity(name, seed):
    space = SearchSpace.preset(name)
    arch = space.sample(np.random.default_rng(seed))
    assert Arch.from_dict(arch.to_dict(), space) == arch
    assert Arch.from_json(json.dumps(arch.to_dict())) == arch
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space


@pytest.mark.parametrize("name", PRESETS)
@settings(max_examples=30, deadline=None)
@given(seed=seeds)
def test_same_seed_gives_same_archs(name, seed):
    space = SearchSpace.preset(name)

    def run(s):
        rng = np.random.default_rng(s)
        a, b = space.sample(rng), space.sample(rng)
        return [a, b, space.mutate(a, rng, 0.3), space.crossover(a, b, rng)]

    assert run(seed) == run(seed)


def test_mutate_probability_extremes():
    space = SearchSpace.preset("mobilenetv3")
    rng = np.random.default_rng(0)
    arch = space.sample(rng)
    assert space.mutate(arch, rng, 0.0) == arch
    changed = sum(space.mutate(arch, rng, 1.0) != arch for _ in range(20))
    assert changed >= 19
    with pytest.raises(ValueError, match="between 0 and 1"):
        space.mutate(arch, rng, 1.5)


def test_crossover_takes_genes_from_parents_only():
    space = SearchSpace.preset("tiny")
    a, b = space.largest(), space.smallest()
    rng = np.random.default_rng(3)
    for _ in range(50):
        child = space.crossover(a, b, rng)
        assert child.resolution in (a.resolution, b.resolution)
        assert all(d in (1, 3) for d in child.depths)
        assert set(child.kernels) <= {3, 7} and set(child.expands) <= {3, 6}


def test_sampling_covers_every_choice():
    space = SearchSpace.preset("tiny")
    archs = space.sample_many(np.random.default_rng(1), 300)
    assert len(set(archs)) == 300
    assert {a.resolution for a in archs} == set(space.resolutions)
    assert set(np.concatenate([a.kernels for a in archs]).tolist()) == set(space.kernels)
    assert {d for a in archs for d in a.depths} == {1, 2, 3}


def test_encode_is_batched_one_hot():
    space = SearchSpace.preset("mobilenetv3")
    archs = space.sample_many(np.random.default_rng(2), 16)
    x = space.encode(archs)
    assert x.shape == (16, space.encoding_size) == (16, 25 + 20 * 6)
    assert x.dtype == np.float32
    for row, arch in zip(x, archs):
        assert row[:25].sum() == 1
        assert row.sum() == 1 + 2 * sum(arch.depths)  # one kernel and one expand bit per active block
    assert not np.array_equal(x[0], x[1])
    np.testing.assert_array_equal(space.encode(archs[3]), x[3:4])


def test_stage_spec_validation():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        StageSpec(16, 1, "gelu")
    with pytest.raises(ValueError, match="stride 3 is not supported"):
        StageSpec(16, 3)
    with pytest.raises(ValueError, match="kernel sizes must be odd"):
        SearchSpace.preset("tiny", kernels=(3, 4))


def test_a_space_smaller_than_the_sample_gives_each_arch_once_in_the_order_first_drawn():
    """Asking 2,000 distinct archs of a space of 800 gives all 800, in the order a stream of draws first shows them
    (the same list as drawing on to the attempts' limit, at a fraction of the draws)."""
    from latency_helpers import MICRO as space

    got = space.sample_many(np.random.default_rng(5), 2000)
    rng, first_seen = np.random.default_rng(5), {}
    for _ in range(len(got) * 20):
        first_seen.setdefault(space.sample(rng), None)
    assert space.size() == 800 and got == list(first_seen)
