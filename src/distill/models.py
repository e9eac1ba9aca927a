"""Build, load and export teachers and students: built-in small nets, Hugging Face models, any nn.Module.

Built-in models are rebuilt from their spec, so an exported built-in model is ``model.safetensors`` plus a
``config.json`` holding that spec. Hugging Face models are exported with ``save_pretrained`` (safetensors), so
``from_pretrained`` loads them. Nothing here unpickles: weights are safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from distill.checkpoint import writing
from distill.config import CNNSpec, HFConfigSpec, HFSpec, MLPSpec, SavedSpec
from distill.config.specs import HF_AUTO_CLASSES
from distill.errors import DistillError
from distill.model_sources import (
    check_hf_weights,
    check_model_folder,
    check_safetensors_file,
    resolve_hf_path,
)
from distill.nets import CONFIG_FILE, WEIGHTS_FILE, build_builtin

# A teacher built here starts from seed + this offset, so it never shares initial weights with a student of the
# same architecture (born-again generation 0, multi-teacher members, cache builds all use it).
TEACHER_SEED_OFFSET = 1000


def build_model(spec: MLPSpec | CNNSpec | HFSpec | SavedSpec | HFConfigSpec, *, input_shape: tuple[int, ...] | None,
                num_classes: int | None, vocab_size: int | None = None) -> nn.Module:
    """Build a model from its spec. ``input_shape`` (per sample), ``num_classes`` and, for causal LMs built from
    a config, ``vocab_size`` (the tokenizer's) come from the data."""
    if isinstance(spec, HFConfigSpec):
        from distill.causal_lm import build_from_config

        return build_from_config(spec, vocab_size=vocab_size, num_classes=num_classes)
    if isinstance(spec, (MLPSpec, CNNSpec)):
        return build_builtin(spec, input_shape=input_shape, num_classes=num_classes)
    if isinstance(spec, HFSpec):
        return load_hf_model(spec, num_classes=num_classes)
    if isinstance(spec, SavedSpec):
        return load_saved(spec.path)
    raise DistillError(f"unknown model spec {spec!r}")




def load_hf_model(spec: HFSpec, *, num_classes: int | None = None) -> nn.Module:
    import transformers

    transformers.utils.logging.disable_progress_bar()

    auto_class = getattr(transformers, HF_AUTO_CLASSES[spec.task])
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code, "revision": spec.revision}
    if spec.dtype != "float32":
        kwargs["dtype"] = spec.dtype if spec.dtype == "auto" else getattr(torch, spec.dtype)
    if spec.task == "sequence-classification" and num_classes is not None:
        # a checkpoint's head for another label set is replaced by a fresh one for the data's (fine-tuning then
        # trains it); the rest of the weights load as they are
        kwargs.update(num_labels=num_classes, ignore_mismatched_sizes=True)
    name_or_path = resolve_hf_path(spec.name_or_path)
    local = Path(name_or_path)
    if not local.exists() and (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1):
        raise DistillError(f"model folder {name_or_path!r} does not exist")
    if local.exists():  # a local folder: its files are checked here, not by the library's tracebacks
        _check_hf_config(local, check_model_folder(local, "Hugging Face"))
    if spec.task == "causal-lm" and local.is_dir():
        from transformers import AutoConfig

        from distill.causal_lm import check_fits_in_memory

        # Before loading: a model that cannot fit is refused from its config's parameter count alone.
        check_fits_in_memory(AutoConfig.from_pretrained(name_or_path, trust_remote_code=spec.trust_remote_code),
                             spec.dtype, f"model {spec.name_or_path!r}")
    if local.is_dir():
        check_hf_weights(local)
    try:
        return auto_class.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise DistillError(f"cannot load Hugging Face model {spec.name_or_path!r}: {error}".split("\n")[0]) from None


def _check_hf_config(folder: Path, config: dict[str, Any]) -> None:
    if not isinstance(config.get("model_type"), str):
        raise DistillError(f"{folder / CONFIG_FILE} has no model_type, so it is not a Hugging Face model config"
                           + (" (it is a distill-exported model: use kind: saved)" if "distill_model" in config
                              else "") + "; point name_or_path at a folder written by save_pretrained")


def is_hf_model(model: nn.Module) -> bool:
    return hasattr(model, "save_pretrained") and hasattr(model, "config")


