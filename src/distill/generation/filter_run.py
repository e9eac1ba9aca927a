"""``distill filter RECIPE --input DATA -o KEPT``: the recipe's filters over a folder of generated records; the
kept records go to a folder of their own (the input is never changed), with ``filter_report.json`` beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.checkpoint import write_json_atomic
from distill.data.records import RecordStore, read_generated
from distill.errors import DistillError
from distill.generation.filters import run_filters

REPORT_FILE = "filter_report.json"


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

