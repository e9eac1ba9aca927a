"""The stage contract: plans are checked before anything runs, finished stages are restored on resume and
unfinished ones run, and every recipe's stage list can be printed without building anything."""

import json

import pytest
from click.testing import CliRunner

import distill
from distill.cli import main
from distill.config import load_recipe
from distill.errors import DistillError
from distill.run import describe, plan
from distill.stages import (
    RunContext,
    Stage,
    check_plan,
    describe_plan,
    run_stages,
    stage_done,
)


class FakeConfig:
    def to_yaml(self):
        return "name: fake\n"


def _stage(name, reads=(), writes=(), calls=None, resumable=True):
    def run(context):
        calls.append(name)
        for artifact in writes:
            context.artifacts[artifact] = f"{artifact} from {name}"
        return {"ran": name}

    def restore(context, done):
        calls.append(f"restore {name}")
        for artifact in writes:
            context.artifacts[artifact] = f"{artifact} restored"
    return Stage(name, f"does {name}", run, reads=reads, writes=writes, restore=restore if resumable else None)


def test_a_stage_that_reads_what_only_a_later_stage_writes_fails_naming_both():
    stages = [_stage("student", reads=("teacher",), calls=[]), _stage("teacher", writes=("teacher",), calls=[])]
    with pytest.raises(DistillError,
                       match="stage 'student' reads 'teacher', which only the later stage 'teacher' writes"):
        check_plan(stages)
    with pytest.raises(DistillError, match="stage 'student' reads 'cache', which no earlier stage writes"):
        check_plan([_stage("student", reads=("cache",), calls=[])])
    with pytest.raises(DistillError, match="two stages named 'a'"):
        check_plan([_stage("a", calls=[]), _stage("a", calls=[])])
    check_plan([_stage("student", reads=("teacher",), calls=[])], provided={"teacher"})  # given by the user


def test_resume_restores_finished_stages_and_runs_the_rest(tmp_path):
    calls = []
    stages = [_stage("setup", writes=("model",), calls=calls, resumable=False),
              _stage("first", reads=("model",), writes=("trained",), calls=calls),
              _stage("second", reads=("trained",), writes=("result",), calls=calls)]
    context = run_stages(stages, RunContext(FakeConfig(), tmp_path, data=None))
    assert calls == ["setup", "first", "second"]
    assert context.stages == {"first": {"ran": "first"}, "second": {"ran": "second"}}
    assert (stage_done(tmp_path, "first") == {"ran": "first"}
            and (tmp_path / "recipe.yaml").read_text() == "name: fake\n")
    (tmp_path / "second" / "stage_done.json").unlink()  # as if killed during the second stage
    calls.clear()
    context = run_stages(stages, RunContext(FakeConfig(), tmp_path, data=None, resume=True))
    assert calls == ["setup", "restore first", "second"]
    assert context.artifacts["trained"] == "trained restored" and context.artifacts["result"] == "result from second"


def test_a_stage_that_does_not_produce_what_it_declares_is_caught(tmp_path):
    lying = Stage("liar", "declares more than it writes", lambda context: None, writes=("model",))
    with pytest.raises(DistillError, match="stage 'liar' did not produce model"):
        run_stages([lying], RunContext(FakeConfig(), tmp_path, data=None))


def test_the_plain_run_and_every_builtin_recipe_can_be_planned_without_building():
    names = [stage.name for stage in plan(load_recipe("digits-quick"))]
    assert names == ["prepare", "teacher", "pair", "baseline", "student", "evaluate"]
    from distill.config import describe_builtin_recipes

    for recipe, _ in describe_builtin_recipes():
        stages = plan(load_recipe(recipe))
        check_plan(stages, {"data"})
        names = [stage.name for stage in stages]
        if load_recipe(recipe).data.dataset == "generated":  # the records are made and read before any model
            assert names[:4] == ["generate", "filter", "data", "prepare"], recipe
        else:
            assert names[0] == "prepare", recipe
        assert names[-1] == "evaluate", recipe
    text = describe("mnist1d-born-again")
    assert "3. generation-1" in text and "reads:  student, data, generation-0" in text
    assert describe_plan(plan(load_recipe("hinton-mnist")), {"data"}).count("stage_done.json") == 3


