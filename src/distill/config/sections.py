"""The sections of a recipe: data, training, teacher, student, objective, evaluation, compress, output."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from distill.config.base import StrictSection
from distill.config.generation import TeacherEndpointConfig
from distill.config.specs import ModelSpec
from distill.errors import DistillError


# --------------------------------------------------------------------------------------------------- data
class AugmentConfig(StrictSection):
    """Random input augmentation of the training batches, applied on the device inside the training step, so the
    teacher and the student see the same augmented inputs."""
    shift: int = Field(0, ge=0, description="Translate each input by a random offset of up to this many "
                       "pixels/steps along every spatial axis, zero-filled (Hinton 2012's jitter; 0: off). Needs "
                       "inputs shaped (C, L) or (C, H, W).")


GENERATED = "generated"  # data.dataset: the records the run's own generate and filters stages make


class LMDataConfig(StrictSection):
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
    task_train: int = Field(4000, gt=0, description="For dataset task:NAME: training problems drawn (with the "
                            "recipe seed) from the task's train split.")
    task_test: int = Field(500, gt=0, description="For dataset task:NAME: test problems (the seed-0 draw of its "
                           "test split).")
    rationales: bool = Field(True, description="For dataset task:NAME: the assistant writes the gold steps before "
                             "'Answer: ...' (false: the answer alone).")


class TextSourceConfig(StrictSection):
    """Unlabelled texts from a file."""
    path: str | None = Field(None, description="Unlabelled texts: a CSV / JSON(L) / parquet file or save_to_disk "
                             "folder (no label column needed).")
    text: str | list[str] | None = Field(None, description="Text column(s) of path (null: data.text).")
    format: str | None = Field(None, description="File format of path, as data.format (null: told from the name).")
    max_texts: int | None = Field(None, gt=0, description="Use at most this many texts of path, the first ones "
                                  "(null: all).")


class TextTransferConfig(TextSourceConfig):
    """More training texts for the distilled student, labelled by the teacher alone (TinyBERT's augmented transfer
    set): unlabelled in-domain texts from a file (path), and/or word-level augmented copies of the training texts.
    The baseline and the teacher train on the gold texts only; a hard-label term skips these texts."""
    augment_copies: int = Field(0, ge=0, description="Augmented copies of each training text (0: none): words "
                                "replaced by their nearest neighbours in the teacher's input embeddings (TinyBERT "
                                "replaced words by GloVe neighbours and BERT MLM guesses).")
    replace_probability: float = Field(0.4, gt=0, le=1, description="Chance that each replaceable word of a copy "
                                       "is replaced (TinyBERT: 0.4).")
    neighbours: int = Field(15, gt=0, description="A replacement is drawn from this many nearest neighbours "
                            "(TinyBERT: 15).")

    @model_validator(mode="after")
    def _something(self) -> "TextTransferConfig":
        if self.path is None and self.augment_copies == 0:
            raise ValueError("data.transfer needs a path of unlabelled texts and/or augment_copies > 0")
        return self


class DataConfig(StrictSection):
    """Where examples come from. Either a built-in dataset (``dataset``) or a user's file (``path``)."""
    dataset: str | None = Field(None, description="Built-in dataset: mnist, mnist5k, mnist1d, digits, kjv-verses, "
                                "kjv-genre (verse -> genre of its book, 6 classes), kjv-text (King James text packed "
                                "into LM blocks), task:NAME (a task of distill.tasks as chats with gold answers, for "
                                "causal LMs), generated (the records this run's generate section makes and its "
                                "filters keep, as chats). Exactly one of dataset and path "
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
                                             "list per row. Not with text (checked).")
    text: str | list[str] | None = Field(None, description="Text column of a file dataset (a list of two for "
                                         "sentence pairs, e.g. [premise, hypothesis]): each model reads the texts "
                                         "with its own tokenizer. Not with features (checked).")
    label: str | list[str] | None = Field(None, description="Label column of a file dataset: non-negative integer "
                                          "ids, or strings (sorted into ids, the names kept as id2label of "
                                          "exported models); a list of 0/1 columns for multi-label data; a numeric "
                                          "column with label_kind regression.")
    label_kind: Literal["auto", "class", "multi_label", "regression"] = Field(
        "auto", description="What the label is: auto is multi_label for a list of columns, else class; regression "
        "is a numeric target (one output, mean squared error, MAE/RMSE/R2 at evaluation).")
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
    student_tokenizer: str | None = Field(None, description="Tokenizer the student reads text data with, when it "
                                          "is not the teacher's: a hub id or folder (null: a pretrained Hugging Face "
                                          "student's own, when its folder has one, else data.tokenizer). The "
                                          "teacher keeps its own tokenisation of the same texts.")
    max_length: int = Field(128, gt=0, description="Tokens per example of text data: longer texts are truncated "
                            "(counted); for LM data the block size, or the longest chat record.")
    lm: LMDataConfig | None = Field(None, description="Causal-LM data options; set it for a file of LM text or "
                                    "chat records (kjv-text needs none).")
    transfer: TextTransferConfig | None = Field(None, description="Labelled text only: more texts for the distilled "
                                                "student, labelled by the teacher (unlabelled in-domain texts, "
                                                "augmented copies); needs an objective term that reads the teacher "
                                                "(checked).")

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of data.dataset (a built-in dataset) or data.path (your own file)")
        if self.features is not None and self.text is not None:
            raise ValueError("give data.features (numeric columns) or data.text (text columns), not both")
        if self.path is not None and self.lm is None and (
                (self.features is None and self.text is None) or self.label is None):
            raise ValueError("data.path needs data.label and data.features (numeric columns) or data.text (text "
                             "columns), or data.lm for language-model text")
        if self.transfer is not None and not (self.text is not None or self.dataset == "kjv-genre"):
            raise ValueError("data.transfer adds texts to labelled text data (data.text, or kjv-genre)")
        if self.dataset is not None and (self.text is not None or self.features is not None):
            raise ValueError("data.text and data.features name the columns of your own file (data.path); a "
                             "built-in dataset has its own")
        return self

    @model_validator(mode="after")
    def _label_kind(self) -> "DataConfig":
        several = isinstance(self.label, list)
        if several and self.label_kind in ("class", "regression"):
            raise ValueError(f"data.label lists several columns, which is multi-label data, not {self.label_kind}; "
                             "give one column, or label_kind multi_label")
        if self.label is not None and not several and self.label_kind == "multi_label":
            raise ValueError("data.label_kind multi_label needs data.label to list the 0/1 label columns")
        if several and (not self.label or len(set(self.label)) != len(self.label)):
            raise ValueError("data.label: the multi-label columns must be a non-empty list of distinct names")
        return self

    @property
    def target_kind(self) -> str:
        """class, multi_label or regression."""
        if self.label_kind != "auto":
            return self.label_kind
        return "multi_label" if isinstance(self.label, list) else "class"

    @property
    def is_text(self) -> bool:
        """Labelled or unlabelled text read by tokenizers (not LM blocks)."""
        return self.text is not None or self.dataset in ("kjv-verses", "kjv-genre")

    @property
    def is_language_modeling(self) -> bool:
        return (self.lm is not None or self.dataset in ("kjv-text", GENERATED)
                or (self.dataset or "").startswith("task:"))


