"""Datasets as numpy arrays: built-in offline datasets and the user's own files."""

from distill.data.arrays import ArrayDataset, ArraySplits, carve_validation
from distill.data.builtin import BUILTIN_DATASETS, load_builtin
from distill.data.files import load_files

__all__ = ["ArraySplits", "ArrayDataset", "load_builtin", "load_files", "BUILTIN_DATASETS", "carve_validation"]
