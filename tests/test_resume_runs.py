"""Resume after SIGKILL, for every kind of stage the same way: a plain run, a regime (born-again) and compress
(the pruning fine-tune). The student has dropout, so the global RNG is drawn from every step: a resumed run
equals an uninterrupted one only if the RNG state, the per-epoch data order and the log truncated at the
checkpoint step are all restored exactly. Two more cases draw random numbers besides dropout: a run with shift
augmentation killed mid-epoch (its own per-batch generator), and the adversarial data-free regime (the
generator's noise, every step)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

COMMON = ["teacher.train.epochs=2", "student.model.dropout=0.3", "evaluation.latency_runs=5"]
CASES = {
    "plain": (COMMON + ["training.max_steps=160", "training.checkpoint_every=40", "training.log_every=1",
                        "baseline=false"], "student", ["teacher", "student"]),
    "born-again": (COMMON + ["training.max_steps=120", "training.checkpoint_every=40", "training.log_every=1",
                             "baseline=false", "mode={kind: born_again, generations: 2}"], "generation-1",
                   ["generation-0", "generation-1", "generation-2", "student"]),
    # an epoch is at most 39 steps (1,257 training images, batch 32): the second checkpoint, step 80, is mid-epoch
    "augment": (COMMON + ["training.max_steps=120", "training.checkpoint_every=40", "training.log_every=1",
                          "baseline=false", "training.augment.shift=1"], "student", ["teacher", "student"]),
    "adversarial": (COMMON + ["training.checkpoint_every=20", "training.log_every=1", "baseline=false",
                              "mode={kind: data_free, method: adversarial, iterations: 60, student_steps: 2, "
                              "batch_size: 32}"], "student", ["teacher", "student"]),
    "compress": (COMMON + ["training.epochs=1", "baseline=false", "training.log_every=1",
                           "compress={prune: 0.5, finetune_steps: 100}"], "student_pruned",
                 ["student", "student_pruned"]),
}


def _command(run_dir: Path, overrides: list[str], *extra: str) -> list[str]:
    settings = [item for setting in overrides for item in ("--set", setting)]
    return [sys.executable, "-m", "distill.cli", "train", "digits-quick", "--quiet", "--output", str(run_dir),
            *settings, *extra]


def _losses(run_dir: Path) -> list[dict]:
    return [line for line in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_run_killed_mid_stage_resumes_to_the_uninterrupted_result(tmp_path, case):
    overrides, killed_stage, models = CASES[case]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_command(tmp_path / "full", overrides), env=env, check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(killed, overrides), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    # the second checkpoint of the stage: past one epoch boundary for the plain run, mid-stage for all
    checkpoints = killed / "checkpoints" / killed_stage
    deadline = time.time() + 300
    while time.time() < deadline and len([path for path in checkpoints.glob("step-*")
                                          if not path.name.endswith(".partial")]) < 2:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / killed_stage / "stage_done.json").exists(), "the stage finished before it was killed"
    resumed = subprocess.run(_command(killed, overrides, "--resume"), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    for name in models:
        full, again = (load_file(str(run / name / "model.safetensors")) for run in (tmp_path / "full", killed))
        assert full.keys() == again.keys()
        for key in full:
            assert torch.equal(full[key], again[key]), (name, key)
    assert _losses(killed) == _losses(tmp_path / "full")  # truncated at the checkpoint, then the same lines
    stages = json.loads((killed / "metrics.json").read_text())["stages"]
    if killed_stage in stages:
        assert stages[killed_stage]["resumed_from_step"] >= 2