# --------------------------------------------------------------------------------------------------- training
class TrainingConfig(StrictSection):
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
class TeacherConfig(StrictSection):
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
    endpoint: TeacherEndpointConfig | None = Field(None, description="The teacher behind an OpenAI-compatible "
                                                   "server (sampled_kl terms; not with model, cache or train).")
    cache_allow_augmentation: bool = Field(False, description="Train from a cache under training.augment anyway, "
                                           "although the cached outputs are for un-augmented inputs (otherwise "
                                           "refused).")

    @model_validator(mode="after")
    def _cache_or_train(self) -> "TeacherConfig":
        if self.endpoint is not None and (self.model is not None or self.cache is not None or self.train is not None):
            raise ValueError("teacher.endpoint is the teacher; teacher."
                             + ("model" if self.model is not None else "cache" if self.cache is not None else "train")
                             + " cannot be set with it (a model served elsewhere is neither loaded nor trained here)")
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


class FromTeacherSpec(StrictSection):
    """Initialise the student from the teacher (HF transformers): embeddings, the chosen blocks and the head."""
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="Indices of the teacher blocks to "
                                                             "keep, in order (null: chosen by keep).")
    keep: int | None = Field(None, gt=0, description="Keep this many blocks, spread evenly from the first to the "
                             "last (null: every other block from the first); ignored when layers is set.")


