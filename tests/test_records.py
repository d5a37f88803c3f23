"""Benchmark records (benchmarks/records.py): a finished run kept in the repository without its
weights must give the tables, the paired differences and the report what the run directory gives,
and be reused only for the same config, wherever the checkout lies."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from ssr.compare import metric_terms, paired_difference
from ssr.config import load_config
from ssr.report import build_report
from ssr.runner import wall_seconds
from ssr.synthesis.quality import load_or_compute

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality  # noqa: E402
import records  # noqa: E402


@pytest.fixture(scope="module")
def recorded(ssr_run, tmp_path_factory):
    run_dir, raw = ssr_run
    return run_dir, raw, records.save_record(run_dir, tmp_path_factory.mktemp("records") / "order-1" / "seed-7" / "ssr")


def test_a_record_has_the_run_s_figures_and_no_weights(recorded):
    run_dir, _, record = recorded
    assert json.loads((record / "results.json").read_text()) == json.loads((run_dir / "results.json").read_text())
    for metric in ("AR", "FWT", "BWT"):  # every per-row term the paired differences read
        assert metric_terms(record, metric) == metric_terms(run_dir, metric)
    assert wall_seconds(record) == wall_seconds(run_dir) > 0
    assert load_or_compute(record, compute=False) == load_or_compute(run_dir, compute=False) != {}
    rehearsed = sorted(p.name for p in (run_dir / "synthetic").glob("*.jsonl") if p.name.count(".") == 1)
    assert rehearsed and sorted(p.name for p in (record / "synthetic").glob("*.jsonl")) == rehearsed
    assert not [p for p in record.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt") or p.name == "adapter"]
    assert list(run_dir.rglob("*.safetensors"))  # there were weights to leave out


def test_a_record_keeps_each_prediction_s_scores_but_not_its_text(recorded):
    run_dir, _, record = recorded
    live = sorted(run_dir.glob("stages/*/predictions/*.jsonl"))
    assert [p.relative_to(run_dir) for p in live] == [p.relative_to(record) for p in sorted(record.glob("stages/*/predictions/*.jsonl"))]
    for path in live:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        kept = [json.loads(line) for line in (record / path.relative_to(run_dir)).read_text().splitlines()]
        assert kept == [{"id_sha256": hashlib.sha256(r["id"].encode()).hexdigest()[:16], "rougeL": r["rougeL"],
                         "exact_match": r["exact_match"]} for r in rows]


def test_a_record_pairs_with_a_live_run_as_the_run_itself_does(recorded):
    run_dir, _, record = recorded
    assert paired_difference(record, run_dir, "BWT") == (0.0, 0.0)
    assert paired_difference(record, run_dir, "AR") == paired_difference(run_dir, run_dir, "AR")


def test_the_report_reads_a_record_as_it_reads_the_run(recorded, tmp_path):
    run_dir, _, record = recorded
    reports = [build_report([d], tmp_path / name, compute_quality=False).read_text() for d, name in ((run_dir, "live"), (record, "kept"))]
    results = json.loads((run_dir / "results.json").read_text())
    assert f"| {results['AR']:.2f} |" in reports[1] and "synthetic" in reports[1].lower()
    assert reports[1].replace(str(record), "RUN") == reports[0].replace(str(run_dir), "RUN")


def test_a_record_is_reused_only_for_the_same_config_wherever_the_data_lies(recorded, task_dir, tmp_path):
    _, raw, record = recorded
    assert records.differences(record, load_config(None, raw=raw)) == []
    moved = copy.deepcopy(raw)  # the same files in another checkout
    moved["data"]["dir"] = str(shutil.copytree(task_dir, tmp_path / "elsewhere" / "data"))
    assert records.differences(record, load_config(None, raw=moved)) == []
    changed = copy.deepcopy(raw)
    changed["train"]["lr"] = 2e-3
    changed["tasks"][0]["eval"] = "upper.eval.jsonl"
    assert records.differences(record, load_config(None, raw=changed)) == [
        "tasks.0.eval: 'reverse.eval.jsonl' -> 'upper.eval.jsonl'", "train.lr: 0.001 -> 0.002"]


QUOTE = 40
"""How many characters in a row of the data set make a quote (the records' bound, by hand)."""


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _json_strings(name: str, text: str) -> list[str]:
    """The strings a .json or .jsonl file named `name` holds, decoded (JSON escapes would hide a quote)."""
    lines = [text] if name.endswith(".json") else [line for line in text.splitlines() if line.strip()]
    return [s for line in lines for s in _strings(json.loads(line))]


def _text_of(record: Path) -> str:
    """Every string a record's JSON files hold, decoded."""
    return "\n".join(s for path in record.rglob("*.json*") for s in _json_strings(path.name, path.read_text()))


def test_a_record_holds_no_text_of_the_task_data_and_withholds_generated_quotes(recorded, task_dir, tmp_path):
    """The data set is read by path, never copied: a record of an SSR run whose synthetic rows and
    quality examples quote a demonstration (planted) keeps the rest of those rows, withholds the
    quoting strings, and holds no 40-character piece of any definition, demo or training row."""
    run_dir, _, _ = recorded
    planted = tmp_path / "run"
    shutil.copytree(run_dir, planted, ignore=shutil.ignore_patterns("*.safetensors"))
    demo = json.loads((task_dir / "reverse.demos.jsonl").read_text().splitlines()[0])
    quote = demo["full_prompt"][:44]  # the definition
    assert len(quote) == 44 and "\n" not in quote
    rehearsed = planted / "synthetic" / "reverse.jsonl"
    rows = [json.loads(line) for line in rehearsed.read_text().splitlines()]
    rows[0]["output"] = f"so: {quote}!"
    rehearsed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    quality_file = planted / "synthetic" / "reverse.quality.json"
    figures = json.loads(quality_file.read_text())
    figures["examples"]["kept"][0]["input"] = quote.upper() + quote  # a quote after other text
    quality_file.write_text(json.dumps(figures))

    record = records.save_record(planted, tmp_path / "record")
    kept = [json.loads(line) for line in (record / "synthetic" / "reverse.jsonl").read_text().splitlines()]
    assert kept[0]["output"] == records.WITHHELD and kept[0]["input"] == rows[0]["input"]
    assert kept[1:] == [{k: v for k, v in r.items() if k not in ("definition", "demo_ids")} for r in rows[1:]]
    assert "definition" in rows[1] and "demo_ids" in rows[1]
    assert json.loads((record / "synthetic" / "reverse.quality.json").read_text())["examples"]["kept"][0]["input"] == records.WITHHELD

    real = [json.loads(line) for path in task_dir.glob("*.jsonl") for line in path.read_text().splitlines()]
    assert real and _quotes({"record": _text_of(record)}, real) == {}


def test_a_record_names_replayed_rows_by_their_id_s_digest_alone(tmp_path):
    run_dir = tmp_path / "run"
    rows = [{"task": "qa", "source": "replay", "id": f"task-{k}", "definition": "Answer the question below, "
             "in a few words taken from the passage.", "input": f"passage {k}", "output": f"answer {k}"} for k in range(3)]
    (run_dir / "rehearsal").mkdir(parents=True)
    (run_dir / "rehearsal" / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "results.json").write_text("{}")
    record = records.save_record(run_dir, tmp_path / "record")
    assert [json.loads(line) for line in (record / "rehearsal" / "qa.jsonl").read_text().splitlines()] == [
        {"id_sha256": hashlib.sha256(f"task-{k}".encode()).hexdigest()[:16], "task": "qa", "source": "replay"} for k in range(3)]


def test_recording_again_replaces_the_record_whole(recorded, tmp_path):
    run_dir, _, _ = recorded
    target = tmp_path / "r"
    records.save_record(run_dir, target)
    (target / "stale.json").write_text("{}")
    records.save_record(run_dir, target)
    assert not (target / "stale.json").exists() and (target / "results.json").exists()
    assert not list(tmp_path.glob(".*partial"))
    with pytest.raises(ValueError, match="has not finished"):
        records.save_record(tmp_path / "nothing", tmp_path / "r2")


def test_the_benchmark_reads_a_run_directory_before_its_record(tmp_path):
    out, kept = tmp_path / "runs", tmp_path / "records"
    for root, variants in ((kept, ("sequential", "ssr")), (out, ("ssr",))):
        for v in variants:
            (root / "order-2" / "seed-42" / v).mkdir(parents=True)
            (root / "order-2" / "seed-42" / v / "results.json").write_text("{}")
    assert quality.collect(out, kept) == {"sequential": {(2, 42): kept / "order-2" / "seed-42" / "sequential"},
                                          "ssr": {(2, 42): out / "order-2" / "seed-42" / "ssr"}}


BENCH_DATA = quality.ROOT.parent / "shared" / "data" / "superni"  # where configs/bench-superni.yaml reads it


@pytest.mark.skipif(not (BENCH_DATA / "qa.eval.jsonl").exists(),
                    reason=f"configs/bench-superni.yaml reads the SuperNI split at {BENCH_DATA}, absent here")
def test_the_benchmark_runs_only_what_no_record_of_the_same_config_holds(tmp_path):
    from ssr.config import to_yaml
    from ssr.runner import resolve_settings

    out, kept, said = tmp_path / "runs", tmp_path / "records", []
    variants = ["sequential", "ssr", "l2"]
    planned = {r.variant: (r, cfg) for r, cfg in quality.plan_sweep(
        quality.CONFIG, variants, [quality.PAPER_ORDERS[3]], None, out, [], ["order-3"])}
    for variant in ("sequential", "l2"):
        sweep_run, cfg = planned[variant]
        record = kept / sweep_run.path.relative_to(out)
        record.mkdir(parents=True)
        (record / "results.json").write_text("{}")
        (record / "config.yaml").write_text(to_yaml(resolve_settings(cfg)))
    assert quality.unrecorded(variants, out, 3, None, [], records=kept, echo=said.append) == ["ssr"]
    assert said == []
    assert quality.unrecorded(variants, out, 3, None, ["train.lr=2e-3"], records=kept, echo=said.append) == variants
    assert len(said) == 2 and all("made with another config (train.lr: 0.001 -> 0.002): running it anew" in s for s in said)
    planned["l2"][0].path.mkdir(parents=True)  # a run directory of its own (e.g. interrupted): it resumes there
    assert quality.unrecorded(variants, out, 3, None, [], records=kept, echo=said.append) == ["ssr", "l2"]


@pytest.mark.skipif(not (BENCH_DATA / "qa.eval.jsonl").exists(),
                    reason=f"configs/bench-superni.yaml reads the SuperNI split at {BENCH_DATA}, absent here")
def test_the_benchmark_section_is_written_from_records_alone(recorded, tmp_path):
    """BENCHMARKS.md's section from a checkout that has only records (no runs/): a row per method
    with the run's figures, its synthetic-data rows, and where the records lie."""
    run_dir, _, record = recorded
    kept = tmp_path / "records"
    shutil.copytree(record, kept / "order-1" / "seed-7" / "ssr")
    text = quality.section(tmp_path / "no-runs", "python benchmarks/quality.py --report-only", "now", [], records=kept)
    results = json.loads((run_dir / "results.json").read_text())
    row = next(line for line in text.splitlines() if line.startswith("| SSR | "))
    assert f"| {results['AR']:.2f} |" in row and f"| {results['BWT']:.2f} |" in row
    assert f"record (no weights) in `{kept}/`" in text
    assert "| SSR, o1 | reverse |" in text  # the synthetic-data table, from the record's quality files


@pytest.mark.skipif(not (BENCH_DATA / "qa.eval.jsonl").exists(),
                    reason=f"configs/bench-superni.yaml reads the SuperNI split at {BENCH_DATA}, absent here")
def test_the_benchmark_section_never_mixes_the_wall_times_of_two_machines(recorded, tmp_path):
    """Machines of one kind differ several-fold in speed: each run's wall time is shown with the
    machine its steps ran on (from its timings), never averaged with another machine's, and the
    machines are listed with their runs. A run timed before timings named their machine is '?',
    a run resumed on a second machine carries both marks."""
    _, _, record = recorded
    kept = tmp_path / "records"
    order_1, order_3 = kept / "order-1" / "seed-7" / "ssr", kept / "order-3" / "seed-7" / "ssr"
    steps = [json.loads(line) for line in (record / "timings.jsonl").read_text().splitlines()]
    # order 3's run took three times as long, on two machines (resumed)
    for target, machines, scale in ((order_1, [None] * len(steps), 1),
                                    (order_3, ["Machine Y"] + ["Machine X"] * (len(steps) - 1), 3)):
        shutil.copytree(record, target)
        (target / "timings.jsonl").write_text("".join(
            json.dumps({"step": s["step"], "seconds": s["seconds"] * scale} | ({"machine": m} if m else {})) + "\n"
            for s, m in zip(steps, machines)))
    text = quality.section(tmp_path / "no-runs", "python benchmarks/quality.py --report-only", "now", [], records=kept)
    minutes = sum(s["seconds"] for s in steps) / 60
    row = next(line for line in text.splitlines() if line.startswith("| SSR | "))
    assert f"| o1 {minutes:.1f} [?], o3 {3 * minutes:.1f} [A+B] |" in row
    assert "[A] Machine X: 1 run, " in text and "[B] Machine Y: 1 run, " in text
    assert "[?] not recorded (timed before timings named their machine" in text


def _quotes(texts: dict[str, str], rows: list[dict]) -> dict[tuple[str, str], str]:
    """(file, field) -> a `QUOTE`-character piece of a data row's field found in that file's text.
    Any common piece of 40 holds a piece of 20 that starts at a multiple of 20 in the field: look
    those up among every 20-character piece of the files, then check the 40 around each hit."""
    pieces_20, pieces_40 = set(), {}
    for name, text in texts.items():
        pieces_20.update(hash(text[i:i + 20]) for i in range(len(text) - 19))
        for i in range(len(text) - QUOTE + 1):
            pieces_40.setdefault(hash(text[i:i + QUOTE]), name)
    found = {}
    for row in rows:
        for field, value in row.items():
            if not isinstance(value, str):
                continue
            for m in range(0, len(value) - QUOTE + 1, 20):
                if hash(value[m:m + 20]) in pieces_20:
                    for a in range(max(0, m - 19), min(m, len(value) - QUOTE) + 1):
                        if (name := pieces_40.get(hash(value[a:a + QUOTE]))) is not None:
                            found.setdefault((name, field), value[a:a + QUOTE])
    return found


def _tracked_texts() -> dict[str, str]:
    """Every tracked text file, and the strings of its JSON decoded (escapes would hide a quote)."""
    import subprocess

    listed = subprocess.run(["git", "ls-files", "-z"], cwd=quality.ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout ({listed.stderr.strip()}): no tracked files to scan")
    texts = {}
    for name in filter(None, listed.stdout.split("\0")):
        try:
            text = (quality.ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        if name.endswith((".json", ".jsonl")):
            try:
                text += "\n" + "\n".join(_json_strings(name, text))
            except json.JSONDecodeError:
                pass
        texts[name] = text
    return texts


def test_the_quote_finder_finds_a_planted_quote_at_any_offset():
    row = {"id": "task9-0123456789abcdef0123456789abcdef0123", "input": "".join(chr(97 + i % 26) * (1 + i % 3) for i in range(90))}
    for start in (0, 7, 19, 20, 33, len(row["input"]) - QUOTE):
        piece = row["input"][start:start + QUOTE]
        assert _quotes({"a.md": f"text around it: {piece} and on"}, [row]) == {("a.md", "input"): piece}, start
        assert _quotes({"a.md": f"only {piece[:-1]} of it"}, [row]) == {}, start
    assert _quotes({"r.json": json.dumps({"x": row["id"]})}, [row]) == {("r.json", "id"): row["id"][:QUOTE]}


@pytest.mark.skipif(not BENCH_DATA.is_dir(), reason=f"the shared SuperNI split is absent at {BENCH_DATA}")
def test_no_tracked_file_quotes_the_shared_data_set():
    """The data set is read by path, never copied into the repository: no tracked file (records,
    BENCHMARKS.md, tests, configs) holds 40 characters in a row of any field of any of its rows
    (ids, inputs, outputs, prompts), nor in the JSON-decoded strings of a record."""
    rows = [json.loads(line) for path in sorted(BENCH_DATA.glob("*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert rows
    assert _quotes(_tracked_texts(), rows) == {}


def test_a_killed_benchmark_still_runs_its_finally(tmp_path):
    """`kill` (SIGTERM) on `benchmarks/quality.py` must record the runs that finished, as Ctrl-C
    does: the handler turns it into an exit that runs `finally` blocks (Python's default does not)."""
    import signal
    import subprocess

    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); import quality\n"
         "quality.exit_on_sigterm()\ntry:\n    print('ready', flush=True); time.sleep(60)\n"
         "finally:\n    open(sys.argv[2], 'w').write('recorded')", str(Path(quality.__file__).parent), str(tmp_path / "done")],
        stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM
    assert (tmp_path / "done").read_text() == "recorded"
