"""The teacher cache's storage layer and build: exact round trips, fingerprints, crash-safe resumable builds."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import distill.cache.build as build_module
from distill.cache import CacheWriter, TeacherCache, build_cache
from distill.cache.build import BuildSettings
from distill.cache.fingerprint import dataset_fingerprint, model_fingerprint
from distill.cache.format import METADATA_FILE, PROGRESS_FILE, narrowest_int_dtype
from distill.data import ArrayDataset
from distill.data.indexed import SAMPLE_ID, IndexedDataset
from distill.errors import DistillError

ROOT = Path(__file__).resolve().parents[1]


def recipe(**teacher):
    """digits, an untrained (seeded) MLP teacher: building its cache needs no training."""
    return {"name": "cache-test", "data": {"dataset": "digits"},
            "teacher": {"model": {"kind": "mlp", "hidden": [32]}, **teacher},
            "student": {"model": {"kind": "mlp", "hidden": [16]}},
            "objective": {"temperature": 4, "alpha": 0.7}, "training": {"epochs": 1, "batch_size": 32}}


BUILD = {"samples_per_shard": 256, "batch_size": 64, "show_progress": False}


def shard_bytes(directory):
    return {path.name: path.read_bytes() for path in sorted(Path(directory).glob("*.safetensors"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted build, to compare interrupted ones with."""
    output = tmp_path_factory.mktemp("cache") / "reference"
    return output, build_cache(recipe(), output, **BUILD)


# ------------------------------------------------------------------------------------------ format
def test_narrowest_integer_dtype_holds_the_vocabulary():
    assert narrowest_int_dtype(255) == torch.uint8
    assert narrowest_int_dtype(256) == torch.uint16
    assert narrowest_int_dtype(49_151) == torch.uint16     # SmolLM2's vocabulary: 2 bytes per token id
    assert narrowest_int_dtype(65_536) == torch.uint32
    assert narrowest_int_dtype(100, min_value=-1) == torch.int8
    assert narrowest_int_dtype(40_000, min_value=-1) == torch.int32


class Vectors(Dataset):
    def __init__(self, inputs):
        self.inputs = inputs

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return {"inputs": self.inputs[index]}


def _settings(dataset, dtype, names=("logits",), per_shard=7, batch=3):
    return BuildSettings(teacher_fingerprint="sha256:test", tokenizer_fingerprint=None,
                         dataset_fingerprints={"train": dataset_fingerprint(dataset)},
                         split_sizes={"train": len(dataset)}, signals=list(names), value_dtype=dtype,
                         samples_per_shard=per_shard, batch_size=batch)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_round_trip_returns_exactly_the_rounded_teacher_values(tmp_path, dtype):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(23, 5, generator=generator) * 3
    weights = torch.randn(5, 4, generator=generator)
    dataset = Vectors(inputs)
    writer = CacheWriter(tmp_path / dtype, signal_function=lambda batch: {"logits": batch["inputs"] @ weights},
                         splits={"train": dataset}, settings=_settings(dataset, dtype), device=torch.device("cpu"),
                         show_progress=False)
    metadata = writer.run()
    assert [shard["samples"] for shard in metadata["splits"]["train"]["shards"]] == [7, 7, 7, 2]
    order = torch.tensor([22, 0, 13, 7, 6, 21, 1])  # across shards, out of order
    stored = TeacherCache(tmp_path / dtype).split("train").read(order, ["logits"])["logits"]
    expected = (inputs @ weights)[order].to(getattr(torch, dtype))
    assert stored.dtype == getattr(torch, dtype)
    assert torch.equal(stored, expected)  # bit for bit: the only loss is the documented rounding
    if dtype != "float32":
        assert not torch.equal(stored.float(), (inputs @ weights)[order])  # and rounding did happen


