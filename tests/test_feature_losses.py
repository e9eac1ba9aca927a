"""Tests for distill.losses.features and distill.losses.relations (and dkd, in distill.losses.logits).

Every loss is checked against a value computed by hand on a tiny example (the
arithmetic is written out next to each expected value), for zero loss when the
student equals the teacher, with gradcheck in float64, for no gradient reaching
the teacher, and for a ValueError naming both shapes on mismatched inputs.
"""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses.features import (
    attention_transfer,
    cosine_loss,
    hint_loss,
    multilabel_kd,
    regression_kd,
    similarity_preserving,
)
from distill.losses.logits import dkd
from distill.losses.relations import (
    attention_map_loss,
    crd_in_batch,
    minilm_attention_kl,
    minilm_value_relation,
    rkd_angle,
    rkd_distance,
    similarity_kl,
)

D = torch.float64


def T(x):
    return torch.tensor(x, dtype=D)


def ln(x):
    return math.log(x)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def bern_kl(p, q):
    """KL(Bern(p) || Bern(q)), written out for hand computations."""
    return p * ln(p / q) + (1 - p) * ln((1 - p) / (1 - q))


def close(actual, expected, tol=1e-10):
    assert actual.dim() == 0, f"loss must be a scalar, got shape {tuple(actual.shape)}"
    assert abs(actual.item() - expected) < tol, (actual.item(), expected)


# --------------------------------------------------------------------------- hand-computed values


def test_hint_loss_hand_computed():
    s = T([[1.0, 2.0], [3.0, 4.0]])
    t = T([[1.0, 0.0], [0.0, 4.0]])
    # differences s - t: 0, 2, 3, 0
    close(hint_loss(s, t), (0 + 4 + 9 + 0) / 4)  # mse = 3.25
    close(hint_loss(s, t, kind="l1"), (0 + 2 + 3 + 0) / 4)  # 1.25
    # smooth_l1, beta=1: |d| >= 1 -> |d| - 0.5: 0, 1.5, 2.5, 0
    close(hint_loss(s, t, kind="smooth_l1"), (0 + 1.5 + 2.5 + 0) / 4)
    # beta=4: |d| < 4 -> 0.5 d^2 / 4: 0, 0.5, 1.125, 0
    close(hint_loss(s, t, kind="smooth_l1", beta=4.0), (0 + 0.5 + 1.125 + 0) / 4)


