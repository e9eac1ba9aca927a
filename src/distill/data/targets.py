"""What a labelled file's label column(s) become: class ids, multi-label 0/1 rows, or regression targets; with
the checks that a model can learn from them and the groups the splits are stratified by."""

from __future__ import annotations

import numpy as np

from distill.errors import DistillError


def _raw_labels(ds, label: str, where: str):
    """('int', int64 array) or ('str', str array) for one split's label column."""
    import pyarrow as pa

    arr = arrow_column(ds, label)
    if arr.null_count:
        raise DistillError(f"Label column '{label}' in {where} has {arr.null_count} missing values; "
                           "drop those rows first.")
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str", np.asarray(arr.to_pylist(), dtype=str)
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "int", arr.to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_floating(t):
        v = arr.to_numpy(zero_copy_only=False)
        if np.isfinite(v).all() and (v == np.round(v)).all():
            return "int", v.astype(np.int64)
        raise DistillError(f"Label column '{label}' in {where} holds non-whole numbers; class labels must be "
                           "integers or strings (for a numeric target set data.label_kind: regression).")
    raise DistillError(f"Label column '{label}' in {where} holds {t} values; class labels must be integers or strings.")


def encode_labels(parts: list[tuple], label: str, class_label_names: list[str] | None):
    """Map every split's labels to shared ids. parts: [(ds, where)]. Returns (id arrays, num_classes, class_names)."""
    raw = [_raw_labels(ds, label, where) for ds, where in parts]
    kinds = {k for k, _ in raw}
    if len(kinds) > 1:
        wheres = ", ".join(where for _, where in parts)
        raise DistillError(f"Label column '{label}' holds numbers in some of {wheres} and strings in others; "
                           "use one kind throughout.")
    values = [v for _, v in raw]
    if class_label_names is not None:  # datasets.ClassLabel: ids already, names known
        return values, len(class_label_names), list(class_label_names)
    allv = np.concatenate(values)
    if kinds == {"str"} or (len(allv) and allv.min() < 0):
        names = np.unique(allv)
        ids = [np.searchsorted(names, v).astype(np.int64) for v in values]
        return ids, len(names), [str(n) for n in names]
    return values, int(allv.max()) + 1 if len(allv) else 0, None


def check_label_coverage(ids: dict[str, np.ndarray], wheres: dict[str, str], label: str,
                         class_names: list[str] | None) -> None:
    """Every class of the test and validation splits is one the training split has, and the training split has
    two classes at least: a class never trained on cannot be predicted, and one class is nothing to learn."""
    def name(value: int) -> str:
        return repr(class_names[value]) if class_names is not None else str(value)

    seen = set(np.unique(ids["train"]).tolist())
    if len(seen) < 2:
        only = f" (only {name(next(iter(seen)))})" if seen else ""
        raise DistillError(f"Label column '{label}' in {wheres['train']} holds a single class{only}; classification "
                           "needs at least two (for a numeric target use data.label_kind: regression).")
    for part in ("test", "val"):
        if part in ids:
            unseen = sorted(set(np.unique(ids[part]).tolist()) - seen)
            if unseen:
                listed = ", ".join(name(value) for value in unseen[:5])
                raise DistillError(f"Label(s) {listed} of column '{label}' appear in {wheres[part]} but never in the "
                                   f"training data {wheres['train']}: a model cannot learn a class it never sees. "
                                   "Add training examples of it, or drop those rows.")


def label_columns(label: str | list[str]) -> list[str]:
    return [label] if isinstance(label, str) else list(label)


def arrow_column(ds, column: str):
    """One column of a datasets.Dataset as a single Arrow array, dictionary-encoded values decoded."""
    import pyarrow as pa

    values = ds.with_format("arrow")[:].column(column).combine_chunks()
    return values.dictionary_decode() if pa.types.is_dictionary(values.type) else values


def _numbers(ds, column: str, where: str, what: str) -> np.ndarray:
    import pyarrow as pa

    values = arrow_column(ds, column)
    if values.null_count:
        raise DistillError(f"{what} column '{column}' in {where} has {values.null_count} missing values; drop "
                           "those rows first.")
    kind = values.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise DistillError(f"{what} column '{column}' in {where} holds {kind} values, not numbers.")
    numbers = values.to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.isfinite(numbers).all():
        raise DistillError(f"{what} column '{column}' in {where} holds NaN or infinite values; clean them first.")
    return numbers


def _multi_label(parts: dict[str, tuple], columns: list[str]) -> dict[str, np.ndarray]:
    rows = {}
    for name, (ds, where) in parts.items():
        stacked = np.stack([_numbers(ds, column, where, "Label") for column in columns], axis=1)
        bad = ~np.isin(stacked, (0.0, 1.0))
        if bad.any():
            row, column = np.argwhere(bad)[0]
            raise DistillError(f"Label column '{columns[column]}' in {where} holds {stacked[row, column]:g} (data row "
                               f"{row + 1}); multi-label columns hold 0 or 1.")
        rows[name] = stacked.astype(np.float32)
    never = [column for index, column in enumerate(columns) if not rows["train"][:, index].any()]
    if never:
        raise DistillError(f"Label column(s) {', '.join(repr(column) for column in never)} are never 1 in the "
                           f"training data {parts['train'][1]}: a model cannot learn a label it never sees. Drop "
                           "the column or add examples of it.")
    return rows


def _regression(parts: dict[str, tuple], column: str) -> dict[str, np.ndarray]:
    targets = {name: _numbers(ds, column, where, "Target").astype(np.float32) for name, (ds, where) in parts.items()}
    if len(np.unique(targets["train"])) < 2:
        raise DistillError(f"Target column '{column}' in {parts['train'][1]} holds a single value; regression needs "
                           "targets that vary.")
    return targets


def read_targets(parts: dict[str, tuple], label: str | list[str], kind: str
                 ) -> tuple[dict[str, np.ndarray], int, list[str] | None]:
    """``({part: targets}, outputs, names)``: int64 class ids with the class names (strings sorted into ids), float32
    0/1 rows with the label column names (multi-label), or float32 targets and one output (regression)."""
    import datasets

    if kind == "multi_label":
        columns = label_columns(label)
        return _multi_label(parts, columns), len(columns), columns
    assert isinstance(label, str)
    if kind == "regression":
        return _regression(parts, label), 1, None
    feature = parts["train"][0].features.get(label)
    class_label_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    ids, num_classes, class_names = encode_labels(list(parts.values()), label, class_label_names)
    targets = dict(zip(parts, ids))
    check_label_coverage(targets, {name: where for name, (_, where) in parts.items()}, label, class_names)
    return targets, num_classes, class_names


def strata(targets: np.ndarray) -> np.ndarray:
    """The groups a split is stratified by: the class, the first positive label of a multi-label row (-1: none), or
    the quintile of a regression target."""
    if targets.dtype.kind in "iu":
        return targets
    if targets.ndim == 2:
        return np.where(targets.any(1), targets.argmax(1), -1)
    edges = np.quantile(targets, [0.2, 0.4, 0.6, 0.8]) if len(targets) else []
    return np.searchsorted(edges, targets)
