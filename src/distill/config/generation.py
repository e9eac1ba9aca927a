"""The ``generate`` section: which prompts the teacher answers, and how it decodes."""

from __future__ import annotations

from typing import Annotated, Literal, Union

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


class SelfInstructConfig(StrictSection):
    """Prompts the teacher writes itself (Self-Instruct, Wang et al. 2023): from a few seed instructions, it is
    asked for new ones; a candidate is kept when its ROUGE-L to every instruction kept so far stays at or below
    rouge_l_max (the paper's 0.7) and its length is within bounds."""
    seeds: str = Field(description="A JSON(L) / CSV / parquet file (or save_to_disk folder) of seed instructions.")
    column: str = Field("instruction", description="The seeds' column holding each instruction.")
    count: int = Field(gt=0, description="How many new instructions to keep.")
    per_request: int = Field(8, gt=0, description="New instructions asked for in each request.")
    examples: int = Field(4, gt=0, description="Instructions shown in each request (seeds and kept ones, drawn at "
                          "random; the paper: 6 seeds and 2 generated).")
    rouge_l_max: float = Field(0.7, gt=0, le=1, description="A candidate whose ROUGE-L F-measure to any kept "
                               "instruction exceeds this is rejected as too similar.")
    min_words: int = Field(3, gt=0, description="Fewest words an instruction may have.")
    max_words: int = Field(150, gt=0, description="Most words an instruction may have.")
    max_requests: int | None = Field(None, gt=0, description="Stop after this many requests even if fewer than "
                                     "count were kept (null: 5 x count / per_request + 10).")


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


class EndpointConfig(StrictSection):
    """An OpenAI-compatible server as the teacher (distill serve, vLLM, SGLang, llama.cpp, a hosted API)."""
    url: str = Field(description="Base URL of the API, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="The model name the server knows the teacher by.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key (null: none sent).")
    concurrency: int = Field(8, gt=0, description="Requests in flight at once.")
    timeout: float = Field(120.0, gt=0, description="Seconds a request may take before it is retried.")
    retries: int = Field(3, ge=0, description="Retries of a request that failed with a connection error, a "
                         "timeout, 429 or a 5xx, with exponential back-off; then the command stops, keeping the "
                         "records so far.")

    @model_validator(mode="after")
    def _http(self) -> "EndpointConfig":
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint.url must start with http:// or https://, got {self.url!r}")
        return self


class TeacherEndpointConfig(EndpointConfig):
    """A teacher behind an OpenAI-compatible server that scores given token sequences (distill serve, vLLM): each
    sequence is sent as token ids to /completions with echo and logprobs (and vLLM's prompt_logprobs), and the
    teacher's log-probability of every token (and its top_logprobs likeliest) comes back. Teacher and student must
    share a tokenizer (checked with a probe text before training)."""
    top_logprobs: int = Field(0, ge=0, le=20, description="Likeliest tokens asked for at each position (0: only "
                              "the log-probability of the token there, enough for sampled_kl's sampled "
                              "estimator; its topk estimator needs top_k of them).")


class GenerationConfig(StrictSection):
    """Teacher-generated data: ``distill generate RECIPE -o DATA`` has ``teacher.model`` answer these prompts and
    writes provenance-stamped records (append-only JSONL shards; a rerun after a kill continues)."""
    prompts: TaskPromptsConfig | FilePromptsConfig | SelfInstructConfig = Field(
        description="Where the prompts come from: {task, count, ...}, {path, column, ...} or {seeds, count, ...} "
        "(Self-Instruct: the teacher writes them).")
    decoding: DecodingConfig = Field(default_factory=DecodingConfig, description="How the teacher decodes.")
    batch_size: int = Field(8, gt=0, description="Prompts generated together (sorted by length, so a batch holds "
                            "prompts of about the same length).")
    chat: Literal["auto", "always", "never"] = Field(
        "auto", description="Wrap plain prompts in the tokenizer's chat template: auto (when it has one), always "
        "(refused without one), never. Chat prompts always use it.")
    shard_records: int = Field(1000, gt=0, description="Records per JSONL shard of the output.")
    endpoint: EndpointConfig | None = Field(None, description="Answer through an OpenAI-compatible server instead "
                                            "of teacher.model in this process (null: in process).")


# --------------------------------------------------------------------------------------------------- filters
class LengthFilter(StrictSection):
    """Drop answers outside length bounds, and (by default) answers cut off at max_new_tokens."""
    kind: Literal["length"] = Field("length", description="Selects this filter.")
    min_tokens: int = Field(1, ge=0, description="Fewest generated tokens an answer may have.")
    max_tokens: int | None = Field(None, gt=0, description="Most generated tokens (null: no bound).")
    min_chars: int = Field(1, ge=0, description="Fewest characters of answer text.")
    max_chars: int | None = Field(None, gt=0, description="Most characters (null: no bound).")
    drop_truncated: bool = Field(True, description="Drop answers that ran into max_new_tokens (finish_reason "
                                 "length): they end mid-thought.")


class ExactDedupFilter(StrictSection):
    """Drop records whose text repeats an earlier kept record's (case and whitespace ignored)."""
    kind: Literal["exact_dedup"] = Field("exact_dedup", description="Selects this filter.")
    on: Literal["completion", "prompt", "prompt_and_completion"] = Field(
        "prompt_and_completion", description="Which text must repeat for a record to be a duplicate.")


class NearDedupFilter(StrictSection):
    """Drop records whose text nearly repeats an earlier kept record's: MinHash signatures of character or word
    shingles, candidates from locality-sensitive hashing (datasketch), estimated Jaccard similarity >= threshold."""
    kind: Literal["near_dedup"] = Field("near_dedup", description="Selects this filter.")
    on: Literal["completion", "prompt", "prompt_and_completion"] = Field("completion", description="Which text "
                                                                          "is compared.")
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity of the shingle sets at which a "
                             "record is a near duplicate.")
    shingle: Literal["char", "word"] = Field("char", description="Shingles of characters (short texts) or words.")
    size: int = Field(5, gt=0, description="Characters or words per shingle.")
    num_perm: int = Field(128, gt=15, description="MinHash permutations: more estimate the similarity closer.")


