"""The sweep's statistics and the report's columns, against numbers worked out by hand.

No model runs here: finished runs are written as the files a run leaves (results.json,
config.yaml, sweep.json), so every figure the summary and the report print can be checked
against a hand computation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from ssr.report import build_report, seen_average
from ssr.sweep import format_mean_std, summarize, summary_table

# Three tasks; rows are the base model then stages 1..3 (scores[i][j] = task j after stage i).
MATRIX_A = [[10.0, 20.0, 30.0],
            [50.0, 25.0, 35.0],
            [40.0, 60.0, 33.0],
            [30.0, 45.0, 70.0]]
# by hand: AR = (30 + 45 + 70) / 3 = 48.333...; FWT = (a_1(2) + a_2(3)) / 2 = (25 + 33) / 2 = 29;
# BWT = ((30 - 50) + (45 - 60)) / 2 = -17.5; seen averages: 50, (40 + 60) / 2 = 50, 145 / 3.
MATRIX_B = [[0.0, 0.0, 0.0],
            [80.0, 10.0, 5.0],
            [70.0, 90.0, 15.0],
            [75.0, 60.0, 40.0]]
# by hand: seen averages 80, (70 + 90) / 2 = 80, 175 / 3. (The report prints each run's results.json
# figures; run b's are given distinct values so that a swapped column shows.)


def _write_run(d: Path, method: str, scores, ar, fwt, bwt, wall, cfg_method: dict | None = None) -> Path:
    d.mkdir(parents=True)
    results = {"method": method, "tasks": ["a", "b", "c"], "scores": scores, "AR": ar, "FWT": fwt, "BWT": bwt,
               "wall_seconds": wall}
    (d / "results.json").write_text(json.dumps(results))
    (d / "config.yaml").write_text(yaml.safe_dump({"method": {"name": method, **(cfg_method or {})}}))
    return d


def test_seen_task_curve_by_hand():
    assert seen_average(MATRIX_A) == pytest.approx([50.0, 50.0, 145 / 3])
    assert seen_average(MATRIX_B) == pytest.approx([80.0, 80.0, 175 / 3])
    # a missing score (mtl's rows in between) leaves a gap, not a made-up mean
    assert seen_average([[1, 2], [None, None], [3, 5]]) == [None, 4.0]
    assert seen_average([[1, 2], [7, None], [3, None]]) == [7.0, None]


def test_report_table_columns_are_each_runs_own_ar_fwt_bwt(tmp_path):
    a = _write_run(tmp_path / "a", "sequential", MATRIX_A, 145 / 3, 29.0, -17.5, 120)
    b = _write_run(tmp_path / "b", "replay", MATRIX_B, 175 / 3, 12.5, -2.25, 330,
                   {"selection": "kmeans", "per_task": 4})
    md = build_report([a, b], tmp_path / "report").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in md.splitlines() if line.startswith("| ") and "min |" in line}
    assert rows == {"sequential": ["48.33", "29.00", "-17.50", "2.0 min"],
                    "replay (kmeans, 4/task)": ["58.33", "12.50", "-2.25", "5.5 min"]}
    assert (tmp_path / "report" / "seen_average.png").stat().st_size > 0
    assert (tmp_path / "report" / "report.html").exists()


def _write_sweep(out: Path, runs: dict[str, list[tuple[float | None, float | None, float | None, float]]]) -> None:
    entries = []
    for variant, values in runs.items():
        for k, (ar, fwt, bwt, wall) in enumerate(values):
            path = f"seed-{k}/{variant}"
            _write_run(out / path, variant, MATRIX_A, ar, fwt, bwt, wall)
            entries.append({"variant": variant, "order": ["a", "b", "c"], "order_label": "order-1", "seed": k, "path": path})
    entries.append({"variant": "sequential", "order": ["a", "b", "c"], "order_label": "order-1", "seed": 9,
                    "path": "seed-9/unfinished"})  # no results.json: not counted
    (out / "sweep.json").write_text(json.dumps({"variants": list(runs), "runs": entries}))


def test_sweep_summary_is_the_mean_and_sample_std_by_hand(tmp_path):
    _write_sweep(tmp_path, {
        "sequential": [(10.0, 1.0, -4.0, 60.0), (20.0, 2.0, -2.0, 120.0), (40.0, 6.0, 0.0, 180.0)],
        "mtl": [(90.0, None, None, 30.0)],
    })
    by_variant = {row["variant"]: row for row in summarize(tmp_path)}
    seq = by_variant["sequential"]
    # mean 70/3; deviations -40/3, -10/3, 50/3; sample variance (1600 + 100 + 2500) / 9 / 2 = 700/3
    assert seq["runs"] == 3
    assert seq["AR"] == pytest.approx(70 / 3) and seq["AR_std"] == pytest.approx(math.sqrt(700 / 3))
    assert seq["FWT"] == pytest.approx(3.0) and seq["FWT_std"] == pytest.approx(math.sqrt((4 + 1 + 9) / 2))
    assert seq["BWT"] == pytest.approx(-2.0) and seq["BWT_std"] == pytest.approx(2.0)
    assert seq["wall_seconds"] == pytest.approx(120.0) and seq["wall_seconds_std"] == pytest.approx(60.0)
    mtl = by_variant["mtl"]  # one run: no std; no FWT / BWT at all
    assert mtl == {"variant": "mtl", "runs": 1, "AR": 90.0, "AR_std": None, "FWT": None, "FWT_std": None,
                   "BWT": None, "BWT_std": None, "wall_seconds": 30.0, "wall_seconds_std": None, "machines": []}
    table = summary_table(list(by_variant.values())).splitlines()
    assert table[2] == "| sequential | 3 | 23.33 ± 15.28 | 3.00 ± 2.65 | -2.00 ± 2.00 | 2.00 ± 1.00 |"
    assert table[3] == "| mtl | 1 | 90.00 | – | – | 0.50 |"


def test_a_sweep_resumed_on_another_machine_has_no_mean_wall_time(tmp_path):
    """Machines of one kind differ several-fold in speed: the wall times of runs whose steps ran on
    different machines (timings.jsonl names each step's) are not averaged; the machines are listed."""
    _write_sweep(tmp_path, {"sequential": [(10.0, 1.0, -4.0, 60.0), (20.0, 2.0, -2.0, 120.0)],
                            "mtl": [(90.0, None, None, 30.0), (80.0, None, None, 50.0)]})
    timings = {"seed-0/sequential": ["fast"], "seed-1/sequential": ["fast", None],  # None: a step timed before machines were named
               "seed-0/mtl": ["fast"], "seed-1/mtl": ["fast", "fast"]}
    for path, machines in timings.items():
        (tmp_path / path / "timings.jsonl").write_text("".join(
            json.dumps({"step": "train", "seconds": 1.0} | ({"machine": m} if m else {})) + "\n" for m in machines))
    by_variant = {row["variant"]: row for row in summarize(tmp_path)}
    seq, mtl = by_variant["sequential"], by_variant["mtl"]
    assert seq["machines"] == ["fast", "not recorded"] and seq["wall_seconds"] is None and seq["wall_seconds_std"] is None
    assert seq["AR"] == pytest.approx(15.0)  # the scores are averaged as ever
    assert mtl["machines"] == ["fast"] and mtl["wall_seconds"] == pytest.approx(40.0)
    table = summary_table([seq, mtl]).splitlines()
    assert table[2] == "| sequential | 2 | 15.00 ± 7.07 | 1.50 ± 0.71 | -3.00 ± 1.41 | – (runs on 2 machines) |"
    assert table[3] == "| mtl | 2 | 85.00 ± 7.07 | – | – | 0.67 ± 0.24 |"


def test_format_mean_std():
    assert format_mean_std(None) == "–" and format_mean_std(None, 1.0) == "–"
    assert format_mean_std(1.234) == "1.23" and format_mean_std(1.236, 0.5) == "1.24 ± 0.50"


def test_run_label_names_selection_size_and_regulariser():
    from ssr.report import run_label

    # by hand from each config: replay's size is per_task, else its ratio (default 10 %); a
    # regulariser is added to a rehearsal method, never repeated for l2 / ewc themselves
    assert run_label({"method": "replay"}, "method: {name: replay}") == "replay (random, 10%)"
    assert run_label({"method": "replay"}, "method: {name: replay, ratio: 0.01, selection: kmeans}") == "replay (kmeans, 1%)"
    assert run_label({"method": "replay"}, "method: {name: replay, per_task: 7}") == "replay (random, 7/task)"
    assert run_label({"method": "ssr"}, "method: {name: ssr, regularizer: ewc}") == "ssr + ewc"
    assert run_label({"method": "ssr"}, "method: {name: ssr, regularizer: none}") == "ssr"
    assert run_label({"method": "ewc"}, "method: {name: ewc, regularizer: ewc}") == "ewc"
    assert run_label({"method": "l2"}, "method: {name: l2, regularizer: l2}") == "l2"


def test_seen_task_curve_counts_learnt_columns_from_the_start():
    # one learnt column (stage 0) then two trained tasks: after stage 1 the learnt task and the
    # first trained one are seen, (4 + 8) / 2 = 6; after stage 2 all three, (1 + 2 + 9) / 3 = 4
    assert seen_average([[0, 0, 0], [4, 8, 100], [1, 2, 9]], learnt=1) == pytest.approx([6.0, 4.0])


def test_summary_table_header_two_runs_and_missing_values(tmp_path):
    from ssr.report import run_label

    _write_sweep(tmp_path, {"replay": [(10.0, 1.0, -1.0, 60.0), (14.0, 3.0, -5.0, 180.0)]})
    (row,) = summarize(tmp_path)
    # two runs: the sample std is |a - b| / sqrt(2)
    assert row["AR_std"] == pytest.approx(4 / math.sqrt(2)) and row["wall_seconds_std"] == pytest.approx(120 / math.sqrt(2))
    table = summary_table([row, {"variant": "x", "runs": 0, "AR": None, "AR_std": None, "FWT": None, "FWT_std": None,
                                 "BWT": None, "BWT_std": None, "wall_seconds": None, "wall_seconds_std": None}]).splitlines()
    assert table[:2] == ["| method | runs | AR | FWT | BWT | wall time (min) |", "|---|---:|---:|---:|---:|---:|"]
    assert table[3] == "| x | 0 | – | – | – | – |"
    assert run_label({"method": "sequential"}, "seed: 1") == "sequential"  # a config without a method block
