"""``distill eval RUN_DIR``: evaluate a run directory from what it holds on disk, finished or not.

Each model comes from its exported folder when its stage finished; from the newest checkpoint when the stage was
cut off (marked as such in the results); otherwise it is listed as missing, with the reason, and the others
are evaluated anyway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from distill.checkpoint import list_checkpoints, write_json_atomic
from distill.config import CNNSpec, HFSpec, MLPSpec, Recipe, SavedSpec, load_recipe
from distill.errors import DistillError
from distill.evaluate.speed import size_on_disk
from distill.models import build_model, load_saved, load_weights
from distill.nets import CONFIG_FILE

TRAINED_STAGES = ("teacher", "baseline", "student", "student_pruned")
VARIANTS = ("student_int8", "student_pruned_int8")


def expected_models(recipe: Recipe) -> list[str]:
    names = []
    if recipe.teacher.model is not None:
        names.append("teacher")
    if recipe.baseline:
        names.append("baseline")
    names.append("student")
    if recipe.compress is not None:
        if recipe.compress.quantize == "int8":
            names.append("student_int8")
        if recipe.compress.prune is not None:
            names.append("student_pruned")
            if recipe.compress.quantize == "int8":
                names.append("student_pruned_int8")
    return names


def _spec_of(recipe: Recipe, name: str) -> Any:
    return recipe.teacher.model if name == "teacher" else recipe.student.model


def _from_checkpoint(recipe: Recipe, name: str, run_dir: Path, data: Any) -> tuple[nn.Module, str] | None:
    """The newest checkpoint of an unfinished stage, for built-in nets (others need the run's own objects)."""
    checkpoints = list_checkpoints(run_dir / "checkpoints" / name)
    spec = _spec_of(recipe, name)
    # a pruned stage's checkpoints carry pruning masks; its folder is written when the fine-tune ends
    if not checkpoints or not isinstance(spec, (MLPSpec, CNNSpec)) or name == "student_pruned":
        return None
    state = json.loads((checkpoints[-1] / "state.json").read_text())
    model = build_model(spec, input_shape=data.input_shape, num_classes=data.num_classes)
    tensors = load_file(str(checkpoints[-1] / "model.safetensors"))
    # the checkpoint holds the whole training step (student plus adapters); keep the student
    weights = {key.removeprefix("student."): value for key, value in tensors.items() if key.startswith("student.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise DistillError(f"checkpoint {checkpoints[-1]} does not fit the recipe's {name}: "
                           f"{str(error).splitlines()[0]}") from None
    return model.eval(), f"checkpoint step {state['step']} of {state.get('total_steps', '?')} (stage unfinished)"


def load_run_models(run_dir: Path, recipe: Recipe, data: Any) -> tuple[dict[str, nn.Module], dict[str, str],
                                                                          dict[str, Path]]:
    """(models found, status of every expected model, exported folders) of a run directory."""
    models: dict[str, nn.Module] = {}
    status: dict[str, str] = {}
    folders: dict[str, Path] = {}
    for name in expected_models(recipe):
        folder = run_dir / name
        finished = (folder / "stage_done.json").is_file() if name in TRAINED_STAGES else True
        if (folder / CONFIG_FILE).is_file() and finished:
            try:
                models[name] = load_saved(folder).eval()
            except DistillError as error:
                status[name] = f"missing: {error}"
                continue
            status[name], folders[name] = "exported", folder
            continue
        if name == "teacher" and recipe.teacher.train is None:
            spec = recipe.teacher.model
            if isinstance(spec, (SavedSpec, HFSpec)):
                models[name] = build_model(spec, input_shape=None, num_classes=None).eval()
                status[name] = f"loaded from the recipe ({spec.kind} model)"
                if isinstance(spec, SavedSpec):
                    folders[name] = Path(spec.path)
                continue
            if spec is not None and recipe.teacher.weights:
                model = build_model(spec, input_shape=data.input_shape, num_classes=data.num_classes)
                load_weights(model, recipe.teacher.weights)
                models[name], status[name] = model.eval(), f"loaded from {recipe.teacher.weights}"
                continue
        found = _from_checkpoint(recipe, name, run_dir, data) if name in TRAINED_STAGES else None
        if found is not None:
            models[name], status[name] = found
        elif name not in TRAINED_STAGES:
            status[name] = "missing: not written (the run stopped before compression)"
        elif (run_dir / "checkpoints" / name).is_dir():
            status[name] = "missing: the stage left no usable checkpoint"
        else:
            status[name] = "missing: the stage never started"
    return models, status, folders


def evaluate_run_dir(run_dir: str | Path, *, output: str | Path | None = None,
                     show_progress: bool = True) -> dict[str, Any]:
    """Evaluate what ``run_dir`` holds and write the results (default: ``run_dir/metrics.json``, keeping the run
    facts a finished run wrote there). Returns the metrics, with ``status`` per model and ``missing``."""
    from distill.data.recipe_data import load_data
    from distill.evaluate.run_models import evaluate_run_models

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DistillError(f"run directory {run_dir} does not exist")
    if not (run_dir / "recipe.yaml").is_file():
        raise DistillError(f"{run_dir} holds no recipe.yaml, so it is not a distill run directory")
    recipe = load_recipe(run_dir / "recipe.yaml")
    if recipe.mode is not None:
        # A regime's combined teachers (ensembles of teachers, peers or generations) exist only inside the run;
        # re-evaluating the exported folders alone would drop their rows from metrics.json.
        finished = (run_dir / "metrics.json").is_file()
        raise DistillError(f"{run_dir} trained under mode: {recipe.mode.kind}, whose combined teachers are not saved "
                           "as models, so `distill eval` cannot re-evaluate it without losing rows. "
                           + ("Its metrics.json holds the run's own evaluation of every model; `distill report` "
                              "reads it." if finished else
                              "It has no metrics.json yet: finish it with `distill train RECIPE --output "
                              f"{run_dir} --resume`."))
    data = load_data(recipe)
    previous_file = Path(output) if output else run_dir / "metrics.json"
    if previous_file.is_file():
        trained_on = json.loads(previous_file.read_text()).get("data", {})
        if trained_on.get("name") != data.summary.get("name") or \
                trained_on.get("test", trained_on.get("test_size")) != data.summary.get("test"):
            raise DistillError(f"{run_dir} was evaluated on data {trained_on.get('name')!r} that its recipe does not "
                               f"rebuild (the recipe gives {data.summary.get('name')!r}); runs on data passed from "
                               "Python are re-evaluated from Python: distill.evaluate.compare.evaluate_models")
    models, status, folders = load_run_models(run_dir, recipe, data)
    if not models:
        raise DistillError(f"{run_dir} holds no model to evaluate yet: "
                           + "; ".join(f"{name} {reason}" for name, reason in status.items()))
    metrics = evaluate_run_models(recipe, models, data, run_dir, show_progress=show_progress)
    for name, folder in folders.items():
        if isinstance(metrics.get(name), dict) and metrics[name].get("size_bytes") is None:
            metrics[name]["size_bytes"] = size_on_disk(folder)
    missing = [name for name, reason in status.items() if reason.startswith("missing")]
    partial = [name for name, reason in status.items() if reason.startswith("checkpoint")]
    metrics.update({"status": status, "missing": missing, "complete": not missing and not partial,
                    "recipe": recipe.name, "seed": recipe.seed, "data": data.summary})
    target = Path(output) if output else run_dir / "metrics.json"
    previous = json.loads(target.read_text()) if target.is_file() else {}
    # run facts (steps, stages, wall time of training) stay; everything measured is replaced
    kept = {key: value for key, value in previous.items()
            if key in ("steps", "stages", "wall_seconds", "compression_variants")}
    result = {**kept, **metrics}
    write_json_atomic(target, result)
    return result
