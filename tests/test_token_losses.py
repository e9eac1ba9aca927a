"""Tests for distill.losses.tokens: divergence definitions, chunked == dense, gradients, memory structure, top-k."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from distill.losses.tokens import (
    DIVERGENCES,
    chunked_token_ce,
    chunked_token_kd,
    chunked_token_kd_topk,
    dense_token_kd,
    token_divergence,
)

# ---------------------------------------------------------------------------------------------------------------
# token_divergence: definitions checked against arithmetic written out by hand
# ---------------------------------------------------------------------------------------------------------------

P_S = [0.2, 0.3, 0.5]  # student probabilities (logits = log P_S)
P_T = [0.6, 0.3, 0.1]  # teacher probabilities
log = math.log


def _kl(p, q):
    return sum(pi * log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _mix(w, a, b):
    return [w * ai + (1 - w) * bi for ai, bi in zip(a, b)]


def _softmax(logits, t):
    e = [math.exp(x / t) for x in logits]
    return [x / sum(e) for x in e]


def _by_hand(divergence, ps, pt, beta, skew):
    if divergence == "forward_kl":
        return _kl(pt, ps)
    if divergence == "reverse_kl":
        return _kl(ps, pt)
    if divergence == "jsd":
        m = _mix(beta, pt, ps)
        return beta * _kl(pt, m) + (1 - beta) * _kl(ps, m)
    if divergence == "skew_kl":
        return _kl(pt, _mix(skew, pt, ps))
    if divergence == "skew_reverse_kl":
        return _kl(ps, _mix(skew, ps, pt))
    if divergence == "tv":
        return 0.5 * sum(abs(a - b) for a, b in zip(pt, ps))
    raise AssertionError(divergence)


# T = 1, written out term by term.
M_JSD = [0.5 * 0.6 + 0.5 * 0.2, 0.5 * 0.3 + 0.5 * 0.3, 0.5 * 0.1 + 0.5 * 0.5]  # [0.4, 0.3, 0.3]
M_SKEW = [0.1 * 0.6 + 0.9 * 0.2, 0.3, 0.1 * 0.1 + 0.9 * 0.5]  # [0.24, 0.3, 0.46]
M_SKEW_REV = [0.1 * 0.2 + 0.9 * 0.6, 0.3, 0.1 * 0.5 + 0.9 * 0.1]  # [0.56, 0.3, 0.14]
EXPECTED_T1 = {
    "forward_kl": 0.6 * log(0.6 / 0.2) + 0.3 * log(0.3 / 0.3) + 0.1 * log(0.1 / 0.5),
    "reverse_kl": 0.2 * log(0.2 / 0.6) + 0.3 * log(0.3 / 0.3) + 0.5 * log(0.5 / 0.1),
    "jsd": 0.5 * (0.6 * log(0.6 / 0.4) + 0.3 * log(0.3 / 0.3) + 0.1 * log(0.1 / 0.3))
    + 0.5 * (0.2 * log(0.2 / 0.4) + 0.3 * log(0.3 / 0.3) + 0.5 * log(0.5 / 0.3)),
    "skew_kl": 0.6 * log(0.6 / 0.24) + 0.3 * log(0.3 / 0.3) + 0.1 * log(0.1 / 0.46),
    "skew_reverse_kl": 0.2 * log(0.2 / 0.56) + 0.3 * log(0.3 / 0.3) + 0.5 * log(0.5 / 0.14),
    "tv": 0.5 * (abs(0.6 - 0.2) + abs(0.3 - 0.3) + abs(0.1 - 0.5)),
}


def test_hand_mixtures_are_what_the_formulas_say():
    for a, b in zip(M_JSD, _mix(0.5, P_T, P_S)):
        assert a == pytest.approx(b)
    for a, b in zip(M_SKEW, _mix(0.1, P_T, P_S)):
        assert a == pytest.approx(b)
    for a, b in zip(M_SKEW_REV, _mix(0.1, P_S, P_T)):
        assert a == pytest.approx(b)
    assert EXPECTED_T1["tv"] == pytest.approx(0.4)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_token_divergence_hand_values_t1(divergence):
    s = torch.tensor([[log(p) for p in P_S]], dtype=torch.float64)
    t = torch.tensor([[log(p) for p in P_T]], dtype=torch.float64)
    got = token_divergence(s, t, divergence=divergence, temperature=1.0, beta=0.5, skew=0.1)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(EXPECTED_T1[divergence], rel=1e-12)
    assert got.item() == pytest.approx(_by_hand(divergence, P_S, P_T, 0.5, 0.1), rel=1e-12)
    # float32 inputs: float32 math
    got32 = token_divergence(s.float(), t.float(), divergence=divergence)
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(EXPECTED_T1[divergence], rel=1e-5)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("beta", [0.3, 0.5])
def test_token_divergence_hand_values_t2(divergence, beta):
    s_logits, t_logits = [0.5, -1.0, 2.0], [1.5, 0.0, -0.5]
    ps, pt = _softmax(s_logits, 2.0), _softmax(t_logits, 2.0)
    # at T=2 the distributions are softmax(logits / 2) and the result is multiplied by 2^2
    expected = 4.0 * _by_hand(divergence, ps, pt, beta, 0.2)
    got = token_divergence(
        torch.tensor([s_logits], dtype=torch.float64),
        torch.tensor([t_logits], dtype=torch.float64),
        divergence=divergence,
        temperature=2.0,
        beta=beta,
        skew=0.2,
    )
    assert got.item() == pytest.approx(expected, rel=1e-12)
    t1 = token_divergence(
        torch.tensor([s_logits], dtype=torch.float64) / 2,
        torch.tensor([t_logits], dtype=torch.float64) / 2,
        divergence=divergence,
        beta=beta,
        skew=0.2,
    )
    assert got.item() == pytest.approx(4.0 * t1.item(), rel=1e-12)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_token_divergence_zero_on_match_and_nonnegative(divergence):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(64, 11, generator=g, dtype=torch.float64) * 3
    t = torch.randn(64, 11, generator=g, dtype=torch.float64) * 3
    for temperature in (0.5, 1.0, 3.0):
        for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
            same = token_divergence(s, s.clone(), divergence=divergence, temperature=temperature, beta=beta)
            assert same.abs().max().item() < 1e-12
            # a shift of all logits by a constant is the same distribution
            shifted = token_divergence(s, s + 7.0, divergence=divergence, temperature=temperature, beta=beta)
            assert shifted.abs().max().item() < 1e-10
            d = token_divergence(s, t, divergence=divergence, temperature=temperature, beta=beta)
            assert torch.isfinite(d).all()
            assert (d > 0).all()


def test_jsd_beta_edges_follow_trl():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(5, 9, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 9, generator=g, dtype=torch.float64)
    fkl = token_divergence(s, t, divergence="forward_kl")
    rkl = token_divergence(s, t, divergence="reverse_kl")
    j0 = token_divergence(s, t, divergence="jsd", beta=0.0)
    j1 = token_divergence(s, t, divergence="jsd", beta=1.0)
    torch.testing.assert_close(j0, fkl, rtol=0, atol=1e-14)
    torch.testing.assert_close(j1, rkl, rtol=0, atol=1e-14)
    for value in (j0, j1):
        (grad,) = torch.autograd.grad(value.sum(), s)
        assert torch.isfinite(grad).all()
    # interior betas stay finite near the edges, are symmetric at 0.5 and bounded by log 2 (natural JSD bound)
    for beta in (1e-6, 1 - 1e-6):
        val = token_divergence(s, t, divergence="jsd", beta=beta)
        (grad,) = torch.autograd.grad(val.sum(), s)
        assert torch.isfinite(val).all() and torch.isfinite(grad).all()
    half = token_divergence(s, t, divergence="jsd", beta=0.5)
    torch.testing.assert_close(half, token_divergence(t, s.detach(), divergence="jsd", beta=0.5))
    assert (half <= math.log(2)).all()


def test_token_divergence_accepts_bf16_and_leading_dims():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 3, 17, generator=g)
    t = torch.randn(2, 3, 17, generator=g)
    out = token_divergence(s.bfloat16(), t.bfloat16(), divergence="reverse_kl")
    assert out.shape == (2, 3) and out.dtype == torch.float32
    ref = token_divergence(s.bfloat16().float(), t.bfloat16().float(), divergence="reverse_kl")
    torch.testing.assert_close(out, ref)


def test_token_divergence_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown divergence"):
        token_divergence(x, x, divergence="kl")
    with pytest.raises(ValueError, match="temperature"):
        token_divergence(x, x, temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        token_divergence(x, x, divergence="jsd", beta=1.5)
    with pytest.raises(ValueError, match="same shape"):
        token_divergence(x, torch.zeros(2, 4))


# ---------------------------------------------------------------------------------------------------------------
# chunked_token_kd == dense_token_kd
# ---------------------------------------------------------------------------------------------------------------


def _problem(n=53, hs=12, ht=16, v=40, vt=None, dtype=torch.float64, seed=0, bias=True, mask_every=4):
    g = torch.Generator().manual_seed(seed)
    vt = v if vt is None else vt
    sh = torch.randn(n, hs, generator=g, dtype=dtype).requires_grad_()
    sw = (torch.randn(v, hs, generator=g, dtype=dtype) * 0.5).requires_grad_()
    sb = (torch.randn(v, generator=g, dtype=dtype) * 0.1).requires_grad_() if bias else None
    th = torch.randn(n, ht, generator=g, dtype=dtype)
    tw = torch.randn(vt, ht, generator=g, dtype=dtype) * 0.5
    tb = torch.randn(vt, generator=g, dtype=dtype) * 0.1 if bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    if mask_every:
        labels[::mask_every] = -100
        labels[1:7] = -100
    return sh, sw, sb, th, tw, tb, labels


def _dense_from_heads(sh, sw, sb, th, tw, tb, labels, vocab_size=None, **kw):
    s_logits = sh @ sw.T + (sb if sb is not None else 0)
    t_logits = th @ tw.T + (tb if tb is not None else 0)
    if vocab_size is not None:
        s_logits, t_logits = s_logits[:, :vocab_size], t_logits[:, :vocab_size]
    return dense_token_kd(s_logits, t_logits, labels, **kw)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-9)])
def test_chunked_matches_dense(divergence, dtype, tol):
    sh, sw, sb, th, tw, tb, labels = _problem(dtype=dtype, seed=3)
    kw = dict(divergence=divergence, temperature=1.7, beta=0.3, skew=0.2)
    # 53 tokens, 38 supervised, chunk 5 (does not divide either)
    loss = chunked_token_kd(sh, sw, th, tw, labels, student_bias=sb, teacher_bias=tb, chunk_size=5, **kw)
    ref = _dense_from_heads(sh, sw, sb, th, tw, tb, labels, **kw)
    assert loss.dtype == dtype
    torch.testing.assert_close(loss, ref, rtol=tol, atol=tol)
    for got, want in zip(_grads(loss, (sh, sw, sb)), _grads(ref, (sh, sw, sb))):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    # masked tokens get exactly zero gradient
    (g_h,) = torch.autograd.grad(
        chunked_token_kd(sh, sw, th, tw, labels, student_bias=sb, teacher_bias=tb, chunk_size=5, **kw), sh
    )
    assert (g_h[labels == -100] == 0).all()
    assert (g_h[labels != -100].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd", "tv"])
def test_chunked_unmasked_3d_no_bias(divergence):
    sh, sw, _, th, tw, _, _ = _problem(n=24, dtype=torch.float64, seed=4, bias=False, mask_every=0)
    sh3 = sh.detach().reshape(4, 6, -1).requires_grad_()
    loss = chunked_token_kd(sh3, sw, th.reshape(4, 6, -1), tw, divergence=divergence, chunk_size=7)
    ref = dense_token_kd(sh3 @ sw.T, (th @ tw.T).reshape(4, 6, -1), divergence=divergence)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(_grads(loss, (sh3, sw)), _grads(ref, (sh3, sw))):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert sh3.shape == (4, 6, 12)


def test_chunked_value_without_grad_matches():
    sh, sw, sb, th, tw, tb, labels = _problem(dtype=torch.float32, seed=5)
    with_grad = chunked_token_kd(sh, sw, th, tw, labels, student_bias=sb, teacher_bias=tb, chunk_size=8)
    with torch.no_grad():
        no_grad = chunked_token_kd(sh, sw, th, tw, labels, student_bias=sb, teacher_bias=tb, chunk_size=8)
    assert not no_grad.requires_grad
    torch.testing.assert_close(with_grad.detach(), no_grad)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "skew_kl"])
def test_chunked_vocab_size_slicing(divergence):
    # teacher vocabulary padded from 40 to 48 rows; the student's from 40 to 44
    sh, sw, sb, th, tw, tb, labels = _problem(v=44, vt=48, dtype=torch.float64, seed=6)
    loss = chunked_token_kd(
        sh, sw, th, tw, labels, student_bias=sb, teacher_bias=tb, vocab_size=40, divergence=divergence, chunk_size=9
    )
    ref = _dense_from_heads(sh, sw, sb, th, tw, tb, labels, vocab_size=40, divergence=divergence)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    gs, gw, gb = _grads(loss, (sh, sw, sb))
    for got, want in zip((gs, gw, gb), _grads(ref, (sh, sw, sb))):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert gw.shape == sw.shape and (gw[40:] == 0).all() and (gb[40:] == 0).all()
    # identical to passing heads that were sliced beforehand
    presliced = chunked_token_kd(sh, sw[:40], th, tw[:40], labels, student_bias=sb[:40], teacher_bias=tb[:40],
                                 divergence=divergence)
    torch.testing.assert_close(presliced, loss, rtol=1e-10, atol=1e-10)


def test_vocab_mismatch_raises_naming_both_sizes():
    sh, sw, _, th, tw, _, labels = _problem(v=44, vt=48, bias=False)
    with pytest.raises(ValueError) as info:
        chunked_token_kd(sh, sw, th, tw, labels)
    assert "44" in str(info.value) and "48" in str(info.value)
    with pytest.raises(ValueError, match="vocab_size"):
        chunked_token_kd(sh, sw, th, tw, labels, vocab_size=46)


def test_other_bad_arguments():
    sh, sw, _, th, tw, _, labels = _problem(bias=False)
    with pytest.raises(ValueError, match="tokens"):
        chunked_token_kd(sh, sw, th[:-1], tw, labels)
    with pytest.raises(ValueError, match="labels"):
        chunked_token_kd(sh, sw, th, tw, labels[:-1])
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_kd(sh, sw, th, tw, labels, chunk_size=0)
    with pytest.raises(ValueError, match="normalizer"):
        chunked_token_kd(sh, sw, th, tw, labels, normalizer=0)
    with pytest.raises(ValueError, match="hidden size"):
        chunked_token_kd(sh, sw[:, :-1], th, tw, labels)


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_chunked_bf16(divergence):
    sh, sw, sb, th, tw, tb, labels = _problem(n=70, hs=32, ht=32, v=96, dtype=torch.float32, seed=7)
    b = [t.detach().bfloat16().requires_grad_(t.requires_grad) if t is not None else None
         for t in (sh, sw, sb, th, tw, tb)]
    bsh, bsw, bsb, bth, btw, btb = b
    loss = chunked_token_kd(bsh, bsw, bth, btw, labels, student_bias=bsb, teacher_bias=btb,
                            divergence=divergence, chunk_size=16)
    assert loss.dtype == torch.float32
    grads = _grads(loss, (bsh, bsw, bsb))
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3
    ref = _dense_from_heads(bsh, bsw, bsb, bth, btw, btb, labels, divergence=divergence)
    ref_grads = _grads(ref, (bsh, bsw, bsb))
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=1e-3)
    for got, want in zip(grads, ref_grads):
        rel = (got.float() - want.float()).norm() / want.float().norm()
        assert rel < 2e-2
    # and both are close to the float32 answer on the same (bf16-rounded) numbers
    f32 = [t.detach().float().requires_grad_(t.requires_grad) if t is not None else None for t in b]
    exact = _dense_from_heads(*f32, labels, divergence=divergence)
    torch.testing.assert_close(loss, exact, rtol=2e-2, atol=1e-3)


def _small_problem(n, **kw):
    """A problem small enough for gradcheck with every third token masked, so both supervised and masked tokens
    pass through the chunks (``_problem``'s fixed masked range would cover all of a few tokens)."""
    sh, sw, sb, th, tw, tb, labels = _problem(n=n, dtype=torch.float64, mask_every=0, **kw)
    labels[::3] = -100
    assert 0 < int((labels != -100).sum()) < n
    return sh, sw, sb, th, tw, tb, labels


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"])
def test_gradcheck_chunked(divergence):
    sh, sw, sb, th, tw, tb, labels = _small_problem(7, hs=3, ht=4, v=6, seed=8)  # tokens 1, 2, 4, 5 supervised

    def fn(h, w, b):
        return chunked_token_kd(h, w, th, tw, labels, student_bias=b, teacher_bias=tb, divergence=divergence,
                                temperature=1.5, chunk_size=2)

    assert fn(sh, sw, sb).item() > 1e-3  # a zero loss would make the check below vacuous
    assert torch.autograd.gradcheck(fn, (sh, sw, sb), eps=1e-6, atol=1e-7)


def test_gradcheck_chunked_tv():
    # tv is non-smooth only where p_t == p_s for some token, which random inputs avoid
    sh, sw, _, th, tw, _, labels = _small_problem(5, hs=3, ht=3, v=5, seed=9, bias=False)  # tokens 1, 2, 4

    def fn(h, w):
        return chunked_token_kd(h, w, th, tw, labels, divergence="tv", chunk_size=2)

    assert fn(sh, sw).item() > 1e-3  # a zero loss would make the check below vacuous
    assert torch.autograd.gradcheck(fn, (sh, sw), eps=1e-7)


def test_teacher_gets_no_gradient():
    sh, sw, sb, th, tw, tb, labels = _problem(dtype=torch.float32, seed=10)
    th.requires_grad_(), tw.requires_grad_(), tb.requires_grad_()
    for divergence in ("forward_kl", "jsd"):
        loss = chunked_token_kd(sh, sw, th, tw, labels, student_bias=sb, teacher_bias=tb, divergence=divergence)
        loss.backward()
        dense = _dense_from_heads(sh, sw, sb, th, tw, tb, labels, divergence=divergence)
        dense.backward()
    assert th.grad is None and tw.grad is None and tb.grad is None
    assert sh.grad is not None and sw.grad is not None and sb.grad is not None
    # teacher-only requires_grad: the loss is a constant
    loss = chunked_token_kd(sh.detach(), sw.detach(), th, tw, labels)
    assert not loss.requires_grad


def test_gradient_accumulation_parity():
    g = torch.Generator().manual_seed(11)
    b, t, h, v = 8, 10, 8, 30
    sh = torch.randn(b, t, h, generator=g, dtype=torch.float64)
    th = torch.randn(b, t, h, generator=g, dtype=torch.float64)
    tw = torch.randn(v, h, generator=g, dtype=torch.float64)
    w0 = torch.randn(v, h, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (b, t), generator=g)
    for i in range(b):  # sequence i has i + 2 supervised tokens: very uneven between the two halves
        labels[i, i + 2:] = -100
    total = int((labels != -100).sum())

    def grad_of(parts, normalizer):
        w = w0.clone().requires_grad_()
        hs = sh.clone().requires_grad_()
        for part in parts:
            loss = chunked_token_kd(hs[part], w, th[part], tw, labels[part], chunk_size=7,
                                    normalizer=normalizer)
            (loss / (len(parts) if normalizer is None and len(parts) > 1 else 1)).backward()
        return hs.grad, w.grad

    one_h, one_w = grad_of([slice(0, 8)], None)  # batch 8 x accumulation 1, default normalizer = total
    two_h, two_w = grad_of([slice(0, 4), slice(4, 8)], total)  # batch 4 x accumulation 2
    torch.testing.assert_close(two_w, one_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(two_h, one_h, rtol=1e-12, atol=1e-12)
    # the naive per-micro-batch mean (averaged over the 2 steps) is different: the test can fail
    naive_h, naive_w = grad_of([slice(0, 4), slice(4, 8)], None)
    assert not torch.allclose(naive_w, one_w, rtol=1e-3, atol=1e-6)
    # same parity for the dense reference
    w = w0.clone().requires_grad_()
    for part in (slice(0, 4), slice(4, 8)):
        dense_token_kd(sh[part] @ w.T, th[part] @ tw.T, labels[part], normalizer=torch.tensor(total)).backward()
    torch.testing.assert_close(w.grad, one_w, rtol=1e-12, atol=1e-12)


def _identity_head_tokens(*rows):
    """Hidden states that are the logits themselves (identity head): one row of log-probabilities per token."""
    return torch.tensor([[log(p) for p in row] for row in rows], dtype=torch.float64), torch.eye(3, dtype=torch.float64)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_token_kd_is_the_mean_over_supervised_tokens_by_hand(divergence):
    # token 0 compares P_S with P_T, token 1 the other way round (another value), token 2 is masked
    sh, w = _identity_head_tokens(P_S, P_T, [0.1, 0.1, 0.8])
    th, _ = _identity_head_tokens(P_T, P_S, [0.8, 0.1, 0.1])
    labels = torch.tensor([0, 1, -100])
    per_token = [_by_hand(divergence, P_S, P_T, 0.5, 0.1), _by_hand(divergence, P_T, P_S, 0.5, 0.1)]
    for loss in (chunked_token_kd(sh, w, th, w, labels, divergence=divergence, chunk_size=2),
                 dense_token_kd(sh, th, labels, divergence=divergence)):
        assert loss.item() == pytest.approx(sum(per_token) / 2, rel=1e-12)
    with_normalizer = chunked_token_kd(sh, w, th, w, labels, divergence=divergence, normalizer=4)
    assert with_normalizer.item() == pytest.approx(sum(per_token) / 4, rel=1e-12)


def test_hard_weight_adds_the_mean_next_token_cross_entropy_by_hand():
    sh, w = _identity_head_tokens(P_S, P_T, [0.1, 0.1, 0.8])
    th, _ = _identity_head_tokens(P_T, P_S, [0.8, 0.1, 0.1])
    labels = torch.tensor([2, 0, -100])
    kd = (_kl(P_T, P_S) + _kl(P_S, P_T)) / 2
    ce = (-log(P_S[2]) - log(P_T[0])) / 2  # the student's probability of each label
    assert chunked_token_ce(sh, w, labels).item() == pytest.approx(ce, rel=1e-12)
    combined = chunked_token_kd(sh, w, th, w, labels, hard_weight=0.5, chunk_size=2)
    assert combined.item() == pytest.approx(kd + 0.5 * ce, rel=1e-12)


def test_no_supervised_tokens_gives_zero():
    sh, sw, _, th, tw, _, labels = _problem(bias=False)
    loss = chunked_token_kd(sh, sw, th, tw, torch.full_like(labels, -100))
    assert loss.item() == 0.0
    (gw,) = torch.autograd.grad(loss, sw)
    assert (gw == 0).all()


# ---------------------------------------------------------------------------------------------------------------
# memory: the N x V logits never exist
# ---------------------------------------------------------------------------------------------------------------


class _LargestOutput(TorchDispatchMode):
    """Records the largest numel of any tensor produced by any op (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in tree_flatten(out)[0]:
            if isinstance(x, torch.Tensor) and x.numel() > self.largest:
                self.largest, self.op = x.numel(), func
        return out


def _largest_tensors(loss_fn, inputs):
    saved = []

    def pack(x):
        saved.append(x.numel())
        return x

    with _LargestOutput() as mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = loss_fn()
        loss.backward()
    assert all(t.grad is not None for t in inputs)
    return mode.largest, max(saved, default=0), loss


def test_chunked_never_materialises_full_logits():
    n, v, h, chunk = 4096, 32000, 64, 256
    g = torch.Generator().manual_seed(12)
    sh = torch.randn(n, h, generator=g).requires_grad_()
    sw = (torch.randn(v, h, generator=g) * 0.1).requires_grad_()
    th = torch.randn(n, h, generator=g)
    tw = torch.randn(v, h, generator=g) * 0.1
    largest, largest_saved, loss = _largest_tensors(
        lambda: chunked_token_kd(sh, sw, th, tw, chunk_size=chunk), (sh, sw)
    )
    assert torch.isfinite(loss) and loss.item() > 0
    assert largest < n * v / 4, largest
    assert largest_saved < n * v / 2, largest_saved
    assert largest >= chunk * v  # sanity: the chunk logits themselves were seen


def test_dense_reference_does_materialise_full_logits():
    # the same probe fails for dense_token_kd (smaller sizes: it really allocates N x V)
    n, v, h = 512, 4000, 32
    g = torch.Generator().manual_seed(13)
    sh = torch.randn(n, h, generator=g).requires_grad_()
    sw = torch.randn(v, h, generator=g).requires_grad_()
    th, tw = torch.randn(n, h, generator=g), torch.randn(v, h, generator=g)
    largest, largest_saved, _ = _largest_tensors(lambda: dense_token_kd(sh @ sw.T, th @ tw.T), (sh, sw))
    assert largest >= n * v
    assert largest_saved >= n * v


# ---------------------------------------------------------------------------------------------------------------
# top-k teacher
# ---------------------------------------------------------------------------------------------------------------


def test_topk_hand_value_v4_k2():
    # identity head: the hidden states are the student logits
    z = [0.1, 0.4, -0.3, 0.2]
    sh = torch.tensor([z], dtype=torch.float64)
    w = torch.eye(4, dtype=torch.float64)
    lp = torch.tensor([[log(0.3), log(0.5)]], dtype=torch.float64)  # teacher [0.5, 0.3, 0.15, 0.05], ids 1 and 0
    ids = torch.tensor([[1, 0]])
    q = _softmax(z, 1.0)
    expected = 0.5 * log(0.5 / q[0]) + 0.3 * log(0.3 / q[1]) + 0.2 * log(0.2 / (q[2] + q[3]))
    got = chunked_token_kd_topk(sh, w, lp, ids)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # temperature 2: student softmax(z / 2); teacher buckets re-normalised from [log .5, log .3, log .2] / 2
    q2 = _softmax(z, 2.0)
    raw = [0.5 ** 0.5, 0.3 ** 0.5, 0.2 ** 0.5]
    p2 = [r / sum(raw) for r in raw]
    expected2 = 4.0 * (p2[0] * log(p2[0] / q2[0]) + p2[1] * log(p2[1] / q2[1]) + p2[2] * log(p2[2] / (q2[2] + q2[3])))
    got2 = chunked_token_kd_topk(sh, w, lp, ids, temperature=2.0)
    assert got2.item() == pytest.approx(expected2, rel=1e-12)


def _bucket_kl(z, top_probs, ids):
    """Forward KL between the teacher's top-k-plus-tail buckets and the student's softmax(z) bucketed alike."""
    q = _softmax(z, 1.0)
    p_tail, q_tail = 1 - sum(top_probs), 1 - sum(q[i] for i in ids)
    return sum(p * log(p / q[i]) for p, i in zip(top_probs, ids)) + p_tail * log(p_tail / q_tail)


def test_topk_is_the_mean_over_supervised_tokens_by_hand():
    z = [[0.1, 0.4, -0.3, 0.2], [1.0, -1.0, 0.0, 0.5], [9.0, 9.0, 9.0, 9.0]]  # the third token is masked
    top = [[0.5, 0.3], [0.6, 0.1], [0.9, 0.05]]
    ids = [[1, 0], [0, 3], [2, 1]]
    sh, w = torch.tensor(z, dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    lp = torch.tensor(top, dtype=torch.float64).log()
    got = chunked_token_kd_topk(sh, w, lp, torch.tensor(ids), torch.tensor([0, 0, -100]), chunk_size=2)
    expected = (_bucket_kl(z[0], top[0], ids[0]) + _bucket_kl(z[1], top[1], ids[1])) / 2
    assert got.item() == pytest.approx(expected, rel=1e-12)


def _topk_problem(n=29, h=10, v=24, dtype=torch.float64, seed=14):
    g = torch.Generator().manual_seed(seed)
    sh = torch.randn(n, h, generator=g, dtype=dtype).requires_grad_()
    sw = (torch.randn(v, h, generator=g, dtype=dtype) * 0.5).requires_grad_()
    sb = (torch.randn(v, generator=g, dtype=dtype) * 0.1).requires_grad_()
    t_logits = torch.randn(n, v, generator=g, dtype=dtype) * 2
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::5] = -100
    return sh, sw, sb, t_logits, labels


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_full_k_equals_dense_forward_kl(dtype, tol, temperature):
    sh, sw, sb, t_logits, labels = _topk_problem(dtype=dtype)
    lp, ids = torch.log_softmax(t_logits, -1).topk(t_logits.shape[-1], dim=-1)
    loss = chunked_token_kd_topk(sh, sw, lp, ids, labels, student_bias=sb, temperature=temperature, chunk_size=4)
    ref = dense_token_kd(sh @ sw.T + sb, t_logits, labels, divergence="forward_kl", temperature=temperature)
    torch.testing.assert_close(loss, ref, rtol=tol, atol=tol)
    for got, want in zip(_grads(loss, (sh, sw, sb)), _grads(ref, (sh, sw, sb))):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_topk_smaller_k_finite_nonnegative_lower_bound():
    sh, sw, sb, t_logits, labels = _topk_problem(dtype=torch.float64, seed=15)
    v = t_logits.shape[-1]
    dense = dense_token_kd(sh @ sw.T + sb, t_logits, labels).item()
    log_probs = torch.log_softmax(t_logits, -1)
    for k in range(v - 1, 0, -1):
        lp, ids = log_probs.topk(k, dim=-1)
        loss = chunked_token_kd_topk(sh, sw, lp, ids, labels, student_bias=sb, chunk_size=6)
        grads = _grads(loss, (sh, sw, sb))
        assert math.isfinite(loss.item()) and loss.item() >= 0
        assert all(torch.isfinite(g).all() for g in grads)
        # bucketing the vocabulary can only lose information (data-processing inequality) at temperature 1
        assert loss.item() <= dense + 1e-12
    lp, ids = log_probs.topk(v - 1, dim=-1)
    near = chunked_token_kd_topk(sh, sw, lp, ids, labels, student_bias=sb)
    assert near.item() == pytest.approx(dense, rel=1e-12)  # a one-token tail bucket loses nothing


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_topk_gradcheck(temperature):
    sh, sw, sb, t_logits, labels = _topk_problem(n=6, h=3, v=7, seed=16)
    lp, ids = torch.log_softmax(t_logits, -1).topk(3, dim=-1)
    assert torch.autograd.gradcheck(
        lambda h, w, b: chunked_token_kd_topk(h, w, lp, ids, labels, student_bias=b, temperature=temperature,
                                              chunk_size=4),
        (sh, sw, sb),
        eps=1e-6,
        atol=1e-7,
    )


def test_topk_bad_arguments_and_no_teacher_grad():
    sh, sw, _, t_logits, labels = _topk_problem()
    lp, ids = torch.log_softmax(t_logits, -1).topk(4, dim=-1)
    with pytest.raises(ValueError, match="same shape"):
        chunked_token_kd_topk(sh, sw, lp[:, :3], ids, labels)
    with pytest.raises(ValueError, match="integer"):
        chunked_token_kd_topk(sh, sw, lp, ids.double(), labels)
    lp.requires_grad_()
    chunked_token_kd_topk(sh, sw, lp, ids, labels).backward()
    assert lp.grad is None and sw.grad is not None


# ---------------------------------------------------------------------------------------------------------------
# backward hands the forward's gradients over: the [V, H] weight gradient is never copied
# ---------------------------------------------------------------------------------------------------------------


class _Allocations(TorchDispatchMode):
    """numel of every new tensor produced by any op while active (views such as detach allocate nothing)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.sizes += [x.numel() for x in tree_flatten(out)[0] if isinstance(x, torch.Tensor)]
        return out


def _head_problem(seed=21, n=48, v=96, h=8):
    g = torch.Generator().manual_seed(seed)
    sh = torch.randn(n, h, generator=g, dtype=torch.float64).requires_grad_()
    sw = torch.randn(v, h, generator=g, dtype=torch.float64).requires_grad_()
    th, tw = torch.randn(n, h, generator=g, dtype=torch.float64), torch.randn(v, h, generator=g, dtype=torch.float64)
    return sh, sw, th, tw


def test_backward_allocates_no_weight_sized_tensor():
    sh, sw, th, tw = _head_problem()
    loss = chunked_token_kd(sh, sw, th, tw, divergence="jsd", chunk_size=16)
    with _Allocations() as mode:
        loss.backward()
    # before the fix backward returned grad * grad_output: a fresh [V, H] (and [N, H]) tensor at peak
    assert sw.numel() not in mode.sizes and sh.numel() not in mode.sizes
    dense_sh, dense_sw = sh.detach().clone().requires_grad_(), sw.detach().clone().requires_grad_()
    dense_token_kd(dense_sh @ dense_sw.T, th @ tw.T, divergence="jsd").backward()
    torch.testing.assert_close(sw.grad, dense_sw.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sh.grad, dense_sh.grad, rtol=1e-10, atol=1e-12)


def test_scaled_loss_and_second_backward_give_the_right_gradients():
    sh, sw, th, tw = _head_problem(seed=22)
    chunked_token_kd(sh, sw, th, tw).backward()
    once_sh, once_sw = sh.grad.clone(), sw.grad.clone()
    sh.grad = sw.grad = None
    loss = chunked_token_kd(sh, sw, th, tw)
    (2.5 * loss).backward(retain_graph=True)
    torch.testing.assert_close(sw.grad, 2.5 * once_sw, rtol=1e-12, atol=0)
    torch.testing.assert_close(sh.grad, 2.5 * once_sh, rtol=1e-12, atol=0)
    # the first backward handed its buffers over; a second one through the same graph recomputes them
    loss.backward()
    torch.testing.assert_close(sw.grad, 3.5 * once_sw, rtol=1e-12, atol=0)
    torch.testing.assert_close(sh.grad, 3.5 * once_sh, rtol=1e-12, atol=0)


def test_automatic_chunk_size_follows_the_vocabulary():
    from distill.losses.tokens import auto_chunk_size

    # 2**23 logits per chunk, rounded down to a power of two, kept within [16, 1024]
    assert auto_chunk_size(49_152) == 128
    assert auto_chunk_size(262_144) == 32
    assert auto_chunk_size(1_000) == 1024
    assert auto_chunk_size(10_000_000) == 16


def test_default_chunking_equals_one_chunk():
    torch.manual_seed(0)
    student_hidden, teacher_hidden = torch.randn(300, 8, dtype=torch.float64), torch.randn(300, 6, dtype=torch.float64)
    student_weight, teacher_weight = (torch.randn(70_000, 8, dtype=torch.float64),
                                      torch.randn(70_000, 6, dtype=torch.float64))
    labels = torch.zeros(300, dtype=torch.long)
    automatic = chunked_token_kd(student_hidden, student_weight, teacher_hidden, teacher_weight, labels)
    whole = chunked_token_kd(student_hidden, student_weight, teacher_hidden, teacher_weight, labels, chunk_size=300)
    assert torch.allclose(automatic, whole, rtol=1e-12, atol=0)
