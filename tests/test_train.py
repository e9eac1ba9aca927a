"""The trainer: accumulation parity, frozen teacher, NaN handling, exact resume after SIGKILL, DDP parity."""

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

from distill.config import ObjectiveConfig, TrainingConfig
from distill.errors import DistillError
from distill.objective import Objective
from distill.trainer import NonFiniteLoss, fit
from helpers import NaNAfter, blobs, flat_parameters, mlp

ROOT = Path(__file__).resolve().parents[1]
KD = Objective(ObjectiveConfig(alpha=0.5, temperature=2.0))


def train_once(tmp_path, name, **training):
    dataset = blobs()
    teacher = mlp(hidden=32, seed=1)
    student = mlp(seed=0)
    config = TrainingConfig(optimizer="sgd", lr=0.1, momentum=0.0, schedule="constant", log_every=1, **training)
    fit(student, dataset, objective=KD, training=config, stage="student", run_dir=tmp_path / name, seed=3,
        teacher=teacher, show_progress=False)
    return student, teacher


def test_gradient_accumulation_matches_larger_batch(tmp_path):
    big, _ = train_once(tmp_path, "big", batch_size=16, grad_accum=1, max_steps=12)
    accumulated, _ = train_once(tmp_path, "acc", batch_size=8, grad_accum=2, max_steps=12)
    small, _ = train_once(tmp_path, "small", batch_size=8, grad_accum=1, max_steps=12)
    torch.testing.assert_close(flat_parameters(big), flat_parameters(accumulated), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(flat_parameters(big), flat_parameters(small), atol=1e-4)  # the test can fail


def test_teacher_stays_frozen_and_every_term_is_logged(tmp_path):
    teacher_before = flat_parameters(mlp(hidden=32, seed=1))
    _, teacher = train_once(tmp_path, "run", batch_size=16, max_steps=6)
    assert torch.equal(flat_parameters(teacher), teacher_before)
    assert not teacher.training and not any(parameter.requires_grad for parameter in teacher.parameters())
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 7))
    assert {"loss", "loss/soft", "loss/hard", "lr"} <= set(lines[0])
    first = lines[0]
    assert first["loss"] == pytest.approx(0.5 * first["loss/soft"] + 0.5 * first["loss/hard"], rel=1e-4)


def test_nan_loss_stops_names_term_and_keeps_last_good_checkpoint(tmp_path):
    config = TrainingConfig(optimizer="sgd", lr=0.1, batch_size=16, max_steps=20, checkpoint_every=4)
    with pytest.raises(NonFiniteLoss) as caught:
        fit(mlp(), blobs(), objective=KD, training=config, stage="student", run_dir=tmp_path, seed=0,
            teacher=NaNAfter(mlp(hidden=32, seed=1), calls=11), show_progress=False)  # one call is the probe
    message = str(caught.value)
    assert "'soft'" in message and "'hard'" not in message and "step 11" in message
    assert "step-00000008" in message
    weights = load_file(str(tmp_path / "checkpoints" / "student" / "step-00000008" / "model.safetensors"))
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_too_small_dataset_fails_clearly(tmp_path):
    with pytest.raises(DistillError, match="fewer than one optimizer step"):
        fit(mlp(), blobs(num_samples=10), objective=KD, training=TrainingConfig(batch_size=16), stage="student",
            run_dir=tmp_path, seed=0, teacher=mlp(hidden=32), show_progress=False)


def _cli(*args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return [sys.executable, "-m", "distill.cli", "train", "digits-quick", "--quiet", *args], env


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    settings = ["--set", "training.max_steps=1200", "--set", "training.checkpoint_every=100",
                "--set", "teacher.train.epochs=3", "--set", "baseline=false"]
    command, env = _cli("--output", str(tmp_path / "full"), *settings)
    subprocess.run(command, env=env, check=True, capture_output=True)

    killed_dir = tmp_path / "killed"
    command, env = _cli("--output", str(killed_dir), *settings)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = killed_dir / "checkpoints" / "student"
    deadline = time.time() + 120
    while time.time() < deadline and not (checkpoints / "step-00000300").exists():
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "student" / "stage_done.json").exists(), "the run finished before it was killed"

    command, env = _cli("--output", str(killed_dir), "--resume", *settings)
    subprocess.run(command, env=env, check=True, capture_output=True)
    full = load_file(str(tmp_path / "full" / "student" / "model.safetensors"))
    resumed = load_file(str(killed_dir / "student" / "model.safetensors"))
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    stages = json.loads((killed_dir / "metrics.json").read_text())["stages"]
    assert stages["student"]["resumed_from_step"] >= 300
    steps = [json.loads(line)["step"] for line in (killed_dir / "log.jsonl").read_text().splitlines()
             if json.loads(line)["stage"] == "student" and "loss" in json.loads(line)]
    assert steps == sorted(set(steps)), "the resumed log repeats or skips steps"


def test_ddp_two_processes_match_one_process_with_double_batch(tmp_path):
    script = ROOT / "tests" / "ddp_fit.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    subprocess.run([*launch, "--num_processes", "2", str(script), str(tmp_path / "ddp"), "8"], env=env, check=True,
                   capture_output=True, timeout=300)
    subprocess.run([sys.executable, str(script), str(tmp_path / "single"), "16"], env=env, check=True,
                   capture_output=True, timeout=300)
    ddp = load_file(str(tmp_path / "ddp" / "final.safetensors"))
    single = load_file(str(tmp_path / "single" / "final.safetensors"))
    moved = max((single[key] - load_file(str(tmp_path / "single" / "initial.safetensors"))[key]).abs().max()
                for key in single)
    assert moved > 1e-2  # training did change the weights, so equality below means something
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6)


def test_ctrl_c_writes_a_checkpoint_and_says_how_to_resume(tmp_path):
    run_dir = tmp_path / "interrupted"
    command, env = _cli("--output", str(run_dir), "--set", "training.max_steps=100000",
                        "--set", "teacher.train.epochs=1", "--set", "baseline=false",
                        "--set", "training.checkpoint_every=100000")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run_dir / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and '"stage": "student"' in log.read_text()):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "interrupted at step" in stderr and "--resume" in stderr and "Traceback" not in stderr
    checkpoints = sorted((run_dir / "checkpoints" / "student").glob("step-*"))
    assert len(checkpoints) == 1 and not checkpoints[0].name.endswith(".partial")
