"""Sequence-level distillation as one recipe: ``data: {dataset: generated}`` puts three stages before the plain
run's: ``generate`` (the teacher answers the recipe's prompts into ``RUN/generated``), ``filter`` (the recipe's
filters, kept records in ``RUN/kept`` with ``filter_report.json``) and ``data`` (the kept records as chat data,
its test split held out by ``data.lm.test_fraction``). Each is resumable: a killed generation continues from its
last committed batch. Under a launcher the main process generates and filters while the others wait at a
barrier (whose timeout a long generation can exceed: generate first with distill generate, then train on the
folder, for long ones)."""

from __future__ import annotations

import json
from typing import Any

from distill.stages import RunContext, Stage, on_main

GENERATED_FOLDER, KEPT_FOLDER = "generated", "kept"


def _generate(context: RunContext) -> dict[str, Any]:
    from distill.data.records import INDEX_FILE
    from distill.generation.generate import generate

    # one process writes the records (under a launcher the others wait at the barrier), every one reads them
    on_main(lambda: generate(context.config, context.run_dir / GENERATED_FOLDER, show_progress=context.show_progress))
    return json.loads((context.run_dir / GENERATED_FOLDER / INDEX_FILE).read_text())["summary"]


def _filter(context: RunContext) -> dict[str, Any]:
    from distill.generation.filter_run import REPORT_FILE, filter_generated

    on_main(lambda: filter_generated(context.config, context.run_dir / GENERATED_FOLDER,
                                     context.run_dir / KEPT_FOLDER))
    report = json.loads((context.run_dir / KEPT_FOLDER / REPORT_FILE).read_text())
    return {"records": report["records"], "kept": report["kept"],
            "dropped": {step["filter"]: step["dropped"] for step in report["filters"]}}


def kept_folder(context: RunContext) -> Any:
    return context.run_dir / (KEPT_FOLDER if context.config.filters else GENERATED_FOLDER)


def _load(context: RunContext) -> None:
    from distill.config import LMDataConfig
    from distill.data.recipe_data import load_data

    config = context.config
    data = config.data.model_copy(update={"dataset": None, "path": str(kept_folder(context)),
                                          "lm": config.data.lm or LMDataConfig(format="chat")})
    context.data = load_data(config.model_copy(update={"data": data}))
    context.data.summary["name"] = "generated"
    context.artifacts["data"] = context.data


def _nothing_to_restore(context: RunContext, done: dict[str, Any]) -> None:
    """The stage's output is its folder, read by the stages after it."""


def generation_stages(config: Any) -> list[Stage]:
    stages = [Stage("generate", "the teacher answers the recipe's prompts (provenance-stamped records)", _generate,
                    files=(f"{GENERATED_FOLDER}/",), restore=_nothing_to_restore)]
    if config.filters:
        stages.append(Stage("filter", "drop generated records by the recipe's filters", _filter,
                            files=(f"{KEPT_FOLDER}/", f"{KEPT_FOLDER}/filter_report.json"),
                            restore=_nothing_to_restore))
    stages.append(Stage("data", "read the kept records as chat data (the loss on the teacher's answers)", _load,
                        writes=("data",)))
    return stages
