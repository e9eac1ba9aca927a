"""The typed recipe: every knob, its default and what it does, validated before anything heavy starts.

A recipe is YAML (parsed with ``yaml.safe_load``: no tags, no code) or a dict, checked by pydantic with unknown
keys refused. Errors are turned into one paragraph that names the field and, for a misspelt key, the closest
valid one.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from distill.errors import DistillError

RECIPES_DIR = Path(__file__).parent / "recipes"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------------- models
class MLPSpec(_Strict):
    """A multilayer perceptron on flattened inputs."""
    kind: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [256], description="hidden layer widths")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after each hidden layer")
    input_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the input (Hinton 2012 used 0.2)")


class CNNSpec(_Strict):
    """A small convolutional net: conv-BN-ReLU-pool blocks, global average pooling, a linear head.
    1-D convolutions for inputs shaped (C, L), 2-D for (C, H, W)."""
    kind: Literal["cnn"] = "cnn"
    channels: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [32, 64], description="channels per block")
    kernel_size: int = Field(3, gt=0)
    batch_norm: bool = True
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the head")


class HFSpec(_Strict):
    """Any Hugging Face model, by hub id or local folder."""
    kind: Literal["hf"] = "hf"
    name_or_path: str = Field(description="hub id or local folder with config.json")
    task: Literal["sequence-classification", "causal-lm", "masked-lm", "base"] = "sequence-classification"
    trust_remote_code: bool = Field(False, description="run model code shipped with the checkpoint (off unless you trust it)")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    revision: str | None = None


class SavedSpec(_Strict):
    """A model exported by an earlier run (``RUN/student``, ``RUN/teacher``) or any folder holding a distill
    ``config.json`` and ``model.safetensors``."""
    kind: Literal["saved"] = "saved"
    path: str


class HFConfigSpec(_Strict):
    """A fresh, randomly initialised Hugging Face causal LM built from a config: tiny models for tests and CI,
    or a small student of your own shape. ``config`` holds fields of the architecture's config class
    (``hidden_size``, ``num_hidden_layers``, ...); ``vocab_size`` defaults to the tokenizer's."""
    kind: Literal["hf-config"] = "hf-config"
    architecture: str = Field("llama", description="the config's model_type: llama, qwen2, mistral, gpt2, ...")
    task: Literal["causal-lm"] = "causal-lm"
    config: dict[str, Any] = Field(default_factory=dict, description="config fields, e.g. {hidden_size: 64}")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


ModelSpec = Annotated[Union[MLPSpec, CNNSpec, HFSpec, SavedSpec, HFConfigSpec], Field(discriminator="kind")]


# --------------------------------------------------------------------------------------------------- data
class AugmentConfig(_Strict):
    shift: int = Field(0, ge=0, description="random translation by up to this many pixels/steps (input jitter)")


class LMDataConfig(_Strict):
    """Causal-LM data (implied by dataset kjv-text): plain text packed into blocks of data.max_length tokens, or
    chat records (a list of {role, content} messages) rendered with the tokenizer's chat template, the loss on
    assistant tokens only."""
    format: Literal["text", "chat"] = Field("text", description="text: pack documents into blocks; chat: one "
                                            "example per record, loss on assistant turns")
    text_column: str = Field("text", description="column holding the documents (format text)")
    messages_column: str = Field("messages", description="column holding the message lists (format chat)")
    test_fraction: float = Field(0.05, gt=0, lt=1, description="records held out for testing when no test_path")
    overlong: Literal["truncate", "refuse"] = Field(
        "truncate", description="chat records longer than max_length: cut them (counted) or stop with an error")
    no_assistant: Literal["error", "skip"] = Field(
        "error", description="chat records without an assistant turn: stop naming the record, or drop them (counted)")