def export_model(model: nn.Module, spec: Any, directory: str | Path, *, input_shape: tuple[int, ...] | None = None,
                 num_classes: int | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write a model so that it can be rebuilt without the recipe or the Python object.

    HF models: ``save_pretrained`` (a folder ``from_pretrained`` loads). Built-in models: safetensors plus the
    spec. Other modules: safetensors plus the class name, to be rebuilt by the user's code (we never import
    code named in a file)."""
    directory = Path(directory)
    with writing(directory):  # a full disk or a refused folder: one sentence naming the file, not a traceback
        directory.mkdir(parents=True, exist_ok=True)
    if is_hf_model(model):
        with writing(directory / WEIGHTS_FILE):
            model.save_pretrained(directory, safe_serialization=True)
        return directory
    with writing(directory / WEIGHTS_FILE):
        save_model(model, str(directory / WEIGHTS_FILE))
    config: dict[str, Any] = {"input_shape": list(input_shape) if input_shape else None, "num_classes": num_classes}
    if isinstance(spec, (MLPSpec, CNNSpec)):
        config["distill_model"] = spec.model_dump(mode="json")
    else:
        config["python_class"] = f"{type(model).__module__}.{type(model).__qualname__}"
    config.update(extra or {})
    with writing(directory / CONFIG_FILE):
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return directory


def load_saved(path: str | Path) -> nn.Module:
    """Load a model exported by ``export_model`` (built-in or HF)."""
    directory = Path(path)
    config = check_model_folder(directory, "saved")
    if config.get("quantization"):  # an int8 variant written by distill.compress
        from distill.quantized import load_quantized

        check_safetensors_file(directory / WEIGHTS_FILE)
        try:
            return load_quantized(directory)
        except (KeyError, ValueError, TypeError, RuntimeError, SafetensorError) as error:
            raise DistillError(f"{directory} holds an int8 model that cannot be rebuilt from {CONFIG_FILE} and "
                               f"{WEIGHTS_FILE}: {error!r}".split("\n")[0]) from None
    if "distill_model" not in config:
        if "python_class" in config:
            raise DistillError(f"{directory} holds weights of the Python class {config['python_class']}; build that "
                               f"module yourself and load {WEIGHTS_FILE} into it with safetensors.torch.load_model")
        _check_hf_config(directory, config)
        architectures = config.get("architectures") or [""]
        suffixes = {"ForCausalLM": "causal-lm", "ForMaskedLM": "masked-lm",
                    "ForSequenceClassification": "sequence-classification"}
        task = next((task for suffix, task in suffixes.items() if str(architectures[0]).endswith(suffix)), "base")
        return load_hf_model(HFSpec(name_or_path=str(directory), task=task))
    model = build_model(_saved_spec(directory, config), input_shape=tuple(config["input_shape"]),
                        num_classes=config["num_classes"])
    load_weights(model, directory / WEIGHTS_FILE)
    return model


def _saved_spec(directory: Path, config: dict[str, Any]) -> MLPSpec | CNNSpec:
    """The built-in model spec an exported ``config.json`` holds, or a DistillError naming the field."""
    spec_data = config["distill_model"]
    try:
        if not isinstance(spec_data, dict) or spec_data.get("kind") not in ("mlp", "cnn"):
            raise ValueError("distill_model.kind must be mlp or cnn")
        if not isinstance(config.get("input_shape"), list) or not isinstance(config.get("num_classes"), int):
            raise ValueError("input_shape (a list) and num_classes (a number) must be set")
        return MLPSpec(**spec_data) if spec_data["kind"] == "mlp" else CNNSpec(**spec_data)
    except (TypeError, ValueError) as error:
        raise DistillError(f"{directory / CONFIG_FILE} does not describe a model distill can rebuild: "
                           f"{error}".split("\n")[0] + "; re-export the model") from None


def load_weights(model: nn.Module, path: str | Path) -> None:
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    check_safetensors_file(path)
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as error:  # safetensors raises several types for shape/format problems
        raise DistillError(f"cannot load weights {path} into {type(model).__name__}: {error}".split("\n")[0]) from None
    if missing or unexpected:
        raise DistillError(f"weights {path} do not fit {type(model).__name__}: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")


def freeze_modules(model: nn.Module, paths: list[str], *, role: str = "student") -> None:
    """Keep the parameters under these module paths fixed during training. Frozen parameters never reach the
    optimizer (it takes only ``requires_grad`` ones), so they cost no AdamW state."""
    from distill.capture import closest_module_names

    modules = dict(model.named_modules())
    for path in paths:
        if path not in modules:
            raise DistillError(f"{role}.freeze: the {role} has no module {path!r}; closest module names: "
                               f"{closest_module_names(path, modules)}")
        if not any(True for _ in modules[path].parameters()):
            raise DistillError(f"{role}.freeze: module {path!r} of the {role} has no parameters")
        modules[path].requires_grad_(False)
    if paths and not any(parameter.requires_grad for parameter in model.parameters()):
        raise DistillError(f"{role}.freeze: {paths} leave the {role} nothing to train")


def count_parameters(model: nn.Module) -> int:
    """Parameters, including the int8 weights that quantized modules keep packed outside ``parameters()``: the
    one parameter count every table and check uses."""
    count = sum(parameter.numel() for parameter in model.parameters())
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            weight, bias = packed._weight_bias()
            count += weight.numel() + (bias.numel() if bias is not None else 0)
    return count


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """What a model is called with: the batch less its labels, sample ids and the teacher's own tokenisation."""
    from distill.data.tokens import TEACHER_PREFIX

    return {key: value for key, value in batch.items()
            if key not in ("labels", "sample_id") and not key.startswith(TEACHER_PREFIX)}


