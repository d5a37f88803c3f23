"""`ssr sweep`: variants x orders x seeds as cached runs, shared stage 1, mean ± std; and the
metrics-only evaluation schedule, which must give the same AR / FWT / BWT as the full matrix."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from ssr.cli import main
from ssr.config import load_config
from ssr.errors import ConfigError
from ssr.runner import run
from ssr.sweep import run_sweep, summarize


def _config_file(task_dir, model_dir, path, **eval_opts):
    raw = tiny_config(task_dir, model_dir)
    raw["eval"].update(eval_opts)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sweep_runs_every_combination_once_and_summarises(task_dir, tiny_model_dir, tmp_path, capsys):
    config = _config_file(task_dir, tiny_model_dir, tmp_path / "c.yaml", schedule="metrics")
    out = tmp_path / "sweep"
    args = ["sweep", str(config), "-o", str(out), "--methods", "replay-random-1,sequential",
            "--order", "reverse,upper,count", "--order", "count,upper,reverse", "--seeds", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    sweep = json.loads((out / "sweep.json").read_text())
    assert [(r["variant"], r["order"][0]) for r in sweep["runs"]] == [  # the later one reuses the first's stage 1
        ("replay-random-1", "reverse"), ("sequential", "reverse"), ("replay-random-1", "count"), ("sequential", "count")]
    for r in sweep["runs"]:
        results = json.loads((out / r["path"] / "results.json").read_text())
        assert results["tasks"] == r["order"] and results["BWT"] is not None
        saved = yaml.safe_load((out / r["path"] / "config.yaml").read_text())
        assert saved["seed"] == 3 and saved["method"]["ratio"] == (0.01 if r["variant"] != "sequential" else None)
    sequential, replay = (out / "order-1" / "seed-3" / v for v in ("sequential", "replay-random-1"))
    assert any("shared_from" in json.loads(line) for line in (sequential / "timings.jsonl").read_text().splitlines())
    rows = [json.loads(x) for x in (replay / "stages" / "2-upper" / "train.jsonl").read_text().splitlines()]
    assert sum(r["source"] == "replay" for r in rows) == 1  # 1 % of 12 rows, at least one
    summary = {row["variant"]: row for row in json.loads((out / "summary.json").read_text())}
    assert summary["sequential"]["runs"] == 2 and summary["sequential"]["AR_std"] is not None
    assert "| sequential | 2 |" in (out / "summary.md").read_text() and "±" in printed
    before = (sequential / "timings.jsonl").read_text()
    assert main(args) == 0  # everything cached: nothing recomputed
    assert (sequential / "timings.jsonl").read_text() == before
    # the summary is the mean and sample std of the runs' own figures: for two runs, (a + b) / 2 and |a - b| / sqrt(2)
    ar = [json.loads((out / "order-{}".format(k) / "seed-3" / "sequential" / "results.json").read_text())["AR"] for k in (1, 2)]
    assert summary["sequential"]["AR"] == pytest.approx(sum(ar) / 2)
    assert summary["sequential"]["AR_std"] == pytest.approx(abs(ar[0] - ar[1]) / 2 ** 0.5)
    assert summarize(out) == list(summary.values())  # and summary.json is what summarize() gives for the cached runs


def test_sweep_rejects_unknown_variants_and_orders(task_dir, tiny_model_dir, tmp_path):
    config = _config_file(task_dir, tiny_model_dir, tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="unknown method variant 'replay-5'"):
        run_sweep(config, ["replay-5"], tmp_path / "s")
    with pytest.raises(ConfigError, match="not a permutation"):
        run_sweep(config, ["sequential"], tmp_path / "s", orders=[("reverse", "upper")])
    assert main(["sweep", str(config), "-o", str(tmp_path / "s"), "--seeds", "one"]) == 2


def test_metrics_schedule_gives_the_full_matrix_metrics(task_dir, tiny_model_dir, tmp_path):
    raw = tiny_config(task_dir, tiny_model_dir)
    raw["tasks"][2]["max_new_tokens"] = 1
    full = run(load_config(None, raw=raw), tmp_path / "full")
    raw["eval"]["schedule"] = "metrics"
    lean = run(load_config(None, raw=raw), tmp_path / "lean")
    assert {k: lean[k] for k in ("AR", "FWT", "BWT")} == {k: full[k] for k in ("AR", "FWT", "BWT")}
    assert lean["scores"][1] == [full["scores"][1][0], full["scores"][1][1], None]  # task 3 not needed after stage 1
    assert lean["scores"][3] == full["scores"][3] and lean["scores"][0] == full["scores"][0]
    count = [json.loads(x) for x in (tmp_path / "lean" / "stages" / "3-count" / "predictions" / "count.jsonl").read_text().splitlines()]
    assert all(len(r["prediction"].split()) <= 1 for r in count)  # tasks[].max_new_tokens = 1


def test_order_labels_keep_a_runs_path_whatever_else_the_sweep_holds(task_dir, tiny_model_dir, tmp_path):
    """The benchmark adds orders over several invocations: a run's folder (and so its cache)
    must not move when the sweep holds one order instead of three."""
    from ssr.sweep import plan_sweep

    config = _config_file(task_dir, tiny_model_dir, tmp_path / "c.yaml")
    out = tmp_path / "bench"
    alone = plan_sweep(config, ["sequential"], [("count", "upper", "reverse")], None, out, order_labels=["order-3"])
    together = plan_sweep(config, ["sequential"], [("reverse", "upper", "count"), ("count", "upper", "reverse")], None, out,
                          order_labels=["order-1", "order-3"])
    assert alone[0][0].path == together[1][0].path == out / "order-3" / f"seed-{alone[0][1].seed}" / "sequential"
    with pytest.raises(ConfigError, match="1 order labels for 2 orders"):
        plan_sweep(config, ["sequential"], [("reverse", "upper", "count"), ("count", "upper", "reverse")], None, out,
                   order_labels=["order-1"])


def test_a_later_invocation_reuses_stage_1_of_a_run_already_on_disk(task_dir, tiny_model_dir, tmp_path):
    """The benchmark runs one method per invocation: stage 1 (plain fine-tuning on task 1) of a
    run left by an earlier invocation, same order and seed, is reused, not trained again; a run
    with another training setting is not a source."""
    config = _config_file(task_dir, tiny_model_dir, tmp_path / "c.yaml", schedule="metrics")
    out = tmp_path / "bench"
    order, labels = [("reverse", "upper", "count")], ["order-1"]
    run_sweep(config, ["sequential"], out, order, [3], echo=lambda *_: None, order_labels=labels)
    lines = []
    run_sweep(config, ["replay-random-10"], out, order, [3], echo=lines.append, order_labels=labels)
    group = out / "order-1" / "seed-3"
    timings = lambda run: [json.loads(x) for x in (group / run / "timings.jsonl").read_text().splitlines()]  # noqa: E731
    steps = timings("replay-random-10")
    assert {" ".join(s["step"].split()[:2]) for s in steps if s.get("shared_from") == str(group / "sequential")} == {
        "eval 0-base", "train 1-reverse", "eval 1-reverse"}
    assert not any(s["step"] == "train 1-reverse" and "shared_from" not in s for s in steps)
    adapter = Path("stages") / "1-reverse" / "adapter" / "adapter_model.safetensors"
    assert (group / "replay-random-10" / adapter).read_bytes() == (group / "sequential" / adapter).read_bytes()
    assert any("reused from" in line for line in lines)
    # another learning rate: another stage 1, computed afresh
    run_sweep(config, ["ewc"], out, order, [3], overrides=["train.lr=0.02"], echo=lambda *_: None, order_labels=labels)
    assert not any("shared_from" in s for s in timings("ewc"))
    # and a source is one that matches, not merely the first beside it (ewc sorts first, at another lr)
    run_sweep(config, ["l2"], out, order, [3], echo=lambda *_: None, order_labels=labels)
    assert {s.get("shared_from") for s in timings("l2") if s["step"].startswith("train 1-")} == {
        str(group / "replay-random-10")}


def _finished_source(tmp_path: Path, raw: dict) -> Path:
    """A run directory as a finished run leaves it, as far as sharing stage 1 reads it: its config,
    the base and stage-1 folders with an adapter, and its step timings."""
    from ssr.config import to_dict
    from ssr.runner import resolve_settings

    source = tmp_path / "source"
    (source / "stages" / "0-base" / "predictions").mkdir(parents=True)
    (source / "stages" / "1-reverse" / "adapter").mkdir(parents=True)
    (source / "stages" / "1-reverse" / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    (source / "config.yaml").write_text(yaml.safe_dump(to_dict(resolve_settings(load_config(None, raw=raw)))))
    steps = ["eval 0-base reverse", "train 1-reverse", "eval 1-reverse reverse", "train 2-upper", "eval 2-upper reverse"]
    (source / "timings.jsonl").write_text("".join(json.dumps({"step": s, "seconds": 1.5}) + "\n" for s in steps))
    return source


def test_stage_1_is_shared_only_from_a_matching_finished_run(task_dir, tiny_model_dir, tmp_path, caplog):
    """A source qualifies when both methods start with plain fine-tuning, the configs differ only
    in `method.*`, no task is learnt, and its stage 1 has an adapter; an unreadable source
    config is no source. Sharing copies the base and stage-1 folders and their timings, marked."""
    from ssr.runner import first_stage_shareable, share_first_stage

    raw = tiny_config(task_dir, tiny_model_dir, "sequential")
    source = _finished_source(tmp_path, raw)
    replay = load_config(None, raw=tiny_config(task_dir, tiny_model_dir, "replay", selection="random"))
    assert first_stage_shareable(source, replay)
    assert not first_stage_shareable(source, load_config(None, raw=tiny_config(task_dir, tiny_model_dir, "mtl")))
    other_lr = tiny_config(task_dir, tiny_model_dir, "replay", selection="random")
    other_lr["train"]["lr"] = 0.02
    assert not first_stage_shareable(source, load_config(None, raw=other_lr))
    learnt = tiny_config(task_dir, tiny_model_dir, "replay", selection="random")
    learnt["tasks"][0]["learnt"] = True
    assert not first_stage_shareable(source, load_config(None, raw=learnt))
    saved = (source / "config.yaml").read_text()
    for text in (saved.replace("name: sequential", "name: mtl"), "[: not yaml", "- a list\n", "seed: 7\n"):
        (source / "config.yaml").write_text(text)  # a source of another kind, unreadable, or without a method
        assert not first_stage_shareable(source, replay), text
    (source / "config.yaml").write_text(saved)
    (source / "stages" / "1-reverse" / "adapter" / "adapter_model.safetensors").unlink()
    (source / "stages" / "1-reverse" / "adapter").rmdir()
    assert not first_stage_shareable(source, replay)  # stage 1 never finished there
    (source / "stages" / "1-reverse" / "adapter").mkdir()

    target = tmp_path / "target"
    target.mkdir()
    with caplog.at_level("INFO", logger="ssr"):
        assert share_first_stage(source, replay, target)
    assert sorted(p.name for p in (target / "stages").iterdir()) == ["0-base", "1-reverse"]
    assert [json.loads(line) for line in (target / "timings.jsonl").read_text().splitlines()] == [
        {"step": s, "seconds": 1.5, "shared_from": str(source)} for s in ("eval 0-base reverse", "train 1-reverse",
                                                                          "eval 1-reverse reverse")]
    assert [r.getMessage() for r in caplog.records] == [f"reused 0-base and 1-reverse from {source}"]
    assert not share_first_stage(source, replay, target)  # the target has stages already: nothing copied


def test_wall_seconds_sums_the_recorded_steps(tmp_path):
    """A run's wall time is the sum of its timings.jsonl steps to 0.1 s (reruns append, blank lines
    are skipped); `own_only` leaves out the steps copied from another run; no file, no time."""
    from ssr.runner import wall_seconds

    assert wall_seconds(tmp_path) == 0.0 and wall_seconds(tmp_path, own_only=True) == 0.0
    steps = [{"step": "eval 0-base reverse", "seconds": 1.25, "shared_from": "/elsewhere"},
             {"step": "train 1-reverse", "seconds": 20.5, "shared_from": "/elsewhere"},
             {"step": "train 2-upper", "seconds": 7.27}, {"step": "train 2-upper", "seconds": 0.06}]
    (tmp_path / "timings.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps[:3]) + "\n" + json.dumps(steps[3]) + "\n")
    assert wall_seconds(tmp_path) == 29.1  # 29.08
    assert wall_seconds(tmp_path, own_only=True) == 7.3  # 7.33


def test_wall_time_is_split_by_the_machine_each_step_ran_on(tmp_path):
    """A resumed run's steps may have run on different machines: each machine gets its own sum,
    steps timed before timings named their machine go under None, and `own_only` still leaves
    out the steps copied from another run."""
    from ssr.runner import wall_seconds, wall_seconds_by_machine

    steps = [{"step": "eval 0-base reverse", "seconds": 1.24},  # an old line: no machine
             {"step": "train 1-reverse", "seconds": 20.5, "machine": "fast, 2 cores", "shared_from": "/elsewhere"},
             {"step": "train 2-upper", "seconds": 7.27, "machine": "slow, 2 cores"},
             {"step": "train 2-upper", "seconds": 0.06, "machine": "fast, 2 cores"}]
    (tmp_path / "timings.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    assert wall_seconds_by_machine(tmp_path) == {None: 1.2, "fast, 2 cores": 20.6, "slow, 2 cores": 7.3}  # 1.24, 20.56, 7.27
    assert wall_seconds_by_machine(tmp_path, own_only=True) == {None: 1.2, "slow, 2 cores": 7.3, "fast, 2 cores": 0.1}
    assert wall_seconds(tmp_path) == 29.1
