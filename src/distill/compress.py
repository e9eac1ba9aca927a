"""Compression after distillation: dynamic int8 quantization and magnitude pruning with a short distillation
fine-tune, each variant exported next to the student and evaluated like every other model.

The int8 variants are :mod:`distill.quantized`.

Pruning is ``torch.nn.utils.prune.global_unstructured`` with L1 magnitude over every Linear/Conv weight: the
smallest weights of the whole network go first, so layers lose what they can spare. The masks stay on during
the fine-tune (pruned weights stay zero) and are then made permanent.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn
from torch.nn.utils import prune

from distill.config import CNNSpec, MLPSpec, Recipe
from distill.errors import DistillError
from distill.models import is_hf_model
from distill.objective import Objective
from distill.quantized import QUANTIZATION, export_quantized, quantize_int8
from distill.training_stage import export_trained

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(module, "weight") for module in model.modules() if isinstance(module, PRUNABLE)]


def prune_magnitude(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the ``sparsity`` share of smallest-magnitude weights across all Linear/Conv layers, in place. The
    pruning masks stay attached (so a fine-tune keeps the zeros) until ``make_pruning_permanent``."""
    targets = _prunable(model)
    if not targets:
        raise DistillError("pruning found no Linear or Conv layer in the student")
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    return model


def make_pruning_permanent(model: nn.Module) -> nn.Module:
    for module, name in _prunable(model):
        if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
            prune.remove(module, name)
    return model


def weight_sparsity(model: nn.Module) -> float:
    """Share of exactly-zero weights over the prunable (Linear/Conv) weights."""
    weights = [getattr(module, name).detach() for module, name in _prunable(model)]
    zeros = sum(int((weight == 0).sum()) for weight in weights)
    return zeros / max(sum(weight.numel() for weight in weights), 1)


# ------------------------------------------------------------------------------------------ a run's variants
def _add_variant(context: Any, name: str, model: nn.Module, info: dict[str, Any]) -> None:
    context.artifacts[name] = model
    context.artifacts.setdefault("variants", {})[name] = info


def _quantize_stage(name: str, source: str, config: Recipe) -> Any:
    """int8 of artifact ``source``: seconds of work, so it always runs (no done marker)."""
    from distill.stages import Stage, on_main

    def run(context: Any) -> None:
        quantized = quantize_int8(context[source])
        data = context.data.for_student()
        on_main(lambda: export_quantized(quantized, config.student.model, context.run_dir / name,
                                         input_shape=data.input_shape, num_classes=data.num_classes,
                                         class_names=data.class_names))
        facts = context.artifacts.get("variants", {}).get(source, {}) if source != "student" else {}
        _add_variant(context, name, quantized, {"quantization": QUANTIZATION,
                                                # export_quantized writes built-in nets only
                                                "exported": isinstance(config.student.model, (MLPSpec, CNNSpec)),
                                                **facts})
    return Stage(name, f"dynamic int8 quantization of {source}", run, reads=(source,), writes=(name,),
                 files=(f"{name}/",))


def _prune_stage(config: Recipe, has_teacher: bool) -> Any:
    """Magnitude pruning of the student, then a short fine-tune with the run's objective (resumable)."""
    from distill.stages import Stage
    from distill.trainer import fit

    settings = config.compress
    assert settings is not None and settings.prune is not None
    name, spec = "student_pruned", config.student.model
    base_info = {"sparsity_target": settings.prune, "finetune_steps": settings.finetune_steps}

    def run(context: Any) -> dict[str, Any]:
        pruned = prune_magnitude(copy.deepcopy(context["student"]).train(), settings.prune)
        info: dict[str, Any] = dict(base_info)
        if settings.finetune_steps:
            if is_hf_model(pruned) and context.get("teacher") is None:
                raise DistillError("the pruning fine-tune needs the teacher")
            training = config.training.model_copy(update={
                "max_steps": settings.finetune_steps, "epochs": None,
                "lr": settings.finetune_lr or config.training.lr / 10, "warmup_steps": 0, "eval_every": None,
                "checkpoint_every": None})
            result = fit(pruned, context.data.for_student().train, objective=Objective(config.objective),
                         training=training, stage=name, run_dir=context.run_dir, seed=config.seed,
                         teacher=context.get("teacher"),
                         val_dataset=None, resume=context.resume, show_progress=context.show_progress)
            pruned = result.model
            info.update({"steps": result.steps, "wall_seconds": round(result.wall_seconds, 3)})
        make_pruning_permanent(pruned)
        export_trained(pruned, spec, context, name, context.data.for_student())
        info["sparsity"] = round(weight_sparsity(pruned), 6)
        _add_variant(context, name, pruned.eval(), info)
        return info

    def restore(context: Any, done: dict[str, Any]) -> None:
        from distill.models import load_weights

        pruned = make_pruning_permanent(prune_magnitude(copy.deepcopy(context["student"]).train(), settings.prune))
        load_weights(pruned, context.run_dir / name)
        _add_variant(context, name, pruned.eval(), {**base_info, **done})

    reads = ("student",) + ("teacher",) * has_teacher
    return Stage(name, f"prune {settings.prune:.0%} of the student's weights by magnitude, fine-tune "
                 f"{settings.finetune_steps} steps", run, reads=reads, writes=(name,),
                 files=(f"{name}/", f"checkpoints/{name}/"), restore=restore)


def compress_stages(config: Recipe, has_teacher: bool) -> list[Any]:
    """The variants ``config.compress`` asks for, as stages after the student's: ``student_int8``,
    ``student_pruned`` (pruned, then fine-tuned with the run's objective), and ``student_pruned_int8`` when both
    are asked. Each is exported under ``run_dir/<name>`` and evaluated like every other model."""
    settings = config.compress
    assert settings is not None
    stages = []
    if settings.quantize == "int8":
        stages.append(_quantize_stage("student_int8", "student", config))
    if settings.prune is not None:
        stages.append(_prune_stage(config, has_teacher))
        if settings.quantize == "int8":
            stages.append(_quantize_stage("student_pruned_int8", "student_pruned", config))
    return stages
