"""A small byte-level BPE tokenizer trained on King James training text, for tests and tiny recipes.

``builtin:kjv-bpe-N`` (as ``data.tokenizer``) names it: vocabulary of N entries (256 <= N), trained with the
``tokenizers`` library on the training books only (the held-out books are never seen), with a ChatML chat
template (``<|im_start|>role\\n...<|im_end|>\\n``, as SmolLM2's) so chat data can be tested offline. Byte-level, so
every text tokenises without unknown tokens. Trained once (about a second) and cached as a Hugging Face
tokenizer folder in ``$DISTILL_CACHE``, written atomically.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from distill.errors import DistillError

PREFIX = "builtin:"
_NAME = re.compile(r"^kjv-bpe-(\d+)$")
_FORMAT = 1
# Enough text for stable merges at the sizes tests use, small enough to train in about a second on 2 cores.
_TRAINING_CHARACTERS = 1_500_000
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def is_builtin_tokenizer(source: str) -> bool:
    return source.startswith(PREFIX)


def builtin_tokenizer_path(source: str, cache_dir: str | Path | None = None) -> str:
    """The folder of a built-in tokenizer (trained and cached on first use)."""
    name = source.removeprefix(PREFIX)
    match = _NAME.match(name)
    if match is None:
        raise DistillError(f"unknown built-in tokenizer {source!r}; the built-in one is 'builtin:kjv-bpe-N' "
                           "(a byte-level BPE of N entries trained on King James text, e.g. builtin:kjv-bpe-512)")
    vocab_size = int(match.group(1))
    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise DistillError(f"tokenizer {source!r}: a byte-level BPE needs at least {256 + len(SPECIAL_TOKENS) + 1} "
                           "entries (256 bytes, the special tokens and one merge)")
    from distill.data.builtin import resolve_cache_dir

    folder = resolve_cache_dir(cache_dir) / f"tokenizer-kjv-bpe-{vocab_size}-v{_FORMAT}"
    if not (folder / "tokenizer.json").is_file():
        _train(vocab_size, folder)
    return str(folder)


def _train(vocab_size: int, folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from distill.data.text import kjv_lm_text

    text = kjv_lm_text("train")[:_TRAINING_CHARACTERS]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = text.split("\n")
    tokenizer.train_from_iterator((lines[start:start + 1000] for start in range(0, len(lines), 1000)), trainer)
    wrapped: Any = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                           bos_token="<|endoftext|>", pad_token="<|pad|>", unk_token=None)
    wrapped.chat_template = CHAT_TEMPLATE
    # Write next to the destination, then rename: a concurrent or killed build never leaves half a folder.
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + "."))
    try:
        wrapped.save_pretrained(str(temporary))
        try:
            os.replace(temporary, folder)
        except OSError:
            if not (folder / "tokenizer.json").is_file():  # not a lost race with another process: a real failure
                raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(temporary)


def load_tokenizer(source: str) -> Any:
    """A tokenizer by name: ``builtin:kjv-bpe-N``, a folder, a hub id or a ``package:`` model."""
    from transformers import AutoTokenizer

    from distill.model_sources import resolve_hf_path

    path = builtin_tokenizer_path(source) if is_builtin_tokenizer(source) else resolve_hf_path(source)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise DistillError(f"cannot load tokenizer {source!r}: {error}".split("\n")[0]) from None
