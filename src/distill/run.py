"""A whole run, as one Python call: ``distill.train(recipe)``.

recipe -> validated config -> data -> a plan of stages (``plan`` here for a plain run, ``distill.modes`` for a
regime) -> ``distill.stages.run_stages``. The plain run's stages:

  prepare   build the teacher and the student, check them on two training samples (always runs)
  general   general distillation on unlabelled text, before the teacher is fine-tuned (``student.general``)
  teacher   train the teacher on hard labels (when ``teacher.train`` is set)
  pair      derive the student from the trained teacher (``student.from_teacher``), check the pair
  baseline  the student's architecture on hard labels alone (when ``baseline: true``)
  student   the distilled student
  student_finetuned  the distilled student fine-tuned on gold labels (``student.finetune``)
  compress  int8 / pruned variants (when ``compress:`` is set)
  evaluate  every model side by side -> ``metrics.json``
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.checkpoint import write_json_atomic
from distill.config import Recipe, load_recipe
from distill.config.sections import GENERATED
from distill.data.recipe_data import RunData, load_data
from distill.errors import DistillError
from distill.evaluate.run_models import evaluate_run_models, evaluation_task
from distill.models import (
    TEACHER_SEED_OFFSET,
    build_student,
    build_teacher,
    check_outputs,
)
from distill.objective import Objective
from distill.run_folder import check_run_dir
from distill.stages import (
    RunContext,
    Stage,
    describe_plan,
    is_main_process,
    on_main,
    run_stages,
)
from distill.training_stage import train_stage

FINETUNED = "student_finetuned"  # distil, then fine-tune (student.finetune): its stage, folder and metrics row
OFF_POLICY = "off_policy"  # on_policy.compare_off_policy: the same student on the data alone, beside it

__all__ = ["RunData", "RunResult", "load_data", "plan", "train", "check_run_dir", "evaluate_run_models",
           "evaluation_task", "TEACHER_SEED_OFFSET"]


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    student: nn.Module
    teacher: nn.Module | None
    baseline: nn.Module | None


# ------------------------------------------------------------------------------------------ the plain run's stages
def _has_teacher_model(config: Recipe, given: set[str]) -> bool:
    """Whether the run holds a teacher module. With a cache the teacher is not needed to train, only to derive a
    student from its layers."""
    return "teacher" in given or config.teacher.endpoint is not None or (
        config.teacher.model is not None and (config.teacher.cache is None or config.student.from_teacher is not None))


def _prepare(context: RunContext) -> None:
    config, data, artifacts = context.config, context.data, context.artifacts
    language_model = config.data.is_language_modeling
    if "teacher" not in artifacts and config.teacher.endpoint is not None:
        from distill.generation.scoring import EndpointTeacher

        artifacts["teacher"] = EndpointTeacher(config.teacher.endpoint, data.tokenizer)
        artifacts["teacher"].check_tokenizer()
    elif "teacher" not in artifacts and _has_teacher_model(config, set()):
        artifacts["teacher"] = build_teacher(config, data)
    teacher = artifacts.get("teacher")
    if "student" not in artifacts and config.student.model is not None:  # a derived student waits for the teacher
        artifacts["student"] = build_student(config, data.for_student(), None)
    elif "student" not in artifacts and config.student.general is not None and teacher is not None:
        # the general step distils from the teacher as loaded, so the student is derived from it before it trains
        artifacts["student"] = build_student(config, data.for_student(), teacher)
    if config.data.is_text:
        from distill.text_models import check_text_models

        check_text_models(config, data, {"teacher": teacher, "student": artifacts.get("student")})
        if config.teacher.cache is None:
            artifacts["student-data"] = data.for_student()
        if config.data.transfer is not None:
            artifacts["transfer-data"] = _transfer_data(config, data, teacher)
        if config.student.general is not None:
            from distill.general_distillation import general_data

            artifacts["general-data"] = general_data(config, data)
    # one probe pass over the models that exist, before any of them trains
    check_outputs({"teacher": teacher if isinstance(teacher, nn.Module) else None,
                   "student": artifacts.get("student")}, data)
    if language_model:
        from distill.causal_lm import check_context, check_tokenizers

        check_context(teacher, "teacher", config.data.max_length)
        if artifacts.get("student") is not None:  # before a teacher trains for it
            check_context(artifacts["student"], "student", config.data.max_length)
        if data.tokenizer is not None and config.teacher.model is not None:
            check_tokenizers(config, data.tokenizer)  # before a teacher is trained here, not after
    if config.teacher.cache is not None:
        # The student learns from stored teacher outputs, looked up by sample id; no teacher is run.
        from distill.cache.use import cached_teacher_for_run

        artifacts["teacher-cache"], artifacts["student-data"] = cached_teacher_for_run(config, data, teacher)
    _probe_objective(context)


def _transfer_data(config: Recipe, data: RunData, teacher: nn.Module | None) -> RunData:
    """The student's training texts plus those only the teacher labels (``data.transfer``), tokenised as the
    student reads them; validation and test stay the gold ones."""
    from dataclasses import replace

    from distill.data.text_transfer import IGNORED_LABEL, transfer_texts
    from distill.data.tokens import TokenizedTexts

    student_data = data.for_student()
    gold = student_data.train
    added, facts = transfer_texts(config, teacher, data.tokenizer, gold.texts, config.seed)
    data.summary["transfer"] = facts
    # no gold label: ignored by cross_entropy (-100), NaN for the losses on float targets
    ignored = {"class": IGNORED_LABEL, "regression": float("nan")}.get(
        data.target_kind, [float("nan")] * (data.num_classes or 0))
    train = TokenizedTexts([*gold.texts, *added], gold.tokenizer, max_length=config.data.max_length,
                           labels=[*gold.labels, *[ignored] * len(added)],
                           teacher_tokenizer=gold.teacher_tokenizer)
    return replace(student_data, train=train)


def _probe_objective(context: RunContext) -> None:
    """The student's objective tried on the models as built, before the teacher trains: a term naming a module or
    signal a model lacks, or signals no projection can reconcile, fails now rather than after the teacher's
    stage. A student derived from the teacher is derived from the untrained one for the probe, then dropped (the
    run derives it again from the trained teacher in ``pair``)."""
    config, data, artifacts = context.config, context.data, context.artifacts
    cache = config.teacher.cache is not None
    teacher = artifacts.get("teacher-cache") if cache else artifacts.get("teacher")
    student = artifacts.get("student")
    if student is None and config.student.from_teacher is not None and artifacts.get("teacher") is not None:
        with torch.random.fork_rng(devices=[]):
            student = build_student(config, data, artifacts["teacher"])
    if config.objective is None or student is None:
        return
    if teacher is None and config.needs_teacher():
        return  # refused by the plan already; nothing to probe against
    objective = config.objective
    if config.data.is_language_modeling and isinstance(teacher, nn.Module) and data.tokenizer is not None:
        from distill.causal_lm import check_pair, with_vocab_size

        objective = with_vocab_size(objective, check_pair(config, data.tokenizer, teacher, student))
    from distill.data.tokens import probe_batch
    from distill.trainer import probe_objective

    probe_objective(student, Objective(objective), teacher, probe_batch(artifacts.get("student-data", data).train))
    if config.student.general is not None:
        from distill.general_distillation import general_objective

        probe_objective(student, Objective(general_objective(context)), teacher,
                        probe_batch(artifacts["general-data"].train))


def _pair(context: RunContext) -> None:
    """The student derived from the (trained) teacher, and the checks that need both models."""
    config, data, artifacts = context.config, context.data, context.artifacts
    teacher = artifacts.get("teacher")
    if "student" not in artifacts:
        artifacts["student"] = build_student(config, data.for_student(), teacher)
        check_outputs({"teacher": teacher, "student": artifacts["student"]}, data)  # the others: in prepare
    student = artifacts["student"]
    objective_config = config.objective
    if config.data.is_language_modeling:
        from distill.causal_lm import check_context, check_pair, with_vocab_size

        check_context(student, "student", config.data.max_length)
        if isinstance(teacher, nn.Module) and data.tokenizer is not None:
            artifacts["vocab-size"] = check_pair(config, data.tokenizer, teacher, student)
            objective_config = with_vocab_size(config.objective, artifacts["vocab-size"])
    if config.on_policy is not None:
        from distill.on_policy import check_prompt_room

        check_prompt_room(artifacts.get("student-data", data).train, config.on_policy.sampling.max_new_tokens,
                          {role: getattr(getattr(model, "config", None), "max_position_embeddings", None)
                           for role, model in (("student", student), ("teacher", teacher)) if model is not None})
    artifacts["objective"] = objective_config


def _evaluate(context: RunContext) -> None:
    config, data, artifacts, run_dir = context.config, context.data, context.artifacts, context.run_dir
    models = {name: artifacts[name] for name in ("teacher", "baseline", OFF_POLICY, "student", FINETUNED,
                                                 *artifacts.get("variants", {}))
              if isinstance(artifacts.get(name), nn.Module)}  # an endpoint teacher is not evaluated here
    metrics = evaluate_run_models(config, models, data, run_dir, show_progress=context.show_progress,
                                  vocab_size=artifacts.get("vocab-size"))
    if artifacts.get("variants"):
        metrics["compression_variants"] = artifacts["variants"]
    metrics.update({
        "recipe": config.name, "seed": config.seed,
        "steps": context.stages.get("student", context.stages.get("teacher", {})).get("steps"),
        "stages": {name: facts for name, facts in context.stages.items()
                   if name in ("generate", "filter", "general", "teacher", "baseline", OFF_POLICY, "student",
                               FINETUNED)},
        "data": data.summary, "wall_seconds": round(time.perf_counter() - context.started, 3),
    })
    on_main(lambda: write_json_atomic(run_dir / "metrics.json", metrics))
    artifacts["metrics"] = metrics
    if not (context.show_progress and is_main_process()):
        return
    if evaluation_task(config, data) == "language-modeling":
        from distill.evaluate.lm import print_lm_summary

        print_lm_summary(metrics, run_dir)
    else:
        from distill.evaluate.report import print_summary

        print_summary(metrics, run_dir)


def plan(config: Recipe, given: set[str] | frozenset[str] = frozenset()) -> list[Stage]:
    """The stages of a plain run of ``config``, from the recipe alone (nothing is built). ``given`` names the
    modules passed from Python (``teacher``, ``student``)."""
    if config.data is None:
        raise DistillError("the recipe has a generate section and no data: it makes teacher data, it trains nothing. "
                           "Run distill generate RECIPE -o DATA")
    if config.data.dataset == GENERATED and "data" not in given:
        from distill.generation.stages import generation_stages

        return [*generation_stages(config), *plan(config, {*given, "data"})]
    if config.mode is not None:
        from distill.modes import plan as mode_plan

        return mode_plan(config, given)
    if not config.has_student and "student" not in given:
        return _teacher_only_plan(config, set(given))
    if config.objective is None:
        raise DistillError("stage 'student' reads the objective section, and the recipe has none: add one (e.g. "
                           "objective: {alpha: 0.9, temperature: 4}), or remove the student section to train and "
                           "evaluate the teacher alone")
    if "teacher" not in given and config.teacher.model is None and config.teacher.cache is None \
            and config.teacher.endpoint is None and config.needs_teacher():
        raise DistillError("teacher.model is not set and no teacher module was passed")
    language_model = config.data.is_language_modeling
    has_teacher = _has_teacher_model(config, set(given))
    general = config.student.general is not None
    if general and not has_teacher:
        raise DistillError("student.general distils from the teacher's hidden states, and the run has no teacher "
                           "model: set teacher.model (or pass a teacher)")
    built = [name for name in ("teacher", "student") if name not in given
             and (name == "teacher" and has_teacher
                  or name == "student" and (config.student.from_teacher is None or general))]
    cache = ("teacher-cache", "student-data") if config.teacher.cache is not None else ()
    # text: the student may read the texts with its own tokenizer (data.student_tokenizer), so it has its own data
    student_data = "student-data" if cache or config.data.is_text else "data"
    if config.data.transfer is not None and not config.needs_teacher():
        raise DistillError("data.transfer adds texts only the teacher labels, and no objective term reads the "
                           "teacher: add one (e.g. objective: {alpha: 0.8}), or drop data.transfer")
    stages = [Stage("prepare", f"build {' and '.join(built) or 'nothing'}; check the models on two training samples"
                    + ("; open the teacher cache" if cache else ""), _prepare, reads=("data", *given),
                    writes=(*built, *(cache or ("student-data",) * (student_data != "data")),
                            *("transfer-data",) * (config.data.transfer is not None), *("general-data",) * general))]
    if general:
        from distill.general_distillation import general_stage

        stages.append(general_stage(config))
    if has_teacher and config.teacher.train is not None:
        stages.append(train_stage("teacher", model="teacher", does="train the teacher on "
                                  + ("next-token cross-entropy" if language_model else "hard labels"),
                                  training=config.teacher.train, seed=config.seed + TEACHER_SEED_OFFSET,
                                  spec=config.teacher.model, frozen=True))
    pair_reads = ("teacher",) * has_teacher + ("student",) * (config.student.from_teacher is None)
    stages.append(Stage("pair", ("derive the student from the teacher's layers; " if config.student.from_teacher
                                 else "") + "check teacher and student together", _pair, reads=pair_reads,
                        writes=("student", "objective")))
    if config.baseline:
        stages.append(train_stage("baseline", model="student", copy_model=True, training=config.training,
                                  seed=config.seed, spec=config.student.model, data=student_data,
                                  does="the student's architecture on hard labels alone, "
                                       "from the same initial weights"))
    distilled_from = "teacher-cache" if cache else ("teacher" if has_teacher else None)
    stages += _distillation_stages(config, distilled_from, student_data)
    if config.student.finetune is not None:
        stages.append(train_stage(FINETUNED, model="student", copy_model=True, training=config.student.finetune,
                                  seed=config.seed, spec=config.student.model, data=student_data,
                                  does="fine-tune the distilled student on the gold labels alone"))
    if config.compress is not None:
        from distill.compress import compress_stages

        stages += compress_stages(config, has_teacher)
    stages.append(Stage("evaluate", "evaluate every model on the test set side by side", _evaluate,
                        reads=("student",), writes=("metrics",), files=("metrics.json",)))
    return stages


def _distillation_stages(config: Recipe, teacher: str | None, student_data: str) -> list[Stage]:
    """The student's stage, and before it the off-policy comparison an on-policy recipe may ask for."""
    stages, on_policy = [], config.on_policy
    objective = lambda context: Objective(context["objective"])  # noqa: E731
    if on_policy is not None and on_policy.compare_off_policy:
        stages.append(train_stage(OFF_POLICY, model="student", copy_model=True, teacher=teacher, data=student_data,
                                  training=config.training, seed=config.seed, spec=config.student.model,
                                  objective=objective,
                                  does="the same student and objective on the training data alone (off-policy), "
                                       "from the same initial weights"))
    stages.append(train_stage(
        "student", model="student", teacher=teacher,
        data="transfer-data" if config.data.transfer is not None else student_data, training=config.training,
        seed=config.seed, spec=config.student.model, objective=objective,
        batches=None if on_policy is None else _on_policy_source(on_policy),
        does="distil the student with the recipe's objective"
        + (" from the teacher cache" if teacher == "teacher-cache" else "")
        + ("" if on_policy is None else " on its own samples" + (
            f" ({on_policy.lmbda:g} of the steps; the others on the data)" if on_policy.lmbda < 1 else ""))))
    return stages


