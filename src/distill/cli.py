"""The command line: a thin layer over the Python API. Errors print as one paragraph, never a traceback."""

from __future__ import annotations

import os
import sys
from functools import wraps
from typing import Any, Callable

import click

from distill.errors import DistillError


def _friendly(command: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DistillError as error:
            click.secho(f"error: {error}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.secho("interrupted", fg="yellow", err=True)
            sys.exit(130)
    return wrapper


# Progress bars of the libraries underneath ("Writing model shards", "Converting and de-quantizing GGUF
# tensors", dataset maps) would interleave with distill's own; all of them read these at import time.
QUIET_LIBRARY_BARS = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                      "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def quiet_library_bars() -> None:
    """Silence third-party progress bars for this process, unless the user set the variables themselves; called
    before any of those libraries is imported (the CLI imports them lazily, per command)."""
    for name, value in QUIET_LIBRARY_BARS.items():
        os.environ.setdefault(name, value)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="distill")
def main() -> None:
    """distill: knowledge distillation from one YAML recipe."""
    quiet_library_bars()


@main.command()
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a recipe field, e.g. --set training.lr=0.01 (repeatable)")
@click.option("--output", "-o", type=click.Path(file_okay=False), help="run directory (default: runs/<recipe name>)")
@click.option("--resume", is_flag=True, help="continue an interrupted run in --output from its last checkpoint")
@click.option("--quiet", is_flag=True, help="no progress bars or table")
@click.option("--plan", "show_plan", is_flag=True,
              help="print the stages RECIPE will run, in order, with what each reads and writes; run nothing")
@_friendly
def train(recipe: str, overrides: tuple[str, ...], output: str | None, resume: bool, quiet: bool,
          show_plan: bool) -> None:
    """Train a student as RECIPE says (a YAML path or a built-in recipe name)."""
    from distill.run import describe
    from distill.run import train as run_train

    if show_plan:
        click.echo(describe(recipe, list(overrides)))
        return
    run_train(recipe, output=output, resume=resume, overrides=list(overrides), show_progress=not quiet)


@main.command()
@click.argument("recipe")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="folder of the generated records; the same command again continues an interrupted one")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe field (repeatable)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@_friendly
def generate(recipe: str, output: str, overrides: tuple[str, ...], quiet: bool) -> None:
    """Have RECIPE's teacher answer the prompts of its generate section: provenance-stamped JSONL shards in
    OUTPUT, committed batch by batch."""
    from distill.generation.generate import generate as run_generate

    summary = run_generate(recipe, output, overrides=list(overrides), show_progress=not quiet)
    speed = f", {summary['tokens_per_second']} tokens/s" if summary["tokens_per_second"] else ""
    click.echo(f"{summary['records']} records for {summary['prompts']} prompts in {output}{speed}")


@main.command()
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (only this machine by "
              "default)")
@click.option("--port", default=8000, show_default=True, type=int, help="port (0: a free one)")
@click.option("--api-key-env", default=None, metavar="NAME", help="require the API key held in this environment "
              "variable (Authorization: Bearer KEY)")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--max-batch", default=16, show_default=True, type=int, help="concurrent requests answered together")
@_friendly
def serve(model: str, host: str, port: int, api_key_env: str | None, dtype: str, max_batch: int) -> None:
    """Serve MODEL (a causal LM: folder, hub id, package:NAME or run directory) behind an OpenAI-compatible API:
    /v1/chat/completions, /v1/completions, /v1/models."""
    from distill.generation.serve import check_port, create_app, free_port, load_served_model

    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise DistillError(f"--api-key-env {api_key_env}: that environment variable is not set")
    port = port or free_port(host)
    check_port(host, port)  # before the model loads
    loaded, tokenizer, name = load_served_model(model, dtype)
    app = create_app(loaded, tokenizer, model_name=name, api_key=api_key, max_batch=max_batch)
    import uvicorn

    click.echo(f"serving {name} at http://{host}:{port}/v1 (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.command(name="filter")
@click.argument("recipe")
@click.option("--input", "-i", "source", required=True, type=click.Path(file_okay=False),
              help="a folder of records made by distill generate")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="folder of the kept records")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe field (repeatable)")
