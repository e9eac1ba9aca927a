"""The ``generate`` section: which prompts the teacher answers, and how it decodes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distill.config.base import StrictSection


class TaskPromptsConfig(StrictSection):
    """Prompts from the verifiable task suite (``distill.tasks``); each record keeps the gold answer as its
    reference, so answers can be verified."""
    task: str = Field(description="A task of distill.tasks: addition, arithmetic, reverse, strings, word_problems.")
    split: Literal["train", "test"] = Field("train", description="The task's split the prompts come from.")
    count: int = Field(gt=0, description="How many distinct prompts.")
    seed: int = Field(0, description="Seed of the draw of prompts (the split does not depend on it).")


class FilePromptsConfig(StrictSection):
    """Prompts from your file: plain text or chat message lists, one per row."""
    path: str = Field(description="A JSON(L) / CSV / parquet file or save_to_disk folder of prompts.")
    column: str = Field("prompt", description="Column holding the prompt: a string, or a list of {role, content} "
                        "messages (a chat).")
    id_column: str | None = Field(None, description="Column holding a stable prompt id (null: the prompt's hash).")
    reference_column: str | None = Field(None, description="Column holding a reference answer, kept with each "
                                         "record for answer verification (null: none).")
    format: str | None = Field(None, description="File format, as data.format (null: told from the name).")
    max_prompts: int | None = Field(None, gt=0, description="Use at most this many prompts, the first ones.")


class DecodingConfig(StrictSection):
    """How the teacher decodes each answer."""
    max_new_tokens: int = Field(128, gt=0, description="Tokens generated at most per answer.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature; 0 decodes greedily (then n is 1, "
                               "checked).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest set of tokens whose "
                         "probability reaches top_p.")
    top_k: int | None = Field(None, gt=0, description="Sample among the k most likely tokens only (null: all).")
    n: int = Field(1, gt=0, description="Answers sampled per prompt.")
    stop: list[str] = Field(default_factory=list, description="Strings that end an answer (cut before them), "
                            "besides the tokenizer's end-of-sequence token.")

    @model_validator(mode="after")
    def _greedy_once(self) -> "DecodingConfig":
        if self.temperature == 0 and self.n > 1:
            raise ValueError(f"decoding.temperature 0 decodes greedily, so the {self.n} answers per prompt "
                             "(decoding.n) would be the same; set n: 1 or a temperature above 0")
        return self


class GenerationConfig(StrictSection):
    """Teacher-generated data: ``distill generate RECIPE -o DATA`` has ``teacher.model`` answer these prompts and
    writes provenance-stamped records (append-only JSONL shards; a rerun after a kill continues)."""
    prompts: TaskPromptsConfig | FilePromptsConfig = Field(description="Where the prompts come from: {task, "
                                                           "count, ...} or {path, column, ...}.")
    decoding: DecodingConfig = Field(default_factory=DecodingConfig, description="How the teacher decodes.")
    batch_size: int = Field(8, gt=0, description="Prompts generated together (sorted by length, so a batch holds "
                            "prompts of about the same length).")
    chat: Literal["auto", "always", "never"] = Field(
        "auto", description="Wrap plain prompts in the tokenizer's chat template: auto (when it has one), always "
        "(refused without one), never. Chat prompts always use it.")
    shard_records: int = Field(1000, gt=0, description="Records per JSONL shard of the output.")
