"""Whole runs under DDP, as a user launches them: `accelerate launch --multi_gpu --num_processes 2 -m distill.cli`
on 2 gloo processes (CPU). Every stage's artifacts are written by the main process only, and the results equal a
one-process run with twice the batch (the two ranks' batches side by side)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", "2", "-m", "distill.cli"]


def _settings(batch_size: int, stages: list[str]) -> list[str]:
    return [item for stage in stages for item in ("--set", f"{stage}.batch_size={batch_size}")]


def _run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _same_weights(one: Path, other: Path) -> None:
    first, second = load_file(str(one)), load_file(str(other))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=1e-4, atol=1e-5, msg=f"{one}: {key}")


@pytest.mark.parametrize("recipe, extra, stages, models", [
    ("digits-quick", ["teacher.train.epochs=2", "training.epochs=2", "evaluation.latency_runs=5"],
     ["teacher.train", "training"], ["teacher", "baseline", "student"]),
    # a regime; MLPs, as batch norm's statistics (per process under DDP) would differ from one process's
    ("digits-quick", ["teacher.train.epochs=2", "training.epochs=2", "mode={kind: born_again, generations: 2}",
                      "evaluation.latency_runs=5", "baseline=false"],
     ["teacher.train", "training"], ["generation-0", "generation-1", "generation-2", "student"]),
    ("digits-quick", ["teacher.train.epochs=2", "training.epochs=1", "evaluation.latency_runs=5", "baseline=false",
                      "compress={prune: 0.5, finetune_steps: 20, quantize: int8}"],
     ["teacher.train", "training"], ["student", "student_pruned"]),
])
def test_a_whole_run_under_two_processes_equals_one_with_twice_the_batch(tmp_path, recipe, extra, stages, models):
    overrides = [item for setting in extra for item in ("--set", setting)]
    _run([*LAUNCH, "train", recipe, "--output", str(tmp_path / "ddp"), "--quiet", *overrides,
          *_settings(16, stages)], tmp_path)
    _run([sys.executable, "-m", "distill.cli", "train", recipe, "--output", str(tmp_path / "one"), "--quiet",
          *overrides, *_settings(32, stages)], tmp_path)
    for name in models:
        _same_weights(tmp_path / "ddp" / name / "model.safetensors", tmp_path / "one" / name / "model.safetensors")
    ddp, one = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("ddp", "one"))
    assert ddp["student"]["accuracy"] == pytest.approx(one["student"]["accuracy"], abs=2e-3)
    assert ddp["stages"].keys() == one["stages"].keys()
    assert not list((tmp_path / "ddp").rglob("*.partial")), "a partial file was left behind"


def test_a_cache_build_under_two_processes_equals_one(tmp_path):
    teacher_run = tmp_path / "teacher-run"
    _run([sys.executable, "-m", "distill.cli", "train", "digits-quick", "--output", str(teacher_run), "--quiet",
          "--set", "teacher.train.epochs=1", "--set", "training.epochs=1", "--set", "baseline=false",
          "--set", "evaluation.latency_runs=5"], tmp_path)
    saved = ["--set", f"teacher.model={{kind: saved, path: {teacher_run / 'teacher'}}}", "--set", "teacher.train=null"]
    _run([*LAUNCH, "cache", "build", "digits-quick", "--output", str(tmp_path / "ddp"), *saved], tmp_path)
    _run([sys.executable, "-m", "distill.cli", "cache", "build", "digits-quick", "--output", str(tmp_path / "one"),
          *saved], tmp_path)
    ddp_files = sorted(path.name for path in (tmp_path / "ddp").iterdir())
    assert ddp_files == sorted(path.name for path in (tmp_path / "one").iterdir())
    for shard in (tmp_path / "one").glob("*.safetensors"):
        first, second = load_file(str(shard)), load_file(str(tmp_path / "ddp" / shard.name))
        for key in first:  # float16 values: equal within float16 rounding
            torch.testing.assert_close(first[key].float(), second[key].float(), rtol=1e-3, atol=1e-3)
