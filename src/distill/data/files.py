"""The user's own tabular / array data (CSV, JSON lines, Parquet, `save_to_disk` folders) through HF `datasets`.

Only local files are read: the packaged `csv` / `json` / `parquet` builders and `load_from_disk` need no hub access.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np

from distill.data.arrays import (
    TEST_SPLIT_SEED,
    ArraySplits,
    resolve_size,
    split_indices,
)
from distill.data.targets import label_columns, read_targets, strata
from distill.errors import DistillError

SUPPORTED_FORMATS = ("csv", "json", "parquet", "disk")
_SUFFIX_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".pq": "parquet"}
_FORMAT_ALIASES = {"jsonl": "json", "save_to_disk": "disk", "arrow_dir": "disk", "pq": "parquet"}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zst"}
_VAL_SPLIT_NAMES = ("validation", "valid", "val")
_SUPPORTED_TEXT = "a .csv, .json, .jsonl or .parquet file, or a folder written by Dataset/DatasetDict.save_to_disk"


def infer_format(path: Path, format: str | None) -> str:
    if format is not None:
        fmt = str(format).lower().lstrip(".")
        fmt = _FORMAT_ALIASES.get(fmt, fmt)
        if fmt not in SUPPORTED_FORMATS:
            raise DistillError(f"Unknown data format '{format}' for {path}; supported formats are "
                               f"{', '.join(SUPPORTED_FORMATS)}.")
        if (fmt == "disk") != path.is_dir():
            what = "a folder" if path.is_dir() else "a file"
            raise DistillError(f"{path} is {what}, which does not fit format '{fmt}'; "
                               "only 'disk' reads a save_to_disk folder.")
        return fmt
    if path.is_dir():
        return "disk"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    fmt = _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise DistillError(
            f"Cannot tell the format of {path} from its name; use {_SUPPORTED_TEXT}, or pass format= "
            f"(one of {', '.join(SUPPORTED_FORMATS)})."
        )
    return fmt


@contextlib.contextmanager
def _quiet_datasets():
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def load_file_splits(path: Path, fmt: str, cache_dir: str) -> dict:
    """{split name: datasets.Dataset} for one file or save_to_disk folder."""
    with _quiet_datasets() as datasets:
        if fmt == "disk":
            try:
                obj = datasets.load_from_disk(str(path))
            except FileNotFoundError:
                raise DistillError(
                    f"{path} is a folder but not one written by Dataset.save_to_disk or DatasetDict.save_to_disk; "
                    f"point at such a folder or at a .csv, .json, .jsonl or .parquet file."
                ) from None
            except Exception as e:
                raise DistillError(f"Cannot read the save_to_disk folder {path}: {_first_line(e)}.") from None
            return dict(obj) if isinstance(obj, datasets.DatasetDict) else {"train": obj}
        if path.stat().st_size == 0:
            raise DistillError(f"{path} is empty; it needs at least one row of data.")
        try:
            ds = datasets.load_dataset(fmt, data_files=str(path), split="train", cache_dir=cache_dir)
        except Exception as e:
            if isinstance(e, StopIteration) or "corresponds to no data" in str(e):
                raise DistillError(f"{path} is empty; it needs at least one row of data.") from None
            raise DistillError(f"Cannot read {path} as {fmt}: {_first_line(e)}.") from None
        return {"train": ds}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__).rstrip(".")


def pick_split(splits: dict, path: Path, prefer: tuple[str, ...]):
    for name in prefer:
        if name in splits:
            return splits[name]
    if len(splits) == 1:
        return next(iter(splits.values()))
    raise DistillError(f"{path} has splits {', '.join(splits)} but none named '{prefer[0]}'; "
                       "rename the training split to 'train'.")


def check_columns(ds, needed: list[str], where: str) -> None:
    available = list(ds.column_names)
    for col in needed:
        if col not in available:
            raise DistillError(f"Column '{col}' is not in {where}; "
                               f"available columns: {', '.join(available) or '(none)'}.")


def _numeric(arr, name: str, where: str) -> np.ndarray:
    """One Arrow column -> float32 array of shape (N, *per-row shape); nested lists must be rectangular."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.null_count:
        raise DistillError(f"Feature column '{name}' in {where} has {arr.null_count} missing values; "
                           "fill or drop them first.")
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        out = arr.to_numpy(zero_copy_only=False).astype(np.float32)
        if not np.isfinite(out).all():
            raise DistillError(f"Feature column '{name}' in {where} holds NaN or infinite values; clean them first.")
        return out
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        n = len(arr)
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        if n and (lengths != lengths[0]).any():
            raise DistillError(
                f"Feature column '{name}' in {where} holds lists of different lengths "
                f"({lengths.min()} to {lengths.max()}); every row needs the same shape."
            )
        inner = _numeric(arr.flatten(), name, where)
        width = int(lengths[0]) if n else 0
        return inner.reshape((n, width) + inner.shape[1:])
    is_text = pa.types.is_string(t) or pa.types.is_large_string(t)
    text = " (text goes in data.text, not data.features)" if is_text else ""
    raise DistillError(f"Feature column '{name}' in {where} holds {t} values, not numbers{text}; "
                       "features must be numeric columns or lists of numbers.")


