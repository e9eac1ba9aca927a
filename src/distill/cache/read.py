"""Read a teacher cache: verify it, look samples up by id, and describe it (``distill cache info``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from distill.cache.format import (
    INDEX_FILE,
    SAMPLE_IDS,
    MappedShard,
    SignalInfo,
    offsets_key,
    read_metadata,
    sha256_file,
    signal_infos,
    values_key,
)
from distill.errors import DistillError


class CacheSplit:
    """The stored signals of one split, looked up by sample id (rows gathered from memory-mapped shards)."""

    def __init__(self, directory: Path, name: str, meta: dict[str, Any], index: dict[str, Tensor],
                 signals: dict[str, SignalInfo]):
        self.directory, self.name, self.signals = directory, name, signals
        self.shard_files = [shard["file"] for shard in meta["shards"]]
        self.sample_ids = index[f"{name}/sample_ids"].numpy()
        self._shard_of = index[f"{name}/shard"].numpy()
        self._offset_of = index[f"{name}/offset"].numpy()
        size = int(self.sample_ids.max()) + 1 if len(self.sample_ids) else 0
        self._position = np.full(size, -1, dtype=np.int64)   # sample id -> row of the index
        self._position[self.sample_ids] = np.arange(len(self.sample_ids))
        self._shards: dict[int, MappedShard] = {}

    def __len__(self) -> int:
        return len(self.sample_ids)

    def missing(self, sample_ids: np.ndarray) -> np.ndarray:
        """The ids among ``sample_ids`` that this split does not hold."""
        inside = (sample_ids >= 0) & (sample_ids < len(self._position))
        held = np.zeros(len(sample_ids), dtype=bool)
        held[inside] = self._position[sample_ids[inside]] >= 0
        return sample_ids[~held]

    def _shard(self, number: int) -> MappedShard:
        if number not in self._shards:
            self._shards[number] = MappedShard(self.directory / self.shard_files[number])
        return self._shards[number]

    def _locate(self, sample_ids: Tensor) -> tuple[np.ndarray, np.ndarray]:
        ids = sample_ids.detach().to("cpu").numpy().astype(np.int64)
        absent = self.missing(ids)
        if len(absent):
            raise DistillError(f"teacher cache {self.directory} holds no {self.name!r} samples with ids "
                               f"{absent[:8].tolist()}; it was built for other data")
        positions = self._position[ids]
        return self._shard_of[positions], self._offset_of[positions]

    def read(self, sample_ids: Tensor, names: list[str] | set[str]) -> dict[str, Tensor]:
        """Fixed-shape signals of these samples, stacked [len(sample_ids), *shape] in the stored dtype."""
        shards, offsets = self._locate(sample_ids)
        result = {}
        for name in names:
            info = self.signals[name]
            if info.ragged:
                raise DistillError(f"signal {name!r} is stored per token; read it with read_ragged")
            out = torch.empty((len(shards), *info.shape), dtype=getattr(torch, info.dtype))
            for number in np.unique(shards):
                rows = np.nonzero(shards == number)[0]
                out[torch.from_numpy(rows)] = self._shard(int(number)).rows(values_key(name), offsets[rows])
            result[name] = out
        return result

    def read_ragged(self, sample_ids: Tensor, name: str) -> list[Tensor]:
        """A per-token signal of these samples: one [tokens_i, *shape] tensor per sample."""
        shards, offsets = self._locate(sample_ids)
        result = []
        for number, offset in zip(shards.tolist(), offsets.tolist()):
            shard = self._shard(number)
            bounds = shard.rows(offsets_key(name), slice(offset, offset + 2)).tolist()
            result.append(shard.rows(values_key(name), slice(bounds[0], bounds[1])))
        return result

    def read_padded(self, sample_ids: Tensor, name: str, attention_mask: Tensor) -> Tensor:
        """A per-token signal laid out like the batch: [batch, tokens, *shape], the stored rows at the mask's real
        positions and zeros at padding (which the losses mask out)."""
        rows = self.read_ragged(sample_ids, name)
        real = attention_mask.detach().to("cpu").bool()
        info = self.signals[name]
        dtype = getattr(torch, info.dtype)
        if dtype in (torch.uint16, torch.uint32, torch.uint64):  # stored narrow; torch cannot index_put into these
            dtype, rows = torch.int64, [values.to(torch.int64) for values in rows]
        out = torch.zeros((*real.shape, *info.shape), dtype=dtype)
        for sample, values in enumerate(rows):
            if int(real[sample].sum()) != values.shape[0]:
                raise DistillError(f"teacher cache {self.directory}: sample {int(sample_ids[sample])} has "
                                   f"{values.shape[0]} cached tokens of {name!r}, the batch {int(real[sample].sum())}; "
                                   "the cache was built with other tokenization (max_length?)")
            out[sample][real[sample]] = values
        return out

    def shard_sample_ids(self, number: int) -> Tensor:
        return self._shard(number).full(SAMPLE_IDS)


class TeacherCache:
    """A finished cache folder. Opening it checks every shard of the splits asked for against its sha256, so a
    corrupted or missing shard is named before any training starts."""

    def __init__(self, path: str | Path, *, splits: list[str] | None = None, verify: bool = True):
        self.directory = Path(path)
        self.metadata = read_metadata(self.directory)
        self.signals = signal_infos(self.metadata)
        self.split_names = list(self.metadata["splits"])
        if verify:
            self.verify(splits)
        index_path = self.directory / INDEX_FILE
        if not index_path.is_file():
            raise DistillError(f"teacher cache {self.directory}: {INDEX_FILE} is missing; rebuild the cache")
        try:
            self._index = load_file(str(index_path))
        except Exception as error:  # safetensors raises several types for a damaged file
            raise DistillError(f"teacher cache {self.directory}: {INDEX_FILE} cannot be read ({error}); rebuild "
                               "the cache") from None
        self._splits: dict[str, CacheSplit] = {}

    def verify(self, splits: list[str] | None = None) -> None:
        for split in splits or self.split_names:
            if split not in self.metadata["splits"]:
                continue
            for shard in self.metadata["splits"][split]["shards"]:
                path = self.directory / shard["file"]
                if not path.is_file():
                    raise DistillError(f"teacher cache {self.directory}: shard {shard['file']} is missing; rebuild "
                                       "the cache (`distill cache build` keeps every intact shard only while the "
                                       "build is unfinished, so build into a new --output)")
                if sha256_file(path) != shard["sha256"]:
                    raise DistillError(f"teacher cache {self.directory}: shard {shard['file']} is corrupted (its "
                                       "sha256 differs from the one recorded when it was written); rebuild the cache")

    def split(self, name: str) -> CacheSplit:
        if name not in self.metadata["splits"]:
            raise DistillError(f"teacher cache {self.directory} has no {name!r} split (it holds "
                               f"{', '.join(self.split_names)})")
        if name not in self._splits:
            self._splits[name] = CacheSplit(self.directory, name, self.metadata["splits"][name], self._index,
                                            self.signals)
        return self._splits[name]

    def describe(self) -> dict[str, Any]:
        """What ``distill cache info`` prints: sizes, signals, bytes per sample (and per token), fingerprints."""
        metadata = self.metadata
        samples = {split: info["samples"] for split, info in metadata["splits"].items()}
        shard_bytes = sum(shard["bytes"] for info in metadata["splits"].values() for shard in info["shards"])
        total_samples = sum(samples.values())
        tokens = None
        ragged = [name for name, info in self.signals.items() if info.ragged]
        if ragged:
            tokens = 0
            for split in self.split_names:
                reader = self.split(split)
                for number in range(len(reader.shard_files)):
                    tokens += int(reader._shard(number).full(offsets_key(ragged[0]))[-1])
        return {
            "path": str(self.directory), "samples": samples, "tokens": tokens,
            "signals": {name: {"dtype": info.dtype, "shape": list(info.shape), "per_token": info.ragged}
                        for name, info in self.signals.items()},
            "k": metadata.get("k"), "value_dtype": metadata.get("value_dtype"),
            "shards": sum(len(info["shards"]) for info in metadata["splits"].values()),
            "samples_per_shard": metadata.get("samples_per_shard"), "bytes": shard_bytes,
            "bytes_per_sample": round(shard_bytes / max(total_samples, 1), 2),
            "bytes_per_token": round(shard_bytes / tokens, 2) if tokens else None,
            "teacher_fingerprint": metadata["teacher_fingerprint"],
            "tokenizer_fingerprint": metadata.get("tokenizer_fingerprint"),
            "dataset_fingerprints": metadata["dataset_fingerprints"],
            "created": metadata.get("created"), "library_version": metadata.get("library_version"),
            "source": metadata.get("source", {}),
        }
