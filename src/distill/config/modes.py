"""The settings of each training regime (``mode:``), one section per regime in ``distill.modes``."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from distill.config.base import StrictSection
from distill.config.sections import TrainingConfig
from distill.config.specs import ModelSpec


# --------------------------------------------------------------------------------------------------- modes
class NamedTeacher(StrictSection):
    """One teacher of a multi-teacher run. Its outputs are also the signal named by ``name`` (its logits) and
    ``name.<module path>`` (its features), so objective terms can address each teacher on its own."""
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Identifier, used in signal names and "
                      "stages; unique among the teachers (checked).")
    model: ModelSpec = Field(description="This teacher's architecture or pretrained model.")
    weights: str | None = Field(None, description="Safetensors file (or a folder holding model.safetensors) "
                                "loaded into model (null: the model as built or loaded).")
    train: TrainingConfig | None = Field(None, description="Train this teacher here on hard labels first (null: "
                                         "use it as built or loaded).")


class MultiTeacherMode(StrictSection):
    """Several teachers into one student. The ``logits`` teacher signal is their combination; each teacher's own
    outputs are the signals ``<name>`` and ``<name>.<module path>``."""
    kind: Literal["multi_teacher"] = Field("multi_teacher", description="Selects this regime.")
    teachers: list[NamedTeacher] = Field(description="Two or more teachers with distinct names (checked); "
                                         "architectures may differ.")
    combine: Literal["fixed", "confidence"] = Field(
        "fixed", description="How the teachers are combined: fixed is a weighted mean of softened probabilities; "
                             "confidence gives each teacher a per-sample weight, the softmax of minus its entropy (a "
                             "surer teacher weighs more).")
    weights: list[Annotated[float, Field(ge=0)]] | None = Field(
        None, description="With combine fixed, one weight per teacher, in order, not all zero (checked); null: equal "
                          "weights.")

    @model_validator(mode="after")
    def _check(self) -> "MultiTeacherMode":
        if len(self.teachers) < 2:
            raise ValueError(f"mode.teachers needs at least two teachers, got {len(self.teachers)} (one teacher is a "
                             "plain run: use the teacher section without a mode)")
        names = [teacher.name for teacher in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"mode.teachers need distinct names, got {names}")
        if self.weights is not None:
            if self.combine != "fixed":
                raise ValueError("mode.weights only applies to combine: fixed")
            if len(self.weights) != len(self.teachers) or sum(self.weights) <= 0:
                raise ValueError(f"mode.weights needs one non-negative weight per teacher ({len(self.teachers)}), "
                                 f"not all zero; got {self.weights}")
        return self


class MutualMode(StrictSection):
    """Deep mutual learning (Zhang et al. 2018): peers trained together, each against the others' current
    (detached) outputs. The recipe's objective is each peer's: its teacher terms compare with the other peers.
    With ``baseline: true`` each peer is also trained alone on hard labels, for comparison."""
    kind: Literal["mutual"] = Field("mutual", description="Selects this regime.")
    peers: list[ModelSpec] = Field(description="Two or more peer architectures (checked), trained jointly.")

    @model_validator(mode="after")
    def _check(self) -> "MutualMode":
        if len(self.peers) < 2:
            raise ValueError(f"mutual learning needs at least two peers in mode.peers, got {len(self.peers)}")
        return self


class BornAgainMode(StrictSection):
    """Born-again networks (Furlanello et al. 2018): generation g+1, the student's architecture, learns from
    generation g; generation 0 is the teacher (by default the student's architecture on hard labels)."""
    kind: Literal["born_again"] = Field("born_again", description="Selects this regime.")
    generations: int = Field(2, ge=1, description="Distilled generations after generation 0; the last one is the "
                             "student.")
    ensemble: bool = Field(True, description="Also evaluate the mean of the distilled generations' probabilities "
                           "(when there are two or more).")


class AssistantChainMode(StrictSection):
    """Teacher-assistant distillation (Mirzadeh et al. 2020): teacher -> assistants -> student, each stage a normal
    distillation run whose result teaches the next. Every stage must be smaller than the one before."""
    kind: Literal["assistant_chain"] = Field("assistant_chain", description="Selects this regime.")
    assistants: list[ModelSpec] = Field(description="Intermediate models, largest first; at least one (checked).")

    @model_validator(mode="after")
    def _check(self) -> "AssistantChainMode":
        if not self.assistants:
            raise ValueError("mode.assistants needs at least one assistant model")
        return self


class UnlabelledData(StrictSection):
    """Inputs without labels: a built-in dataset's training inputs, or feature columns of a file."""
    dataset: str | None = Field(None, description="Built-in dataset whose training inputs are used (labels "
                                "dropped). Exactly one of dataset and path is set (checked).")
    path: str | None = Field(None, description="CSV / JSON(L) / parquet file or save_to_disk folder; no label "
                             "column is needed, but features is (checked).")
    features: str | list[str] | None = Field(None, description="Feature columns of path, as in data.features.")
    format: str | None = Field(None, description="File format of path, as in data.format (null: told from the "
                               "file name).")
    max_samples: int | None = Field(None, gt=0, description="Use at most this many inputs, the first ones (null: "
                                    "all).")

    @model_validator(mode="after")
    def _one_source(self) -> "UnlabelledData":
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of dataset or path")
        if self.path is not None and self.features is None:
            raise ValueError("path needs features: the columns that hold the inputs")
        return self


class TransferSetMode(StrictSection):
    """Label-scarce distillation: the student keeps the labels of only a fraction of the training set; the teacher
    labels all of it (soft targets with soft_kl terms, hard ones with teacher_label_ce)."""
    kind: Literal["transfer_set"] = Field("transfer_set", description="Selects this regime.")
    labelled_fraction: float = Field(gt=0, le=1, description="Share of the training examples whose labels the "
                                     "student sees, a stratified random subset chosen with the seed (at least one).")
    teacher_labels: Literal["all", "labelled"] = Field(
        "all", description="What a teacher trained here learns from: every label (a teacher trained elsewhere), or "
                           "only the labelled subset (nobody has more labels).")
    unlabelled: UnlabelledData | None = Field(
        None, description="More inputs with no labels at all, added to the student's transfer set: the teacher "
                          "labels them (with labelled_fraction: 1, all of the training set keeps its labels).")


class CounterfactualMode(StrictSection):
    """Interchange-intervention (causal) distillation (Wu et al. 2022): at an aligned pair of locations, the
    representation of a second input (the batch rolled by one) replaces the first's in both models; the student
    matches the teacher's output under that intervention (term ``interchange``), and its representation at the
    location matches the teacher's (term ``aligned``, cosine, as the paper's L_cos)."""
    kind: Literal["counterfactual"] = Field("counterfactual", description="Selects this regime.")
    student: str = Field(description="Student module path of the intervention, e.g. features.6.")
    teacher: str = Field(description="Teacher module path aligned with it; of the same shape unless adapter is "
                         "true or align_weight is 0.")
    weight: float = Field(1.0, gt=0, description="Weight of the interchange term (soft_kl at objective.temperature).")
    align_weight: float = Field(1.0, ge=0, description="Weight of the aligned-representation cosine term (0: off).")
    adapter: bool = Field(False, description="Allow aligned locations of different shapes (a learned projection "
                                             "maps the student's representation for the aligned term).")


class DataFreeMode(StrictSection):
    """Data-free distillation: the student never sees a real training input. ``deep_inversion`` (Yin et al. 2020):
    inputs are optimised from noise so the teacher is confident on a chosen class and its batch-norm statistics
    match the running ones, then the student learns from the teacher on them (needs batch norm in the teacher).
    ``adversarial`` (Fang et al. 2019, DFAD): a generator makes inputs on which student and teacher disagree most
    (L1 between logits), and the student learns to agree on them; works with any teacher."""
    kind: Literal["data_free"] = Field("data_free", description="Selects this regime.")
    method: Literal["deep_inversion", "adversarial"] = Field(
        "deep_inversion", description="How the inputs are made: deep_inversion optimises them against a batch-norm "
        "teacher, then trains the student on them; adversarial trains a generator against the student (any teacher).")
    iterations: int = Field(1000, gt=0, description="Adversarial method: how many generator updates to train for.")
    student_steps: int = Field(5, gt=0, description="Adversarial method: student updates per generator update.")
    latent_size: int = Field(64, gt=0, description="Adversarial method: size of the generator's noise input.")
    generator_lr: float = Field(1e-3, gt=0, description="Adversarial method: Adam learning rate of the generator.")
    samples: int = Field(2048, gt=0, description="Deep inversion: how many synthetic inputs to make.")
    batch_size: int = Field(256, gt=0, description="How many inputs are optimised (deep inversion) or generated "
                            "(adversarial) together.")
    steps: int = Field(200, gt=0, description="Deep inversion: Adam steps per synthetic batch.")
    lr: float = Field(0.05, gt=0, description="Deep inversion: learning rate of the inputs.")
    bn_weight: float = Field(1.0, ge=0, description="Deep inversion: weight of the batch-norm statistics term.")
    tv_weight: float = Field(1e-3, ge=0, description="Deep inversion: weight of the total-variation smoothness "
                             "prior.")
    l2_weight: float = Field(1e-4, ge=0, description="Deep inversion: weight of the input L2 prior.")
    jitter: int = Field(0, ge=0, description="Deep inversion: each optimisation step sees the inputs rolled by a "
                        "random offset of up to this many positions along every spatial axis (DeepInversion's jitter: "
                        "features that survive small shifts, not single-pixel patterns).")


class SelfDistillationMode(StrictSection):
    """In-model self-distillation (Zhang et al. 2019, "Be your own teacher"): auxiliary exits (global average
    pooling and a linear classifier) at the given module paths learn from the labels and from the model's own final
    output, which the recipe's soft_kl terms make their teacher. The exits are training aids: the exported student
    is the model alone. With ``baseline: true`` the model is also trained without exits."""
    kind: Literal["self_distillation"] = Field("self_distillation", description="Selects this regime.")
    exits: list[str] = Field(description="Module paths of the student where auxiliary exits are attached, shallow "
                             "first; at least one (checked).")

    @model_validator(mode="after")
    def _check(self) -> "SelfDistillationMode":
        if not self.exits:
            raise ValueError("mode.exits needs at least one module path")
        return self


ModeSpec = Annotated[Union[MultiTeacherMode, MutualMode, BornAgainMode, AssistantChainMode, TransferSetMode,
                           CounterfactualMode, DataFreeMode, SelfDistillationMode], Field(discriminator="kind")]
