"""Each method plug-in on its own, without a model: its stages, the rows a stage trains on, what
it keeps, how its stage scores form the matrix, and what it refuses before a run. Expected
values are written out by hand from the README / spec (three toy tasks of 24 training rows)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import tiny_config
from ssr.config import load_config
from ssr.data import load_task
from ssr.methods import METHODS, Stage, get_method
from ssr.selection import select

ALL = ("reverse", "upper", "count")


def _method(task_dir: Path, model_dir: Path, name: str, learnt: tuple[str, ...] = (), schedule: str = "all",
            drop_train: tuple[str, ...] = (), without_demos: bool = False, **opts):
    """The method a run of the tiny config (with these changes) would build, its tasks loaded."""
    raw = tiny_config(task_dir, model_dir, name, **opts)
    raw["eval"]["schedule"] = schedule
    for task in raw["tasks"]:
        if task["name"] in learnt:
            task["learnt"] = True
        if task["name"] in drop_train:
            del task["train"]
        if without_demos:  # the demonstration pool: method.n_demos of the train rows
            del task["demos"]
    cfg = load_config(None, raw=raw)
    tasks = [load_task(t, cfg.data, cfg.method.n_demos, cfg.eval.max_examples, cfg.eval.max_new_tokens, cfg.seed)
             for t in cfg.tasks]
    return get_method(name)(cfg, tasks)


def _ctx(run_dir: Path) -> SimpleNamespace:
    """What a rehearsal method reads of the runner's context: the run directory, the writer."""
    return SimpleNamespace(run_dir=run_dir, is_main=True, write=lambda fn, *args: fn(*args))


def test_the_registry_names_every_method():
    assert sorted(METHODS) == ["ewc", "l2", "mtl", "osf", "replay", "sequential", "single", "ssr"]
    assert all(cls.name == name for name, cls in METHODS.items())


@pytest.mark.parametrize("name", ["sequential", "replay", "ssr", "l2", "ewc", "osf"])
def test_a_sequence_has_one_stage_per_task_the_first_from_the_base_model(task_dir, tiny_model_dir, name):
    method = _method(task_dir, tiny_model_dir, name)
    assert method.plan() == [Stage(1, "1-reverse", ("reverse",), fresh=True, evaluate=ALL),
                             Stage(2, "2-upper", ("upper",), fresh=False, evaluate=ALL),
                             Stage(3, "3-count", ("count",), fresh=False, evaluate=ALL)]
    assert method.learnt_stage() is None


def test_metrics_schedule_scores_only_what_the_metrics_read(task_dir, tiny_model_dir):
    """a_i(i) and a_{i+1}(i) after stage i; every task after the last stage."""
    method = _method(task_dir, tiny_model_dir, "sequential", schedule="metrics")
    assert [s.evaluate for s in method.plan()] == [("reverse", "upper"), ("upper", "count"), ALL]


def test_mtl_is_one_stage_on_every_trained_task_and_single_one_fresh_stage_each(task_dir, tiny_model_dir):
    assert _method(task_dir, tiny_model_dir, "mtl").plan() == [Stage(1, "1-mtl", ALL, fresh=True, evaluate=ALL)]
    assert _method(task_dir, tiny_model_dir, "mtl", learnt=("reverse",)).plan() == [
        Stage(1, "1-mtl", ("upper", "count"), fresh=True, evaluate=ALL)]
    assert _method(task_dir, tiny_model_dir, "single").plan() == [
        Stage(1, "1-reverse", ("reverse",), fresh=True, evaluate=("reverse",)),
        Stage(2, "2-upper", ("upper",), fresh=True, evaluate=("upper",)),
        Stage(3, "3-count", ("count",), fresh=True, evaluate=("count",))]


def test_learnt_tasks_form_stage_0_and_are_never_trained(task_dir, tiny_model_dir):
    method = _method(task_dir, tiny_model_dir, "replay", learnt=("reverse",), ratio=0.25)
    assert method.learnt_stage() == Stage(0, "0-base", ("reverse",), fresh=True, evaluate=ALL)
    assert method.plan() == [Stage(1, "1-upper", ("upper",), fresh=True, evaluate=ALL),
                             Stage(2, "2-count", ("count",), fresh=False, evaluate=ALL)]
    stage_1, stage_2 = method.plan()
    # the learnt task is rehearsed from stage 1 on; the last trained task is never rehearsed
    assert [t.name for t in method.rehearsed_before(stage_1)] == ["reverse"]
    assert [t.name for t in method.rehearsed_before(stage_2)] == ["reverse", "upper"]
    assert [t.name for t in method.rehearsed_tasks()] == ["reverse", "upper"]
    assert method.planned_rows(stage_2) == {"count/new": 24, "reverse/replay": 6, "upper/replay": 6}


