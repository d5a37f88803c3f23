import json

import pytest

from conftest import SHARED_SKIP_REASON, SHARED_SUPERNI, make_task_rows, write_jsonl
from ssr.cli import main
from ssr.config import DataConfig, TaskConfig
from ssr.data import load_instances, load_task
from ssr.data.loaders import RowPolicy
from ssr.errors import DataError


def test_superni_rows_and_definition(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", make_task_rows("reverse", 5, seed=1))
    rows = load_instances(path)
    assert len(rows) == 5
    assert rows[0].definition == "Reverse the order of the words in the input."
    assert rows[0].id == "reverse-1-0"


def test_plain_jsonl_and_definition_override(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Say hi.", "input": "x", "output": "hi"}])
    assert load_instances(path)[0].definition == "Say hi."
    bare = write_jsonl(tmp_path / "b.jsonl", [{"input": "x", "output": "hi"}])
    with pytest.raises(DataError, match=r"b.jsonl:1: field 'instruction': missing"):
        load_instances(bare)
    assert load_instances(bare, definition="Given.")[0].definition == "Given."


def test_natural_instructions_file(tmp_path):
    doc = {
        "Definition": ["Answer the question."],
        "Positive Examples": [{"input": "1+1?", "output": "2", "explanation": "."}],
        "Instances": [{"id": "i1", "input": "2+2?", "output": ["4", "four"]}],
    }
    (tmp_path / "task.json").write_text(json.dumps(doc))
    (inst,) = load_instances(tmp_path / "task.json")
    assert (inst.output, inst.all_references, inst.definition) == ("4", ("4", "four"), "Answer the question.")
    task = load_task(TaskConfig(name="t", train=str(tmp_path / "task.json")), DataConfig())
    assert [d.input for d in task.demos] == ["1+1?"]  # demos default to the positive examples
    doc["Instances"][0]["output"] = []
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"field 'Instances\[0\].output'"):
        load_instances(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r":2: not valid JSON"),
        ('{"input": "a", "full_prompt": "d\\n\\na"}', r":2: field 'output': missing"),
        ('{"input": "a", "output": 3, "full_prompt": "d\\n\\na"}', r":2: field 'output': expected a string, got int"),
        ('{"input": "a", "output": "  ", "full_prompt": "d\\n\\na"}', r":2: field 'output': must not be empty"),
        ('["a"]', r":2: expected a JSON object, got list"),
    ],
)
def test_malformed_rows_name_file_line_field(tmp_path, line, message):
    good = json.dumps(make_task_rows("upper", 1, seed=0)[0])
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n{line}\n{good}\n")
    with pytest.raises(DataError, match="bad.jsonl" + message):
        load_instances(path)
    policy = RowPolicy(skip_bad_rows=True)
    assert len(load_instances(path, policy=policy)) == 2
    assert policy.skipped == 1


def test_skip_bad_rows_is_counted_on_the_task(tmp_path):
    good = json.dumps(make_task_rows("upper", 1, seed=0)[0])
    (tmp_path / "t.jsonl").write_text(f"{good}\n{{oops\n{good}\n")
    task = load_task(TaskConfig(name="t", train=str(tmp_path / "t.jsonl")), DataConfig(skip_bad_rows=True))
    assert task.skipped_rows == 1 and len(task.train) == 2


def test_definitions_must_agree(tmp_path):
    rows = make_task_rows("upper", 2, seed=0) + make_task_rows("count", 1, seed=0)
    write_jsonl(tmp_path / "mix.jsonl", rows)
    with pytest.raises(DataError, match="disagree on the task definition"):
        load_task(TaskConfig(name="t", train=str(tmp_path / "mix.jsonl")), DataConfig())


def _sorted_by_label(n_per_class: int) -> list[dict]:
    """A two-class task whose file holds every `positive` row first (like the shared sa split)."""
    rows = []
    for label in ("positive", "negative"):
        for i in range(n_per_class):
            text = f"review {label} {i}"
            rows.append({"id": f"{label}-{i}", "input": text, "output": label,
                         "full_prompt": f"Classify the review.\n\n{text}", "task_name": "sorted"})
    return rows