class DataConfig(_Strict):
    """Where examples come from. Either a built-in dataset (``dataset``) or a user's file (``path``)."""
    dataset: str | None = Field(None, description="built-in dataset: mnist, mnist5k, mnist1d, digits, kjv-verses, "
                                   "kjv-text (King James text packed into LM blocks)")
    path: str | None = Field(None, description="CSV / JSON(L) / parquet file, or a folder saved by datasets")
    test_path: str | None = None
    format: str | None = None
    features: str | list[str] | None = Field(None, description="feature column(s) of a file dataset")
    label: str | None = Field(None, description="label column of a file dataset")
    val_size: float | None = Field(None, ge=0, description="validation count or fraction, carved from training data")
    num_samples: int | None = Field(None, gt=0, description="dataset size where the dataset is generated (mnist1d)")
    train_subset: int | None = Field(None, gt=0, description="use only the first N training examples (quick runs)")
    tokenizer: str | None = Field(None, description="tokenizer for text datasets (default: the teacher's)")
    max_length: int = Field(128, gt=0, description="tokens per text; longer texts are truncated and counted")
    lm: LMDataConfig | None = Field(None, description="causal-LM data options (set for a user's LM file)")

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of data.dataset (a built-in dataset) or data.path (your own file)")
        if self.path is not None and self.lm is None and (self.features is None or self.label is None):
            raise ValueError("data.path needs data.features and data.label (the column names), or data.lm for "
                             "language-model text")
        return self

    @property
    def is_language_modeling(self) -> bool:
        return self.lm is not None or self.dataset == "kjv-text"


# --------------------------------------------------------------------------------------------------- training
class TrainingConfig(_Strict):
    """One training stage (teacher, baseline or student)."""
    epochs: float | None = Field(10, gt=0, description="passes over the training data (fractions allowed)")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs when set")
    batch_size: int = Field(64, gt=0, description="examples per process per micro-batch")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    optimizer: Literal["sgd", "adamw", "adam"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int | None = Field(None, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="warm-up as a share of all steps (if warmup_steps unset)")
    max_grad_norm: float | None = Field(None, gt=0, description="clip gradients to this global norm")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description="auto: bf16 on a GPU that has it, else fp32")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    log_every: int = Field(10, gt=0, description="steps between log.jsonl lines")
    eval_every: int | None = Field(None, gt=0, description="steps between validation passes (default: each epoch)")
    checkpoint_every: int | None = Field(None, gt=0, description="steps between checkpoints (default: each epoch)")
    keep_checkpoints: int = Field(2, gt=0)
    device: Literal["auto", "cpu"] = "auto"


# --------------------------------------------------------------------------------------------------- roles
class TeacherConfig(_Strict):
    model: ModelSpec | None = Field(None, description="architecture or pretrained model (None: passed from Python)")
    weights: str | None = Field(None, description="safetensors file to load into model")
    train: TrainingConfig | None = Field(None, description="train the teacher in this run on hard labels first")
    cache: str | dict[str, str] | None = Field(
        None, description="teacher cache folder (`distill cache build`): train from the stored teacher outputs "
        "instead of running the teacher; with teacher.model also set, the model is loaded once (not run) to check "
        "the cache was built from it. Several teachers: {name: folder, ...}; a term then reads teacher `name` (its "
        "logits) or `name.SIGNAL`")
    cache_allow_augmentation: bool = Field(False, description="train from a cache under training.augment anyway: "
                                           "cached outputs are for un-augmented inputs")

    @model_validator(mode="after")
    def _cache_or_train(self) -> "TeacherConfig":
        if self.cache is not None and self.train is not None:
            raise ValueError("teacher.cache replaces running the teacher, so teacher.train cannot be set with it; "
                             "train the teacher in one run, build the cache from RUN/teacher, then train from it")
        if isinstance(self.cache, dict):
            if not self.cache:
                raise ValueError("teacher.cache: an empty mapping; give one folder, or {name: folder} per teacher")
            dotted = sorted(name for name in self.cache if not name or "." in name)
            if dotted:
                raise ValueError(f"teacher.cache: teacher name(s) {dotted} must be non-empty and contain no '.' "
                                 "(terms address a teacher's signals as NAME.SIGNAL)")
            if self.model is not None:
                raise ValueError("teacher.model with several caches: each cache stands for its own teacher, so one "
                                 "teacher.model cannot be checked against them; drop teacher.model")
        return self


