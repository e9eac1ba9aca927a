"""The whole recipe: every section, and the checks that span sections."""

from __future__ import annotations

import yaml
from pydantic import Field, model_validator

from distill.config.base import StrictSection
from distill.config.generation import FilterSpec, GenerationConfig
from distill.config.modes import ModeSpec
from distill.config.on_policy import OnPolicyConfig
from distill.config.sections import (
    CompressConfig,
    DataConfig,
    EvaluationConfig,
    ObjectiveConfig,
    OutputConfig,
    StudentConfig,
    TeacherConfig,
    TrainingConfig,
)

TASK_LOSSES = {"multi_label": {"soft_kl": "multilabel_kd", "cross_entropy": "multilabel_bce"},
               "regression": {"soft_kl": "regression_kd", "cross_entropy": "regression_mse"}}


class Recipe(StrictSection):
    """A whole distillation run."""
    name: str = Field("run", description="The run's name, in metrics and the default run directory runs/<name>; "
                      "a recipe file without one is named after the file.")
    description: str = Field("", description="Free text about the recipe; its first line is shown by `distill "
                             "recipes`.")
    seed: int = Field(0, description="Seed of the student's initialisation, the data order and the seeded data "
                      "splits; the teacher trained here uses seed + 1000. Change it (or use `distill sweep`) to "
                      "measure run-to-run spread.")
    data: DataConfig | None = Field(None, description="Where the examples come from (required, except in a recipe "
                                    "that only generates teacher data: generate set; checked).")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="The model the student learns from.")
    student: StudentConfig = Field(default_factory=StudentConfig, description="The model being distilled "
                                   "(omitted: a teacher-only recipe, which trains the teacher with teacher.train "
                                   "and evaluates it).")
    baseline: bool = Field(False, description="Also train the student architecture on hard labels alone, for "
                           "comparison, from the same initial weights.")
    objective: ObjectiveConfig | None = Field(None, description="What the student is trained to minimise (null: "
                                              "no distillation stage; every recipe with a student needs one, "
                                              "checked when its stages are planned).")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Training of the student and the "
                                     "baseline (a teacher trained here uses teacher.train).")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="How the models are "
                                         "measured on the test split.")
    compress: CompressConfig | None = Field(None, description="Quantize and/or prune the distilled student "
                                            "(null: no compressed variants; classifier students only, checked).")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Where the run is written.")
    generate: GenerationConfig | None = Field(None, description="Teacher-generated data (distill generate): the "
                                              "prompts teacher.model answers and how it decodes.")
    filters: list[FilterSpec] = Field(default_factory=list, description="What distill filter drops from generated "
                                      "records, in this order (each filter sees what the ones before kept).")
    mode: ModeSpec | None = Field(None, description="A training regime beyond one frozen teacher (distill.modes), "
                                  "chosen by kind (null: a plain teacher -> student run). student.freeze is not "
                                  "allowed with one (checked).")
    on_policy: OnPolicyConfig | None = Field(None, description="The student answers its training prompts itself "
                                             "and the teacher scores every token (null: train on the data as it "
                                             "is). Chat data, a causal-LM teacher run live, no mode (checked).")

    @model_validator(mode="after")
    def _data_or_generation(self) -> "Recipe":
        if self.data is None and self.generate is None:
            raise ValueError("data: Field required (where the examples come from; only a recipe with a generate "
                             "section may leave it out)")
        if self.data is None and (self.has_student or self.mode is not None or self.teacher.train is not None):
            raise ValueError("data: Field required: the recipe trains a model, and generated records are not yet "
                             "read as training data; give data (or keep only teacher and generate)")
        return self

    @model_validator(mode="after")
    def _generated_data(self) -> "Recipe":
        if self.data is None or self.data.dataset != "generated":
            return self
        if self.generate is None:
            raise ValueError("data.dataset generated trains on the records the recipe's generate section makes, and "
                             "the recipe has none: add generate: {prompts: ..., decoding: ...}")
        if self.teacher.train is not None or self.mode is not None:
            raise ValueError("data.dataset generated: the teacher generates the data, so it is not trained here ("
                             + ("teacher.train is set" if self.teacher.train is not None else "a mode is set")
                             + "); train it with a recipe of its own (e.g. on dataset task:NAME) and give its folder")
        return self

    @model_validator(mode="after")
    def _cache_without_augmentation(self) -> "Recipe":
        if (self.teacher.cache is not None and self.training.augment.shift > 0
                and not self.teacher.cache_allow_augmentation):
            raise ValueError(f"training.augment.shift is {self.training.augment.shift} and teacher.cache is set: the "
                             "cached teacher outputs are for un-augmented inputs, so they would not match what the "
                             "student sees. Drop the augmentation, or set teacher.cache_allow_augmentation: true to "
                             "train with them anyway")
        return self

    @model_validator(mode="after")
    def _task_losses(self) -> "Recipe":
        """On multi-label or regression data, the classification losses are read as their counterparts (soft_kl
        as multilabel_kd / regression_kd, cross_entropy as multilabel_bce / regression_mse), so the alpha
        shortcut means the same mix on every kind of label."""
        kind = self.data.target_kind if self.data is not None else "class"
        if kind == "class" or self.objective is None:
            return self
        counterparts = TASK_LOSSES[kind]
        for term in self.objective.terms:
            if term.loss in counterparts:
                object.__setattr__(term, "loss", counterparts[term.loss])
                if kind == "regression":  # regression_kd takes no temperature
                    object.__setattr__(term, "temperature", None)
        return self

    @model_validator(mode="after")
    def _transfer_in_plain_runs(self) -> "Recipe":
        if self.data is not None and self.data.transfer is not None and (self.mode is not None
                                                                         or self.teacher.cache is not None):
            raise ValueError("data.transfer adds texts that the live teacher labels in a plain run; it does not go "
                             "with " + ("a mode" if self.mode is not None else "teacher.cache (the cache holds no "
                                        "outputs for those texts)"))
        return self

    @model_validator(mode="after")
    def _general_step(self) -> "Recipe":
        general = self.student.general
        if general is None:
            return self
        from distill.config.loss_catalog import entry

        if not self.data.is_text:
            raise ValueError("student.general distils on unlabelled texts, and the data is not text (data.text, or "
                             "kjv-genre); remove student.general")
        if self.mode is not None or self.teacher.cache is not None:
            raise ValueError("student.general runs the live teacher in a plain run; it does not go with "
                             + ("a mode" if self.mode is not None else "teacher.cache"))
        if self.student.model is None and self.student.from_teacher is None:
            raise ValueError("student.general trains the recipe's student: set student.model or "
                             "student.from_teacher")
        for term in general.objective.terms if general.objective is not None else ():
            if "labels" in entry(term.loss).inputs:
                raise ValueError(f"student.general.objective term {term.display_name!r} ({term.loss}) reads labels, "
                                 "and the general step's texts have none; match teacher signals only (hint, cosine, "
                                 "minilm_attention, ...); the labels come in the task's objective")
            if not entry(term.loss).needs_teacher:
                raise ValueError(f"student.general.objective term {term.display_name!r} ({term.loss}) does not read "
                                 "the teacher; the general step only matches the teacher's signals")
        return self

    @model_validator(mode="after")
    def _compress_classifiers_only(self) -> "Recipe":
        if self.compress is not None and self.data is not None and self.data.is_language_modeling:
            raise ValueError("compress: int8 quantization and pruning are implemented for classifier students; a "
                             "causal-LM student is exported in float (quantize it with your inference runtime, e.g. "
                             "llama.cpp or torchao). Remove the compress section")
        return self

    @model_validator(mode="after")
    def _freeze_one_student(self) -> "Recipe":
        if self.student.finetune is not None and self.mode is not None:
            raise ValueError(f"student.finetune fine-tunes the single student of a plain run; mode "
                             f"{self.mode.kind!r} trains its own models. Remove student.finetune")
        if self.student.freeze and self.mode is not None:
            raise ValueError(f"student.freeze is applied to the single student of a plain run; mode "
                             f"{self.mode.kind!r} trains its own models. Remove student.freeze")
        return self

    @model_validator(mode="after")
    def _on_policy(self) -> "Recipe":
        if self.on_policy is None:
            return self
        from distill.config.loss_catalog import entry

        data = self.data
        chat = data is not None and (data.dataset == "generated" or (data.dataset or "").startswith("task:")
                                     or (data.lm is not None and data.lm.format == "chat"))
        refusal = ("data must be chat records (data.lm.format: chat, task:NAME or generated): the prompts are each "
                   "record's turns before its first answer" if not chat
                   else "a mode trains its own models" if self.mode is not None
                   else "a teacher cache holds outputs for the data's own tokens, not for the student's samples; "
                        "use teacher.model" if self.teacher.cache is not None
                   else "the objective must compare with the teacher (a token_kd term)" if not self.needs_teacher()
                   else None)
        if refusal:
            raise ValueError(f"on_policy: {refusal}")
        for term in self.objective.terms:
            hard = float(term.options.get("hard_weight", 0) or 0)
            if (not entry(term.loss).needs_teacher or hard) and self.on_policy.lmbda > 0:
                raise ValueError(f"on_policy: objective term {term.display_name!r} "
                                 + ("has options.hard_weight" if hard else f"({term.loss}) reads only the labels")
                                 + ", which on the student's own samples are its own tokens: it would train the "
                                 "student to repeat itself. Keep only terms against the teacher (token_kd)")
        return self

    @model_validator(mode="after")
    def _endpoint_teacher(self) -> "Recipe":
        endpoint = self.teacher.endpoint
        if endpoint is None:
            return self
        if self.data is None or not self.data.is_language_modeling or self.data.tokenizer is None:
            raise ValueError("teacher.endpoint scores causal-LM token sequences: the data must be LM data with "
                             "data.tokenizer set (the tokenizer teacher and student share)")
        if self.mode is not None or self.student.from_teacher is not None:
            raise ValueError("teacher.endpoint: " + ("a mode" if self.mode is not None else "student.from_teacher")
                             + " needs the teacher's weights, which stay on the server")
        from distill.config.loss_catalog import entry

        for term in self.objective.terms if self.objective is not None else ():
            if term.loss != "sampled_kl" and entry(term.loss).needs_teacher:
                raise ValueError(f"teacher.endpoint: objective term {term.display_name!r} ({term.loss}) needs "
                                     "the teacher's hidden states or full distribution, and a server returns "
                                     "log-probabilities only; use loss sampled_kl")
            top_k = int(term.options.get("top_k", 20))
            if term.loss == "sampled_kl" and term.options.get("estimator") == "topk" and endpoint.top_logprobs < top_k:
                raise ValueError(f"objective term {term.display_name!r}: estimator topk with top_k {top_k} needs "
                                 f"teacher.endpoint.top_logprobs >= {top_k} (it is {endpoint.top_logprobs})")
        return self

    def needs_teacher(self) -> bool:
        from distill.config.loss_catalog import entry

        return self.objective is not None and any(entry(term.loss).needs_teacher for term in self.objective.terms)

    @property
    def has_student(self) -> bool:
        """Whether the recipe builds a student (from a spec or from the teacher's layers)."""
        return self.student.model is not None or self.student.from_teacher is not None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
