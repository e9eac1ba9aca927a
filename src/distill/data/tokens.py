"""Tokenised text for Hugging Face models: a dataset of encodings and its padding collator."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

# Keys of the teacher's own tokenisation in a batch whose student reads the texts with another tokenizer.
TEACHER_PREFIX = "teacher_"


def _encode(tokenizer: Any, texts: Sequence[Any], max_length: int | None) -> dict[str, list[list[int]]]:
    """Token ids (and segment ids, for sentence pairs) of texts or (first, second) pairs."""
    pairs = bool(texts) and isinstance(texts[0], tuple)
    arguments = ([text for text, _ in texts], [second for _, second in texts]) if pairs else (list(texts),)
    options = {"truncation": True, "max_length": max_length} if max_length is not None else {"truncation": False}
    encoded = tokenizer(*arguments, **options)
    keys = ("input_ids", "token_type_ids") if pairs and "token_type_ids" in encoded else ("input_ids",)
    return {key: encoded[key] for key in keys}


class TokenizedTexts(Dataset):
    """Texts (or sentence pairs) tokenised once (truncated to ``max_length``, with the count of truncated texts
    kept), padded per batch by ``collate_fn``. Items are ``{"input_ids", "attention_mask"}`` (plus
    ``token_type_ids`` for pairs, ``labels`` when given). With ``teacher_tokenizer`` the same texts are also
    tokenised for the teacher, under ``teacher_input_ids`` etc. (``teacher_view`` gives a model those)."""

    def __init__(self, texts: Sequence[Any], tokenizer: Any, *, max_length: int, labels: Sequence[Any] | None = None,
                 teacher_tokenizer: Any = None):
        self.texts = list(texts)
        self.tokenizer = tokenizer
        self.teacher_tokenizer = teacher_tokenizer
        self.truncated = sum(len(ids) > max_length for ids in _encode(tokenizer, self.texts, None)["input_ids"])
        self.encodings = _encode(tokenizer, self.texts, max_length)
        self.input_ids = self.encodings["input_ids"]
        if teacher_tokenizer is not None:
            self.teacher_truncated = sum(len(ids) > max_length for ids in
                                         _encode(teacher_tokenizer, self.texts, None)["input_ids"])
            self.encodings.update({TEACHER_PREFIX + key: value for key, value in
                                   _encode(teacher_tokenizer, self.texts, max_length).items()})
        self.labels = list(labels) if labels is not None else None

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {}
        for key, values in self.encodings.items():
            item[key] = torch.tensor(values[index])
            if key.endswith("input_ids"):
                item[key[: -len("input_ids")] + "attention_mask"] = torch.ones(len(values[index]), dtype=torch.long)
        if self.labels is not None:
            item["labels"] = torch.tensor(self.labels[index])
        return item

    def _pad_id(self, key: str) -> int:
        if not key.endswith("input_ids"):
            return 0
        tokenizer = self.teacher_tokenizer if key.startswith(TEACHER_PREFIX) else self.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate_fn(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for key in items[0]:
            if key in ("labels", "sample_id"):
                batch[key] = torch.stack([item[key] for item in items])
                continue
            values = torch.full((len(items), max(len(item[key]) for item in items)), self._pad_id(key),
                                dtype=torch.long)
            for row, item in enumerate(items):
                values[row, :len(item[key])] = item[key]
            batch[key] = values
        return batch


def teacher_view(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch as the teacher reads it: its own tokenisation when the batch carries one, else the batch."""
    if not any(key.startswith(TEACHER_PREFIX) for key in batch):
        return batch
    view = {key[len(TEACHER_PREFIX):]: value for key, value in batch.items() if key.startswith(TEACHER_PREFIX)}
    view.update({key: value for key, value in batch.items() if key in ("labels", "sample_id")})
    return view


def student_view(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without the teacher's tokenisation."""
    return {key: value for key, value in batch.items() if not key.startswith(TEACHER_PREFIX)}


def collate_fn_of(dataset: Dataset) -> Any:
    """The dataset's own collator when it has one (padding text), else None (PyTorch's default)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return getattr(dataset, "collate_fn", None)


def probe_batch(dataset: Dataset) -> dict[str, Any]:
    """The first two samples as one batch: what models and objectives are checked on before any training."""
    from torch.utils.data import default_collate

    collate = collate_fn_of(dataset) or default_collate
    return collate([dataset[index] for index in range(min(2, len(dataset)))])  # type: ignore[arg-type]
