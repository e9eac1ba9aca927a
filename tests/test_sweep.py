"""`distill sweep`: seeds x grid as separate runs, mean ± std, and a crashing seed that does not stop the others."""

import json
import statistics

import pytest
from click.testing import CliRunner

import distill.run
from distill.cli import main
from distill.errors import DistillError
from distill.sweep import grid_points, parse_grid, run_sweep

TINY = ["teacher.train.epochs=1", "training.epochs=1", "baseline=false", "evaluation.latency_runs=5",
        "evaluation.latency_b1_runs=20", "evaluation.batch_size=100", "data.train_subset=400"]


def test_grid_parsing():
    grid = parse_grid(["objective.temperature=1,4,20", "training.lr=0.1,0.001"])
    assert grid == [("objective.temperature", [1, 4, 20]), ("training.lr", [0.1, 0.001])]
    assert len(grid_points(grid)) == 6 and grid_points(grid)[1] == {"objective.temperature": 1, "training.lr": 0.001}
    with pytest.raises(DistillError, match="key=value1,value2"):
        parse_grid(["objective.temperature"])


def test_a_crashing_seed_is_marked_and_the_others_finish(tmp_path, monkeypatch):
    real_train = distill.run.train

    def train_that_crashes_for_one_seed(recipe, *, overrides, **kwargs):
        if "seed=1" in overrides and "objective.temperature=8" in overrides:
            raise RuntimeError("simulated crash: out of memory")
        return real_train(recipe, overrides=overrides, **kwargs)

    monkeypatch.setattr(distill.run, "train", train_that_crashes_for_one_seed)
    result = run_sweep("digits-quick", seeds=2, overrides=TINY, grid=["objective.temperature=2,8"],
                       output=tmp_path / "sweep", show_progress=False)
    points = {point["name"]: point for point in result.summary["points"]}
    assert set(points) == {"temperature=2", "temperature=8"}
    statuses = {(name, run["seed"]): run["status"] for name, point in points.items() for run in point["runs"]}
    assert statuses == {("temperature=2", 0): "done", ("temperature=2", 1): "done", ("temperature=8", 0): "done",
                        ("temperature=8", 1): "crashed"}
    assert "simulated crash" in points["temperature=8"]["runs"][1]["error"]
    assert "RuntimeError" in (tmp_path / "sweep" / "temperature=8" / "seed-1" / "error.txt").read_text()
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "1/2 (CRASHED: seed 1)" in table and "2/2 |" in table
    # the mean ± std are those of the runs' own metrics.json
    accuracies = [json.loads((tmp_path / "sweep" / "temperature=2" / f"seed-{seed}" / "metrics.json").read_text())
                  ["student"]["accuracy"] for seed in (0, 1)]
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    stats = saved["points"][0]["summary"]["student"]["accuracy"]
    assert stats["mean"] == pytest.approx(statistics.fmean(accuracies))
    assert stats["std"] == pytest.approx(statistics.stdev(accuracies))
    assert saved["points"][1]["summary"]["student"]["accuracy"]["n"] == 1
    assert f"{stats['mean'] * 100:.2f} ± {stats['std'] * 100:.2f}%" in table

    # run again without the crash: finished runs are reused, the crashed one is run
    monkeypatch.setattr(distill.run, "train", real_train)
    again = CliRunner().invoke(main, ["sweep", "digits-quick", "--seeds", "2",
                                      *sum((["--set", item] for item in TINY), []),
                                      "--grid", "objective.temperature=2,8", "--output", str(tmp_path / "sweep"),
                                      "--quiet"])
    assert again.exit_code == 0, again.output
    rerun = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert all(run["status"] == "done" for point in rerun["points"] for run in point["runs"])
    assert rerun["points"][0]["runs"][0]["reused"] is True


def test_a_bad_grid_value_fails_before_any_run(tmp_path):
    result = CliRunner().invoke(main, ["sweep", "digits-quick", "--grid", "objective.temperature=2,-1",
                                       "--output", str(tmp_path / "s")])
    assert result.exit_code == 2 and "objective.temperature" in result.output
    assert not (tmp_path / "s").exists()
