"""Tiny labelled text, a WordPiece tokenizer and a BERT classifier built locally, for the text-classification
tests (no hub)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

TOPICS = {
    "animal": ["cat", "dog", "horse", "bird", "fish"],
    "food": ["bread", "apple", "cheese", "soup", "rice"],
    "tool": ["hammer", "saw", "drill", "wrench", "nail"],
}
FILLER = ["the", "a", "is", "on", "with", "my", "big", "old", "red", "near"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def topic_rows(count: int, seed: int) -> list[dict[str, str]]:
    """Sentences of filler words and two words of one topic; the label is the topic."""
    generator = np.random.default_rng(seed)
    names = sorted(TOPICS)
    rows = []
    for _ in range(count):
        topic = names[int(generator.integers(len(names)))]
        words = list(generator.choice(FILLER, size=int(generator.integers(1, 3))))
        for word in generator.choice(TOPICS[topic], size=3):
            words.insert(int(generator.integers(len(words) + 1)), str(word))
        rows.append({"sentence": " ".join(words), "topic": topic})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def word_tokenizer(folder: Path, words: list[str] | None = None) -> BertTokenizerFast:
    """A WordPiece tokenizer whose vocabulary is whole words (every word of the task unless ``words`` is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    words = words if words is not None else FILLER + [word for topic in TOPICS.values() for word in topic]
    # transformers 5 takes the vocabulary itself (a vocab_file argument is silently ignored: only specials remain)
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(SPECIAL + words)})
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_bert_classifier(folder: Path, *, layers: int = 4, num_labels: int = 3, seed: int = 0,
                         words: list[str] | None = None, positions: int = 64, initializer_range: float = 0.02) -> Path:
    """A randomly initialised 4-layer BERT classifier with its tokenizer, saved as a Hugging Face folder (a larger
    ``initializer_range`` makes blocks that change their inputs more, as a trained encoder's do)."""
    tokenizer = word_tokenizer(folder, words)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=positions, num_labels=num_labels,
        initializer_range=initializer_range))
    model.save_pretrained(folder)
    return folder
