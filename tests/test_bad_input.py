"""Hostile input, through the CLI in-process: malformed model folders, run directories and paths. Each case exits
non-zero with one paragraph naming the file or field (no traceback), and leaves a previous good run directory
byte for byte as it was (every file's sha256 compared). Then what must never block or lose work: a run that
fails before its first stage finishes, ``.partial`` leftovers, and commands aimed at a folder they do not own."""

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import distill
import distill.trainer
from distill.cli import main
from distill.errors import DistillError

QUICK = ["teacher.train.epochs=1", "training.epochs=1", "evaluation.latency_runs=5", "evaluation.latency_b1_runs=20"]
SETS = [item for setting in QUICK for item in ("--set", setting)]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """One finished tiny run (teacher, baseline, student), copied by every case that needs one."""
    run_dir = tmp_path_factory.mktemp("good") / "run"
    distill.train("digits-quick", output=run_dir, overrides=QUICK, show_progress=False)
    return run_dir


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny Hugging Face causal LM saved locally (never downloaded)."""
    from lm_helpers import tiny_llama

    folder = tmp_path_factory.mktemp("hf") / "tiny"
    tiny_llama(64).save_pretrained(folder)
    return folder


def hashes(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def invoke(args: list[str]):
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


# ------------------------------------------------------------------------------------------ the table
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _unfinish_student(run: Path) -> None:
    """The state a kill during the student stage leaves: no export, no done marker, only its checkpoints."""
    shutil.rmtree(run / "student")


def _saved_teacher(run: Path, tmp: Path, damage) -> list[str]:
    """A new run whose teacher is (a damaged copy of) the good run's exported teacher."""
    folder = tmp / "teacher-copy"
    shutil.copytree(run / "teacher", folder)
    (folder / "stage_done.json").unlink()
    damage(folder)
    return ["train", "digits-quick", "--quiet", "--output", str(tmp / "new"), *SETS, "--set", "baseline=false",
            "--set", f"teacher.model={{kind: saved, path: {folder}}}", "--set", "teacher.train=null"]


def _hf_teacher(hf: Path, tmp: Path, damage) -> list[str]:
    folder = tmp / "hf-copy"
    shutil.copytree(hf, folder)
    damage(folder)
    return ["train", "digits-quick", "--quiet", "--output", str(tmp / "new"), *SETS, "--set", "baseline=false",
            "--set", f"teacher.model={{kind: hf, name_or_path: {folder}, task: causal-lm}}",
            "--set", "teacher.train=null"]


def _eval(run: Path) -> list[str]:
    return ["eval", str(run), "--quiet"]


def _resume(run: Path) -> list[str]:
    return ["train", "digits-quick", "--quiet", "--output", str(run), "--resume", *SETS]


def _cache_folder(tmp: Path) -> Path:
    (tmp / "cache").mkdir()
    (tmp / "cache" / "cache.json").write_text("{}")
    return tmp / "cache"


