"""In-memory datasets as numpy arrays: the split container, a torch Dataset view, and stratified splitting."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from distill.errors import DistillError

# Seed of the fixed test splits carved from data that ships without one: independent of the run seed,
# so every run is scored on the same samples.
TEST_SPLIT_SEED = 12345


@dataclass
class ArraySplits:
    """Train / validation / test arrays of one dataset, ready to wrap in `ArrayDataset`.

    `*_x` are float32 arrays of shape (N, *input_shape); `*_y` are int64 class ids of shape (N,).
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: list[str] | None = None
    source: str = ""

    def summary(self) -> dict:
        """Sizes of each split, the per-sample input shape, the class count and where the data came from."""
        return {
            "name": self.name,
            "train": int(len(self.train_y)),
            "val": int(len(self.val_y)),
            "test": int(len(self.test_y)),
            "input_shape": list(self.input_shape),
            "num_classes": int(self.num_classes),
            **({"class_names": list(self.class_names)} if self.class_names else {}),
            "source": self.source,
        }

    def datasets(self) -> tuple["ArrayDataset", "ArrayDataset", "ArrayDataset"]:
        """(train, val, test) as `ArrayDataset`s."""
        return (
            ArrayDataset(self.train_x, self.train_y),
            ArrayDataset(self.val_x, self.val_y),
            ArrayDataset(self.test_x, self.test_y),
        )


class ArrayDataset(torch.utils.data.Dataset):
    """Wraps (x, y) numpy arrays; item i is {"inputs": float32 tensor, "labels": int64 scalar tensor}.

    The arrays are converted to torch tensors once (sharing memory where the dtype already matches),
    so indexing is cheap.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        # class ids stay int64; multi-label rows [N, L] and regression targets stay float32
        y = np.ascontiguousarray(y, dtype=np.float32 if np.asarray(y).dtype.kind == "f" else np.int64)
        if y.ndim not in (1, 2) or len(x) != len(y):
            raise DistillError(
                f"ArrayDataset needs one label per sample, got inputs of shape {x.shape} and labels of shape {y.shape}."
            )
        self.inputs = torch.from_numpy(x)
        self.labels = torch.from_numpy(y)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i) -> dict[str, torch.Tensor]:
        return {"inputs": self.inputs[i], "labels": self.labels[i]}


def resolve_size(size: int | float, n: int, what: str) -> int:
    """A split size given as a count or a fraction in (0, 1) -> a count; checks it leaves something behind."""
    bad = f"{what} must be a whole count or a fraction between 0 and 1, got {size!r}."
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
        raise DistillError(bad)
    if isinstance(size, (float, np.floating)) and 0.0 < float(size) < 1.0:
        count = max(1, int(round(float(size) * n)))
    elif float(size).is_integer() and size >= 0:
        count = int(size)
    else:
        raise DistillError(bad)
    if count > 0 and count >= n:
        raise DistillError(
            f"{what}={size!r} would take {count} of only {n} samples, leaving none to train on; use a smaller {what}."
        )
    return count


def split_indices(y: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random split of range(len(y)) into (kept, taken) index arrays, `size` taken.

    Each class contributes in proportion to its frequency (largest-remainder rounding, ties broken at random),
    so the taken part mirrors the label distribution. Both parts come back in random order (source files are
    often sorted by label, so a prefix of a split must not be one class). Deterministic for (y, size, seed).
    """
    y = np.asarray(y)
    n = len(y)
    rng = np.random.default_rng(seed)
    if size <= 0:
        return rng.permutation(n), np.zeros(0, dtype=np.int64)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = counts * (size / n)
    take = np.floor(quota).astype(np.int64)
    remainder = int(size - take.sum())
    if remainder > 0:
        # Largest fractional parts first; random tie-breaking via a random secondary key.
        order = np.lexsort((rng.random(len(classes)), -(quota - take)))
        take[order[:remainder]] += 1
    taken = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        if take[c] > 0:
            taken.append(rng.choice(members, size=int(take[c]), replace=False))
    taken_idx = np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[taken_idx] = False
    return rng.permutation(np.flatnonzero(mask)), rng.permutation(taken_idx)


def carve_validation(
    x: np.ndarray, y: np.ndarray, *, val_size: int | float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split training data into (train_x, train_y, val_x, val_y), stratified by label.

    `val_size` is a count or a fraction in (0, 1); 0 gives an empty validation split.
    Both parts come back in a random order fixed by `seed`.
    """
    if len(x) != len(y):
        raise DistillError(f"carve_validation needs one label per sample, got {len(x)} inputs and {len(y)} labels.")
    count = resolve_size(val_size, len(y), "val_size")
    keep, take = split_indices(y, count, seed)
    return x[keep], y[keep], x[take], y[take]


def subsample(x: np.ndarray, y: np.ndarray, num_samples: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified random subset of `num_samples` rows (all rows when None or >= len)."""
    if num_samples is None:
        return x, y
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise DistillError(f"num_samples must be a positive whole number, got {num_samples!r}.")
    if num_samples >= len(y):
        return x, y
    _, take = split_indices(y, int(num_samples), seed)
    return x[take], y[take]

