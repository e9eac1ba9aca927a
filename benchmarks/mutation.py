"""Mutation testing of the loss library and of the trainer's data order / resume / checkpoint code (mutmut 3), as a
benchmark, never in CI. The repository (src, tests, pyproject.toml) is copied into a temporary directory, mutmut is
configured there to mutate only the target's files and to run a fast targeted test subset, every mutant is
generated, a seeded random sample of them is tested, and the verdicts go to a JSON file.

    nice -n 19 .venv/bin/python benchmarks/mutation.py --target losses --sample 200 --seed 0
    nice -n 19 .venv/bin/python benchmarks/mutation.py --target trainer --sample 100 --seed 0

mutmut puts ``mutants/src`` first on ``sys.path``; the copy also gets ``PYTHONPATH=<copy>/mutants/src``, so that
neither pytest nor any subprocess a test starts imports the editable install's unmutated ``src``. mutmut's own
"forced fail" run (every trampolined function raises) must fail the selected tests, or the run stops: that is the
check that the tests exercise the mutated code. Needs ``pip install mutmut`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TARGETS = {
    "losses": {
        "only_mutate": ["src/distill/losses/*"],
        "tests": ["tests/test_logit_losses.py", "tests/test_feature_losses.py", "tests/test_token_losses.py",
                  "tests/test_loss_golden.py", "tests/test_loss_registry.py", "tests/test_loss_gaps.py"],
    },
    "trainer": {
        "only_mutate": ["src/distill/trainer.py", "src/distill/step_end.py", "src/distill/checkpoint.py"],
        # tests/test_resume_runs.py is left out: it trains in CLI subprocesses and kills them (minutes per test,
        # and mutmut only maps in-process calls to tests); tests/test_stages.py's resume tests stand in for it.
        "tests": ["tests/test_train.py", "tests/test_trainer_step.py", "tests/test_trainer_gaps.py",
                  "tests/test_stages.py::test_resume_restores_finished_stages_and_runs_the_rest",
                  "tests/test_stages.py::test_deep_inversion_synthesis_is_a_stage_restored_on_resume",
                  # two training processes on the two cores; DDP is not what this target is about
                  "--deselect", "tests/test_train.py::test_ddp_two_processes_match_one_process_with_double_batch"],
    },
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
          36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 37: "caught by type check",
          -11: "segfault", -9: "segfault", 2: "interrupted", None: "not checked"}

# mutmut's generation step, run inside the copy: the same calls `mutmut run` makes before any test runs
GENERATE = """
import mutmut.__main__ as m
from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths
import os
os.makedirs("mutants", exist_ok=True)
copy_src_dir(); copy_also_copy_files(); setup_source_paths()
m.create_mutants(1)
"""

# diffs of the given mutants, printed as one JSON object
SHOW = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
names = json.load(open(sys.argv[1]))
print(json.dumps({name: get_diff_for_mutant(name) for name in names}))
"""


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(value) for value in values) + "]"


def make_copy(work: Path, target: str, timeout_per_mutant: float) -> None:
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    spec = TARGETS[target]
    config = (f"\n[tool.mutmut]\nsource_paths = [\"src\"]\nonly_mutate = {toml_list(spec['only_mutate'])}\n"
              f"pytest_add_cli_args = [\"-p\", \"no:cacheprovider\", \"-x\", \"-q\"]\n"
              f"pytest_add_cli_args_test_selection = {toml_list(spec['tests'])}\n"
              # a mutant's CPU limit is (its tests' time + constant) * multiplier * 2
              f"timeout_multiplier = 1.0\ntimeout_constant = {timeout_per_mutant / 2:.1f}\n"
              f"use_git_change_detection = false\n")
    (work / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + config)


def env_for(work: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(work / "mutants" / "src"),
            "PYTHONDONTWRITEBYTECODE": "1"}


def mutant_names(work: Path) -> dict[str, list[str]]:
    """Every generated mutant, by source file (from mutmut's ``mutants/<file>.meta``)."""
    names = {}
    for meta in sorted((work / "mutants" / "src").rglob("*.py.meta")):
        source = str(meta.relative_to(work / "mutants"))[: -len(".meta")]
        names[source] = sorted(json.loads(meta.read_text())["exit_code_by_key"])
    return names


def verdicts(work: Path) -> dict[str, int | None]:
    result = {}
    for meta in (work / "mutants" / "src").rglob("*.py.meta"):
        result.update(json.loads(meta.read_text())["exit_code_by_key"])
    return result


def function_of(name: str) -> tuple[str | None, str]:
    """(class, function) of a mutant name such as ``distill.checkpoint.xǁSaverǁsave__mutmut_3``."""
    mangled = name.partition("__mutmut_")[0].rpartition(".")[2]
    if "ǁ" in mangled:
        _, cls, func = mangled.split("ǁ")
        return cls, func
    return None, mangled[2:] if mangled.startswith("x_") else mangled


