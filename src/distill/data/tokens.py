"""Tokenised text for Hugging Face models: a dataset of encodings and its padding collator."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset


class TokenizedTexts(Dataset):
    """Texts tokenised once (truncated to ``max_length``, with the count of truncated texts kept), padded per
    batch by ``collate_fn``. Items are ``{"input_ids", "attention_mask"}`` (plus ``labels`` when given)."""

    def __init__(self, texts: Sequence[str], tokenizer: Any, *, max_length: int, labels: Sequence[int] | None = None):
        full = tokenizer(list(texts), truncation=False)["input_ids"]
        self.truncated = sum(len(ids) > max_length for ids in full)
        encodings = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.input_ids = encodings["input_ids"]
        self.labels = list(labels) if labels is not None else None
        self.tokenizer = tokenizer
        self.texts = list(texts)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"input_ids": torch.tensor(self.input_ids[index]),
                "attention_mask": torch.ones(len(self.input_ids[index]), dtype=torch.long)}
        if self.labels is not None:
            item["labels"] = torch.tensor(self.labels[index])
        return item

    def collate_fn(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(len(item["input_ids"]) for item in items)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = {
            "input_ids": torch.full((len(items), length), pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(items), length), dtype=torch.long),
        }
        for row, item in enumerate(items):
            size = len(item["input_ids"])
            batch["input_ids"][row, :size] = item["input_ids"]
            batch["attention_mask"][row, :size] = 1
        if "labels" in items[0]:
            batch["labels"] = torch.stack([item["labels"] for item in items])
        return batch


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
