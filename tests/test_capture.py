"""Signals by name through hooks, adapters, and the failures that must come before training."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

from distill.capture import SignalCapture
from distill.config import ObjectiveConfig, TermConfig, TrainingConfig
from distill.data import ArrayDataset
from distill.errors import DistillError
from distill.models import export_model
from distill.nets import CNN
from distill.objective import Objective
from distill.trainer import fit


def sequences(num_samples=64, length=20, seed=0):
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, 3, num_samples)
    inputs = generator.normal(size=(num_samples, 1, length)) + labels[:, None, None]
    return ArrayDataset(inputs.astype(np.float32), labels.astype(np.int64))


def cnn(channels, seed=0):
    torch.manual_seed(seed)
    return CNN((1, 20), channels, 3)


def objective(*terms):
    return Objective(ObjectiveConfig(terms=[TermConfig(**term) for term in terms]))


def test_module_outputs_inputs_and_logits_equal_a_manual_forward():
    model = cnn([8, 16]).eval()
    batch = {"inputs": torch.randn(4, 1, 20)}
    capture = SignalCapture(model, {"features.2", "features.4:input", "logits"})
    signals = capture.forward(model, batch)
    after_first_block = model.features[:3](batch["inputs"])
    torch.testing.assert_close(signals["features.2"], after_first_block)
    torch.testing.assert_close(signals["features.4:input"], model.features[:4](batch["inputs"]))
    torch.testing.assert_close(signals["logits"], model(batch["inputs"]))
    capture.remove()
    assert not model.features[2]._forward_hooks


def test_unknown_module_path_lists_closest_names_before_training(tmp_path):
    with pytest.raises(DistillError, match=r"student has no module 'feature.2'.*features\.2"):
        fit(cnn([8, 16]), sequences(), objective=objective({"loss": "hint", "student": "feature.2",
                                                              "teacher": "features.2"}),
            training=TrainingConfig(max_steps=2, batch_size=8), stage="student", run_dir=tmp_path, seed=0,
            teacher=cnn([8, 16], seed=1), show_progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_adapter_is_built_trained_checkpointed_and_not_exported(tmp_path):
    student, teacher = cnn([8, 16]), cnn([16, 32], seed=1)
    kd = objective({"name": "hint", "loss": "hint", "student": "features.2", "teacher": "features.2"},
                   {"name": "hard", "loss": "cross_entropy"})
    fit(student, sequences(), objective=kd, training=TrainingConfig(max_steps=4, batch_size=8), stage="student",
        run_dir=tmp_path, seed=0, teacher=teacher, show_progress=False)
    adapter = kd.adapters["hint"]
    assert isinstance(adapter, torch.nn.Conv1d) and (adapter.in_channels, adapter.out_channels) == (8, 16)
    checkpoint = load_file(str(tmp_path / "checkpoints" / "student" / "step-00000004" / "model.safetensors"))
    torch.testing.assert_close(checkpoint["objective.adapters.hint.weight"], adapter.weight.detach())
    assert any(key.startswith("student.") for key in checkpoint)
    torch.manual_seed(0)
    fresh = torch.nn.Conv1d(8, 16, 1)
    assert not torch.allclose(fresh.weight, adapter.weight)  # it trained (or at least differs from a fresh init)
    exported = load_file(str(export_model(student, None, tmp_path / "export") / "model.safetensors"))
    assert not any("adapter" in key for key in exported)


def test_shapes_no_adapter_can_reconcile_name_the_term_and_both_shapes(tmp_path):
    kd = objective({"name": "mismatch", "loss": "hint", "student": "head:input", "teacher": "features.2"})
    with pytest.raises(DistillError, match=r"'mismatch'.*\(2, 16\).*\(2, 8, 20\)"):
        fit(cnn([8, 16]), sequences(), objective=kd, training=TrainingConfig(max_steps=2, batch_size=8),
            stage="student", run_dir=tmp_path, seed=0, teacher=cnn([8, 16], seed=1), show_progress=False)


def tiny_bert(layers=2, hidden=32, seed=0, attn="eager"):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, num_labels=3, attn_implementation=attn)
    return BertForSequenceClassification(config)


def test_hf_hidden_states_attentions_and_mean_pooling():
    model = tiny_bert().eval()
    batch = {"input_ids": torch.randint(0, 50, (2, 7)), "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3])}
    capture = SignalCapture(model, {"hidden_states[1]", "attentions[-1]", "logits", "bert.encoder.layer.0"})
    signals = capture.forward(model, batch)
    reference = model(**batch, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(signals["hidden_states[1]"], reference.hidden_states[1])
    torch.testing.assert_close(signals["bert.encoder.layer.0"], reference.hidden_states[1])
    torch.testing.assert_close(signals["attentions[-1]"], reference.attentions[-1])
    assert signals["attentions[-1]"].shape == (2, 4, 7, 7)
    base = model.bert
    pooled = SignalCapture(base, {"mean_pooled"}).forward(base, batch)["mean_pooled"]
    last = base(**batch).last_hidden_state
    torch.testing.assert_close(pooled[1], last[1, :4].mean(0))


def test_attention_term_on_a_model_without_attentions_fails_before_training(tmp_path):
    kd = objective({"name": "att", "loss": "attention_map", "student": "attentions[-1]", "teacher": "attentions[-1]"})
    with pytest.raises(DistillError, match="student does not return 'attentions'.*eager"):
        fit(tiny_bert(attn="sdpa"), Tokens(16), objective=kd, training=TrainingConfig(max_steps=2, batch_size=8),
            stage="student", run_dir=tmp_path, seed=0, teacher=tiny_bert(seed=1), show_progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_module_path_of_the_teacher_asked_of_the_student_names_the_student(tmp_path):
    kd = objective({"name": "hint", "loss": "hint", "student": "features.10", "teacher": "features.10"})
    with pytest.raises(DistillError, match="the student has no module 'features.10'"):
        fit(cnn([8, 16]), sequences(), objective=kd, training=TrainingConfig(max_steps=2, batch_size=8),
            stage="student", run_dir=tmp_path, seed=0, teacher=cnn([8, 16, 32], seed=1), show_progress=False)


def test_hidden_state_terms_get_a_linear_adapter_between_widths(tmp_path):
    from distill.data.arrays import ArrayDataset as _  # noqa: F401  (data module import kept light)

    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, index):
            generator = torch.Generator().manual_seed(index)
            return {"input_ids": torch.randint(0, 50, (6,), generator=generator),
                    "attention_mask": torch.ones(6, dtype=torch.long), "labels": torch.tensor(index % 3)}

    student, teacher = tiny_bert(hidden=16), tiny_bert(layers=4, hidden=32, seed=1)
    kd = objective({"name": "cos", "loss": "cosine", "student": "hidden_states[2]", "teacher": "hidden_states[4]"},
                   {"name": "soft", "loss": "soft_kl", "temperature": 2.0})
    fit(student, Tokens(), objective=kd, training=TrainingConfig(max_steps=3, batch_size=8), stage="student",
        run_dir=tmp_path, seed=0, teacher=teacher, show_progress=False)
    assert isinstance(kd.adapters["cos"], torch.nn.Linear) and kd.adapters["cos"].weight.shape == (32, 16)


class Tokens(torch.utils.data.Dataset):
    """Token sequences whose label is the first token's parity: learnable by a tiny BERT."""

    def __init__(self, size, offset=0):
        self.size, self.offset = size, offset

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index + self.offset)
        input_ids = torch.randint(0, 50, (6,), generator=generator)
        return {"input_ids": input_ids, "attention_mask": torch.ones(6, dtype=torch.long),
                "labels": input_ids[0] % 3}


