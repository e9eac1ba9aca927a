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
    """Base of every recipe section: unknown keys are refused, so a misspelt key is an error rather than a
    silently ignored setting, and assignments are validated like parsing."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------------- models
class MLPSpec(_Strict):
    """A multilayer perceptron on flattened inputs."""
    kind: Literal["mlp"] = Field("mlp", description="Selects this spec.")
    hidden: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [256], description="Hidden layer widths, input side first (each followed by a "
        "ReLU); [] is a linear classifier. Widen or deepen for a stronger teacher, narrow for a smaller student.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability after each hidden layer (0: none).")
    input_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability on the flattened input (0: "
                                 "none; Hinton 2012 used 0.2 for large MNIST nets).")


class CNNSpec(_Strict):
    """A small convolutional net: conv-BN-ReLU-pool blocks, global average pooling, a linear head.
    1-D convolutions for inputs shaped (C, L), 2-D for (C, H, W)."""
    kind: Literal["cnn"] = Field("cnn", description="Selects this spec.")
    channels: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [32, 64], description="Output channels of each conv block, input side first; "
        "every block but the last halves the spatial size (while it is at least 4).")
    kernel_size: int = Field(3, gt=0, description="Convolution kernel size, padded by kernel_size // 2 (odd sizes "
                             "keep the spatial size).")
    batch_norm: bool = Field(True, description="Batch norm after each convolution; a data_free deep_inversion "
                             "teacher needs it.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability before the linear head (0: none).")


class HFSpec(_Strict):
    """Any Hugging Face model, by hub id or local folder."""
    kind: Literal["hf"] = Field("hf", description="Selects this spec.")
    name_or_path: str = Field(description="Hub id, local folder with config.json, or package:NAME for a model "
                              "shipped inside an installed Python package.")
    task: Literal["sequence-classification", "causal-lm", "masked-lm", "base"] = Field(
        "sequence-classification", description="Which head is loaded (the AutoModelFor... class); "
        "sequence-classification gets as many labels as the data has classes; base is the bare model (AutoModel), "
        "e.g. for embeddings.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with the checkpoint (off unless you "
                                    "trust it).")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="The dtype the weights are loaded in; auto keeps the checkpoint's own. A half dtype "
        "halves the memory of a large frozen teacher.")
    revision: str | None = Field(None, description="Hub branch, tag or commit to load (null: the default branch).")


class SavedSpec(_Strict):
    """A model exported by an earlier run (``RUN/student``, ``RUN/teacher``) or any folder holding a distill
    ``config.json`` and ``model.safetensors``."""
    kind: Literal["saved"] = Field("saved", description="Selects this spec.")
    path: str = Field(description="Folder of the exported model, e.g. runs/NAME/student; built-in nets, Hugging "
                      "Face models and int8 variants are rebuilt from the config.json it holds.")


class HFConfigSpec(_Strict):
    """A fresh, randomly initialised Hugging Face causal LM built from a config: tiny models for tests and CI,
    or a small student of your own shape. ``config`` holds fields of the architecture's config class
    (``hidden_size``, ``num_hidden_layers``, ...); ``vocab_size`` defaults to the tokenizer's."""
    kind: Literal["hf-config"] = Field("hf-config", description="Selects this spec.")
    architecture: str = Field("llama", description="The config's model_type: llama, qwen2, mistral, gpt2, ...")
    task: Literal["causal-lm"] = Field("causal-lm", description="Always causal-lm: the model is built with "
                                       "AutoModelForCausalLM.")
    config: dict[str, Any] = Field(default_factory=dict, description="Fields of the architecture's config class, "
                                   "e.g. {hidden_size: 64, num_hidden_layers: 2}; vocab_size defaults to the "
                                   "tokenizer's.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="The dtype of the new model's "
                                                             "weights.")


ModelSpec = Annotated[Union[MLPSpec, CNNSpec, HFSpec, SavedSpec, HFConfigSpec], Field(discriminator="kind")]


# --------------------------------------------------------------------------------------------------- data
class AugmentConfig(_Strict):
    """Random input augmentation of the training batches, applied on the device inside the training step, so the
    teacher and the student see the same augmented inputs."""
    shift: int = Field(0, ge=0, description="Translate each input by a random offset of up to this many "
                       "pixels/steps along every spatial axis, zero-filled (Hinton 2012's jitter; 0: off). Needs "
                       "inputs shaped (C, L) or (C, H, W).")