@pytest.mark.parametrize("name, source, opts, size", [
    ("replay", "replay", {"ratio": 0.25}, 6),  # a quarter of 24 rows
    ("replay", "replay", {"ratio": 0.01}, 1),  # 0.24 rounds to nothing: at least one
    ("replay", "replay", {"per_task": 5}, 5),
    ("ssr", "synthetic", {"per_task": 3}, 3),
])
def test_planned_rows_name_each_source_and_its_size(task_dir, tiny_model_dir, name, source, opts, size):
    method = _method(task_dir, tiny_model_dir, name, **opts)
    first, second, third = method.plan()
    assert method.planned_rows(first) == {"reverse/new": 24}
    assert method.planned_rows(second) == {"upper/new": 24, f"reverse/{source}": size}
    assert method.planned_rows(third) == {"count/new": 24, f"reverse/{source}": size, f"upper/{source}": size}
    assert _method(task_dir, tiny_model_dir, "sequential").planned_rows(third) == {"count/new": 24}


def test_matrix_rows_are_stages_and_columns_tasks(task_dir, tiny_model_dir):
    scores = {0: {"reverse": 1.0, "upper": 2.0, "count": 3.0}, 1: {"reverse": 10.0, "upper": 11.0, "count": 12.0},
              2: {"reverse": 20.0, "upper": 21.0, "count": 22.0}, 3: {"reverse": 30.0, "upper": 31.0, "count": 32.0}}
    method = _method(task_dir, tiny_model_dir, "sequential")
    assert method.matrix(scores) == [[1, 2, 3], [10, 11, 12], [20, 21, 22], [30, 31, 32]]
    assert method.matrix({0: scores[0], 1: {"reverse": 10.0}}) == [[1, 2, 3], [10, None, None], [None] * 3, [None] * 3]
    # AR = mean of the last row; FWT = mean of a_2(1), a_3(2); BWT = mean of a_1(3) - a_1(1), a_2(3) - a_2(2)
    assert method.metrics(method.matrix(scores)) == {"AR": 31.0, "FWT": (11 + 22) / 2, "BWT": (20 + 10) / 2}


def test_mtl_matrix_is_the_base_row_and_its_one_model_as_the_final_row(task_dir, tiny_model_dir):
    method = _method(task_dir, tiny_model_dir, "mtl")
    base, joint = {"reverse": 1.0, "upper": 2.0, "count": 3.0}, {"reverse": 7.0, "upper": 8.0, "count": 9.0}
    assert method.matrix({0: base, 1: joint}) == [[1, 2, 3], [None] * 3, [None] * 3, [7, 8, 9]]
    assert method.metrics(method.matrix({0: base, 1: joint})) == {"AR": 8.0, "FWT": None, "BWT": None}
    assert method.matrix({}) == [[None] * 3] * 4


def test_single_task_matrix_holds_each_tasks_own_model(task_dir, tiny_model_dir):
    base = {"reverse": 1.0, "upper": 2.0, "count": 3.0}
    scores = {0: base, 1: {"reverse": 10.0}, 2: {"upper": 20.0}, 3: {"count": 30.0}}
    method = _method(task_dir, tiny_model_dir, "single")
    assert method.matrix(scores) == [[1, 2, 3], [10, None, None], [10, 20, None], [10, 20, 30]]
    assert method.metrics(method.matrix(scores)) == {"AR": 20.0, "FWT": None, "BWT": None}
    # a learnt task keeps its base score in every row; the trained tasks follow it
    learnt = _method(task_dir, tiny_model_dir, "single", learnt=("reverse",))
    scores = {0: base, 1: {"upper": 20.0}, 2: {"count": 30.0}}
    assert learnt.matrix(scores) == [[1, 2, 3], [1, 20, None], [1, 20, 30]]
    assert learnt.metrics(learnt.matrix(scores)) == {"AR": 25.0, "FWT": None, "BWT": None}
    assert method.matrix({}) == [[None] * 3] * 4  # no scores yet


