"""Recipe errors surface before compute: option values against each loss's annotated signature when the recipe is
read, and every term's signals against the models as built, in the prepare stage, before the teacher trains."""

import inspect

import pytest
import torch

import distill
from distill.augment import batch_generator, random_shift
from distill.config import ObjectiveConfig, load_recipe
from distill.config.loss_catalog import CATALOG_FILE, entries, entry, render_catalog
from distill.errors import DistillError
from distill.losses.registry import LOSSES
from distill.objective import Objective
from distill.trainer import probe_objective


def _terms(term: str) -> list[str]:
    return ["objective.alpha=null", f"objective.terms=[{term}]"]


@pytest.mark.parametrize("term, message", [
    ("{loss: token_kd, student: final_hidden, teacher: final_hidden, options: {divergence: kl}}",
     "loss 'token_kd': option 'divergence' should be 'forward_kl', 'reverse_kl', 'jsd', 'skew_kl', "
     "'skew_reverse_kl' or 'tv' (got 'kl')"),
    ("{loss: token_kd, student: final_hidden, teacher: final_hidden, options: {top_k: 0}}",
     "option 'top_k' should be greater than 0 (got 0)"),
    ("{loss: token_kd, student: final_hidden, teacher: final_hidden, options: {chunk_size: -64}}",
     "option 'chunk_size' should be greater than 0 (got -64)"),
    ("{loss: token_kd, student: final_hidden, teacher: final_hidden, options: {beta: 1.5}}",
     "option 'beta' should be less than or equal to 1 (got 1.5)"),
    ("{loss: token_kd, student: final_hidden, teacher: final_hidden, options: {top_k: 2.5}}",
     "option 'top_k' should be a valid integer, got a number with a fractional part (got 2.5)"),
    ("{loss: hint, student: net.1, teacher: net.1, options: {kind: cubic}}",
     "option 'kind' should be 'mse', 'l1' or 'smooth_l1' (got 'cubic')"),
    ("{loss: dkd, options: {beta: -1}}", "option 'beta' should be greater than or equal to 0 (got -1)"),
    ("{loss: cross_entropy, options: {label_smoothing: 2}}", "option 'label_smoothing' should be less than or "
                                                             "equal to 1 (got 2)"),
    ("{loss: minilm_value_relation, student: a, teacher: b, options: {num_relation_heads: 0}}",
     "option 'num_relation_heads' should be greater than 0 (got 0)"),
    ("{loss: attention_map, student: a, teacher: b, options: {kind: cosine}}",
     "option 'kind' should be 'mse' or 'kl' (got 'cosine')"),
    # filled in by the run per batch, not by a recipe
    ("{loss: hint, student: net.1, teacher: net.1, options: {mask: [1, 0]}}", "loss 'hint' has no option 'mask'"),
    ("{loss: token_ce, student: final_hidden, options: {normalizer: 3}}", "loss 'token_ce' has no option 'normalizer'"),
])
def test_option_values_are_checked_when_the_recipe_is_read(term, message):
    with pytest.raises(DistillError) as caught:
        load_recipe("digits-quick", _terms(term))
    assert message in str(caught.value)
    assert "objective.terms.0" in str(caught.value)


def test_every_loss_accepts_its_own_defaults_and_declares_its_numeric_options():
    untyped = []
    for name, info in LOSSES.items():
        hints = inspect.signature(info.fn).parameters
        catalogued = entry(name)
        for option in info.settable:
            default = info.options[option]
            if default is not inspect.Parameter.empty:
                catalogued.check_option(option, default)
            if hints[option].annotation in ("float", "int", float, int):
                untyped.append(f"{name}.{option}")
    # a bare float/int declares no range: every numeric option says what it accepts (or is an index)
    assert sorted(untyped) == ["cross_entropy.ignore_index", "peer_kl.peer"]


def test_the_loss_catalog_is_generated_from_the_registry():
    assert CATALOG_FILE.read_text() == render_catalog(), (
        "src/distill/config/loss_catalog.json is out of date: run .venv/bin/python -m distill.config.loss_catalog")
    assert set(entries()) == set(LOSSES)