class LMDataConfig(_Strict):
    """Causal-LM data (implied by dataset kjv-text): plain text packed into blocks of data.max_length tokens, or
    chat records (a list of {role, content} messages) rendered with the tokenizer's chat template, the loss on
    assistant tokens only."""
    format: Literal["text", "chat"] = Field(
        "text", description="How records become examples: text packs documents into blocks; chat makes one example "
                            "per record, the loss on assistant turns.")
    text_column: str = Field("text", description="Column holding the documents (format text).")
    messages_column: str = Field("messages", description="Column holding the message lists (format chat).")
    test_fraction: float = Field(0.05, gt=0, lt=1, description="Share of the records held out for testing, "
                                 "chosen with the recipe seed before packing; unused when data.test_path is set.")
    overlong: Literal["truncate", "refuse"] = Field(
        "truncate", description="Chat records longer than max_length: cut them (counted) or stop with an error.")
    no_assistant: Literal["error", "skip"] = Field(
        "error", description="Chat records without an assistant turn: stop naming the record, or drop them (counted).")


class DataConfig(_Strict):
    """Where examples come from. Either a built-in dataset (``dataset``) or a user's file (``path``)."""
    dataset: str | None = Field(None, description="Built-in dataset: mnist, mnist5k, mnist1d, digits, kjv-verses, "
                                "kjv-text (King James text packed into LM blocks). Exactly one of dataset and path "
                                "is set (checked).")
    path: str | None = Field(None, description="Your own CSV / JSON(L) / parquet file, or a folder saved by "
                             "datasets; needs features and label, or lm for language-model text (checked).")
    test_path: str | None = Field(None, description="A separate test file for path (null: a DatasetDict folder's "
                                  "test split, else held out from path: 20% of the rows, stratified with a fixed "
                                  "seed, or lm.test_fraction of the records for LM data).")
    format: str | None = Field(None, description="File format of path and test_path: csv, json, parquet or disk (a "
                               "save_to_disk folder); null: told from the file name.")
    features: str | list[str] | None = Field(None, description="Feature column(s) of a file dataset: numeric "
                                             "columns stacked into one vector, or one column holding a (nested) "
                                             "list per row.")
    label: str | None = Field(None, description="Label column of a file dataset: non-negative integer ids, or "
                              "strings (sorted into ids).")
    val_size: float | None = Field(None, ge=0, description="Validation set carved from the training data: a count "
                                   "(>= 1) or a fraction (< 1); 0: none. Null: the dataset's default (MNIST's "
                                   "official 10,000; 10% of a file). Classification data only.")
    num_samples: int | None = Field(None, gt=0, description="For mnist1d, how many samples to generate in all "
                                    "(default 5000, 80% train); for the other built-in datasets, a stratified "
                                    "random subset of this many training examples.")
    train_subset: int | None = Field(None, gt=0, description="Train on only N training examples, for quick runs "
                                     "(the first N of array data, a seeded random N of text and LM data).")
    tokenizer: str | None = Field(None, description="Tokenizer of text and LM data: a hub id or folder, or "
                                  "builtin:kjv-bpe-N for LM data (null: the teacher's, when it is a Hugging Face "
                                  "model).")
    max_length: int = Field(128, gt=0, description="Tokens per example of text data: longer texts are truncated "
                            "(counted); for LM data the block size, or the longest chat record.")
    lm: LMDataConfig | None = Field(None, description="Causal-LM data options; set it for a file of LM text or "
                                    "chat records (kjv-text needs none).")

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
    epochs: float | None = Field(10, gt=0, description="Passes over the training data (fractions allowed); "
                                 "ignored when max_steps is set, and one pass when both are null.")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps to train for; overrides epochs when set.")
    batch_size: int = Field(64, gt=0, description="Examples per process per micro-batch (also the validation "
                            "batch size); an optimizer step sees batch_size x grad_accum x processes examples.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step: raise it for a larger "
                            "effective batch than fits in memory.")
    optimizer: Literal["sgd", "adamw", "adam"] = Field("adamw", description="The optimizer; momentum and nesterov "
                                                       "apply to sgd only.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate, reached after the warm-up and then shaped by "
                      "schedule; lower it first when a loss becomes NaN.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (optimizer sgd only).")
    nesterov: bool = Field(False, description="Nesterov momentum (optimizer sgd with momentum > 0 only).")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay: decoupled for adamw, an L2 term in the "
                                "gradient for adam and sgd (0: none).")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="Learning rate after the warm-up: constant, or decaying linearly or along a cosine "
        "to 0 at the last step.")
    warmup_steps: int | None = Field(None, ge=0, description="Steps of linear warm-up from lr / warmup_steps to lr "
                                     "(null: warmup_ratio decides).")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warm-up as a share of all steps (used when "
                                "warmup_steps is null; 0: no warm-up).")
    max_grad_norm: float | None = Field(None, gt=0, description="Clip gradients to this global L2 norm before each "
                                        "optimizer step (null: no clipping).")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="Autocast precision: auto is bf16 on a GPU that has it (device auto), else fp32; no is "
        "fp32; fp16 uses a gradient scaler.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Input augmentation of the training "
                                   "batches (never of validation or test).")
    log_every: int = Field(10, gt=0, description="Optimizer steps between log.jsonl lines (each the mean of every "
                           "loss term since the last line).")
    eval_every: int | None = Field(None, gt=0, description="Optimizer steps between validation passes, when the "
                                   "data has a validation set (null: once an epoch).")
    checkpoint_every: int | None = Field(None, gt=0, description="Optimizer steps between checkpoints, the points "
                                         "--resume continues from (null: once an epoch).")
    keep_checkpoints: int = Field(2, gt=0, description="Newest checkpoints kept per stage; older ones are deleted.")
    device: Literal["auto", "cpu"] = Field(
        "auto", description="Where training runs: auto is a GPU when there is one (one per process under torchrun or "
                            "accelerate launch); cpu is always the CPU.")