def test_a_stage_without_training_rows_is_refused_by_name(task_dir, tiny_model_dir):
    method = _method(task_dir, tiny_model_dir, "sequential", drop_train=("upper",))
    (problem,) = method.check()
    assert problem == ("config: field 'tasks.1.train': stage 2-upper of sequential trains on task 'upper', which has "
                       "no training rows; give it a `train` file")
    assert _method(task_dir, tiny_model_dir, "sequential").check() == []


def test_a_learnt_task_rehearsed_by_ratio_needs_its_training_rows(task_dir, tiny_model_dir):
    method = _method(task_dir, tiny_model_dir, "replay", learnt=("reverse",), drop_train=("reverse",))
    (problem,) = method.check()
    assert problem == (
        "config: field 'tasks.0.train': learnt task 'reverse' has no training rows: replay sizes its rehearsal set by method.ratio of them; "
        "give a `train` file or method.per_task")
    assert _method(task_dir, tiny_model_dir, "replay", learnt=("reverse",), drop_train=("reverse",), per_task=4).check() == []
    # sequential rehearses nothing: a learnt task needs no training rows there
    assert _method(task_dir, tiny_model_dir, "sequential", learnt=("reverse",), drop_train=("reverse",)).check() == []


def test_replay_keeps_a_frozen_selection_of_real_rows_and_replays_it(task_dir, tiny_model_dir, tmp_path):
    """After stage 1 the rehearsal file holds the selected real rows of task 1 (the selection
    the config's seed and size give); stage 2 trains on task 2's rows and exactly that file;
    nothing is rebuilt once written, and nothing is kept after the last stage."""
    method = _method(task_dir, tiny_model_dir, "replay", ratio=0.25, selection="random")
    ctx = _ctx(tmp_path)
    first, second, third = method.plan()
    assert method.pending_after(first, ctx) and not method.pending_after(third, ctx)
    assert method.training_rows(first, ctx) == [
        {"task": "reverse", "source": "new", "id": i.id, "definition": i.definition, "input": i.input, "output": i.output}
        for i in method.by_name["reverse"].train]
    method.after_stage(first, ctx)
    path = tmp_path / "rehearsal" / "reverse.jsonl"
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    train = method.by_name["reverse"].train
    chosen = select([i.input for i in train], 6, "random", 7, n_clusters=1).indices  # seed 7: the tiny config's
    assert [r["id"] for r in kept] == [train[i].id for i in chosen] and len(set(chosen)) == 6
    assert {r["source"] for r in kept} == {"replay"} and {r["task"] for r in kept} == {"reverse"}
    assert not method.pending_after(first, ctx)
    # stage 2: the new task's rows, then the file as it stands (edited here: the file is what counts)
    path.write_text(path.read_text().replace('"source": "replay"', '"source": "replay-edited"'))
    rows = method.training_rows(second, ctx)
    assert [r["id"] for r in rows[:24]] == [i.id for i in method.by_name["upper"].train]
    assert rows[24:] == [json.loads(line) for line in path.read_text().splitlines()]
    before = path.read_text()
    method.after_stage(first, ctx)  # written once: a rerun keeps it
    assert path.read_text() == before
    method.after_stage(third, ctx)
    assert sorted(p.name for p in (tmp_path / "rehearsal").iterdir()) == ["reverse.jsonl"]


def test_a_stage_interrupted_between_two_rehearsal_sets_builds_the_missing_one(task_dir, tiny_model_dir, tmp_path):
    """Stage 0 rehearses every learnt task: after a crash between the first set's write and the
    second's, the rerun keeps the first file and builds the second (the selection the seed gives)."""
    method = _method(task_dir, tiny_model_dir, "replay", learnt=("reverse", "upper"), per_task=3, selection="random")
    ctx, stage = _ctx(tmp_path), method.learnt_stage()
    assert stage.tasks == ("reverse", "upper")
    first = tmp_path / "rehearsal" / "reverse.jsonl"
    first.parent.mkdir()
    first.write_text('{"written": "before the crash"}\n')  # the first set, already on disk
    assert method.pending_after(stage, ctx)
    method.after_stage(stage, ctx)
    assert first.read_text() == '{"written": "before the crash"}\n'
    train = method.by_name["upper"].train
    chosen = select([i.input for i in train], 3, "random", 7, n_clusters=1).indices  # seed 7: the tiny config's
    assert [json.loads(line)["id"] for line in (tmp_path / "rehearsal" / "upper.jsonl").read_text().splitlines()] == [
        train[i].id for i in chosen]
    assert not method.pending_after(stage, ctx)


