"""The on-disk layout of a teacher cache, shared by the writer and the reader.

A cache is a folder::

    cache.json                    metadata, written last: a folder without it is an unfinished build
    index.safetensors             per split: sample_ids, shard, offset (sample id -> shard file, row)
    train-00000.safetensors ...   shards of ``samples_per_shard`` samples each, in sample-id order
    val-00000.safetensors ...     (the validation split, when the recipe has one: eval/loss needs it)

A shard holds ``sample_ids`` (int64 [n]) and, per stored signal ``S``, ``values/S``. A signal whose per-sample
shape is fixed (classifier logits, pooled features) is one tensor [n, *shape]. A signal with a variable leading
per-sample dimension (tokens) is "ragged": the rows of all samples concatenated, [rows, *shape], plus
``offsets/S`` (int64 [n + 1]) so that sample i owns rows offsets[i]:offsets[i + 1]. Integer signals (top-k token
ids) are stored in the narrowest integer dtype that holds them, values in float16/bfloat16 (or float32).

Shards carry no timestamps, so the same teacher on the same data writes byte-identical shards; their sha256 is
recorded in ``cache.json`` and checked before a cache is used.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.errors import DistillError

FORMAT_NAME = "distill-teacher-cache"
FORMAT_VERSION = 1
METADATA_FILE = "cache.json"
INDEX_FILE = "index.safetensors"
PROGRESS_FILE = "build-progress.json"
PARTIAL = ".partial"
SAMPLE_IDS = "sample_ids"
VALUES_PREFIX = "values/"
OFFSETS_PREFIX = "offsets/"

# A causal LM teacher's ``final_hidden`` (hidden states + head: the full next-token distribution) is stored as its
# top k per token: three per-token signals, read back together as one ``distill.capture.TopKTeacher``.
FINAL_HIDDEN = "final_hidden"
TOPK_LOGPROBS = "final_hidden.topk_logprobs"   # [tokens, k] float: log-probabilities at temperature 1, decreasing
TOPK_IDS = "final_hidden.topk_ids"             # [tokens, k] narrowest unsigned int holding the vocabulary
LOG_TAIL = "final_hidden.log_tail"             # [tokens, 1] float: log of the mass outside the top k
TOPK_SIGNALS = (TOPK_LOGPROBS, TOPK_IDS, LOG_TAIL)
DEFAULT_TOP_K = 32                             # float16 + uint16: 32 x 4 + 2 = 130 bytes per token

VALUE_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16,
                                        "float32": torch.float32}

# safetensors dtype codes -> numpy dtypes for memory-mapped reading; bfloat16 has no numpy type, so its bits
# are read as uint16 and viewed as bfloat16 by torch.
_NUMPY_OF_SAFETENSORS = {"F16": np.float16, "BF16": np.uint16, "F32": np.float32, "F64": np.float64,
                         "I8": np.int8, "U8": np.uint8, "I16": np.int16, "U16": np.uint16, "I32": np.int32,
                         "U32": np.uint32, "I64": np.int64, "U64": np.uint64, "BOOL": np.bool_}
_TORCH_OF_SAFETENSORS = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                         "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "U16": torch.uint16,
                         "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64, "U64": torch.uint64,
                         "BOOL": torch.bool}


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:05d}.safetensors"


def values_key(signal: str) -> str:
    return VALUES_PREFIX + signal


def offsets_key(signal: str) -> str:
    return OFFSETS_PREFIX + signal


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def narrowest_int_dtype(max_value: int, min_value: int = 0) -> torch.dtype:
    """The smallest integer dtype holding every value in [min_value, max_value] (token ids: [0, vocab - 1]).
    SmolLM2's 49,152-token vocabulary fits uint16: 2 bytes per id instead of int64's 8."""
    candidates = [torch.uint8, torch.uint16, torch.uint32] if min_value >= 0 else []
    candidates += [torch.int8, torch.int16, torch.int32, torch.int64]
    for dtype in sorted(candidates, key=lambda candidate: torch.iinfo(candidate).bits):
        info = torch.iinfo(dtype)
        if info.min <= min_value and max_value <= info.max:
            return dtype
    raise DistillError(f"no integer dtype holds values in [{min_value}, {max_value}]")


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class SignalInfo:
    """How one signal is stored: dtype, the per-sample shape after the (ragged) leading dimension, raggedness."""
    dtype: str
    shape: tuple[int, ...]
    ragged: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "ragged": self.ragged}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SignalInfo":
        return cls(str(data["dtype"]), tuple(int(size) for size in data["shape"]), bool(data.get("ragged", False)))

    @property
    def bytes_per_row(self) -> int:
        element = torch.empty((), dtype=getattr(torch, self.dtype)).element_size()
        return element * int(np.prod(self.shape, dtype=np.int64))


def read_metadata(directory: Path) -> dict[str, Any]:
    """``cache.json`` of a finished cache, checked for the fields every reader relies on."""
    directory = Path(directory)
    path = directory / METADATA_FILE
    if not directory.is_dir():
        raise DistillError(f"teacher cache {directory} does not exist (build it with `distill cache build RECIPE "
                           f"--output {directory}`)")
    if not path.is_file():
        hint = (" It holds an unfinished build: run the same `distill cache build` again to complete it."
                if (directory / PROGRESS_FILE).is_file() else "")
        raise DistillError(f"{directory} is not a finished teacher cache ({METADATA_FILE} missing).{hint}")
    try:
        metadata = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DistillError(f"cannot read {path}: {error}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise DistillError(f"{path} is not a distill teacher cache (format {metadata.get('format')!r})"
                           if isinstance(metadata, dict) else f"{path} is not a distill teacher cache")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise DistillError(f"{path} has cache format version {metadata.get('format_version')}; this distill reads "
                           f"version {FORMAT_VERSION}. Rebuild the cache.")
    for key in ("signals", "splits", "teacher_fingerprint", "dataset_fingerprints"):
        if key not in metadata:
            raise DistillError(f"{path} lacks the field {key!r}; the cache is damaged, rebuild it")
    return metadata


def signal_infos(metadata: dict[str, Any]) -> dict[str, SignalInfo]:
    return {name: SignalInfo.from_json(info) for name, info in metadata["signals"].items()}


class MappedShard:
    """One shard's tensors, memory-mapped: rows are read on demand (any order), so a training process touches
    only the pages of the samples it draws, and DDP ranks each read their own.

    The safetensors layout is a documented, stable spec (8-byte little-endian header size, a JSON header of
    dtype/shape/byte offsets, then the raw little-endian data); the library loads whole tensors or contiguous
    slices only, and a batch of shuffled samples needs row gathers."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as handle:
                (header_size,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(header_size))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DistillError(f"cache shard {path} cannot be read: {error}") from None
        base = 8 + header_size
        self.arrays: dict[str, tuple[np.ndarray, torch.dtype]] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            shape = tuple(info["shape"])
            numpy_dtype = _NUMPY_OF_SAFETENSORS[info["dtype"]]
            if end == start:
                array = np.zeros(shape, dtype=numpy_dtype)
            else:
                array = np.memmap(path, dtype=numpy_dtype, mode="r", offset=base + start, shape=shape)
            self.arrays[name] = (array, _TORCH_OF_SAFETENSORS[info["dtype"]])

    def names(self) -> list[str]:
        return list(self.arrays)

    def rows(self, name: str, rows: np.ndarray | slice) -> torch.Tensor:
        array, dtype = self.arrays[name]
        taken = np.array(array[rows], copy=True)  # off the read-only map: callers may write to the result
        tensor = torch.from_numpy(taken)
        return tensor.view(dtype) if dtype == torch.bfloat16 else tensor

    def full(self, name: str) -> torch.Tensor:
        return self.rows(name, slice(None))
