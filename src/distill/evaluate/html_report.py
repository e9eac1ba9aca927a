"""``distill report RUN_DIR...``: one self-contained HTML page (figures embedded as base64 PNG) plus
``report.md`` (figures as PNG files beside it) and ``report.json``, from the runs' ``metrics.json`` and
``log.jsonl``."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.checkpoint import write_json_atomic
from distill.errors import DistillError
from distill.evaluate import plots
from distill.evaluate.table import LABELS, html_table, markdown_table, model_names

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th[scope=row], thead th:first-child { text-align: left; }
thead th { background: #f0f0f0; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { color: #a60; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


@dataclass
class RunRecord:
    run_dir: Path
    label: str
    metrics: dict[str, Any]
    log: list[dict[str, Any]]


@dataclass
class ReportResult:
    output: Path
    html: Path
    markdown: Path
    json: Path


def _read_run(run_dir: Path, label: str) -> RunRecord:
    if not run_dir.is_dir():
        raise DistillError(f"run directory {run_dir} does not exist")
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        from distill.evaluate.rundir import evaluate_run_dir

        # an interrupted run: evaluate what it holds first (the results say what is missing)
        evaluate_run_dir(run_dir, show_progress=False)
    metrics = json.loads(metrics_file.read_text())
    log_file = run_dir / "log.jsonl"
    log = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()] if log_file.is_file() else []
    return RunRecord(run_dir, label, metrics, log)


def _check_same_labels(runs: list[RunRecord]) -> None:
    def label_set(run: RunRecord) -> tuple[Any, Any]:
        data = run.metrics.get("data", {})
        return data.get("name"), run.metrics.get("num_classes", data.get("num_classes"))

    sets = {run.label: label_set(run) for run in runs}
    if len(set(sets.values())) > 1:
        described = ", ".join(f"{label}: {name} with {classes} classes" for label, (name, classes) in sets.items())
        raise DistillError(f"the runs were evaluated on different datasets or label sets and cannot share one "
                           f"comparison: {described}. Report them separately.")


def _labels(run_dirs: list[Path]) -> list[str]:
    names = [path.resolve().name for path in run_dirs]
    if len(set(names)) < len(names):  # seed-0, seed-1 under different parents: use the parent too
        names = [f"{path.resolve().parent.name}/{path.resolve().name}" for path in run_dirs]
    return names


def build_report(run_dirs: list[str | Path], *, output: str | Path | None = None) -> ReportResult:
    if not run_dirs:
        raise DistillError("distill report needs at least one run directory")
    paths = [Path(path) for path in run_dirs]
    runs = [_read_run(path, label) for path, label in zip(paths, _labels(paths))]
    _check_same_labels(runs)
    output = Path(output) if output else (paths[0] if len(paths) == 1 else Path("report"))
    output.mkdir(parents=True, exist_ok=True)
    several = len(runs) > 1

    def row_label(run: RunRecord, name: str) -> str:
        return (f"{run.label}: " if several else "") + LABELS.get(name, name)

    rows = [(row_label(run, name), run.metrics[name]) for run in runs for name in model_names(run.metrics)]
    figures: dict[str, bytes] = {}
    for index, run in enumerate(runs):
        curves = plots.training_curves(run.log, f"training curves: {run.label}")
        if curves:
            figures[f"curves-{index}" if several else "curves"] = curves
    # the quality axis of the Pareto plots: accuracy for classifiers, perplexity for language models (lower is
    # better), cosine to the teacher for encoders
    quality = next((key for key in ("accuracy", "perplexity", "cosine") if any(row.get(key) is not None
                                                                              for _, row in rows)), None)
    lower_is_better = quality == "perplexity"
    scored = [(label, row) for label, row in rows if quality and row.get(quality) is not None]
    pareto: dict[str, list[str]] = {}
    timed = [(label, row["latency_b1_ms"], row[quality]) for label, row in scored if row.get("latency_b1_ms")]
    if timed:
        figures[f"{quality}-vs-latency"] = plots.pareto_plot(
            timed, xlabel="latency at batch 1, median (ms, log scale)", ylabel=f"test {quality}",
            title=f"{quality} vs latency", lower_is_better=lower_is_better)
        pareto["latency"] = plots.pareto_front(timed, lower_is_better=lower_is_better)
    sized = [(label, row["size_bytes"], row[quality]) for label, row in scored if row.get("size_bytes")]
    if sized:
        unit, scale = ("MiB", 2**20) if max(size for _, size, _ in sized) >= 2**20 else ("KiB", 2**10)
        figures[f"{quality}-vs-size"] = plots.pareto_plot(
            [(label, size / scale, value) for label, size, value in sized],
            xlabel=f"size on disk ({unit}, log scale)", ylabel=f"test {quality}", title=f"{quality} vs size",
            lower_is_better=lower_is_better)
        pareto["size"] = plots.pareto_front(sized, lower_is_better=lower_is_better)
    details = [(row_label(run, name), run.metrics.get("details", {}).get(name, {}))
               for run in runs for name in model_names(run.metrics)]
    reliability = [(label, detail["reliability"]) for label, detail in details if "reliability" in detail]
    if reliability:
        figures["reliability"] = plots.reliability_diagrams(reliability)
    confusion = [(label, detail["confusion"]) for label, detail in details if "confusion" in detail]
    if confusion:
        names = {tuple(run.metrics.get("data", {}).get("class_names") or ()) for run in runs}
        figures["confusion"] = plots.confusion_matrices(confusion, list(names.pop()) if len(names) == 1 else None)
    inherited = [(label, detail["inherited"]) for label, detail in details if "inherited" in detail]
    if inherited:
        figures["inherited-errors"] = plots.inherited_errors_plot(inherited)
    for name, png in figures.items():
        (output / f"{name}.png").write_bytes(png)

    notes = _notes(runs)
    filters = _filter_rows(runs)
    summary = {
        "runs": [{"run_dir": str(run.run_dir), "label": run.label, "recipe": run.metrics.get("recipe"),
                  "seed": run.metrics.get("seed"), "complete": run.metrics.get("complete", True),
                  "missing": run.metrics.get("missing", []), "status": run.metrics.get("status")} for run in runs],
        "rows": [{"model": label, **{key: value for key, value in row.items()}} for label, row in rows],
        "inherited_errors": {label: detail for label, detail in inherited},
        "pareto": pareto, "figures": sorted(f"{name}.png" for name in figures), "notes": notes,
        "filters": [dict(zip(FILTER_HEADERS, row)) for row in filters],
    }
    write_json_atomic(output / "report.json", summary)
    (output / "report.md").write_text(_markdown(runs, rows, inherited, figures, notes, filters))
    (output / "report.html").write_text(_html(runs, rows, inherited, figures, notes, filters))
    return ReportResult(output, output / "report.html", output / "report.md", output / "report.json")


def _notes(runs: list[RunRecord]) -> list[str]:
    notes = []
    for run in runs:
        for name, reason in (run.metrics.get("status") or {}).items():
            if reason != "exported" and not reason.startswith("loaded"):
                notes.append(f"{run.label}: {name} {reason}")
    first = runs[0].metrics
    if first.get("task") == "language-modeling":
        notes.append(f"language models: perplexity and next-token agreement on {first.get('test_tokens')} held-out "
                     "tokens; tokens/s from the same evaluation pass")
    else:
        notes.append(f"measured on {first.get('device', 'cpu')} with {first.get('threads')} threads; latency is the "
                     f"median (and p95) of {first.get('latency_b1_runs', '?')} timed forward passes at batch 1 after "
                     f"warm-up; throughput at batch {first.get('throughput_batch_size', '?')}; test set of "
                     f"{first.get('test_size')} samples")
    return notes


FILTER_HEADERS = ("run", "filter", "seen", "dropped", "kept", "reasons")


def _filter_rows(runs: list[RunRecord]) -> list[list[str]]:
    """What each filter of a run's generated data dropped (``RUN/kept/filter_report.json``), step by step."""
    rows = []
    for run in runs:
        path = run.run_dir / "kept" / "filter_report.json"
        if not path.is_file():
            continue
        for step in json.loads(path.read_text())["filters"]:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in step["reasons"].items()) or "-"
            rows.append([run.label, step["filter"], str(step["seen"]), str(step["dropped"]), str(step["kept"]),
                         reasons])
    return rows


