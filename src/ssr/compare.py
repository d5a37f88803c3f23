"""Two runs compared over the same evaluation rows: the difference of AR, BWT or FWT, and its
standard error.

Two methods evaluated on the same rows differ less noisily than their two scores do: row by row,
most of the difficulty is shared. For each task, the per-row difference of the metric's term
(e.g. `a_T(t, r)` for AR, `a_T(t, r) - a_t(t, r)` for BWT) has a mean and a sample variance; the
metric is a mean over tasks, so its difference is the mean of the task means, with standard
error `sqrt(sum_t var_t / n_t) / K` (tasks independent, rows within a task independent).
Scores are ROUGE-L x 100, as in the score matrix; rows are read from each stage's
`predictions/<task>.jsonl`.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path
from typing import Literal

from ssr.errors import SSRError

Metric = Literal["AR", "BWT", "FWT"]


def stage_dirs(run_dir: Path) -> list[Path]:
    """`stages/<k>-<name>` of a run in stage order (index 0 = the base model)."""
    if not (Path(run_dir) / "stages").is_dir():
        raise SSRError(f"{run_dir}: not a run directory (no stages/ folder)")
    found = [d for d in (Path(run_dir) / "stages").iterdir() if d.is_dir() and d.name.split("-")[0].isdigit()]
    return sorted(found, key=lambda d: int(d.name.split("-")[0]))


def row_scores(stage_dir: Path, task: str) -> tuple[list[str], list[float]]:
    """Row ids and ROUGE-L x 100 of one task's predictions after one stage."""
    path = stage_dir / "predictions" / f"{task}.jsonl"
    if not path.exists():
        raise SSRError(f"{path}: no predictions of {task} after this stage (was it evaluated? "
                       "`eval.schedule: metrics` evaluates only what AR / FWT / BWT read)")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row_key(r) for r in rows], [100 * r["rougeL"] for r in rows]


def id_digest(row_id: str) -> str:
    """A data row's id as a short sha256: what pairs rows, without repeating the data set's ids."""
    return hashlib.sha256(row_id.encode("utf-8")).hexdigest()[:16]


def row_key(row: dict) -> str:
    """What pairs a prediction row across runs: its id's digest (a bench record keeps only that)."""
    return row["id_sha256"] if "id_sha256" in row else id_digest(row["id"])


def trained_tasks(run_dir: Path, stages: list[Path]) -> list[str]:
    """The tasks AR / FWT / BWT average over: the run's tasks less those learnt before stage 1
    (from results.json), else one per stage after the base."""
    results = Path(run_dir) / "results.json"
    if results.exists():
        r = json.loads(results.read_text(encoding="utf-8"))
        return list(r["tasks"][len(r.get("learnt") or {}):])
    return [d.name.split("-", 1)[1] for d in stages[1:]]


def metric_terms(run_dir: Path, metric: Metric) -> dict[str, tuple[list[str], list[float]]]:
    """task -> (row ids, per-row term) whose mean over rows, then over tasks, is the run's metric."""
    stages = stage_dirs(run_dir)
    trained = trained_tasks(run_dir, stages)
    last = stages[-1]
    if metric == "AR":
        return {task: row_scores(last, task) for task in trained}
    if [d.name.split("-", 1)[1] for d in stages[1:]] != trained:  # e.g. mtl: one stage for every task
        raise SSRError(f"{run_dir}: {metric} needs one stage per task; its stages are "
                       f"{', '.join(d.name for d in stages)}")
    terms: dict[str, tuple[list[str], list[float]]] = {}
    for i, task in enumerate(trained, 1):  # task i is learnt in stage i
        if metric == "BWT" and i < len(trained):
            ids, final = row_scores(last, task)
            ids_then, then = row_scores(stages[i], task)
            if ids != ids_then:
                raise SSRError(f"{run_dir}: {task} was evaluated on different rows after stages {i} and {len(trained)}")
            terms[task] = (ids, [f - t for f, t in zip(final, then)])
        elif metric == "FWT" and i > 1:
            terms[task] = row_scores(stages[i - 1], task)
    return terms


def paired_difference(run_a: str | Path, run_b: str | Path, metric: Metric = "AR") -> tuple[float, float]:
    """`metric` of run a minus that of run b, and its standard error, pairing the same evaluation rows.

    Both runs must have learnt the same tasks in the same order and been evaluated on the same rows.
    """
    a, b = metric_terms(Path(run_a), metric), metric_terms(Path(run_b), metric)
    if list(a) != list(b):
        raise SSRError(f"{run_a} and {run_b} learnt different task sequences ({', '.join(a)} vs {', '.join(b)})")
    if not a:
        raise SSRError(f"{run_a}: {metric} needs at least two stages")
    means, variances = [], []
    for task, terms in a.items():
        mean, variance = _paired_rows(task, terms, b[task], run_a, run_b)
        means.append(mean)
        variances.append(variance)
    return statistics.fmean(means), math.sqrt(sum(variances)) / len(means)


def final_task_difference(run_a: str | Path, run_b: str | Path, task: str) -> tuple[float, float]:
    """`task`'s ROUGE-L x 100 after run a's last stage minus after run b's, and its standard
    error, pairing the same evaluation rows (e.g. a learnt task, which AR leaves out)."""
    a = row_scores(stage_dirs(Path(run_a))[-1], task)
    b = row_scores(stage_dirs(Path(run_b))[-1], task)
    mean, variance = _paired_rows(task, a, b, run_a, run_b)
    return mean, math.sqrt(variance)


def _paired_rows(task: str, a: tuple[list[str], list[float]], b: tuple[list[str], list[float]],
                 run_a: str | Path, run_b: str | Path) -> tuple[float, float]:
    """Mean per-row difference a − b of one task's values and the variance of that mean."""
    (ids_a, terms_a), (ids_b, terms_b) = a, b
    if ids_a != ids_b:
        raise SSRError(f"{task}: {run_a} and {run_b} were evaluated on different rows; a paired difference needs the same rows")
    diffs = [x - y for x, y in zip(terms_a, terms_b)]
    return statistics.fmean(diffs), statistics.variance(diffs) / len(diffs) if len(diffs) > 1 else 0.0


__all__ = ["Metric", "stage_dirs", "row_scores", "trained_tasks", "metric_terms", "paired_difference", "final_task_difference"]
