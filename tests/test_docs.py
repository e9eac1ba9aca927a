"""Every command the README and docs/*.md show is exercised here, and this file says how.

What is read from the docs:

* fenced ``bash`` / ``sh`` / untagged blocks: shell commands, one per line (``\\`` continues a line; a trailing
  ``# comment`` is dropped; ``ENV=1``, ``nice -n N`` and ``.venv/bin/`` prefixes are ignored);
* fenced ``console`` blocks: ``$ command`` lines and the output they print, compared line by line (a line
  ``...`` stands for any number of lines);
* fenced ``python`` blocks: run as written (the placeholders they use, ``my_teacher``, ``x_train``, ... are
  given; ``my-recipe.yaml`` is written by the workspace below);
* fenced ``yaml`` blocks: a whole recipe (one with ``data:``) is validated and planned; a fragment must parse,
  use only recipe sections, registered losses and known modes;
* inline `` `distill ...` `` spans in prose: they must name a real command and real options.

How each shell command is exercised is decided in ``DECISIONS`` below, one entry per distinct command: quick
ones run as shown, in-process through the click CLI (``RUN``), in a scratch workspace where the docs'
placeholders exist (``my-kd.yaml``, ``runs/kd``, ``runs/mnist-cache``, ``runs/hinton/teacher``: see
``workspace``); the few that make what the others read run once while the workspace is built (``FIXTURE``);
training runs with full schedules run with ``--plan`` (the recipe and every ``--set`` are validated and the
stages planned, nothing is built: ``PLAN``); sweeps have every grid point validated and planned
(``SWEEP_PLAN``); what cannot run here is skipped with its reason (``Skip``). A command found in the docs with
no entry fails ``test_every_command_has_a_decision``, and so does an entry no doc shows any more.

Benchmark command lines (``python benchmarks/X.py ARGS``, docs/benchmarks.md) are not run (each takes minutes to
hours): their real arguments are parsed by the script's own parser. Every script builds its ``argparse`` parser
inside ``main()`` and calls ``parser.parse_args()`` before doing any work, so the script is imported, ``sys.argv``
set to the documented arguments and ``main()`` called with ``ArgumentParser.parse_args`` wrapped to parse them
for real and then stop the script (``_ParsedOnly``). An option the script does not take, or a value its type
refuses, fails the test with argparse's own message. Optional parts written ``[...]`` in a command are tried
both with and without.

Python blocks that call ``distill.train`` run it for real, with the recipe shortened (2 optimizer steps a stage,
fewer latency runs, a small MNIST validation split) and written to a scratch folder, so the metric keys they
print are the real ones.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from distill.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# ------------------------------------------------------------------------------------------ decisions
@dataclass(frozen=True)
class Skip:
    reason: str


RUN = "run as shown"
FIXTURE = "run as shown, once, while the workspace is built (other commands read what it makes)"
PLAN = "run with --plan: recipe and overrides validated, stages planned, nothing trained"
SWEEP_PLAN = "every grid point's recipe validated and planned, nothing trained"

DECISIONS: dict[str, Any] = {
    # README
    "make demo": Skip("installs the pinned environment and trains for minutes; its recipe is planned below "
                      "(distill train hinton-mnist ... --plan)"),
    "make test": Skip("the whole test suite, of which this file is a part"),
    "distill train my-texts.yaml --output runs/texts":
        Skip("tickets.csv is the reader's own file; tests/test_text_classification.py runs this path on a CSV it "
             "writes, and the built-in text-classification recipe on a local encoder"),
    "python -c from transformers import pipeline; print(pipeline('text-classification', "
    "model='runs/texts/student')('my printer is on fire'))":
        Skip("reads the run above; tests/test_text_classification.py loads exported students with pipeline()"),
    "distill recipes": RUN,
    "distill train addition-teacher --output runs/addition-teacher": PLAN,
    "distill train addition-seq-kd --output runs/addition-seq-kd": PLAN,
    "distill train addition-on-policy --output runs/addition-on-policy": PLAN,
    "distill check my-kd.yaml --explain": RUN,
    "distill train my-kd.yaml --output runs/kd": FIXTURE,
    "distill train llm-tiny --output runs/llm-tiny": PLAN,
    "distill train mnist1d-born-again --output runs/born-again": PLAN,
    "distill cache build my-kd.yaml --output runs/mnist-cache": FIXTURE,
    "distill cache info runs/mnist-cache": RUN,
    "distill train my-kd.yaml --set teacher.cache=runs/mnist-cache --output runs/kd-from-cache": RUN,
    "distill eval runs/kd": RUN,
    "distill report runs/kd": RUN,
    "distill sweep digits-quick --seeds 3 --grid objective.temperature=1,4 -o runs/sweep": SWEEP_PLAN,
    # docs/recipes-guide.md
    "distill check my-kd.yaml": RUN,
    "distill train my-kd.yaml --plan": RUN,
    "distill train my-kd.yaml --set training.lr=0.05 --output runs/kd": PLAN,
    "distill train my-kd.yaml --output runs/kd --resume": RUN,
    "accelerate launch --multi_gpu --num_processes 2 -m distill.cli train my-kd.yaml":
        Skip("needs a multi-process launch; tests/test_ddp_runs.py runs whole runs under 2 DDP processes"),
    # docs/llm.md
    "distill train llm-logit-kd --output runs/smol": PLAN,
    # docs/caches.md
    "distill train hinton-mnist --output runs/hinton": PLAN,
    # docs/regimes.md
    "distill recipes mnist1d-born-again": RUN,
    "distill train mnist1d-born-again --plan": RUN,
    # docs/evaluation.md
    "distill train hinton-mnist --set compress.quantize=int8 --set compress.prune=0.5 "
    "--set compress.finetune_steps=500": PLAN,
    "distill sweep digits-quick --seeds 5 --grid objective.temperature=1,4,20 --grid objective.alpha=0.5,0.9 "
    "-o runs/sweep": SWEEP_PLAN,
    "distill report runs/sweep/*/seed-0 -o runs/report": RUN,
    # docs/generation.md
    "distill generate arithmetic-answers.yaml -o data/arith-gen":
        Skip("needs a trained causal-LM teacher folder; tests/test_generation.py runs distill generate on a tiny "
             "local Llama, killed mid-way and resumed"),
    "distill filter arithmetic-answers.yaml -i data/arith-gen -o data/arith-kept":
        Skip("reads the generation above; tests/test_filters.py runs distill filter on planted records"),
    "distill serve runs/arith/teacher --port 8000":
        Skip("a server that runs until stopped; tests/test_serve.py serves a tiny local Llama on a free port"),
    # docs/on-policy.md
    "distill serve runs/addition-teacher/teacher --port 8000":
        Skip("a server that runs until stopped; tests/test_on_policy_endpoint.py trains against distill serve on a "
             "free port"),
    # docs/benchmarks.md (its python benchmarks/*.py lines are parsed, see the module docstring)
    "distill train llm-logit-kd --output runs/smol --set training.max_steps=24 --set training.batch_size=4 "
    "--set training.log_every=4 --set training.checkpoint_every=24 --set evaluation.max_test_tokens=2048": PLAN,
    "distill train hinton-mnist --output /tmp/eval_scratch/hinton --set teacher.train.epochs=1 "
    "--set training.epochs=1 --set data.train_subset=10000 --set compress.quantize=int8 --quiet": PLAN,
    "distill sweep digits-quick --seeds 3 --grid compress.prune=0.5,0.8,0.95 --set compress.quantize=int8 "
    "--set compress.finetune_steps=100 -o /tmp/eval_scratch/sweep_prune": SWEEP_PLAN,
    "pip install -c constraints.txt -c constraints-bench.txt -e .[dev,bench]":
        Skip("installs packages (TRL, benchmark-only) into the environment"),
}


# ------------------------------------------------------------------------------------------ reading the docs
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
INLINE = re.compile(r"`(distill [^`]+)`")
SHELL_LANGS = {"", "bash", "sh", "shell"}


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def _blocks() -> list[Block]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 2
            found.append(Block(str(path.relative_to(ROOT)), line, match.group(1).lower(), match.group(2)))
    return found


BLOCKS = _blocks()


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _tokens(line: str) -> list[str]:
    tokens = shlex.split(line, comments=True)
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):
        tokens.pop(0)
    if tokens[:2] == ["nice", "-n"]:
        tokens = tokens[3:]
    if tokens:
        tokens[0] = tokens[0].removeprefix(".venv/bin/")
    return tokens


def _shell_commands() -> dict[str, list[str]]:
    """Each distinct command -> where the docs show it."""
    commands: dict[str, list[str]] = {}
    for block in BLOCKS:
        if block.lang in SHELL_LANGS:
            for line in _logical_lines(block.text):
                commands.setdefault(" ".join(_tokens(line)), []).append(block.where)
    return commands


COMMANDS = _shell_commands()
BENCHMARKS = {command: places for command, places in COMMANDS.items()
              if command.startswith("python benchmarks/")}
OTHERS = {command: places for command, places in COMMANDS.items() if command not in BENCHMARKS}


def _prose(path: Path) -> str:
    return FENCE.sub("", path.read_text())


# ------------------------------------------------------------------------------------------ the workspace
def _doc_recipe(doc: str, first_line: str) -> dict[str, Any]:
    for block in BLOCKS:
        if block.doc == doc and block.lang == "yaml" and block.text.startswith(first_line):
            return yaml.safe_load(block.text)
    raise AssertionError(f"{doc} has no yaml block starting with {first_line!r}")


TINY_TRAINING = {"max_steps": 3, "batch_size": 32, "optimizer": "sgd", "lr": 0.1}
TINY_EVALUATION = {"latency_runs": 5, "latency_b1_runs": 20, "latency_batch_size": 8}


def _stand_in_my_kd() -> dict[str, Any]:
    """The README's my-kd.yaml on 8x8 digits with a 16-unit student and 3 steps: the same sections and the same
    teacher path, runs/hinton/teacher (a digits MLP the workspace exports there)."""
    recipe = _doc_recipe("README.md", "# my-kd.yaml")
    assert recipe["teacher"]["model"] == {"kind": "saved", "path": "runs/hinton/teacher"}
    return {**recipe, "data": {"dataset": "digits"}, "student": {"model": {"kind": "mlp", "hidden": [16]}},
            "training": TINY_TRAINING, "evaluation": TINY_EVALUATION}


MY_RECIPE = {  # my-recipe.yaml of docs/recipes-guide.md: teacher, student and data come from Python
    "name": "my-recipe", "data": {"dataset": "digits"}, "objective": {"temperature": 4, "alpha": 0.9},
    "training": TINY_TRAINING, "evaluation": TINY_EVALUATION,
}


def cli(tokens: list[str]) -> str:
    """``distill ARGS`` in-process; fails with what it printed unless it exits 0."""
    assert tokens[0] == "distill", tokens
    args = [match for token in tokens[1:] for match in (sorted(glob.glob(token)) if "*" in token else [token])]
    result = CliRunner().invoke(cli_main, args, catch_exceptions=False)
    assert result.exit_code == 0, f"distill {' '.join(args)} exited {result.exit_code}:\n{result.output}"
    return result.output


@dataclass
class Workspace:
    path: Path
    fixture_output: dict[str, str]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from distill.config import MLPSpec
    from distill.models import build_model, export_model

    path = tmp_path_factory.mktemp("docs")
    previous = Path.cwd()
    os.chdir(path)
    try:
        (path / "my-kd.yaml").write_text(yaml.safe_dump(_stand_in_my_kd()))
        (path / "my-recipe.yaml").write_text(yaml.safe_dump(MY_RECIPE))
        spec = MLPSpec(hidden=[32])
        export_model(build_model(spec, input_shape=(1, 8, 8), num_classes=10), spec, path / "runs/hinton/teacher",
                     input_shape=(1, 8, 8), num_classes=10)
        outputs = {}
        for command in (command for command, decision in DECISIONS.items() if decision == FIXTURE):
            assert command in COMMANDS, f"FIXTURE command {command!r} is in no doc"
            quiet = command.startswith(("distill train", "distill cache build"))
            outputs[command] = cli(shlex.split(command) + ["--quiet"] * quiet)
        # `distill report runs/sweep/*/seed-0`: two finished runs where a sweep would put them
        for point in ("temperature=1", "temperature=4"):
            shutil.copytree(path / "runs/kd", path / "runs/sweep" / point / "seed-0")
        yield Workspace(path, outputs)
    finally:
        os.chdir(previous)


# ------------------------------------------------------------------------------------------ shell commands
def test_every_command_has_a_decision() -> None:
    missing = {command: places for command, places in OTHERS.items() if command not in DECISIONS}
    assert not missing, ("commands shown in the docs that this test does not know how to exercise; add each to "
                         f"DECISIONS in tests/test_docs.py: {json.dumps(missing, indent=2)}")
    stale = [command for command in DECISIONS if command not in COMMANDS]
    assert not stale, f"DECISIONS entries no doc shows any more (remove them): {stale}"


def _plan_sweep(tokens: list[str]) -> int:
    from distill.cli import sweep
    from distill.config import load_recipe
    from distill.run import plan
    from distill.sweep import grid_points, parse_grid

    params = sweep.make_context("sweep", tokens[2:]).params
    points = grid_points(parse_grid(list(params["grid"])))
    for point in points:
        config = load_recipe(params["recipe"], [*params["overrides"],
                                                *(f"{key}={json.dumps(value)}" for key, value in point.items())])
        assert plan(config), point
    return len(points)


@pytest.mark.parametrize("command", sorted(OTHERS), ids=sorted(OTHERS))
def test_command(command: str, workspace: Workspace) -> None:
    decision = DECISIONS.get(command)
    if decision is None:
        pytest.fail(f"{command!r} ({', '.join(OTHERS[command])}) has no entry in DECISIONS")
    if isinstance(decision, Skip):
        pytest.skip(decision.reason)
    tokens = shlex.split(command)
    if decision == FIXTURE:
        assert command in workspace.fixture_output
    elif decision == RUN:
        quiet = ["--quiet"] if tokens[1] in ("train", "eval") and "--plan" not in tokens else []
        cli(tokens + quiet)
    elif decision == PLAN:
        assert tokens[:2] == ["distill", "train"], "only distill train has --plan"
        assert re.search(r"^1\. (prepare|generate) ", cli(tokens + ["--plan"]), re.M)  # generate: seq-KD recipes
    elif decision == SWEEP_PLAN:
        assert tokens[:2] == ["distill", "sweep"]
        assert _plan_sweep(tokens) > 0
    else:
        pytest.fail(f"unknown decision {decision!r}")


def test_console_blocks_print_what_they_show(workspace: Workspace) -> None:
    blocks = [block for block in BLOCKS if block.lang == "console"]
    assert blocks
    for block in blocks:
        parts = re.split(r"^\$ (.*)\n", block.text, flags=re.M)
        for command, shown in zip(parts[1::2], parts[2::2]):
            actual = "".join(line.rstrip() + "\n" for line in cli(shlex.split(command)).rstrip("\n").splitlines())
            pattern = "".join(r"(?:[^\n]*\n)*?" if line == "..." else re.escape(line.rstrip()) + "\n"
                              for line in shown.rstrip("\n").splitlines())
            assert re.fullmatch(pattern, actual), f"{block.where}: `{command}` now prints:\n{actual}"


# ------------------------------------------------------------------------------------------ benchmarks
class _ParsedOnly(Exception):
    pass


def _variants(command: str) -> list[str]:
    """``--shift 2 [--jitter 2] --name x[_jitter]``: every optional part present, and absent."""
    optional = re.findall(r"\[([^\]]*)\]", command)
    found = []
    for present in itertools.product((True, False), repeat=len(optional)):
        chosen = iter(present)
        # re.sub calls the lambda within this iteration; binding `chosen` as a default only quiets B023
        found.append(re.sub(r"\[([^\]]*)\]", lambda match, chosen=chosen: match.group(1) if next(chosen) else "",
                            command))
    return found


def _load_script(script: Path) -> Any:
    if str(script.parent) not in sys.path:  # eval_speed.py imports `common` without adding its folder
        sys.path.insert(0, str(script.parent))
    spec = importlib.util.spec_from_file_location(f"_docs_benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in the script look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("command", sorted(BENCHMARKS), ids=sorted(BENCHMARKS))
def test_benchmark_arguments_parse(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    original = argparse.ArgumentParser.parse_args

    def parse_only(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        parsed = original(self, args, namespace)  # a bad option or value exits here, with argparse's message
        raise _ParsedOnly(parsed)

    for variant in _variants(command):
        tokens = shlex.split(variant)
        script = ROOT / tokens[1]
        assert script.is_file(), f"{BENCHMARKS[command]}: no script {tokens[1]}"
        module = _load_script(script)
        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
        monkeypatch.setattr(sys, "argv", [str(script), *tokens[2:]])
        try:
            module.main()
        except _ParsedOnly:
            pass
        except SystemExit as error:
            pytest.fail(f"{' '.join(BENCHMARKS[command])}: {script.name} refused its documented arguments "
                        f"{tokens[2:]} (exit {error.code})")
        else:
            pytest.fail(f"{script.name}: main() returned without parsing arguments")
        finally:
            monkeypatch.setattr(argparse.ArgumentParser, "parse_args", original)


# ------------------------------------------------------------------------------------------ python blocks
def _short_overrides(config: Any) -> list[str]:
    overrides = ["training.max_steps=2", *(f"evaluation.{key}={value}" for key, value in TINY_EVALUATION.items())]
    if config.teacher.train is not None:
        overrides.append("teacher.train.max_steps=2")
    if config.data.dataset == "mnist":  # the official 10,000-image validation split would dominate
        overrides += ["data.val_size=100", "data.train_subset=500"]
    return overrides


def _python_namespace() -> dict[str, Any]:
    """The placeholders python blocks use: arrays shaped like MNIST-1D (1 x 40, 10 classes) and small modules that
    take them, so the same teacher also serves the regime example on mnist1d."""
    import numpy as np
    import torch

    generator = np.random.default_rng(0)
    torch.manual_seed(0)

    def module() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))

    return {"x_train": generator.normal(size=(128, 1, 40)).astype(np.float32),
            "y_train": generator.integers(0, 10, 128), "x_test": generator.normal(size=(64, 1, 40)).astype(np.float32),
            "y_test": generator.integers(0, 10, 64), "my_teacher": module(), "my_student": module()}


PYTHON_BLOCKS = [block for block in BLOCKS if block.lang == "python"]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[block.where for block in PYTHON_BLOCKS])
def test_python_block_runs(block: Block, workspace: Workspace, monkeypatch: pytest.MonkeyPatch,
                           tmp_path: Path) -> None:
    import distill.run
    from distill.config import load_recipe

    real_train = distill.run.train
    calls = []

    def short_train(recipe: Any, *, output: Any = None, overrides: list[str] | None = None, **options: Any) -> Any:
        config = load_recipe(recipe, overrides)
        calls.append(config.name)
        options["show_progress"] = False
        return real_train(recipe, output=tmp_path / f"run-{len(calls)}",
                          overrides=[*(overrides or []), *_short_overrides(config)], **options)

    monkeypatch.setattr(distill.run, "train", short_train)  # distill.train calls distill.run.train
    namespace = {"__name__": "__docs__", **_python_namespace()}
    exec(compile(block.text, block.where, "exec"), namespace)


# ------------------------------------------------------------------------------------------ yaml blocks
def _losses_and_modes(value: Any) -> tuple[list[str], list[str]]:
    losses, modes = [], []
    if isinstance(value, dict):
        if isinstance(value.get("loss"), str):
            losses.append(value["loss"])
        if isinstance(value.get("mode"), dict) and "kind" in value["mode"]:
            modes.append(value["mode"]["kind"])
        children = value.values()
    elif isinstance(value, list):
        children = value
    else:
        children = []
    for child in children:
        more_losses, more_modes = _losses_and_modes(child)
        losses += more_losses
        modes += more_modes
    return losses, modes


YAML_BLOCKS = [block for block in BLOCKS if block.lang == "yaml"]


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[block.where for block in YAML_BLOCKS])
def test_yaml_block_is_a_valid_recipe_or_fragment(block: Block) -> None:
    from distill.config import Recipe, load_recipe
    from distill.losses import LOSSES
    from distill.modes import MODES
    from distill.run import plan

    recipe = yaml.safe_load(block.text)
    assert isinstance(recipe, dict), block.where
    if "data" in recipe:
        assert plan(load_recipe(recipe)), block.where
        return
    unknown = set(recipe) - set(Recipe.model_fields)
    assert not unknown, f"{block.where}: not recipe sections: {unknown}"
    losses, modes = _losses_and_modes(recipe)
    assert set(losses) <= set(LOSSES), f"{block.where}: unknown losses {set(losses) - set(LOSSES)}"
    assert set(modes) <= set(MODES), f"{block.where}: unknown modes {set(modes) - set(MODES)}"


# ------------------------------------------------------------------------------------------ prose
def _command_names(tokens: list[str]) -> str | None:
    """What is wrong with an inline ``distill ...`` span, or None: commands and options must exist."""
    import click

    command: click.Command = cli_main
    for token in tokens[1:]:
        if isinstance(command, click.Group) and token in command.commands:
            command = command.commands[token]
        elif token.startswith("-"):
            names = {name for parameter in command.params for name in (*parameter.opts, *parameter.secondary_opts)}
            names |= {"-h", "--help"}
            if token.split("=")[0] not in names:
                return f"`{command.name}` has no option {token}"
        elif isinstance(command, click.Group):
            return f"`{command.name}` has no command {token!r}"
    return None


def test_inline_commands_name_real_commands_and_options() -> None:
    problems = []
    for path in DOCS:
        for span in INLINE.findall(_prose(path)):
            problem = _command_names(shlex.split(span))
            if problem:
                problems.append(f"{path.name}: `{span}`: {problem}")
    assert not problems, "\n".join(problems)


def _anchors(path: Path) -> set[str]:
    text = path.read_text()
    found = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.+)$", _prose(path), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_links_resolve() -> None:
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(path)):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                broken.append(f"{path.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{path.name}: {target} (no such heading)")
    data_packages = (ROOT / "data-packages.txt").read_text()
    for cited in re.findall(r"docs/[\w.-]+\.md", data_packages):
        if not (ROOT / cited).is_file():
            broken.append(f"data-packages.txt: {cited} (no such file)")
    assert not broken, "\n".join(broken)


def test_source_paths_named_in_the_docs_exist() -> None:
    missing = []
    for path in DOCS:
        for named in re.findall(r"src/distill/[\w/.<>-]+", path.read_text()):
            named = named.rstrip(".")
            if "<" in named:  # src/distill/modes/<mode>.py
                pattern = re.sub(r"<[^>]+>", "*", named)
                if not glob.glob(str(ROOT / pattern)):
                    missing.append(f"{path.name}: {named}")
            elif not (ROOT / named).exists() and not (ROOT / named.removesuffix(".py")).is_dir():
                # a module that became a package of the same name (config.py -> config/) still names it
                missing.append(f"{path.name}: {named}")
    assert not missing, "\n".join(missing)


def test_readme_layout_is_the_real_one() -> None:
    layout = next(block for block in BLOCKS if block.doc == "README.md" and block.text.startswith("src/distill/"))
    named = set(re.findall(r"^  ([\w.]+/?)\s", layout.text, flags=re.M))
    package = ROOT / "src" / "distill"
    real = {entry.name + "/" * entry.is_dir() for entry in package.iterdir()
            if entry.name not in ("__init__.py", "__pycache__") and not entry.name.endswith(".egg-info")}
    assert not real - named, f"README Layout does not mention {sorted(real - named)}"
    assert not named - real, f"README Layout names what does not exist: {sorted(named - real)}"
    for entry in re.findall(r"^(\w+/)\s", layout.text, flags=re.M):
        assert (ROOT / entry).is_dir(), entry


def test_loss_list_is_the_registry() -> None:
    from distill.losses import LOSSES

    guide = (ROOT / "docs" / "recipes-guide.md").read_text()
    paragraph = guide.split("Losses available by name", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"`(\w+)`", paragraph))
    assert listed == set(LOSSES), (f"docs/recipes-guide.md lists {sorted(listed - set(LOSSES))} that are not "
                                   f"registered and misses {sorted(set(LOSSES) - listed)}")


def test_regime_stage_table_is_what_plan_gives() -> None:
    from distill.config import load_recipe
    from distill.run import plan

    guide = (ROOT / "docs" / "regimes.md").read_text().split("## Each regime's stages", 1)[1]
    rows = re.findall(r"^\| `([\w-]+)` \| ([\w, -]+) \|$", guide, flags=re.M)
    assert len(rows) >= 9
    for recipe, stages in rows:
        assert [stage.name for stage in plan(load_recipe(recipe))] == stages.split(", "), recipe