# --------------------------------------------------------------------------------------------------- roles
class TeacherConfig(_Strict):
    """The model the student learns from: built or loaded from ``model`` (and ``weights``), trained here on hard
    labels when ``train`` is set, or replaced by the outputs stored in a teacher ``cache``."""
    model: ModelSpec | None = Field(None, description="Architecture or pretrained model (null: a module passed "
                                    "from Python, a cache, or an objective that needs no teacher).")
    weights: str | None = Field(None, description="Safetensors file (or a folder holding model.safetensors) "
                                "loaded into model after it is built (null: the model's own initialisation).")
    train: TrainingConfig | None = Field(None, description="Train the teacher in this run on hard labels first, "
                                         "with these settings (null: use it as built or loaded). Not with cache "
                                         "(checked).")
    cache: str | dict[str, str] | None = Field(
        None, description="Teacher cache folder (`distill cache build`): train from the stored teacher outputs "
        "instead of running the teacher; with teacher.model also set, the model is loaded once (not run) to check "
        "the cache was built from it. Several teachers: {name: folder, ...}; a term then reads teacher `name` (its "
        "logits) or `name.SIGNAL`. Not with train; a mapping needs non-empty names without '.' and no "
        "teacher.model (checked).")
    cache_allow_augmentation: bool = Field(False, description="Train from a cache under training.augment anyway, "
                                           "although the cached outputs are for un-augmented inputs (otherwise "
                                           "refused).")

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
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="Indices of the teacher blocks to "
                                                             "keep, in order (null: chosen by keep).")
    keep: int | None = Field(None, gt=0, description="Keep this many blocks, spread evenly from the first to the "
                             "last (null: every other block from the first); ignored when layers is set.")


class StudentConfig(_Strict):
    """The model being distilled: built from ``model`` or derived from the teacher's layers (``from_teacher``)."""
    model: ModelSpec | None = Field(None, description="Architecture (null: a module passed from Python, or "
                                    "from_teacher). Not with from_teacher (checked).")
    weights: str | None = Field(None, description="Safetensors file (or a folder holding model.safetensors) "
                                "loaded into model after it is built (null: a fresh initialisation from the seed).")
    from_teacher: FromTeacherSpec | None = Field(None, description="Derive the student from the teacher's "
                                                 "embeddings, chosen blocks and head (Hugging Face transformers).")
    freeze: list[str] = Field(default_factory=list, description="Module paths whose parameters stay fixed, e.g. "
                              "embeddings.word_embeddings (a large vocabulary table the teacher already trained). "
                              "Plain runs only, not with a mode (checked).")

    @model_validator(mode="after")
    def _one_origin(self) -> "StudentConfig":
        if self.from_teacher is not None and self.model is not None:
            raise ValueError("give student.model or student.from_teacher, not both")
        return self