def test_student_derived_from_teacher_layers_trains_and_exports_an_hf_folder(tmp_path):
    from transformers import AutoModelForSequenceClassification

    import distill
    from distill.run import RunData

    teacher = tiny_bert(layers=4, seed=1)
    recipe = {"name": "derived", "data": {"dataset": "digits"}, "teacher": {},
              "student": {"from_teacher": {"layers": [0, 3]}},
              "objective": {"terms": [{"name": "soft", "loss": "soft_kl", "temperature": 2.0},
                                      {"name": "cos", "loss": "cosine", "student": "hidden_states[2]",
                                       "teacher": "hidden_states[4]"}]},
              "training": {"max_steps": 4, "batch_size": 8}, "evaluation": {"latency_runs": 5, "latency_batch_size": 4}}
    data = RunData(train=Tokens(32), val=None, test=Tokens(16, offset=1000), input_shape=None, num_classes=3)
    result = distill.train(recipe, output=tmp_path / "run", teacher=teacher, data=data, show_progress=False)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "student")
    assert reloaded.config.num_hidden_layers == 2
    batch = {"input_ids": torch.randint(0, 50, (2, 6))}
    torch.testing.assert_close(reloaded.eval()(**batch).logits, result.student.eval()(**batch).logits)
    assert result.metrics["student"]["params"] < result.metrics["teacher"]["params"]


