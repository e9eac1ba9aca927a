"""The loss registry: losses declare their flags where they are defined, and the objective acts on the flags."""

from __future__ import annotations

import pytest
import torch

from distill.config import ObjectiveConfig, TermConfig
from distill.losses import LOSSES, get_loss, register_loss
from distill.losses.logits import soft_kl
from distill.objective import Objective

# What the objective did by name before the flags existed: the flags must say exactly the same.
SOFTENING = {"soft_kl", "soft_cross_entropy", "multilabel_kd", "dkd", "token_kd", "peer_kl"}
QUERY_MASK = {"minilm_attention", "minilm_value_relation"}


@pytest.fixture
def scratch_names():
    """Names registered by a test, removed afterwards so no other test sees them."""
    names: list[str] = []
    yield names
    for name in names:
        LOSSES.pop(name, None)


def test_flags_declared_at_the_definitions_match_the_old_name_sets():
    assert {name for name, info in LOSSES.items() if info.softens} == SOFTENING
    assert {name for name, info in LOSSES.items() if info.query_mask} == QUERY_MASK


def test_needs_teacher_still_comes_from_the_signature():
    assert not get_loss("cross_entropy").needs_teacher and not get_loss("peer_kl").needs_teacher
    assert get_loss("soft_kl").needs_teacher and get_loss("dkd").inputs == ("student", "teacher", "labels")


def test_register_loss_is_a_decorator_that_returns_the_function(scratch_names):
    scratch_names.append("scratch_softening")

    @register_loss("scratch_softening", softens=True)
    def scratch(student_logits, teacher_logits, *, temperature: float = 2.0):
        """A scratch loss.

        More text."""
        return (student_logits - teacher_logits).pow(2).mean() * temperature

    info = get_loss("scratch_softening")
    assert info.fn is scratch and info.softens and not info.query_mask
    assert info.inputs == ("student", "teacher") and info.options == {"temperature": 2.0}
    assert info.doc == "A scratch loss."


def test_a_flag_without_its_option_is_refused(scratch_names):
    scratch_names += ["scratch_no_temperature", "scratch_no_mask"]
    with pytest.raises(ValueError, match="softens=True.*'temperature'"):
        register_loss("scratch_no_temperature", softens=True)(lambda student_logits, teacher_logits: 0)
    with pytest.raises(ValueError, match="query_mask=True.*'mask'"):
        register_loss("scratch_no_mask", query_mask=True)(lambda student_attention, teacher_attention: 0)
    assert "scratch_no_temperature" not in LOSSES and "scratch_no_mask" not in LOSSES


def test_two_functions_under_one_name_are_refused_but_the_same_one_again_is_not():
    with pytest.raises(ValueError, match="two losses registered as 'soft_kl'"):
        register_loss("soft_kl")(lambda student_logits, teacher_logits: 0)
    assert get_loss("soft_kl").fn is soft_kl
    register_loss("soft_kl", softens=True)(soft_kl)  # what re-importing the module does
    assert get_loss("soft_kl").fn is soft_kl and get_loss("soft_kl").softens


def test_objective_temperature_goes_to_softening_losses_only():
    objective = Objective(ObjectiveConfig(temperature=3.0, terms=[
        TermConfig(loss="soft_kl"), TermConfig(loss="crd", student="embedding", teacher="embedding"),
        TermConfig(name="own", loss="dkd", temperature=5.0)]))
    options = {term.name: term.options for term in objective.terms}
    assert options["soft_kl"] == {"temperature": 3.0}
    assert options["crd"] == {}  # CRD's contrastive temperature keeps its own default
    assert options["own"] == {"temperature": 5.0}  # a term's own temperature wins


def test_attention_mask_reaches_4d_signals_of_query_mask_losses_only():
    objective = Objective(ObjectiveConfig(terms=[
        TermConfig(loss="minilm_attention", student="attention", teacher="attention"),
        TermConfig(loss="cosine", student="attention", teacher="attention")]))
    attention = {"attention": torch.softmax(torch.randn(2, 1, 3, 3), dim=-1)}
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    minilm, cosine = objective.terms
    assert torch.equal(objective._options(minilm, attention, mask)["mask"], mask.bool())
    assert "mask" not in objective._options(cosine, attention, mask)  # an attention map is compared whole
