"""The network is described once: the space's block slots (residual rule included) and feature-map sizes are what
the supernet, the statistics, the memory model and the latency pieces all build from."""

import dataclasses

import numpy as np
import pytest
import torch

from edgenas import SearchSpace, Supernet
from edgenas.cost import StatsTable, arch_stats, build_graph
from edgenas.latency.blocks import BlockIndex
from edgenas.micro_memory import MemoryTable, micro_graph, predict
from edgenas.nn.static import MBConv
from edgenas.space import BlockSlot, StageSpec


def _odd_space() -> SearchSpace:
    """A stride-2 stem, odd feature maps, a stride-1 stage after a stride-2 one, no residual first block."""
    return SearchSpace(name="odd", stages=(StageSpec(16, 2, "relu", True, (1, 2)), StageSpec(24, 2, "hswish", False, (1, 2)),
                                           StageSpec(24, 1, "hswish", True, (1, 3))),
                       kernels=(3, 5), expands=(3, 4), resolutions=(25, 26), stem_width=8, stem_stride=2,
                       first_block_width=16, final_expand_width=48, feature_width=64, num_classes=5)


class _NoSkipSpace(SearchSpace):
    """A space whose slots (the fixed first block's too) say: no skip connection, although the shapes would allow one."""

    @property
    def first_block(self) -> BlockSlot:
        return dataclasses.replace(super().first_block, residual=False)

    def block_slots(self, multiplier: float = 1.0) -> tuple[BlockSlot, ...]:
        return tuple(dataclasses.replace(slot, residual=False) for slot in super().block_slots(multiplier))


def _spatial_sizes(net: torch.nn.Module, blocks: list[torch.nn.Module], resolution: int) -> tuple[list, list, int]:
    """(input size, output size) of each of `blocks` and the head's input size, from a real forward pass."""
    seen: dict[int, tuple[int, int]] = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, (i[0].shape[-1], o.shape[-1])))
             for k, b in enumerate(blocks)]
    head = []
    hooks.append(net.final_expand.register_forward_hook(lambda m, i, o: head.append(i[0].shape[-1])))
    with torch.no_grad():
        net(torch.zeros(1, 3, resolution, resolution))
    for h in hooks:
        h.remove()
    return [seen[k][0] for k in sorted(seen)], [seen[k][1] for k in sorted(seen)], head[0]


@pytest.mark.parametrize("space", [SearchSpace.preset("tiny"), _odd_space()], ids=["tiny", "odd"])
def test_feature_sizes_are_those_the_supernet_computes_and_the_cost_models_use(space):
    arch = space.largest(space.resolutions[0])
    for resolution in space.resolutions:
        arch = dataclasses.replace(arch, resolution=resolution)
        sizes = space.feature_sizes(resolution)
        assert len(sizes.slot_in) == len(sizes.slot_out) == space.max_blocks
        # The supernet's real forward pass: every block's input and output, the stem's output, the head's input.
        net = Supernet(space).eval()
        net.set_active(arch)
        blocks = [b for stage in net.stages for b in stage]
        slot_in, slot_out, head = _spatial_sizes(net, [net.stem] + blocks, resolution)
        assert slot_out[0] == sizes.stem
        assert (tuple(slot_in[1:]), tuple(slot_out[1:]), head) == (sizes.slot_in, sizes.slot_out, sizes.head)
        # The analytic graph: each block's projection writes a map of the slot's output size.
        ops, _ = build_graph(space, arch)
        projects = [op for op in ops if op.name.startswith("stage") and op.name.endswith(".project")]
        slots = space.block_slots()
        assert [op.out_size for op in projects] == [s.out_channels * hw * hw for s, hw in zip(slots, sizes.slot_out)]
        # The latency pieces and the memory graph: the slot's input size, the head's input size.
        index = BlockIndex(space)
        pieces = index.pieces_of(arch)
        assert [p.hw for p in pieces[1:-1]] == list(sizes.slot_in) and pieces[-1].hw == sizes.head
        g = micro_graph(space, arch)
        pool = next(op for op in g.ops if g.roles[op.output] == "mean.out")  # the head's global pool
        assert g.sizes[pool.inputs[0]] == space.scaled(space.final_expand_width) * sizes.head ** 2


def test_a_slot_without_residual_is_built_so_by_every_consumer():
    tiny = SearchSpace.preset("tiny")
    noskip = _NoSkipSpace.from_dict(tiny.to_dict())
    assert tiny.first_block_residual and any(s.residual for s in tiny.block_slots())  # the rule would add skips
    assert not noskip.first_block_residual and not any(s.residual for s in noskip.block_slots())
    archs = [tiny.largest(), tiny.smallest(), *tiny.sample_many(np.random.default_rng(0), 6)]

    def residuals(space):
        net = Supernet(space)
        static = net.extract(archs[0])
        graph_adds = sum(op.kind == "add" for a in archs for op in build_graph(space, a)[0])
        micro_adds = sum(op.kind == "ADD" and len(op.inputs) == 2 for a in archs for op in micro_graph(space, a).ops)
        pieces = BlockIndex(space).pieces
        return {
            "supernet": sum(m.residual for m in net.modules() if hasattr(m, "residual")),
            "extracted": sum(m.residual for m in static.modules() if isinstance(m, MBConv)),
            "stats graph": graph_adds,
            "memory graph": micro_adds,
            "latency pieces": sum(p.residual for p in pieces),
        }

    assert all(residuals(tiny).values())  # the same consumers do build skips where the slots say so
    assert residuals(noskip) == dict.fromkeys(residuals(tiny), 0)
    # The batched tables read the same slots as the per-arch models.
    table = StatsTable(noskip).compute(archs)
    for row, arch in enumerate(archs):
        assert {f: int(table[f][row]) for f in StatsTable.FIELDS} == {
            f: v for f, v in arch_stats(noskip, arch).to_dict().items() if f in StatsTable.FIELDS}
    memory = MemoryTable(noskip, check_archs=0).compute(archs)
    assert list(memory["flash"]) == [predict(noskip, a).flash for a in archs]
    assert list(memory["tail"]) == [predict(noskip, a).tail for a in archs]
    # Without the skips no block input is kept alive across a block, so the peaks fall.
    assert (StatsTable(noskip).compute(archs)["peak_activation_int8"]
            <= StatsTable(tiny).compute(archs)["peak_activation_int8"]).all()


def test_a_slot_cannot_claim_a_skip_its_shapes_do_not_allow():
    assert BlockSlot(0, 0, 16, 16, 1, "relu", False).residual
    assert not BlockSlot(0, 0, 16, 24, 1, "relu", False).residual
    assert not BlockSlot(0, 0, 16, 16, 2, "relu", False).residual
    assert not BlockSlot(0, 0, 16, 16, 1, "relu", False, residual=False).residual
    with pytest.raises(ValueError, match="cannot add its input: 16 channels in, 24 out, stride 1"):
        BlockSlot(1, 0, 16, 24, 1, "relu", False, residual=True)