def source_line(work: Path, file: str, name: str, diff: str) -> int | None:
    """The line of the original file that the mutant changes: the first removed line of the diff, searched for
    inside the mutated function."""
    removed = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    if not removed:
        return None
    text = (work / file).read_text()
    lines = text.splitlines()
    cls, func = function_of(name)
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef) and cls is not None and node.name != cls:
            continue
        scope = node.body if isinstance(node, ast.ClassDef) else [node] if cls is None else []
        for item in scope:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == func:
                start = min([item.lineno] + [d.lineno for d in item.decorator_list])
                for number in range(start, item.end_lineno + 1):
                    if lines[number - 1].strip() == removed[0]:
                        return number
                return item.lineno
    return None


def one_line_change(diff: str) -> str:
    minus = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    plus = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return f"{' / '.join(minus)}  ->  {' / '.join(plus)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=sorted(TARGETS), required=True)
    parser.add_argument("--sample", type=int, default=200, help="mutants drawn at random (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-per-mutant", type=float, default=60.0,
                        help="CPU seconds a mutant may take beyond its tests' own time before it counts as a timeout")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested in parallel")
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/mutation_<target>.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = parser.parse_args()
    output = args.output or ROOT / "benchmarks" / "results" / f"mutation_{args.target}.json"
    spec = TARGETS[args.target]
    mutmut = Path(sys.executable).with_name("mutmut")

    work = Path(tempfile.mkdtemp(prefix=f"mutation_{args.target}_"))
    print(f"copy: {work}", flush=True)
    start = time.time()
    try:
        make_copy(work, args.target, args.timeout_per_mutant)
        env = env_for(work)
        subprocess.run([sys.executable, "-c", GENERATE], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
        # the tests (and any subprocess they start) must import the mutated tree, not the editable install's src
        imported = subprocess.run([sys.executable, "-c", "import distill; print(distill.__file__)"], cwd=work,
                                  env=env, check=True, text=True, capture_output=True).stdout.strip()
        if not Path(imported).is_relative_to(work / "mutants" / "src"):
            raise SystemExit(f"distill imports from {imported}, not from the mutated copy {work / 'mutants'}")
        by_file = mutant_names(work)
        everything = [name for names in by_file.values() for name in names]
        file_of = {name: file for file, names in by_file.items() for name in names}
        print(f"{len(everything)} mutants in {len(by_file)} files", flush=True)
        sample = (sorted(random.Random(args.seed).sample(everything, args.sample))
                  if 0 < args.sample < len(everything) else everything)
        run = subprocess.run([str(mutmut), "run", "--max-children", str(args.max_children), *sample], cwd=work,
                             env=env, text=True, capture_output=True)
        (work / "mutmut_run.log").write_text(run.stdout + run.stderr)
        tail = "\n".join((run.stdout + run.stderr).splitlines()[-15:])
        if run.returncode != 0 or "Unable to force test failures" in run.stdout:
            raise SystemExit(f"mutmut run failed ({run.returncode}):\n{tail}")
        codes = verdicts(work)
        status = {name: STATUS.get(codes.get(name), "suspicious") for name in sample}
        counts = {key: sum(value == key for value in status.values())
                  for key in ("killed", "survived", "timeout", "suspicious", "skipped", "no tests", "not checked",
                              "segfault")}
        survivors = sorted(name for name, value in status.items() if value == "survived")
        (work / "survivors.json").write_text(json.dumps(survivors))
        diffs = json.loads(subprocess.run([sys.executable, "-c", SHOW, str(work / "survivors.json")], cwd=work,
                                          env=env, check=True, text=True, capture_output=True).stdout) \
            if survivors else {}
        tested = counts["killed"] + counts["survived"] + counts["timeout"] + counts["suspicious"] + counts["segfault"]
        surviving = [{"name": name, "file": file_of[name],
                      "line": source_line(work, file_of[name], name, diffs[name]),
                      "change": one_line_change(diffs[name]), "diff": diffs[name]} for name in survivors]
        result = {
            "target": args.target,
            "mutated_files": spec["only_mutate"],
            "mutants_total": len(everything),
            "mutants_by_file": {file: len(names) for file, names in by_file.items()},
            "sampled": len(sample),
            "seed": args.seed,
            "killed": counts["killed"],
            "survived": counts["survived"],
            "timeout": counts["timeout"],
            "suspicious": counts["suspicious"],
            "skipped": counts["skipped"],
            "no_tests": counts["no tests"],
            "not_checked": counts["not checked"],
            "segfault": counts["segfault"],
            "tested": tested,
            "score": round((counts["killed"] + counts["timeout"]) / tested, 4) if tested else None,
            "surviving": surviving,
            "status": status,
            "tests": spec["tests"],
            "distill_imported_from": str(Path(imported).relative_to(work)),
            "mutmut_summary": tail,
            "wall_s": round(time.time() - start, 1),
            "command": "python " + " ".join(sys.argv),
            "machine": machine(),
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(f"{'target':8} {'total':>6} {'sampled':>7} {'killed':>6} {'survived':>8} {'timeout':>7} {'no tests':>8} "
              f"{'score':>6}")
        print(f"{args.target:8} {len(everything):6} {len(sample):7} {counts['killed']:6} {counts['survived']:8} "
              f"{counts['timeout']:7} {counts['no tests']:8} {result['score'] or 0:6.1%}")
        for item in surviving:
            print(f"  {item['file']}:{item['line']}  {item['change']}")
        print(f"wrote {output} in {result['wall_s']:.0f} s")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
