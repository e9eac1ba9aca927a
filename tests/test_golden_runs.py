"""Golden fixtures: the first logged losses of two short built-in runs, pinned so that a refactor of the run, the
stage layer or the trainer cannot change results silently (as torchtune's recipe tests pin theirs).

Regenerate after an intended change with ``DISTILL_REGENERATE_GOLDEN=1 pytest tests/test_golden_runs.py`` and say
in the commit why the numbers moved."""

import json
import os
from pathlib import Path

import pytest

import distill

GOLDEN = Path(__file__).parent / "golden" / "run_losses.json"
RUNS = {
    "digits-quick": ["teacher.train.epochs=2", "training.epochs=2", "evaluation.latency_runs=5"],
    "llm-tiny": ["teacher.train.max_steps=20", "training.max_steps=20", "data.train_subset=128",
                 "evaluation.max_test_tokens=1024"],
}
FIRST = 4  # logged training lines kept per stage


def logged_losses(run_dir: Path) -> dict[str, list[dict[str, float]]]:
    by_stage: dict[str, list[dict[str, float]]] = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if not any(key == "loss" or key.startswith("loss/") for key in record):
            continue  # validation lines: covered by the run tests
        kept = by_stage.setdefault(record["stage"], [])
        if len(kept) < FIRST:
            kept.append({key: value for key, value in record.items() if key in ("step", "lr")
                         or key == "loss" or key.startswith("loss/")})
    return by_stage


@pytest.mark.parametrize("recipe", sorted(RUNS))
def test_first_logged_losses_match_the_golden_file(recipe, tmp_path):
    result = distill.train(recipe, output=tmp_path / recipe, overrides=RUNS[recipe], show_progress=False)
    measured = logged_losses(result.run_dir)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if os.environ.get("DISTILL_REGENERATE_GOLDEN"):
        golden[recipe] = measured
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    assert recipe in golden, f"{GOLDEN} has no entry for {recipe}; regenerate with DISTILL_REGENERATE_GOLDEN=1"
    expected = golden[recipe]
    assert sorted(measured) == sorted(expected), "the run logged other stages than the golden file"
    for stage, lines in expected.items():
        assert len(measured[stage]) == len(lines), stage
        for got, want in zip(measured[stage], lines):
            assert sorted(got) == sorted(want), (stage, got)
            for key, value in want.items():
                assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (recipe, stage, got["step"], key)
