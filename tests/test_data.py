import json
import random

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
    with pytest.raises(DataError, match="disagree on the task definition") as err:
        load_task(TaskConfig(name="t", train=str(tmp_path / "mix.jsonl")), DataConfig())
    assert str(err.value).startswith(f"{tmp_path / 'mix.jsonl'}: rows disagree")  # the file is named
    # already at the second row
    write_jsonl(tmp_path / "two.jsonl", make_task_rows("upper", 1, seed=0) + make_task_rows("count", 1, seed=0))
    with pytest.raises(DataError, match="disagree on the task definition"):
        load_task(TaskConfig(name="t", train=str(tmp_path / "two.jsonl")), DataConfig())


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


def _drawn(n_rows: int, n: int, seed: str) -> list[int]:
    """By hand: the documented draw of a free-text split, `random.Random("<seed>:<task>:<split>")`
    sampling `n` row numbers, kept in file order."""
    return sorted(random.Random(seed).sample(range(n_rows), n))


def test_each_split_is_drawn_with_its_own_seed_and_the_defaults(tmp_path):
    """Train, eval and the demonstration pool are each a seeded draw of their own (run seed,
    task, split), so a run's data is reproducible and the splits are independent; without
    arguments: 20 demonstrations, 128 new tokens, seed 0."""
    write_jsonl(tmp_path / "train.jsonl", make_task_rows("reverse", 40, seed=0))
    write_jsonl(tmp_path / "eval.jsonl", make_task_rows("reverse", 30, seed=1))
    cfg = TaskConfig(name="rev", train=str(tmp_path / "train.jsonl"), eval=str(tmp_path / "eval.jsonl"))
    train, evals = (load_instances(tmp_path / f"{s}.jsonl") for s in ("train", "eval"))
    assert len({r.output for r in train}) > 20  # free text: a plain draw, not by class
    task = load_task(cfg, DataConfig(max_train_examples=10), max_eval=12, seed=5)
    assert [i.id for i in task.train] == [train[k].id for k in _drawn(40, 10, "5:rev:train")]
    assert [i.id for i in task.eval] == [evals[k].id for k in _drawn(30, 12, "5:rev:eval")]
    assert [i.id for i in task.demos] == [train[k].id for k in _drawn(40, 20, "5:rev:demos")]
    default = load_task(cfg, DataConfig(max_train_examples=10))
    assert [i.id for i in default.train] == [train[k].id for k in _drawn(40, 10, "0:rev:train")]
    assert default.max_new_tokens == 128 and len(default.demos) == 20
    # the same file under another task name is another draw
    other = load_task(TaskConfig(name="rev2", train=cfg.train), DataConfig(max_train_examples=10), seed=5)
    assert [i.id for i in other.train] == [train[k].id for k in _drawn(40, 10, "5:rev2:train")] != [i.id for i in task.train]


def test_builtin_task_settings_and_draws():
    """A built-in task takes the config's answer length, language and `learnt`, and its caps
    are the same seeded draws as a file's (`general` is free text: a plain draw)."""
    from ssr.data.builtin import builtin_task

    full = builtin_task("general")
    cfg = TaskConfig(name="general", builtin=True, max_new_tokens=7, language="xx", learnt=True)
    task = load_task(cfg, DataConfig(max_train_examples=10), max_eval=5, max_new_tokens=33, seed=2)
    assert [i.id for i in task.train] == [full.train[k].id for k in _drawn(len(full.train), 10, "2:general:train")]
    assert [i.id for i in task.eval] == [full.eval[k].id for k in _drawn(len(full.eval), 5, "2:general:eval")]
    assert (task.max_new_tokens, task.language, task.learnt) == (7, "xx", True)
    plain = load_task(TaskConfig(name="general", builtin=True), DataConfig(), max_new_tokens=33)
    assert (plain.max_new_tokens, plain.language, plain.learnt) == (33, "en", False)


def test_a_task_without_files_names_itself():
    with pytest.raises(DataError) as err:
        load_task(TaskConfig(name="lonely"), DataConfig())
    assert str(err.value) == "lonely: a task needs at least a `train` or an `eval` file"


