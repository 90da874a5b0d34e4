"""spec.distillation: its fields and their errors, the teacher's label order, and the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finetune_operator.api import parse_spec
from finetune_trainer.config import ConfigError, DistillationSpec, parse
from finetune_trainer.distill import Distiller, label_order
from finetune_trainer.errors import InputError

SPEC = {"model": {"name": "m"}, "dataset": {"train": "t.csv"}}


def distillation(**fields) -> DistillationSpec:
    return parse(DistillationSpec, {"teacher": {"name": "teacher"}, **fields}, prefix="spec.distillation")


def test_defaults_are_the_usual_recipe():
    d = distillation()
    assert (d.temperature, d.cross_entropy_weight, d.kl_weight, d.teacher_logits) == (2.0, 0.7, 0.3, "cached")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"distillation": {}}, "spec.distillation.teacher: expected a value"),
        ({"distillation": {"teacher": {"name": "t"}, "temperature": 0}}, "spec.distillation.temperature"),
        ({"distillation": {"teacher": {"name": "t"}, "crossEntropyWeight": 0, "klWeight": 0}},
         "crossEntropyWeight and klWeight cannot both be 0"),
        ({"distillation": {"teacher": {"name": "t"}}, "task": {"type": "regression"}},
         "distillation needs task.type single_label_classification"),
        ({"distillation": {"teacher": {"name": "t"}}, "dataset": {"train": "t.csv", "augmentation": {}}},
         "distillation.teacherLogits must be onTheFly with dataset.augmentation"),
    ],
)
def test_bad_distillation_specs_name_the_field(spec, message):
    with pytest.raises(ConfigError) as e:
        parse_spec({**SPEC, **spec})
    assert message in str(e.value)


def test_on_the_fly_teacher_logits_go_with_augmentation():
    spec = {"distillation": {"teacher": {"name": "t"}, "teacherLogits": "onTheFly"}}
    assert parse_spec({**SPEC, "dataset": {"train": "t.csv", "augmentation": {}}, **spec}).distillation


def test_teacher_labels_in_another_order_are_reordered():
    assert label_order(["positive", "negative"], ["negative", "positive"]) == [1, 0]


def test_teacher_with_other_labels_is_refused():
    with pytest.raises(InputError, match=r"distillation.teacher.name: the teacher's labels \['a', 'b'\] are not"):
        label_order(["a", "b"], ["a", "c"])


def test_loss_weighs_cross_entropy_and_softened_kl():
    d = Distiller.__new__(Distiller)  # the loss needs only the spec
    d.spec = distillation(temperature=2.0, crossEntropyWeight=0.7, klWeight=0.3)
    student, teacher = torch.tensor([[2.0, -1.0], [0.5, 0.0]]), torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    hard = torch.tensor(0.25)
    p_t, log_p_s = F.softmax(teacher / 2, -1), F.log_softmax(student / 2, -1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    torch.testing.assert_close(d.loss(hard, student, teacher), 0.7 * hard + 0.3 * 4 * kl)
    assert float(d.loss(torch.tensor(0.0), teacher, teacher)) == pytest.approx(0.0, abs=1e-7)
