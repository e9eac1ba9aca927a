"""Students derived from a Hugging Face teacher by keeping a subset of its transformer blocks.

``derive_student(teacher, layers)`` builds a new model of the teacher's own class from a copy of its config
with ``num_hidden_layers = len(layers)``; every non-layer weight (embeddings, final norm, pooler, heads) is
copied, and student block ``i`` is a copy of teacher block ``layers[i]`` (the DistilBERT initialisation).
The student is a plain Hugging Face model: ``save_pretrained`` / ``from_pretrained`` work as usual.

Layer choice (``default_layers``):

* ``default_layers(n)`` keeps every other block starting at the first: 12 -> [0, 2, 4, 6, 8, 10], 6 -> [0, 2, 4].
* ``default_layers(n, keep=k)`` keeps ``k`` blocks spread evenly over the stack, always including the first and
  the last (the last block feeds the final norm / head, so keeping it keeps the head's input familiar):
  ``round(i * (n - 1) / (k - 1))`` for ``i = 0..k-1`` (``keep=1`` -> [0]). 12 keep 6 -> [0, 2, 4, 7, 9, 11],
  which is the selection of Hugging Face's ``extract_distilbert.py``; 30 keep 8 -> [0, 4, 8, 12, 17, 21, 25, 29].

Supported: models with one stack of identical blocks whose length is ``config.num_hidden_layers`` (BERT family,
GPT-2, Llama and most decoder-only models). Encoder-decoder models (two stacks) are refused. Per-layer config
lists of length ``num_hidden_layers`` whose name mentions "layer" (e.g. ``layer_types``) are sliced along with
the blocks; integer thresholds such as Qwen2's ``max_window_layers`` are copied unchanged.
"""

from __future__ import annotations

import copy
import math
import operator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distill.errors import DistillError

if TYPE_CHECKING:
    import transformers

__all__ = ["derive_student", "default_layers", "find_layer_stack"]

# Per-layer config lists are recognised by name (a list of token ids may happen to have num_layers entries too).
_PER_LAYER_EXTRA = {"block_types", "attention_types"}


def _num_layers_from_config(config: Any) -> int | None:
    for name in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _require_hf(model: Any) -> None:
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise DistillError(
            f"from_teacher needs a Hugging Face transformer (a transformers.PreTrainedModel), but the teacher is a "
            f"{type(model).__name__}; derive students of other models by building them yourself."
        )


def find_layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted module path and the ``nn.ModuleList`` of the model's transformer blocks.

    The stack is the ``ModuleList`` of identical-class blocks whose length is ``config.num_hidden_layers``
    (``n_layer`` on GPT-2 style configs), e.g. ``bert.encoder.layer``, ``model.layers`` or ``transformer.h``.
    """
    config = getattr(model, "config", None)
    count = _num_layers_from_config(config) if config is not None else None
    if count is None:
        raise DistillError(
            f"Cannot find the transformer blocks of {type(model).__name__}: its config has no num_hidden_layers; "
            "from_teacher needs a Hugging Face transformer."
        )
    found: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and len(module) > 0:
            kinds = {type(block) for block in module}
            if len(kinds) == 1 and any(True for _ in module[0].parameters()):
                found.append((name, module))
    # A stack nested inside another candidate (rare) is not a second stack: keep the outermost ones.
    outer = [(n, m) for n, m in found if not any(n != o and n.startswith(o + ".") for o, _ in found)]
    if not outer:
        raise DistillError(
            f"Cannot find the transformer blocks of {type(model).__name__}: no nn.ModuleList of "
            f"{count} identical layers (config.num_hidden_layers) in the model."
        )
    if len(outer) > 1:
        names = ", ".join(n for n, _ in outer)
        raise DistillError(
            f"{type(model).__name__} has {len(outer)} stacks of {count} layers ({names}); deriving a student by "
            "layer selection supports models with a single stack (encoders or decoders, not encoder-decoders)."
        )
    return outer[0]


def default_layers(num_layers: int, keep: int | None = None) -> list[int]:
    """Teacher layers to keep: every other layer from the first, or ``keep`` layers spread from first to last.

    ``default_layers(12) == [0, 2, 4, 6, 8, 10]``; ``default_layers(12, keep=6) == [0, 2, 4, 7, 9, 11]``;
    ``default_layers(6, keep=2) == [0, 5]``; ``default_layers(30, keep=8) == [0, 4, 8, 12, 17, 21, 25, 29]``.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise DistillError(f"num_layers must be a positive integer, got {num_layers!r}.")
    if keep is None:
        return list(range(0, num_layers, 2))
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= num_layers:
        raise DistillError(f"keep must be an integer from 1 to the teacher's {num_layers} layers, got {keep!r}.")
    if keep == 1:
        return [0]
    step = (num_layers - 1) / (keep - 1)  # >= 1, so rounding half up keeps the indices strictly increasing
    return [int(math.floor(i * step + 0.5)) for i in range(keep)]


