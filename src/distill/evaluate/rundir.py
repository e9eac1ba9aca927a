"""``distill eval RUN_DIR``: evaluate a run directory from what it holds on disk, finished or not.

Each model comes from its exported folder when its stage finished; from the newest checkpoint when the stage was
cut off (marked as such in the results); otherwise it is listed as missing, with the reason, and the others
are evaluated anyway. Finished work is never lost: when a model (or a comparison) that ``metrics.json`` already
holds cannot be evaluated now (its file damaged, say), ``metrics.json`` is kept byte for byte, the new results
go beside it (``metrics.eval-<UTC time>.json``) and ``IncompleteEvaluation`` names what could not be evaluated."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from distill.checkpoint import (
    WriteFailed,
    check_writable,
    incomplete_checkpoints,
    list_checkpoints,
    read_state,
    write_json_atomic,
)
from distill.config import CNNSpec, HFSpec, MLPSpec, Recipe, SavedSpec, load_recipe
from distill.errors import DistillError
from distill.evaluate.speed import size_on_disk
from distill.models import build_model, load_saved, load_weights
from distill.nets import CONFIG_FILE

TRAINED_STAGES = ("teacher", "baseline", "student", "student_finetuned", "student_pruned")
VARIANTS = ("student_int8", "student_pruned_int8")
METRICS_FILE = "metrics.json"
RUN_FACTS = ("steps", "stages", "wall_seconds", "compression_variants")  # written by training, kept by eval


class IncompleteEvaluation(DistillError):
    """Some model or comparison the run's metrics.json holds could not be evaluated; that file was kept and the
    results of this evaluation (``metrics``) were written to ``written``."""

    def __init__(self, message: str, metrics: dict[str, Any], written: Path):
        super().__init__(message)
        self.metrics, self.written = metrics, written


def expected_models(recipe: Recipe) -> list[str]:
    names = []
    if recipe.teacher.model is not None:
        names.append("teacher")
    if recipe.baseline:
        names.append("baseline")
    names.append("student")
    if recipe.student.finetune is not None:
        names.append("student_finetuned")
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
    state = read_state(checkpoints[-1])
    model = build_model(spec, input_shape=data.input_shape, num_classes=data.num_classes)
    try:
        tensors = load_file(str(checkpoints[-1] / "model.safetensors"))
    except (OSError, SafetensorError) as error:
        raise DistillError(f"checkpoint {checkpoints[-1] / 'model.safetensors'} cannot be read: {error}") from None
    # the checkpoint holds the whole training step (student plus adapters); keep the student
    weights = {key.removeprefix("student."): value for key, value in tensors.items() if key.startswith("student.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise DistillError(f"checkpoint {checkpoints[-1]} does not fit the recipe's {name}: "
                           f"{str(error).splitlines()[0]}") from None
    return model.eval(), f"checkpoint step {state['step']} of {state.get('total_steps', '?')} (stage unfinished)"


def _no_checkpoint(run_dir: Path, name: str) -> str:
    directory = run_dir / "checkpoints" / name
    damaged = incomplete_checkpoints(directory)
    if damaged:
        return (f"missing: the stage left no usable checkpoint ({damaged[-1]} is incomplete: its state.json is "
                "missing)")
    return "missing: the stage left no usable checkpoint" if directory.is_dir() else "missing: the stage never started"


def load_run_models(run_dir: Path, recipe: Recipe, data: Any) -> tuple[dict[str, nn.Module], dict[str, str],
                                                                          dict[str, Path]]:
    """(models found, status of every expected model, exported folders) of a run directory. A model that cannot
    be loaded is listed as missing with the reason (the file named); the others are evaluated anyway."""
    models: dict[str, nn.Module] = {}
    status: dict[str, str] = {}
    folders: dict[str, Path] = {}
    for name in expected_models(recipe):
        try:
            model, status[name], folder = _load_model(run_dir, recipe, data, name)
        except DistillError as error:
            status[name] = f"missing: {error}"
            continue
        if model is not None:
            models[name] = model
        if folder is not None:
            folders[name] = folder
    return models, status, folders


def _load_model(run_dir: Path, recipe: Recipe, data: Any, name: str) -> tuple[nn.Module | None, str, Path | None]:
    folder = run_dir / name
    finished = (folder / "stage_done.json").is_file() if name in TRAINED_STAGES else True
    if (folder / CONFIG_FILE).is_file() and finished:
        return load_saved(folder).eval(), "exported", folder
    if name == "teacher" and recipe.teacher.train is None:
        spec = recipe.teacher.model
        if isinstance(spec, (SavedSpec, HFSpec)):
            model = build_model(spec, input_shape=None, num_classes=None).eval()
            return model, f"loaded from the recipe ({spec.kind} model)", \
                Path(spec.path) if isinstance(spec, SavedSpec) else None
        if spec is not None and recipe.teacher.weights:
            model = build_model(spec, input_shape=data.input_shape, num_classes=data.num_classes)
            load_weights(model, recipe.teacher.weights)
            return model.eval(), f"loaded from {recipe.teacher.weights}", None
    found = _from_checkpoint(recipe, name, run_dir, data) if name in TRAINED_STAGES else None
    if found is not None:
        return found[0], found[1], None
    if name not in TRAINED_STAGES:
        return None, "missing: not written (the run stopped before compression)", None
    return None, _no_checkpoint(run_dir, name), None


def evaluate_run_dir(run_dir: str | Path, *, output: str | Path | None = None,
                     show_progress: bool = True) -> dict[str, Any]:
    """Evaluate what ``run_dir`` holds and write the results (default: ``run_dir/metrics.json``, keeping the run
    facts a finished run wrote there). Returns the metrics, with ``status`` per model and ``missing``. Raises
    ``IncompleteEvaluation`` (after writing the results beside it) rather than replace a metrics.json with one
    that has less in it."""
    from distill.data.recipe_data import load_data
    from distill.evaluate.run_models import evaluate_run_models

    run_dir = Path(run_dir)
    recipe = _run_recipe(run_dir)
    target = Path(output) if output else run_dir / METRICS_FILE
    if output:
        check_writable(target.parent, "--output")
    data = load_data(recipe)
    previous = _read_metrics(run_dir / METRICS_FILE)
    _check_same_data(run_dir, previous if not output else _read_metrics(target, strict=False), data)
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
    kept_from = previous if not output else _read_metrics(target, strict=False)
    # run facts (steps, stages, wall time of training) stay; everything measured is replaced
    result = {**{key: value for key, value in kept_from.items() if key in RUN_FACTS}, **metrics}
    lost = [] if output else _lost(previous, result)
    try:
        if lost:
            _write_beside(run_dir, result, lost, status)
        write_json_atomic(target, result)
    except WriteFailed as error:
        fix = "free space" if error.disk_full else "fix that"
        raise DistillError(f"{error} Any earlier {target.name} was kept as it was (nothing half-written is left); "
                           f"{fix} and run `distill eval` again.") from None
    return result


def _run_recipe(run_dir: Path) -> Recipe:
    if not run_dir.is_dir():
        raise DistillError(f"run directory {run_dir} does not exist")
    if not (run_dir / "recipe.yaml").is_file():
        raise DistillError(f"{run_dir} holds no recipe.yaml, so it is not a distill run directory")
    recipe = load_recipe(run_dir / "recipe.yaml")
    if recipe.mode is not None:
        # A regime's combined teachers (ensembles of teachers, peers or generations) exist only inside the run;
        # re-evaluating the exported folders alone would drop their rows from metrics.json.
        finished = (run_dir / METRICS_FILE).is_file()
        raise DistillError(f"{run_dir} trained under mode: {recipe.mode.kind}, whose combined teachers are not saved "
                           "as models, so `distill eval` cannot re-evaluate it without losing rows. "
                           + ("Its metrics.json holds the run's own evaluation of every model; `distill report` "
                              "reads it." if finished else
                              "It has no metrics.json yet: finish it with `distill train RECIPE --output "
                              f"{run_dir} --resume`."))
    return recipe


def _read_metrics(path: Path, strict: bool = True) -> dict[str, Any]:
    """A metrics file's contents ({} when there is none). The run's own metrics.json must be readable: what it
    holds cannot be compared with a new evaluation otherwise, and it is not replaced blind."""
    if not path.is_file():
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        metrics = error
    if isinstance(metrics, dict):
        return metrics
    if not strict:
        return {}
    reason = f"is not valid JSON ({metrics})" if isinstance(metrics, Exception) else "is not a JSON object"
    raise DistillError(f"{path} {reason}; it was left as it is, and nothing was evaluated. Move it aside (or "
                       "restore it) and run `distill eval` again, or pass --output FILE to write the evaluation "
                       "elsewhere.")


def _check_same_data(run_dir: Path, previous: dict[str, Any], data: Any) -> None:
    trained_on = previous.get("data", {})
    if not previous or not isinstance(trained_on, dict):
        return
    if trained_on.get("name") != data.summary.get("name") or \
            trained_on.get("test", trained_on.get("test_size")) != data.summary.get("test"):
        raise DistillError(f"{run_dir} was evaluated on data {trained_on.get('name')!r} that its recipe does not "
                           f"rebuild (the recipe gives {data.summary.get('name')!r}); runs on data passed from "
                           "Python are re-evaluated from Python: distill.evaluate.compare.evaluate_models")


def _lost(previous: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """What ``previous`` holds that ``result`` would not: model rows, then comparisons (gap recovered, agreement,
    speedup, compression, ...) that had values."""
    empty = (None, {}, [])
    now = result.get("models", [])
    models = [name for name in previous.get("models", []) if isinstance(name, str) and name not in now]
    fields = [key for key, value in previous.items() if key not in models and key not in ("missing", "status")
              and value not in empty and result.get(key) in empty]
    return models + fields


def _write_beside(run_dir: Path, result: dict[str, Any], lost: list[str], status: dict[str, str]) -> None:
    """Keep metrics.json; write the new results beside it and say what could not be evaluated, and why."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    written = run_dir / f"metrics.eval-{stamp}.json"
    counter = 1
    while written.exists():
        written, counter = run_dir / f"metrics.eval-{stamp}-{counter}.json", counter + 1
    write_json_atomic(written, result)
    reasons = "; ".join(f"{name}: {reason.removeprefix('missing: ')}" for name, reason in status.items()
                        if reason.startswith("missing") and name in lost)
    retrained = [name for name in lost if name in TRAINED_STAGES and (run_dir / "checkpoints" / name).is_dir()]
    # a stage re-run on --resume starts from its last checkpoint, which is the finished model: it exports it again
    redo = (f" (a model this run trained is exported again from its last checkpoint: delete "
            f"{run_dir / retrained[0] / 'stage_done.json'} and run `distill train RECIPE --output {run_dir} "
            "--resume`)") if retrained else ""
    raise IncompleteEvaluation(
        f"not every model could be evaluated ({reasons or 'see ' + str(written)}). {run_dir / METRICS_FILE} holds "
        f"{', '.join(lost)}, which this evaluation lacks, so it was kept as it was; this evaluation was written to "
        f"{written}. Restore the files named{redo} and run `distill eval` again, or pass --output FILE to write the "
        "incomplete evaluation there.", result, written)