def test_caps_and_demo_pool_keep_every_class_of_a_sorted_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", _sorted_by_label(50))
    write_jsonl(tmp_path / "eval.jsonl", _sorted_by_label(20))
    cfg = TaskConfig(name="t", train=str(tmp_path / "train.jsonl"), eval=str(tmp_path / "eval.jsonl"))
    task = load_task(cfg, DataConfig(max_train_examples=8), n_demos=6, max_eval=8, seed=3)
    for split, n in ((task.train, 8), (task.eval, 8), (task.demos, 6)):
        labels = [inst.output for inst in split]
        assert len(split) == n and labels.count("positive") == labels.count("negative") == n // 2
        # kept rows stay in file order
        order = [int(inst.id.split("-")[1]) + (1000 if inst.output == "negative" else 0) for inst in split]
        assert order == sorted(order)


def test_caps_are_seeded_samples(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", make_task_rows("upper", 40, seed=0))
    cfg = TaskConfig(name="t", train=str(tmp_path / "t.jsonl"))
    ids = lambda seed: [i.id for i in load_task(cfg, DataConfig(max_train_examples=10), seed=seed).train]  # noqa: E731
    assert ids(1) == ids(1)
    assert ids(1) != ids(2)
    assert ids(1) != [f"upper-0-{i}" for i in range(10)]  # not the first rows
    assert len(load_task(cfg, DataConfig(), seed=1).train) == 40  # no cap: every row


def test_builtin_task_caps_are_stratified():
    full = load_task(TaskConfig(name="sentiment", builtin=True), DataConfig())
    task = load_task(TaskConfig(name="sentiment", builtin=True), DataConfig(max_train_examples=8), max_eval=8, seed=0)
    for split, whole in ((task.train, full.train), (task.eval, full.eval)):
        share = sum(inst.output == "positive" for inst in whole) / len(whole)
        positives = sum(inst.output == "positive" for inst in split)
        assert len(split) == 8 and abs(positives - 8 * share) < 1  # each class its share, rounded


def test_cli_bad_row_exits_2_with_location(tmp_path, capsys):
    (tmp_path / "t.jsonl").write_text('{"input": "a", "output": "b"}\n')
    (tmp_path / "cfg.yaml").write_text("tasks:\n  - {name: t, train: t.jsonl, format: superni}\n")
    assert main(["run", str(tmp_path / "cfg.yaml"), "-o", str(tmp_path / "run")]) == 2
    assert "t.jsonl:1: field 'full_prompt': missing" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED_SUPERNI.is_dir(), reason=SHARED_SKIP_REASON)
def test_shared_superni_split_loads():
    task = load_task(
        TaskConfig(name="sa", train=str(SHARED_SUPERNI / "sa.train.jsonl"), eval=str(SHARED_SUPERNI / "sa.eval.jsonl"),
                   demos=str(SHARED_SUPERNI / "sa.train.smp001.jsonl")),
        DataConfig(),
    )
    assert (len(task.train), len(task.eval), len(task.demos)) == (2000, 500, 20)
    assert task.definition.startswith("In this task, You are given a review")
    assert {d.output for d in task.demos} == {"positive", "negative"}


@pytest.mark.skipif(not SHARED_SUPERNI.is_dir(), reason=SHARED_SKIP_REASON)
def test_shared_sa_subsets_hold_both_labels():
    task = load_task(
        TaskConfig(name="sa", train=str(SHARED_SUPERNI / "sa.train.smp01.jsonl"), eval=str(SHARED_SUPERNI / "sa.eval.jsonl")),
        DataConfig(max_train_examples=8), n_demos=20, max_eval=8, seed=42,
    )
    for split in (task.train, task.eval, task.demos):
        assert {inst.output for inst in split} == {"positive", "negative"}


def test_task_language_is_detected_unless_configured(tmp_path):
    rows = [{"id": str(i), "input": f"song {i}", "output": f"la canción {i}", "full_prompt": f"Translate.\n\nsong {i}",
             "task_name": "trans"} for i in range(4)]
    write_jsonl(tmp_path / "t.jsonl", rows)
    assert load_task(TaskConfig(name="t", eval=str(tmp_path / "t.jsonl")), DataConfig()).language == "non-en"
    assert load_task(TaskConfig(name="t", eval=str(tmp_path / "t.jsonl"), language="en"), DataConfig()).language == "en"
