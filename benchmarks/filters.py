"""Filters on planted data: how many planted duplicates, near duplicates and contaminated records each filter
finds, and how many distinct records it drops by mistake.

    .venv/bin/python benchmarks/filters.py --base 2000 --seeds 3

Per seed, the base records are prompts of the task suite (arithmetic, train split) answered by real text: King
James verses of the training books (distinct verse texts only). Planted among them, in shuffled order:
  exact:        copies of base records with case and spacing changed;
  near:         copies whose answer of 25+ words has one word replaced (the near duplicates the filter is for),
                and, reported apart, copies with 3 words replaced in answers of 15+ words;
  contaminated: records whose prompt is a problem of the arithmetic test split (whole-item rule), and records
                whose answer quotes 13+ consecutive words of a held-out book's verse (the 13-gram rule).
The pipeline is exact_dedup -> near_dedup (Jaccard 0.8 on character 5-grams, 128 permutations) -> contamination
(test split of arithmetic + the held-out books' verses).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from common import fmt, mean_std, write_results  # noqa: E402

HELD_OUT = ("Ruth", "Esther", "Jonah", "Philippians", "James", "Jude")


def _record(key, prompt, completion):
    return {"key": key, "prompt": prompt, "completion": completion, "tokens": len(completion.split()),
            "finish_reason": "stop", "reference": None, "task": None, "mean_logprob": -0.5}


def planted_records(base_count: int, seed: int, eval_path: Path):
    import distill.tasks as tasks
    from distill.data.text import load_kjv

    generator = random.Random(seed)
    verses = load_kjv()
    training = sorted({verse.text for verse in verses if verse.book not in HELD_OUT and len(verse.text.split()) >= 15})
    held_out = sorted({verse.text for verse in verses if verse.book in HELD_OUT and len(verse.text.split()) >= 13})
    eval_path.write_text("\n".join(__import__("json").dumps({"text": text}) for text in held_out) + "\n")
    answers = generator.sample(training, base_count)
    prompts = [item.prompt for item in tasks.examples("arithmetic", "train", base_count, seed=seed)]
    base = [_record(f"base{index}", prompt, answer) for index, (prompt, answer) in enumerate(zip(prompts, answers))]
    planted = {"exact": [], "near": [], "contaminated": []}
    sample = generator.sample(range(base_count), base_count // 5)
    vocabulary = sorted({word for text in answers for word in text.split()})
    for number, index in enumerate(sample[: base_count // 10]):
        original = base[index]
        planted["exact"].append(_record(f"exact{number}", original["prompt"].upper(),
                                        "  " + original["completion"].replace(" ", "  ")))
    long_answers = [index for index in sample[base_count // 10:] if len(base[index]["completion"].split()) >= 25]
    for number, index in enumerate(sample[base_count // 10:]):
        words = base[index]["completion"].split()
        # one word in 25+ (the near duplicates the filter is for), or three words anywhere (a harder case)
        edits, kind = (1, "near") if index in long_answers[: len(long_answers) // 2] else (3, "near_3_words")
        for position in generator.sample(range(len(words)), edits):
            words[position] = generator.choice(vocabulary)
        planted.setdefault(kind, []).append(_record(f"{kind}{number}", base[index]["prompt"] + " Show your work.",
                                                    " ".join(words)))
    test_items = tasks.examples("arithmetic", "test", base_count // 40, seed=0)
    for number, item in enumerate(test_items):
        planted["contaminated"].append(_record(f"leak-task{number}", item.prompt, generator.choice(answers)))
    for number, text in enumerate(generator.sample(held_out, base_count // 40)):
        words = text.split()
        start = generator.randint(0, len(words) - 13)
        quote = " ".join(words[start:start + 13])
        planted["contaminated"].append(_record(f"leak-verse{number}", generator.choice(prompts),
                                               f"As it is written: {quote}."))
    records = base + [record for group in planted.values() for record in group]
    originals, extra = records[:base_count], records[base_count:]
    generator.shuffle(extra)
    return originals + extra, planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--name", default="filters")
    args = parser.parse_args()

    import tempfile

    from distill.config import load_recipe
    from distill.generation.filters import run_filters

    measured = {key: [] for key in ("recall_exact", "recall_near", "recall_near_3_words", "recall_contaminated",
                                    "false_drop_rate")}
    with tempfile.TemporaryDirectory() as scratch:
        eval_path = Path(scratch) / "held-out-verses.jsonl"
        for seed in range(args.seeds):
            records, planted = planted_records(args.base, seed, eval_path)
            filters = load_recipe({
                "teacher": {"model": {"kind": "hf", "name_or_path": "t", "task": "causal-lm"}},
                "generate": {"prompts": {"task": "arithmetic", "count": 1}},
                "filters": [{"kind": "exact_dedup"}, {"kind": "near_dedup", "threshold": 0.8},
                            {"kind": "contamination", "sets": [{"name": "arithmetic-test", "task": "arithmetic"},
                                                               {"name": "held-out-books", "path": str(eval_path)}]}]
            }).filters
            kept, _ = run_filters(records, filters)
            kept_keys = {record["key"] for record in kept}
            for kind in ("exact", "near", "near_3_words", "contaminated"):
                found = sum(record["key"] not in kept_keys for record in planted[kind])
                measured[f"recall_{kind}"].append(found / len(planted[kind]))
            base_keys = [record["key"] for record in records if record["key"].startswith("base")]
            measured["false_drop_rate"].append(sum(key not in kept_keys for key in base_keys) / len(base_keys))
    table = Table(title=f"filters on planted data: {args.base} distinct records + {args.base // 10} exact, "
                        f"{args.base // 10} near (1 word of 25+, or 3 words), {args.base // 20} contaminated, "
                        f"{args.seeds} seeds")
    for column in ("measure", "value", "goal"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    goals = {"recall_exact": "100%", "recall_near": ">= 95%", "recall_near_3_words": "reported",
             "recall_contaminated": "100%", "false_drop_rate": "reported"}
    for key, values in measured.items():
        table.add_row(key, fmt(values, 2, percent=True), goals[key])
    Console().print(table)
    path = write_results(args.name, {"base": args.base, "seeds": args.seeds,
                                     **{key: mean_std(values)[0] for key, values in measured.items()},
                                     **{f"{key}_std": mean_std(values)[1] for key, values in measured.items()},
                                     "per_seed": measured})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