# name: (what is done to the copy of the good run / the tmp folder -> the command, words the message must hold)
CASES = {
    # finished work is never replaced by less: metrics.json kept, the new results beside it
    "student weights truncated": (lambda run, tmp, hf: (_truncate(run / "student/model.safetensors"), _eval(run))[1],
                                  ["student/model.safetensors", "truncated", "metrics.eval-"]),
    "student weights empty": (lambda run, tmp, hf: ((run / "student/model.safetensors").write_bytes(b""),
                                                    _eval(run))[1], ["student/model.safetensors", "empty (0 bytes)"]),
    "student weights garbage": (lambda run, tmp, hf: ((run / "student/model.safetensors").write_bytes(b"\x07" * 99),
                                                      _eval(run))[1],
                                ["student/model.safetensors", "not a readable safetensors file"]),
    "student config.json garbage": (lambda run, tmp, hf: ((run / "student/config.json").write_text("{oops"),
                                                          _eval(run))[1], ["student/config.json", "not valid JSON"]),
    "checkpoint without state.json": (lambda run, tmp, hf: (_unfinish_student(run),
                                                            (run / "checkpoints/student/step-00000039/state.json")
                                                            .unlink(), _eval(run))[2],
                                      ["checkpoints/student/step-00000039", "state.json"]),
    "metrics.json garbage": (lambda run, tmp, hf: ((run / "metrics.json").write_text("not json {"), _eval(run))[1],
                             ["metrics.json", "not valid JSON"]),
    "recipe.yaml garbage, eval": (lambda run, tmp, hf: ((run / "recipe.yaml").write_text(": : [\n\t-"),
                                                        _eval(run))[1], ["recipe.yaml"]),
    "recipe.yaml garbage, resume": (lambda run, tmp, hf: ((run / "recipe.yaml").write_text(": : [\n\t-"),
                                                          _resume(run))[1], ["recipe.yaml", "cannot resume"]),
    "stage_done.json not JSON": (lambda run, tmp, hf: ((run / "student/stage_done.json").write_text("done!"),
                                                       _resume(run))[1], ["student/stage_done.json", "not valid JSON"]),
    "checkpoint weights truncated, resume": (
        lambda run, tmp, hf: ((run / "student/stage_done.json").unlink(),
                              _truncate(run / "checkpoints/student/step-00000039/model.safetensors"), _resume(run))[2],
        ["checkpoints/student/step-00000039", "cannot be restored"]),
    # a kind: saved model folder
    "saved config.json empty": (lambda run, tmp, hf: _saved_teacher(run, tmp, lambda f: (f / "config.json")
                                                                    .write_text("")), ["config.json", "is empty"]),
    "saved config.json garbage": (lambda run, tmp, hf: _saved_teacher(run, tmp, lambda f: (f / "config.json")
                                                                      .write_text("[1, 2")),
                                  ["config.json", "not valid JSON"]),
    "saved config.json without its fields": (lambda run, tmp, hf: _saved_teacher(
        run, tmp, lambda f: (f / "config.json").write_text('{"distill_model": {"kind": "mlp"}}')),
        ["config.json", "input_shape"]),
    "saved weights empty": (lambda run, tmp, hf: _saved_teacher(run, tmp, lambda f: (f / "model.safetensors")
                                                                .write_bytes(b"")),
                            ["model.safetensors", "empty (0 bytes)"]),
    "saved weights truncated": (lambda run, tmp, hf: _saved_teacher(run, tmp, lambda f: _truncate(
        f / "model.safetensors")), ["model.safetensors", "truncated"]),
    "saved folder that is not a model": (lambda run, tmp, hf: _saved_teacher(
        run, tmp, lambda f: [(f / name).unlink() for name in ("config.json", "model.safetensors")]),
        ["teacher-copy", "not a model folder", "config.json"]),
    # a kind: hf local folder
    "hf config.json empty": (lambda run, tmp, hf: _hf_teacher(hf, tmp, lambda f: (f / "config.json").write_text("")),
                             ["hf-copy/config.json", "is empty"]),
    "hf config.json garbage": (lambda run, tmp, hf: _hf_teacher(hf, tmp, lambda f: (f / "config.json")
                                                                .write_text("{garbage")),
                               ["hf-copy/config.json", "not valid JSON"]),
    "hf config.json of no model type": (lambda run, tmp, hf: _hf_teacher(hf, tmp, lambda f: (f / "config.json")
                                                                         .write_text('{"a": 1}')),
                                        ["hf-copy/config.json", "no model_type"]),
    "hf weights empty": (lambda run, tmp, hf: _hf_teacher(hf, tmp, lambda f: (f / "model.safetensors")
                                                          .write_bytes(b"")),
                         ["hf-copy/model.safetensors", "empty (0 bytes)"]),
    "hf weights truncated": (lambda run, tmp, hf: _hf_teacher(hf, tmp, lambda f: _truncate(f / "model.safetensors")),
                             ["hf-copy/model.safetensors", "truncated"]),
    "hf folder that is not a model": (lambda run, tmp, hf: _hf_teacher(
        hf, tmp, lambda f: [(f / name).unlink() for name in ("config.json", "model.safetensors")]),
        ["hf-copy", "not a model folder"]),
    # paths
    "--output name too long": (lambda run, tmp, hf: ["train", "digits-quick", "--quiet", "--output",
                                                     str(tmp / ("x" * 300)), *SETS], ["--output", "too long"]),
    "--output path too long": (lambda run, tmp, hf: ["train", "digits-quick", "--quiet", "--output",
                                                     str(tmp.joinpath(*["d" * 200] * 22)), *SETS],
                               ["--output", "too long", "per path"]),
    "--output under a file": (lambda run, tmp, hf: ((tmp / "file").write_text("x"),
                                                    ["train", "digits-quick", "--output", str(tmp / "file" / "run")])
                              [1], ["file is a file, not a folder"]),
    "eval --output name too long": (lambda run, tmp, hf: ["eval", str(run), "--quiet", "--output",
                                                          str(tmp / ("m" * 300) / "metrics.json")],
                                    ["--output", "too long"]),
    # folders another command owns
    "cache built into a run": (lambda run, tmp, hf: ["cache", "build", "digits-quick", "--output", str(run)],
                               ["is a training run's directory", "-cache"]),
    "cache built inside a run": (lambda run, tmp, hf: ["cache", "build", "digits-quick", "--output",
                                                       str(run / "cache")], ["is inside", "training run"]),
    "run trained into a cache": (lambda run, tmp, hf: ["train", "digits-quick", "--output", str(_cache_folder(tmp)),
                                                       *SETS], ["holds a teacher cache", "teacher.cache="]),
    "run trained inside a run": (lambda run, tmp, hf: ["train", "digits-quick", "--output", str(run / "student" / "x"),
                                                       *SETS], ["is inside the run directory"]),
    "run trained over a run": (lambda run, tmp, hf: ["train", "digits-quick", "--output", str(run), *SETS],
                               ["already holds a run", "--resume"]),
    "resume with another recipe": (lambda run, tmp, hf: ["train", "digits-quick", "--output", str(run), "--resume",
                                                         *SETS, "--set", "training.lr=0.5"],
                                   ["recipe differs", "training.lr"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_and_the_good_run_is_untouched(case, good_run, hf_folder, tmp_path):
    prepare, words = CASES[case]
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    args = prepare(run, tmp_path, hf_folder)
    before = hashes(run)
    message = invoke(args)
    for word in words:
        assert word in message, (word, message)
    after = hashes(run)
    beside = [name for name in after if name.startswith("metrics.eval-")]
    assert {name: digest for name, digest in after.items() if name not in beside} == before  # byte for byte
    if "metrics.eval-" in words:  # the new results are beside, and say what is missing
        assert len(beside) == 1 and beside[0] in message
        assert json.loads((run / beside[0]).read_text())["missing"] == ["student"]
    assert not (tmp_path / "new").exists()  # a run refused before training leaves no directory


def test_eval_with_an_explicit_output_writes_there(good_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    (run / "student/model.safetensors").write_bytes(b"")
    before = hashes(run)
    result = CliRunner().invoke(main, ["eval", str(run), "--quiet", "--output", str(tmp_path / "partial.json")])
    assert result.exit_code == 0, result.output
    assert "student: missing: weights file" in result.output
    assert json.loads((tmp_path / "partial.json").read_text())["missing"] == ["student"]
    assert hashes(run) == before


def test_eval_of_an_intact_run_still_replaces_metrics(good_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    result = CliRunner().invoke(main, ["eval", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "metrics.json").read_text())["complete"] is True
    assert not list(run.glob("metrics.eval-*"))


# ------------------------------------------------------------------------------------------ permissions
def test_an_output_folder_that_cannot_be_written_is_refused_before_training(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into a chmod 0o500 folder anyway (the kernel skips permission checks for root); "
                    "test_a_refused_write_is_named_with_what_to_do covers the message")
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        message = invoke(["train", "digits-quick", "--output", str(parent / "run"), *SETS])
    finally:
        parent.chmod(0o700)
    assert "permission denied" in message and str(parent) in message
    assert list(parent.iterdir()) == []


def test_a_refused_write_is_named_with_what_to_do(tmp_path, monkeypatch):
    """os.access says no (as for a non-root user in a read-only folder): refused before any compute."""
    import distill.checkpoint

    monkeypatch.setattr(distill.checkpoint.os, "access", lambda path, mode: False)
    message = invoke(["train", "digits-quick", "--output", str(tmp_path / "run"), *SETS])
    assert "permission denied" in message and str(tmp_path) in message and "choose a folder you can write" in message
    message = invoke(["cache", "build", "digits-quick", "--output", str(tmp_path / "cache")])
    assert "permission denied" in message
    assert list(tmp_path.iterdir()) == []


def test_permission_denied_mid_run_says_fix_and_resume(tmp_path, monkeypatch):
    import distill.checkpoint

    real = distill.checkpoint.save_model

    def refused(model, path, *args, **kwargs):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(distill.checkpoint, "save_model", refused)
    message = invoke(["train", "digits-quick", "--quiet", "--output", str(tmp_path / "run"), *SETS])
    assert "permission denied" in message and "checkpoints/teacher/step-00000039/model.safetensors" in message
    assert "Fix that, then run the same command again with --resume" in message
    monkeypatch.setattr(distill.checkpoint, "save_model", real)


# ------------------------------------------------------------------------------------------ failed first attempts
def test_bad_data_or_a_model_that_fails_to_build_leave_no_run_directory(good_run, tmp_path):
    output = tmp_path / "run"
    invoke(["train", "digits-quick", "--output", str(output), *SETS,
            "--set", f"data={{path: {tmp_path / 'nowhere.csv'}, features: [a], label: y}}"])
    assert not output.exists()
    # the teacher builds, then the student cannot: prepare fails before any stage trains
    invoke(["train", "digits-quick", "--output", str(output), *SETS,
            "--set", f"student.model={{kind: saved, path: {tmp_path / 'no-student'}}}"])
    assert not output.exists()


@pytest.mark.parametrize("resume", [False, True], ids=["again", "resume"])
def test_a_run_that_fails_in_its_first_stage_does_not_block_the_corrected_retry(tmp_path, monkeypatch, resume):
    """Failed after recipe.yaml and a log line were written, before any checkpoint: nothing to resume, so the
    corrected recipe runs in the same --output (with or without --resume)."""
    output = tmp_path / "run"
    real_fit = distill.trainer.fit

    def failing_fit(*args, **kwargs):
        (output / "log.jsonl").write_text('{"stage": "teacher", "step": 1, "loss": 2.3}\n')
        (output / "checkpoints" / "teacher").mkdir(parents=True)
        raise DistillError("the teacher stage failed at its first step")

    monkeypatch.setattr(distill.trainer, "fit", failing_fit)
    invoke(["train", "digits-quick", "--quiet", "--output", str(output), *SETS])
    assert (output / "recipe.yaml").is_file()
    monkeypatch.setattr(distill.trainer, "fit", real_fit)
    corrected = ["train", "digits-quick", "--quiet", "--output", str(output), *SETS, "--set", "training.lr=0.01",
                 *(["--resume"] if resume else [])]
    result = CliRunner().invoke(main, corrected)
    assert result.exit_code == 0, result.output
    assert "lr: 0.01" in (output / "recipe.yaml").read_text()  # the corrected recipe, not the failed one
    assert (output / "student" / "stage_done.json").is_file()


def test_a_run_with_checkpoints_but_no_finished_stage_keeps_them(good_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    for name in ("teacher", "baseline", "student", "metrics.json"):
        path = run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = hashes(run)
    message = invoke(["train", "digits-quick", "--output", str(run), "--resume", *SETS, "--set", "training.lr=0.5"])
    assert "recipe differs" in message  # a trained teacher's checkpoint is work: never discarded for a new recipe
    message = invoke(["train", "digits-quick", "--output", str(run), *SETS])
    assert "already holds a run" in message
    assert hashes(run) == before


def test_partial_leftovers_are_cleaned_on_the_next_run(good_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    leftovers = [run / "metrics.json.partial", run / "recipe.partial", run / "student" / "stage_done.json.partial",
                 run / "checkpoints" / "student" / "step-00000090.partial" / "model.safetensors",
                 run / "checkpoints" / "student" / "step-00000039.old.partial" / "state.json"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    result = CliRunner().invoke(main, ["train", "digits-quick", "--quiet", "--output", str(run), "--resume", *SETS])
    assert result.exit_code == 0, result.output
    assert not list(run.rglob("*.partial"))
    assert hashes(run)["student/model.safetensors"] == hashes(good_run)["student/model.safetensors"]


def test_the_advice_for_a_damaged_export_restores_it(good_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    _truncate(run / "student/model.safetensors")
    message = invoke(_eval(run))
    marker = run / "student" / "stage_done.json"
    assert f"delete {marker} and run `distill train RECIPE --output {run} --resume`" in message
    marker.unlink()
    result = CliRunner().invoke(main, _resume(run))
    assert result.exit_code == 0, result.output
    assert hashes(run)["student/model.safetensors"] == hashes(good_run)["student/model.safetensors"]
    result = CliRunner().invoke(main, _eval(run))
    assert result.exit_code == 0, result.output
    metrics, reference = (json.loads((folder / "metrics.json").read_text()) for folder in (run, good_run))
    assert metrics["student"]["errors"] == reference["student"]["errors"] and metrics["complete"]
