"""The stage most pipelines are made of: train one model with the ordinary trainer, export it to
``run_dir/<stage>``, and on resume reload the exported model instead of training again."""

from __future__ import annotations

import copy
from typing import Any, Callable

from torch import nn

from distill.models import export_model, is_hf_model, load_saved, load_weights
from distill.objective import Objective
from distill.stages import RunContext, Stage, on_main

ObjectiveSource = Callable[[RunContext], Objective] | Any | None


def _objective(source: ObjectiveSource, context: RunContext) -> Objective:
    """A fresh objective each time (it owns the adapters it learns): hard labels when ``source`` is None."""
    if source is None:
        data = context.config.data
        return Objective.hard_labels(data.is_language_modeling, data.target_kind)
    if callable(source):
        return source(context)
    return Objective(source)


def export_trained(model: nn.Module, spec: Any, context: RunContext, name: str, data: Any) -> None:
    """Write a trained model under ``run_dir/<name>`` (main process only), with its tokenizer when the data has
    one, so the folder loads with ``from_pretrained`` as it is, and with the class names when the data has them
    (``id2label`` / ``label2id`` of a Hugging Face classifier, ``class_names`` in a built-in net's config)."""
    names = getattr(data, "class_names", None)
    kind = getattr(data, "target_kind", "class")
    extra = None if kind == "class" else {"target_kind": kind}
    if is_hf_model(model) and kind != "class":
        # pipeline() reads it: a sigmoid per label for multi-label models, the raw number for regression
        model.config.problem_type = {"multi_label": "multi_label_classification",  # type: ignore[union-attr]
                                     "regression": "regression"}[kind]
    if names and is_hf_model(model):
        label_classes(model, names)
    elif names:
        extra = {**(extra or {}), "class_names": list(names)}

    def write() -> None:
        export_model(model, spec, context.run_dir / name, input_shape=data.input_shape, num_classes=data.num_classes,
                     extra=extra)
        if getattr(data, "tokenizer", None) is not None:
            data.tokenizer.save_pretrained(str(context.run_dir / name))
    on_main(write)


def label_classes(model: nn.Module, names: list[str]) -> None:
    """Name the classes of a Hugging Face classifier, so that ``pipeline()`` answers with names, not LABEL_3."""
    config = model.config  # type: ignore[attr-defined]
    if getattr(config, "num_labels", None) == len(names):
        config.id2label = dict(enumerate(names))
        config.label2id = {label: index for index, label in enumerate(names)}


def train_stage(name: str, *, model: str, does: str, training: Any, seed: int, spec: Any = None,
                objective: ObjectiveSource = None, teacher: str | None = None, data: str = "data",
                copy_model: bool = False, output: str | None = None, frozen: bool = False,
                batches: Callable[[RunContext], Any] | None = None) -> Stage:
    """A stage that trains artifact ``model`` (a copy of it with ``copy_model``) against artifact ``teacher`` on
    the training split of artifact ``data``, validates on its validation split, and writes the result as
    artifact ``output`` (default: the stage's name). ``frozen`` results are teachers of later stages.
    ``training`` and ``objective`` may be functions of the run context, for settings that depend on what
    earlier stages produced (a vocabulary size, a dataset's length). ``batches(context)`` gives the trainer's
    batch source, for stages that make their micro-batches as they go (on-policy samples)."""
    output = output or name

    def produced(context: RunContext, trained: nn.Module) -> None:
        trained.eval()
        context.artifacts[output] = trained.requires_grad_(False) if frozen else trained

    def run(context: RunContext) -> dict[str, Any]:
        from distill.trainer import epoch_batches, fit

        initial = copy.deepcopy(context[model]) if copy_model else context[model]
        dataset = context[data]
        settings = training(context) if callable(training) else training
        result = fit(initial, dataset.train, objective=_objective(objective, context), training=settings, stage=name,
                     run_dir=context.run_dir, seed=seed, teacher=context[teacher] if teacher else None,
                     val_dataset=dataset.val, resume=context.resume, show_progress=context.show_progress,
                     batches=batches(context) if batches is not None else epoch_batches)
        export_trained(result.model, spec, context, name, dataset)
        produced(context, result.model)
        return {"steps": result.steps, "wall_seconds": round(result.wall_seconds, 3),
                "resumed_from_step": result.resumed_from_step}

    def restore(context: RunContext, done: dict[str, Any]) -> None:
        initial = context[model]
        if spec is not None or is_hf_model(initial):
            produced(context, load_saved(context.run_dir / name))
            return
        initial = copy.deepcopy(initial) if copy_model else initial
        load_weights(initial, context.run_dir / name)
        produced(context, initial)

    reads = (model, data, *((teacher,) if teacher else ()))
    return Stage(name, does, run, reads=reads, writes=(output,),
                 files=(f"{name}/ (exported model)", f"checkpoints/{name}/"), restore=restore)