class Tokens(Dataset):
    """Variable-length token sequences, padded per batch by their own collator."""

    def __init__(self, lengths):
        generator = torch.Generator().manual_seed(1)
        self.sequences = [torch.randint(0, 50, (length,), generator=generator) for length in lengths]

    def __len__(self):
        return len(self.sequences)

    def __getitem__(self, index):
        return {"input_ids": self.sequences[index]}

    def collate_fn(self, items):
        length = max(len(item["input_ids"]) for item in items)
        ids = torch.zeros(len(items), length, dtype=torch.long)
        mask = torch.zeros(len(items), length, dtype=torch.long)
        for row, item in enumerate(items):
            ids[row, : len(item["input_ids"])] = item["input_ids"]
            mask[row, : len(item["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask}


def test_per_token_signals_are_stored_ragged_without_padding(tmp_path):
    lengths = [3, 9, 1, 5, 5, 2, 8]
    dataset = Tokens(lengths)
    table = torch.randn(50, 6)
    writer = CacheWriter(tmp_path / "tokens", signal_function=lambda batch: {"hidden": table[batch["input_ids"]]},
                         splits={"train": dataset}, settings=_settings(dataset, "float16", ("hidden",), 3, 2),
                         device=torch.device("cpu"), show_progress=False)
    writer.run()
    cache = TeacherCache(tmp_path / "tokens")
    assert cache.signals["hidden"].ragged and cache.signals["hidden"].shape == (6,)
    rows = cache.split("train").read_ragged(torch.tensor([6, 1, 2]), "hidden")
    for row, index in zip(rows, [6, 1, 2]):
        assert torch.equal(row, table[dataset.sequences[index]].half())
    batch = dataset.collate_fn([dataset[6], dataset[1], dataset[2]])
    padded = cache.split("train").read_padded(torch.tensor([6, 1, 2]), "hidden", batch["attention_mask"])
    assert padded.shape == (3, 9, 6)
    real = batch["attention_mask"].bool()
    assert torch.equal(padded[real], table[batch["input_ids"]][real].half()) and not padded[~real].any()
    info = cache.describe()
    assert info["tokens"] == sum(lengths)
    assert info["bytes_per_token"] == pytest.approx(info["bytes"] / sum(lengths), abs=0.01)
    with pytest.raises(DistillError, match="per token"):
        cache.split("train").read(torch.tensor([0]), ["hidden"])


def test_float16_overflow_is_refused_naming_the_signal(tmp_path):
    dataset = Vectors(torch.full((4, 2), 1e5))
    writer = CacheWriter(tmp_path / "big", signal_function=lambda batch: {"features.3": batch["inputs"]},
                         splits={"train": dataset}, settings=_settings(dataset, "float16", ("features.3",)),
                         device=torch.device("cpu"), show_progress=False)
    with pytest.raises(DistillError, match=r"'features.3' reaches 1e\+05.*bfloat16"):
        writer.run()


def test_fingerprints_follow_weights_dtype_and_inputs_not_labels():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    first = model_fingerprint(model)
    assert first == model_fingerprint(model) and first.startswith("sha256:")
    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    assert model_fingerprint(twin) == first                    # another object, the same weights
    assert model_fingerprint(model.half()) != first             # same numbers, other dtype: another teacher
    model.float()
    with torch.no_grad():
        model.bias[0] += 1e-6
    assert model_fingerprint(model) != first
    inputs, labels = np.arange(24, dtype=np.float32).reshape(6, 4), np.arange(6)
    base = dataset_fingerprint(ArrayDataset(inputs, labels))
    assert dataset_fingerprint(ArrayDataset(inputs, labels[::-1].copy())) == base   # labels never reach the teacher
    assert dataset_fingerprint(ArrayDataset(inputs[::-1].copy(), labels)) != base   # order matters: ids change
    assert dataset_fingerprint(IndexedDataset(ArrayDataset(inputs, labels))) == base  # sample ids are not inputs


def test_indexed_dataset_keeps_the_inner_collator():
    dataset = IndexedDataset(Tokens([2, 4, 3]))
    batch = dataset.collate_fn([dataset[2], dataset[0]])
    assert batch[SAMPLE_ID].tolist() == [2, 0] and batch["input_ids"].shape == (2, 3)


# ------------------------------------------------------------------------------------------ build
def test_build_stores_the_recipe_teachers_outputs(reference):
    output, metadata = reference
    assert metadata["splits"]["train"]["samples"] == 1257 and metadata["splits"]["val"]["samples"] == 180
    assert list(metadata["signals"]) == ["logits"] and metadata["signals"]["logits"]["dtype"] == "float16"
    assert metadata["k"] is None and metadata["tokenizer_fingerprint"] is None
    from distill.cache.build import _teacher_for
    from distill.config import load_recipe
    from distill.run import load_data

    config = load_recipe(recipe())
    data = load_data(config)
    teacher = _teacher_for(config, data)
    assert metadata["teacher_fingerprint"] == model_fingerprint(teacher)
    assert metadata["dataset_fingerprints"]["train"] == dataset_fingerprint(data.train)
    ids = torch.arange(500, 564)   # one build batch: the same matrix products the build ran
    with torch.no_grad():
        expected = teacher(data.train.inputs[ids]).half()
    assert torch.equal(TeacherCache(output).split("train").read(ids, ["logits"])["logits"], expected)
    assert json.loads((output / METADATA_FILE).read_text())["splits"]["train"]["shards"][0]["sha256"] == \
        metadata["splits"]["train"]["shards"][0]["sha256"]
    assert not (output / PROGRESS_FILE).exists()


def test_build_refuses_a_teacher_trained_in_the_run(tmp_path):
    with pytest.raises(DistillError, match=r"teacher.train.*kind: saved, path: RUN/teacher"):
        build_cache(recipe(train={"epochs": 1}), tmp_path / "x", **BUILD)
    assert not (tmp_path / "x").exists()


def test_resume_after_sigkill_mid_shard_is_byte_identical(tmp_path, reference):
    output = tmp_path / "killed"
    script = (
        "import os, signal, sys\n"
        "import distill.cache.build as build\n"
        "from test_cache import recipe, BUILD\n"
        "real, calls = build.save_file, [0]\n"
        "def dying(tensors, path):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 3:  # the third shard: half written, then the process is killed\n"
        "        open(path, 'wb').write(b'half a shard')\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(tensors, path)\n"
        "build.save_file = dying\n"
        f"build.build_cache(recipe(), {str(output)!r}, **BUILD)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1"}
    process = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]
    assert sorted(path.name for path in output.iterdir()) == [
        PROGRESS_FILE, "train-00000.safetensors", "train-00001.safetensors", "train-00002.safetensors.partial"]

    metadata = build_cache(recipe(), output, **BUILD)
    assert metadata["build"]["shards_kept_from_earlier_run"] == 2
    reference_dir, reference_metadata = reference
    assert metadata["splits"] == reference_metadata["splits"]   # every checksum, size and count
    assert shard_bytes(output) == shard_bytes(reference_dir)
    assert not list(output.glob("*.partial"))


def test_damaged_completed_shard_is_redone_on_resume(tmp_path, reference, monkeypatch):
    output = tmp_path / "damaged"
    real, calls = build_module.save_file, [0]

    def stop_after_two(tensors, path):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        real(tensors, path)

    monkeypatch.setattr(build_module, "save_file", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_cache(recipe(), output, **BUILD)
    monkeypatch.setattr(build_module, "save_file", real)
    shard = output / "train-00000.safetensors"
    damaged = bytearray(shard.read_bytes())
    damaged[-3] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    metadata = build_cache(recipe(), output, **BUILD)
    assert metadata["build"]["shards_kept_from_earlier_run"] == 1   # shard 1 kept, shard 0 recomputed
    assert shard_bytes(output) == shard_bytes(reference[0])


def test_disk_full_keeps_completed_shards_and_says_so(tmp_path, reference, monkeypatch):
    output = tmp_path / "full"
    real, calls = build_module.save_file, [0]

    def disk_fills(tensors, path):
        calls[0] += 1
        if calls[0] == 4:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(tensors, path)

    monkeypatch.setattr(build_module, "save_file", disk_fills)
    with pytest.raises(DistillError) as caught:
        build_cache(recipe(), output, **BUILD)
    message = str(caught.value)
    assert "train-00003.safetensors" in message and "disk is full" in message and "3 completed shards" in message
    assert sorted(path.name for path in output.glob("*.safetensors*")) == [
        f"train-0000{number}.safetensors" for number in range(3)]
    monkeypatch.setattr(build_module, "save_file", real)
    build_cache(recipe(), output, **BUILD)
    assert shard_bytes(output) == shard_bytes(reference[0])


def test_unfinished_build_with_other_settings_is_refused(tmp_path, monkeypatch):
    output = tmp_path / "partial"
    real, calls = build_module.save_file, [0]

    def stop(tensors, path):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        real(tensors, path)

    monkeypatch.setattr(build_module, "save_file", stop)
    with pytest.raises(KeyboardInterrupt):
        build_cache(recipe(), output, **BUILD)
    monkeypatch.setattr(build_module, "save_file", real)
    with pytest.raises(DistillError, match="other settings.*value_dtype"):
        build_cache(recipe(), output, **{**BUILD, "dtype": "bfloat16"})
    with pytest.raises(DistillError, match="unfinished build"):
        TeacherCache(output)


def test_finished_cache_is_not_overwritten(reference):
    with pytest.raises(DistillError, match="already holds a finished teacher cache"):
        build_cache(recipe(), reference[0], **BUILD)


def test_corrupted_or_missing_shard_is_named(tmp_path, reference):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in reference[0].iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    damaged = bytearray((copy / "train-00002.safetensors").read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    (copy / "train-00002.safetensors").write_bytes(bytes(damaged))
    with pytest.raises(DistillError, match="shard train-00002.safetensors is corrupted"):
        TeacherCache(copy)
    (copy / "val-00000.safetensors").unlink()
    with pytest.raises(DistillError, match="shard val-00000.safetensors is missing"):
        TeacherCache(copy, splits=["val"])


def test_cache_info_prints_what_the_cache_holds(reference):
    from click.testing import CliRunner

    from distill.cli import main

    result = CliRunner().invoke(main, ["cache", "info", str(reference[0])])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "1257 train, 180 val" in text and "logits float16 [10]" in text
    assert reference[1]["teacher_fingerprint"] in text and reference[1]["dataset_fingerprints"]["train"] in text
    described = json.loads(CliRunner().invoke(main, ["cache", "info", str(reference[0]), "--json"]).output)
    shard_total = sum(path.stat().st_size for path in reference[0].glob("*-0*.safetensors"))
    assert described["bytes"] == shard_total
    assert described["bytes_per_sample"] == pytest.approx(shard_total / (1257 + 180), abs=0.01)
    # 10 float16 logits + a uint16 sample id per sample, plus each shard's small header
    assert 22 <= described["bytes_per_sample"] < 24


def test_cache_build_cli_reports_bad_input_without_traceback(tmp_path):
    from click.testing import CliRunner

    from distill.cli import main

    result = CliRunner().invoke(main, ["cache", "build", "digits-quick", "--output", str(tmp_path / "c")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "teacher.train" in result.output


def test_cached_per_token_signals_reach_the_objective_padded_and_unmaskable_losses_are_refused(tmp_path):
    from distill.cache.use import check_padding
    from distill.config import ObjectiveConfig
    from distill.objective import Objective
    from distill.teachers import CachedTeacher

    dataset = Tokens([4, 2, 6, 3])
    table = torch.randn(50, 6)
    CacheWriter(tmp_path / "tokens", signal_function=lambda batch: {"hidden": table[batch["input_ids"]]},
                splits={"train": dataset}, settings=_settings(dataset, "float32", ("hidden",), 2, 2),
                device=torch.device("cpu"), show_progress=False).run()
    cache = TeacherCache(tmp_path / "tokens")
    indexed = IndexedDataset(dataset)
    batch = indexed.collate_fn([indexed[3], indexed[0]])
    signals = CachedTeacher(cache, {"hidden"}).signals(batch)
    real = batch["attention_mask"].bool()
    assert signals["hidden"].dtype == torch.float32 and torch.equal(signals["hidden"][real],
                                                                     table[batch["input_ids"]][real])
    masked = Objective(ObjectiveConfig(terms=[{"loss": "cosine", "student": "hidden", "teacher": "hidden"}]))
    check_padding(masked, lambda signal: (cache, signal))  # cosine masks padding: allowed
    check_padding(Objective(ObjectiveConfig(terms=[{"loss": "hint", "student": "x", "teacher": "hidden"}])),
                  lambda signal: (cache, signal))  # so does hint
    unmasked = Objective(ObjectiveConfig(terms=[{"name": "rel", "loss": "similarity_preserving", "student": "x",
                                                 "teacher": "hidden"}]))
    with pytest.raises(DistillError, match="'rel': loss 'similarity_preserving' takes no mask"):
        check_padding(unmasked, lambda signal: (cache, signal))