def _on_policy_source(on_policy: Any) -> Any:
    def batches(context: RunContext) -> Any:
        from distill.on_policy import on_policy_batches

        return on_policy_batches(on_policy, context.data.tokenizer)
    return batches


def _teacher_only_plan(config: Recipe, given: set[str]) -> list[Stage]:
    """A recipe without a student: train the teacher (fine-tune it, for a pretrained one) and evaluate it."""
    if config.objective is not None:
        raise DistillError("the recipe has an objective section but no student: set student.model (or "
                           "student.from_teacher), or remove the objective to train and evaluate the teacher alone")
    if config.teacher.train is None or (config.teacher.model is None and "teacher" not in given):
        raise DistillError("the recipe has no student section, so it can only train its teacher, and "
                           + ("teacher.train is not set" if config.teacher.model is not None or "teacher" in given
                              else "teacher.model is not set") + ": there is nothing to run")
    built = () if "teacher" in given else ("teacher",)
    return [Stage("prepare", "build the teacher; check it on two training samples", _prepare,
                  reads=("data", *sorted(given)), writes=built),
            train_stage("teacher", model="teacher", does="train the teacher on "
                        + ("next-token cross-entropy" if config.data.is_language_modeling else "hard labels"),
                        training=config.teacher.train, seed=config.seed + TEACHER_SEED_OFFSET,
                        spec=config.teacher.model, frozen=True),
            Stage("evaluate", "evaluate the teacher on the test set", _evaluate, reads=("teacher",),
                  writes=("metrics",), files=("metrics.json",))]