class EvalSetSource(StrictSection):
    """An evaluation set generated data must not contain: a task split, or a file's text column."""
    name: str = Field(description="Its name in the filter report.")
    task: str | None = Field(None, description="A task of distill.tasks (its test split by default).")
    split: Literal["train", "test"] = Field("test", description="The task's split.")
    count: int = Field(1000, gt=0, description="How many of the task's items (the seed-0 draw).")
    path: str | None = Field(None, description="Or a file of evaluation items (JSON(L) / CSV / parquet / "
                             "save_to_disk).")
    column: str = Field("text", description="The file's column holding each item's text.")
    format: str | None = Field(None, description="The file's format (null: told from the name).")

    @model_validator(mode="after")
    def _one_source(self) -> "EvalSetSource":
        if (self.task is None) == (self.path is None):
            raise ValueError(f"evaluation set {self.name!r}: give task or path, not both or neither")
        return self


class ContaminationFilter(StrictSection):
    """Drop records that share a word n-gram with an evaluation item (GPT-3's 13-gram rule), or that contain a
    whole evaluation item shorter than n words, so short items are checked too. Items of a task split are matched
    whole only: its problems share their template's wording, and only the same problem is a leak."""
    kind: Literal["contamination"] = Field("contamination", description="Selects this filter.")
    sets: list[EvalSetSource] = Field(min_length=1, description="The evaluation sets to check against.")
    n: int = Field(13, gt=0, description="Words per n-gram.")
    on: Literal["completion", "prompt", "prompt_and_completion"] = Field(
        "prompt_and_completion", description="Which text of a record is checked.")


class VerifyFilter(StrictSection):
    """Drop answers whose final answer (after 'Answer:', else the last line) differs from the record's reference
    (the task's gold answer, or the prompt file's reference column)."""
    kind: Literal["verify"] = Field("verify", description="Selects this filter.")
    without_reference: Literal["keep", "drop"] = Field("keep", description="What happens to records that have no "
                                                       "reference to check against.")


class SelfScoreFilter(StrictSection):
    """Drop answers the teacher itself found unlikely: mean log-probability per generated token below a bound."""
    kind: Literal["self_score"] = Field("self_score", description="Selects this filter.")
    min_mean_logprob: float = Field(le=0, description="Lowest mean token log-probability kept, e.g. -1.0.")


class FormatFilter(StrictSection):
    """Drop answers not in the expected format: a regular expression to match, and/or valid JSON (with keys)."""
    kind: Literal["format"] = Field("format", description="Selects this filter.")
    regex: str | None = Field(None, description="A Python regular expression the answer must contain (re.search).")
    valid_json: bool = Field(False, description="The answer must parse as JSON.")
    required_keys: list[str] = Field(default_factory=list, description="With valid_json: keys the JSON object must "
                                     "have.")

    @model_validator(mode="after")
    def _something(self) -> "FormatFilter":
        import re

        if self.regex is None and not self.valid_json:
            raise ValueError("a format filter needs regex and/or valid_json: true")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as error:
                raise ValueError(f"format filter: regex {self.regex!r} is not a valid regular expression "
                                 f"({error})") from None
        return self


FilterSpec = Annotated[Union[LengthFilter, ExactDedupFilter, NearDedupFilter, ContaminationFilter, VerifyFilter,
                             SelfScoreFilter, FormatFilter], Field(discriminator="kind")]