def test_definition_format_and_skipping_apply_to_every_file_of_a_task(tmp_path, caplog):
    """`definition`, `format` and `data.skip_bad_rows` hold for the eval and demonstration files
    too, not only for train; the skipped rows of all three are counted on the task and logged."""
    for split in ("train", "eval", "demos"):
        (tmp_path / f"{split}.txt").write_text(  # .txt: only the configured format reads them
            "".join(json.dumps({"id": f"{split}{i}", "input": f"{split} {i}", "output": f"out {i}"}) + "\n"
                    for i in range(3)) + "{oops\n")
    cfg = TaskConfig(name="echo", format="jsonl", definition="Echo the input.",
                     **{s: str(tmp_path / f"{s}.txt") for s in ("train", "eval", "demos")})
    task = load_task(cfg, DataConfig(skip_bad_rows=True))
    assert [i.id for i in task.demos] == ["demos0", "demos1", "demos2"]
    assert {i.definition for i in task.train + task.eval + task.demos} == {"Echo the input."}
    assert task.skipped_rows == 3 and len(task.eval) == 3
    assert "task echo: skipped 3 malformed rows" in caplog.messages


def test_natural_instructions_by_format_demos_take_the_given_definition_and_skipping(tmp_path):
    """`format: natural-instructions` on a file not named .json: the demonstrations are its
    positive examples, with the configured definition, and a bad one is skipped and counted."""
    doc = {"Definition": ["From the file."],
           "Positive Examples": [{"input": "1+1?", "output": "2"}, {"input": "bad"}],
           "Instances": [{"id": "i1", "input": "2+2?", "output": ["4"]}]}
    (tmp_path / "task.txt").write_text(json.dumps(doc))
    cfg = TaskConfig(name="t", train=str(tmp_path / "task.txt"), format="natural-instructions", definition="Given.")
    task = load_task(cfg, DataConfig(skip_bad_rows=True))
    assert [(d.input, d.definition) for d in task.demos] == [("1+1?", "Given.")]
    assert task.skipped_rows == 1


def test_classification_is_at_most_20_labels_each_on_two_rows_on_average():
    from ssr.data.subsets import is_classification

    labels = lambda distinct, rows: [f"label {i % distinct}" for i in range(rows)]  # noqa: E731
    assert is_classification(labels(20, 40))  # at both bounds: 20 labels, exactly two rows each
    assert not is_classification(labels(21, 100))  # 21 labels, however many rows
    assert is_classification(labels(2, 4)) and not is_classification(labels(2, 3))
    assert not is_classification(labels(5, 6))  # few labels, but most rows unique: free text


def test_language_detection_threshold_by_hand():
    """`non-en` from one reference in ten with a non-ASCII letter; English text, digits and
    punctuation alone never count; nothing to look at is English."""
    from ssr.data.task import Instance, detect_language

    refs = lambda texts: [Instance(str(i), "x", t, "d") for i, t in enumerate(texts)]  # noqa: E731
    assert detect_language(refs(["plain English, 42!"] * 10)) == "en"
    assert detect_language(refs(["la canción"] + ["the song"] * 9)) == "non-en"  # 1 in 10: at the threshold
    assert detect_language(refs(["la canción"] + ["the song"] * 19)) == "en"  # 1 in 20: below it
    assert detect_language(refs(["price: 5 € — ok"] * 10)) == "en"  # non-ASCII, but no letter
    assert detect_language([]) == "en"


def test_training_row_records_what_is_learnt_and_where_it_came_from():
    from ssr.data.task import Instance, training_row

    inst = Instance("q7", "What is 2+2?", "4", "Answer the question.", ("4", "four"))
    assert training_row(inst, "qa", "replay", stage="2-qg") == {
        "task": "qa", "source": "replay", "id": "q7", "definition": "Answer the question.",
        "input": "What is 2+2?", "output": "4", "stage": "2-qg"}


def test_a_file_tasks_settings_reach_the_task(tmp_path):
    """Name, definition, answer length, `learnt` and `open_domain` of a task read from files."""
    from ssr.data.general import DEFINITION

    write_jsonl(tmp_path / "t.jsonl", make_task_rows("upper", 4, seed=0))
    cfg = TaskConfig(name="shout", train=str(tmp_path / "t.jsonl"), max_new_tokens=9, learnt=True)
    task = load_task(cfg, DataConfig(), max_new_tokens=33)
    assert (task.name, task.definition, task.max_new_tokens, task.learnt, task.open_domain) == (
        "shout", "Write the input in upper case.", 9, True, False)
    assert load_task(TaskConfig(name="shout", train=cfg.train), DataConfig(), max_new_tokens=33).max_new_tokens == 33
    plain = tmp_path / "alpaca.jsonl"
    write_jsonl(plain, [{"instruction": f"Do {i}.", "input": "", "output": "done"} for i in range(3)])
    task = load_task(TaskConfig(name="general", train=str(plain), open_domain=True), DataConfig())
    assert (task.open_domain, task.definition) == (True, DEFINITION)  # each row keeps its own instruction
    assert [i.definition for i in task.train] == ["Do 0.", "Do 1.", "Do 2."]
