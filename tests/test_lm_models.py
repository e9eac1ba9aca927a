"""Causal LMs: vocabulary checks before training, padded heads, memory check before loading, decoder students."""

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from distill.capture import FinalHidden, SignalCapture
from distill.causal_lm import check_fits_in_memory, shared_vocab_size
from distill.config import HFConfigSpec, HFSpec
from distill.derive import derive_student
from distill.errors import DistillError
from distill.losses.lm import token_kd
from distill.losses.tokens import dense_token_kd
from distill.models import build_model, load_hf_model
from lm_helpers import TOKENIZER, tiny_llama, tokenizer


def _word_tokenizer(words):
    vocab = {word: index for index, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=words[0]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=words[0])


def test_different_tokenizers_fail_early_pointing_to_sequence_level():
    teacher_tok, student_tok = _word_tokenizer(["<unk>", "a", "b", "c"]), _word_tokenizer(["<unk>", "a", "b"])
    with pytest.raises(DistillError, match="4 tokens and the student's 3.*sequence-level distillation"):
        shared_vocab_size(teacher_tok, student_tok, tiny_llama(4), tiny_llama(3))


def test_same_size_but_different_content_fails():
    teacher_tok = _word_tokenizer(["<unk>", "light", "dark", "void"])
    student_tok = _word_tokenizer(["<unk>", "light", "void", "dark"])  # same tokens, two ids swapped
    with pytest.raises(DistillError, match="both tokenizers have 4 tokens, but 2 of them differ.*'dark'"):
        shared_vocab_size(teacher_tok, student_tok, tiny_llama(4), tiny_llama(4))


def test_padded_heads_are_reconciled_on_the_shared_vocabulary():
    tok = _word_tokenizer(["<unk>", "a", "b", "c", "d", "e"])  # 6 real tokens
    teacher, student = tiny_llama(8, hidden=16), tiny_llama(10, hidden=8, seed=1)  # heads padded to 8 and 10
    assert shared_vocab_size(tok, tok, teacher, student) == 6
    assert shared_vocab_size(tok, tok, teacher, tiny_llama(8, seed=2)) is None  # same head size: nothing to slice
    with pytest.raises(DistillError, match="head has 5 rows but its tokenizer has 6"):
        shared_vocab_size(tok, tok, tiny_llama(5), student)
    # the loss then compares the first 6 logits of each head, exactly as a dense loss on sliced logits would
    torch.manual_seed(0)
    hidden_s, hidden_t = torch.randn(2, 5, 8, requires_grad=True), torch.randn(2, 5, 16)
    head_s, head_t = student.get_output_embeddings().weight, teacher.get_output_embeddings().weight
    labels = torch.randint(0, 6, (2, 5))
    chunked = token_kd(FinalHidden(hidden_s, head_s, None), FinalHidden(hidden_t, head_t, None), labels,
                       vocab_size=6, chunk_size=3)
    dense = dense_token_kd(hidden_s @ head_s[:6].T, hidden_t @ head_t[:6].T, labels)
    torch.testing.assert_close(chunked, dense)
    with pytest.raises(DistillError, match="vocabulary size 10 != teacher vocabulary size 8"):
        token_kd(FinalHidden(hidden_s, head_s, None), FinalHidden(hidden_t, head_t, None), labels)


def test_teacher_too_large_is_refused_from_its_config_before_loading(tmp_path):
    huge = LlamaConfig(vocab_size=32000, hidden_size=65536, intermediate_size=262144, num_hidden_layers=80,
                       num_attention_heads=64)
    folder = tmp_path / "huge"
    huge.save_pretrained(folder)  # a config and no weights: loading would fail, so the check must come first
    with pytest.raises(DistillError, match=r"has [\d,]+ parameters: [\d.]+ GiB of weights at float32, more than"):
        load_hf_model(HFSpec(name_or_path=str(folder), task="causal-lm"))
    with pytest.raises(DistillError, match="GiB of weights at bfloat16"):
        build_model(HFConfigSpec(config={"hidden_size": 65536, "intermediate_size": 262144, "num_hidden_layers": 80,
                                         "num_attention_heads": 64}, dtype="bfloat16"),
                    input_shape=None, num_classes=None, vocab_size=32000)
    small = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2)
    assert check_fits_in_memory(small, "float32", "small", available=10**9) > 0
    with pytest.raises(DistillError):
        check_fits_in_memory(small, "float32", "small", available=1000)


