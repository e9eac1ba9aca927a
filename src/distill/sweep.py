"""``distill sweep``: a recipe over seeds (and a small grid of settings), each a normal run in its own
directory, summarised as mean ± std. A run that crashes is recorded (its error in ``error.txt``) and marked in
the table; the others go on. Running the same sweep again reuses finished runs and resumes unfinished ones."""

from __future__ import annotations

import itertools
import json
import re
import statistics
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from distill.checkpoint import write_json_atomic
from distill.config import load_recipe, parse_overrides
from distill.errors import DistillError
from distill.evaluate.table import COLUMNS, LABELS, model_names

# the columns of the sweep table, in this order, where the runs have them
SWEEP_KEYS = ["accuracy", "errors", "macro_f1", "perplexity", "agreement", "cosine", "gap_recovered",
              "inherited_share", "ece", "latency_b1_ms", "throughput"]


@dataclass
class SweepResult:
    output: Path
    summary: dict[str, Any]
    markdown: str


def parse_grid(items: list[str] | tuple[str, ...]) -> list[tuple[str, list[Any]]]:
    """``key=v1,v2,v3`` -> (key, [v1, v2, v3]), each value parsed as YAML (numbers stay numbers)."""
    grid = []
    for item in items:
        if "=" not in item or not item.split("=", 1)[1].strip():
            raise DistillError(f"--grid expects key=value1,value2,..., got {item!r}")
        key, values = item.split("=", 1)
        parsed = [value for _, value in parse_overrides([f"{key}={text}" for text in values.split(",")])]
        grid.append((key.strip(), parsed))
    keys = [key for key, _ in grid]
    if len(set(keys)) != len(keys):
        raise DistillError(f"--grid names a key twice: {keys}")
    return grid