class FromTeacherSpec(_Strict):
    """Initialise the student from the teacher (HF transformers): embeddings, the chosen blocks and the head."""
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="teacher blocks to keep, in order")
    keep: int | None = Field(None, gt=0, description="keep this many blocks, evenly spread (default: every other)")


class StudentConfig(_Strict):
    model: ModelSpec | None = Field(None, description="architecture (None: passed from Python)")
    weights: str | None = None
    from_teacher: FromTeacherSpec | None = Field(None, description="derive the student from the teacher's layers")
    freeze: list[str] = Field(default_factory=list, description="module paths whose parameters stay fixed, e.g. "
                              "embeddings.word_embeddings (a large vocabulary table the teacher already trained)")

    @model_validator(mode="after")
    def _one_origin(self) -> "StudentConfig":
        if self.from_teacher is not None and self.model is not None:
            raise ValueError("give student.model or student.from_teacher, not both")
        return self


# --------------------------------------------------------------------------------------------------- objective
class TermConfig(_Strict):
    """One weighted term of the objective: ``weight * loss(student signal, teacher signal | labels, **options)``."""
    loss: str = Field(description="registered loss name, e.g. soft_kl, cross_entropy, teacher_label_ce")
    name: str | None = Field(None, description="name in logs (default: the loss name)")
    weight: float = Field(1.0, ge=0)
    student: str = Field("logits", description="student signal compared")
    teacher: str = Field("logits", description="teacher signal compared")
    temperature: float | None = Field(None, gt=0, description="for losses with a temperature (default: objective.temperature)")
    options: dict[str, Any] = Field(default_factory=dict, description="other keyword options of the loss")

    @model_validator(mode="after")
    def _known_loss(self) -> "TermConfig":
        from distill.losses import get_loss

        try:
            info = get_loss(self.loss)
        except DistillError as error:
            raise ValueError(str(error)) from None
        if self.temperature is not None and "temperature" not in info.options:
            raise ValueError(f"loss {self.loss!r} takes no temperature")
        for option in self.options:
            if option not in info.options or option == "temperature":
                valid = [name for name in info.options if name != "temperature"]
                close = difflib.get_close_matches(option, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"loss {self.loss!r} has no option {option!r}{hint}; its options: {valid or 'none'}"
                                 + ("; set temperature as the term's own field" if option == "temperature" else ""))
        return self

    @property
    def display_name(self) -> str:
        return self.name or self.loss


class ObjectiveConfig(_Strict):
    """A weighted sum of named terms. ``alpha`` is Hinton's shortcut: ``alpha * soft_kl + (1 - alpha) * cross_entropy``."""
    temperature: float = Field(1.0, gt=0, description="default temperature of terms that take one")
    alpha: float | None = Field(None, ge=0, le=1, description="shortcut for soft/hard mixing; use instead of terms")
    terms: list[TermConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _expand_alpha(self) -> "ObjectiveConfig":
        if self.alpha is not None and self.terms:
            raise ValueError("give objective.alpha or objective.terms, not both")
        if self.alpha is not None:
            object.__setattr__(self, "terms", [
                TermConfig(name="soft", loss="soft_kl", weight=self.alpha),
                TermConfig(name="hard", loss="cross_entropy", weight=1 - self.alpha),
            ])
            object.__setattr__(self, "alpha", None)
        if not self.terms:
            raise ValueError("objective needs terms (or alpha)")
        names = [term.display_name for term in self.terms]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"objective terms need distinct names; repeated: {duplicates} (set term.name)")
        return self


