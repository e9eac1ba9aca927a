"""The user's own labelled text (CSV / JSON lines / Parquet / ``save_to_disk``): one text column, or two for
sentence pairs, and a label column, read into train / validation / test splits of texts and class ids.

Tokenisation is not done here: each model reads the same texts with its own tokenizer (``distill.data.tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from distill.data.files import (
    check_columns,
    dataset_name,
    file_parts,
    split_rows,
)
from distill.data.targets import arrow_column, label_columns, read_targets, strata
from distill.errors import DistillError

Text = str | tuple[str, str]


@dataclass
class TextSplits:
    """Texts (strings, or (first, second) pairs) and class ids of each split, with the names of the classes."""
    name: str
    texts: dict[str, list[Text]]
    labels: dict[str, np.ndarray]
    num_classes: int
    class_names: list[str] | None
    text_columns: list[str]
    source: str

    def summary(self) -> dict:
        return {"name": self.name, **{split: len(self.labels[split]) for split in ("train", "val", "test")},
                "num_classes": self.num_classes, "text_columns": list(self.text_columns),
                **({"class_names": list(self.class_names)} if self.class_names else {}), "source": self.source}


def text_columns(text: str | list[str]) -> list[str]:
    """``data.text`` as a list of one column (single texts) or two (sentence pairs)."""
    columns = [text] if isinstance(text, str) else list(text)
    if not 1 <= len(columns) <= 2 or not all(isinstance(column, str) and column for column in columns):
        raise DistillError(f"data.text must be one column name, or two for sentence pairs, got {text!r}")
    if len(set(columns)) != len(columns):
        raise DistillError(f"data.text names the column {columns[0]!r} twice")
    return columns


def _column_texts(ds, column: str, where: str, pair_of: list[str]) -> list[str]:
    """One text column as Python strings, refused when it holds numbers or has empty rows (naming the first)."""
    import pyarrow as pa

    values = arrow_column(ds, column)
    kind = values.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_list(kind)
        hint = " (numeric inputs go in data.features, text in data.text)" if numeric else ""
        raise DistillError(f"Text column '{column}' in {where} holds {kind} values, not text{hint}.")
    texts = values.to_pylist()
    empty = [row for row, value in enumerate(texts) if value is None or not value.strip()]
    if empty:
        pair = (f"; a sentence pair needs both '{pair_of[0]}' and '{pair_of[1]}'" if len(pair_of) == 2 else "")
        raise DistillError(f"{len(empty)} row(s) of {where} have an empty '{column}' (the first: data row "
                           f"{empty[0] + 1}, counting from 1 after any header){pair}. Fill or drop them.")
    return texts


def _part_texts(ds, columns: list[str], where: str) -> list[Text]:
    per_column = [_column_texts(ds, column, where, columns) for column in columns]
    return per_column[0] if len(columns) == 1 else list(zip(*per_column))


def read_labelled_texts(path: str | Path, *, text: str | list[str], label: str | list[str],
                        test_path: str | Path | None = None, format: str | None = None, seed: int = 0,
                        val_size: int | float = 0.1, test_size: int | float = 0.2,
                        cache_dir: str | Path | None = None, label_kind: str = "class") -> TextSplits:
    """Texts and targets of a labelled file: class labels may be strings (sorted into ids, the names kept) or
    non-negative integers; ``label_kind`` multi_label reads a list of 0/1 columns, regression a numeric column.
    The test split is ``test_path``, a DatasetDict's 'test', or ``test_size`` of the rows held out with a fixed
    seed; the validation split is a DatasetDict's 'validation' or ``val_size`` of the training rows, both
    stratified (by class, first label, or target quintile)."""
    columns = text_columns(text)
    both = sorted(set(columns) & set(label_columns(label)))
    if both:
        raise DistillError(f"Column '{both[0]}' is both a label and a text column; give data.label another column")
    with file_parts(path, test_path, format, cache_dir) as parts:
        for ds, where in parts.values():
            check_columns(ds, [*columns, *label_columns(label)], where)
            if ds.num_rows == 0:
                raise DistillError(f"{where} has no rows; it needs at least one labelled text.")
        labels, num_classes, class_names = read_targets(parts, label, label_kind)
        texts = {name: _part_texts(ds, columns, where) for name, (ds, where) in parts.items()}
    splits = split_rows({name: (texts[name], labels[name]) for name in parts}, seed=seed, val_size=val_size,
                        test_size=test_size, strata=strata)
    location = Path(path).expanduser()
    return TextSplits(name=dataset_name(location), texts={name: rows for name, (rows, _) in splits.items()},
                      labels={name: values for name, (_, values) in splits.items()}, num_classes=num_classes,
                      class_names=class_names, text_columns=columns,
                      source=str(location) + (f" (test: {Path(test_path).expanduser()})" if test_path else ""))


def read_text_source(source: Any, *, default_text: str | list[str] | None, field: str,
                     like: Sequence[Text] = ()) -> list[Text]:
    """The texts of a ``TextSourceConfig`` (``field`` names it in errors): its file's rows, the first
    ``max_texts`` of them, single texts or pairs as ``like`` (the task's texts) are."""
    texts = read_unlabelled_texts(source.path, text=source.text or default_text, format=source.format)
    if source.max_texts is not None:
        texts = texts[: source.max_texts]
    pair = isinstance(like[0], tuple) if like else None
    if pair is not None and isinstance(texts[0], tuple) != pair:
        raise DistillError(f"{field}.path {source.path}: its texts are {'pairs' if not pair else 'single texts'} "
                           f"and the training texts are not; give {field}.text the same number of columns as "
                           "data.text")
    return texts


def read_unlabelled_texts(path: str | Path, *, text: str | list[str], format: str | None = None) -> list[Text]:
    """The texts (or pairs) of every row of a file's training split, for texts nobody has labels for."""
    columns = text_columns(text)
    with file_parts(path, None, format) as parts:
        ds, where = parts["train"]
        check_columns(ds, columns, where)
        if ds.num_rows == 0:
            raise DistillError(f"{where} has no rows; it needs at least one text.")
        return _part_texts(ds, columns, where)