@_friendly
def filter_command(recipe: str, source: str, output: str, overrides: tuple[str, ...]) -> None:
    """Run RECIPE's filters over generated records: the kept ones go to OUTPUT, with filter_report.json."""
    from distill.generation.filter_run import REPORT_FILE, filter_generated

    report = filter_generated(recipe, source, output, overrides=list(overrides))
    for step in report["filters"]:
        reasons = ", ".join(f"{reason} {count}" for reason, count in step["reasons"].items()) or "-"
        click.echo(f"{step['filter']:<14} dropped {step['dropped']:>6} of {step['seen']:>6}  ({reasons})")
    click.echo(f"kept {report['kept']} of {report['records']} records in {output}; report: {output}/{REPORT_FILE}")


@main.command()
@click.argument("name", required=False)
@_friendly
def recipes(name: str | None) -> None:
    """List the built-in recipes, or print one (NAME) to start your own from."""
    from distill.config import (
        RECIPES_DIR,
        describe_builtin_recipes,
        resolve_recipe_path,
    )

    if name:
        click.echo(resolve_recipe_path(name).read_text())
        return
    rows = describe_builtin_recipes()
    width = max(len(row[0]) for row in rows)
    for recipe_name, description in rows:
        click.echo(f"{recipe_name:<{width}}  {description}")
    click.echo(f"\n(files in {RECIPES_DIR}; `distill recipes NAME` prints one)")


@main.command()
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--explain", is_flag=True,
              help="instead of the YAML, explain every field of the sections RECIPE uses: its resolved value, type, "
                   "default, constraints and what it does (the whole reference: docs/recipes.md)")
@click.option("--plan", "show_plan", is_flag=True, help="also print the stages RECIPE will run, in order")
@_friendly
def check(recipe: str, overrides: tuple[str, ...], explain: bool, show_plan: bool) -> None:
    """Validate RECIPE and print it resolved with every default, without running anything."""
    from distill.config import load_recipe

    resolved = load_recipe(recipe, list(overrides))
    if show_plan:
        from distill.run import describe

        click.echo(describe(resolved) + "\n")
    if explain:
        import shutil

        from distill.recipe_reference import TEXT_WIDTH, explain_recipe

        # Wrapped to the terminal, never wider than the reference is written for; a pipe may report no width.
        width = max(40, min(TEXT_WIDTH, shutil.get_terminal_size().columns))
        click.echo(explain_recipe(resolved, width=width), nl=False)
        return
    click.echo(resolved.to_yaml())


@main.command(name="eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="results file (default: RUN_DIR/metrics.json)")
@click.option("--quiet", is_flag=True, help="no progress bar or table")
@_friendly
def eval_command(run_dir: str, output: str | None, quiet: bool) -> None:
    """Re-evaluate RUN_DIR from the models it holds (a finished or an interrupted run). A model that metrics.json
    holds but that cannot be evaluated now leaves metrics.json as it is: the results go beside it
    (metrics.eval-<time>.json) and the command exits with status 2, naming what could not be evaluated."""
    from pathlib import Path

    from distill.evaluate.report import print_summary
    from distill.evaluate.rundir import IncompleteEvaluation, evaluate_run_dir

    try:
        metrics = evaluate_run_dir(run_dir, output=output, show_progress=not quiet)
    except IncompleteEvaluation as incomplete:
        # no table: it would point at metrics.json, which was kept; the error names the file holding these results
        _print_status(incomplete.metrics)
        raise  # exit status 2 with the message: a script must notice that metrics.json was not updated
    if not quiet:
        print_summary(metrics, Path(run_dir))
    _print_status(metrics)


def _print_status(metrics: dict[str, Any]) -> None:
    for name, reason in metrics["status"].items():
        if reason != "exported":
            click.secho(f"{name}: {reason}", fg="yellow")


@main.command()
@click.argument("recipe")
@click.option("--seeds", type=int, default=5, show_default=True, help="runs per setting: the recipe's seed + 0..N-1")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe field (repeatable)")
@click.option("--grid", multiple=True, metavar="KEY=V1,V2,...",
              help="sweep a field over values, e.g. --grid objective.temperature=1,4,20 (repeatable: a full grid)")
@click.option("--output", "-o", type=click.Path(file_okay=False), help="sweep directory (default: runs/sweep-<name>)")
@click.option("--quiet", is_flag=True, help="no progress bar or table")
@_friendly
def sweep(recipe: str, seeds: int, overrides: tuple[str, ...], grid: tuple[str, ...], output: str | None,
          quiet: bool) -> None:
    """Run RECIPE over seeds (and a grid of settings); write a mean ± std table (sweep.md, sweep.json)."""
    from distill.sweep import run_sweep

    result = run_sweep(recipe, seeds=seeds, overrides=list(overrides), grid=list(grid), output=output,
                       show_progress=not quiet)
    if not quiet:
        click.echo(result.markdown)
    click.echo(f"results: {result.output}/sweep.md, {result.output}/sweep.json")
    crashed = [f"{point['name']} seed {run['seed']}: {run['error']}" for point in result.summary["points"]
               for run in point["runs"] if run["status"] != "done"]
    for line in crashed:
        click.secho(f"crashed: {line}", fg="red", err=True)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--output", "-o", type=click.Path(file_okay=False),
              help="report folder (default: the run directory for one run, ./report for several)")