def forward_logits(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """Run a model on a batch: tensor datasets give ``{"inputs", "labels"}``, tokenised ones keyword inputs."""
    output = model(batch["inputs"]) if "inputs" in batch else model(**model_inputs(batch))
    return output.logits if hasattr(output, "logits") else output


def build_seeded(spec: Any, data: Any, seed: int, weights: str | None = None) -> nn.Module:
    """A model from its spec for ``data`` (input shape, classes, vocabulary), initialised from ``seed`` alone so
    that a resumed run rebuilds the same weights, then loaded from ``weights`` when given."""
    torch.manual_seed(seed)
    tokenizer = getattr(data, "tokenizer", None)
    model = build_model(spec, input_shape=data.input_shape, num_classes=data.num_classes,
                        vocab_size=len(tokenizer) if tokenizer is not None else None)
    if weights:
        load_weights(model, weights)
    return model


def build_teacher(recipe: Any, data: Any) -> nn.Module:
    """The recipe's teacher, as every command builds it (untrained when ``teacher.train`` trains it later)."""
    if recipe.teacher.model is None:
        raise DistillError("teacher.model is not set and no teacher module was passed")
    return build_seeded(recipe.teacher.model, data, recipe.seed + TEACHER_SEED_OFFSET, recipe.teacher.weights)


def build_student(recipe: Any, data: Any, teacher: nn.Module | None) -> nn.Module:
    """The recipe's student: derived from the teacher's layers (``student.from_teacher``) or built from its spec,
    with ``student.freeze`` applied."""
    if recipe.student.from_teacher is not None:
        from distill.derive import chosen_layers, derive_student

        if teacher is None:
            raise DistillError("student.from_teacher needs a teacher")
        student = derive_student(teacher, chosen_layers(recipe.student.from_teacher, teacher)).requires_grad_(True)
    elif recipe.student.model is not None:
        student = build_seeded(recipe.student.model, data, recipe.seed, recipe.student.weights)
    else:
        raise DistillError("student.model (or student.from_teacher) is not set and no student module was passed")
    if recipe.student.freeze:
        freeze_modules(student, recipe.student.freeze)
    return student


def check_outputs(models: dict[str, nn.Module | None], data: Any) -> None:
    """Run every model on two training samples before any training: teacher, student and data must agree on
    the number of classes, and a model that cannot take the inputs fails here, not after an hour."""
    if data.num_classes is None:
        return  # not a classifier: the trainer's probe batch checks the signals instead
    from distill.data.tokens import probe_batch

    student_data = data.for_student() if hasattr(data, "for_student") else data
    sizes = {}
    for name, model in models.items():
        if model is None:
            continue
        # a student with its own tokenizer reads its own tokenisation of the texts
        probe = probe_batch((data if name == "teacher" else student_data).train)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                sizes[name] = int(forward_logits(model, probe).shape[-1])
        except Exception as error:  # any failure here is the user's model meeting the user's data
            raise DistillError(f"the {name} cannot run on the training inputs (shape "
                               f"{tuple(probe['inputs'].shape) if 'inputs' in probe else 'tokenised'}): {error}"
                               .split("\n")[0]) from None
        finally:
            model.train(was_training)
    for name, size in sizes.items():
        if size != data.num_classes:
            raise DistillError(f"the {name} predicts {size} classes but the data has {data.num_classes}; teacher, "
                               "student and data must share one label set")
