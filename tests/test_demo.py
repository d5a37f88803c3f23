"""The demo pipeline (built-in tasks, every demo method, the report) on the tiny model."""

import json

from ssr.cli import main
from ssr.data.builtin import builtin_task, builtin_task_names


def test_builtin_tasks_are_deterministic_and_disjoint():
    for name in builtin_task_names():
        if name == "general":  # the open-domain set: tests/test_open_domain.py
            continue
        a, b = builtin_task(name), builtin_task(name)
        assert [i.input for i in a.train] == [i.input for i in b.train]
        assert (len(a.train), len(a.eval), len(a.demos)) == (200, 100, 20)
        train, evals, demos = ({i.input for i in s} for s in (a.train, a.eval, a.demos))
        assert not (train & evals) and not (train & demos) and not (evals & demos)
    product = builtin_task("product")
    assert all(i.output in i.input for i in product.train)  # the answer is read off the review
    assert {i.output for i in builtin_task("sentiment").train} == {"positive", "negative"}


def test_demo_runs_every_method_and_writes_the_report(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    overrides = [f"model.name={tiny_model_dir}", "model.dtype=float32", "generation.backend=hf", "data.max_train_examples=12", "eval.max_examples=3",
                 "eval.max_new_tokens=4", "train.epochs=1", "method.max_prompts=3", "method.samples_per_prompt=1",
                 "method.synth_max_new_tokens=10", "method.n_clusters=2"]
    args = ["demo", "-o", str(out)] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed
    for variant, method in (("sequential", "sequential"), ("replay-random-10", "replay"), ("ssr", "ssr"), ("mtl", "mtl")):
        results = json.loads((out / variant / "results.json").read_text())
        assert results["method"] == method and results["tasks"] == ["sentiment", "product", "city"]
        assert variant in printed
    assert "reused" in printed  # replay and ssr start from sequential's stage 1
    report = (out / "report.md").read_text()
    assert "| sequential |" in report and "| replay (random, 10%) |" in report and "seen_average.png" in report
    assert (out / "seen_average.png").stat().st_size > 1000
    assert len(list(out.glob("heatmap_*.png"))) == 4 and (out / "report.html").exists()
    # a second run reuses every finished run
    assert main(args) == 0
    assert main(["report", str(out / "sequential"), str(out / "mtl"), "-o", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.md").exists()