def test_from_teacher_out_of_range_fails_before_training(tmp_path):
    import distill
    from distill.run import RunData

    recipe = {"name": "bad", "data": {"dataset": "digits"}, "teacher": {},
              "student": {"from_teacher": {"layers": [0, 7]}},
              "objective": {"alpha": 0.5}, "training": {"max_steps": 2, "batch_size": 8}}
    data = RunData(train=Tokens(32), val=None, test=Tokens(8, offset=1000), input_shape=None, num_classes=3)
    with pytest.raises(DistillError, match="7"):
        distill.train(recipe, output=tmp_path / "run", teacher=tiny_bert(layers=4), data=data, show_progress=False)
    with pytest.raises(DistillError, match="Hugging Face"):
        array_data = RunData(train=sequences(), val=None, test=sequences(16, seed=1), input_shape=(1, 20),
                             num_classes=3)
        distill.train(recipe, output=tmp_path / "run2", teacher=cnn([8]), data=array_data, show_progress=False)


def test_frozen_student_modules_keep_their_weights_and_the_rest_trains(tmp_path):
    import distill
    from distill.run import RunData

    teacher = tiny_bert(layers=4, seed=1)
    recipe = {"name": "frozen", "data": {"dataset": "digits"}, "teacher": {},
              "student": {"from_teacher": {"layers": [0, 3]}, "freeze": ["bert.embeddings.word_embeddings"]},
              "objective": {"alpha": 0.5}, "training": {"max_steps": 3, "batch_size": 8, "lr": 0.01},
              "evaluation": {"latency_runs": 5, "latency_batch_size": 4}}
    data = RunData(train=Tokens(32), val=None, test=Tokens(8, offset=1000), input_shape=None, num_classes=3)
    result = distill.train(recipe, output=tmp_path / "run", teacher=teacher, data=data, show_progress=False)
    student_state, teacher_state = result.student.state_dict(), teacher.state_dict()
    torch.testing.assert_close(student_state["bert.embeddings.word_embeddings.weight"],
                               teacher_state["bert.embeddings.word_embeddings.weight"], rtol=0, atol=0)
    moved = (student_state["bert.embeddings.position_embeddings.weight"]
             - teacher_state["bert.embeddings.position_embeddings.weight"]).abs().max()
    assert moved > 1e-4  # only the named module is frozen


def test_freeze_of_an_unknown_module_names_the_field_and_close_names(tmp_path):
    import distill
    from distill.run import RunData

    recipe = {"name": "bad", "data": {"dataset": "digits"}, "teacher": {},
              "student": {"from_teacher": {"layers": [0, 3]}, "freeze": ["bert.embedding.word_embeddings"]},
              "objective": {"alpha": 0.5}, "training": {"max_steps": 2, "batch_size": 8}}
    data = RunData(train=Tokens(32), val=None, test=Tokens(8, offset=1000), input_shape=None, num_classes=3)
    with pytest.raises(DistillError, match=r"student\.freeze.*bert\.embeddings\.word_embeddings"):
        distill.train(recipe, output=tmp_path / "run", teacher=tiny_bert(layers=4), data=data, show_progress=False)
    assert not (tmp_path / "run" / "student").exists()


def test_token_state_hints_skip_padding_and_attention_map_hints_are_compared_whole():
    kd = objective({"name": "hint", "loss": "hint", "student": "h", "teacher": "h"},
                   {"name": "att", "loss": "hint", "student": "a", "teacher": "a"})
    mask = torch.tensor([[1, 1, 0]])
    student = {"h": torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]]), "a": torch.ones(1, 2, 3, 3)}
    teacher = {"h": torch.tensor([[[1.0, 0.0], [0.0, 4.0], [0.0, 0.0]]]), "a": torch.zeros(1, 2, 3, 3)}
    _, values = kd(student, teacher, None, attention_mask=mask)
    assert values["hint"].item() == pytest.approx((4 + 9) / 4)  # the padded position's 9s never count
    assert values["att"].item() == pytest.approx(1.0)  # a [B, H, T, T] map: every element, no [B, T] mask