def test_ssr_refuses_too_few_or_too_many_demonstrations_where_they_come_from(task_dir, tiny_model_dir):
    """Each rehearsed task (not the last) needs n_shots demonstrations; the error names the field
    the pool came from: the task's `demos` file, or `method.n_demos` of its train rows."""
    method = _method(task_dir, tiny_model_dir, "ssr", n_shots=7)  # the demos files hold 6
    assert method.check() == [
        f"config: field 'tasks.{i}.demos': task '{name}' has 6 demonstrations for SSR synthesis; method.n_shots = 7 "
        "needs at least that many" for i, name in enumerate(("reverse", "upper"))]
    assert _method(task_dir, tiny_model_dir, "ssr", n_shots=6).check() == []
    # 24 demonstrations give 24 x 23 x 22 x 21 x 20 = 5,100,480 ordered 5-tuples
    assert _method(task_dir, tiny_model_dir, "ssr", n_shots=5, n_demos=24, without_demos=True).check() == [
        f"config: field 'method.n_shots': 24 demonstrations of task '{name}' give 5100480 ordered 5-tuples to draw "
        "prompts from (at most 1000000); use fewer demonstrations or a smaller n_shots" for name in ("reverse", "upper")]
    assert _method(task_dir, tiny_model_dir, "ssr", n_shots=25, n_demos=24, without_demos=True).check()[0] == (
        "config: field 'method.n_demos': task 'reverse' has 24 demonstrations for SSR synthesis; method.n_shots = 25 "
        "needs at least that many")


def test_ssr_refuses_a_screen_that_cannot_run(task_dir, tiny_model_dir, tmp_path):
    method = _method(task_dir, tiny_model_dir, "ssr", screen={"callable": "no_such_module_here:judge",
                                                              "classifier": str(tmp_path)})
    callable_problem, classifier_problem = method.check()
    assert callable_problem.startswith("config: field 'method.screen.callable': ") and "no_such_module_here" in callable_problem
    assert classifier_problem == f"config: field 'method.screen.classifier': {tmp_path} is not a model directory (no config.json)"
    assert _method(task_dir, tiny_model_dir, "ssr", screen={"classifier": str(tiny_model_dir)}).check() == []


CANDIDATES = [("stone cloud river", "river cloud stone", 1), ("green table", "table green", None), ("seven paper", "paper seven", 0)]
"""(input, base output, selection rank or None) of three synthetic candidates, two of them selected (rank 1, then 0)."""


