"""Tests for edgenas.cost: analytic MACs, params, peak activation memory and flash."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgenas import SearchSpace, Supernet
from edgenas.cost import arch_stats, stats_table
from edgenas.space import Arch, StageSpec


def _hand_space() -> SearchSpace:
    return SearchSpace(
        name="hand", stages=(StageSpec(8, 1, "relu", False, (1,)),), kernels=(3,), expands=(2,),
        resolutions=(8,), stem_width=8, stem_stride=1, first_block_width=8, final_expand_width=16,
        feature_width=16, num_classes=2, in_channels=1,
    )


def test_hand_computed_small_network():
    """1×8×8 input, stem 8 ch, first block (residual), one block expand 2 (16 hidden), head 16/16, 2 classes.

    Values per tensor: input 64; 8-channel maps 512; 16-channel maps 1024.
    Peak: inside the expand-2 block's depthwise conv the block input (512, kept for the skip),
    the expanded map (1024) and the depthwise output (1024) are alive: 2560 values.
    """
    space = _hand_space()
    arch = Arch(8, (1,), (3,), (2,))
    s = arch_stats(space, arch)
    macs = {
        "stem": 64 * 8 * 9, "first.dw": 64 * 8 * 9, "first.project": 64 * 8 * 8,
        "expand": 64 * 16 * 8, "dw": 64 * 16 * 9, "project": 64 * 8 * 16,
        "final_expand": 64 * 16 * 8, "feature_mix": 16 * 16, "classifier": 16 * 2,
    }
    assert s.macs == sum(macs.values()) == 47392
    assert s.peak_activation_int8 == 2560
    assert s.peak_activation_fp32 == 4 * 2560
    # Deployed weights (BN folded into biases): conv weights + one bias per BN channel.
    weights = 8 * 9 + 8 * 9 + 8 * 8 + 16 * 8 + 16 * 9 + 8 * 16 + 16 * 8 + 16 * 16 + 16 * 2
    biases = 8 + 8 + 8 + 16 + 16 + 8 + 16 + 2  # feature mix has neither BN nor bias
    assert s.flash_int8 == weights + 4 * biases
    assert s.flash_fp32 == 4 * (weights + biases)
    model = Supernet(space).extract(arch)
    assert s.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", SearchSpace.presets())
def test_macs_agree_with_torch_flop_counter(name):
    space = SearchSpace.preset(name)
    net = Supernet(space).eval()
    rng = np.random.default_rng(7)
    for arch in space.sample_many(rng, 20):
        model = net.extract(arch)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(model.example_input())
        counted = counter.get_total_flops() / 2
        ours = arch_stats(space, arch).macs
        assert abs(ours - counted) / counted < 0.01, (str(arch), ours, counted)
        assert arch_stats(space, arch).params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", SearchSpace.presets())
def test_stats_table_matches_single_arch_stats(name):
    space = SearchSpace.preset(name)
    archs = space.sample_many(np.random.default_rng(11), 40) + [space.largest(), space.smallest()]
    table = stats_table(space).compute(archs)
    for i, arch in enumerate(archs):
        single = arch_stats(space, arch).to_dict()
        assert {k: int(v[i]) for k, v in table.items()} == single


def test_bigger_archs_cost_more():
    space = SearchSpace.preset("tiny")
    big, small = arch_stats(space, space.largest()), arch_stats(space, space.smallest())
    for field in ("params", "macs", "peak_activation_int8", "flash_int8"):
        assert getattr(big, field) > getattr(small, field)
    assert stats_table(space) is stats_table(space)  # cached per space
