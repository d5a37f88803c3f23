"""Finished benchmark runs kept in the repository, so that a benchmark of many hours spans sessions.

A run directory under `runs/` is lost with the work tree (the weights it holds are too large to
commit anyway). When a benchmark run finishes, its *record* is written beside the benchmark, in
`benchmarks/records/<benchmark>/<order>/<seed>/<variant>/`: everything the tables, the paired
differences and the report read (config, results, timings, log, training statistics, general
scores, the per-row scores of every evaluation, SSR's rehearsed sets and synthetic-data statistics
and quality figures), and none of the weights. The data set is read by path, never copied into the
repository: a record names real rows by the digest of their id (predictions, replayed rows), leaves
out task definitions and demonstration ids, and withholds any generated text that quotes the task
data the model saw (`QUOTE_CHARS` characters in a row of a definition, a demonstration or a
training row). A later invocation in any checkout skips a run whose
record was made with the same config (file paths compared relative to `data.dir`, so the checkout's
location does not matter), and reads the record where the run directory is absent.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import yaml

from ssr.compare import id_digest, row_key
from ssr.config import RunConfig, diff, to_dict, with_legacy_defaults
from ssr.io import read_jsonl, write_text
from ssr.runner import resolve_settings

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "benchmarks" / "records"
MARKER = "record.json"
KEPT = ("config.yaml", "results.json", "timings.jsonl", "run.log", "stages/*/train_stats.json", "stages/*/general.json",
        "synthetic/*.stats.json")
PREDICTION_FIELDS = ("id_sha256", "rougeL", "exact_match")
"""Of each prediction row: what pairing and scoring read, the id as its digest (`compare.row_key`).
Not the answer text, nor the data set's own ids: answers often repeat their input (a
question-generation answer quotes its passage), and the data set is read by path, never copied
into the repository."""
SYNTHETIC_DROPPED = ("definition", "demo_ids")
"""Of each rehearsed synthetic row: fields that are the data set's own text or ids."""
QUOTE_CHARS = 40
WITHHELD = "[withheld: quotes the task data]"


def is_record(run_dir: Path) -> bool:
    return (run_dir / MARKER).exists()


def save_record(run_dir: Path, record_dir: Path) -> Path:
    """Write the record of the finished run `run_dir` into `record_dir` (replacing it whole)."""
    if not (run_dir / "results.json").exists():
        raise ValueError(f"{run_dir} has not finished (no results.json): nothing to record")
    files = sorted({p for pattern in KEPT for p in run_dir.glob(pattern) if p.is_file()})
    staging = record_dir.with_name(f".{record_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    for path in files:
        (staging / path.relative_to(run_dir)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, staging / path.relative_to(run_dir))

    def write_rows(path: Path, slim) -> None:
        write_text(staging / path.relative_to(run_dir), "".join(json.dumps(slim(r)) + "\n" for r in read_jsonl(path)))

    for path in sorted(run_dir.glob("stages/*/predictions/*.jsonl")):
        write_rows(path, lambda r: {"id_sha256": row_key(r), "rougeL": r["rougeL"], "exact_match": r["exact_match"]})
    for path in sorted(run_dir.glob("rehearsal/*.jsonl")):  # replayed real rows: which they were, not their text
        write_rows(path, lambda r: {"id_sha256": id_digest(r["id"]), "task": r["task"], "source": r["source"]})
    generated = sorted(run_dir.glob("synthetic/*.quality.json"))
    # SSR's rehearsed sets: synthetic/<task>.jsonl, not its prompts or every candidate
    rehearsed = sorted(p for p in run_dir.glob("synthetic/*.jsonl") if not p.stem.endswith((".candidates", ".prompts")))
    if generated or rehearsed:
        quotes = quoted_text(run_dir)
        for path in rehearsed:
            write_rows(path, lambda r: withhold_quotes({k: v for k, v in r.items() if k not in SYNTHETIC_DROPPED}, quotes))
        for path in generated:
            write_text(staging / path.relative_to(run_dir),
                       json.dumps(withhold_quotes(json.loads(path.read_text(encoding="utf-8")), quotes), indent=1) + "\n")
    write_text(staging / MARKER, json.dumps({
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"), "from": str(run_dir),
        "predictions": f"fields {', '.join(PREDICTION_FIELDS)} of each row; weights, training rows, prompts and "
                       "candidates are left in the run directory",
        "rehearsal": "replayed real rows by their id's digest; synthetic rows without definitions or demo ids, "
                     f"a string quoting {QUOTE_CHARS} characters of the task data replaced by {WITHHELD!r}"}, indent=1) + "\n")
    shutil.rmtree(record_dir, ignore_errors=True)  # one rename from the complete copy: never half a record
    record_dir.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(record_dir)
    return record_dir


def quoted_text(run_dir: Path) -> set[str]:
    """Every `QUOTE_CHARS`-character piece of the task data the run's model saw: definitions,
    demonstrations and training rows (inputs, outputs and ids) of every task in its config."""
    from ssr.config import load_config
    from ssr.data import load_task

    cfg = load_config(run_dir / "config.yaml")
    pieces: set[str] = set()
    for t in cfg.tasks:
        task = load_task(t, cfg.data, cfg.method.n_demos, cfg.eval.max_examples, cfg.eval.max_new_tokens, cfg.seed)
        # a set: every instance of a task repeats its definition
        texts = {task.definition} | {text for inst in task.demos + task.train
                                     for text in (inst.id, inst.definition, inst.input, inst.output)}
        for text in texts:
            pieces.update(text[i:i + QUOTE_CHARS] for i in range(len(text) - QUOTE_CHARS + 1))
    return pieces


def withhold_quotes(value, quotes: set[str]):
    """`value` (JSON) with every string that holds a piece of `quotes` replaced by `WITHHELD`."""
    if isinstance(value, dict):
        return {k: withhold_quotes(v, quotes) for k, v in value.items()}
    if isinstance(value, list):
        return [withhold_quotes(v, quotes) for v in value]
    if isinstance(value, str) and any(value[i:i + QUOTE_CHARS] in quotes for i in range(len(value) - QUOTE_CHARS + 1)):
        return WITHHELD
    return value


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