# --------------------------------------------------------------------------------------------------- evaluation
class EvaluationConfig(_Strict):
    task: Literal["auto", "classification", "embedding", "language-modeling"] = Field(
        "auto", description="auto: language-modeling for LM data, classification when the data has labels, else "
                            "embedding fidelity")
    max_test_tokens: int | None = Field(None, gt=0, description="language-modeling: evaluate on at most this many "
                                                                "held-out tokens (the first blocks)")
    embedding_signal: str = Field("mean_pooled", description="the signal used as the embedding (embedding task)")
    neighbours: int = Field(10, gt=0, description="k of the nearest-neighbour overlap (embedding task)")
    batch_size: int = Field(1000, gt=0, description="batch size of the prediction pass, which also gives the "
                            "throughput, and of the peak-memory pass")
    latency_batch_size: int = Field(100, gt=0, description="batch size of the timed forward passes")
    latency_runs: int = Field(30, ge=5, description="timed runs (after warm-up); the median is reported")
    latency_b1_runs: int = Field(50, ge=20, description="timed runs at batch size 1 (median and p95 reported)")
    calibration_bins: int = Field(15, gt=0, description="equal-width confidence bins of the ECE and reliability diagram")


class CompressConfig(_Strict):
    """Compression of the distilled student after training; each variant is evaluated like the others."""
    quantize: Literal["none", "int8"] = Field("none", description="int8: PyTorch dynamic quantization of Linear layers")
    prune: float | None = Field(None, gt=0, lt=1, description="global magnitude pruning of weights to this sparsity")
    finetune_steps: int = Field(0, ge=0, description="distillation fine-tune steps after pruning (the run's objective)")
    finetune_lr: float | None = Field(None, gt=0, description="fine-tune learning rate (default: training.lr / 10)")

    @model_validator(mode="after")
    def _something(self) -> "CompressConfig":
        if self.quantize == "none" and self.prune is None:
            raise ValueError("compress needs quantize: int8 and/or prune: SPARSITY")
        if self.finetune_steps and self.prune is None:
            raise ValueError("compress.finetune_steps fine-tunes a pruned student; set compress.prune")
        return self


class OutputConfig(_Strict):
    dir: str | None = Field(None, description="run directory (default: runs/<recipe name>)")


# --------------------------------------------------------------------------------------------------- modes
class NamedTeacher(_Strict):
    """One teacher of a multi-teacher run. Its outputs are also the signal named by ``name`` (its logits) and
    ``name.<module path>`` (its features), so objective terms can address each teacher on its own."""
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="identifier, used in signal names and stages")
    model: ModelSpec
    weights: str | None = Field(None, description="safetensors file to load into model")
    train: TrainingConfig | None = Field(None, description="train this teacher here on hard labels first")


class MultiTeacherMode(_Strict):
    """Several teachers into one student. The ``logits`` teacher signal is their combination; each teacher's own
    outputs are the signals ``<name>`` and ``<name>.<module path>``."""
    kind: Literal["multi_teacher"] = "multi_teacher"
    teachers: list[NamedTeacher] = Field(description="two or more teachers (architectures may differ)")
    combine: Literal["fixed", "confidence"] = Field(
        "fixed", description="fixed: weighted mean of softened probabilities; confidence: per-sample weights, "
                             "softmax of minus each teacher's entropy (a surer teacher weighs more)")
    weights: list[Annotated[float, Field(ge=0)]] | None = Field(None, description="fixed weights (default equal)")

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


class MutualMode(_Strict):
    """Deep mutual learning (Zhang et al. 2018): peers trained together, each against the others' current
    (detached) outputs. The recipe's objective is each peer's: its teacher terms compare with the other peers.
    With ``baseline: true`` each peer is also trained alone on hard labels, for comparison."""
    kind: Literal["mutual"] = "mutual"
    peers: list[ModelSpec] = Field(description="two or more peer architectures, trained jointly")

    @model_validator(mode="after")
    def _check(self) -> "MutualMode":
        if len(self.peers) < 2:
            raise ValueError(f"mutual learning needs at least two peers in mode.peers, got {len(self.peers)}")
        return self


