"""Every registered loss's value on one seeded batch, against tests/golden/loss_values.json.

The values were computed once from the code and stored, so a refactor of the losses (or of how they are
registered) that changes any number, or maps a name to another function, fails here even where no hand-computed
test reaches. Losses are called through the registry by name, as a recipe term calls them.

After an intended change of a value, regenerate the file and review its diff:

    DISTILL_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_loss_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from distill.capture import FinalHidden, TopKTeacher
from distill.losses import LOSSES, get_loss
from distill.losses.lm import teacher_topk

GOLDEN = Path(__file__).parent / "golden" / "loss_values.json"
REGENERATE = os.environ.get("DISTILL_REGENERATE_GOLDEN") == "1"
RTOL = 1e-5

BATCH, CLASSES, TOKENS, HEADS = 4, 5, 3, 2
LM_BATCH, LM_TOKENS, VOCAB = 2, 5, 11


# --------------------------------------------------------------------------- seeded inputs
# Each tensor has its own seed, so adding an input or a case never changes the values of the others.


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _probabilities(seed: int, *shape: int) -> torch.Tensor:
    return torch.softmax(_randn(seed, *shape), dim=-1)


def _labels(seed: int, *shape: int, classes: int) -> torch.Tensor:
    return torch.randint(0, classes, shape, generator=torch.Generator().manual_seed(seed))


def _student_logits() -> torch.Tensor:
    return _randn(1, BATCH, CLASSES)


def _teacher_logits() -> torch.Tensor:
    return _randn(2, BATCH, CLASSES) * 2  # a sharper teacher, so temperature matters


def _class_labels() -> torch.Tensor:
    return _labels(3, BATCH, classes=CLASSES)


def _head(seed: int, width: int) -> FinalHidden:
    hidden = _randn(seed, LM_BATCH, LM_TOKENS, width)
    return FinalHidden(hidden, _randn(seed + 1, VOCAB, width) * 0.5, _randn(seed + 2, VOCAB) * 0.1)


def _student_final() -> FinalHidden:
    return _head(40, 6)


def _teacher_final() -> FinalHidden:
    return _head(50, 8)


def _next_token_labels() -> torch.Tensor:
    labels = _labels(60, LM_BATCH, LM_TOKENS, classes=VOCAB)
    labels[0, :2] = -100  # a prompt: unsupervised positions must not count
    labels[1, -1] = -100  # padding
    return labels


def _cached_teacher(k: int) -> TopKTeacher:
    """The teacher as a teacher cache stores it: its top k per token, shaped [B, T, k]."""
    top = teacher_topk(_teacher_final(), k)
    shape = (LM_BATCH, LM_TOKENS)
    return TopKTeacher(top.logprobs.view(*shape, k), top.ids.view(*shape, k), top.log_tail.view(*shape))


def _pair(student: torch.Tensor, teacher: torch.Tensor) -> Callable[[], tuple[Any, ...]]:
    return lambda: (student, teacher)


# loss name -> what its positional parameters take on the shared batch
INPUTS: dict[str, Callable[[], tuple[Any, ...]]] = {
    "cross_entropy": lambda: (_student_logits(), _class_labels()),
    "soft_kl": lambda: (_student_logits(), _teacher_logits()),
    "soft_cross_entropy": lambda: (_student_logits(), _teacher_logits()),
    "teacher_label_ce": lambda: (_student_logits(), _teacher_logits()),
    "logit_mse": lambda: (_student_logits(), _teacher_logits()),
    "dkd": lambda: (_student_logits(), _teacher_logits(), _class_labels()),
    "multilabel_kd": lambda: (_student_logits(), _teacher_logits()),
    "multilabel_bce": lambda: (_student_logits(), (_randn(18, *_student_logits().shape) > 0).float()),
    "regression_mse": lambda: (_randn(19, BATCH, 1), _randn(20, BATCH)),
    "hint": _pair(_randn(10, BATCH, TOKENS, 6), _randn(11, BATCH, TOKENS, 6)),
    "cosine": _pair(_randn(10, BATCH, TOKENS, 6), _randn(11, BATCH, TOKENS, 6)),
    "attention_transfer": _pair(_randn(12, BATCH, 3, 4, 4), _randn(13, BATCH, 5, 4, 4)),
    "similarity_preserving": _pair(_randn(14, BATCH, 6), _randn(15, BATCH, 8)),
    "regression_kd": _pair(_randn(16, BATCH, 2), _randn(17, BATCH, 2)),
    "rkd_distance": _pair(_randn(18, BATCH, 6), _randn(19, BATCH, 8)),
    "rkd_angle": _pair(_randn(18, BATCH, 6), _randn(19, BATCH, 8)),
    "crd": _pair(_randn(20, BATCH, 6), _randn(21, BATCH, 6)),
    "similarity_kl": _pair(_randn(20, BATCH, 6), _randn(21, BATCH, 6)),
    "minilm_attention": _pair(_probabilities(30, BATCH, HEADS, TOKENS, TOKENS),
                              _probabilities(31, BATCH, HEADS, TOKENS, TOKENS)),
    "minilm_value_relation": _pair(_randn(32, BATCH, TOKENS, 4), _randn(33, BATCH, TOKENS, 6)),
    "attention_map": _pair(_probabilities(30, BATCH, HEADS, TOKENS, TOKENS),
                           _probabilities(31, BATCH, HEADS, TOKENS, TOKENS)),
    "token_kd": lambda: (_student_final(), _teacher_final(), _next_token_labels()),
    "token_ce": lambda: (_student_final(), _next_token_labels()),
    "sampled_kl": lambda: (_student_final(), _teacher_final(), _next_token_labels()),
    "peer_kl": lambda: (_randn(70, 3, BATCH, CLASSES),),
}

# loss name -> {variant: options}; "default" is the loss with its default options (plus the options it requires)
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "minilm_value_relation": {"default": {"num_relation_heads": 2}},
    "token_kd": {
        "default": {},
        "divergence=reverse_kl": {"divergence": "reverse_kl"},
        "divergence=jsd,beta=0.3": {"divergence": "jsd", "beta": 0.3},
        "divergence=skew_kl,skew=0.2": {"divergence": "skew_kl", "skew": 0.2},
        "divergence=skew_reverse_kl": {"divergence": "skew_reverse_kl"},
        "divergence=tv": {"divergence": "tv"},
        "temperature=2": {"temperature": 2.0},
        "top_k=4": {"top_k": 4},
        "hard_weight=0.5": {"hard_weight": 0.5},
        "cached top_k=4": {},
    },
    "sampled_kl": {
        "default": {},
        "estimator=topk,top_k=4": {"estimator": "topk", "top_k": 4},
        "estimator=topk,top_k=4,divergence=jsd": {"estimator": "topk", "top_k": 4, "divergence": "jsd"},
    },
}

# variants whose teacher is a teacher cache's top k (the value k), not the live teacher
CACHED_TEACHER = {("token_kd", "cached top_k=4"): 4}


def _variants(name: str) -> dict[str, dict[str, Any]]:
    return VARIANTS.get(name, {"default": {}})


def _value(name: str, variant: str) -> float:
    arguments = INPUTS[name]()
    if (name, variant) in CACHED_TEACHER:
        student, _, labels = arguments
        arguments = (student, _cached_teacher(CACHED_TEACHER[name, variant]), labels)
    value = get_loss(name).fn(*arguments, **_variants(name)[variant])
    assert value.dim() == 0 and torch.isfinite(value), (name, variant, value)
    return value.item()


def _all_values() -> dict[str, dict[str, float]]:
    missing = sorted(set(LOSSES) - set(INPUTS))
    assert not missing, f"registered losses with no inputs in INPUTS (add them, then regenerate): {missing}"
    return {name: {variant: _value(name, variant) for variant in _variants(name)} for name in sorted(LOSSES)}


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, float]]:
    if REGENERATE:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(_all_values(), indent=2, sort_keys=True) + "\n")
    return json.loads(GOLDEN.read_text())


CASES = [(name, variant) for name in sorted(INPUTS) for variant in _variants(name)]


def test_golden_file_has_every_registered_loss(golden):
    missing = sorted(set(LOSSES) - set(golden))
    assert not missing, f"registered but not in {GOLDEN.name} (regenerate it): {missing}"


def test_golden_file_has_no_loss_that_is_not_registered(golden):
    stale = sorted(set(golden) - set(LOSSES))
    assert not stale, f"in {GOLDEN.name} but no longer registered (regenerate it): {stale}"


def test_every_registered_loss_has_inputs():
    assert set(INPUTS) == set(LOSSES), (sorted(set(LOSSES) - set(INPUTS)), sorted(set(INPUTS) - set(LOSSES)))


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_golden_file_has_exactly_the_variants_tested(golden, name):
    assert set(golden.get(name, {})) == set(_variants(name))


@pytest.mark.parametrize("name,variant", CASES, ids=[f"{name}[{variant}]" for name, variant in CASES])
def test_value_matches_golden(golden, name, variant):
    expected = golden.get(name, {}).get(variant)
    assert expected is not None, f"{name} [{variant}] is not in {GOLDEN.name}; regenerate it"
    assert _value(name, variant) == pytest.approx(expected, rel=RTOL, abs=1e-12)