# --------------------------------------------------------------------------------------------------- objective
class TermConfig(_Strict):
    """One weighted term of the objective: ``weight * loss(student signal, teacher signal | labels, **options)``."""
    loss: str = Field(description="A loss registered in distill.losses, e.g. soft_kl, cross_entropy, "
                      "teacher_label_ce, hint, dkd, token_kd (an unknown name is refused with the closest one).")
    name: str | None = Field(None, description="The term's name in logs and metrics, unique within the objective "
                             "(null: the loss name).")
    weight: float = Field(1.0, ge=0, description="Multiplier of this term in the total loss.")
    student: str = Field("logits", description="Student signal the loss reads: logits, an output attribute such "
                         "as last_hidden_state or hidden_states[3], mean_pooled, final_hidden, or a module path "
                         "(encoder.layer.1, or encoder.layer.1:input for its input).")
    teacher: str = Field("logits", description="Teacher signal the loss reads, named as for student; with several "
                         "teachers NAME or NAME.SIGNAL picks one. Unused by losses that take no teacher.")
    temperature: float | None = Field(None, gt=0, description="This term's temperature, for losses that take one "
                                      "(refused otherwise). Null: objective.temperature for losses that soften the "
                                      "teacher's distribution (soft_kl, dkd, token_kd, ...), the loss's own default "
                                      "for the others (crd's contrastive 0.07).")
    options: dict[str, Any] = Field(default_factory=dict, description="Other keyword options of the loss, e.g. "
                                    "{symmetric: true} for crd; names the loss does not take are refused.")

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
    temperature: float = Field(1.0, gt=0, description="Softening temperature of the terms whose loss softens the "
                               "teacher's distribution (soft_kl, dkd, token_kd, ...) and that set none of their own; "
                               "higher shows the student more of the teacher's small probabilities.")
    alpha: float | None = Field(None, ge=0, le=1, description="Hinton's shortcut, instead of terms (checked): "
                                "expanded into the terms soft (soft_kl, weight alpha) and hard (cross_entropy, "
                                "weight 1 - alpha), after which alpha reads null.")
    terms: list[TermConfig] = Field(default_factory=list, description="The weighted terms summed into the loss; "
                                    "at least one (or alpha), with distinct names (checked).")

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
    """How the run's models are measured on the test split once training is done (``metrics.json``). These
    settings may change when a run is resumed."""
    task: Literal["auto", "classification", "embedding", "language-modeling"] = Field(
        "auto", description="What is measured: auto is language-modeling for LM data, classification when the data "
                            "has labels, else embedding fidelity.")
    max_test_tokens: int | None = Field(None, gt=0, description="For language-modeling, evaluate on at most this many "
                                                                "held-out tokens, the first blocks (null: all).")
    embedding_signal: str = Field("mean_pooled", description="For the embedding task, the signal used as the "
                                  "embedding, named as in objective terms.")
    neighbours: int = Field(10, gt=0, description="For the embedding task, k of the overlap between the student's and "
                            "the teacher's k nearest neighbours.")
    batch_size: int = Field(1000, gt=0, description="For classification, the batch size of the prediction pass, which "
                            "also gives the throughput, and of the peak-memory pass.")
    latency_batch_size: int = Field(100, gt=0, description="For classification, the batch size of the timed forward "
                                    "passes.")
    latency_runs: int = Field(30, ge=5, description="For classification, the timed runs at latency_batch_size (after "
                              "warm-up); the median and p95 are reported.")
    latency_b1_runs: int = Field(50, ge=20, description="Timed runs at batch size 1, after warm-up (median and p95 "
                                 "reported); raise it on a noisy machine.")
    calibration_bins: int = Field(15, gt=0, description="Equal-width confidence bins of the ECE and the reliability "
                                  "diagram (classification and language-modeling).")


class CompressConfig(_Strict):
    """Compression of the distilled student after training; each variant is evaluated like the others. Needs
    ``quantize: int8``, ``prune`` or both, and a classifier student, not a causal LM (checked)."""
    quantize: Literal["none", "int8"] = Field(
        "none", description="Quantization of the student: int8 is PyTorch dynamic quantization of the Linear layers "
                            "(CPU inference), the variant student_int8; none makes no quantized variant.")
    prune: float | None = Field(None, gt=0, lt=1, description="Global L1 magnitude pruning of the Linear and conv "
                                "weights to this sparsity, variant student_pruned (null: no pruning).")
    finetune_steps: int = Field(0, ge=0, description="Fine-tune steps of the pruned student with the run's "
                                "objective, pruned weights kept at zero (0: none; needs prune, checked).")
    finetune_lr: float | None = Field(None, gt=0, description="Learning rate of the fine-tune (null: training.lr / "
                                      "10).")

    @model_validator(mode="after")
    def _something(self) -> "CompressConfig":
        if self.quantize == "none" and self.prune is None:
            raise ValueError("compress needs quantize: int8 and/or prune: SPARSITY")
        if self.finetune_steps and self.prune is None:
            raise ValueError("compress.finetune_steps fine-tunes a pruned student; set compress.prune")
        return self