def _features(ds, features: str | list[str], where: str) -> np.ndarray:
    table = ds.with_format("arrow")[:]
    if isinstance(features, str):
        x = _numeric(table.column(features), features, where)
        return x[:, None] if x.ndim == 1 else x
    cols = []
    for name in features:
        col = _numeric(table.column(name), name, where)
        if col.ndim != 1:
            raise DistillError(
                f"Feature column '{name}' in {where} holds a list per row; pass it on its own as features='{name}' "
                "instead of in a list of columns."
            )
        cols.append(col)
    return np.stack(cols, axis=1)


def _feature_columns(features: str | list[str], label: str | list[str]) -> list[str]:
    if isinstance(features, str):
        feature_list = [features]
    elif isinstance(features, (list, tuple)) and features and all(isinstance(f, str) for f in features):
        feature_list = list(features)
    else:
        raise DistillError(f"features must be a column name or a non-empty list of column names, got {features!r}.")
    if len(set(feature_list)) != len(feature_list):
        raise DistillError(f"features lists a column twice: {feature_list}.")
    labels = label_columns(label) if isinstance(label, (str, list)) else []
    if not labels or not all(isinstance(name, str) and name for name in labels):
        raise DistillError(f"label must be the name of the label column (or a list of them), got {label!r}.")
    for name in labels:
        if name in feature_list:
            raise DistillError(f"Column '{name}' is both a label and a feature; remove it from features.")
    return feature_list


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise DistillError(f"{what} {path} does not exist; check the path (relative paths are from {Path.cwd()}).")
    return path


def _named_parts(path: Path, fmt: str, tpath: Path | None, tfmt: str | None, cache: str) -> dict[str, tuple]:
    """The file's splits that the run uses, each with where it came from: train, then test and validation when
    the files hold them."""
    splits = load_file_splits(path, fmt, cache)
    parts = {"train": (pick_split(splits, path, ("train",)),
                       f"{path}" if len(splits) == 1 else f"{path} (split 'train')")}
    if tpath is not None:
        parts["test"] = (pick_split(load_file_splits(tpath, tfmt, cache), tpath, ("test", "train")), str(tpath))
    elif "test" in splits:
        parts["test"] = (splits["test"], f"{path} (split 'test')")
    for name in _VAL_SPLIT_NAMES:
        if name in splits:
            parts["val"] = (splits[name], f"{path} (split '{name}')")
            break
    return parts


def _read_arrays(parts: dict[str, tuple], features: str | list[str], feature_list: list[str], label: str | list[str],
                 kind: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int, list[str] | None]:
    """Features and targets of every part, checked: columns present, rows present, one feature shape."""
    ordered = list(parts.values())
    for ds, where in ordered:
        check_columns(ds, feature_list + label_columns(label), where)
        if ds.num_rows == 0:
            raise DistillError(f"{where} has no rows; it needs at least one sample.")
    targets, num_classes, class_names = read_targets(parts, label, kind)
    xs = [_features(ds, features, where) for ds, where in ordered]
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise DistillError(f"Feature shapes differ between {', '.join(w for _, w in ordered)}: {sorted(shapes)}; "
                           "every split needs the same shape.")
    return {name: (x, targets[name]) for name, x in zip(parts, xs)}, num_classes, class_names


def dataset_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".bz2", ".xz", ".zst", ".csv", ".jsonl", ".json", ".parquet", ".pq"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) and len(name) > len(suffix) else name
    return name


@contextlib.contextmanager
def file_parts(path: str | Path, test_path: str | Path | None, format: str | None,
               cache_dir: str | Path | None = None):
    """The splits of the user's file(s) the run uses, ``{train|test|val: (datasets.Dataset, where)}``, valid
    inside the ``with`` block (``datasets`` may keep them in a temporary Arrow cache, removed afterwards)."""
    path = _existing(path, "Data path")
    fmt = infer_format(path, format)
    tpath = _existing(test_path, "Test data path") if test_path is not None else None
    tfmt = infer_format(tpath, format) if tpath is not None else None
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="distill-datasets-",
                                                                    ignore_cleanup_errors=True))
        else:
            cache = str(Path(cache_dir).expanduser())
        yield _named_parts(path, fmt, tpath, tfmt, cache)