class BornAgainMode(_Strict):
    """Born-again networks (Furlanello et al. 2018): generation g+1, the student's architecture, learns from
    generation g; generation 0 is the teacher (by default the student's architecture on hard labels)."""
    kind: Literal["born_again"] = "born_again"
    generations: int = Field(2, ge=1, description="distilled generations after generation 0")
    ensemble: bool = Field(True, description="also evaluate the mean of the generations' probabilities")


class AssistantChainMode(_Strict):
    """Teacher-assistant distillation (Mirzadeh et al. 2020): teacher -> assistants -> student, each stage a normal
    distillation run whose result teaches the next. Every stage must be smaller than the one before."""
    kind: Literal["assistant_chain"] = "assistant_chain"
    assistants: list[ModelSpec] = Field(description="intermediate models, largest first")

    @model_validator(mode="after")
    def _check(self) -> "AssistantChainMode":
        if not self.assistants:
            raise ValueError("mode.assistants needs at least one assistant model")
        return self


class UnlabelledData(_Strict):
    """Inputs without labels: a built-in dataset's training inputs, or feature columns of a file."""
    dataset: str | None = Field(None, description="built-in dataset whose training inputs are used (labels dropped)")
    path: str | None = Field(None, description="CSV / JSON(L) / parquet file or save_to_disk folder; no label needed")
    features: str | list[str] | None = Field(None, description="feature columns of path, as in data.features")
    format: str | None = None
    max_samples: int | None = Field(None, gt=0, description="use at most this many (the first ones)")

    @model_validator(mode="after")
    def _one_source(self) -> "UnlabelledData":
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of dataset or path")
        if self.path is not None and self.features is None:
            raise ValueError("path needs features: the columns that hold the inputs")
        return self


class TransferSetMode(_Strict):
    """Label-scarce distillation: the student keeps the labels of only a fraction of the training set; the teacher
    labels all of it (soft targets with soft_kl terms, hard ones with teacher_label_ce)."""
    kind: Literal["transfer_set"] = "transfer_set"
    labelled_fraction: float = Field(gt=0, le=1, description="share of training examples whose labels the student sees")
    teacher_labels: Literal["all", "labelled"] = Field(
        "all", description="what a teacher trained here learns from: every label (a teacher trained elsewhere), or "
                           "only the labelled subset (nobody has more labels)")
    unlabelled: UnlabelledData | None = Field(
        None, description="more inputs with no labels at all, added to the student's transfer set: the teacher "
                          "labels them (with labelled_fraction: 1, all of the training set keeps its labels)")


class CounterfactualMode(_Strict):
    """Interchange-intervention (causal) distillation (Wu et al. 2022): at an aligned pair of locations, the
    representation of a second input (the batch rolled by one) replaces the first's in both models; the student
    matches the teacher's output under that intervention (term ``interchange``), and its representation at the
    location matches the teacher's (term ``aligned``, cosine, as the paper's L_cos)."""
    kind: Literal["counterfactual"] = "counterfactual"
    student: str = Field(description="student module path of the intervention")
    teacher: str = Field(description="teacher module path aligned with it")
    weight: float = Field(1.0, gt=0, description="weight of the interchange term (soft_kl at objective.temperature)")
    align_weight: float = Field(1.0, ge=0, description="weight of the aligned-representation cosine term (0: off)")
    adapter: bool = Field(False, description="allow aligned locations of different shapes (a learned projection "
                                             "maps the student's representation for the aligned term)")