def _candidates(folder: Path, task: str, candidates: list[tuple[str, str, int | None]] = CANDIDATES) -> None:
    """The candidates file synthesis writes, for these candidates."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task}.candidates.jsonl").write_text("".join(
        json.dumps({"candidate_id": i, "prompt_id": 0, "demo_ids": ["d1", "d2"], "input": x, "base_output": y,
                    "selected": rank is not None, "selection_rank": rank}) + "\n"
        for i, (x, y, rank) in enumerate(candidates)))


def test_ssr_rehearses_the_selected_candidates_in_rank_order_and_drops_empty_outputs(task_dir, tiny_model_dir, tmp_path):
    """Without refinement the rehearsal rows are the selected candidates' base outputs, in
    selection rank; a candidate whose output is empty teaches nothing and is left out."""
    method = _method(task_dir, tiny_model_dir, "ssr", refine=False)
    _candidates(tmp_path / "synthetic", "reverse", CANDIDATES + [("music light", "", 2)])
    rows = method.build_rehearsal(method.by_name["reverse"], method.plan()[0], _ctx(tmp_path))
    assert [(r["id"], r["input"], r["output"], r["source"], r["refined"]) for r in rows] == [
        ("reverse-syn-2", "seven paper", "paper seven", "synthetic", False),
        ("reverse-syn-0", "stone cloud river", "river cloud stone", "synthetic", False)]
    assert {r["definition"] for r in rows} == {"Reverse the order of the words in the input."}


def test_ssr_is_pending_until_the_rehearsal_set_and_its_quality_report_exist(task_dir, tiny_model_dir, tmp_path):
    from ssr.synthesis.quality import quality_path

    method = _method(task_dir, tiny_model_dir, "ssr")
    ctx, first = _ctx(tmp_path), method.plan()[0]
    assert method.pending_after(first, ctx)  # nothing yet
    _candidates(tmp_path / "synthetic", "reverse")
    (tmp_path / "synthetic" / "reverse.jsonl").write_text("")
    assert method.pending_after(first, ctx)  # the quality report is missing
    quality_path(tmp_path / "synthetic", "reverse").write_text("{}")
    assert not method.pending_after(first, ctx)


def test_a_failed_quality_report_is_logged_and_does_not_stop_the_run(task_dir, tiny_model_dir, tmp_path, monkeypatch, caplog):
    import ssr.methods.ssr as ssr_method

    def fail(*args, **kwargs):
        raise ValueError("no encoder")

    monkeypatch.setattr(ssr_method, "ensure_quality", fail)
    method = _method(task_dir, tiny_model_dir, "ssr")
    _candidates(tmp_path / "synthetic", "reverse")
    (tmp_path / "synthetic" / "reverse.jsonl").write_text("")
    with caplog.at_level("WARNING", logger="ssr.methods.ssr"):
        method.after_stage(method.plan()[0], _ctx(tmp_path))
    assert [r.getMessage() for r in caplog.records] == [
        f"task reverse: synthetic-data quality not computed (ValueError: no encoder); `ssr quality {tmp_path}` retries"]


def test_ssr_reports_on_every_task_of_a_stage_that_has_candidates(task_dir, tiny_model_dir, tmp_path, monkeypatch):
    """Stage 0 rehearses two learnt tasks: a task without candidates (here the first: its file
    was deleted) is skipped and the next one still gets its quality report."""
    import ssr.methods.ssr as ssr_method

    reported = []
    monkeypatch.setattr(ssr_method, "ensure_quality", lambda task, *args, **kwargs: reported.append(task.name))
    method = _method(task_dir, tiny_model_dir, "ssr", learnt=("reverse", "upper"))
    for name in ("reverse", "upper"):
        _candidates(tmp_path / "synthetic", name)
        (tmp_path / "synthetic" / f"{name}.jsonl").write_text("")
    (tmp_path / "synthetic" / "reverse.candidates.jsonl").unlink()
    method.after_stage(method.learnt_stage(), _ctx(tmp_path))
    assert reported == ["upper"]


def test_ssr_refines_the_selected_inputs_with_the_latest_model_greedily(task_dir, tiny_model_dir, tmp_path):
    """The stage's model (asked for with the method's batch size) answers each selected input
    through the training template, greedily: the same answers transformers' own greedy search
    gives for the prompts written out by hand; prompts are cut to `train.max_source_length`."""
    from conftest import greedy_raw_by_hand
    from ssr.generation import HFGenerator
    from ssr.models import get_template, load_base_model, load_tokenizer
    from ssr.synthesis.pipeline import refine

    tokenizer, model = load_tokenizer(str(tiny_model_dir)), load_base_model(str(tiny_model_dir))
    method = _method(task_dir, tiny_model_dir, "ssr", batch_size=3)
    asked = []
    ctx = _ctx(tmp_path)
    ctx.models = SimpleNamespace(template=get_template("raw", tokenizer))
    ctx.generator_after = lambda stage, batch_size: asked.append((stage.name, batch_size)) or HFGenerator(model, tokenizer, batch_size)
    _candidates(tmp_path / "synthetic", "reverse")
    task, first = method.by_name["reverse"], method.plan()[0]
    rows = method.build_rehearsal(task, first, ctx)
    assert asked == [("1-reverse", 3)]
    inputs = ["seven paper", "stone cloud river"]  # in selection rank
    answers = greedy_raw_by_hand(model, tokenizer, task.definition, inputs, task.max_new_tokens)
    assert all(answers)  # the random model answers something: the comparison is not of empty strings
    assert [(r["input"], r["output"], r["refined"]) for r in rows] == [
        (x, y, True) for x, y in zip(inputs, answers) if y]
    # a prompt longer than max_source_length is cut as the training template cuts it
    method.cfg.train.max_source_length = 8
    cut = method.build_rehearsal(task, first, ctx)
    selected = [{"input": x} for x in inputs]
    want = refine(selected, task.definition, HFGenerator(model, tokenizer), ctx.models.template, 8, task.max_new_tokens)
    assert [r["output"] for r in cut] == [y for y in want if y] and want != answers


def test_ssr_demonstrations_from_an_override_file_take_the_tasks_definition(task_dir, tiny_model_dir, tmp_path):
    """`method.demos_override` rows need no definition (the task's is used); too few of them is an
    error on that field."""
    override = tmp_path / "reverse-demos.jsonl"
    override.write_text("".join(json.dumps({"id": f"o{i}", "input": f"a{i} b", "output": f"b a{i}"}) + "\n" for i in range(3)))
    method = _method(task_dir, tiny_model_dir, "ssr", demos_override={"reverse": str(override)}, n_shots=4)
    demos = method.demos_for(method.by_name["reverse"])
    assert [(d.id, d.definition) for d in demos] == [(f"o{i}", "Reverse the order of the words in the input.") for i in range(3)]
    assert method.check() == ["config: field 'method.demos_override.reverse': task 'reverse' has 3 demonstrations for "
                              "SSR synthesis; method.n_shots = 4 needs at least that many"]


def test_the_ordered_tuple_limit_is_inclusive(task_dir, tiny_model_dir, monkeypatch):
    """Exactly MAX_ICL_TUPLES ordered tuples are allowed, one more is not (the limit lowered here:
    24 demonstrations in pairs give 552)."""
    import ssr.methods.ssr as ssr_method

    method = _method(task_dir, tiny_model_dir, "ssr", n_shots=2, n_demos=24, without_demos=True)
    assert method.check() == []  # 552 pairs, far below the real limit (not 24! orderings)
    monkeypatch.setattr(ssr_method, "MAX_ICL_TUPLES", 552)
    assert method.check() == []
    monkeypatch.setattr(ssr_method, "MAX_ICL_TUPLES", 551)
    assert len(method.check()) == 2 and "give 552 ordered 2-tuples" in method.check()[0]


@pytest.mark.parametrize("encoder", ["packaged-cls", "tiny-mean"])
def test_kmeans_replay_embeds_with_the_configured_encoder_and_pooling(task_dir, tiny_model_dir, tmp_path, encoder):
    """`method.embedding_model` / `embedding_pooling` reach the K-means selection of real rows:
    the kept rows are those selection gives with them, which differ from the defaults' choice."""
    model, pooling = ("all-MiniLM-L6-v2", "cls") if encoder == "packaged-cls" else (str(tiny_model_dir), "mean")
    method = _method(task_dir, tiny_model_dir, "replay", selection="kmeans", per_task=6, n_clusters=3,
                     embedding_model=model, embedding_pooling=pooling)
    method.after_stage(method.plan()[0], _ctx(tmp_path))
    kept = [json.loads(line)["id"] for line in (tmp_path / "rehearsal" / "reverse.jsonl").read_text().splitlines()]
    train = method.by_name["reverse"].train
    inputs = [i.input for i in train]
    configured = select(inputs, 6, "kmeans", 7, n_clusters=3, embedding_model=model, embedding_pooling=pooling).indices
    default = select(inputs, 6, "kmeans", 7, n_clusters=3).indices
    assert kept == [train[i].id for i in configured] and sorted(configured) != sorted(default)


def test_metrics_leave_learnt_tasks_out_and_sequential_has_nothing_after_a_stage(task_dir, tiny_model_dir, tmp_path):
    """With `reverse` learnt (stage 0), AR / FWT / BWT are over the trained tasks only: by hand
    over the upper and count columns. Sequential fine-tuning keeps nothing after a stage."""
    method = _method(task_dir, tiny_model_dir, "sequential", learnt=("reverse",))
    scores = {0: {"reverse": 50.0, "upper": 2.0, "count": 3.0}, 1: {"reverse": 40.0, "upper": 11.0, "count": 12.0},
              2: {"reverse": 30.0, "upper": 21.0, "count": 22.0}}
    assert method.matrix(scores) == [[50, 2, 3], [40, 11, 12], [30, 21, 22]]
    # AR = (21 + 22) / 2; FWT = a_2(1) = 12; BWT = a_1(2) - a_1(1) = 21 - 11
    assert method.metrics(method.matrix(scores)) == {"AR": 21.5, "FWT": 12.0, "BWT": 10.0}
    assert not any(method.pending_after(stage, _ctx(tmp_path)) for stage in method.plan())