def test_compress_and_regimes_add_their_own_stages():
    config = load_recipe("digits-quick", ["compress={prune: 0.5, finetune_steps: 10, quantize: int8}"])
    names = [stage.name for stage in plan(config)]
    assert names[-4:] == ["student_int8", "student_pruned", "student_pruned_int8", "evaluate"]
    pruned = next(stage for stage in plan(config) if stage.name == "student_pruned")
    assert pruned.restore is not None and pruned.reads == ("student", "teacher")
    data_free = [stage.name for stage in plan(load_recipe("mnist1d-data-free"))]
    assert data_free == ["prepare", "teacher", "synthesise", "student", "evaluate"]


def test_a_teacher_only_recipe_trains_and_evaluates_the_teacher(tmp_path):
    recipe = {"name": "teacher-only", "data": {"dataset": "digits"},
              "teacher": {"model": {"kind": "mlp", "hidden": [32]},
                          "train": {"epochs": 1, "batch_size": 32, "optimizer": "adamw", "lr": 0.003}},
              "evaluation": {"latency_runs": 5}}
    assert [stage.name for stage in plan(load_recipe(recipe))] == ["prepare", "teacher", "evaluate"]
    result = distill.train(recipe, output=tmp_path / "run", show_progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result.student is None and metrics["teacher"]["accuracy"] > 0.3
    assert metrics["stages"]["teacher"]["steps"] == 1257 // 32 == metrics["steps"]
    with pytest.raises(DistillError, match="teacher.train is not set: there is nothing to run"):
        plan(load_recipe({**recipe, "teacher": {"model": {"kind": "mlp", "hidden": [32]}}}))
    with pytest.raises(DistillError, match="stage 'student' reads the objective section"):
        plan(load_recipe({**recipe, "student": {"model": {"kind": "mlp", "hidden": [8]}}}))
    with pytest.raises(DistillError, match="an objective section but no student"):
        plan(load_recipe({**recipe, "objective": {"alpha": 0.5}}))


def test_cli_plan_prints_the_stages_and_builds_nothing(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["train", "digits-quick", "--plan", "--output", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].startswith("1. prepare") and "5. student" in result.output
    assert not (tmp_path / "run").exists()
    checked = runner.invoke(main, ["check", "digits-quick", "--plan"])
    assert checked.exit_code == 0 and "6. evaluate" in checked.output and "name: digits-quick" in checked.output
    refused = runner.invoke(main, ["train", "digits-quick", "--plan", "--set", "objective=null"])
    assert refused.exit_code != 0 and "reads the objective section" in refused.output


def test_deep_inversion_synthesis_is_a_stage_restored_on_resume(tmp_path, monkeypatch):
    overrides = ["data.num_samples=1000", "teacher.train.epochs=1", "training.max_steps=6", "mode.samples=64",
                 "mode.batch_size=32", "mode.steps=3", "evaluation.latency_runs=5"]
    result = distill.train("mnist1d-data-free", output=tmp_path / "run", overrides=overrides, show_progress=False)
    synthetic = (tmp_path / "run" / "synthetic.safetensors").read_bytes()
    assert result.metrics["synthetic"]["samples"] == 64 and sum(result.metrics["synthetic"]["teacher_classes"]) == 64
    assert stage_done(tmp_path / "run", "synthesise")["samples"] == 64

    import distill.modes.data_free as data_free

    monkeypatch.setattr(data_free, "synthesise", lambda *args, **kwargs: pytest.fail("synthesised again"))
    resumed = distill.train("mnist1d-data-free", output=tmp_path / "run", overrides=overrides, resume=True,
                            show_progress=False)
    assert (tmp_path / "run" / "synthetic.safetensors").read_bytes() == synthetic
    assert resumed.metrics["student"]["accuracy"] == result.metrics["student"]["accuracy"]
