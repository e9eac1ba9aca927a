"""Fingerprints that tie a cache to the exact teacher weights and the exact inputs it was computed from.

Each is a sha256 over raw tensor bytes with every tensor's name, dtype and shape mixed in, so the same weights
in another dtype (a float16 copy of a float32 teacher) or the same numbers in another shape never collide, and
the result is stable across runs, processes and machines of the same byte order.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from distill.data.indexed import SAMPLE_ID

# Keys of a dataset item that do not reach the teacher: changing them does not change its outputs.
NOT_TEACHER_INPUTS = {"labels", SAMPLE_ID}


def _update(digest: Any, name: str, tensor: Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}|".encode())
    # bytes through a uint8 view: numpy has no bfloat16, and the raw bytes are what identifies the weights.
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def tensors_fingerprint(named_tensors: Iterable[tuple[str, Tensor]]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        _update(digest, name, tensor)
    return "sha256:" + digest.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """The teacher's weights and buffers (batch-norm statistics change outputs too), by name."""
    return tensors_fingerprint(model.state_dict().items())


def dataset_fingerprint(dataset: Dataset, show_progress: bool = False) -> str:
    """The model inputs of every sample, in sample-id order (labels excluded: they do not reach the teacher)."""
    digest = hashlib.sha256()
    size = len(dataset)  # type: ignore[arg-type]
    digest.update(f"samples|{size}|".encode())
    first = dataset[0] if size else {}
    keys = sorted(key for key in first if key not in NOT_TEACHER_INPUTS)
    for key in keys:
        digest.update(f"{key}|".encode())
    for index in range(size):
        item = dataset[index]
        for key in keys:
            value = item[key]
            value = value if isinstance(value, Tensor) else torch.as_tensor(value)
            tensor = value.detach().contiguous()
            digest.update(f"{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "sha256:" + digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """The vocabulary and special tokens (what turns text into the ids the teacher saw); None without one."""
    if tokenizer is None:
        return None
    digest = hashlib.sha256()
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest.update("\n".join(f"{token}\t{index}" for token, index in vocabulary).encode())
    digest.update(repr(sorted((str(k), str(v)) for k, v in tokenizer.special_tokens_map.items())).encode())
    return "sha256:" + digest.hexdigest()