def take_rows(rows, indices: np.ndarray):
    """``rows[indices]`` for a numpy array or a Python list (of texts)."""
    if isinstance(rows, np.ndarray):
        return rows[indices]
    return [rows[int(index)] for index in indices]


def split_rows(parts: dict[str, tuple], *, seed: int, val_size: int | float, test_size: int | float,
               strata=None) -> dict[str, tuple]:
    """``{train, val, test: (inputs, labels)}`` from the parts a file holds: a test split carved from the training
    rows when there is none (stratified, the fixed TEST_SPLIT_SEED, the same for every run), a validation split
    carved with ``seed`` when there is none (never from test). ``strata(labels)`` gives the groups stratified by
    (default: the labels themselves)."""
    strata = strata or (lambda labels: labels)
    x, y = parts["train"]
    if "test" in parts:
        test_x, test_y = parts["test"]
    else:
        keep, take = split_indices(strata(y), resolve_size(test_size, len(y), "test_size"), TEST_SPLIT_SEED)
        x, y, test_x, test_y = take_rows(x, keep), y[keep], take_rows(x, take), y[take]
    if "val" in parts:
        val_x, val_y = parts["val"]
        order = np.random.default_rng(seed).permutation(len(y))  # same random order as when val is carved
        x, y = take_rows(x, order), y[order]
    else:
        keep, take = split_indices(strata(y), resolve_size(val_size, len(y), "val_size"), seed)
        x, y, val_x, val_y = take_rows(x, keep), y[keep], take_rows(x, take), y[take]
    return {"train": (x, y), "val": (val_x, val_y), "test": (test_x, test_y)}


def load_files(
    path: str | Path,
    *,
    features: str | list[str],
    label: str | list[str],
    test_path: str | Path | None = None,
    format: str | None = None,
    seed: int = 0,
    val_size: int | float = 0.1,
    test_size: int | float = 0.2,
    cache_dir: str | Path | None = None,
    label_kind: str = "class",
) -> ArraySplits:
    """Load the user's own classification data as train / val / test arrays.

    path: a .csv, .json / .jsonl or .parquet file (optionally .gz etc.), or a save_to_disk folder.
    features: a list of numeric columns (stacked into shape (F,)), or one column holding a list / nested list per row.
    label: the class column: non-negative integers (used as ids) or strings (sorted -> ids, `class_names` set); with
        ``label_kind`` multi_label a list of 0/1 columns, with regression a numeric target column.
    test_path: a separate test file; otherwise a 'test' split of a DatasetDict folder; otherwise `test_size` rows of
        the training data are held out (stratified, fixed seed 12345, the same for every run).
    val_size: carved from the training data with `seed` (never from test); a 'validation' split of a DatasetDict
        folder is used instead when present.
    cache_dir: where `datasets` may write its Arrow cache; default a temporary folder removed afterwards.
    """
    feature_list = _feature_columns(features, label)
    with file_parts(path, test_path, format, cache_dir) as parts:
        arrays, num_classes, class_names = _read_arrays(parts, features, feature_list, label, label_kind)
    splits = split_rows(arrays, seed=seed, val_size=val_size, test_size=test_size, strata=strata)
    (x, y), (val_x, val_y), (test_x, test_y) = splits["train"], splits["val"], splits["test"]
    location = Path(path).expanduser()
    return ArraySplits(name=dataset_name(location), train_x=x, train_y=y, val_x=val_x, val_y=val_y,
                       test_x=test_x, test_y=test_y, input_shape=tuple(int(d) for d in x.shape[1:]),
                       num_classes=num_classes, class_names=class_names,
                       source=str(location) + (f" (test: {Path(test_path).expanduser()})" if test_path else ""))


def load_unlabelled_inputs(path: str | Path, *, features: str | list[str], format: str | None = None) -> np.ndarray:
    """The feature columns of every row of a file (its 'train' split), for inputs nobody has labels for."""
    location = Path(path).expanduser()
    if not location.exists():
        raise DistillError(f"Unlabelled data path {location} does not exist; check the path (relative paths are from "
                           f"{Path.cwd()}).")
    feature_list = [features] if isinstance(features, str) else list(features)
    with tempfile.TemporaryDirectory(prefix="distill-datasets-", ignore_cleanup_errors=True) as cache:
        splits = load_file_splits(location, infer_format(location, format), cache)
        table = pick_split(splits, location, ("train",))
        check_columns(table, feature_list, str(location))
        return _features(table, features, str(location))