def grid_points(grid: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    return [dict(zip([key for key, _ in grid], values)) for values in itertools.product(*(v for _, v in grid))]


def point_name(point: dict[str, Any]) -> str:
    if not point:
        return "default"
    text = "_".join(f"{key.split('.')[-1]}={value}" for key, value in point.items())
    return re.sub(r"[^A-Za-z0-9_.=-]", "-", text)


def _mean_std(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "values": values}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model, per metric: mean, sample std (n-1) and the values, over the runs that finished."""
    finished = [run["metrics"] for run in runs if run["status"] == "done"]
    summary: dict[str, Any] = {}
    if not finished:
        return summary
    for name in model_names(finished[0]):
        summary[name] = {}
        for key in SWEEP_KEYS:
            values = [metrics[name][key] for metrics in finished
                      if isinstance(metrics.get(name), dict) and metrics[name].get(key) is not None]
            if values:
                summary[name][key] = _mean_std([float(value) for value in values])
    return summary


def _format(key: str, stats: dict[str, Any] | None) -> str:
    if not stats:
        return "-"
    column = next(column for column in COLUMNS if column.key == key)
    scale = 100 if column.format(1.0).endswith("%") else 1
    digits = 2 if scale == 100 else (1 if key in ("errors", "throughput") else 4 if key != "latency_b1_ms" else 3)
    mean = f"{stats['mean'] * scale:.{digits}f}"
    std = f" ± {stats['std'] * scale:.{digits}f}" if stats["std"] is not None else ""
    return mean + std + ("%" if scale == 100 else "")


def markdown(points: list[dict[str, Any]]) -> str:
    keys = [key for key in SWEEP_KEYS if any(key in stats for point in points for stats in point["summary"].values())]
    headers = {column.key: column.header for column in COLUMNS}
    lines = ["| setting | model | " + " | ".join(headers[key] for key in keys) + " | runs |",
             "|---|---|" + "---|" * (len(keys) + 1)]
    for point in points:
        crashed = [run for run in point["runs"] if run["status"] != "done"]
        runs_cell = f"{len(point['runs']) - len(crashed)}/{len(point['runs'])}"
        if crashed:
            runs_cell += " (CRASHED: " + ", ".join(f"seed {run['seed']}" for run in crashed) + ")"
        if not point["summary"]:
            lines.append(f"| {point['name']} | - | " + " | ".join("-" for _ in keys) + f" | {runs_cell} |")
        for name, stats in point["summary"].items():
            lines.append(f"| {point['name']} | {LABELS.get(name, name)} | "
                         + " | ".join(_format(key, stats.get(key)) for key in keys) + f" | {runs_cell} |")
    return "\n".join(lines) + "\n\nmean ± sample standard deviation over the seeds that finished.\n"


def run_sweep(recipe: str | Path, *, seeds: int, overrides: list[str] | None = None, grid: list[str] | None = None,
              output: str | Path | None = None, show_progress: bool = True) -> SweepResult:
    """Run every (grid point, seed) of ``recipe`` as a normal run under ``output/<point>/seed-<seed>``. Seeds are
    the recipe's seed + 0 .. seeds-1. Writes ``sweep.json`` and ``sweep.md`` in ``output``."""
    from distill.run import train

    if seeds < 1:
        raise DistillError(f"--seeds must be at least 1, got {seeds}")
    parsed_grid = parse_grid(grid or [])
    points = grid_points(parsed_grid)
    # every grid point must make a valid recipe (the base alone need not: --set may only make sense with a
    # grid value), checked before anything runs
    recipes = [load_recipe(recipe, [*(overrides or []),
                                    *(f"{key}={json.dumps(value)}" for key, value in point.items())])
               for point in points]
    base = recipes[0]
    output = Path(output or Path("runs") / f"sweep-{base.name}")
    output.mkdir(parents=True, exist_ok=True)
    seed_list = [base.seed + index for index in range(seeds)]
    results = []
    progress = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                        TimeElapsedColumn(), disable=not show_progress)
    with progress:
        task = progress.add_task("", total=len(points) * len(seed_list))
        for point in points:
            name = point_name(point)
            runs = []
            for seed in seed_list:
                progress.update(task, description=f"{name} seed {seed}")
                run_dir = output / name / f"seed-{seed}"
                run_overrides = [*(overrides or []), *(f"{key}={json.dumps(value)}" for key, value in point.items()),
                                 f"seed={seed}"]
                runs.append(_one_run(train, recipe, run_dir, run_overrides, seed))
                progress.advance(task)
            results.append({"name": name, "point": point, "runs": runs, "summary": summarise(runs)})
    table = markdown(results)
    summary = {"recipe": base.name, "seeds": seed_list, "overrides": list(overrides or []),
               "grid": {key: values for key, values in parsed_grid},
               "points": [{**point, "runs": [{key: value for key, value in run.items() if key != "metrics"}
                                             for run in point["runs"]]} for point in results]}
    write_json_atomic(output / "sweep.json", summary)
    (output / "sweep.md").write_text(f"# sweep of {base.name}\n\n{table}")
    return SweepResult(output, summary, table)


def _one_run(train: Any, recipe: str | Path, run_dir: Path, overrides: list[str], seed: int) -> dict[str, Any]:
    record: dict[str, Any] = {"seed": seed, "run_dir": str(run_dir)}
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file() and not (run_dir / "error.txt").is_file():
        return {**record, "status": "done", "reused": True, "metrics": json.loads(metrics_file.read_text())}
    try:
        result = train(recipe, output=run_dir, overrides=overrides, resume=(run_dir / "recipe.yaml").is_file(),
                       show_progress=False)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # any failure of one run is recorded; the sweep goes on with the others
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc())
        message = str(error).split("\n")[0] or type(error).__name__
        return {**record, "status": "crashed", "error": f"{type(error).__name__}: {message}"}
    (run_dir / "error.txt").unlink(missing_ok=True)
    return {**record, "status": "done", "metrics": result.metrics}
