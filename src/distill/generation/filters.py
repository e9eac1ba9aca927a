"""Filters of generated records, run in the recipe's order: each gives every record it sees a reason to drop it
(or none), and the report counts the drops per filter and reason, with examples and, for contamination, the
evaluation items that matched."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Callable

from distill.errors import DistillError

WORD = re.compile(r"\w+|[^\w\s]")  # words and symbols: "429 - 81" and "429 + 81" differ
EXAMPLES = 3  # dropped records shown per filter in the report

Reasons = list[str | None]


def text_of(record: dict[str, Any], on: str) -> str:
    prompt = record["prompt"]
    if isinstance(prompt, list):
        prompt = "\n".join(message["content"] for message in prompt)
    return {"completion": record["completion"], "prompt": prompt,
            "prompt_and_completion": f"{prompt}\n{record['completion']}"}[on]


def _length(config: Any, records: list[dict[str, Any]]) -> Reasons:
    def reason(record: dict[str, Any]) -> str | None:
        tokens, chars = record["tokens"], len(record["completion"].strip())
        if config.drop_truncated and record.get("finish_reason") == "length":
            return "truncated at max_new_tokens"
        if tokens < config.min_tokens or chars < config.min_chars:
            return "too short"
        if (config.max_tokens is not None and tokens > config.max_tokens) or (
                config.max_chars is not None and chars > config.max_chars):
            return "too long"
        return None
    return [reason(record) for record in records]


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def _exact_dedup(config: Any, records: list[dict[str, Any]]) -> Reasons:
    first: dict[str, str] = {}
    reasons: Reasons = []
    for record in records:
        text = _normalised(text_of(record, config.on))
        reasons.append(f"duplicate of {first[text]}" if text in first else None)
        first.setdefault(text, record["key"])
    return reasons


def _shingles(text: str, shingle: str, size: int) -> set[str]:
    units = WORD.findall(text.lower()) if shingle == "word" else list(_normalised(text))
    joiner = " " if shingle == "word" else ""
    if len(units) <= size:
        return {joiner.join(units)}
    return {joiner.join(units[start:start + size]) for start in range(len(units) - size + 1)}


def _near_dedup(config: Any, records: list[dict[str, Any]]) -> Reasons:
    from datasketch import MinHash, MinHashLSH

    # bands chosen to miss few pairs above the threshold (a candidate is then checked by its estimated Jaccard)
    index = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, weights=(0.1, 0.9))
    signatures: dict[str, MinHash] = {}
    reasons: Reasons = []
    for record in records:
        signature = MinHash(num_perm=config.num_perm, seed=1)
        signature.update_batch([shingle.encode() for shingle in _shingles(text_of(record, config.on), config.shingle,
                                                                          config.size)])
        similar = [(signature.jaccard(signatures[key]), key) for key in index.query(signature)]
        similar = [(score, key) for score, key in similar if score >= config.threshold]
        if similar:
            score, key = max(similar)
            reasons.append(f"near duplicate of {key} (Jaccard about {score:.2f})")
            continue
        index.insert(record["key"], signature)
        signatures[record["key"]] = signature
        reasons.append(None)
    return reasons


def eval_items(source: Any) -> list[tuple[str, str]]:
    """(item id, text) of an evaluation set."""
    if source.task is not None:
        import distill.tasks as tasks

        # the question is what must not leak into training data; its answer alone is too short to tell
        return [(item.id, item.prompt) for item in tasks.examples(source.task, source.split, source.count, 0)]
    from distill.data.files import check_columns, file_parts

    with file_parts(source.path, None, source.format) as parts:
        table, where = parts["train"]
        check_columns(table, [source.column], where)
        return [(f"{source.name}:{row}", str(text)) for row, text in enumerate(table[source.column])]


def _grams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[start:start + n]) for start in range(len(words) - n + 1)}


def _contamination(config: Any, records: list[dict[str, Any]], matched: Counter) -> Reasons:
    long_grams: dict[tuple[str, ...], str] = {}
    short_items: dict[int, dict[tuple[str, ...], str]] = {}  # items shorter than n, by their length in words
    for source in config.sets:
        # a task's problems share their template's wording, so only a whole problem counts as a leak
        whole = source.task is not None
        for item_id, text in eval_items(source):
            words = WORD.findall(text.lower())
            if not words:
                continue
            if len(words) < config.n or whole:
                short_items.setdefault(len(words), {})[tuple(words)] = f"{source.name}/{item_id}"
            else:
                for gram in _grams(words, config.n):
                    long_grams.setdefault(gram, f"{source.name}/{item_id}")
    reasons: Reasons = []
    for record in records:
        words = WORD.findall(text_of(record, config.on).lower())
        hit = next((long_grams[gram] for gram in _grams(words, config.n) if gram in long_grams), None)
        for length, items in short_items.items():
            if hit is None:
                hit = next((items[gram] for gram in _grams(words, length) if gram in items), None)
        if hit is not None:
            matched[hit] += 1
        reasons.append(f"overlaps evaluation item {hit}" if hit else None)
    return reasons


def _verify(config: Any, records: list[dict[str, Any]]) -> Reasons:
    import distill.tasks as tasks

    def reason(record: dict[str, Any]) -> str | None:
        reference = record.get("reference")
        if reference is None:
            return "no reference to verify against" if config.without_reference == "drop" else None
        numeric = tasks.task(record["task"]).numeric if record.get("task") else bool(
            re.fullmatch(r"-?[\d,]+", str(reference).strip()))
        answer = tasks.extract_answer(record["completion"])
        if answer is None:
            return "no answer found"
        return None if tasks.normalise(answer, numeric) == tasks.normalise(str(reference), numeric) else "wrong answer"
    return [reason(record) for record in records]


def _self_score(config: Any, records: list[dict[str, Any]]) -> Reasons:
    missing = next((record for record in records if record.get("mean_logprob") is None), None)
    if missing is not None:
        backend = missing.get("provenance", {}).get("backend", "the backend")
        raise DistillError(f"filter self_score reads each answer's mean token log-probability, and record "
                           f"{missing['key']} (from {backend}) has none: the endpoint returned no logprobs. Generate "
                           "with logprobs, or drop the self_score filter")
    return [None if record["mean_logprob"] >= config.min_mean_logprob else
            f"mean log-probability {record['mean_logprob']:.2f} < {config.min_mean_logprob}" for record in records]


def _format(config: Any, records: list[dict[str, Any]]) -> Reasons:
    pattern = re.compile(config.regex) if config.regex is not None else None

    def reason(record: dict[str, Any]) -> str | None:
        text = record["completion"]
        if pattern is not None and not pattern.search(text):
            return "does not match the regex"
        if config.valid_json:
            try:
                value = json.loads(text)
            except ValueError:
                return "not valid JSON"
            missing = [key for key in config.required_keys if not isinstance(value, dict) or key not in value]
            if missing:
                return f"JSON without key {missing[0]!r}"
        return None
    return [reason(record) for record in records]


FILTERS: dict[str, Callable[..., Reasons]] = {"length": _length, "exact_dedup": _exact_dedup,
                                               "near_dedup": _near_dedup, "verify": _verify,
                                               "self_score": _self_score, "format": _format}


def run_filters(records: list[dict[str, Any]], filters: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records every filter keeps, in their order, and the report: per filter, what it saw, dropped (by
    reason) and examples of the dropped."""
    kept, steps = list(records), []
    for position, config in enumerate(filters):
        matched: Counter = Counter()
        if config.kind == "contamination":
            reasons = _contamination(config, kept, matched)
        else:
            reasons = FILTERS[config.kind](config, kept)
        dropped = [(record, reason) for record, reason in zip(kept, reasons) if reason is not None]
        step = {"filter": config.kind, "position": position, "seen": len(kept), "dropped": len(dropped),
                "kept": len(kept) - len(dropped),
                "reasons": dict(Counter(_reason_kind(reason) for _, reason in dropped).most_common()),
                "examples": [{"key": record["key"], "reason": reason, "completion": record["completion"][:200]}
                             for record, reason in dropped[:EXAMPLES]]}
        if config.kind == "contamination":
            step["matched_items"] = dict(matched.most_common())
        steps.append(step)
        kept = [record for record, reason in zip(kept, reasons) if reason is None]
    return kept, {"records": len(records), "kept": len(kept), "filters": steps}


def _reason_kind(reason: str) -> str:
    """The reason without the record it names: 'duplicate of X' counts as 'duplicate'."""
    for prefix in ("duplicate of", "near duplicate of", "overlaps evaluation item", "mean log-probability",
                   "JSON without key"):
        if reason.startswith(prefix):
            return prefix.removesuffix(" of").removesuffix(" item")
    return reason
