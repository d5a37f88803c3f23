"""SSR end to end on a tiny random-weight model over three toy tasks."""

import json
from collections import Counter

from conftest import SSR_OPTS, tiny_config
from ssr.cli import main
from ssr.config import load_config
from ssr.io import read_jsonl
from ssr.runner import run

TASKS = ["reverse", "upper", "count"]


def ssr_opts(stopping_model_dir) -> dict:
    """SSR settings for the tiny runs. The ICL model is the tiny model rewired to end its
    generations by EOS: the random tiny model almost never stops, and the cut last chunk of a
    generation that ended by length is never kept, so it would leave nothing to rehearse."""
    return {**SSR_OPTS, "icl_model": str(stopping_model_dir)}


def test_ssr_end_to_end(ssr_run, task_dir, tmp_path):
    out, _ = ssr_run
    results = json.loads((out / "results.json").read_text())
    assert len(results["scores"]) == 4 and results["BWT"] is not None

    log_text = (out / "run.log").read_text()  # what the run said it did, in its log
    # task 1 (and 2) are rehearsed in every later stage, from synthetic data only
    for i, t in enumerate(TASKS, 1):
        rows = read_jsonl(out / "stages" / f"{i}-{t}" / "train.jsonl")
        by_source = Counter((r["task"], r["source"]) for r in rows)
        assert by_source[(t, "new")] == 24
        assert {k for k in by_source if k[1] != "new"} == {(p, "synthetic") for p in TASKS[: i - 1]}
        assert "replay" not in {r["source"] for r in rows}
        # the stage's training is announced with its rows per task and source (in order of first
        # appearance), and its statistics are logged as train_stats.json has them
        sources = ", ".join(f"{task}/{source}: {n}" for (task, source), n in by_source.items())
        assert log_text.count(f"ssr: stage {i}-{t}: training on {len(rows)} rows ({sources})\n") == 1
        stats = json.loads((out / "stages" / f"{i}-{t}" / "train_stats.json").read_text())
        assert log_text.count(f"ssr: stage {i}-{t}: {stats}\n") == 1
    assert not (out / "synthetic" / "count.jsonl").exists()  # nothing after the last stage

    for i, t in enumerate(TASKS[:2], 1):
        demos = {json.loads(line)["input"] for line in (task_dir / f"{t}.demos.jsonl").read_text().splitlines()}
        rehearsed = read_jsonl(out / "synthetic" / f"{t}.jsonl")
        candidates = read_jsonl(out / "synthetic" / f"{t}.candidates.jsonl")
        stats = json.loads((out / "synthetic" / f"{t}.stats.json").read_text())
        assert 0 < len(rehearsed) <= 3
        assert not {r["input"] for r in rehearsed} & demos  # no rehearsed input copies a demonstration
        # the candidates file accounts for every generation: prompts x samples, each at least once
        generations = {(c["prompt_id"], c["sample"]) for c in candidates}
        assert len(generations) == stats["generations"] == 5 * 2
        assert sum(v for k, v in stats.items() if k.startswith("verdict_")) == len(candidates)
        selected = [c for c in candidates if c["selected"]]
        assert all(c["verdict"] == "kept" for c in selected)
        assert {r["candidate_id"] for r in rehearsed} <= {c["candidate_id"] for c in selected}
        for c in candidates:  # every parsed input is cut from its own continuation
            assert c["input"] is None or c["input"] in c["continuation"]
        # (that the rehearsed outputs are the latest model's greedy answers: test_ssr_promises)
        # the quality report, written by the run at the end of the task's synthesis
        quality = json.loads((out / "synthetic" / f"{t}.quality.json").read_text())
        assert quality["counts"]["generations"] == stats["generations"] and quality["counts"]["rehearsed"] == len(rehearsed)
        assert quality["counts"]["kept"] == stats["verdict_kept"] and quality["counts"]["selected"] == len(selected)
        assert quality["fidelity"]["reference"]["tasks"] == TASKS and quality["fidelity"]["selected"]["n"] == len(selected)
        # the ICL prompts, each with the ids of the demonstrations it shows (n_shots = 2 of the task's demos)
        prompts = read_jsonl(out / "synthetic" / f"{t}.prompts.jsonl")
        demo_ids = {json.loads(line)["id"] for line in (task_dir / f"{t}.demos.jsonl").read_text().splitlines()}
        assert len(prompts) == 5 and all(set(p) == {"id", "demo_ids", "text"} for p in prompts)
        assert all(len(p["demo_ids"]) == 2 and set(p["demo_ids"]) <= demo_ids for p in prompts)
        assert {c["prompt_id"] for c in candidates} <= {p["id"] for p in prompts}
        assert f"ssr.methods.ssr: task {t}: synthesizing\n" in log_text
        assert f"ssr.methods.ssr: task {t}: refining {len(selected)} selected inputs\n" in log_text
    assert not (out / "synthetic" / "count.quality.json").exists()
    # the run announces itself (where, which method, which tasks, how many processes), then each
    # evaluation is announced and its score logged, once: as results.json has it, to 2 decimals
    assert log_text.count(f"ssr: run {out}: method ssr, tasks {TASKS}, 1 process(es)\n") == 1
    assert log_text.endswith(f"ssr: results: AR {results['AR']} FWT {results['FWT']} BWT {results['BWT']}\n")
    for i, stage in enumerate(["0-base"] + [f"{i}-{t}" for i, t in enumerate(TASKS, 1)]):
        for j, t in enumerate(TASKS):
            assert log_text.count(f"ssr: stage {stage}, task {t}: evaluating\n") == 1
            assert log_text.count(f"ssr: stage {stage}, task {t}: ROUGE-L {results['scores'][i][j]:.2f}\n") == 1
    check_quality_commands(out, tmp_path)
    # a run stopped between the rehearsal set and its report writes the report when resumed
    written = (out / "synthetic" / "reverse.quality.json").read_text()
    (out / "synthetic" / "reverse.quality.json").unlink()
    run(load_config(str(out / "config.yaml")), out)  # the shared run, resumed: only the report is missing
    assert (out / "synthetic" / "reverse.quality.json").read_text() == written
    assert (out / "run.log").read_text().count("ROUGE-L") == log_text.count("ROUGE-L")  # nothing evaluated again


