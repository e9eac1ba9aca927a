"""Self-Instruct prompt synthesis (Wang et al. 2023): the teacher, shown a few instructions, writes new ones; a
candidate is kept when it is of a sensible length and its ROUGE-L F-measure to every instruction kept so far
(seeds included) is at most ``rouge_l_max`` (0.7). Kept instructions are committed request by request to their
own record folder (``OUTPUT/prompts``) with their provenance, so a rerun continues the synthesis; they then go
through generation (and ``distill filter``) like any other prompts."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from distill.data.records import RecordStore
from distill.errors import DistillError
from distill.generation.prompts import Prompt, content_hash

PROMPTS_FOLDER = "prompts"
NUMBERED = re.compile(r"^\s*(\d+)\s*[.)]\s*(.+?)\s*$")


def request_text(examples: list[str], per_request: int) -> str:
    listed = "\n".join(f"{number}. {text}" for number, text in enumerate(examples, start=1))
    return (f"Come up with {per_request} new, diverse task instructions, each different from those below. Write "
            f"one per line, numbered.\n\n{listed}\n{len(examples) + 1}.")


def parse_candidates(answer: str) -> list[str]:
    """The instructions in an answer: its first line (it continues the primed number), then numbered lines."""
    lines = answer.strip().splitlines()
    found = [lines[0].strip()] if lines and not NUMBERED.match(lines[0]) else []
    found += [match.group(2) for line in lines if (match := NUMBERED.match(line))]
    return [text for text in found if text]


def read_seed_instructions(config: Any) -> list[str]:
    from distill.data.files import check_columns, file_parts

    with file_parts(config.seeds, None, None) as parts:
        table, where = parts["train"]
        check_columns(table, [config.column], where)
        seeds = [str(text).strip() for text in table[config.column] if str(text).strip()]
    if not seeds:
        raise DistillError(f"{where} holds no seed instructions in column {config.column!r}")
    return seeds


class Novelty:
    """ROUGE-L of a candidate against every instruction kept so far."""

    def __init__(self, kept: list[str]):
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.kept = list(kept)

    def closest(self, candidate: str) -> float:
        return max((self.scorer.score(text, candidate)["rougeL"].fmeasure for text in self.kept), default=0.0)


def synthesise(config: Any, backend: Any, output: Path, shared: dict[str, Any], seed: int,
               show: Any = None) -> tuple[list[Prompt], dict[str, Any]]:
    """Run the synthesis to ``config.count`` kept instructions (or ``max_requests``); returns them as prompts and
    what happened (requests, candidates, kept, rejections by reason)."""
    seeds = read_seed_instructions(config)
    store = RecordStore(output / PROMPTS_FOLDER, {"self_instruct": config.model_dump(mode="json"),
                                                  "seeds": content_hash(seeds), **shared})
    kept = [record["prompt"] for record in store.records()]
    novelty = Novelty(seeds + kept)
    limit = config.max_requests or 5 * config.count // config.per_request + 10
    facts: dict[str, Any] = {"requests": 0, "candidates": 0, "rejected": {}}
    generator = random.Random(f"self-instruct/{seed}/{len(kept)}")
    while len(kept) < config.count and facts["requests"] < limit:
        facts["requests"] += 1
        shown = generator.sample(seeds + kept, min(config.examples, len(seeds) + len(kept)))
        request = Prompt(f"self-instruct-{len(kept)}-{facts['requests']}", request_text(shown, config.per_request))
        (answer, *_), = backend.answer(backend.batches([request], 1)[0], seed)
        accepted = []
        for candidate in parse_candidates(answer.text):
            facts["candidates"] += 1
            reason = _rejection(candidate, novelty, config)
            if reason is not None:
                facts["rejected"][reason] = facts["rejected"].get(reason, 0) + 1
                continue
            novelty.kept.append(candidate)
            accepted.append({"key": "si-" + content_hash(candidate)[:16], "prompt": candidate,
                             "shown": shown, "request": facts["requests"], "provenance": shared})
            if len(kept) + len(accepted) >= config.count:
                break
        store.append(accepted)
        kept += [record["prompt"] for record in accepted]
        if show is not None:
            show(len(kept))
    facts["kept"] = len(kept)
    facts["seeds"] = len(seeds)
    if len(kept) < config.count:
        facts["short_by"] = config.count - len(kept)
    return [Prompt(record["key"], record["prompt"]) for record in store.records()], facts


def _rejection(candidate: str, novelty: Novelty, config: Any) -> str | None:
    words = len(candidate.split())
    if words < config.min_words:
        return "too short"
    if words > config.max_words:
        return "too long"
    if novelty.closest(candidate) > config.rouge_l_max:
        return f"ROUGE-L > {config.rouge_l_max:g} to a kept instruction"
    return None