def test_hint_loss_with_mask_counts_only_selected_positions():
    s = T([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])  # [B=1, T=3, D=2]; the last position is padding
    t = T([[[1.0, 0.0], [0.0, 4.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    close(hint_loss(s, t, mask=mask), (0 + 4 + 9 + 0) / 4)  # the padding's 81 + 81 never counts
    close(hint_loss(s, t, kind="l1", mask=mask), (0 + 2 + 3 + 0) / 4)
    close(hint_loss(s, t, mask=torch.ones(1, 3)), hint_loss(s, t).item())
    nothing = hint_loss(s.requires_grad_(), t, mask=torch.zeros(1, 3))
    close(nothing, 0.0)
    nothing.backward()  # still part of the graph: a batch of padding only does not break a step
    with pytest.raises(ValueError, match="mask shape"):
        hint_loss(s, t, mask=torch.ones(1, 2))



def test_hint_loss_with_mask_averages_over_the_selected_elements_of_the_whole_batch():
    s = T([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]], [[2.0, 2.0], [7.0, 7.0], [7.0, 7.0]]])
    t = T([[[1.0, 0.0], [0.0, 4.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # squared differences of the 3 selected positions (6 elements): 0, 4, 9, 0 and 4, 4
    close(hint_loss(s, t, mask=mask), (0 + 4 + 9 + 0 + 4 + 4) / 6)



def test_cosine_loss_hand_computed():
    s = T([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [3.0, 0.0]]])
    t = T([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    # cos per position: 1, 1/sqrt2, 1, 0  ->  1 - cos: 0, 1 - 1/sqrt2, 0, 1
    close(cosine_loss(s, t), (0 + (1 - 1 / math.sqrt(2)) + 0 + 1) / 4)
    mask = torch.tensor([[True, True], [True, False]])
    # the last position (1 - cos = 1) is masked out: 3 positions remain
    close(cosine_loss(s, t, mask=mask), (0 + (1 - 1 / math.sqrt(2)) + 0) / 3)
    close(cosine_loss(s, t, mask=mask.long()), (1 - 1 / math.sqrt(2)) / 3)
    # empty mask: 0, not NaN
    close(cosine_loss(s, t, mask=torch.zeros(2, 2, dtype=torch.bool)), 0.0)


def test_attention_transfer_hand_computed():
    # student [B=1, C=2, H=1, W=2]; teacher [1, C=1, 1, 2]
    s = T([[[[1.0, 2.0]], [[-1.0, 0.0]]]])
    t = T([[[[1.0, 1.0]]]])
    # p=2: mean_c F^2 = [(1+1)/2, (4+0)/2] = [1, 2] -> a_s = [1, 2]/sqrt5 ; a_t = [1, 1]/sqrt2
    a_s = [1 / math.sqrt(5), 2 / math.sqrt(5)]
    a_t = [1 / math.sqrt(2), 1 / math.sqrt(2)]
    # mean over B*H*W = 2 elements of the squared difference
    close(attention_transfer(s, t), ((a_s[0] - a_t[0]) ** 2 + (a_s[1] - a_t[1]) ** 2) / 2)
    # p=1: mean_c |F| = [(1+1)/2, (2+0)/2] = [1, 1] -> a_s = a_t -> 0
    close(attention_transfer(s, t, p=1), 0.0)



def test_attention_transfer_is_the_mean_over_batch_by_hand():
    s = T([[[[1.0, 2.0]], [[-1.0, 0.0]]], [[[0.0, 1.0]], [[0.0, 1.0]]]])  # [B=2, C=2, H=1, W=2]
    t = T([[[[1.0, 1.0]]], [[[1.0, 0.0]]]])
    first = (1 / math.sqrt(5) - 1 / math.sqrt(2)) ** 2 + (2 / math.sqrt(5) - 1 / math.sqrt(2)) ** 2
    # sample 2: mean_c F^2 = [0, 1] -> a_s = [0, 1]; a_t = [1, 0]; squared difference 1 + 1
    close(attention_transfer(s, t), (first + 2) / (2 * 2))



def test_similarity_preserving_hand_computed():
    s = T([[1.0, 0.0], [0.0, 1.0]])  # G_s = I, rows already unit
    t = T([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # G_t = [[1, 1], [1, 1]] -> rows / sqrt2
    # G_s - G_t: diagonal 1 - 1/sqrt2, off-diagonal -1/sqrt2
    fro2 = 2 * (1 - 1 / math.sqrt(2)) ** 2 + 2 * (1 / math.sqrt(2)) ** 2  # = 4 - 2 sqrt2
    close(similarity_preserving(s, t), fro2 / 2**2)  # = 1 - sqrt2/2
    close(similarity_preserving(s, t), 1 - math.sqrt(2) / 2)


def test_regression_kd_hand_computed():
    s, t = T([1.0, 3.0]), T([2.0, 0.5])
    # differences: -1, 2.5
    close(regression_kd(s, t), (1 + 6.25) / 2)
    close(regression_kd(s, t, kind="l1"), (1 + 2.5) / 2)
    close(regression_kd(s, t, kind="smooth_l1"), ((1 - 0.5) + (2.5 - 0.5)) / 2)


def test_multilabel_kd_hand_computed():
    s = T([[0.0, ln(3)]])  # sigmoid: 1/2, 3/4
    t = T([[ln(3), 0.0]])  # sigmoid: 3/4, 1/2
    kl_class0 = 0.75 * ln(0.75 / 0.5) + 0.25 * ln(0.25 / 0.5)
    kl_class1 = 0.5 * ln(0.5 / 0.75) + 0.5 * ln(0.5 / 0.25)
    close(multilabel_kd(s, t), (kl_class0 + kl_class1) / 2)
    # T=2 with doubled logits gives the same probabilities; the loss is scaled by T^2 = 4
    close(multilabel_kd(2 * s, 2 * t, temperature=2.0), 4 * (kl_class0 + kl_class1) / 2)



def test_multilabel_kd_is_the_mean_over_batch_and_classes_by_hand():
    s = T([[0.0, ln(3)], [ln(3), ln(3)]])  # sigmoid: 1/2, 3/4 and 3/4, 3/4
    t = T([[ln(3), 0.0], [0.0, 0.0]])  # sigmoid: 3/4, 1/2 and 1/2, 1/2
    per_class = [bern_kl(0.75, 0.5), bern_kl(0.5, 0.75), bern_kl(0.5, 0.75), bern_kl(0.5, 0.75)]
    close(multilabel_kd(s, t), sum(per_class) / 4)



def test_rkd_distance_hand_computed():
    # teacher triangle 3-4-5: d(0,1)=3, d(0,2)=4, d(1,2)=5; off-diagonal mean = 4
    t = T([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    # student: d(0,1)=1, d(0,2)=1, d(1,2)=sqrt2; off-diagonal mean m = (2 + sqrt2)/3
    s = T([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    m = (2 + math.sqrt(2)) / 3
    diffs = [1 / m - 3 / 4, 1 / m - 4 / 4, math.sqrt(2) / m - 5 / 4]  # all |d| < 1
    huber = [0.5 * d * d for d in diffs]
    # each pair appears twice in the 3x3 matrix; the zero diagonal counts in the mean over 9
    close(rkd_distance(s, t), 2 * sum(huber) / 9)


def test_rkd_angle_hand_computed():
    t = T([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    s = T([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    # cosine of the angle at each vertex:
    #   teacher: at (0,0): 0; at (1,0): <(-1,0), (-1,1)/sqrt2> = 1/sqrt2; at (0,1): 1/sqrt2
    #   student: at (0,0): 0; at (2,0): <(-1,0), (-2,1)/sqrt5> = 2/sqrt5;
    #            at (0,1): <(0,-1), (2,-1)/sqrt5> = 1/sqrt5
    cos_t = [0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)]
    cos_s = [0.0, 2 / math.sqrt(5), 1 / math.sqrt(5)]
    huber = [0.5 * (a - b) ** 2 for a, b in zip(cos_s, cos_t)]
    # each vertex angle appears for 2 ordered (j, k) pairs; the 21 degenerate triplets agree
    # between the models (0 or 1) and only count in the mean over 3^3 = 27
    close(rkd_angle(s, t), 2 * sum(huber) / 27)


def test_crd_in_batch_hand_computed():
    s = T([[1.0, 0.0], [1.0, 1.0]])  # normalised: (1, 0), (1, 1)/sqrt2
    t = T([[2.0, 0.0], [0.0, 3.0]])  # normalised: identity
    r = 1 / math.sqrt(2)
    # logits (T=1) = [[1, 0], [r, r]]
    row0 = -ln(math.e / (math.e + 1))  # target 0
    row1 = -ln(0.5)  # equal logits
    close(crd_in_batch(s, t, temperature=1.0), (row0 + row1) / 2)
    # transposed logits = [[1, r], [0, r]]
    col0 = -ln(math.exp(1) / (math.exp(1) + math.exp(r)))
    col1 = -ln(math.exp(r) / (math.exp(0) + math.exp(r)))
    close(
        crd_in_batch(s, t, temperature=1.0, symmetric=True),
        0.5 * ((row0 + row1) / 2 + (col0 + col1) / 2),
    )
    # temperature 0.5 doubles the logits: row0 = -log(e^2 / (e^2 + 1)), row1 = log 2
    close(crd_in_batch(s, t, temperature=0.5), (-ln(math.e**2 / (math.e**2 + 1)) + ln(2)) / 2)


def test_similarity_kl_hand_computed():
    r = 1 / math.sqrt(2)
    t = T([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])  # normalised: (1, 0), (0, 1), (r, r)
    s = T([[5.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # normalised: (1, 0), (1, 0), (0, 1)

    def softmax(logits):
        total = sum(math.exp(value) for value in logits)
        return [math.exp(value) / total for value in logits]

    def kl(p, q):
        return sum(a * ln(a / b) for a, b in zip(p, q))

    # row i compares similarities to the other two teacher embeddings (T = 1):
    row0 = kl(softmax([0.0, r]), softmax([0.0, r]))  # s0 = t0: nothing to learn
    row1 = kl(softmax([0.0, r]), softmax([1.0, r]))  # to t0, t2
    row2 = kl(softmax([r, r]), softmax([0.0, 1.0]))  # to t0, t1
    close(similarity_kl(s, t, temperature=1.0), (row0 + row1 + row2) / 3)
    assert row0 == 0 and row1 > 0 and row2 > 0
    # temperature 0.5 doubles every logit
    close(similarity_kl(s, t, temperature=0.5),
          (kl(softmax([0.0, 2 * r]), softmax([2.0, 2 * r])) + kl(softmax([2 * r, 2 * r]), softmax([0.0, 2.0]))) / 3)
    with pytest.raises(ValueError, match="at least 2"):
        similarity_kl(s[:1], t[:1])


def test_dkd_hand_computed():
    # one sample, 3 classes, label 0; T=1 so softmax gives the probabilities directly
    t = T([[ln(2), 0.0, 0.0]])  # p_t = [1/2, 1/4, 1/4]
    s = T([[0.0, 0.0, ln(2)]])  # p_s = [1/4, 1/4, 1/2]
    y = torch.tensor([0])
    # TCKD: b_t = [1/2, 1/2], b_s = [1/4, 3/4]
    tckd = 0.5 * ln(0.5 / 0.25) + 0.5 * ln(0.5 / 0.75)
    # NCKD: non-target distributions teacher [1/2, 1/2], student [1/3, 2/3]
    nckd = 0.5 * ln(0.5 / (1 / 3)) + 0.5 * ln(0.5 / (2 / 3))
    close(dkd(s, t, y, alpha=1.0, beta=8.0, temperature=1.0), tckd + 8 * nckd)
    close(dkd(s, t, y, alpha=2.0, beta=0.0, temperature=1.0), 2 * tckd)
    # T=4 with logits x4: same probabilities, times T^2 = 16
    close(dkd(4 * s, 4 * t, y), 16 * (tckd + 8 * nckd))
    # batchmean: a batch of two copies gives the same value
    close(dkd(s.repeat(2, 1), t.repeat(2, 1), y.repeat(2), temperature=1.0), tckd + 8 * nckd)


def test_dkd_decomposes_classical_kd():
    # Zhao et al. 2022, eq. 5: KD = TCKD + (1 - p_t^teacher) * NCKD, per sample
    g = torch.Generator().manual_seed(0)
    s = torch.randn(1, 6, generator=g, dtype=D) * 2
    t = torch.randn(1, 6, generator=g, dtype=D) * 2
    y = torch.tensor([2])
    temp = 3.0
    p_t = torch.softmax(t / temp, dim=1)
    p_s = torch.softmax(s / temp, dim=1)
    kd = (p_t * (p_t.log() - p_s.log())).sum().item() * temp**2
    weight = 1.0 - p_t[0, 2].item()
    close(dkd(s, t, y, alpha=1.0, beta=weight, temperature=temp), kd, tol=1e-9)


def test_minilm_attention_kl_hand_computed():
    t = T([[[[0.5, 0.5], [1.0, 0.0]]]])  # [B=1, H=1, T=2, T=2]
    s = T([[[[0.25, 0.75], [0.5, 0.5]]]])
    row0 = 0.5 * ln(0.5 / 0.25) + 0.5 * ln(0.5 / 0.75)
    row1 = 1.0 * ln(1.0 / 0.5) + 0.0  # 0 * log 0 = 0 (guarded by the clamp)
    close(minilm_attention_kl(s, t), (row0 + row1) / 2)
    close(minilm_attention_kl(s, t, mask=torch.tensor([[True, False]])), row0)
    # masked mean counts tokens over the batch: sample 2 is fully valid and equal (KL 0)
    s2, t2 = torch.cat([s, t]), torch.cat([t, t])
    mask2 = torch.tensor([[True, False], [True, True]])
    close(minilm_attention_kl(s2, t2, mask=mask2), (row0 + 0 + 0) / 3)



def test_minilm_attention_kl_is_the_mean_over_heads_by_hand():
    t = T([[[[0.5, 0.5], [1.0, 0.0]], [[0.3, 0.7], [0.6, 0.4]]]])  # [B=1, H=2, T=2, T=2]
    s = T([[[[0.25, 0.75], [0.5, 0.5]], [[0.3, 0.7], [0.6, 0.4]]]])  # head 2 matches: KL 0
    row0 = 0.5 * ln(0.5 / 0.25) + 0.5 * ln(0.5 / 0.75)
    row1 = ln(2)
    close(minilm_attention_kl(s, t), (row0 + row1 + 0 + 0) / 4)
    close(minilm_attention_kl(s, t, mask=torch.tensor([[True, False]])), (row0 + 0) / 2)



def test_minilm_value_relation_hand_computed():
    # B=1, T=2, 2 relation heads; student D=2 (d_head=1), teacher D=4 (d_head=2)
    s = T([[[1.0, 0.0], [0.0, 0.0]]])
    t = T([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    # student head 0: V=[[1],[0]] -> scores [[1, 0], [0, 0]] / sqrt1 -> row0 [sig(1), 1-sig(1)], row1 uniform
    # teacher head 0: V=[[1,1],[0,0]] -> scores [[2, 0], [0, 0]] / sqrt2 -> row0 [sig(sqrt2), ...], row1 uniform
    # head 1 is all zeros for both models -> uniform rows, KL 0
    only_nonzero = bern_kl(sigmoid(math.sqrt(2)), sigmoid(1.0))
    close(minilm_value_relation(s, t, num_relation_heads=2), only_nonzero / (2 * 2))
    # a padded third position (garbage values) changes nothing once masked
    s_pad = torch.cat([s, T([[[5.0, -3.0]]])], dim=1)
    t_pad = torch.cat([t, T([[[-2.0, 7.0, 1.0, 4.0]]])], dim=1)
    mask = torch.tensor([[True, True, False]])
    close(minilm_value_relation(s_pad, t_pad, num_relation_heads=2, mask=mask), only_nonzero / 4)



def test_minilm_value_relation_is_the_mean_over_batch_by_hand():
    s = T([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])  # sample 2: all zeros, uniform relations
    t = T([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    only_nonzero = bern_kl(sigmoid(math.sqrt(2)), sigmoid(1.0))
    # one nonzero row among 2 samples x 2 heads x 2 queries
    close(minilm_value_relation(s, t, num_relation_heads=2), only_nonzero / 8)



def test_attention_map_loss_hand_computed():
    t = T([[[[0.5, 0.5], [1.0, 0.0]]]])
    s = T([[[[0.25, 0.75], [0.5, 0.5]]]])
    # squared differences: 1/16, 1/16, 1/4, 1/4
    close(attention_map_loss(s, t), (1 / 16 + 1 / 16 + 1 / 4 + 1 / 4) / 4)
    row0 = 0.5 * ln(2) + 0.5 * ln(0.5 / 0.75)
    row1 = ln(2)
    close(attention_map_loss(s, t, kind="kl"), (row0 + row1) / 2)


# --------------------------------------------------------------------------- generic properties



def test_attention_map_loss_averages_over_heads_by_hand():
    t = T([[[[0.5, 0.5], [1.0, 0.0]], [[0.3, 0.7], [0.6, 0.4]]]])  # [B=1, H=2, T=2, T=2]
    s = T([[[[0.25, 0.75], [0.5, 0.5]], [[0.3, 0.7], [0.6, 0.4]]]])  # head 2 matches
    close(attention_map_loss(s, t), (1 / 16 + 1 / 16 + 1 / 4 + 1 / 4) / 8)
    row0 = 0.5 * ln(2) + 0.5 * ln(0.5 / 0.75)
    close(attention_map_loss(s, t, kind="kl"), (row0 + ln(2)) / 4)



def _g(seed):
    return torch.Generator().manual_seed(seed)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=_g(seed), dtype=D)


def _probs(*shape, seed=0):
    return torch.softmax(_rand(*shape, seed=seed), dim=-1)


LABELS = torch.tensor([0, 2, 1])

# name -> (fn, student, teacher, extra positional args, kwargs, zero when equal?)
CASES = {
    "hint_mse": (hint_loss, _rand(2, 3, 2), _rand(2, 3, 2, seed=1), (), {}, True),
    "hint_l1": (hint_loss, _rand(2, 3), _rand(2, 3, seed=1), (), {"kind": "l1"}, True),
    "hint_smooth_l1": (hint_loss, _rand(2, 3), _rand(2, 3, seed=1), (), {"kind": "smooth_l1", "beta": 0.5}, True),
    "cosine": (cosine_loss, _rand(2, 3, 4), _rand(2, 3, 4, seed=1), (), {}, True),
    "cosine_masked": (
        cosine_loss, _rand(2, 3, 4), _rand(2, 3, 4, seed=1), (),
        {"mask": torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)}, True,
    ),
    "attention_transfer": (attention_transfer, _rand(2, 3, 2, 3), _rand(2, 5, 2, 3, seed=1), (), {}, True),
    "attention_transfer_p3": (attention_transfer, _rand(2, 3, 2, 2), _rand(2, 3, 2, 2, seed=1), (), {"p": 3}, True),
    "similarity_preserving": (similarity_preserving, _rand(3, 2, 2), _rand(3, 5, seed=1), (), {}, True),
    "regression_mse": (regression_kd, _rand(4), _rand(4, seed=1), (), {}, True),
    "regression_smooth_l1": (regression_kd, _rand(4, 2), _rand(4, 2, seed=1), (), {"kind": "smooth_l1"}, True),
    "multilabel": (multilabel_kd, _rand(2, 3), _rand(2, 3, seed=1), (), {"temperature": 2.0}, True),
    "rkd_distance": (rkd_distance, _rand(4, 3), _rand(4, 5, seed=1), (), {}, True),
    "rkd_angle": (rkd_angle, _rand(4, 3), _rand(4, 5, seed=1), (), {}, True),
    "crd": (crd_in_batch, _rand(3, 4), _rand(3, 4, seed=1), (), {"temperature": 0.5}, None),
    "crd_symmetric": (
        crd_in_batch, _rand(3, 4), _rand(3, 4, seed=1), (), {"temperature": 0.5, "symmetric": True}, None,
    ),
    "similarity_kl": (similarity_kl, _rand(4, 3), _rand(4, 3, seed=1), (), {"temperature": 0.5}, True),
    "dkd": (dkd, _rand(3, 4), _rand(3, 4, seed=1), (LABELS,), {}, True),
    "minilm_attention": (minilm_attention_kl, _probs(2, 2, 3, 3), _probs(2, 2, 3, 3, seed=1), (), {}, True),
    "minilm_attention_masked": (
        minilm_attention_kl, _probs(2, 2, 3, 3), _probs(2, 2, 3, 3, seed=1), (),
        {"mask": torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)}, True,
    ),
    "minilm_value_relation": (
        minilm_value_relation, _rand(2, 3, 4), _rand(2, 3, 6, seed=1), (), {"num_relation_heads": 2}, True,
    ),
    "minilm_value_relation_masked": (
        minilm_value_relation, _rand(2, 3, 4), _rand(2, 3, 6, seed=1), (),
        {"num_relation_heads": 2, "mask": torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)}, True,
    ),
    "attention_map_mse": (attention_map_loss, _probs(2, 2, 3, 3), _probs(2, 2, 3, 3, seed=1), (), {}, True),
    "attention_map_kl": (attention_map_loss, _probs(2, 2, 3, 3), _probs(2, 2, 3, 3, seed=1), (), {"kind": "kl"}, True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradcheck_student(name):
    fn, s, t, extra, kwargs, _ = CASES[name]
    s = s.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fn(x, t, *extra, **kwargs), (s,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_teacher_gets_no_gradient(name):
    fn, s, t, extra, kwargs, _ = CASES[name]
    s = s.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    loss = fn(s, t, *extra, **kwargs)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c[5] is not None))
def test_zero_when_student_equals_teacher(name):
    fn, s, t, extra, kwargs, _ = CASES[name]
    # losses whose teacher may have another width get a teacher of the student's shape
    loss = fn(s, s.clone(), *extra, **kwargs)
    assert abs(loss.item()) < 1e-10, loss.item()


def test_crd_not_zero_but_minimal_at_equality():
    # with in-batch negatives the loss is never 0, but aligned embeddings beat random ones
    s = _rand(4, 8)
    assert crd_in_batch(s, s.clone()) < crd_in_batch(s, _rand(4, 8, seed=3))


# name -> (fn, student, teacher, extra, kwargs)
MISMATCHED = {
    "hint": (hint_loss, _rand(2, 3), _rand(2, 4), (), {}),
    "cosine": (cosine_loss, _rand(2, 3, 4), _rand(2, 3, 5), (), {}),
    "attention_transfer_spatial": (attention_transfer, _rand(2, 3, 4, 4), _rand(2, 3, 2, 2), (), {}),
    "attention_transfer_batch": (attention_transfer, _rand(2, 3, 4, 4), _rand(3, 3, 4, 4), (), {}),
    "attention_transfer_ndim": (attention_transfer, _rand(2, 3), _rand(2, 3), (), {}),
    "similarity_preserving": (similarity_preserving, _rand(2, 3), _rand(3, 3), (), {}),
    "regression": (regression_kd, _rand(4), _rand(4, 1), (), {}),
    "multilabel": (multilabel_kd, _rand(2, 3), _rand(2, 5), (), {}),
    "rkd_distance": (rkd_distance, _rand(3, 4), _rand(4, 4), (), {}),
    "rkd_distance_single": (rkd_distance, _rand(1, 4), _rand(1, 4), (), {}),
    "rkd_angle": (rkd_angle, _rand(3, 4), _rand(4, 4), (), {}),
    "rkd_angle_ndim": (rkd_angle, _rand(3, 4, 2), _rand(3, 4, 2), (), {}),
    "crd_dim": (crd_in_batch, _rand(3, 4), _rand(3, 5), (), {}),
    "crd_batch": (crd_in_batch, _rand(3, 4), _rand(2, 4), (), {}),
    "dkd": (dkd, _rand(3, 4), _rand(3, 5), (LABELS,), {}),
    "minilm_attention_heads": (minilm_attention_kl, _probs(1, 2, 3, 3), _probs(1, 4, 3, 3), (), {}),
    "minilm_value_relation_length": (
        minilm_value_relation, _rand(2, 3, 4), _rand(2, 5, 4), (), {"num_relation_heads": 2},
    ),
    "minilm_value_relation_divisible": (
        minilm_value_relation, _rand(2, 3, 4), _rand(2, 3, 6), (), {"num_relation_heads": 4},
    ),
    "attention_map": (attention_map_loss, _probs(1, 2, 3, 3), _probs(1, 2, 4, 4), (), {}),
}


@pytest.mark.parametrize("name", sorted(MISMATCHED))
def test_mismatched_shapes_raise_value_error_naming_both(name):
    fn, s, t, extra, kwargs = MISMATCHED[name]
    with pytest.raises(ValueError) as info:
        fn(s, t, *extra, **kwargs)
    message = str(info.value)
    assert str(tuple(s.shape)) in message and str(tuple(t.shape)) in message, message


@pytest.mark.parametrize(
    "call",
    [
        lambda: hint_loss(_rand(2), _rand(2), kind="huber"),
        lambda: regression_kd(_rand(2), _rand(2), kind="kl"),
        lambda: attention_map_loss(_probs(1, 1, 2, 2), _probs(1, 1, 2, 2), kind="l1"),
        lambda: multilabel_kd(_rand(2), _rand(2), temperature=0.0),
        lambda: crd_in_batch(_rand(2, 2), _rand(2, 2), temperature=-1.0),
        lambda: dkd(_rand(3, 4), _rand(3, 4), torch.tensor([0, 1])),
        lambda: dkd(_rand(3, 4), _rand(3, 4), torch.tensor([0.0, 1.0, 2.0])),
        lambda: cosine_loss(_rand(2, 3, 4), _rand(2, 3, 4), mask=torch.ones(2, 4, dtype=torch.bool)),
        lambda: minilm_attention_kl(
            _probs(1, 1, 2, 2), _probs(1, 1, 2, 2), mask=torch.ones(1, 3, dtype=torch.bool)
        ),
        lambda: minilm_value_relation(_rand(1, 2, 4), _rand(1, 2, 4), num_relation_heads=0),
    ],
)
def test_bad_options_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_dkd_labels_shape_in_message():
    with pytest.raises(ValueError, match=r"\(2,\).*\(3, 4\)"):
        dkd(_rand(3, 4), _rand(3, 4), torch.tensor([0, 1]))


def test_float32_inputs_work():
    s, t = _rand(4, 5).float(), _rand(4, 5, seed=1).float()
    y = torch.tensor([0, 1, 2, 3])
    for loss in (
        hint_loss(s, t), cosine_loss(s, t), similarity_preserving(s, t), multilabel_kd(s, t),
        rkd_distance(s, t), rkd_angle(s, t), crd_in_batch(s, t), dkd(s, t, y),
    ):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
