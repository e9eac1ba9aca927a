"""Generated records on disk: append-only JSONL shards and an index that says how much of each shard is committed.

An append writes whole lines, flushes and fsyncs the shard, then rewrites ``index.json`` atomically with the
shard's new length. Opening the folder again cuts every shard back to its committed length, so a write cut off
by a kill leaves no half record and no record twice: what was committed stays, what was not is generated again.
The index also holds the fingerprint of what the records depend on (the generation settings, the teacher); a
folder made with other settings is refused rather than mixed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from distill.checkpoint import check_writable, write_json_atomic, writing
from distill.config.base import differences
from distill.errors import DistillError

INDEX_FILE = "index.json"
FORMAT_VERSION = 1


class RecordStore:
    """The records under ``folder``, each a JSON object with a unique ``key``."""

    def __init__(self, folder: str | Path, fingerprint: dict[str, Any], *, shard_records: int = 1000):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.shard_records = shard_records
        check_writable(self.folder, "--output")
        index_path = self.folder / INDEX_FILE
        if index_path.is_file():
            self.index = self._read_index(index_path)
            self._cut_uncommitted()
        else:
            if self.folder.exists() and any(self.folder.iterdir()):
                raise DistillError(f"{self.folder} is not empty and holds no {INDEX_FILE}, so it is not a folder of "
                                   "generated records; choose another --output")
            self.index = {"version": FORMAT_VERSION, "fingerprint": fingerprint, "shards": [], "complete": False}
            self.commit()  # the folder is this store's from now on: a kill during the first append leaves it resumable
        self.keys = {record["key"] for record in self.records()}

    def _read_index(self, path: Path) -> dict[str, Any]:
        try:
            index = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise DistillError(f"{path} cannot be read ({error}); it indexes the records of {self.folder}. Restore "
                               "it, or generate into another --output") from None
        differing = differences(index.get("fingerprint"), self.fingerprint)
        if differing:
            raise DistillError(f"{self.folder} holds records generated with other settings (they differ at "
                               f"{', '.join(differing[:6])}); records of two settings are not mixed. Run with the "
                               "same recipe to continue, or choose another --output")
        return index

    def _cut_uncommitted(self) -> None:
        committed = {shard["file"]: shard["bytes"] for shard in self.index["shards"]}
        for path in sorted(self.folder.glob("shard-*.jsonl")):
            size = committed.get(path.name)
            if size is None:
                path.unlink()  # created by an append that never committed
            elif path.stat().st_size > size:
                with open(path, "r+b") as handle:
                    handle.truncate(size)
            elif path.stat().st_size < size:
                raise DistillError(f"{path} is shorter than {INDEX_FILE} says ({path.stat().st_size} < {size} "
                                   "bytes): committed records were lost outside distill. Generate into another "
                                   "--output")

    def records(self) -> Iterator[dict[str, Any]]:
        return committed_records(self.folder, self.index)

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write ``records`` (keys not yet present) and commit them, all or none."""
        fresh = [record for record in records if record["key"] not in self.keys]
        if not fresh:
            return
        shards = self.index["shards"]
        if not shards or shards[-1]["records"] >= self.shard_records:
            shards.append({"file": f"shard-{len(shards):05d}.jsonl", "bytes": 0, "records": 0})
        shard = shards[-1]
        path = self.folder / shard["file"]
        payload = b"".join(json.dumps(record, sort_keys=True).encode() + b"\n" for record in fresh)
        self.folder.mkdir(parents=True, exist_ok=True)
        with writing(path):
            with open(path, "ab") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
        shard["bytes"] += len(payload)
        shard["records"] += len(fresh)
        self.commit()
        self.keys.update(record["key"] for record in fresh)

    def finish(self, summary: dict[str, Any]) -> None:
        self.index.update(complete=True, summary=summary)
        self.commit()

    def commit(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / INDEX_FILE, self.index)

    def __len__(self) -> int:
        return sum(shard["records"] for shard in self.index["shards"])


def committed_records(folder: Path, index: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The records ``index`` commits, read without writing anything (bytes past a shard's length are ignored)."""
    for shard in index["shards"]:
        path = folder / shard["file"]
        try:
            with open(path, "rb") as handle:
                data = handle.read(shard["bytes"])
        except OSError as error:
            raise DistillError(f"{path} cannot be read ({error.strerror or error}); {folder}/{INDEX_FILE} lists "
                               "it") from None
        if len(data) < shard["bytes"]:
            raise DistillError(f"{path} is shorter than {INDEX_FILE} says ({len(data)} < {shard['bytes']} bytes): "
                               "committed records were lost outside distill")
        for line in data.splitlines():
            yield json.loads(line)


def read_generated(folder: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records of a finished ``distill generate`` folder, and its index."""
    folder = Path(folder)
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        raise DistillError(f"{folder} holds no generated records (no {INDEX_FILE}); make them with distill generate")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as error:
        raise DistillError(f"{index_path} cannot be read ({error})") from None
    if not index.get("complete"):
        committed = sum(shard["records"] for shard in index["shards"])
        raise DistillError(f"the generation in {folder} is not finished ({committed} records so far); run the same "
                           "distill generate command again to finish it, then filter")
    return list(committed_records(folder, index)), index


def as_chats(folder: str | Path, column: str) -> list[list[dict[str, str]]]:
    """A finished folder of generated (or kept) records as chats for sequence-level distillation: the prompt as
    the user's turn (or the prompt's own messages), the teacher's answer as the assistant's, so the student's loss
    falls on the answer alone."""
    if column != "messages":
        raise DistillError(f"{folder} holds generated records, read as chats: set data.lm.format: chat (and leave "
                           "data.lm.messages_column at messages)")
    records, _ = read_generated(folder)
    if not records:
        raise DistillError(f"{folder} holds no records (every one was filtered out?); there is nothing to train on")
    chats = []
    for record in records:
        prompt = record["prompt"]
        turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        chats.append([*turns, {"role": "assistant", "content": record["completion"]}])
    return chats
