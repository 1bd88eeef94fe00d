"""Tests for edgenas.train: the schedule config, the trainer loop on real digits, the eval command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgenas.artifacts import read_manifest, sha256_file
from edgenas.cli import main
from edgenas.data import load_dataset
from edgenas.errors import UsageError
from edgenas.space import Arch, SearchSpace
from edgenas.train.checkpoint import load_checkpoint_info, load_supernet
from edgenas.train.config import load_config, preset_config, to_toml
from edgenas.train.trainer import choices, lr_factor, soft_cross_entropy, train

SHORT = """
preset = "tiny"
batch_size = 16
checkpoint_every = 10
log_every = 1
bn_batches = 2
eval_every_phase = true
final_samples = 1
[[phases]]
name = "full"
steps = 30
lr = 0.1
distill = false
[[phases]]
name = "kernel"
steps = 3
lr = 0.02
kernels = "all"
subnets_per_step = 2
[[phases]]
name = "depth"
steps = 3
lr = 0.02
kernels = "all"
depths = "all"
subnets_per_step = 2
[[phases]]
name = "expand"
steps = 3
lr = 0.02
kernels = "all"
depths = "all"
expands = "all"
sort_channels = true
subnets_per_step = 2
"""


def test_ofa_preset_is_the_published_schedule():
    ofa = preset_config("ofa")
    assert ofa.space == "mobilenetv3" and ofa.batch_size == 2048 and ofa.label_smoothing == 0.1
    assert [p.name for p in ofa.phases] == ["full", "kernel", "depth-1", "depth-2", "expand-1", "expand-2"]
    assert [p.epochs for p in ofa.phases] == [180, 120, 25, 120, 25, 120]
    assert [p.subnets_per_step for p in ofa.phases] == [1, 1, 2, 2, 4, 4]
    assert [p.lr for p in ofa.phases] == pytest.approx([2.6, 0.96, 0.08, 0.24, 0.08, 0.24])
    assert [p.distill for p in ofa.phases] == [False] + [True] * 5
    assert [p.sort_channels for p in ofa.phases] == [False] * 4 + [True, False]


def test_toml_round_trip_and_precedence(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(SHORT)
    config = load_config(path)
    assert [p.steps for p in config.phases] == [30, 3, 3, 3] and config.batch_size == 16
    again = tmp_path / "again.toml"
    again.write_text(to_toml(config))
    assert load_config(again) == config
    flagged = load_config(path, batch_size=8, seed=3, dataset=None)
    assert (flagged.batch_size, flagged.seed, flagged.phases) == (8, 3, config.phases)
    assert load_config(None, preset="small").dataset == "shapes"


@pytest.mark.parametrize("text, match", [
    ("bogus = 1", "unknown training setting"),
    ('[[phases]]\nname = "a"\nkernels = 0', "kernels"),
    ('[[phases]]\nname = "a"\nspeed = 2', "unknown key"),
    ('[[phases]]\nname = "a"\n[[phases]]\nname = "a"', "unique"),
    ("batch_size = ", "not valid TOML"),
])
def test_bad_config_is_a_usage_error(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=match):
        load_config(path)


def test_phase_choices_take_the_largest_options():
    space = SearchSpace.preset("tiny")
    phases = {p.name: p for p in preset_config("tiny").phases}
    full = choices(space, phases["full"])
    assert full["kernels"] == (7,) and full["expands"] == (6,) and full["depths"] == [(3,)] * 4
    assert choices(space, phases["kernel"])["kernels"] == (3, 5, 7)
    assert choices(space, phases["depth-1"])["depths"] == [(2, 3)] * 4
    assert choices(space, phases["expand-1"])["expands"] == (4, 6)
    assert choices(space, phases["expand-2"])["expands"] == (3, 4, 6)
    assert all(choices(space, p)["widths"] == (1.0,) for p in phases.values())  # a one-width space: as before
    mcunet = SearchSpace.preset("mcunet")  # elastic width shrinks with the expand ratio
    assert choices(mcunet, phases["depth-2"])["widths"] == (1.0,)
    assert choices(mcunet, phases["expand-1"])["widths"] == (0.75, 1.0)
    assert choices(mcunet, phases["expand-2"])["widths"] == (0.35, 0.5, 0.75, 1.0)


def test_lr_schedule_warms_up_then_decays_to_zero():
    values = [lr_factor(s, 100, 10) for s in range(100)]
    assert values[0] < values[5] < values[9] <= 1.0
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[-1] < 0.01


def test_soft_cross_entropy_is_cross_entropy_against_teacher_probabilities():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 10, generator=gen), torch.randn(6, 10, generator=gen)
    expected = F.cross_entropy(student, F.softmax(teacher, 1))
    assert torch.allclose(soft_cross_entropy(student, teacher), expected, atol=1e-6)
    # minimised when the student matches the teacher
    assert soft_cross_entropy(teacher, teacher) < soft_cross_entropy(student, teacher)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    path = out / "short.toml"
    path.write_text(SHORT)
    result = train(load_config(path), out / "run", threads=1, progress=False)
    return out / "run", result


def test_short_run_writes_the_layout_and_learns(short_run):
    out, result = short_run
    for name in ("supernet.pt", "supernet.pt.manifest.json", "last.pt", "last.pt.manifest.json", "metrics.jsonl",
                 "config.toml"):
        assert (out / name).is_file(), name
    manifest = read_manifest(out / "supernet.pt")
    assert manifest["sha256"] == sha256_file(out / "supernet.pt") and manifest["complete"] is True
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["phase"] for e in events if e["event"] == "phase_end"] == ["full", "kernel", "depth", "expand"]
    assert [e["global_step"] for e in events if e["event"] == "step"] == list(range(1, 40))
    assert [e["global_step"] for e in events if e["event"] == "checkpoint"] == [10, 20]
    assert all(e["samples_per_s"] > 0 for e in events if e["event"] == "step")
    # 30 steps of 16 digits take the full network well above chance (10 %)
    assert result.summary["phases"][0]["val_largest"] > 0.3
    assert [r["name"] for r in result.summary["val"]] == ["largest", "smallest", "random"]


def test_checkpoint_info_and_load_supernet(short_run):
    out, _ = short_run
    info = load_checkpoint_info(out / "supernet.pt")
    assert info["dataset"] == "digits" and info["seed"] == 0 and info["complete"]
    assert info["sha256"] == sha256_file(out / "supernet.pt")
    assert info["space"]["in_channels"] == 1 and info["config"]["batch_size"] == 16
    net = load_supernet(out / "supernet.pt")
    assert net.space.in_channels == 1 and net.num_classes == 10 and not net.training
    static = net.extract(net.space.smallest())
    with torch.no_grad():
        assert static(static.example_input(2)).shape == (2, 10)


def test_eval_command_prints_recalibrated_accuracy(short_run, capsys):
    out, result = short_run
    arch = json.dumps(result.summary["val"][0]["arch"])
    assert main(["eval", "--supernet", str(out / "supernet.pt"), "--arch", arch, "--json", "--bn-batches", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    # the same arch, the same calibration batches: the same top-1 as the trainer's final evaluation
    assert rows[0]["top1"] == pytest.approx(result.summary["val"][0]["top1"], abs=1e-4)
    assert main(["eval", "--supernet", str(out / "supernet.pt"), "--sample", "2", "--split", "holdout"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[1].startswith("sample0")


def test_eval_command_rejects_bad_arch(short_run, capsys):
    out, _ = short_run
    assert main(["eval", "--supernet", str(out / "supernet.pt"), "--arch", '{"resolution": 99}']) == 2
    assert "missing" in capsys.readouterr().err


def test_train_summary_matches_metrics(short_run):
    out, result = short_run
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    done = [e for e in events if e["event"] == "done"][0]
    assert done["val_largest0"] == result.summary["val"][0]["top1"]
    assert np.isfinite([p["seconds"] for p in result.summary["phases"]]).all()


def test_default_out_dir_names():
    from edgenas.train.trainer import default_out_dir

    assert default_out_dir("digits", "tiny") == Path("runs/digits-tiny")
    assert default_out_dir("folder:/data/pets/", "small") == Path("runs/folder-pets-small")


def test_example_configs_load():
    for path in sorted((Path(__file__).resolve().parents[2] / "examples").glob("train-*.toml")):
        config = load_config(path)
        assert config.phases and all(p.lr > 0 for p in config.phases), path


def test_largest_first_trains_the_full_network_and_teaches_the_others_with_it(tmp_path, monkeypatch):
    """A sandwich step: the full network on the labels first, then the smallest and a random subnet, each distilled
    from the full network's logits of that very step (not from a frozen copy, which is then never made)."""
    import edgenas.train.trainer as trainer
    from edgenas.supernet import Supernet
    from edgenas.train.config import Phase, TrainConfig

    config = TrainConfig(
        preset="tiny", dataset="digits", batch_size=8, bn_batches=1, final_samples=0, compare_alone=False,
        eval_every_phase=False, checkpoint_every=1000,
        phases=(Phase("full", steps=2, lr=0.1, distill=False),
                Phase("expand", steps=3, lr=0.03, kernels="all", depths="all", expands="all", subnets_per_step=3,
                      smallest_first=True, largest_first=True)))
    space = SearchSpace.preset("tiny", in_channels=1)
    trained, teachers = [], []  # (arch, logits) of every training forward pass; every distillation target
    forward, soft = Supernet.forward, trainer.soft_cross_entropy

    def record_output(self, x):
        out = forward(self, x)
        if self.training and torch.is_grad_enabled():
            trained.append((self.active_arch, out.detach().clone()))
        return out

    def record_teacher(logits, teacher_logits, temperature=1.0):
        teachers.append(teacher_logits.clone())
        return soft(logits, teacher_logits, temperature)

    monkeypatch.setattr(Supernet, "forward", record_output)
    copied, deepcopy = [], trainer.copy.deepcopy
    monkeypatch.setattr(trainer, "soft_cross_entropy", record_teacher)
    monkeypatch.setattr(trainer.copy, "deepcopy", lambda obj, *a: copied.append(type(obj)) or deepcopy(obj, *a))
    train(config, tmp_path / "run", threads=1, progress=False, tensorboard=False)
    assert len(trained) == 2 + 9  # the full phase's 2 steps, then 3 steps of 3 subnets
    for i in range(3):  # largest, smallest, random; the latter two taught by the first's logits of the same step
        (largest, full_logits), (smallest, _), (other, _) = trained[2 + 3 * i: 5 + 3 * i]
        assert largest == space.largest(largest.resolution)
        assert smallest == space.smallest(smallest.resolution) and other not in (largest, smallest)
        assert torch.equal(teachers[2 * i], full_logits) and torch.equal(teachers[2 * i + 1], full_logits)
    assert len(teachers) == 6
    assert Supernet not in copied  # no frozen teacher


