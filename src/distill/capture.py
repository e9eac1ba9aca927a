"""Named signals from inside a model, taken with forward hooks: no model is edited or rewritten.

A signal name is one of
- ``logits``: the model's output (``output.logits`` for HF models, the tensor itself for plain modules);
- an attribute of an HF model's output, optionally indexed: ``last_hidden_state``, ``pooler_output``,
  ``hidden_states[3]``, ``attentions[-1]`` (the model is asked for hidden states / attentions only when needed);
- ``mean_pooled``: the attention-mask-weighted mean of ``last_hidden_state`` (a sentence embedding);
- ``final_hidden``: a causal LM's last hidden states with its output head (:class:`FinalHidden`), for losses that
  form logits chunk by chunk. The model's base (``get_decoder()``) is run instead of the whole LM, so the
  ``B x T x V`` logits are never built (``logits``, if also asked for, is then computed from the head);
- a module path, ``encoder.layer.1`` (its output; the first element when it returns a tuple) or
  ``encoder.layer.1:input`` (its first positional input).
Hooks are registered once on the unwrapped model, so they keep working under DDP/FSDP wrapping.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from distill.data.tokens import TEACHER_PREFIX
from distill.errors import DistillError

_INDEXED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\[(?P<index>-?\d+)\]$")
# Batch keys that are not model inputs: the labels, and the sample ids a teacher cache is looked up by.
NOT_MODEL_INPUTS = {"labels", "sample_id", "teacher_scores"}  # the last: an endpoint teacher's, fetched ahead
OUTPUT_ATTRIBUTES = {"last_hidden_state", "pooler_output", "hidden_states", "attentions", "logits"}


class FinalHidden(NamedTuple):
    """A causal LM's final hidden states ``[B, T, H]`` (after the last norm: the head's input) and its output
    head (``weight [V, H]``, ``bias [V]`` or None). ``hidden @ weight.T + bias`` are the logits."""
    hidden: Tensor
    weight: Tensor
    bias: Tensor | None


class TopKTeacher(NamedTuple):
    """A causal LM teacher as a teacher cache stores it, per token: its ``k`` largest log-probabilities
    ``[B, T, k]`` (temperature 1, in decreasing order), their token ids ``[B, T, k]`` and the log of the mass of
    every other token ``[B, T]``. What ``final_hidden`` becomes when the teacher is read from a cache."""
    logprobs: Tensor
    ids: Tensor
    log_tail: Tensor
    token_logprobs: Tensor | None = None  # [B, T] of each position's label, from a server (the sampled_kl loss)

    @property
    def k(self) -> int:
        return int(self.ids.shape[-1])


@dataclass(frozen=True)
class SignalSpec:
    name: str
    kind: str                  # "logits" | "output" | "mean_pooled" | "module"
    attribute: str | None = None
    index: int | None = None
    path: str | None = None
    use_input: bool = False


def parse_signal(name: str) -> SignalSpec:
    if name == "logits":
        return SignalSpec(name, "logits")
    if name == "mean_pooled":
        return SignalSpec(name, "mean_pooled")
    if name == "final_hidden":
        return SignalSpec(name, "final_hidden")
    match = _INDEXED.match(name)
    if match and match["name"] in OUTPUT_ATTRIBUTES:
        return SignalSpec(name, "output", attribute=match["name"], index=int(match["index"]))
    if name in OUTPUT_ATTRIBUTES:
        return SignalSpec(name, "output", attribute=name)
    path, _, suffix = name.partition(":")
    if suffix not in ("", "input", "output"):
        raise DistillError(f"signal {name!r}: after ':' only 'input' or 'output' is allowed")
    return SignalSpec(name, "module", path=path, use_input=suffix == "input")


def _first_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state
    raise DistillError(f"captured value of type {type(value).__name__} holds no tensor")


def closest_module_names(path: str, module_names: Any) -> str:
    """The model's module names nearest to a path that does not exist (its first ones when none is near)."""
    names = list(module_names)
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    return ", ".join(close) if close else ", ".join(names[1:8]) + ", ..."


