"""Classifier-output losses against values computed by hand."""

import math

import pytest
import torch

from distill.config import ObjectiveConfig
from distill.losses.logits import (
    cross_entropy,
    logit_mse,
    soft_cross_entropy,
    soft_kl,
    teacher_label_ce,
)
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


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_soft_kl_is_batchmean_over_samples():
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    first = soft_kl(student[:1], teacher[:1], temperature=1.0)
    both = soft_kl(student, teacher, temperature=1.0)
    assert both.item() == pytest.approx(first.item() / 2, rel=1e-6)  # the second sample matches exactly: KL 0
    assert both.item() == pytest.approx(kl(softmax([3, 2, 1]), softmax([1, 2, 3])) / 2, rel=1e-6)


def test_soft_kl_by_hand_on_a_batch_of_distinct_samples():
    student, teacher, temperature = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], [[3.0, 2.0, 1.0], [2.0, 0.0, 0.0]], 2.0
    rows = [kl(softmax([v / temperature for v in t]), softmax([v / temperature for v in s]))
            for s, t in zip(student, teacher)]
    value = soft_kl(torch.tensor(student), torch.tensor(teacher), temperature=temperature)
    assert value.item() == pytest.approx(sum(rows) / 2 * temperature**2, rel=1e-6)


def test_soft_cross_entropy_differs_from_kl_by_teacher_entropy():
    student, teacher = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[1.0, 0.0, -1.0]])
    p_teacher = torch.softmax(teacher / 3, -1)
    entropy = -(p_teacher * p_teacher.log()).sum() * 9
    assert soft_cross_entropy(student, teacher, temperature=3).item() == pytest.approx(
        (soft_kl(student, teacher, temperature=3) + entropy).item(), rel=1e-6)


def test_soft_cross_entropy_by_hand_is_the_mean_over_a_batch():
    # three different samples: a sum over the batch, or the first row alone, gives another number
    student = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [0.0, 0.0, 0.0]]
    teacher = [[3.0, 2.0, 1.0], [1.0, 0.0, -1.0], [2.0, 0.0, 0.0]]
    temperature = 2.0
    rows = []
    for s, t in zip(student, teacher):
        p_teacher, p_student = softmax([v / temperature for v in t]), softmax([v / temperature for v in s])
        rows.append(-sum(pt * math.log(ps) for pt, ps in zip(p_teacher, p_student)))
    expected = sum(rows) / 3 * temperature**2
    value = soft_cross_entropy(torch.tensor(student), torch.tensor(teacher), temperature=temperature)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(5.07679, abs=1e-4)  # the number itself, so a changed formula cannot slip by


def test_cross_entropy_is_the_mean_over_labelled_samples_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([1, -100, 0])  # the second sample is unlabelled: it neither adds nor counts
    expected = (-math.log(softmax([2, 1, 0])[1]) - math.log(softmax([1, 1, 1])[0])) / 2
    assert cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert cross_entropy(logits, torch.full((3,), -100)).item() == 0.0  # no label at all: 0, not NaN


def test_teacher_label_ce_and_logit_mse_by_hand_on_a_batch():
    student = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    teacher = torch.tensor([[0.0, 0.0, 5.0], [4.0, 0.0, 0.0]])  # argmax: classes 2 and 0
    expected = (-math.log(softmax([2, 1, 0])[2]) - math.log(softmax([0, 0, 1])[0])) / 2
    assert teacher_label_ce(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    assert logit_mse(student, teacher).item() == pytest.approx((4 + 1 + 25 + 16 + 0 + 1) / 6, rel=1e-6)


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
