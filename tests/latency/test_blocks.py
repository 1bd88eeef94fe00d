"""Tests of edgenas.latency.blocks and models: distinct pieces, arch → piece lookup, standalone piece models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from latency_helpers import MICRO

from edgenas.cost import stats_table
from edgenas.latency.blocks import BlockIndex
from edgenas.latency.models import PieceModel, arch_description, build_model, piece_description
from edgenas.space import SearchSpace


@pytest.mark.parametrize("name", ["tiny", "mobilenetv3"])
def test_piece_macs_add_up_to_the_arch_macs(name):
    space = SearchSpace.preset(name)
    index = BlockIndex(space)
    archs = space.sample_many(np.random.default_rng(0), 200) + [space.smallest(), space.largest()]
    costs = index.group_sums(index.analytic_costs(), archs)  # (n, groups, features)
    macs = (costs[:, :, 0] + costs[:, :, 1]).sum(axis=1) * 1e6
    np.testing.assert_allclose(macs, stats_table(space).compute(archs)["macs"], rtol=1e-9)


def test_pieces_are_distinct_and_shared_across_slots():
    space = SearchSpace.preset("tiny")
    index = BlockIndex(space)
    assert len(set(index.keys)) == len(index)
    # The non-first blocks of a stage at one resolution share one piece per (kernel, expand).
    per_config = len(space.resolutions) * len(space.kernels) * len(space.expands)
    kinds = [p.kind for p in index.pieces]
    assert kinds.count("block") <= per_config * space.num_stages * 2 < per_config * space.max_blocks
    assert kinds.count("stem") == len(space.resolutions)


def test_group_sums_match_a_loop_over_pieces():
    index = BlockIndex(MICRO)
    rng = np.random.default_rng(1)
    values = rng.uniform(0.1, 1.0, len(index))
    archs = MICRO.sample_many(rng, 50)
    sums = index.group_sums(values, archs).sum(axis=1)
    keys = index.keys
    expected = [sum(values[keys.index(p.key)] for p in index.pieces_of(a)) for a in archs]
    np.testing.assert_allclose(sums, expected)
    assert index.block_counts(index.lookup(archs)).tolist() == [sum(a.depths) for a in archs]


@torch.no_grad()
def test_piece_models_chain_into_the_extracted_subnet():
    """The pieces of an arch, run one after another, have exactly the subnet's parameters and shapes."""
    index = BlockIndex(MICRO)
    for arch in MICRO.sample_many(np.random.default_rng(2), 4):
        pieces = index.pieces_of(arch)
        x = PieceModel(pieces[0]).example_input()
        for piece in pieces:
            assert x.shape[1:] == (piece.cin, piece.hw, piece.hw)
            x = PieceModel(piece).eval()(x)
        assert x.shape == (1, MICRO.num_classes)
        subnet = build_model(arch_description(MICRO, arch))
        n_pieces = sum(sum(p.numel() for p in PieceModel(piece).parameters()) for piece in pieces)
        assert n_pieces == sum(p.numel() for p in subnet.parameters())


def test_models_are_deterministic_per_description():
    piece = BlockIndex(MICRO).pieces[3]
    a, b = build_model(piece_description(piece)), build_model(piece_description(piece))
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