def chosen_layers(spec: Any, teacher: nn.Module) -> list[int]:
    """The teacher blocks a ``student.from_teacher`` spec keeps, in order."""
    return list(spec.layers) if spec.layers is not None else default_layers(len(find_layer_stack(teacher)[1]),
                                                                              spec.keep)


def _check_layers(layers: Any, num_layers: int) -> list[int]:
    try:
        items = list(layers)
    except TypeError:
        raise DistillError(f"layers must be a list of layer indices, got {layers!r}.") from None
    if not items:
        raise DistillError(f"layers is empty: keep at least one of the teacher's {num_layers} layers "
                           f"(indices 0..{num_layers - 1}).")
    checked: list[int] = []
    for item in items:
        try:
            if isinstance(item, bool):
                raise TypeError
            index = operator.index(item)
        except TypeError:
            raise DistillError(f"Layer index {item!r} in layers is not an integer.") from None
        if not 0 <= index < num_layers:
            raise DistillError(
                f"Layer index {index} in layers is out of range: the teacher has {num_layers} layers "
                f"(indices 0..{num_layers - 1})."
            )
        if checked and index <= checked[-1]:
            raise DistillError(
                f"Layer index {index} in layers comes after {checked[-1]}: layers must be strictly increasing "
                f"(no repeats), got {items}."
            )
        checked.append(index)
    return checked


def _slice_per_layer_lists(config: Any, layers: list[int], num_layers: int) -> None:
    """Slice config attributes that hold one entry per layer (e.g. ``layer_types``) to the kept layers.

    An attribute counts as per-layer when its name mentions "layer" (or is in ``_PER_LAYER_EXTRA``) and it is a
    list with exactly ``num_layers`` entries. Lists of layer *indices* (e.g. ``mlp_only_layers``) are not remapped.
    """
    for name, value in list(vars(config).items()):
        if name.startswith("_") or not ("layer" in name or name in _PER_LAYER_EXTRA):
            continue
        if isinstance(value, (list, tuple)) and len(value) == num_layers:
            setattr(config, name, type(value)(value[i] for i in layers))


def derive_student(teacher: transformers.PreTrainedModel,
                   layers: list[int] | None = None) -> transformers.PreTrainedModel:
    """A student of the teacher's class made of teacher blocks ``layers`` (default: every other block).

    All non-block weights are copied; tied embeddings stay tied; the student has the teacher's dtype, device and
    train/eval mode, and a deep copy of its config (and generation config) with ``num_hidden_layers = len(layers)``.
    """
    _require_hf(teacher)
    stack_name, stack = find_layer_stack(teacher)
    num_layers = len(stack)
    layers = default_layers(num_layers) if layers is None else _check_layers(layers, num_layers)

    config = copy.deepcopy(teacher.config)
    _slice_per_layer_lists(config, layers, num_layers)
    config.num_hidden_layers = len(layers)
    if _num_layers_from_config(config) != len(layers):
        raise DistillError(
            f"Cannot set the number of layers on {type(config).__name__}: num_hidden_layers did not take effect."
        )

    # Teacher state dict -> student state dict: non-block keys unchanged, block layers[i] renamed to block i.
    prefix = stack_name + "." if stack_name else ""
    rename = {old: new for new, old in enumerate(layers)}
    state: dict[str, torch.Tensor] = {}
    for key, value in teacher.state_dict().items():
        if key.startswith(prefix):
            index, _, rest = key[len(prefix):].partition(".")
            if index.isdigit():
                if int(index) in rename:
                    state[f"{prefix}{rename[int(index)]}.{rest}"] = value
                continue
        state[key] = value

    student = type(teacher)(config)
    student.to(dtype=teacher.dtype)
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:
        bad = (list(missing) + list(unexpected))[:3]
        raise DistillError(
            f"Cannot copy the teacher's weights into the derived {type(teacher).__name__}: parameter names differ "
            f"({', '.join(bad)})."
        )
    if getattr(config, "tie_word_embeddings", False):
        student.tie_weights()
    if getattr(teacher, "generation_config", None) is not None and hasattr(student, "generation_config"):
        student.generation_config = copy.deepcopy(teacher.generation_config)
    student.to(teacher.device)
    student.train(teacher.training)
    return student