def test_decoder_student_from_teacher_keeps_chosen_llama_blocks():
    teacher = tiny_llama(64, hidden=16, layers=4)
    student = derive_student(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2
    torch.testing.assert_close(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)
    assert student.get_output_embeddings().weight.data_ptr() == student.get_input_embeddings().weight.data_ptr()
    # the student computes what the teacher computes with blocks 1 and 2 removed
    ids = torch.randint(0, 64, (1, 6))
    capture = SignalCapture(student, {"final_hidden"})
    final = capture.forward(student, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})["final_hidden"]
    torch.testing.assert_close(final.hidden @ final.weight.T, student(input_ids=ids).logits)


def test_builtin_tokenizer_is_cached_and_chat_capable():
    tok = tokenizer()
    assert len(tok) == 512 and tok.eos_token_id is not None and tok.pad_token_id is not None
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    with pytest.raises(DistillError, match="builtin:kjv-bpe-N"):
        from distill.data.lm_tokenizer import load_tokenizer

        load_tokenizer("builtin:gpt5")


def test_run_with_student_of_another_vocabulary_stops_before_any_training(tmp_path):
    import distill

    words = ["<unk>", "</s>", "light", "dark", "void", "form"]
    for name, order, seed in (("teacher", words, 0), ("student", words[:2] + words[3:] + words[2:3], 1)):
        tok = _word_tokenizer(order)
        tok.eos_token = "</s>"
        tok.save_pretrained(tmp_path / name)
        tiny_llama(len(order), seed=seed).save_pretrained(tmp_path / name)
    corpus = tmp_path / "text.jsonl"
    corpus.write_text("".join(json.dumps({"text": "light dark void form " * 8}) + "\n" for _ in range(20)))
    recipe = {"data": {"path": str(corpus), "max_length": 8, "lm": {"format": "text"}},
              "teacher": {"model": {"kind": "hf", "name_or_path": str(tmp_path / "teacher"), "task": "causal-lm"},
                          "train": {"max_steps": 2, "batch_size": 2}},
              "student": {"model": {"kind": "hf", "name_or_path": str(tmp_path / "student"), "task": "causal-lm"}},
              "objective": {"terms": [{"loss": "token_kd", "student": "final_hidden", "teacher": "final_hidden"}]}}
    with pytest.raises(DistillError, match="both tokenizers have 6 tokens, but 4 of them differ.*sequence-level"):
        distill.train(recipe, output=tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()  # not even the teacher was trained


@pytest.mark.parametrize("role, teacher_positions, student_positions", [("teacher", 8, 64), ("student", 64, 8)])
def test_blocks_longer_than_a_models_context_are_refused_before_training(tmp_path, role, teacher_positions,
                                                                            student_positions):
    import distill

    def llama(positions, layers):
        return {"kind": "hf-config", "architecture": "llama",
                "config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": layers,
                           "num_attention_heads": 2, "num_key_value_heads": 1,
                           "max_position_embeddings": positions, "tie_word_embeddings": True}}

    recipe = {"data": {"dataset": "kjv-text", "tokenizer": TOKENIZER, "max_length": 16, "train_subset": 8},
              "teacher": {"model": llama(teacher_positions, 2), "train": {"max_steps": 2, "batch_size": 4}},
              "student": {"model": llama(student_positions, 1)},
              "objective": {"terms": [{"loss": "token_kd", "student": "final_hidden", "teacher": "final_hidden"}]},
              "training": {"max_steps": 2, "batch_size": 4}}
    with pytest.raises(DistillError, match=f"data.max_length is 16 tokens, and the {role} handles at most 8"):
        distill.train(recipe, output=tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run" / "teacher").exists()  # refused before the teacher trained
