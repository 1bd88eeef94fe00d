"""Elastic width (issue 44): the `mcunet` space's width multiplier is a gene of the arch, run by the supernet as the
first channels of its weights, and every consumer honours it: the extracted model, the statistics and memory tables,
the genome, the encoding, the latency pieces, the int8 file TFLite Micro runs (whole and patch by patch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgenas.cost import arch_stats, stats_table
from edgenas.genome import GenomeCodec
from edgenas.latency.blocks import BlockIndex
from edgenas.micro_memory import MemoryTable, predict
from edgenas.space import Arch, SearchSpace
from edgenas.supernet import Supernet


@pytest.fixture(scope="module")
def small():
    return SearchSpace.preset("mcunet", num_classes=10).replace(resolutions=(48, 64))


def test_width_is_a_gene_of_the_mcunet_space_and_absent_from_one_width_spaces(small):
    assert small.widths == (0.35, 0.5, 0.75, 1.0) and small.elastic_width
    rng = np.random.default_rng(0)
    archs = small.sample_many(rng, 200)
    assert {a.width for a in archs} == set(small.widths)
    narrow = next(a for a in archs if a.width == 0.35)
    assert Arch.from_dict(narrow.to_dict(), small) == narrow and narrow.to_dict()["width"] == 0.35
    assert "w0.35|" in str(narrow)
    assert small.mutate(narrow, rng, 1.0).width in small.widths
    assert SearchSpace.from_dict(small.to_dict()) == small
    for name in ("tiny", "mobilenetv3", "mcunet-w0.5"):  # one width: archs, JSON and encoding as before
        space = SearchSpace.preset(name)
        assert not space.elastic_width and "widths" not in space.to_dict()
        assert "width" not in space.sample(rng).to_dict()
        assert space.encoding_size == len(space.resolutions) + space.max_blocks * 6
    assert small.encoding_size == len(small.resolutions) + small.max_blocks * 6 + 4
    assert small.stage_widths_at(0.35) == (8, 16, 32, 32, 64) and small.first_block_at(0.35).out_channels == 8
    assert all(s.residual == f.residual for s, f in zip(small.block_slots(0.35), small.block_slots()))
    with pytest.raises(ValueError, match="must be multipliers in"):
        small.replace(widths=(0.5, 0.75))


def test_the_supernet_runs_a_width_as_the_extracted_model_does(small):
    torch.manual_seed(0)
    net = Supernet(small).eval()
    archs = [a for a in small.sample_many(np.random.default_rng(1), 12)] + [small.smallest(), small.largest()]
    for arch in archs:
        x = torch.randn(2, 3, arch.resolution, arch.resolution)
        with torch.no_grad():
            want = net.set_active(arch)(x)
            static = net.extract(arch).eval()
            got = static(x)
        assert torch.allclose(want, got, atol=1e-5), arch
        assert static.stem.conv.out_channels == small.first_block_at(arch.width).in_channels
        assert sum(p.numel() for p in static.parameters()) == arch_stats(small, arch).params
        assert net.active_arch == arch
    # narrower widths are smaller networks, and a step at one width trains the shared first channels
    for field in ("params", "macs"):
        sizes = [getattr(arch_stats(small, Arch(48, (1,) * 5, (3,) * 5, (3,) * 5, w)), field) for w in small.widths]
        assert all(a < b for a, b in zip(sizes, sizes[1:])), (field, sizes)
    net.train().set_active(small.smallest())
    before = net.stem.conv.weight.detach().clone()
    net(torch.randn(4, 3, 48, 48)).sum().backward()
    grad = net.stem.conv.weight.grad
    narrow = small.first_block_at(0.35).in_channels
    assert grad[:narrow].abs().sum() > 0 and grad[narrow:].abs().sum() == 0
    assert torch.equal(before, net.stem.conv.weight)


def test_tables_genome_and_latency_pieces_agree_with_the_per_arch_figures(small):
    archs = small.sample_many(np.random.default_rng(2), 40)
    stats = stats_table(small).compute(archs, memory=True)
    assert list(stats["params"]) == [arch_stats(small, a).params for a in archs]
    assert list(stats["macs"]) == [arch_stats(small, a).macs for a in archs]
    exact = [predict(small, a) for a in archs]
    table = MemoryTable(small, check_archs=0).compute(archs)
    assert list(table["arena"]) == [p.arena for p in exact] and list(table["flash"]) == [p.flash for p in exact]
    codec = GenomeCodec(small)
    genomes = codec.from_archs(archs)
    assert codec.to_archs(genomes) == archs
    assert np.array_equal(codec.encode(genomes), small.encode(archs))
    assert np.array_equal(codec.stats(genomes)["macs"], stats["macs"])
    index = BlockIndex(small)
    one = archs[0]
    same = Arch(one.resolution, one.depths, one.kernels, one.expands, 1.0 if one.width != 1.0 else 0.5)
    assert index.pieces_of(one) != index.pieces_of(same)  # a width is other pieces, with other costs


def test_a_narrow_subnet_int8_file_runs_in_tflite_micro_as_predicted_whole_and_in_patches(small, tmp_path):
    pytest.importorskip("tflite_micro")
    from mcu_helpers import int8_file

    from edgenas.export.micro import _runtime, arena_split
    from edgenas.export.patches import patch_tflite
    from edgenas.micro_memory import graph_prediction, micro_graph, predict_patched

    arch = small.arch(64, (1, 2, 1, 1, 1), (3, 5, 3, 7, 3, 3), (6, 4, 3, 3, 3, 4), width=0.5)
    whole = int8_file(small, arch)
    runtime = _runtime()
    head, tail = arena_split(runtime, whole, 4 << 20, None)
    assert abs(graph_prediction(micro_graph(small, arch, int8_io=True)).arena / (head + tail) - 1) < 0.10
    choice = predict_patched(small, arch, 2)
    patched = patch_tflite(whole, choice.ops, 2)
    head, tail = arena_split(runtime, patched, 4 << 20, None)
    assert abs(choice.prediction.arena / (head + tail) - 1) < 0.10


def test_export_for_a_board_ships_a_narrow_subnet_patch_by_patch(tmp_path, capsys):
    pytest.importorskip("tflite_micro")
    import json

    from mcu_helpers import mcunet_checkpoint

    from edgenas.cli import main

    space = SearchSpace.preset("mcunet", num_classes=10).replace(resolutions=(64,))
    ckpt = mcunet_checkpoint(tmp_path, space, dataset="shapes:samples=200")
    arch = space.arch(64, (1, 1, 1, 1, 1), (3, 5, 3, 3, 3), (6, 3, 3, 4, 3), width=0.5)
    out = tmp_path / "ship"
    code = main(["export", "--supernet", str(ckpt), "--arch", arch.to_json(), "--formats", "tflite-int8", "--out",
                 str(out), "--board", "stm32f746", "--patches", "2", "--no-verify", "--calibration-images", "8",
                 "--json"])
    (result,) = json.loads(capsys.readouterr().out)
    assert code == 0 and result["ok"], result
    patches = result["mcu"]["patches"]
    assert patches["bit_identical"] is True and abs(patches["arena_bytes"] / patches["measured_arena_bytes"] - 1) < 0.10
    assert f"`{arch}`" in (out / "card.md").read_text() and "w0.5|" in str(arch)