class GeneralDistillationConfig(StrictSection):
    """TinyBERT's first step: the student learns the teacher's intermediate representations on unlabelled text,
    before the task. It runs before the teacher is fine-tuned (``teacher.train``), against the pretrained teacher
    as loaded, so what the student learns is the encoder's, not the task's."""
    texts: TextSourceConfig = Field(default_factory=TextSourceConfig, description="The unlabelled texts (path "
                                    "null: the task's training texts, without their labels).")
    objective: ObjectiveConfig | None = Field(None, description="What the student matches (null: an MSE hint "
                                                "from each student hidden state, the embeddings' included, to "
                                                "the teacher's it stands for: the teacher block it was copied from "
                                                "for a derived student, else TinyBERT's uniform mapping). Terms on "
                                                "labels are refused (checked).")
    training: TrainingConfig | None = Field(None, description="Training of this step (null: the recipe's "
                                            "training section).")
    val_texts: int = Field(200, ge=1, description="Texts held out to validate this step (at most a fifth of them).")


class StudentConfig(StrictSection):
    """The model being distilled: built from ``model`` or derived from the teacher's layers (``from_teacher``)."""
    model: ModelSpec | None = Field(None, description="Architecture (null: a module passed from Python, or "
                                    "from_teacher). Not with from_teacher (checked).")
    weights: str | None = Field(None, description="Safetensors file (or a folder holding model.safetensors) "
                                "loaded into model after it is built (null: a fresh initialisation from the seed).")
    from_teacher: FromTeacherSpec | None = Field(None, description="Derive the student from the teacher's "
                                                 "embeddings, chosen blocks and head (Hugging Face transformers).")
    general: GeneralDistillationConfig | None = Field(None, description="A general-distillation step on "
                                                      "unlabelled text before the task's (TinyBERT's two steps; "
                                                      "text data, plain runs with a live teacher; checked).")
    finetune: TrainingConfig | None = Field(None, description="Distil, then fine-tune: after distillation, train "
                                            "the student on the gold labels alone with these settings; the result "
                                            "is the model student_finetuned, evaluated beside the others.")
    freeze: list[str] = Field(default_factory=list, description="Module paths whose parameters stay fixed, e.g. "
                              "embeddings.word_embeddings (a large vocabulary table the teacher already trained). "
                              "Plain runs only, not with a mode (checked).")

    @model_validator(mode="after")
    def _one_origin(self) -> "StudentConfig":
        if self.from_teacher is not None and self.model is not None:
            raise ValueError("give student.model or student.from_teacher, not both")
        return self


# --------------------------------------------------------------------------------------------------- objective
class TermConfig(StrictSection):
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
        from distill.config.loss_catalog import entry

        try:
            info = entry(self.loss)
        except DistillError as error:
            raise ValueError(str(error)) from None
        if self.temperature is not None and "temperature" not in info.options:
            raise ValueError(f"loss {self.loss!r} takes no temperature")
        valid = [name for name in info.settable if name != "temperature"]
        for option, value in self.options.items():
            if option not in valid:
                close = difflib.get_close_matches(option, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"loss {self.loss!r} has no option {option!r}{hint}; its options: {valid or 'none'}"
                                 + ("; set temperature as the term's own field" if option == "temperature" else ""))
            info.check_option(option, value)
        return self

    @property
    def display_name(self) -> str:
        return self.name or self.loss


class ObjectiveConfig(StrictSection):
    """A weighted sum of named terms. ``alpha`` is Hinton's shortcut:
    ``alpha * soft_kl + (1 - alpha) * cross_entropy``."""
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


# the general-distillation step has an objective of its own, declared before ObjectiveConfig
GeneralDistillationConfig.model_rebuild()
StudentConfig.model_rebuild()


# --------------------------------------------------------------------------------------------------- evaluation
class TaskSuiteEvaluation(StrictSection):
    """Exact-match accuracy of each model on problems of the verifiable task suite, answered greedily."""
    task: str = Field(description="A task of distill.tasks, e.g. arithmetic.")
    split: Literal["train", "test"] = Field("test", description="Its split (test: never in training data drawn from "
                                            "the suite).")
    count: int = Field(200, gt=0, description="Problems asked (the seed-0 draw).")
    max_new_tokens: int = Field(96, gt=0, description="Tokens each answer may take.")
    batch_size: int = Field(16, gt=0, description="Problems answered together.")


class EvaluationConfig(StrictSection):
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
    task_suite: TaskSuiteEvaluation | None = Field(None, description="For language-modeling: also have every model "
                                                   "answer a task of distill.tasks (greedy) and count exact matches, "
                                                   "independently of any teacher-generated data.")


class CompressConfig(StrictSection):
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


class OutputConfig(StrictSection):
    """Where the run is written."""
    dir: str | None = Field(None, description="Run directory (null: runs/<recipe name>); --output overrides it.")
