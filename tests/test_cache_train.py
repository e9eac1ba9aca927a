"""Training from a teacher cache: the same student as with the live teacher, and every misuse refused early."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import distill
from distill.cache import CacheWriter, build_cache
from distill.cache.build import BuildSettings
from distill.cache.fingerprint import dataset_fingerprint, model_fingerprint
from distill.config import ObjectiveConfig, TrainingConfig, load_recipe
from distill.errors import DistillError
from distill.objective import Objective
from distill.trainer import fit
from helpers import blobs, flat_parameters, mlp
from test_cache import recipe

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"samples_per_shard": 512, "batch_size": 256, "show_progress": False}
SHORT = ["training.epochs=1", "evaluation.latency_runs=5"]


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("caches")
    return {dtype: (build_cache(recipe(), root / dtype, dtype=dtype, **QUICK), root / dtype)[1]
            for dtype in ("float32", "float16")}


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_student_from_a_float32_cache_equals_the_live_teacher_run(tmp_path, caches):
    live = distill.train(recipe(), output=tmp_path / "live", overrides=SHORT, show_progress=False)
    cached = distill.train(recipe(), output=tmp_path / "cached", show_progress=False,
                           overrides=[*SHORT, f"teacher.cache={caches['float32']}"])
    # float32 stores the teacher's logits unrounded, so every step sees the same numbers as the live run.
    assert torch.equal(flat_parameters(cached.student), flat_parameters(live.student))
    live_log, cached_log = _log(tmp_path / "live"), _log(tmp_path / "cached")
    assert [line.keys() for line in live_log] == [line.keys() for line in cached_log]
    validation = [line for line in cached_log if "eval/loss/soft" in line]
    assert validation and validation[-1]["eval/loss/soft"] == pytest.approx(
        [line for line in live_log if "eval/loss/soft" in line][-1]["eval/loss/soft"], rel=1e-4)
    # The teacher was checked (teacher.model is set) but not kept: nothing to evaluate it with.
    assert cached.teacher is None and "teacher" not in cached.metrics


def test_float16_cache_trains_within_rounding_of_the_live_teacher(tmp_path, caches):
    config = recipe()
    del config["teacher"]["model"]                    # the cache alone: no teacher is built or loaded
    cached = distill.train(config, output=tmp_path / "half", show_progress=False,
                           overrides=[*SHORT, f"teacher.cache={caches['float16']}"])
    live = distill.train(recipe(), output=tmp_path / "live", overrides=SHORT, show_progress=False)
    last = {name: [line for line in _log(tmp_path / name) if "loss" in line][-1] for name in ("half", "live")}
    assert last["half"]["loss/soft"] == pytest.approx(last["live"]["loss/soft"], rel=0.01)
    assert cached.metrics["student"]["accuracy"] == pytest.approx(live.metrics["student"]["accuracy"], abs=0.02)


def test_ddp_ranks_read_their_own_samples_from_the_cache(tmp_path):
    teacher, dataset = mlp(hidden=32, seed=1).eval(), blobs()
    settings = BuildSettings(teacher_fingerprint=model_fingerprint(teacher), tokenizer_fingerprint=None,
                             dataset_fingerprints={"train": dataset_fingerprint(dataset)},
                             split_sizes={"train": len(dataset)}, signals=["logits"], value_dtype="float32",
                             samples_per_shard=100, batch_size=50)
    CacheWriter(tmp_path / "cache", signal_function=lambda batch: {"logits": teacher(batch["inputs"])},
                splits={"train": dataset}, settings=settings, device=torch.device("cpu"), show_progress=False).run()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", "2"]
    subprocess.run([*launch, str(ROOT / "tests" / "ddp_cache_fit.py"), str(tmp_path / "ddp"), "8",
                    str(tmp_path / "cache")], env=env, check=True, capture_output=True, timeout=300)
    # The reference: one process, the live teacher, the two ranks' batches side by side (as ddp_fit.py).
    config = TrainingConfig(optimizer="sgd", lr=0.2, momentum=0.9, schedule="cosine", batch_size=16, max_steps=20,
                            warmup_steps=3)
    initial = flat_parameters(mlp(seed=0))
    single = fit(mlp(seed=0), dataset, objective=Objective(ObjectiveConfig(alpha=0.7, temperature=3.0)),
                 training=config, stage="student", run_dir=tmp_path / "single", seed=5, teacher=teacher,
                 show_progress=False).model
    ddp = load_file(str(tmp_path / "ddp" / "final.safetensors"))
    assert (flat_parameters(single) - initial).abs().max() > 1e-2
    for key, value in single.state_dict().items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ refused
def _refused(config, overrides, tmp_path, match):
    with pytest.raises(DistillError, match=match):
        distill.train(config, output=tmp_path / "run", overrides=overrides, show_progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_cache_of_another_teacher_is_refused(tmp_path, caches):
    config = recipe()
    config["teacher"]["model"]["hidden"] = [48]
    _refused(config, [f"teacher.cache={caches['float16']}"], tmp_path, "built from another teacher")


def test_cache_of_other_samples_is_refused(tmp_path, caches):
    config = recipe()
    del config["teacher"]["model"]
    _refused(config, [f"teacher.cache={caches['float16']}", "data.train_subset=1000"], tmp_path,
             r"holds 1257 'train' samples, the training set has 1000")
    # the same number of samples, other ones: the split is drawn from the run seed
    _refused(config, [f"teacher.cache={caches['float16']}", "seed=1"], tmp_path,
             "built from other training set inputs: dataset fingerprint")


def test_augmentation_with_a_cache_needs_an_explicit_opt_in(caches):
    overrides = [f"teacher.cache={caches['float16']}", "training.augment.shift=1"]
    with pytest.raises(DistillError, match="un-augmented inputs.*cache_allow_augmentation"):
        load_recipe(recipe(), overrides)
    assert load_recipe(recipe(), [*overrides, "teacher.cache_allow_augmentation=true"]).teacher.cache_allow_augmentation


def test_cache_with_an_in_run_teacher_is_refused(caches):
    with pytest.raises(DistillError, match="teacher.train cannot be set"):
        load_recipe(recipe(train={"epochs": 1}), [f"teacher.cache={caches['float16']}"])


def test_signal_the_cache_lacks_is_refused(tmp_path, caches):
    config = recipe()
    config["objective"] = {"terms": [{"loss": "hint", "student": "net.1", "teacher": "net.1"}]}
    _refused(config, [f"teacher.cache={caches['float16']}"], tmp_path,
             r"teacher signal\(s\) \['net.1'\].*only \['logits'\]")


def test_corrupted_shard_is_named_before_training(tmp_path, caches):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in caches["float16"].iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    damaged = bytearray((copy / "train-00001.safetensors").read_bytes())
    damaged[-1] ^= 0x10
    (copy / "train-00001.safetensors").write_bytes(bytes(damaged))
    _refused(recipe(), [f"teacher.cache={copy}"], tmp_path, "train-00001.safetensors is corrupted")


def test_missing_cache_says_how_to_build_it(tmp_path):
    _refused(recipe(), [f"teacher.cache={tmp_path / 'nowhere'}"], tmp_path, "distill cache build")


def _two_teacher_recipe(terms, caches_by_name):
    config = recipe()
    del config["teacher"]["model"]
    config["teacher"]["cache"] = {name: str(path) for name, path in caches_by_name.items()}
    config["objective"] = {"temperature": 4, "terms": terms}
    return config


def test_several_caches_train_each_term_from_the_teacher_it_names(tmp_path, caches):
    other = tmp_path / "other"
    build_cache(recipe(model={"kind": "mlp", "hidden": [24]}), other, dtype="float32", **QUICK)
    hard = {"name": "hard", "loss": "cross_entropy", "weight": 0.1}
    # one term on teacher b = the single-cache run on b's cache: the term reads the cache it names
    routed = distill.train(_two_teacher_recipe([hard, {"name": "b", "loss": "soft_kl", "teacher": "b", "weight": 0.9}],
                                               {"a": caches["float32"], "b": other}),
                           output=tmp_path / "routed", overrides=SHORT, show_progress=False)
    single = recipe()
    del single["teacher"]["model"]
    single["objective"] = {"temperature": 4, "terms": [hard, {"name": "b", "loss": "soft_kl", "weight": 0.9}]}
    alone = distill.train(single, output=tmp_path / "alone", overrides=[*SHORT, f"teacher.cache={other}"],
                          show_progress=False)
    assert torch.equal(flat_parameters(routed.student), flat_parameters(alone.student))
    # both teachers at once differs from either alone
    both = distill.train(_two_teacher_recipe([hard, {"name": "a", "loss": "soft_kl", "teacher": "a", "weight": 0.45},
                                              {"name": "b", "loss": "soft_kl", "teacher": "b.logits", "weight": 0.45}],
                                             {"a": caches["float32"], "b": other}),
                         output=tmp_path / "both", overrides=SHORT, show_progress=False)
    assert not torch.equal(flat_parameters(both.student), flat_parameters(alone.student))
    log = _log(tmp_path / "both")
    assert any("loss/a" in line and "loss/b" in line for line in log)


def test_several_caches_refuse_a_term_without_a_teacher_name_and_a_teacher_model(tmp_path, caches):
    config = _two_teacher_recipe([{"loss": "soft_kl", "teacher": "logits"}], {"a": caches["float16"]})
    _refused(config, [], tmp_path, r"teacher signal 'logits'.*NAME or NAME.SIGNAL with NAME one of a")
    config = _two_teacher_recipe([{"loss": "soft_kl", "teacher": "a"}], {"a": caches["float16"]})
    config["teacher"]["model"] = {"kind": "mlp", "hidden": [32]}
    with pytest.raises(DistillError, match="teacher.model with several caches"):
        load_recipe(config)
    with pytest.raises(DistillError, match="must be non-empty and contain no '.'"):
        load_recipe(_two_teacher_recipe([{"loss": "soft_kl", "teacher": "a"}], {"a.b": caches["float16"]}))
