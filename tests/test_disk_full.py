"""A full disk at any write: a patched writer raises ENOSPC at the k-th file write of a run, a cache build or an
export; the command stops with one paragraph naming the file (no traceback), and once the fault is lifted the same
command (``--resume`` for a run) ends with exactly what an uninterrupted one gives."""

import builtins
import contextlib
import errno
import io
import json
import os
import resource
import shutil
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import distill.cache.build
import distill.checkpoint
import distill.models
from distill.cli import main

QUICK = ["teacher.train.epochs=1", "training.epochs=1", "training.checkpoint_every=10", "baseline=false",
         "evaluation.latency_runs=5", "evaluation.latency_b1_runs=20"]
TIMING = ("latency", "throughput", "seconds", "speedup", "resumed_from_step")
CACHE_RECIPE = {"name": "cache-full", "data": {"dataset": "digits"},
                "teacher": {"model": {"kind": "mlp", "hidden": [32]}},  # untrained (seeded): no training to cache
                "student": {"model": {"kind": "mlp", "hidden": [16]}}, "objective": {"temperature": 4, "alpha": 0.7},
                "training": {"epochs": 1, "batch_size": 32}}
CACHE_BUILD = ["--samples-per-shard", "256", "--batch-size", "64", "--quiet"]


class Disk:
    """Every file write under ``root`` that distill makes (``open`` in a write mode, safetensors' ``save_file`` /
    ``save_model`` as distill imports them, ``torch.save``), in order; the ``fail_at``-th (1-based) raises
    ``OSError(ENOSPC)`` after writing a few bytes, as a disk that fills mid-write does."""

    def __init__(self, monkeypatch, root: Path, fail_at: int | None = None):
        self.root, self.fail_at, self.writes = Path(root).absolute(), fail_at, []
        real_open, real_torch_save = builtins.open, torch.save

        def faulty_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and any(flag in mode for flag in "wax+"):
                self.write(file, append="a" in mode)
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", faulty_open)
        monkeypatch.setattr(io, "open", faulty_open)  # what pathlib's write_text calls
        monkeypatch.setattr(torch, "save", lambda obj, file, *a, **k: (self.write(file), real_torch_save(obj, file,
                                                                                                        *a, **k)))
        for module in (distill.checkpoint, distill.models, distill.cache.build):
            for name in ("save_file", "save_model"):
                if hasattr(module, name):
                    real = getattr(module, name)
                    monkeypatch.setattr(module, name, self._wrapped(real))

    def _wrapped(self, real):
        def write(tensors, path, *args, **kwargs):
            self.write(path)
            return real(tensors, path, *args, **kwargs)
        return write

    def write(self, path, append: bool = False) -> None:
        path = Path(path).absolute()
        if self.root not in path.parents:
            return
        self.writes.append(path.relative_to(self.root).as_posix())
        if len(self.writes) == self.fail_at:
            if not append:  # a log line is written whole or not at all (see the report of issue 14)
                with io.FileIO(path, "w") as handle:
                    handle.write(b"half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _train(run_dir: Path, *extra: str):
    return CliRunner().invoke(main, ["train", "digits-quick", "--quiet", "--output", str(run_dir), *extra,
                                     *[item for setting in QUICK for item in ("--set", setting)]])


def _measured(value):
    """Metrics without what depends on the clock (latency, throughput, wall times) or on having resumed."""
    if isinstance(value, dict):
        return {key: _measured(item) for key, item in value.items() if not any(word in key for word in TIMING)}
    return value


def _assert_failed_cleanly(result, file: str):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert "disk is full" in message and file in message, message
    return message


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, and the order of its file writes (to pick the k-th)."""
    root = tmp_path_factory.mktemp("full")
    with pytest.MonkeyPatch.context() as patch:
        disk = Disk(patch, root)
        result = _train(root / "run")
    assert result.exit_code == 0, result.output
    return root / "run", [write.removeprefix("run/") for write in disk.writes]


# the k-th write of a run: the first write of each of these files
RUN_FAULTS = {
    "checkpoint": "checkpoints/student/step-00000030.partial/model.safetensors",  # resumes from step 20
    "export": "student/model.safetensors",
    "done-marker": "teacher/stage_done.json.partial",
    "log-line": "log.jsonl",
    "metrics": "metrics.json.partial",
}


@pytest.mark.parametrize("fault", sorted(RUN_FAULTS))
def test_a_run_stopped_by_a_full_disk_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, reference, fault):
    reference_dir, writes = reference
    k = writes.index(RUN_FAULTS[fault]) + 1
    with monkeypatch.context() as patch:
        disk = Disk(patch, tmp_path, fail_at=k)
        failed = _train(tmp_path / "run")
    assert len(disk.writes) == k  # nothing was written after the failed write
    message = _assert_failed_cleanly(failed, str(tmp_path / "run" / RUN_FAULTS[fault].replace(".partial", "")))
    assert "--resume" in message
    assert not list((tmp_path / "run").rglob("*.partial"))  # the half-written file is gone
    resumed = _train(tmp_path / "run", "--resume")
    assert resumed.exit_code == 0, resumed.output
    for name in ("teacher", "student"):
        expected, got = (load_file(str(run / name / "model.safetensors")) for run in (reference_dir, tmp_path / "run"))
        assert expected.keys() == got.keys()
        for key in expected:
            assert torch.equal(expected[key], got[key]), (name, key)
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (reference_dir, tmp_path / "run")]
    assert _measured(metrics[0]) == _measured(metrics[1])
    assert (reference_dir / "log.jsonl").read_text() == (tmp_path / "run" / "log.jsonl").read_text()


def test_a_run_that_cannot_write_its_recipe_leaves_nothing_in_the_way(tmp_path, monkeypatch, reference):
    with monkeypatch.context() as patch:
        Disk(patch, tmp_path, fail_at=1)  # the first write of a run: recipe.yaml
        failed = _train(tmp_path / "run")
    message = _assert_failed_cleanly(failed, str(tmp_path / "run" / "recipe.yaml"))
    assert "Nothing was trained yet" in message
    assert list((tmp_path / "run").iterdir()) == []
    again = _train(tmp_path / "run")
    assert again.exit_code == 0, again.output


def test_eval_stopped_by_a_full_disk_keeps_metrics_json(tmp_path, monkeypatch, reference):
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    before = (run / "metrics.json").read_bytes()
    with monkeypatch.context() as patch:
        Disk(patch, run, fail_at=1)  # eval's one write: metrics.json, through its partial file
        failed = CliRunner().invoke(main, ["eval", str(run), "--quiet"])
    message = _assert_failed_cleanly(failed, str(run / "metrics.json"))
    assert "was kept as it was" in message and "run `distill eval` again" in message
    assert (run / "metrics.json").read_bytes() == before and not list(run.glob("*.partial"))


# ------------------------------------------------------------------------------------------ cache build
def _build(recipe: Path, output: Path):
    return CliRunner().invoke(main, ["cache", "build", str(recipe), "--output", str(output), *CACHE_BUILD])


@pytest.fixture(scope="module")
def cache_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-full")
    recipe = root / "recipe.yaml"
    recipe.write_text(json.dumps(CACHE_RECIPE))  # JSON is YAML
    with pytest.MonkeyPatch.context() as patch:
        disk = Disk(patch, root / "cache")
        result = _build(recipe, root / "cache")
    assert result.exit_code == 0, result.output
    return recipe, root / "cache", disk.writes


# (file, which of its writes): the build's record is written first, then again after every shard
CACHE_FAULTS = {"shard": ("train-00002.safetensors.partial", 1), "first-record": ("build-progress.json.partial", 1),
                "record-after-a-shard": ("build-progress.json.partial", 3),
                "index": ("index.safetensors.partial", 1), "metadata": ("cache.json.partial", 1)}


def _cache_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.name != "cache.json"}


def _metadata(folder: Path) -> dict:
    metadata = json.loads((folder / "cache.json").read_text())
    return {key: value for key, value in metadata.items() if key not in ("created", "build")}


@pytest.mark.parametrize("fault", sorted(CACHE_FAULTS))
def test_a_cache_build_stopped_by_a_full_disk_continues_to_the_same_cache(tmp_path, monkeypatch, cache_reference,
                                                                          fault):
    recipe, reference_dir, writes = cache_reference
    output = tmp_path / "cache"
    file, occurrence = CACHE_FAULTS[fault]
    k = [index for index, write in enumerate(writes, start=1) if write == file][occurrence - 1]
    with monkeypatch.context() as patch:
        Disk(patch, output, fail_at=k)
        failed = _build(recipe, output)
    message = _assert_failed_cleanly(failed, str(output / file.removesuffix(".partial")))
    assert "run the same `distill cache build` again" in message
    assert not list(output.glob("*.partial")) and not (output / "cache.json").exists()
    again = _build(recipe, output)
    assert again.exit_code == 0, again.output
    assert _cache_files(output) == _cache_files(reference_dir)  # every shard and the index, byte for byte
    assert _metadata(output) == _metadata(reference_dir)
    if fault == "shard":  # the two shards completed before the fault were kept, not recomputed
        assert json.loads((output / "cache.json").read_text())["build"]["shards_kept_from_earlier_run"] == 2


# ------------------------------------------------------------------------------------------ real limits
@contextlib.contextmanager
def file_size_limit(size: int):
    """The kernel refuses to grow any file past ``size`` bytes (EFBIG), as a full disk refuses to grow them: real
    errors from every writer, without a small file system. SIGXFSZ is ignored so that the write fails instead."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


def test_real_write_errors_of_every_writer_are_named(tmp_path):
    """The writers' own ways of failing (safetensors: an error whose text holds "os error 27"; torch.save: a
    RuntimeError with no errno at all; open: OSError) all become WriteFailed naming the file."""
    from safetensors.torch import save_file

    from distill.checkpoint import WriteFailed, write_json_atomic, writing

    def json_file(path):
        with open(path, "w") as handle:
            handle.write("x" * 100_000)

    writers = {"x.safetensors": lambda path: save_file({"x": torch.zeros(100_000)}, str(path)),
               "x.pt": lambda path: torch.save({"x": torch.zeros(100_000)}, path), "x.json": json_file}
    for name, write in writers.items():
        with file_size_limit(10_000), pytest.raises(WriteFailed) as caught, writing(tmp_path / name):
            write(tmp_path / name)
        assert caught.value.errno == errno.EFBIG and caught.value.disk_full, name
        assert str(caught.value).startswith(f"cannot write {tmp_path / name}: the disk is full for a file"), name
    target = tmp_path / "metrics.json"
    target.write_text('{"kept": true}')
    with file_size_limit(5), pytest.raises(WriteFailed):
        write_json_atomic(target, {"kept": False})
    assert target.read_text() == '{"kept": true}' and not list(tmp_path.glob("*.partial"))
    with pytest.raises(ValueError, match="a bug"), writing(target):  # not a write fault: passes through
        raise ValueError("a bug")


def test_a_real_file_size_limit_stops_a_run_that_then_resumes_exactly(tmp_path, reference):
    """No patching: the kernel refuses the teacher's 38 kB checkpoint weights; --resume after the limit is lifted
    gives the uninterrupted run's weights."""
    reference_dir, _ = reference
    with file_size_limit(20_000):
        failed = _train(tmp_path / "run")
    message = _assert_failed_cleanly(failed, str(tmp_path / "run" / "checkpoints" / "teacher"))
    assert "--resume" in message and not list((tmp_path / "run").rglob("*.partial"))
    resumed = _train(tmp_path / "run", "--resume")
    assert resumed.exit_code == 0, resumed.output
    for name in ("teacher", "student"):
        expected, got = (load_file(str(run / name / "model.safetensors")) for run in (reference_dir, tmp_path / "run"))
        assert all(torch.equal(expected[key], got[key]) for key in expected), name


def test_a_generation_stopped_by_a_full_disk_continues_to_the_same_records(tmp_path, monkeypatch):
    import distill.data.records
    from lm_helpers import saved_tiny_llama
    teacher = saved_tiny_llama(tmp_path / "teacher")
    recipe = {"name": "gen", "seed": 0,
              "teacher": {"model": {"kind": "hf", "name_or_path": str(teacher), "task": "causal-lm"}},
              "generate": {"prompts": {"task": "addition", "count": 12}, "batch_size": 3,
                           "decoding": {"max_new_tokens": 6, "temperature": 1.0}}}
    path = tmp_path / "gen.yaml"
    path.write_text(json.dumps(recipe))

    def records(folder):
        index = json.loads((folder / "index.json").read_text())
        return [{**record, "provenance": {**record["provenance"], "created": None}}
                for record in distill.data.records.committed_records(folder, index)]
    assert CliRunner().invoke(main, ["generate", str(path), "-o", str(tmp_path / "straight"), "--quiet"]).exit_code == 0
    with monkeypatch.context() as patch:
        disk = Disk(patch, tmp_path / "full", fail_at=4)  # index, shard, index, then the second batch's shard line
        result = CliRunner().invoke(main, ["generate", str(path), "-o", str(tmp_path / "full" / "data"), "--quiet"])
    assert disk.writes[3] == "data/shard-00000.jsonl"
    message = _assert_failed_cleanly(result, "shard-00000.jsonl")
    assert "The 3 records committed before it are kept" in message
    again = CliRunner().invoke(main, ["generate", str(path), "-o", str(tmp_path / "full" / "data"), "--quiet"])
    assert again.exit_code == 0, again.output
    assert records(tmp_path / "full" / "data") == records(tmp_path / "straight")