def test_an_arch_is_evaluated_again_only_after_the_weights_changed(tmp_path, monkeypatch):
    """The final check takes the largest and smallest subnets at the weights the last phase's summary has just
    evaluated them at: their figures are reused, not measured twice; every phase's steps change the weights, so each
    phase's summary measures anew. A phase's summary takes the smallest subnet of the dimensions trained so far (the
    first phase: the largest at the lowest resolution), the space's smallest once every dimension is trained."""
    import edgenas.train.trainer as trainer
    from edgenas.train.config import Phase, TrainConfig

    config = TrainConfig(
        preset="tiny", dataset="digits", batch_size=8, bn_batches=1, final_samples=1, compare_alone=False,
        checkpoint_every=1000,
        phases=(Phase("full", steps=2, lr=0.1, distill=False),
                Phase("all", steps=2, lr=0.03, kernels="all", depths="all", expands="all")))
    measured = []
    val_top1 = trainer._val_top1
    monkeypatch.setattr(trainer, "_val_top1", lambda net, archs, *a: measured.extend(archs) or val_top1(net, archs, *a))
    summary = train(config, tmp_path / "run", threads=1, progress=False, tensorboard=False).summary
    space = SearchSpace.preset("tiny", in_channels=1)
    largest, smallest = space.largest(), space.smallest()
    random = Arch.from_dict(summary["val"][2]["arch"])
    first_smallest = space.largest(min(space.resolutions))
    assert measured == [largest, first_smallest, largest, smallest, random]  # two summaries, then the random subnet
    final = {r["name"]: r["top1"] for r in summary["val"][:2]}
    last = summary["phases"][-1]
    assert final == {"largest": last["val_largest"], "smallest": last["val_smallest"]}
    # a figure reused is the figure the same evaluation gives
    net = load_supernet(tmp_path / "run" / "last.pt")
    assert val_top1(net, [largest], load_dataset("digits", seed=0), config, 64) == [pytest.approx(final["largest"], abs=1e-5)]