@_friendly
def report(run_dirs: tuple[str, ...], output: str | None) -> None:
    """Write report.html (self-contained), report.md and report.json comparing the models of RUN_DIRS."""
    from distill.evaluate.html_report import build_report

    result = build_report(list(run_dirs), output=output)
    click.echo(f"report: {result.html}  ({result.markdown.name}, {result.json.name} and the figures beside it)")


@main.group()
def cache() -> None:
    """Store a teacher's outputs once and train students from them (`teacher: {cache: CACHE}` in a recipe)."""


@cache.command("build")
@click.argument("recipe")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="cache folder to write")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe field (repeatable)")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default="float16", show_default=True,
              help="storage dtype of teacher values")
@click.option("--samples-per-shard", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True,
              help="teacher batch size while building")
@click.option("--device", default="auto", show_default=True, help="auto (a GPU when there is one), cpu, cuda:0, ...")
@click.option("--top-k", "top_k", type=int, default=None,
              help="causal LM teachers: tokens kept per position (default: the recipe's token_kd top_k, else 32)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@_friendly
def cache_build(recipe: str, output: str, overrides: tuple[str, ...], dtype: str, samples_per_shard: int,
                batch_size: int, device: str, top_k: int | None, quiet: bool) -> None:
    """Run RECIPE's teacher once over its training (and validation) data and store the signals its objective
    reads. Killed or out of disk? Run the same command again: completed shards are kept."""
    from distill.cache import build_cache

    metadata = build_cache(recipe, output, overrides=list(overrides), dtype=dtype, samples_per_shard=samples_per_shard,
                           batch_size=batch_size, device=device, top_k=top_k, show_progress=not quiet)
    samples = ", ".join(f"{info['samples']} {split}" for split, info in metadata["splits"].items())
    top = f", top {metadata['k']} tokens per position" if metadata.get("k") else ""
    click.echo(f"teacher cache {output}: {samples} samples, signals {', '.join(metadata['signals'])} "
               f"({metadata['value_dtype']}{top})")


@cache.command("info")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the description as JSON")
@click.option("--verify/--no-verify", default=True, show_default=True, help="check every shard's sha256")
@_friendly
def cache_info(path: str, as_json: bool, verify: bool) -> None:
    """Describe the teacher cache at PATH: samples, signals and dtypes, bytes, k, fingerprints, when and by what."""
    import json

    from distill.cache import TeacherCache

    info = TeacherCache(path, verify=verify).describe()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    rows = [
        ("samples", ", ".join(f"{count} {split}" for split, count in info["samples"].items())),
        ("tokens", info["tokens"] if info["tokens"] is not None else "- (no per-token signals)"),
        ("signals", "; ".join(f"{name} {meta['dtype']} {meta['shape']}" + (" per token" if meta["per_token"] else "")
                              for name, meta in info["signals"].items())),
        ("k", info["k"] if info["k"] is not None else "- (full outputs)"),
        ("size", f"{info['bytes']:,} bytes in {info['shards']} shards of {info['samples_per_shard']} samples"),
        ("bytes per sample", info["bytes_per_sample"]),
        ("bytes per token", info["bytes_per_token"] if info["bytes_per_token"] is not None else "-"),
        ("teacher", info["teacher_fingerprint"]),
        ("tokenizer", info["tokenizer_fingerprint"] or "-"),
        *((f"data ({split})", fingerprint) for split, fingerprint in info["dataset_fingerprints"].items()),
        ("created", info["created"]),
        ("distill version", info["library_version"]),
        ("checksums", "verified" if verify else "not checked"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
