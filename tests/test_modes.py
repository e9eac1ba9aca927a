"""Training regimes (distill.modes): each on tiny data, with numbers, and every bad input the issue lists."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distill
import distill.trainer as trainer
from distill.capture import SignalCapture
from distill.config import ObjectiveConfig, load_recipe
from distill.data import ArrayDataset
from distill.errors import DistillError
from distill.losses.logits import cross_entropy
from distill.losses.peers import peer_kl
from distill.models import export_model, load_saved
from distill.modes.assistant_chain import check_shrinks
from distill.modes.common import ProbabilityEnsemble
from distill.modes.counterfactual import Interchange, source_of
from distill.modes.data_free import statistics_loss, synthesise
from distill.modes.mutual import PeerGroup, peer_objective
from distill.modes.transfer_set import UNLABELLED, labelled_split
from distill.nets import MLP
from distill.objective import Objective
from distill.run import RunData
from helpers import blobs

FEATURES, CLASSES = 12, 4


def tiny_data(num_samples=384):
    """Train and test drawn from the same blobs (one set of class centres)."""
    every = blobs(num_samples=num_samples, num_features=FEATURES, num_classes=CLASSES, seed=3)
    inputs, labels = every.inputs.numpy(), every.labels.numpy()
    cut = num_samples * 3 // 4
    return RunData(ArrayDataset(inputs[:cut], labels[:cut]), None, ArrayDataset(inputs[cut:], labels[cut:]),
                   (FEATURES,), CLASSES)


def recipe(**sections):
    base = {"name": "mode-test", "data": {"dataset": "digits"}, "student": {"model": {"kind": "mlp", "hidden": [8]}},
            "objective": {"temperature": 2, "alpha": 0.5},
            "training": {"max_steps": 6, "batch_size": 32, "log_every": 2},
            "evaluation": {"latency_runs": 5, "latency_batch_size": 16},
            "teacher": {"model": {"kind": "mlp", "hidden": [32]}, "train": {"max_steps": 6, "batch_size": 32}}}
    base.update(sections)
    return base


def train(tmp_path, name="run", **sections):
    return distill.train(recipe(**sections), output=tmp_path / name, data=tiny_data(), show_progress=False)


@pytest.fixture
def recorded_stages(monkeypatch):
    """Every stage a regime trains: its name, the model it returned and the teacher it was trained against."""
    calls = []
    original = trainer.fit

    def record(model, *args, stage, teacher=None, **kwargs):
        result = original(model, *args, stage=stage, teacher=teacher, **kwargs)
        calls.append({"name": stage, "teacher": teacher, "model": result.model})
        return result

    monkeypatch.setattr(trainer, "fit", record)  # every training stage calls the trainer through its module
    return calls


# ------------------------------------------------------------------------------------------ multi-teacher
def test_ensemble_is_the_weighted_mean_of_softened_probabilities():
    torch.manual_seed(0)
    first, second = nn.Linear(3, 5), nn.Linear(3, 5)
    inputs = torch.randn(7, 3)
    ensemble = ProbabilityEnsemble({"a": first, "b": second}, temperature=3.0, weights=[3.0, 1.0])
    expected = 0.75 * F.softmax(first(inputs) / 3, -1) + 0.25 * F.softmax(second(inputs) / 3, -1)
    assert torch.allclose(F.softmax(ensemble(inputs) / 3, -1), expected, atol=1e-6)


def test_confidence_weights_follow_entropy_per_sample():
    sure = torch.tensor([[8.0, 0.0, 0.0], [0.0, 0.0, 0.0]])       # confident on sample 0, uniform on sample 1
    unsure = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 9.0]])     # the reverse
    ensemble = ProbabilityEnsemble({"a": nn.Identity(), "b": nn.Identity()}, combine="confidence")
    weights = ensemble.member_weights(torch.stack([sure, unsure]))

    def entropy(logits):
        probabilities = F.softmax(logits, -1)
        return -(probabilities * probabilities.log()).sum(-1)

    by_hand = torch.softmax(-torch.stack([entropy(sure), entropy(unsure)]), dim=0)
    assert torch.allclose(weights, by_hand, atol=1e-6)
    assert weights[0, 0] > 0.7 and weights[1, 1] > 0.7  # the surer teacher of each sample weighs more


def test_each_teacher_is_its_own_signal():
    torch.manual_seed(0)
    wide, deep = MLP(FEATURES, [16], CLASSES), MLP(FEATURES, [8, 8], CLASSES)
    ensemble = ProbabilityEnsemble({"wide": wide, "deep": deep}, temperature=2.0)
    inputs = torch.randn(5, FEATURES)
    signals = SignalCapture(ensemble, {"logits", "wide", "deep.net.2"}).forward(ensemble, {"inputs": inputs})
    assert torch.equal(signals["wide"], wide(inputs))
    assert torch.equal(signals["deep.net.2"], torch.relu(deep.net[1](inputs)))
    assert torch.allclose(signals["logits"], ensemble(inputs))


def test_multi_teacher_run_with_per_teacher_terms(tmp_path, recorded_stages):
    mode = {"kind": "multi_teacher", "combine": "confidence", "teachers": [
        {"name": "wide", "model": {"kind": "mlp", "hidden": [32]}, "train": {"max_steps": 6, "batch_size": 32}},
        {"name": "deep", "model": {"kind": "mlp", "hidden": [16, 16]}, "train": {"max_steps": 6, "batch_size": 32}}]}
    objective = {"temperature": 2, "terms": [
        {"name": "soft", "loss": "soft_kl"},                                   # the combination
        {"name": "deep_only", "loss": "soft_kl", "teacher": "deep", "weight": 0.5},  # one teacher's own term
        {"name": "hard", "loss": "cross_entropy"}]}
    result = train(tmp_path, teacher={}, mode=mode, objective=objective, baseline=True)
    metrics = result.metrics
    assert {"teacher", "teacher-wide", "teacher-deep", "baseline", "student"} <= set(metrics)
    assert [call["name"] for call in recorded_stages] == ["teacher-wide", "teacher-deep", "baseline", "student"]
    student_call = recorded_stages[-1]
    assert isinstance(student_call["teacher"], ProbabilityEnsemble)
    assert student_call["teacher"].wide is recorded_stages[0]["model"]
    lines = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    last = [line for line in lines if line["stage"] == "student"][-1]
    assert last["loss"] == pytest.approx(last["loss/soft"] + 0.5 * last["loss/deep_only"] + last["loss/hard"],
                                         rel=1e-4)
    assert load_saved(result.run_dir / "teacher-deep").net[1].out_features == 16


def test_teachers_with_different_label_sets_fail_before_training(tmp_path):
    export_model(MLP(FEATURES, [8], 3), None, tmp_path / "three-class", input_shape=(FEATURES,), num_classes=3)
    (tmp_path / "three-class" / "config.json").write_text(json.dumps(
        {"input_shape": [FEATURES], "num_classes": 3, "distill_model": {"kind": "mlp", "hidden": [8]}}))
    mode = {"kind": "multi_teacher", "teachers": [
        {"name": "good", "model": {"kind": "mlp", "hidden": [16]}, "train": {"max_steps": 6, "batch_size": 32}},
        {"name": "other", "model": {"kind": "saved", "path": str(tmp_path / "three-class")}}]}
    with pytest.raises(DistillError, match="teacher 'other' predicts 3 classes but the data has 4"):
        train(tmp_path, teacher={}, mode=mode)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_multi_teacher_config_errors():
    one = {"name": "only", "model": {"kind": "mlp"}}
    with pytest.raises(DistillError, match="at least two teachers"):
        load_recipe(recipe(mode={"kind": "multi_teacher", "teachers": [one]}))
    with pytest.raises(DistillError, match="one non-negative weight per teacher"):
        load_recipe(recipe(mode={"kind": "multi_teacher", "teachers": [one, {**one, "name": "two"}], "weights": [1]}))
    with pytest.raises(DistillError, match="unknown key 'mode.teachrs'; did you mean 'teachers'"):
        load_recipe(recipe(mode={"kind": "multi_teacher", "teachrs": [one]}))


# ------------------------------------------------------------------------------------------ mutual learning
def test_peer_kl_matches_a_hand_computation():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]],
                           [[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]],
                           [[1.0, 1.0, 1.0], [0.0, 3.0, 0.0]]])  # 3 peers, batch 2, 3 classes

    def kl(target, own, temperature):
        p, q = F.softmax(target / temperature, -1), F.softmax(own / temperature, -1)
        return (p * (p.log() - q.log())).sum(-1).mean()

    expected = (kl(logits[0], logits[1], 2.0) + kl(logits[2], logits[1], 2.0)) / 2 * 4.0
    assert peer_kl(logits, peer=1, temperature=2.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_peer_kl_trains_only_its_own_peer():
    logits = torch.randn(3, 4, 5, requires_grad=True)
    peer_kl(logits, peer=0).backward()
    assert logits.grad[0].abs().sum() > 0 and logits.grad[1:].abs().sum() == 0


def test_mutual_objective_equals_the_sum_of_each_peers_terms():
    torch.manual_seed(0)
    peers = [MLP(FEATURES, [8], CLASSES), MLP(FEATURES, [4], CLASSES)]
    group = PeerGroup(peers)
    objective = Objective(peer_objective(ObjectiveConfig(temperature=3, alpha=0.25), peers=2))
    assert [term.name for term in objective.terms] == ["soft/0", "hard/0", "soft/1", "hard/1"]
    batch = {"inputs": torch.randn(6, FEATURES), "labels": torch.tensor([0, 1, 2, 3, 0, 1])}
    capture = SignalCapture(group, objective.signals("student") | {"logits"})
    signals = capture.forward(group, batch)
    total, terms = objective(signals, None, batch["labels"])
    first, second = peers[0](batch["inputs"]), peers[1](batch["inputs"])

    def kl(target, own):
        p, q = F.softmax(target / 3, -1), F.softmax(own / 3, -1)
        return (p * (p.log() - q.log())).sum(-1).mean() * 9

    by_hand = (0.25 * kl(second, first) + 0.75 * F.cross_entropy(first, batch["labels"])
               + 0.25 * kl(first, second) + 0.75 * F.cross_entropy(second, batch["labels"]))
    assert total.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert torch.allclose(signals["logits"], (first + second) / 2, atol=1e-6)


def test_mutual_run_trains_peers_together_and_alone(tmp_path, recorded_stages):
    mode = {"kind": "mutual", "peers": [{"kind": "mlp", "hidden": [16]}, {"kind": "mlp", "hidden": [8]}]}
    result = train(tmp_path, teacher={}, mode=mode, baseline=True)
    assert [call["name"] for call in recorded_stages] == ["alone-0", "alone-1", "peers"]
    assert all(call["teacher"] is None for call in recorded_stages)  # nobody is frozen: the peers teach each other
    group = recorded_stages[-1]["model"]
    for index in range(2):
        reloaded = load_saved(result.run_dir / f"peer-{index}")
        inputs = torch.randn(4, FEATURES)
        assert torch.equal(reloaded(inputs), group.peers[index](inputs))
    alone_0, peer_0 = recorded_stages[0]["model"], group.peers[0]
    assert not torch.equal(alone_0.net[1].weight, peer_0.net[1].weight)
    assert {"peer-0", "peer-1", "ensemble", "alone-0", "alone-1", "student"} <= set(result.metrics)
    assert result.metrics["student"]["errors"] == result.metrics["peer-1"]["errors"]
    lines = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    assert {"loss/soft/0", "loss/hard/1"} <= set([line for line in lines if line["stage"] == "peers"][-1])


def test_zero_or_one_peer_is_refused():
    for peers in ([], [{"kind": "mlp"}]):
        with pytest.raises(DistillError, match=f"at least two peers in mode.peers, got {len(peers)}"):
            load_recipe(recipe(mode={"kind": "mutual", "peers": peers}))
    with pytest.raises(DistillError, match="at least two peers"):
        PeerGroup([nn.Linear(2, 2)])


def test_mutual_refuses_feature_terms():
    objective = ObjectiveConfig(terms=[{"loss": "hint", "student": "net.1", "teacher": "net.1"}])
    with pytest.raises(DistillError, match="not supported"):
        peer_objective(objective, 2)


# ------------------------------------------------------------------------------------------ born-again
def test_born_again_each_generation_learns_from_the_previous(tmp_path, recorded_stages):
    result = train(tmp_path, teacher={"train": {"max_steps": 6, "batch_size": 32}},
                   mode={"kind": "born_again", "generations": 3})
    names = [call["name"] for call in recorded_stages]
    assert names == ["generation-0", "generation-1", "generation-2", "generation-3"]
    for previous, current in zip(recorded_stages, recorded_stages[1:]):
        assert current["teacher"] is previous["model"]
        exported = load_saved(result.run_dir / previous["name"])
        inputs = torch.randn(3, FEATURES)
        assert torch.equal(exported(inputs), current["teacher"](inputs))
    assert recorded_stages[0]["teacher"] is None
    # generation 0 defaults to the student's architecture
    assert result.metrics["generation-0"]["params"] == result.metrics["generation-3"]["params"]
    assert result.metrics["teachers_of"] == {"generation-1": "generation-0", "generation-2": "generation-1",
                                             "generation-3": "generation-2"}
    ensemble = result.metrics["ensemble"]
    assert ensemble["params"] == 3 * result.metrics["student"]["params"]  # generations 1..3
    student = load_saved(result.run_dir / "student")
    assert torch.equal(student(torch.ones(1, FEATURES)), recorded_stages[-1]["model"](torch.ones(1, FEATURES)))


def test_born_again_resume_reuses_finished_generations(tmp_path):
    sections = {"teacher": {}, "mode": {"kind": "born_again", "generations": 1, "ensemble": False}}
    first = train(tmp_path, **sections)
    again = distill.train(recipe(**sections), output=tmp_path / "run", data=tiny_data(), resume=True,
                          show_progress=False)
    assert again.metrics["generation-1"]["errors"] == first.metrics["generation-1"]["errors"]
    assert again.metrics["stages"]["generation-1"] == first.metrics["stages"]["generation-1"]


# ------------------------------------------------------------------------------------------ assistant chains
def test_chain_stage_sizes_and_teachers(tmp_path, recorded_stages):
    result = train(tmp_path, mode={"kind": "assistant_chain", "assistants": [{"kind": "mlp", "hidden": [24]},
                                                                              {"kind": "mlp", "hidden": [16]}]})
    assert [call["name"] for call in recorded_stages] == ["teacher", "assistant-1", "assistant-2", "student"]
    for previous, current in zip(recorded_stages[:-1], recorded_stages[1:]):
        if current["name"] != "teacher":
            assert current["teacher"] is previous["model"]
    sizes = [count for _, count in result.metrics["chain"]]
    layer = lambda width: FEATURES * width + width + width * CLASSES + CLASSES  # noqa: E731
    assert sizes == [layer(32), layer(24), layer(16), layer(8)]


def test_a_chain_that_does_not_shrink_fails_before_training(tmp_path):
    with pytest.raises(DistillError, match=r"assistant-1 has 1,296 parameters, not fewer than teacher \(548\)"):
        train(tmp_path, mode={"kind": "assistant_chain", "assistants": [{"kind": "mlp", "hidden": [76]}]},
              teacher={"model": {"kind": "mlp", "hidden": [32]}, "train": {"max_steps": 6, "batch_size": 32}})
    assert not (tmp_path / "run").exists()
    with pytest.raises(DistillError, match="student has 20 parameters, not fewer than assistant-1 \\(20\\)"):
        check_shrinks([("teacher", 50), ("assistant-1", 20), ("student", 20)])


# ------------------------------------------------------------------------------------------ transfer sets
def test_cross_entropy_ignores_unlabelled_examples_and_survives_a_batch_without_labels():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, UNLABELLED, 1])
    by_hand = (-F.log_softmax(logits[0], -1)[0] - F.log_softmax(logits[2], -1)[1]) / 2
    assert cross_entropy(logits, labels).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert cross_entropy(logits, torch.full((3,), UNLABELLED)).item() == 0.0


def test_labelled_split_is_stratified_and_deterministic():
    labels = np.repeat(np.arange(4), 50)
    chosen = labelled_split(labels, 0.1, seed=0)
    assert len(chosen) == 20 and np.bincount(labels[chosen]).tolist() == [5, 5, 5, 5]
    assert np.array_equal(chosen, labelled_split(labels, 0.1, seed=0))


def test_transfer_set_student_sees_only_a_fraction_of_the_labels(tmp_path, monkeypatch):
    seen = {}
    original = trainer.fit

    def record(model, train_dataset, *, stage, **kwargs):
        seen[stage] = train_dataset.labels.clone()
        return original(model, train_dataset, stage=stage, **kwargs)

    monkeypatch.setattr(trainer, "fit", record)
    result = train(tmp_path, mode={"kind": "transfer_set", "labelled_fraction": 0.25}, baseline=True)
    train_size = len(tiny_data().train)
    assert result.metrics["labelled"] == train_size // 4
    student_labels = seen["student"]
    assert len(student_labels) == train_size and int((student_labels != UNLABELLED).sum()) == train_size // 4
    assert len(seen["baseline"]) == train_size // 4 and len(seen["teacher"]) == train_size
    kept = student_labels != UNLABELLED
    assert torch.equal(student_labels[kept], tiny_data().train.labels[kept])
    stages = result.metrics["stages"]
    assert stages["baseline"]["steps"] == stages["student"]["steps"] == 6
    distill.train(recipe(mode={"kind": "transfer_set", "labelled_fraction": 0.25, "teacher_labels": "labelled"}),
                  output=tmp_path / "scarce-teacher", data=tiny_data(), show_progress=False)
    assert len(seen["teacher"]) == train_size // 4  # nobody has more labels, the teacher neither


def test_transfer_set_takes_a_pool_of_inputs_nobody_labelled(tmp_path, monkeypatch):
    import json as json_module

    seen = {}
    original = trainer.fit

    def record(model, train_dataset, *, stage, **kwargs):
        seen[stage] = (train_dataset.inputs.clone(), train_dataset.labels.clone())
        return original(model, train_dataset, stage=stage, **kwargs)

    monkeypatch.setattr(trainer, "fit", record)
    pool = blobs(num_samples=40, num_features=FEATURES, num_classes=CLASSES, seed=9).inputs.numpy()
    file = tmp_path / "pool.jsonl"
    file.write_text("".join(json_module.dumps({"x": row.tolist()}) + "\n" for row in pool))
    mode = {"kind": "transfer_set", "labelled_fraction": 1.0,
            "unlabelled": {"path": str(file), "features": "x", "max_samples": 30}}
    result = train(tmp_path, mode=mode)
    train_size = len(tiny_data().train)
    inputs, labels = seen["student"]
    assert result.metrics["unlabelled_pool"] == 30 and result.metrics["labelled"] == train_size
    assert len(labels) == train_size + 30 and torch.equal(labels[train_size:], torch.full((30,), UNLABELLED))
    assert torch.equal(labels[:train_size], tiny_data().train.labels)   # every training label kept
    assert torch.allclose(inputs[train_size:], torch.as_tensor(pool[:30]))
    # a pool of inputs unlike the run's: refused before the teacher trains, naming the field and both shapes
    with pytest.raises(DistillError, match=r"mode.unlabelled.dataset 'digits': inputs of shape \(1, 8, 8\).*\(12,\)"):
        train(tmp_path, name="wrong", mode={**mode, "unlabelled": {"dataset": "digits"}})
    assert not (tmp_path / "wrong" / "teacher").exists()
    with pytest.raises(DistillError, match="path needs features"):
        load_recipe(recipe(mode={**mode, "unlabelled": {"path": str(file)}}))


# ------------------------------------------------------------------------------------------ counterfactual
class TwoBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.left, self.right, self.head = nn.Linear(4, 3), nn.Linear(4, 2), nn.Linear(5, 3)

    def forward(self, inputs):
        return self.head(torch.cat([torch.tanh(self.left(inputs)), torch.tanh(self.right(inputs))], -1))


def test_interchange_swaps_the_representation_of_the_second_input():
    torch.manual_seed(0)
    model = TwoBranch()
    inputs = torch.randn(5, 4)
    keys = set(model.state_dict())
    intervention = Interchange(model, "left", "student")
    source = source_of(inputs)
    assert torch.equal(source[0], inputs[-1]) and torch.equal(source[1], inputs[0])
    by_hand = model.head(torch.cat([torch.tanh(model.left(source)), torch.tanh(model.right(inputs))], -1))
    capture = SignalCapture(model, {"logits", "counterfactual", "left"})
    signals = capture.forward(model, {"inputs": inputs})
    assert torch.allclose(signals["counterfactual"], by_hand, atol=1e-6)
    plain = model.head(torch.cat([torch.tanh(model.left(inputs)), torch.tanh(model.right(inputs))], -1))
    assert torch.allclose(signals["logits"], plain, atol=1e-6)       # the ordinary pass is untouched
    assert torch.allclose(signals["left"], model.left(inputs))       # and other signals belong to it
    assert not torch.allclose(by_hand, plain)
    capture.remove()
    intervention.remove()
    assert set(model.state_dict()) == keys and not hasattr(model, "counterfactual")
    assert not model._forward_pre_hooks and not model.left._forward_hooks


def test_counterfactual_run_logs_the_interchange_term(tmp_path):
    mode = {"kind": "counterfactual", "student": "net.2", "teacher": "net.2", "adapter": True}
    result = train(tmp_path, mode=mode)
    lines = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    last = [line for line in lines if line["stage"] == "student"][-1]
    assert {"loss/interchange", "loss/aligned", "loss/soft", "loss/hard"} <= set(last)
    assert 0 <= result.metrics["interchange_agreement"] <= 1
    reloaded = load_saved(result.run_dir / "student")       # the intervention left no trace in the export
    assert set(reloaded.state_dict()) == set(result.student.state_dict())


def test_intervention_locations_of_different_shapes_need_an_adapter(tmp_path):
    mode = {"kind": "counterfactual", "student": "net.2", "teacher": "net.2"}
    with pytest.raises(DistillError, match=r"differ in shape, student 'net.2' \(8,\) vs teacher 'net.2' \(32,\)"):
        train(tmp_path, mode=mode)
    with pytest.raises(DistillError, match="the student has no module 'net.9'"):
        train(tmp_path, name="other", mode={**mode, "student": "net.9"})


# ------------------------------------------------------------------------------------------ data-free
def test_statistics_loss_by_hand():
    layer = nn.BatchNorm1d(2)
    layer.running_mean.copy_(torch.tensor([1.0, 0.0]))
    layer.running_var.copy_(torch.tensor([1.0, 4.0]))
    inputs = torch.tensor([[[0.0, 2.0], [1.0, 1.0]], [[2.0, 0.0], [1.0, 1.0]]])  # [batch 2, channels 2, length 2]
    # channel means (1, 1), biased variances (1, 0)
    expected = np.hypot(0.0, 1.0) + np.hypot(0.0, 4.0)
    assert statistics_loss(inputs, layer).item() == pytest.approx(expected)


def test_deep_inversion_steers_the_teacher_and_its_batch_statistics():
    from distill.config import DataFreeMode
    from distill.modes.data_free import batch_norm_layers
    from distill.nets import CNN

    torch.manual_seed(0)
    teacher = CNN((1, 16), [8, 16], 3)
    # running statistics of a "training set" unlike the noise synthesis starts from
    real = 1.5 + 0.5 * torch.randn(256, 1, 16) + torch.sin(torch.arange(16.0))
    for layer in batch_norm_layers(teacher):
        layer.momentum = None  # a plain average over the batches seen
        layer.reset_running_stats()
    with torch.no_grad():
        teacher.train()(real)
    teacher.eval()

    def statistics_gap(inputs):
        gaps = []
        hooks = [layer.register_forward_hook(lambda module, args, output: gaps.append(statistics_loss(args[0], module)))
                 for layer in batch_norm_layers(teacher)]
        with torch.no_grad():
            teacher(inputs)
        for hook in hooks:
            hook.remove()
        return float(sum(gaps))

    noise = torch.randn(12, 1, 16, generator=torch.Generator().manual_seed(0))
    inputs, labels = synthesise(teacher, input_shape=(1, 16), num_classes=3, seed=0,
                                mode=DataFreeMode(samples=12, batch_size=12, steps=30, lr=0.1))
    assert inputs.shape == (12, 1, 16) and labels.shape == (12,)
    assert statistics_gap(inputs) < 0.2 * statistics_gap(noise)
    assert statistics_gap(inputs) < 2 * statistics_gap(real[:12])  # about as close as real data
    # the class term alone makes inputs the teacher puts in the asked class
    inputs, labels = synthesise(teacher, input_shape=(1, 16), num_classes=3, seed=0,
                                mode=DataFreeMode(samples=12, batch_size=12, steps=40, lr=0.1, bn_weight=0))
    assert torch.equal(labels, torch.arange(12) % 3)


def test_jitter_rolls_every_spatial_axis_by_at_most_its_size_and_changes_the_synthesis():
    from distill.config import DataFreeMode
    from distill.modes.data_free import _jittered
    from distill.nets import CNN

    images = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    assert _jittered(images, 0, torch.Generator()) is images
    generator = torch.Generator().manual_seed(0)
    offsets = set()
    for _ in range(40):
        rolled = _jittered(images, 2, generator)
        matches = [(rows, cols) for rows in range(-2, 3) for cols in range(-2, 3)
                   if torch.equal(rolled, torch.roll(images, shifts=(rows, cols), dims=(2, 3)))]
        assert len(matches) == 1  # channels and batch untouched, one roll per spatial axis within [-2, 2]
        offsets.add(matches[0])
    assert len(offsets) > 10
    torch.manual_seed(0)
    teacher = CNN((1, 16), [8], 3)
    settings = dict(samples=6, batch_size=6, steps=5, lr=0.1)
    plain, _ = synthesise(teacher, input_shape=(1, 16), num_classes=3, seed=0, mode=DataFreeMode(**settings))
    jittered, _ = synthesise(teacher, input_shape=(1, 16), num_classes=3, seed=0,
                             mode=DataFreeMode(**settings, jitter=2))
    again, _ = synthesise(teacher, input_shape=(1, 16), num_classes=3, seed=0, mode=DataFreeMode(**settings, jitter=2))
    assert not torch.equal(plain, jittered) and torch.equal(jittered, again)


def test_data_free_with_a_teacher_without_batch_norm_is_refused(tmp_path):
    with pytest.raises(DistillError, match="no batch-norm layers"):
        train(tmp_path, mode={"kind": "data_free"})
    assert not (tmp_path / "run" / "teacher").exists()


# ------------------------------------------------------------------------------------------ Python modules
def test_a_teacher_module_from_python_is_used_as_is(tmp_path, recorded_stages):
    torch.manual_seed(0)
    teacher = MLP(FEATURES, [24], CLASSES)
    expected = teacher(torch.ones(2, FEATURES))
    result = distill.train(recipe(teacher={}, mode={"kind": "assistant_chain", "assistants": [
        {"kind": "mlp", "hidden": [12]}]}), output=tmp_path / "run", data=tiny_data(), teacher=teacher,
        show_progress=False)
    assert [call["name"] for call in recorded_stages] == ["assistant-1", "student"]  # nothing retrains it
    assert recorded_stages[0]["teacher"] is teacher
    assert torch.equal(teacher(torch.ones(2, FEATURES)), expected)
    assert result.metrics["chain"][0] == ["teacher", FEATURES * 24 + 24 + 24 * CLASSES + CLASSES]
    with pytest.raises(DistillError, match="a teacher module cannot be passed"):
        distill.train(recipe(teacher={}, mode={"kind": "mutual", "peers": [{"kind": "mlp"}, {"kind": "mlp"}]}),
                      output=tmp_path / "other", data=tiny_data(), teacher=teacher, show_progress=False)


# ------------------------------------------------------------------------------------------ self-distillation
def test_peer_kl_with_a_target_uses_only_that_peer():
    logits = torch.randn(3, 4, 5, requires_grad=True)
    p, q = F.softmax(logits[2].detach(), -1), F.softmax(logits[0], -1)
    by_hand = (p * (p.log() - q.log())).sum(-1).mean()
    value = peer_kl(logits, peer=0, target=-1)
    assert value.item() == pytest.approx(by_hand.item(), rel=1e-5)
    value.backward()
    assert logits.grad[0].abs().sum() > 0 and logits.grad[1:].abs().sum() == 0


def test_self_distillation_exits_learn_from_the_final_output(tmp_path):
    from distill.modes.self_distillation import ExitView, WithExits

    torch.manual_seed(0)
    model = MLP(FEATURES, [16, 8], CLASSES)
    wrapped = WithExits(model, ["net.2", "net.4"], torch.randn(2, FEATURES), CLASSES)
    inputs = torch.randn(5, FEATURES)
    first_hidden = torch.relu(model.net[1](inputs))
    assert torch.allclose(ExitView(wrapped, 0)(inputs), wrapped.heads[0](first_hidden), atol=1e-6)
    assert torch.equal(wrapped(inputs), model(inputs))
    wrapped.remove()

    result = train(tmp_path, teacher={}, student={"model": {"kind": "mlp", "hidden": [16, 8]}}, baseline=True,
                   objective={"temperature": 2, "terms": [{"name": "hard", "loss": "cross_entropy"},
                                                          {"name": "soft", "loss": "soft_kl", "weight": 0.5}]},
                   mode={"kind": "self_distillation", "exits": ["net.2", "net.4"]})
    assert {"exit-0", "exit-1", "baseline", "student"} <= set(result.metrics)
    lines = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    last = [line for line in lines if line["stage"] == "self-distillation"][-1]
    parts = ["hard/final", "hard/exit0", "hard/exit1"]
    assert last["loss"] == pytest.approx(sum(last[f"loss/{name}"] for name in parts)
                                         + 0.5 * (last["loss/soft/exit0"] + last["loss/soft/exit1"]), rel=1e-4)
    student = load_saved(result.run_dir / "student")  # the model alone, exits left out
    assert set(student.state_dict()) == set(MLP(FEATURES, [16, 8], CLASSES).state_dict())
    with pytest.raises(DistillError, match="no module 'net.9' for an exit"):
        train(tmp_path, name="bad", teacher={}, mode={"kind": "self_distillation", "exits": ["net.9"]})


def test_adversarial_data_free_works_without_batch_norm_and_resumes(tmp_path):
    from distill.modes.adversarial import disagreement

    mode = {"kind": "data_free", "method": "adversarial", "iterations": 40, "student_steps": 2, "batch_size": 32}
    sections = {"mode": mode, "training": {"lr": 0.01, "log_every": 10, "checkpoint_every": 20}}
    first = train(tmp_path, **sections)
    lines = [json.loads(line) for line in (first.run_dir / "log.jsonl").read_text().splitlines()]
    gaps = [line["loss/disagreement"] for line in lines if line["stage"] == "student"]
    assert len(gaps) == 4 and gaps[-1] < gaps[0]
    # the student moved towards the teacher on real inputs it never saw
    test_inputs = tiny_data().test.inputs
    untrained = MLP(FEATURES, [8], CLASSES)
    with torch.no_grad():
        assert (disagreement(first.student(test_inputs), first.teacher(test_inputs))
                < disagreement(untrained(test_inputs), first.teacher(test_inputs)))
    # a kill after the checkpoint at step 20: resuming from it gives the same student as the uninterrupted run
    import shutil

    interrupted = tmp_path / "interrupted"
    shutil.copytree(first.run_dir, interrupted)
    shutil.rmtree(interrupted / "checkpoints" / "student" / "step-00000040")
    (interrupted / "student" / "stage_done.json").unlink()
    again = distill.train(recipe(**sections), output=interrupted, data=tiny_data(), resume=True, show_progress=False)
    assert again.metrics["stages"]["student"]["resumed_from_step"] == 20
    assert torch.equal(again.student(test_inputs), first.student(test_inputs))


def test_every_regime_has_a_builtin_recipe_that_validates():
    from distill.config import builtin_recipe_names
    from distill.modes import MODES

    kinds = {}
    for name in builtin_recipe_names():
        config = load_recipe(name)
        if config.mode is not None:
            kinds[config.mode.kind] = name
    assert set(kinds) == set(MODES)
