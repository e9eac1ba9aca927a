"""Tiny causal LMs and the tiny local tokenizer for the LLM tests (built here, never downloaded)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distill.data.lm_tokenizer import load_tokenizer

TOKENIZER = "builtin:kjv-bpe-512"


def tokenizer():
    return load_tokenizer(TOKENIZER)


def tiny_llama(vocab_size=512, hidden=16, layers=2, seed=0, tie=True):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=128, tie_word_embeddings=tie)
    return LlamaForCausalLM(config)


def chats(count=8):
    """Conversations with assistant answers of different lengths (so micro-batches differ in supervised tokens)."""
    answers = ["Yea.", "In the beginning God created the heaven and the earth.", "Amen.",
               "And the earth was without form, and void; and darkness was upon the face of the deep.",
               "Let there be light.", "Behold, it was very good.", "Nay.", "The LORD is my shepherd; I shall not want."]
    return [[{"role": "user", "content": f"Question number {index}?"},
             {"role": "assistant", "content": answers[index % len(answers)]}] for index in range(count)]


def saved_tiny_llama(folder, seed=0):
    """A tiny Llama and the local tokenizer saved as one Hugging Face folder (a causal-LM teacher by path)."""
    tiny_llama(vocab_size=512, hidden=32, layers=2, seed=seed).save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder


class FixedAnswers:
    """An on-policy sampler whose answers depend on the prompt alone: what the student 'samples' whatever process
    it runs on and whatever its seed (for tests that need the same samples in two set-ups)."""

    def __init__(self):
        self.calls = []

    def sample(self, prompts, seed):
        from distill.on_policy import Sampled

        self.calls.append((len(prompts), seed))
        return [Sampled([30 + (sum(prompt) + offset) % 200 for offset in range(1 + len(prompt) % 5)], False)
                for prompt in prompts]
