"""Tests for edgenas.genome: genome rows agree with Arch, space.encode and the statistics table."""

import numpy as np
import pytest

from edgenas.cost import stats_table
from edgenas.genome import ArchBatch, GenomeCodec
from edgenas.space import SearchSpace


@pytest.fixture(params=["tiny", "mobilenetv3"])
def codec(request):
    return GenomeCodec(SearchSpace.preset(request.param))


def test_round_trip_and_canonical(codec):
    rng = np.random.default_rng(0)
    genomes = codec.sample(rng, 300)
    archs = codec.to_archs(genomes)
    for arch in archs:
        codec.space.validate(arch)
    back = codec.from_archs(archs)
    assert np.array_equal(back, codec.canonical(genomes))
    assert codec.to_archs(back) == archs
    keys = codec.keys(genomes)
    assert len(set(keys.tolist())) == len(set(archs))


def test_smallest_and_largest(codec):
    assert codec.to_arch(codec.smallest()[0]) == codec.space.smallest()
    assert codec.to_arch(codec.largest()[0]) == codec.space.largest()


def test_encode_and_stats_match_the_space(codec):
    genomes = codec.sample(np.random.default_rng(1), 200)
    archs = codec.to_archs(genomes)
    assert np.array_equal(codec.encode(genomes), codec.space.encode(archs))
    expected = stats_table(codec.space).compute(archs)
    got = codec.stats(genomes)
    for name, values in expected.items():
        assert np.array_equal(got[name], values), name


def test_sampling_covers_every_choice_uniformly(codec):
    genomes = codec.sample(np.random.default_rng(2), 6000)
    for col, card in enumerate(codec.cardinality):
        counts = np.bincount(genomes[:, col], minlength=card)
        assert len(counts) == card
        assert counts.min() > 0.7 * 6000 / card


def test_mutation_rate_and_crossover_mix(codec):
    rng = np.random.default_rng(3)
    parents = codec.sample(rng, 2000)
    assert np.array_equal(codec.mutate(parents, rng, 0.0), parents)
    mutated = codec.mutate(parents, rng, 0.2)
    changed = (mutated != parents).mean()
    # a resampled gene keeps its value with probability 1/cardinality
    expected = 0.2 * np.mean(1 - 1 / codec.cardinality)
    assert abs(changed - expected) < 0.01
    other = codec.sample(rng, 2000)
    child = codec.crossover(parents, other, rng)
    assert np.all((child == parents) | (child == other))
    assert 0.4 < ((child == parents) & (child != other)).sum() / (parents != other).sum() < 0.6
    with pytest.raises(ValueError, match="mutation probability 1.5"):
        codec.mutate(parents, rng, 1.5)


def test_arch_batch_is_a_sequence_of_archs(codec):
    genomes = codec.sample(np.random.default_rng(4), 5)
    batch = ArchBatch(codec, genomes)
    assert len(batch) == 5
    assert list(batch) == codec.to_archs(genomes)
    assert batch[2] == codec.to_arch(genomes[2])
    assert np.array_equal(batch.encode(), codec.space.encode(list(batch)))