class SignalCapture:
    """Reads the named signals of one model on each forward pass."""

    def __init__(self, model: nn.Module, names: set[str] | list[str], *, role: str = "model"):
        self.model, self.role = model, role
        self.specs = [parse_signal(name) for name in sorted(set(names))]
        self._captured: dict[str, Tensor] = {}
        self._handles = []
        module_names = dict(model.named_modules())
        for spec in self.specs:
            if spec.kind != "module":
                continue
            if spec.path not in module_names:
                raise DistillError(f"the {role} has no module {spec.path!r} (signal {spec.name!r}); closest module "
                                   f"names: {closest_module_names(spec.path or '', module_names)}")
            self._handles.append(module_names[spec.path].register_forward_hook(self._hook(spec)))

    @property
    def needs_hidden_states(self) -> bool:
        # a classifier (a model with a head) returns no last_hidden_state: mean_pooled reads its last hidden states
        headed = getattr(self.model, "base_model", self.model) is not self.model
        return any(spec.attribute == "hidden_states" or (spec.kind == "mean_pooled" and headed)
                   for spec in self.specs)

    @property
    def needs_final_hidden(self) -> bool:
        return any(spec.kind == "final_hidden" for spec in self.specs)

    @property
    def needs_attentions(self) -> bool:
        return any(spec.attribute == "attentions" for spec in self.specs)

    def _hook(self, spec: SignalSpec):
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            self._captured[spec.name] = _first_tensor(inputs if spec.use_input else output)
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Run ``model`` (the wrapped or unwrapped one) on ``batch`` and return every requested signal."""
        self._captured = {}
        if "inputs" in batch:
            output = model(batch["inputs"])
        else:
            extra = {}
            if self.needs_hidden_states:
                extra["output_hidden_states"] = True
            if self.needs_attentions:
                extra["output_attentions"] = True
            inputs = {key: value for key, value in batch.items()
                      if key not in NOT_MODEL_INPUTS and not key.startswith(TEACHER_PREFIX)}
            if self.needs_final_hidden:
                head = _output_head(model, self.role)
                output = model.get_decoder()(**inputs, **extra)
                final = FinalHidden(output.last_hidden_state, head.weight, head.bias)
            else:
                output = model(**inputs, **extra)
        signals: dict[str, Any] = {}
        for spec in self.specs:
            if spec.kind == "final_hidden":
                signals[spec.name] = final
            elif spec.kind == "logits" and self.needs_final_hidden:
                signals[spec.name] = torch.nn.functional.linear(final.hidden, final.weight, final.bias)
            elif spec.kind == "logits":
                signals[spec.name] = output.logits if hasattr(output, "logits") else _first_tensor(output)
            elif spec.kind == "module":
                signals[spec.name] = self._captured[spec.name]
            elif spec.kind == "mean_pooled":
                hidden = (output.hidden_states[-1] if getattr(output, "last_hidden_state", None) is None
                          and getattr(output, "hidden_states", None) else
                          _output_attribute(output, "last_hidden_state", self.role))
                mask = batch.get("attention_mask")
                mask = torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                signals[spec.name] = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
            else:
                value = _output_attribute(output, spec.attribute, self.role)
                if spec.index is not None:
                    try:
                        value = value[spec.index]
                    except IndexError:
                        raise DistillError(f"signal {spec.name!r}: the {self.role} returned only {len(value)} "
                                           f"{spec.attribute}") from None
                signals[spec.name] = value
        self._captured = {}
        return signals


def _output_head(model: nn.Module, role: str) -> nn.Linear:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or not hasattr(model, "get_decoder"):
        raise DistillError(f"signal 'final_hidden': the {role} ({type(model).__name__}) is not a causal LM with a "
                           "linear output head")
    return head


def _output_attribute(output: Any, attribute: str | None, role: str) -> Any:
    value = getattr(output, attribute or "", None)
    if value is None or (isinstance(value, tuple) and not value):
        hint = (" Load an HF model with attn_implementation='eager' so it can return attentions."
                if attribute == "attentions" else "")
        raise DistillError(f"the {role} does not return {attribute!r}.{hint}")
    return value