def test_distill_check_reads_a_recipe_without_importing_torch():
    import subprocess
    import sys

    script = ("import sys; from click.testing import CliRunner; from distill.cli import main; "
              "result = CliRunner().invoke(main, ['check', 'llm-tiny']); "
              "print(result.exit_code, 'torch' in sys.modules, 'transformers' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert shown.stdout.split() == ["0", "False", "False"]


def test_a_bad_module_path_fails_before_the_teacher_trains(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(DistillError) as caught:
        distill.train("digits-quick", output=run_dir, show_progress=False,
                      overrides=["baseline=false", *_terms("{name: feat, loss: hint, student: net.9, teacher: net.0}")])
    assert str(caught.value).startswith("objective term 'feat': the student has no module 'net.9'")
    assert "checked before any training" in str(caught.value)
    assert not (run_dir / "teacher").exists() and not (run_dir / "checkpoints").exists()


def test_a_signal_the_teacher_lacks_names_the_term_before_training(tmp_path):
    with pytest.raises(DistillError) as caught:
        distill.train("digits-quick", output=tmp_path / "run", show_progress=False,
                      overrides=["baseline=false", *_terms("{name: deep, loss: hint, student: net.1, "
                                                           "teacher: 'hidden_states[3]'}")])
    assert str(caught.value).startswith("objective term 'deep': the teacher does not return 'hidden_states'")
    assert not (tmp_path / "run" / "teacher").exists()


def test_a_regime_checks_its_objective_before_generation_zero_trains(tmp_path):
    with pytest.raises(DistillError) as caught:
        distill.train("digits-quick", output=tmp_path / "run", show_progress=False,
                      overrides=["baseline=false", "mode={kind: born_again, generations: 2}",
                                 *_terms("{loss: hint, student: net.7, teacher: net.0}")])
    assert "objective term 'hint': the student has no module 'net.7'" in str(caught.value)
    assert not (tmp_path / "run" / "generation-0").exists()


def test_top_k_beyond_the_vocabulary_fails_before_the_teacher_trains(tmp_path):
    with pytest.raises(DistillError) as caught:
        distill.train("llm-tiny", output=tmp_path / "run", show_progress=False,
                      overrides=["baseline=false", *_terms("{loss: token_kd, student: final_hidden, "
                                                           "teacher: final_hidden, options: {top_k: 4096}}")])
    assert "top_k=4096 must be between 1 and the vocabulary size 512" in str(caught.value)
    assert not (tmp_path / "run" / "teacher").exists()


def test_the_probe_leaves_no_hooks_and_draws_no_random_numbers():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.ReLU(), torch.nn.Linear(9, 3))
    objective = Objective(ObjectiveConfig(terms=[{"loss": "hint", "student": "1", "teacher": "1"}]))
    probe = {"inputs": torch.randn(2, 6), "labels": torch.tensor([0, 2])}
    state = torch.get_rng_state()
    probe_objective(student, objective, teacher, probe)
    assert torch.equal(torch.get_rng_state(), state)  # the 5 -> 9 adapter's initialisation was undone
    assert all(not module._forward_hooks for model in (student, teacher) for module in model.modules())
    assert student.training and len(objective.adapters) == 1  # the objective given is the one that learnt it


def test_augmentation_draws_from_its_own_generator_keyed_by_the_batch():
    inputs = torch.arange(8 * 1 * 4 * 4, dtype=torch.float32).reshape(8, 1, 4, 4)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = random_shift(inputs, 1, batch_generator(seed=3, process_index=0, micro_batch=17))
    assert torch.equal(torch.get_rng_state(), state)  # dropout's stream is not shifted by augmentation
    again = random_shift(inputs, 1, batch_generator(seed=3, process_index=0, micro_batch=17))
    assert torch.equal(first, again)
    others = [random_shift(inputs, 1, batch_generator(3, process, batch)) for process, batch in ((1, 17), (0, 18))]
    assert not any(torch.equal(first, other) for other in others)


def test_the_cli_silences_third_party_progress_bars():
    import subprocess
    import sys

    script = ("import os; from distill.cli import quiet_library_bars; quiet_library_bars(); "
              "from tqdm.auto import tqdm; from transformers.utils import logging; "
              "print(tqdm(range(3)).disable, logging.is_progress_bar_enabled())")
    env = {key: value for key, value in __import__("os").environ.items() if "PROGRESS" not in key
           and not key.startswith("TQDM")}
    shown = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert shown.stdout.split() == ["True", "False"]


def test_a_local_gguf_file_or_a_folder_holding_one_is_a_model_path(tmp_path, monkeypatch):
    from distill import model_sources

    seen = []
    monkeypatch.setattr(model_sources, "gguf_folder", lambda path: seen.append(path) or "converted")
    checkpoint = tmp_path / "models" / "tiny-Q8_0.gguf"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"GGUF")
    assert model_sources.resolve_hf_path(str(checkpoint)) == "converted"
    assert model_sources.resolve_hf_path(str(checkpoint.parent)) == "converted"
    assert seen == [checkpoint, checkpoint]
    (checkpoint.parent / "config.json").write_text("{}")  # a Hugging Face folder wins over a stray .gguf
    assert model_sources.resolve_hf_path(str(checkpoint.parent)) == str(checkpoint.parent)
    assert model_sources.resolve_hf_path("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"


def test_a_student_derived_from_the_teacher_is_probed_before_the_teacher_trains(tmp_path):
    with pytest.raises(DistillError) as caught:
        distill.train("llm-tiny", output=tmp_path / "run", show_progress=False,
                      overrides=["baseline=false", "student={from_teacher: {layers: [0, 3]}}",
                                 "objective.terms=[{loss: hint, student: model.layers.1, teacher: model.layers.9}]"])
    assert str(caught.value).startswith("objective term 'hint': the teacher has no module 'model.layers.9'")
    assert not (tmp_path / "run" / "teacher").exists()


def test_multi_teacher_checks_its_objective_against_the_combined_teachers_before_they_train(tmp_path):
    with pytest.raises(DistillError) as caught:
        distill.train("mnist1d-multi-teacher", output=tmp_path / "run", show_progress=False,
                      overrides=[*_terms("{loss: hint, student: features.0, teacher: cnn.features.9}")])
    assert "objective term 'hint': the teacher has no module" in str(caught.value)
    assert not list(tmp_path.glob("run/teacher-*"))