def _inherited_table_rows(inherited: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
    return [[label, str(row["teacher_errors"]), str(row["inherited"]),
             f"{row['inherited_share']:.1%}" if row["inherited_share"] is not None else "-", str(row["fixed"]),
             str(row["own_errors"])] for label, row in inherited]


INHERITED_HEADERS = ["model", "teacher errors", "same wrong answer", "inherited share", "fixed", "own new errors"]

CAPTIONS = {
    "curves": "Training curves: every loss term by name, per stage (dashed: validation).",
    "vs-latency": "Quality against latency at batch 1; circled points are on the Pareto front (no other model is "
                  "both faster and better).",
    "vs-size": "Quality against size on disk of the exported weights; circled points are on the Pareto front.",
    "reliability": "Reliability diagrams: accuracy per confidence bin against the diagonal of perfect calibration.",
    "confusion": "Confusion matrices, row-normalised (log colour scale), counts in the cells.",
    "inherited-errors": "Inherited errors: where the teacher is wrong, does the model repeat the same wrong answer? "
                        "Compare each distilled student with the baseline student, trained without the teacher.",
}


def _caption(name: str) -> str:
    if name.startswith("curves"):
        return CAPTIONS["curves"]
    if name.endswith(("-vs-latency", "-vs-size")):
        return CAPTIONS[name[name.index("-vs-") + 1:]]
    return CAPTIONS.get(name, name)


def _markdown(runs: list[RunRecord], rows: list[tuple[str, dict[str, Any]]],
              inherited: list[tuple[str, dict[str, Any]]], figures: dict[str, bytes], notes: list[str],
              filters: list[list[str]]) -> str:
    parts = [f"# distill report: {', '.join(run.label for run in runs)}", "", markdown_table(rows), ""]
    parts += [f"- {note}" for note in notes] + [""]
    if filters:
        parts += ["## Generated data: what each filter dropped", "", "| " + " | ".join(FILTER_HEADERS) + " |",
                  "|---" * len(FILTER_HEADERS) + "|"]
        parts += ["| " + " | ".join(cells) + " |" for cells in filters] + [""]
    if inherited:
        parts += ["## Inherited errors", "", "| " + " | ".join(INHERITED_HEADERS) + " |",
                  "|---" * len(INHERITED_HEADERS) + "|"]
        parts += ["| " + " | ".join(cells) + " |" for cells in _inherited_table_rows(inherited)] + [""]
    for name in figures:
        parts += [f"## {name}", "", _caption(name), "", f"![{name}]({name}.png)", ""]
    return "\n".join(parts)


def _html(runs: list[RunRecord], rows: list[tuple[str, dict[str, Any]]],
          inherited: list[tuple[str, dict[str, Any]]], figures: dict[str, bytes], notes: list[str],
          filters: list[list[str]]) -> str:
    title = html.escape(f"distill report: {', '.join(run.label for run in runs)}")
    body = [f"<h1>{title}</h1>", "<h2>Comparison</h2>", html_table(rows, table_id="comparison"), "<ul>"]
    body += [f'<li class="{"note" if "missing" in note or "checkpoint" in note else ""}">{html.escape(note)}</li>'
             for note in notes] + ["</ul>"]
    if filters:
        header = "".join(f"<th>{html.escape(text)}</th>" for text in FILTER_HEADERS)
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(text)}</td>" for text in row) + "</tr>"
                        for row in filters)
        body += ["<h2>Generated data: what each filter dropped</h2>",
                 f'<table id="filters"><thead><tr>{header}</tr></thead><tbody>{cells}</tbody></table>']
    if inherited:
        header = "".join(f"<th>{html.escape(text)}</th>" for text in INHERITED_HEADERS)
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(text)}</td>" for text in row) + "</tr>"
                        for row in _inherited_table_rows(inherited))
        body += ["<h2>Inherited errors</h2>", f'<table id="inherited-errors"><thead><tr>{header}</tr></thead>'
                 f"<tbody>{cells}</tbody></table>"]
    for name, png in figures.items():
        encoded = base64.b64encode(png).decode("ascii")
        body += [f"<h2>{html.escape(name)}</h2>", f"<p>{html.escape(_caption(name))}</p>",
                 f'<img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">']
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