def check_quality_commands(out, tmp_path):
    """`ssr quality` recomputes the same figures elsewhere; `ssr report` shows them, computing none."""
    written = {t: (out / "synthetic" / f"{t}.quality.json").read_text() for t in TASKS[:2]}
    assert main(["quality", str(out), "-o", str(tmp_path / "q"), "--force"]) == 0
    for t in TASKS[:2]:
        assert json.loads((tmp_path / "q" / "synthetic" / f"{t}.quality.json").read_text()) == json.loads(written[t])
    assert main(["report", str(out), "-o", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Synthetic data of ssr" in report and "| reverse | 5 | 10 |" in report  # 5 prompts, 10 generations
    assert {t: (out / "synthetic" / f"{t}.quality.json").read_text() for t in TASKS[:2]} == written  # up to date: untouched


def test_ssr_synth_command_on_its_own(task_dir, tiny_model_dir, stopping_model_dir, tmp_path, capsys):
    cfg_path = tmp_path / "cfg.yaml"
    cfg = tiny_config(task_dir, tiny_model_dir, "ssr", **ssr_opts(stopping_model_dir))
    cfg_path.write_text(json.dumps(cfg))  # JSON is YAML
    assert main(["synth", str(cfg_path), "--task", "upper", "-o", str(tmp_path / "s"), "--set", "method.refine=false"]) == 0
    rows = read_jsonl(tmp_path / "s" / "synthetic" / "upper.jsonl")
    assert all(r["output"] == r["base_output"] and r["refined"] is False for r in rows)
    assert "synthetic instances" in capsys.readouterr().out
    assert main(["synth", str(cfg_path), "--task", "nope", "-o", str(tmp_path / "s")]) == 2


def test_ablation_switches_and_artifacts_load_with_datasets(task_dir, tiny_model_dir, stopping_model_dir, tmp_path):
    """Random selection, supervised K-means, input-only demos, other demos, another ICL model."""
    import datasets

    from conftest import make_task_rows, write_jsonl

    other_demos = write_jsonl(tmp_path / "new_demos.jsonl", make_task_rows("upper", 4, seed=999))
    variants = {
        "random": ["method.selection=random"],
        "supervised": ["method.kmeans_fit=demos"],
        "input_only_demos": ["method.demo_outputs=false"],
        "new_demos": [f"method.demos_override={{upper: {other_demos}}}"],
        "icl_model": [f"method.icl_model={tiny_model_dir}"],
    }
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(json.dumps(tiny_config(task_dir, tiny_model_dir, "ssr", **ssr_opts(stopping_model_dir))))
    for name, overrides in variants.items():
        out = tmp_path / name
        args = ["synth", str(cfg_path), "--task", "upper", "-o", str(out)] + [a for o in overrides for a in ("--set", o)]
        assert main(args) == 0, name
        candidates = read_jsonl(out / "synthetic" / "upper.candidates.jsonl")
        prompts_demos = {tuple(c["demo_ids"]) for c in candidates}
        if name == "new_demos":
            assert all(d.startswith("upper-999-") for ids in prompts_demos for d in ids)
        else:
            assert all(d.startswith("upper-201-") for ids in prompts_demos for d in ids)  # the task's demos file
        if name == "random":
            assert all(c["cluster"] is None for c in candidates)
        prompts = read_jsonl(out / "synthetic" / "upper.prompts.jsonl")
        assert {p["id"] for p in prompts} == {c["prompt_id"] for c in candidates}  # every candidate traces to its prompt
        assert all(("Output:" in p["text"]) == (name != "input_only_demos") for p in prompts)
        # both artifacts load with `datasets`
        for file in ("upper.candidates.jsonl", "upper.jsonl"):
            path = out / "synthetic" / file
            if path.stat().st_size:
                ds = datasets.load_dataset("json", data_files=str(path), split="train")
                assert len(ds) == len(read_jsonl(path))
