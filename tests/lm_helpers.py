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


def assert_ddp_step_matches_one_process(script_name, tmp_path):
    """Runs tests/<script_name> under `accelerate launch` with 2 processes at batch 4 and as one process at batch 8;
    the tiny student (tiny_llama(512, hidden=16, seed=0)) must have moved and end with the same weights."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    tokenizer()  # build the cached tokenizer once, before two processes race for it
    root = Path(__file__).resolve().parents[1]
    script = root / "tests" / script_name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "tests")}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", "2"]
    subprocess.run([*launch, str(script), str(tmp_path / "ddp"), "4"], env=env, check=True, capture_output=True,
                   timeout=300)
    subprocess.run([sys.executable, str(script), str(tmp_path / "single"), "8"], env=env, check=True,
                   capture_output=True, timeout=300)
    ddp, single = (load_file(str(tmp_path / name / "final.safetensors")) for name in ("ddp", "single"))
    initial = tiny_llama(512, hidden=16, seed=0).state_dict()
    assert max(float((single[key] - initial[key]).abs().max()) for key in single) > 1e-3
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6)
