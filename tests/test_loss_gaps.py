"""Loss-library behaviour that the mutation benchmark (benchmarks/mutation.py --target losses) found untested:
gradients of the fused CE / KD + CE paths against dense autograd, the label and shape checks with their exact
messages, the jsd end points, -inf teacher logits, and the top-k teacher helpers of distill.losses.lm."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.capture import FinalHidden, TopKTeacher
from distill.losses import LOSSES, register_loss
from distill.losses.lm import teacher_topk, token_kd, truncate_topk
from distill.losses.relations import rkd_distance
from distill.losses.tokens import (
    DIVERGENCES,
    chunked_token_ce,
    chunked_token_kd,
    chunked_token_kd_topk,
    dense_token_kd,
)

D = torch.float64
N, H, V = 7, 4, 5
LABELS = torch.tensor([1, -100, 4, 0, 2, -100, 3])  # 5 supervised tokens


def _student(seed: int = 0, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=D, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=D, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=D, requires_grad=True) if bias else None
    return hidden, weight, b


def _teacher(seed: int = 1, width: int = 3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, width, generator=g, dtype=D), torch.randn(V, width, generator=g, dtype=D),
            torch.randn(V, generator=g, dtype=D))


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


def _dense_ce(logits, labels):
    return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum") / int((labels != -100).sum())


def _assert_close(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------------- gradients


def test_chunked_token_ce_gradients_equal_dense_cross_entropy():
    hidden, weight, bias = _student()
    chunked = chunked_token_ce(hidden, weight, LABELS, bias=bias, chunk_size=2)
    dense = _dense_ce(hidden @ weight.T + bias, LABELS)
    torch.testing.assert_close(chunked, dense, rtol=1e-12, atol=1e-12)
    _assert_close(_grads(chunked, (hidden, weight, bias)), _grads(dense, (hidden, weight, bias)))


def test_chunked_kd_with_hard_weight_gradients_equal_dense_kd_plus_weighted_ce():
    hidden, weight, bias = _student()
    th, tw, tb = _teacher()
    chunked = chunked_token_kd(hidden, weight, th, tw, LABELS, student_bias=bias, teacher_bias=tb,
                               temperature=2.0, chunk_size=3, hard_weight=0.7)
    logits = hidden @ weight.T + bias
    dense = (dense_token_kd(logits, th @ tw.T + tb, LABELS, temperature=2.0) + 0.7 * _dense_ce(logits, LABELS))
    torch.testing.assert_close(chunked, dense, rtol=1e-12, atol=1e-12)
    _assert_close(_grads(chunked, (hidden, weight, bias)), _grads(dense, (hidden, weight, bias)))


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_chunked_jsd_end_point_gradients_equal_dense(beta):
    hidden, weight, bias = _student()
    th, tw, tb = _teacher()
    chunked = chunked_token_kd(hidden, weight, th, tw, LABELS, student_bias=bias, teacher_bias=tb,
                               divergence="jsd", beta=beta, chunk_size=2)
    dense = dense_token_kd(hidden @ weight.T + bias, th @ tw.T + tb, LABELS, divergence="jsd", beta=beta)
    torch.testing.assert_close(chunked, dense, rtol=1e-12, atol=1e-12)
    _assert_close(_grads(chunked, (hidden, weight, bias)), _grads(dense, (hidden, weight, bias)))


def _full_topk(th, tw, tb):
    log_pt = F.log_softmax(th @ tw.T + tb, dim=-1)
    top = log_pt.topk(V, dim=-1)
    return top.values, top.indices


def test_topk_with_whole_vocabulary_and_hard_weight_equals_dense_kd_plus_ce():
    hidden, weight, bias = _student()
    th, tw, tb = _teacher()
    values, ids = _full_topk(th, tw, tb)
    chunked = chunked_token_kd_topk(hidden, weight, values, ids, LABELS, student_bias=bias, chunk_size=3,
                                    hard_weight=0.5)
    logits = hidden @ weight.T + bias
    dense = dense_token_kd(logits, th @ tw.T + tb, LABELS) + 0.5 * _dense_ce(logits, LABELS)
    torch.testing.assert_close(chunked, dense, rtol=1e-10, atol=1e-12)
    _assert_close(_grads(chunked, (hidden, weight, bias)), _grads(dense, (hidden, weight, bias)))


def test_topk_gradient_with_whole_vocabulary_equals_dense_forward_kl_gradient():
    hidden, weight, bias = _student()
    th, tw, tb = _teacher()
    values, ids = _full_topk(th, tw, tb)
    chunked = chunked_token_kd_topk(hidden, weight, values, ids, LABELS, student_bias=bias, chunk_size=2)
    dense = dense_token_kd(hidden @ weight.T + bias, th @ tw.T + tb, LABELS)
    torch.testing.assert_close(chunked, dense, rtol=1e-10, atol=1e-12)
    _assert_close(_grads(chunked, (hidden, weight, bias)), _grads(dense, (hidden, weight, bias)))


def test_topk_gradient_is_finite_when_teacher_and_student_tails_are_both_empty():
    # teacher: all mass on tokens 0..2 (log tail = -inf); student: tokens 3, 4 get logit -inf from the bias.
    # The tail bucket is 0 log 0 = 0 and its gradient 0; the bucket KL then equals the dense forward KL.
    hidden, weight, _ = _student()
    bias = torch.tensor([0.1, -0.2, 0.3, -math.inf, -math.inf], dtype=D, requires_grad=True)
    g = torch.Generator().manual_seed(3)
    teacher_logits = torch.randn(N, 3, generator=g, dtype=D)
    values = F.log_softmax(teacher_logits, dim=-1)
    ids = torch.tensor([[0, 1, 2]] * N)
    tail = torch.full((N,), -math.inf, dtype=D)
    loss = chunked_token_kd_topk(hidden, weight, values, ids, LABELS, student_bias=bias, teacher_log_tail=tail,
                                 chunk_size=3)
    gh, gw, gb = _grads(loss, (hidden, weight, bias))
    assert all(bool(torch.isfinite(x).all()) for x in (gh, gw, gb))
    assert gb[3:].abs().max().item() == 0.0 and gw[3:].abs().max().item() == 0.0
    # dense reference on the three live tokens only
    h2, w2 = hidden.detach().clone().requires_grad_(True), weight.detach()[:3].clone().requires_grad_(True)
    b2 = bias.detach()[:3].clone().requires_grad_(True)
    dense = dense_token_kd(h2 @ w2.T + b2, teacher_logits, LABELS)
    torch.testing.assert_close(loss, dense, rtol=1e-10, atol=1e-12)
    dh, dw, db = _grads(dense, (h2, w2, b2))
    _assert_close((gh, gw[:3], gb[:3]), (dh, dw, db))


def test_forward_kl_with_minus_inf_teacher_logits_is_finite_and_equals_hand_value():
    student = torch.log(torch.tensor([[0.2, 0.3, 0.5]], dtype=D))
    teacher = torch.tensor([[math.log(0.25), math.log(0.75), -math.inf]], dtype=D)
    loss = dense_token_kd(student, teacher)
    expected = 0.25 * math.log(0.25 / 0.2) + 0.75 * math.log(0.75 / 0.3)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------------- checks and messages


@pytest.mark.parametrize("bad", [V, 9, -5])
def test_chunked_token_ce_rejects_labels_outside_the_vocabulary(bad):
    hidden, weight, bias = _student()
    labels = LABELS.clone()
    labels[0] = bad
    with pytest.raises(ValueError, match=rf"labels hold ids outside the vocabulary of {V} \(or negative ids other "
                                         r"than ignore_index=-100\)"):
        chunked_token_ce(hidden, weight, labels, bias=bias)


def test_chunked_token_ce_rejects_a_bias_of_the_wrong_shape():
    hidden, weight, _ = _student()
    with pytest.raises(ValueError, match=rf"^student_bias must be \[{V}\], got shape \({V + 1},\)$"):
        chunked_token_ce(hidden, weight, LABELS, bias=torch.zeros(V + 1, dtype=D))


def test_flatten_hidden_rejects_one_dimensional_hidden_states_naming_the_shape():
    with pytest.raises(ValueError, match=r"^hidden must be \[N, H\] or \[B, T, H\], got shape \(4,\)$"):
        chunked_token_ce(torch.zeros(4, dtype=D), torch.zeros(V, 4, dtype=D), torch.zeros(4, dtype=torch.long))


def test_unknown_divergence_message_lists_every_divergence():
    listed = ", ".join(DIVERGENCES)
    assert listed == "forward_kl, reverse_kl, jsd, skew_kl, skew_reverse_kl, tv"
    with pytest.raises(ValueError, match=rf"^unknown divergence 'bogus'; expected one of {listed}$"):
        dense_token_kd(torch.zeros(2, 3), torch.zeros(2, 3), divergence="bogus")


def test_chunked_token_kd_errors_name_the_right_argument():
    hidden, weight, bias = _student()
    th, tw, tb = _teacher()
    with pytest.raises(ValueError, match=r"^teacher_hidden must be \[N, H\] or \[B, T, H\], got shape \(3,\)$"):
        chunked_token_kd(hidden, weight, torch.zeros(3, dtype=D), tw)
    with pytest.raises(ValueError, match=rf"^student_weight is \({V}, 6\) but student_hidden has hidden size {H}$"):
        chunked_token_kd(hidden, torch.zeros(V, 6, dtype=D), th, tw)
    with pytest.raises(ValueError, match=rf"^teacher_weight is \({V}, 6\) but teacher_hidden has hidden size 3$"):
        chunked_token_kd(hidden, weight, th, torch.zeros(V, 6, dtype=D))


def test_chunked_token_kd_topk_errors_name_the_right_argument_and_counts():
    hidden, weight, bias = _student()  # 7 tokens of width 4
    values, ids = torch.zeros(6, 2, dtype=D), torch.zeros(6, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^student_hidden must be \[N, H\] or \[B, T, H\], got shape \(4,\)$"):
        chunked_token_kd_topk(torch.zeros(4, dtype=D), weight, values, ids)
    with pytest.raises(ValueError, match=r"^student_hidden has 7 tokens but the teacher top-k has 6$"):
        chunked_token_kd_topk(hidden, weight, values, ids)


def test_relation_loss_shape_error_names_the_layout():
    with pytest.raises(ValueError, match=r"^rkd_distance: .* both must have 2 dimensions \(\[N, D\]\)$"):
        rkd_distance(torch.zeros(2, 3, 4), torch.zeros(2, 3))


def test_a_registered_loss_carries_its_name():
    name = "scratch_gap_named_loss"

    def scratch(student_logits, teacher_logits, *, temperature: float = 1.0):
        """A scratch loss."""
        return student_logits.sum()

    try:
        register_loss(name, softens=True)(scratch)
        info = LOSSES[name]
        assert (info.name, info.fn, info.inputs, info.options, info.softens) == (
            name, scratch, ("student", "teacher"), {"temperature": 1.0}, True)
    finally:
        LOSSES.pop(name, None)


# ------------------------------------------------------------------------------------------- top-k teacher (lm)


def test_teacher_topk_slices_a_biased_head_wider_than_vocab_size():
    g = torch.Generator().manual_seed(5)
    hidden, weight, bias = torch.randn(2, 3, 3, generator=g), torch.randn(V + 2, 3, generator=g), \
        torch.randn(V + 2, generator=g)
    top = teacher_topk(FinalHidden(hidden, weight, bias), 2, vocab_size=V)
    log_probs = F.log_softmax(hidden.reshape(-1, 3) @ weight[:V].T + bias[:V], dim=-1)
    expected = log_probs.topk(2, dim=-1)
    torch.testing.assert_close(top.logprobs, expected.values)
    assert torch.equal(top.ids, expected.indices)
    rest = log_probs.exp().sum(-1) - expected.values.exp().sum(-1)
    torch.testing.assert_close(top.log_tail.exp(), rest, rtol=1e-5, atol=1e-6)


def test_teacher_topk_keeps_every_row_when_rows_outnumber_the_hidden_width():
    g = torch.Generator().manual_seed(6)
    hidden, weight = torch.randn(10, 3, generator=g), torch.randn(V, 3, generator=g)
    top = teacher_topk(FinalHidden(hidden, weight, None), 3, chunk_size=2)
    assert top.logprobs.shape == (10, 3) and top.ids.shape == (10, 3) and top.log_tail.shape == (10,)
    torch.testing.assert_close(top.logprobs, F.log_softmax(hidden @ weight.T, dim=-1).topk(3, dim=-1).values)


def test_truncate_topk_moves_the_dropped_mass_into_the_tail():
    logprobs = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.05]]))
    teacher = TopKTeacher(logprobs, torch.tensor([[3, 1, 0, 2]]), torch.log(torch.tensor([0.05])))
    cut = truncate_topk(teacher, 2)
    torch.testing.assert_close(cut.logprobs, logprobs[:, :2])
    assert cut.ids.tolist() == [[3, 1]]
    assert cut.log_tail.exp().item() == pytest.approx(0.3, rel=1e-6)  # 0.2 + 0.05 + 0.05


def test_token_kd_top_k_whole_vocabulary_with_wider_biased_student_head_equals_dense_term():
    g = torch.Generator().manual_seed(7)
    labels = torch.tensor([[1, 4, -100], [0, 2, 3]])
    s_hidden = torch.randn(2, 3, H, generator=g, dtype=D, requires_grad=True)
    s_weight = torch.randn(V + 3, H, generator=g, dtype=D, requires_grad=True)
    s_bias = torch.randn(V + 3, generator=g, dtype=D, requires_grad=True)
    teacher = FinalHidden(torch.randn(2, 3, 3, generator=g, dtype=D), torch.randn(V + 1, 3, generator=g, dtype=D),
                          torch.randn(V + 1, generator=g, dtype=D))
    student = FinalHidden(s_hidden, s_weight, s_bias)
    topk = token_kd(student, teacher, labels, top_k=V, vocab_size=V, hard_weight=0.3, chunk_size=2)
    dense = token_kd(student, teacher, labels, vocab_size=V, hard_weight=0.3, chunk_size=2)
    torch.testing.assert_close(topk, dense, rtol=1e-5, atol=1e-7)  # the top-k teacher is float32
    for a, b in zip(_grads(topk, (s_hidden, s_weight, s_bias)), _grads(dense, (s_hidden, s_weight, s_bias))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_topk_loss_is_float64_when_the_teachers_log_probs_are():
    g = torch.Generator().manual_seed(8)
    hidden, weight = torch.randn(N, H, generator=g), torch.randn(V, H, generator=g, requires_grad=True)
    teacher_logits = torch.randn(N, V, generator=g, dtype=D)
    top = F.log_softmax(teacher_logits, dim=-1).topk(V, dim=-1)
    loss = chunked_token_kd_topk(hidden, weight, top.values, top.indices, LABELS, chunk_size=3)
    assert loss.dtype == torch.float64
    dense = dense_token_kd(F.linear(hidden, weight).double(), teacher_logits, LABELS)
    torch.testing.assert_close(loss, dense, rtol=1e-6, atol=1e-9)