def _given_modules(teacher: nn.Module | None, student: nn.Module | None) -> dict[str, nn.Module]:
    return {name: module for name, module in (("teacher", teacher), ("student", student)) if module is not None}


def train(recipe: str | Path | dict[str, Any] | Recipe, *, output: str | Path | None = None, resume: bool = False,
          overrides: list[str] | None = None, teacher: nn.Module | None = None, student: nn.Module | None = None,
          data: RunData | None = None, show_progress: bool = True) -> RunResult:
    """Run a recipe end to end. ``teacher``/``student`` (any ``nn.Module``) and ``data`` replace what the recipe
    would build, for models and datasets that live in Python."""
    started = time.perf_counter()
    config = load_recipe(recipe, overrides)
    given = _given_modules(teacher, student)
    generated = config.data is not None and config.data.dataset == GENERATED and data is None
    stages = plan(config, set(given) | ({"data"} if data is not None else set()))
    run_dir = check_run_dir(config, output, resume)
    if not generated:  # generated data is read by the plan's data stage, once it exists
        data = data or load_data(config)
    context = RunContext(config, run_dir, data, resume, show_progress,
                         artifacts={**({"data": data} if data is not None else {}), **given}, started=started)
    run_stages(stages, context)
    artifacts = context.artifacts
    return RunResult(run_dir, artifacts["metrics"], artifacts.get("student"), artifacts.get("teacher"),
                     artifacts.get("baseline"))


def describe(recipe: str | Path | dict[str, Any] | Recipe, overrides: list[str] | None = None) -> str:
    """The stages ``recipe`` will run, in order, with what each reads and writes; nothing is built."""
    config = load_recipe(recipe, overrides)
    generated = config.data is not None and config.data.dataset == GENERATED
    return describe_plan(plan(config), set() if generated else {"data"})
