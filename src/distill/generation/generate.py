"""``distill generate RECIPE -o DATA``: the teacher answers the recipe's prompts; every answer becomes a record
with its provenance, committed batch by batch, so a rerun of a killed command continues where it stopped."""

from __future__ import annotations

import datetime
import hashlib
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from distill.checkpoint import WriteFailed
from distill.data.records import RecordStore
from distill.errors import DistillError
from distill.generation.local import Answer, LocalBackend
from distill.generation.prompts import Prompt, content_hash, read_prompts


def load_generator(config: Any) -> tuple[Any, Any]:
    """The teacher as a causal LM, with the tokenizer saved beside it."""
    from distill.causal_lm import tokenizer_of
    from distill.config import HFSpec
    from distill.models import build_model

    spec = config.teacher.model
    if not isinstance(spec, HFSpec) or spec.task != "causal-lm":
        raise DistillError("distill generate answers prompts with teacher.model, which must be a causal LM: "
                           "{kind: hf, name_or_path: ..., task: causal-lm}")
    tokenizer = tokenizer_of(spec)
    if tokenizer is None:
        raise DistillError(f"teacher.model {spec.name_or_path} has no tokenizer saved with it; generation needs the "
                           "teacher's own tokenizer")
    from distill.generation.local import model_device

    return build_model(spec, input_shape=None, num_classes=None).to(model_device()), tokenizer


def provenance(config: Any, model: Any, tokenizer: Any) -> dict[str, Any]:
    """What every record of this generation shares: who generated it, with what, how."""
    from distill.cache.fingerprint import model_fingerprint, tokenizer_fingerprint
    from distill.version import __version__

    template = getattr(tokenizer, "chat_template", None) or ""
    return {"teacher": config.teacher.model.model_dump(mode="json"), "weights": model_fingerprint(model),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "chat_template": "sha256:" + hashlib.sha256(str(template).encode()).hexdigest(),
            "decoding": config.generate.decoding.model_dump(mode="json"), "chat": config.generate.chat,
            "seed": config.seed, "backend": "local", "distill_version": __version__}


def endpoint_provenance(config: Any) -> dict[str, Any]:
    """Provenance of answers from a server: its URL and model name stand for weights no one here can hash."""
    from distill.version import __version__

    endpoint = config.generate.endpoint
    return {"teacher": {"endpoint": endpoint.url, "model": endpoint.model}, "weights": None, "tokenizer": None,
            "chat_template": None, "decoding": config.generate.decoding.model_dump(mode="json"),
            "chat": config.generate.chat, "seed": config.seed, "backend": "endpoint", "distill_version": __version__}


def _record(prompt: Prompt, sample: int, answer: Answer, shared: dict[str, Any], created: str) -> dict[str, Any]:
    return {"key": f"{prompt.id}#{sample}", "prompt_id": prompt.id, "prompt_hash": prompt.hash, "sample": sample,
            "prompt": prompt.content, "completion": answer.text, "reference": prompt.reference, "task": prompt.task,
            "tokens": answer.tokens,
            "mean_logprob": None if answer.logprob_sum is None else round(answer.logprob_sum / max(answer.tokens, 1),
                                                                            6),
            "finish_reason": answer.finish_reason, "provenance": {**shared, "created": created}}


def generate(recipe: Any, output: str | Path, *, overrides: list[str] | None = None,
             show_progress: bool = True) -> dict[str, Any]:
    """Answer the prompts of ``recipe``'s generate section into ``output``; returns the summary in its index."""
    from distill.config import load_recipe

    config = load_recipe(recipe, overrides)
    if config.generate is None:
        raise DistillError("the recipe has no generate section: add generate: {prompts: ..., decoding: ...}")
    endpoint = config.generate.endpoint
    if endpoint is not None:
        from distill.generation.endpoint import EndpointBackend

        shared = endpoint_provenance(config)
        backend: Any = EndpointBackend(endpoint, config.generate.decoding, config.generate.chat)
    else:
        model, tokenizer = load_generator(config)
        shared = provenance(config, model, tokenizer)
        backend = LocalBackend(model, tokenizer, config.generate.decoding, config.generate.chat)
    fingerprint = {**{key: shared[key] for key in shared if key != "distill_version"},
                   "prompts": config.generate.prompts.model_dump(mode="json"),
                   "batch_size": config.generate.batch_size}  # batches are seeded as a whole
    synthesis, self_instruct = None, hasattr(config.generate.prompts, "seeds")
    if not self_instruct:  # read (and checked) before anything is written; an edited prompt file is another set
        prompts = read_prompts(config.generate)
        fingerprint["prompt_list"] = content_hash([[prompt.id, prompt.hash] for prompt in prompts])
    store = RecordStore(output, fingerprint, shard_records=config.generate.shard_records)
    if self_instruct:  # the teacher writes the prompts first, into OUTPUT/prompts
        from distill.generation.self_instruct import synthesise

        prompts, synthesis = synthesise(config.generate.prompts, backend, Path(output), fingerprint, config.seed)
    samples = config.generate.decoding.n
    batches = backend.batches(prompts, config.generate.batch_size)
    todo = [batch for batch in batches
            if any(f"{prompt.id}#{sample}" not in store.keys for prompt, _ in batch for sample in range(samples))]
    started, tokens = time.perf_counter(), 0
    progress = Progress(TextColumn("[bold]generate[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("prompts"),
                        TimeElapsedColumn(), TimeRemainingColumn(), refresh_per_second=2, disable=not show_progress)
    task = progress.add_task("generate", total=len(prompts), completed=len(prompts) - sum(map(len, todo)))
    with progress:
        for batch in todo:
            created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            answers = backend.answer(batch, config.seed)
            records = [_record(prompt, sample, answer, shared, created)
                       for (prompt, _), prompt_answers in zip(batch, answers)
                       for sample, answer in enumerate(prompt_answers)]
            try:
                store.append(records)
            except WriteFailed as error:
                raise DistillError(f"{error} The {len(store)} records committed before it are kept in {output}; "
                                   f"{'free space' if error.disk_full else 'fix that'} and run the same command "
                                   "again to continue.") from None
            tokens += sum(record["tokens"] for record in records)
            progress.advance(task, len(batch))
    seconds = time.perf_counter() - started
    summary = {"prompts": len(prompts), "records": len(store), "generated_tokens_this_call": tokens,
               "seconds_this_call": round(seconds, 3), **({"self_instruct": synthesis} if synthesis else {}),
               "tokens_per_second": round(tokens / seconds, 2) if tokens and seconds > 0 else None}
    store.finish(summary)
    return summary
