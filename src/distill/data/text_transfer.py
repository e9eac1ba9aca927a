"""The transfer set of a text student: the gold training texts plus texts only the teacher labels, unlabelled
in-domain texts from a file and word-level augmented copies of the training texts.

Augmentation follows TinyBERT (Jiao et al. 2020, section 3.1 "Data Augmentation"): each word of a copy is replaced,
with probability ``replace_probability``, by one of its ``neighbours`` nearest words. TinyBERT took the candidates
of a single-piece word from BERT's masked-LM head and those of other words from GloVe; the packaged MiniLM has no
masked-LM head, so the candidates come from the teacher's own input embeddings (cosine nearest neighbours among
the whole-word tokens of its vocabulary), which place words the teacher treats alike near each other. Words that
are not one token of the vocabulary, numbers and punctuation are kept as they are.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from distill.errors import DistillError

IGNORED_LABEL = -100  # the hard-label loss skips texts labelled so (cross_entropy's ignore_index)
_WORD = re.compile(r"[^\W\d_]+")


def _whole_words(tokenizer: Any) -> dict[str, int]:
    """Vocabulary entries that are whole alphabetic words (no sub-word pieces, no special tokens)."""
    special = set(tokenizer.all_special_tokens)
    return {token: index for token, index in tokenizer.get_vocab().items()
            if token not in special and len(token) > 1 and token.isalpha()}


def word_neighbours(model: nn.Module, tokenizer: Any, words: set[str], count: int) -> dict[str, list[str]]:
    """For each of ``words`` that is a whole-word token, its ``count`` nearest whole-word tokens by the cosine of
    the model's input embeddings (itself excluded)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None or not hasattr(embeddings, "weight"):
        raise DistillError("data.transfer.augment_copies: the teacher has no input embedding table "
                           "(get_input_embeddings()) to find word neighbours in")
    vocabulary = _whole_words(tokenizer)
    candidates = sorted(vocabulary)
    if len(candidates) < 2:
        return {}
    weight = embeddings.weight.detach().float()
    table = torch.nn.functional.normalize(weight[[vocabulary[word] for word in candidates]], dim=-1)
    position = {word: index for index, word in enumerate(candidates)}
    asked = sorted(word for word in words if word in position)
    found: dict[str, list[str]] = {}
    k = min(count, len(candidates) - 1)
    for start in range(0, len(asked), 512):  # a block of rows at a time: the full similarity matrix is large
        block = asked[start:start + 512]
        rows = torch.tensor([position[word] for word in block])
        similarity = table[rows] @ table.T
        similarity[torch.arange(len(block)), rows] = -2.0  # never itself
        nearest = similarity.topk(k, dim=-1).indices
        for word, indices in zip(block, nearest.tolist()):
            found[word] = [candidates[index] for index in indices]
    return found


def _words_of(texts: Sequence[Any]) -> set[str]:
    sides = [side for text in texts for side in (text if isinstance(text, tuple) else (text,))]
    return {word.lower() for side in sides for word in _WORD.findall(side)}


def _replace_words(text: str, neighbours: dict[str, list[str]], probability: float,
                   generator: np.random.Generator) -> tuple[str, int]:
    replaced = 0

    def swap(match: re.Match) -> str:
        nonlocal replaced
        word = match.group(0)
        options = neighbours.get(word.lower())
        if not options or generator.random() >= probability:
            return word
        replaced += 1
        choice = options[int(generator.integers(len(options)))]
        return choice.capitalize() if word[:1].isupper() else choice

    return _WORD.sub(swap, text), replaced


def augment_texts(texts: Sequence[Any], neighbours: dict[str, list[str]], *, copies: int, probability: float,
                  seed: int) -> tuple[list[Any], dict[str, Any]]:
    """``copies`` augmented versions of each text (both sides of a pair), in order, skipping copies in which no
    word changed. Returns them with counts of what was done."""
    generator = np.random.default_rng(seed)
    augmented, replaced, words = [], 0, 0
    for text in texts:
        sides = text if isinstance(text, tuple) else (text,)
        words += sum(len(_WORD.findall(side)) for side in sides) * copies
        for _ in range(copies):
            new_sides, changed = [], 0
            for side in sides:
                new_side, count = _replace_words(side, neighbours, probability, generator)
                new_sides.append(new_side)
                changed += count
            if changed:
                augmented.append(tuple(new_sides) if isinstance(text, tuple) else new_sides[0])
                replaced += changed
    return augmented, {"augmented": len(augmented), "replaced_word_share": round(replaced / max(words, 1), 4)}


def transfer_texts(config: Any, teacher: nn.Module | None, teacher_tokenizer: Any, train_texts: Sequence[Any],
                   seed: int) -> tuple[list[Any], dict[str, Any]]:
    """The texts ``data.transfer`` adds to the student's training set, and what they are (for metrics.json)."""
    from distill.data.labelled_text import read_text_source

    transfer = config.data.transfer
    added: list[Any] = []
    facts: dict[str, Any] = {}
    if transfer.path is not None:
        unlabelled = read_text_source(transfer, default_text=config.data.text, field="data.transfer",
                                      like=train_texts)
        added += unlabelled
        facts["unlabelled"] = len(unlabelled)
    if transfer.augment_copies:
        if teacher is None:
            raise DistillError("data.transfer.augment_copies finds replacement words in the teacher's embeddings, "
                               "and the run has no teacher model")
        neighbours = word_neighbours(teacher, teacher_tokenizer, _words_of(train_texts), transfer.neighbours)
        augmented, counts = augment_texts(train_texts, neighbours, copies=transfer.augment_copies,
                                          probability=transfer.replace_probability, seed=seed)
        added += augmented
        facts.update(counts)
    facts["transfer_texts"] = len(added)
    return added, facts
