"""Paired differences of AR / BWT / FWT between two runs (ssr.compare), against values by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ssr.compare import final_task_difference, paired_difference
from ssr.errors import SSRError


def write_run(root: Path, stages: dict[str, dict[str, list[float]]], ids: dict[str, list[str]] | None = None) -> Path:
    """A run directory with only what compare reads: stages/<k>-<name>/predictions/<task>.jsonl."""
    for stage, by_task in stages.items():
        folder = root / "stages" / stage / "predictions"
        folder.mkdir(parents=True)
        for task, scores in by_task.items():
            rows = [{"id": (ids or {}).get(task, [f"{task}-{i}" for i in range(len(scores))])[i], "rougeL": s}
                    for i, s in enumerate(scores)]
            (folder / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture()
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    base = {"x": [0.1, 0.1], "y": [0.2, 0.2]}
    a = write_run(tmp_path / "a", {"0-base": base, "1-x": {"x": [0.5, 0.7], "y": [0.2, 0.4]},
                                   "2-y": {"x": [0.4, 0.6], "y": [0.9, 0.1]}})
    b = write_run(tmp_path / "b", {"0-base": base, "1-x": {"x": [0.6, 0.9], "y": [0.2, 0.4]},
                                   "2-y": {"x": [0.2, 0.6], "y": [0.8, 0.3]}})
    return a, b


def test_ar_difference_and_its_standard_error_by_hand(two_runs):
    # AR a = (50 + 50) / 2, b = (40 + 55) / 2. Row differences: x (20, 0), y (10, -20):
    # task means 10 and -5; variances / n: 200 / 2 and 450 / 2; se = sqrt(100 + 225) / 2.
    diff, se = paired_difference(*two_runs, "AR")
    assert diff == pytest.approx(2.5)
    assert se == pytest.approx(math.sqrt(325) / 2)


def test_bwt_difference_pairs_each_rows_drop_since_its_own_stage(two_runs):
    # BWT terms (x only): a (40-50, 60-70) = (-10, -10), b (20-60, 60-90) = (-40, -30):
    # row differences (30, 20), mean 25, variance 50, se sqrt(50 / 2).
    diff, se = paired_difference(*two_runs, "BWT")
    assert diff == pytest.approx(25.0)
    assert se == pytest.approx(5.0)


def test_fwt_difference_reads_the_stage_before(two_runs):
    # FWT term of y: its score after stage 1, the same in both runs.
    assert paired_difference(*two_runs, "FWT") == (pytest.approx(0.0), pytest.approx(0.0))


def test_runs_on_different_rows_are_refused(tmp_path: Path, two_runs):
    a, _ = two_runs
    other = write_run(tmp_path / "c", {"0-base": {}, "1-x": {"x": [0.5, 0.7]}, "2-y": {"x": [0.2, 0.6], "y": [0.8, 0.3]}},
                      ids={"x": ["x-0", "x-9"]})
    with pytest.raises(SSRError, match="different rows"):
        paired_difference(a, other, "AR")


def test_one_tasks_final_difference_by_hand(tmp_path: Path, two_runs):
    # after the last stage, x: a (40, 60), b (20, 60): differences (20, 0), mean 10, variance 200, se sqrt(200 / 2)
    assert final_task_difference(*two_runs, "x") == (pytest.approx(10.0), pytest.approx(10.0))
    other = write_run(tmp_path / "c", {"0-base": {}, "1-x": {"x": [0.4, 0.6]}}, ids={"x": ["x-0", "x-9"]})
    with pytest.raises(SSRError, match="different rows"):
        final_task_difference(two_runs[0], other, "x")


def test_compare_command_prints_each_difference_and_refuses_a_non_run(tmp_path: Path, two_runs, capsys):
    from ssr.cli import main

    a, b = two_runs
    assert main(["compare", str(a), str(b)]) == 0
    printed = capsys.readouterr().out
    assert "AR     +2.50 ± 9.01   (not resolved" in printed and "BWT   +25.00 ± 5.00   (resolved" in printed
    assert main(["compare", str(a), str(tmp_path / "nowhere")]) != 0
    assert "not a run directory" in capsys.readouterr().err


def test_a_one_stage_run_compares_by_ar_only(tmp_path: Path, two_runs):
    """mtl trains every task in one stage: its AR pairs with a sequence run's, its BWT does not exist."""
    a, _ = two_runs
    mtl = write_run(tmp_path / "mtl", {"0-base": {}, "1-mtl": {"x": [0.6, 0.6], "y": [0.5, 0.5]}})
    (mtl / "results.json").write_text(json.dumps({"tasks": ["x", "y"]}))
    # rows: x (60-40, 60-60) = (20, 0), y (50-90, 50-10) = (-40, 40): means 10 and 0, variances 200 and 3200
    assert paired_difference(mtl, a, "AR") == (pytest.approx(5.0), pytest.approx(math.sqrt(100 + 1600) / 2))
    with pytest.raises(SSRError, match="one stage per task"):
        paired_difference(mtl, a, "BWT")


def test_missing_predictions_name_the_file(tmp_path: Path, two_runs):
    a, _ = two_runs
    partial = write_run(tmp_path / "d", {"0-base": {}, "1-x": {}, "2-y": {"x": [0.2, 0.6], "y": [0.8, 0.3]}})
    with pytest.raises(SSRError, match=r"1-x/predictions/x.jsonl"):
        paired_difference(a, partial, "BWT")


def test_paired_differences_agree_with_the_runs_own_metrics(task_dir, tiny_model_dir, tmp_path):
    """Row by row from the predictions files, the differences equal those of the score matrices."""
    from conftest import tiny_config
    from ssr.config import load_config
    from ssr.runner import run

    raw = tiny_config(task_dir, tiny_model_dir)
    a = run(load_config(None, raw=raw), tmp_path / "seq")
    raw["method"].update({"name": "replay", "ratio": 0.5})
    b = run(load_config(None, raw=raw), tmp_path / "replay")
    for metric in ("AR", "BWT", "FWT"):
        diff, se = paired_difference(tmp_path / "replay", tmp_path / "seq", metric)
        assert diff == pytest.approx(b[metric] - a[metric], abs=1e-9), metric
        assert se >= 0
