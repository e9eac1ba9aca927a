"""Compression after distillation: dynamic int8 quantization and magnitude pruning with a short distillation
fine-tune, each variant exported next to the student and evaluated like every other model.

Quantization uses PyTorch's own eager API, ``torch.ao.quantization.quantize_dynamic`` (int8 weights, activations
quantized on the fly, fbgemm/x86 kernels on CPU). In torch 2.13 it still works but warns that it is deprecated
in favour of torchao, whose int8 paths target GPUs and ``torch.compile``; the warning is silenced here, and
swapping the backend is this one file. Only ``nn.Linear`` layers are quantized (dynamic quantization has no
convolution kernels), so a CNN keeps its convolutions in float32.

Pruning is ``torch.nn.utils.prune.global_unstructured`` with L1 magnitude over every Linear/Conv weight: the
smallest weights of the whole network go first, so layers lose what they can spare. The masks stay on during
the fine-tune (pruned weights stay zero) and are then made permanent.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.utils import prune

from distill.config import CNNSpec, MLPSpec, Recipe
from distill.errors import DistillError
from distill.models import CONFIG_FILE, WEIGHTS_FILE, build_model, export_model, is_hf_model
from distill.objective import Objective

QUANTIZATION = "dynamic-int8"
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _quiet_quantization() -> Any:
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
    return context


def quantize_int8(model: nn.Module) -> nn.Module:
    """A dynamically int8-quantized copy of ``model`` (Linear layers); the original is left untouched."""
    from torch.ao.quantization import quantize_dynamic

    float_model = copy.deepcopy(model).eval().cpu()
    if not any(isinstance(module, nn.Linear) for module in float_model.modules()):
        raise DistillError("int8 dynamic quantization found no Linear layer to quantize in the student")
    context = _quiet_quantization()
    try:
        return quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8)
    finally:
        context.__exit__(None, None, None)


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


# ------------------------------------------------------------------------------------------ int8 export
def export_quantized(model: nn.Module, spec: Any, directory: Path, *, input_shape: tuple[int, ...] | None,
                     num_classes: int | None) -> Path | None:
    """Write an int8 model as safetensors (int8 weights with their scales and zero points, float tensors as
    they are) plus the float spec, so ``load_quantized`` rebuilds it. Only built-in nets have a spec to rebuild
    from; other models are evaluated in memory and not exported (returns None)."""
    if not isinstance(spec, (MLPSpec, CNNSpec)):
        return None
    tensors: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if isinstance(value, tuple):  # packed (weight, bias) of a quantized Linear
            prefix = key.removesuffix("._packed_params._packed_params")
            weight, bias = value[0], value[1]
            if weight.qscheme() != torch.per_tensor_affine:
                raise DistillError(f"int8 export supports per-tensor quantized weights, {prefix} is {weight.qscheme()}")
            tensors[f"{prefix}.weight_int8"] = weight.int_repr().contiguous()
            tensors[f"{prefix}.weight_scale"] = torch.tensor([weight.q_scale()], dtype=torch.float64)
            tensors[f"{prefix}.weight_zero_point"] = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
            if bias is not None:
                tensors[f"{prefix}.bias"] = bias.detach().contiguous()
        elif isinstance(value, Tensor) and not key.endswith(("._packed_params.dtype",)):
            tensors[key] = value.detach().contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / WEIGHTS_FILE))
    config = {"distill_model": spec.model_dump(mode="json"), "input_shape": list(input_shape) if input_shape else None,
              "num_classes": num_classes, "quantization": QUANTIZATION}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return directory


def load_quantized(directory: str | Path) -> nn.Module:
    """Rebuild a model written by ``export_quantized``: the float architecture, quantized the same way, with the
    stored int8 weights put back exactly."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    spec_data = config["distill_model"]
    spec = MLPSpec(**spec_data) if spec_data["kind"] == "mlp" else CNNSpec(**spec_data)
    float_model = build_model(spec, input_shape=tuple(config["input_shape"]), num_classes=config["num_classes"])
    model = quantize_int8(float_model)
    tensors = load_file(str(directory / WEIGHTS_FILE))
    context = _quiet_quantization()
    try:
        for name, module in model.named_modules():
            if isinstance(module, DynamicLinear):
                weight = torch._make_per_tensor_quantized_tensor(
                    tensors.pop(f"{name}.weight_int8"), float(tensors.pop(f"{name}.weight_scale")),
                    int(tensors.pop(f"{name}.weight_zero_point")))
                module.set_weight_bias(weight, tensors.pop(f"{name}.bias", None))
                for key in (f"{name}.scale", f"{name}.zero_point"):
                    tensors.pop(key, None)
        # what stayed float (convolutions, norms): copied one by one, as the quantized modules' own state-dict
        # loading expects keys that only quantized modules have
        current = model.state_dict()
        unknown = sorted(key for key in tensors if key not in current or not isinstance(current[key], Tensor))
        if unknown:
            raise DistillError(f"{directory / WEIGHTS_FILE} holds tensors the int8 model lacks: {unknown[:5]}")
        with torch.no_grad():
            for key, value in tensors.items():
                current[key].copy_(value)
    finally:
        context.__exit__(None, None, None)
    return model.eval()


# ------------------------------------------------------------------------------------------ a run's variants
def _add_variant(context: Any, name: str, model: nn.Module, info: dict[str, Any]) -> None:
    context.artifacts[name] = model
    context.artifacts.setdefault("variants", {})[name] = info


def _quantize_stage(name: str, source: str, config: Recipe) -> Any:
    """int8 of artifact ``source``: seconds of work, so it always runs (no done marker)."""
    from distill.stages import Stage, on_main

    def run(context: Any) -> None:
        quantized = quantize_int8(context[source])
        data = context.data
        on_main(lambda: export_quantized(quantized, config.student.model, context.run_dir / name,
                                         input_shape=data.input_shape, num_classes=data.num_classes))
        facts = context.artifacts.get("variants", {}).get(source, {}) if source != "student" else {}
        _add_variant(context, name, quantized, {"quantization": QUANTIZATION,
                                                # export_quantized writes built-in nets only
                                                "exported": isinstance(config.student.model, (MLPSpec, CNNSpec)),
                                                **facts})
    return Stage(name, f"dynamic int8 quantization of {source}", run, reads=(source,), writes=(name,),
                 files=(f"{name}/",))


def _prune_stage(config: Recipe, has_teacher: bool) -> Any:
    """Magnitude pruning of the student, then a short fine-tune with the run's objective (resumable)."""
    from distill.stages import Stage, on_main
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
            result = fit(pruned, context.data.train, objective=Objective(config.objective), training=training,
                         stage=name, run_dir=context.run_dir, seed=config.seed, teacher=context.get("teacher"),
                         val_dataset=None, resume=context.resume, show_progress=context.show_progress)
            pruned = result.model
            info.update({"steps": result.steps, "wall_seconds": round(result.wall_seconds, 3)})
        make_pruning_permanent(pruned)
        data = context.data
        on_main(lambda: export_model(pruned, spec, context.run_dir / name, input_shape=data.input_shape,
                                     num_classes=data.num_classes))
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