class DataFreeMode(_Strict):
    """Data-free distillation: the student never sees a real training input. ``deep_inversion`` (Yin et al. 2020):
    inputs are optimised from noise so the teacher is confident on a chosen class and its batch-norm statistics
    match the running ones, then the student learns from the teacher on them (needs batch norm in the teacher).
    ``adversarial`` (Fang et al. 2019, DFAD): a generator makes inputs on which student and teacher disagree most
    (L1 between logits), and the student learns to agree on them; works with any teacher."""
    kind: Literal["data_free"] = "data_free"
    method: Literal["deep_inversion", "adversarial"] = "deep_inversion"
    iterations: int = Field(1000, gt=0, description="adversarial: generator updates")
    student_steps: int = Field(5, gt=0, description="adversarial: student updates per generator update")
    latent_size: int = Field(64, gt=0, description="adversarial: size of the generator's noise input")
    generator_lr: float = Field(1e-3, gt=0, description="adversarial: Adam learning rate of the generator")
    samples: int = Field(2048, gt=0, description="deep_inversion: synthetic inputs to make")
    batch_size: int = Field(256, gt=0, description="inputs optimised (or generated) together")
    steps: int = Field(200, gt=0, description="deep_inversion: Adam steps per synthetic batch")
    lr: float = Field(0.05, gt=0, description="deep_inversion: learning rate of the inputs")
    bn_weight: float = Field(1.0, ge=0, description="weight of the batch-norm statistics term")
    tv_weight: float = Field(1e-3, ge=0, description="weight of the total-variation smoothness prior")
    l2_weight: float = Field(1e-4, ge=0, description="weight of the input L2 prior")
    jitter: int = Field(0, ge=0, description="deep_inversion: each optimisation step sees the inputs rolled by a "
                        "random offset of up to this many positions along every spatial axis (DeepInversion's jitter: "
                        "features that survive small shifts, not single-pixel patterns)")


class SelfDistillationMode(_Strict):
    """In-model self-distillation (Zhang et al. 2019, "Be your own teacher"): auxiliary exits (global average
    pooling and a linear classifier) at the given module paths learn from the labels and from the model's own final
    output, which the recipe's soft_kl terms make their teacher. The exits are training aids: the exported student
    is the model alone. With ``baseline: true`` the model is also trained without exits."""
    kind: Literal["self_distillation"] = "self_distillation"
    exits: list[str] = Field(description="module paths of the student where auxiliary exits are attached, shallow first")

    @model_validator(mode="after")
    def _check(self) -> "SelfDistillationMode":
        if not self.exits:
            raise ValueError("mode.exits needs at least one module path")
        return self


ModeSpec = Annotated[Union[MultiTeacherMode, MutualMode, BornAgainMode, AssistantChainMode, TransferSetMode,
                           CounterfactualMode, DataFreeMode, SelfDistillationMode], Field(discriminator="kind")]


class Recipe(_Strict):
    """A whole distillation run."""
    name: str = "run"
    description: str = ""
    seed: int = 0
    data: DataConfig
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig
    baseline: bool = Field(False, description="also train the student architecture on hard labels alone, for comparison")
    objective: ObjectiveConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    compress: CompressConfig | None = Field(None, description="quantize and/or prune the distilled student")
    output: OutputConfig = Field(default_factory=OutputConfig)
    mode: ModeSpec | None = Field(None, description="a training regime beyond one frozen teacher (distill.modes)")

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
    def _compress_classifiers_only(self) -> "Recipe":
        if self.compress is not None and self.data.is_language_modeling:
            raise ValueError("compress: int8 quantization and pruning are implemented for classifier students; a "
                             "causal-LM student is exported in float (quantize it with your inference runtime, e.g. "
                             "llama.cpp or torchao). Remove the compress section")
        return self

    @model_validator(mode="after")
    def _freeze_one_student(self) -> "Recipe":
        if self.student.freeze and self.mode is not None:
            raise ValueError(f"student.freeze is applied to the single student of a plain run; mode "
                             f"{self.mode.kind!r} trains its own models. Remove student.freeze")
        return self

    def needs_teacher(self) -> bool:
        from distill.losses import get_loss

        return any(get_loss(term.loss).needs_teacher for term in self.objective.terms)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------------------------------- loading
