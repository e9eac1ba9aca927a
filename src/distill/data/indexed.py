"""A dataset view whose items also carry their position, so stored per-sample results (a teacher cache) can be
looked up for exactly the samples in a batch, whatever the shuffling, batching or DDP sharding."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from distill.data.tokens import collate_fn_of

SAMPLE_ID = "sample_id"


class IndexedDataset(Dataset):
    """Item i of ``dataset`` plus ``sample_id`` = i (an int64 scalar tensor). Models never see the key: signal
    capture passes only model inputs on."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        inner_collate = collate_fn_of(dataset)
        if inner_collate is not None:
            # Padding collators know only their own keys: collate the rest, then add the ids.
            def collate_fn(items: list[dict[str, Any]]) -> dict[str, Any]:
                batch = inner_collate([{key: value for key, value in item.items() if key != SAMPLE_ID}
                                       for item in items])
                batch[SAMPLE_ID] = torch.stack([item[SAMPLE_ID] for item in items])
                return batch
            self.collate_fn = collate_fn
        else:
            self.collate_fn = default_collate

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], SAMPLE_ID: torch.tensor(index, dtype=torch.int64)}