class OutputConfig(_Strict):
    """Where the run is written."""
    dir: str | None = Field(None, description="Run directory (null: runs/<recipe name>); --output overrides it.")


# --------------------------------------------------------------------------------------------------- modes
class NamedTeacher(_Strict):
    """One teacher of a multi-teacher run. Its outputs are also the signal named by ``name`` (its logits) and
    ``name.<module path>`` (its features), so objective terms can address each teacher on its own."""
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Identifier, used in signal names and "
                      "stages; unique among the teachers (checked).")
    model: ModelSpec = Field(description="This teacher's architecture or pretrained model.")
    weights: str | None = Field(None, description="Safetensors file (or a folder holding model.safetensors) "
                                "loaded into model (null: the model as built or loaded).")
    train: TrainingConfig | None = Field(None, description="Train this teacher here on hard labels first (null: "
                                         "use it as built or loaded).")


class MultiTeacherMode(_Strict):
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


class MutualMode(_Strict):
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


class BornAgainMode(_Strict):
    """Born-again networks (Furlanello et al. 2018): generation g+1, the student's architecture, learns from
    generation g; generation 0 is the teacher (by default the student's architecture on hard labels)."""
    kind: Literal["born_again"] = Field("born_again", description="Selects this regime.")
    generations: int = Field(2, ge=1, description="Distilled generations after generation 0; the last one is the "
                             "student.")
    ensemble: bool = Field(True, description="Also evaluate the mean of the distilled generations' probabilities "
                           "(when there are two or more).")


class AssistantChainMode(_Strict):
    """Teacher-assistant distillation (Mirzadeh et al. 2020): teacher -> assistants -> student, each stage a normal
    distillation run whose result teaches the next. Every stage must be smaller than the one before."""
    kind: Literal["assistant_chain"] = Field("assistant_chain", description="Selects this regime.")
    assistants: list[ModelSpec] = Field(description="Intermediate models, largest first; at least one (checked).")

    @model_validator(mode="after")
    def _check(self) -> "AssistantChainMode":
        if not self.assistants:
            raise ValueError("mode.assistants needs at least one assistant model")
        return self


class UnlabelledData(_Strict):
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


class TransferSetMode(_Strict):
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


class CounterfactualMode(_Strict):
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


class DataFreeMode(_Strict):
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


class SelfDistillationMode(_Strict):
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


class Recipe(_Strict):
    """A whole distillation run."""
    name: str = Field("run", description="The run's name, in metrics and the default run directory runs/<name>; "
                      "a recipe file without one is named after the file.")
    description: str = Field("", description="Free text about the recipe; its first line is shown by `distill "
                             "recipes`.")
    seed: int = Field(0, description="Seed of the student's initialisation, the data order and the seeded data "
                      "splits; the teacher trained here uses seed + 1000. Change it (or use `distill sweep`) to "
                      "measure run-to-run spread.")
    data: DataConfig = Field(description="Where the examples come from.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="The model the student learns from.")
    student: StudentConfig = Field(description="The model being distilled.")
    baseline: bool = Field(False, description="Also train the student architecture on hard labels alone, for "
                           "comparison, from the same initial weights.")
    objective: ObjectiveConfig = Field(description="What the student is trained to minimise.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Training of the student and the "
                                     "baseline (a teacher trained here uses teacher.train).")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="How the models are "
                                         "measured on the test split.")
    compress: CompressConfig | None = Field(None, description="Quantize and/or prune the distilled student "
                                            "(null: no compressed variants; classifier students only, checked).")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Where the run is written.")
    mode: ModeSpec | None = Field(None, description="A training regime beyond one frozen teacher (distill.modes), "
                                  "chosen by kind (null: a plain teacher -> student run). student.freeze is not "
                                  "allowed with one (checked).")

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