def _all_field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names = set(model.model_fields)
    for field in model.model_fields.values():
        for candidate in _classes_in(field.annotation):
            names |= _all_field_names(candidate, seen)
    return names


def _classes_in(annotation: Any) -> list[type[BaseModel]]:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [found for argument in get_args(annotation) for found in _classes_in(argument)]


_UNION_TAGS = ("mlp", "cnn", "hf", "saved", "hf-config", "multi_teacher", "mutual", "born_again", "assistant_chain",
               "transfer_set", "counterfactual", "data_free", "self_distillation")


def format_validation_error(error: ValidationError, source: str) -> str:
    valid_keys = _all_field_names(Recipe)
    problems = []
    for item in error.errors():
        # drop the union tags pydantic puts in the location (teacher.model.mlp.hidden -> teacher.model.hidden)
        location = ".".join(str(part) for part in item["loc"] if str(part) not in _UNION_TAGS)
        if item["type"] == "extra_forbidden":
            key = str(item["loc"][-1])
            close = difflib.get_close_matches(key, valid_keys, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"unknown key {location!r}{hint}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            shown = f"{location}: " if location else ""
            given = item.get("input")
            # A type/range error shows the offending value; our own checks already name it, and a whole section
            # (a dict) would only be noise.
            if item["type"] != "value_error" and not isinstance(given, dict):
                message += f" (got {given!r})"
            problems.append(shown + message)
    return f"invalid recipe {source}: " + "; ".join(problems)


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise DistillError(f"--set {dotted}: {key!r} is not a section of the recipe")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    parsed = []
    for item in overrides or []:
        if "=" not in item:
            raise DistillError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise DistillError(f"--set {key}: cannot parse value {text!r}: {error}") from None
        parsed.append((key.strip(), value))
    return parsed


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A path to a YAML file, or the name of a built-in recipe."""
    path = Path(recipe)
    if path.is_file():
        return path
    builtin = RECIPES_DIR / f"{recipe}.yaml"
    if builtin.is_file():
        return builtin
    names = builtin_recipe_names()
    close = difflib.get_close_matches(str(recipe), names, n=1)
    hint = f" Did you mean the built-in recipe {close[0]!r}?" if close else ""
    raise DistillError(f"recipe file {str(recipe)!r} not found, and it is not a built-in recipe.{hint} "
                       f"Built-in recipes: {', '.join(names)} (see `distill recipes`).")


def builtin_recipe_names() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise DistillError(f"cannot read recipe {path}: {error.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DistillError(f"YAML syntax error in {path}{where}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise DistillError(f"YAML error in {path}: {error}") from None
    if not isinstance(raw, dict):
        raise DistillError(f"recipe {path} must be a mapping of sections (data, teacher, student, ...), "
                           f"got {type(raw).__name__}")
    return raw


def load_recipe(recipe: str | Path | dict[str, Any] | Recipe, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe. Raises DistillError with one readable paragraph on any problem."""
    if isinstance(recipe, Recipe):
        raw, source = recipe.model_dump(mode="json"), f"{recipe.name!r}"
    elif isinstance(recipe, dict):
        raw, source = copy.deepcopy(recipe), "(dict)"
    else:
        path = resolve_recipe_path(recipe)
        raw, source = read_yaml(path), str(path)
        raw.setdefault("name", path.stem)
    for key, value in parse_overrides(overrides):
        _set_dotted(raw, key, value)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as error:
        raise DistillError(format_validation_error(error, source)) from None


def describe_builtin_recipes() -> list[tuple[str, str]]:
    rows = []
    for name in builtin_recipe_names():
        raw = read_yaml(RECIPES_DIR / f"{name}.yaml")
        rows.append((name, str(raw.get("description", "")).strip().split("\n")[0]))
    return rows
