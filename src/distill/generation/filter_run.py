"""``distill filter RECIPE --input DATA -o KEPT``: the recipe's filters over a folder of generated records; the
kept records go to a folder of their own (the input is never changed), with ``filter_report.json`` beside them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.checkpoint import write_json_atomic
from distill.errors import DistillError
from distill.generation.filters import run_filters
from distill.generation.records import INDEX_FILE, RecordStore

REPORT_FILE = "filter_report.json"


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
    store = RecordStore(folder, index["fingerprint"])
    if not index.get("complete"):
        raise DistillError(f"the generation in {folder} is not finished ({len(store)} records so far); run the same "
                           "distill generate command again to finish it, then filter")
    return list(store.records()), index


def filter_generated(recipe: Any, source: str | Path, output: str | Path, *,
                     overrides: list[str] | None = None) -> dict[str, Any]:
    from distill.config import load_recipe

    config = load_recipe(recipe, overrides)
    if not config.filters:
        raise DistillError("the recipe has no filters: add e.g. filters: [{kind: length}, {kind: exact_dedup}]")
    records, index = read_generated(source)
    kept, report = run_filters(records, config.filters)
    fingerprint = {"source": index["fingerprint"], "source_records": len(records),
                   "filters": [spec.model_dump(mode="json") for spec in config.filters]}
    store = RecordStore(output, fingerprint, shard_records=index.get("shard_records", 1000))
    for start in range(0, len(kept), store.shard_records):
        store.append(kept[start:start + store.shard_records])
    report = {"source": str(source), **report}
    store.finish({"records": len(kept), "source_records": len(records)})
    write_json_atomic(Path(output) / REPORT_FILE, report)
    return report
