"""Finished benchmark runs kept in the repository, so that a benchmark of many hours spans sessions.

A run directory under `runs/` is lost with the work tree (the weights it holds are too large to
commit anyway). When a benchmark run finishes, its *record* is written beside the benchmark, in
`benchmarks/records/<benchmark>/<order>/<seed>/<variant>/`: everything the tables, the paired
differences and the report read (config, results, timings, log, training statistics, general
scores, the per-row scores of every evaluation, SSR's rehearsed sets and synthetic-data statistics
and quality figures), and none of the weights. A later invocation in any checkout skips a run whose
record was made with the same config (file paths compared relative to `data.dir`, so the checkout's
location does not matter), and reads the record where the run directory is absent.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import yaml

from ssr.compare import row_key
from ssr.config import RunConfig, diff, to_dict, with_legacy_defaults
from ssr.io import write_text
from ssr.runner import resolve_settings

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "benchmarks" / "records"
MARKER = "record.json"
KEPT = ("config.yaml", "results.json", "timings.jsonl", "run.log", "stages/*/train_stats.json", "stages/*/general.json",
        "rehearsal/*.jsonl", "synthetic/*.stats.json", "synthetic/*.quality.json")
PREDICTION_FIELDS = ("id_sha256", "rougeL", "exact_match")
"""Of each prediction row: what pairing and scoring read, the id as its digest (`compare.row_key`).
Not the answer text, nor the data set's own ids: answers often repeat their input (a
question-generation answer quotes its passage), and the data set is read by path, never copied
into the repository."""


def is_record(run_dir: Path) -> bool:
    return (run_dir / MARKER).exists()


def save_record(run_dir: Path, record_dir: Path) -> Path:
    """Write the record of the finished run `run_dir` into `record_dir` (replacing it whole)."""
    if not (run_dir / "results.json").exists():
        raise ValueError(f"{run_dir} has not finished (no results.json): nothing to record")
    files = sorted({p for pattern in KEPT for p in run_dir.glob(pattern) if p.is_file()})
    # SSR's rehearsed sets: synthetic/<task>.jsonl, not its prompts or every candidate
    files += sorted(p for p in run_dir.glob("synthetic/*.jsonl") if not p.stem.endswith((".candidates", ".prompts")))
    staging = record_dir.with_name(f".{record_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    for path in files:
        (staging / path.relative_to(run_dir)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, staging / path.relative_to(run_dir))
    for path in sorted(run_dir.glob("stages/*/predictions/*.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        slim = "".join(json.dumps({"id_sha256": row_key(r), "rougeL": r["rougeL"], "exact_match": r["exact_match"]}) + "\n"
                       for r in rows)
        write_text(staging / path.relative_to(run_dir), slim)
    write_text(staging / MARKER, json.dumps({
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"), "from": str(run_dir),
        "predictions": f"fields {', '.join(PREDICTION_FIELDS)} of each row; weights, training rows, prompts and "
                       "candidates are left in the run directory"}, indent=1) + "\n")
    shutil.rmtree(record_dir, ignore_errors=True)  # one rename from the complete copy: never half a record
    record_dir.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(record_dir)
    return record_dir


def _portable(config: dict) -> dict:
    """A config dict with its data paths relative to `data.dir` (a clone elsewhere names the same files)."""
    config = json.loads(json.dumps(config))
    data_dir = Path(config["data"]["dir"]) if config.get("data", {}).get("dir") else None
    if data_dir is not None:
        config["data"]["dir"] = "<data.dir>"
        for task in config.get("tasks", []):
            for key, value in task.items():
                if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_relative_to(data_dir):
                    task[key] = str(Path(value).relative_to(data_dir))
    return config


def differences(record_dir: Path, cfg: RunConfig) -> list[str]:
    """What differs between the config a record was made with and `cfg` as a run would save it
    (empty: the record is that run's result)."""
    saved = with_legacy_defaults(yaml.safe_load((record_dir / "config.yaml").read_text()))
    return diff(_portable(saved), _portable(to_dict(resolve_settings(cfg))))
