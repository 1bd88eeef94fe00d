"""Tests for edgenas.export.subnet_finetune: distillation fine-tuning changes the student, never the teacher."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from edgenas import SearchSpace, Supernet
from edgenas.export.subnet_finetune import distillation_loss, finetune
from tests.export.test_subnet import digits


def test_distillation_loss_is_label_ce_plus_soft_ce():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    labels = torch.tensor([0])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.isclose(distillation_loss(logits, logits, labels, kd_ratio=0.0), ce)
    # soft cross-entropy against itself is the entropy of its own softmax
    p = torch.softmax(logits, 1)
    entropy = -(p * p.log()).sum()
    assert torch.isclose(distillation_loss(logits, logits, labels), ce + entropy)


def test_finetune_trains_the_student_only():
    data = digits()
    small = dataclasses.replace(data, images={**data.images, "train": data.images["train"][:64]},
                                labels={**data.labels, "train": data.labels["train"][:64]})
    space = SearchSpace.preset("tiny", in_channels=1)
    torch.manual_seed(0)
    supernet = Supernet(space).eval()
    student = supernet.extract(space.smallest()).eval()
    teacher = supernet.extract(space.largest()).eval()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = finetune(student, teacher, small, epochs=1, resolution=24, teacher_resolution=32, batch_size=32,
                   progress=False)
    assert out["steps"] == 2 and np.isfinite(out["loss"])
    assert not student.training
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
