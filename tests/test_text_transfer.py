"""The transfer set of a text student: word-level augmentation from the teacher's embeddings, unlabelled in-domain
texts from a file, both labelled by the teacher alone, and only in the distilled student's training set."""

import json

import numpy as np
import pytest
import torch

import distill
from distill.data.text_transfer import augment_texts, word_neighbours
from text_helpers import tiny_bert_classifier, topic_rows, word_tokenizer, write_csv


class _Embedded(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.table = torch.nn.Embedding.from_pretrained(torch.tensor(weight, dtype=torch.float32))

    def get_input_embeddings(self):
        return self.table


def test_neighbours_are_the_nearest_whole_words_of_the_teacher_embeddings(tmp_path):
    words = ["cat", "kitten", "dog", "car", "##s"]
    tokenizer = word_tokenizer(tmp_path / "tok", words)
    rows = {"cat": [1, 0, 0], "kitten": [0.9, 0.1, 0], "dog": [0.6, 0.8, 0], "car": [0, 0, 1], "##s": [1, 0, 0]}
    weight = np.zeros((len(tokenizer), 3))
    for word, row in rows.items():
        weight[tokenizer.convert_tokens_to_ids(word)] = row
    found = word_neighbours(_Embedded(weight), tokenizer, {"cat", "car", "horse"}, 2)
    assert found["cat"] == ["kitten", "dog"]  # by cosine; sub-word pieces and special tokens are never candidates
    assert found["car"][0] in ("dog", "kitten", "cat") and "horse" not in found  # not in the vocabulary: kept


def test_augmented_copies_replace_words_at_the_given_rate_and_keep_the_rest():
    neighbours = {"cat": ["kitten"], "dog": ["puppy"]}
    texts = ["The cat and the dog, 2 times."] * 400
    copies, facts = augment_texts(texts, neighbours, copies=1, probability=0.5, seed=0)
    assert all(text.endswith(", 2 times.") and text.startswith("The ") for text in copies)
    replaced = sum(text.count("kitten") + text.count("puppy") for text in copies)
    assert 0.45 < replaced / (2 * 400) < 0.55  # each replaceable word with probability 0.5
    assert len(copies) == facts["augmented"] and len(copies) < 400  # copies with nothing replaced are dropped
    again, _ = augment_texts(texts, neighbours, copies=1, probability=0.5, seed=0)
    assert again == copies  # seeded
    capital, _ = augment_texts(["Cat"], neighbours, copies=1, probability=1.0, seed=0)
    assert capital == ["Kitten"]
    pairs, _ = augment_texts([("a cat", "a dog")], neighbours, copies=2, probability=1.0, seed=0)
    assert pairs == [("a kitten", "a puppy")] * 2


def _recipe(tmp_path, teacher, transfer, objective=None):
    return {"name": "transfer", "seed": 0,
            "data": {"path": str(write_csv(tmp_path / "topics.csv", topic_rows(120, 0))), "text": "sentence",
                     "label": "topic", "max_length": 16, "transfer": transfer},
            "teacher": {"model": {"kind": "hf", "name_or_path": str(teacher)}},
            "student": {"from_teacher": {"keep": 1}}, "baseline": True,
            "objective": objective or {"alpha": 0.5, "temperature": 2},
            "training": {"epochs": 1, "batch_size": 8}, "evaluation": {"latency_runs": 5, "latency_b1_runs": 20}}


def test_the_student_trains_on_gold_plus_teacher_labelled_texts_and_the_baseline_on_gold(tmp_path):
    teacher = tiny_bert_classifier(tmp_path / "pretrained")
    unlabelled = write_csv(tmp_path / "more.csv", [{"sentence": row["sentence"]} for row in topic_rows(40, 5)])
    recipe = _recipe(tmp_path, teacher, {"path": str(unlabelled), "augment_copies": 2, "replace_probability": 0.5})
    distill.train(recipe, output=tmp_path / "run", show_progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    facts = metrics["data"]["transfer"]
    gold = metrics["data"]["train_used"]
    assert facts["unlabelled"] == 40 and 0 < facts["augmented"] <= 2 * gold
    assert facts["transfer_texts"] == 40 + facts["augmented"] and 0.3 < facts["replaced_word_share"] < 0.7
    assert metrics["stages"]["baseline"]["steps"] == gold // 8
    assert metrics["stages"]["student"]["steps"] == (gold + facts["transfer_texts"]) // 8


def test_a_transfer_set_needs_a_term_that_reads_the_teacher(tmp_path):
    teacher = tiny_bert_classifier(tmp_path / "pretrained")
    recipe = _recipe(tmp_path, teacher, {"augment_copies": 1}, objective={"terms": [{"loss": "cross_entropy"}]})
    with pytest.raises(distill.DistillError, match="no objective term reads the teacher"):
        distill.train(recipe, output=tmp_path / "run", show_progress=False)
    recipe = _recipe(tmp_path, teacher, {"augment_copies": 1})
    recipe["teacher"]["cache"] = str(tmp_path / "cache")
    with pytest.raises(distill.DistillError, match="teacher.cache"):
        distill.train(recipe, output=tmp_path / "run", show_progress=False)
    recipe = _recipe(tmp_path, teacher, {})
    with pytest.raises(distill.DistillError, match="augment_copies > 0"):
        distill.train(recipe, output=tmp_path / "run", show_progress=False)
