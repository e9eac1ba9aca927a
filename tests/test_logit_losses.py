"""Classifier-output losses against values computed by hand."""

import math

import pytest
import torch

from distill.config import ObjectiveConfig
from distill.losses.logits import cross_entropy, logit_mse, soft_cross_entropy, soft_kl, teacher_label_ce
from distill.objective import Objective


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_soft_kl_matches_hand_computation_with_temperature_squared():
    student, teacher, temperature = [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], 2.0
    p_teacher = softmax([v / temperature for v in teacher])
    p_student = softmax([v / temperature for v in student])
    expected = sum(pt * math.log(pt / ps) for pt, ps in zip(p_teacher, p_student)) * temperature**2
    value = soft_kl(torch.tensor([student]), torch.tensor([teacher]), temperature=temperature)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.28063, abs=1e-4)  # the number itself, so a changed formula cannot slip by


def test_soft_kl_is_batchmean_over_samples():
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    first = soft_kl(student[:1], teacher[:1], temperature=1.0)
    both = soft_kl(student, teacher, temperature=1.0)
    assert both.item() == pytest.approx(first.item() / 2, rel=1e-6)  # the second sample matches exactly: KL 0


def test_soft_cross_entropy_differs_from_kl_by_teacher_entropy():
    student, teacher = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[1.0, 0.0, -1.0]])
    p_teacher = torch.softmax(teacher / 3, -1)
    entropy = -(p_teacher * p_teacher.log()).sum() * 9
    assert soft_cross_entropy(student, teacher, temperature=3).item() == pytest.approx(
        (soft_kl(student, teacher, temperature=3) + entropy).item(), rel=1e-6)


def test_cross_entropy_and_teacher_labels_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    assert cross_entropy(logits, torch.tensor([1])).item() == pytest.approx(-math.log(softmax([2, 1, 0])[1]), rel=1e-6)
    teacher = torch.tensor([[0.0, 0.0, 5.0]])  # argmax: class 2
    assert teacher_label_ce(logits, teacher).item() == pytest.approx(-math.log(softmax([2, 1, 0])[2]), rel=1e-6)
    assert logit_mse(logits, teacher).item() == pytest.approx((4 + 1 + 25) / 3, rel=1e-6)


def test_teacher_receives_no_gradient_and_shapes_must_match():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    soft_kl(student, teacher, temperature=2.0).backward()
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        soft_kl(student, torch.randn(4, 6))


def test_alpha_objective_is_weighted_sum_of_named_terms():
    student, teacher, labels = torch.randn(6, 4), torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    objective = Objective(ObjectiveConfig(alpha=0.3, temperature=5.0))
    total, terms = objective({"logits": student}, {"logits": teacher}, labels)
    soft = soft_kl(student, teacher, temperature=5.0)
    hard = cross_entropy(student, labels)
    assert set(terms) == {"soft", "hard"}
    assert terms["soft"].item() == pytest.approx(soft.item(), rel=1e-6)
    assert total.item() == pytest.approx(0.3 * soft.item() + 0.7 * hard.item(), rel=1e-6)
