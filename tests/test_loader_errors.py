"""Every error of the three task-file loaders: one line naming the file, the line (where there
is one) and the field, as the README promises (`file:line: field 'x': what was expected`).
Expected messages are written out here, not taken from the loaders."""

from __future__ import annotations

import json
import re

import pytest

from ssr.data import load_instances
from ssr.data.loaders import RowPolicy, detect_format
from ssr.errors import DataError

GOOD = {"id": "g", "input": "a b", "output": "B A", "full_prompt": "Reverse it.\n\na b", "task_name": "t"}
PLAIN = {"instruction": "Reverse it.", "input": "a b", "output": "b a"}

SUPERNI_ROWS = [  # (bad second line, expected ":line: field ...: message")
    ('{"output": "x", "full_prompt": "d\\n\\nx"}', ":2: field 'input': missing"),
    ('{"input": 5, "output": "x", "full_prompt": "d\\n\\nx"}', ":2: field 'input': expected a string, got int"),
    ('{"input": "x", "output": "x"}', ":2: field 'full_prompt': missing"),
    ('{"input": "x", "output": "x", "full_prompt": ""}', ":2: field 'full_prompt': must not be empty"),
    ('{"input": "x", "output": "x", "full_prompt": ["d"]}', ":2: field 'full_prompt': expected a string, got list"),
    ('{"input": "x", "output": "x", "full_prompt": "  \\n\\nx"}',
     ":2: field 'full_prompt': expected the task definition, a blank line, then the input"),
    ('{"input": "x", "output": null, "full_prompt": "d\\n\\nx"}', ":2: field 'output': expected a string, got NoneType"),
    ('"just a string"', ":2: expected a JSON object, got str"),
    ("[" * 5000 + "]" * 5000, ":2: not valid JSON (nested too deeply at column 1)"),
]


@pytest.mark.parametrize("line, message", SUPERNI_ROWS)
def test_superni_row_errors(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(DataError) as err:
        load_instances(path, fmt="superni")
    assert str(err.value).startswith(f"{path}{message}") and "\n" not in str(err.value)
    policy = RowPolicy(skip_bad_rows=True)  # skipped and counted instead
    assert [i.id for i in load_instances(path, fmt="superni", policy=policy)] == ["g"] and policy.skipped == 1


PLAIN_ROWS = [
    ('{"input": "x", "output": "y"}', ":2: field 'instruction': missing"),
    ('{"instruction": " ", "input": "x", "output": "y"}', ":2: field 'instruction': must not be empty"),
    ('{"instruction": "d", "output": "y"}', ":2: field 'input': missing"),
    ('{"instruction": "d", "input": "x", "output": ""}', ":2: field 'output': must not be empty"),
]


@pytest.mark.parametrize("line, message", PLAIN_ROWS)
def test_plain_jsonl_row_errors(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PLAIN) + "\n" + line + "\n")
    with pytest.raises(DataError, match="^" + re.escape(f"{path}{message}")):
        load_instances(path)


def test_plain_jsonl_needs_no_instruction_when_the_config_gives_the_definition(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"input": "x", "output": "y"}\n{"id": "own", "input": "u", "output": "v"}\n')
    first, second = load_instances(path, definition="Given.")
    assert (first.definition, first.input, first.output, first.id) == ("Given.", "x", "y", "p-1")
    assert second.id == "own"  # a row's own string id is kept


def test_empty_files_have_no_instances(tmp_path):
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n"), ("empty_ni.json", '{"Definition": "d", "Instances": []}')):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(DataError, match="^" + re.escape(f"{path}: no instances") + "$"):
            load_instances(path)


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="^" + re.escape(f"{tmp_path / 'nope.jsonl'}: file not found") + "$"):
        load_instances(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="^" + re.escape(f"{tmp_path}: is a directory, expected a data file") + "$"):
        load_instances(tmp_path)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"input": "caf\xe9"}\n')
    with pytest.raises(DataError) as err:
        load_instances(latin)
    assert str(err.value) == f"{latin}:2: not UTF-8 text (byte 0xe9 at column 15); expected JSON Lines"


@pytest.mark.parametrize("name, text", [("t.jsonl", json.dumps(GOOD) + "\n"), ("task.json", '{"Definition": "d", "Instances": []}')])
def test_an_unreadable_file_says_why(tmp_path, name, text, unreadable_files):
    path = tmp_path / name
    path.write_text(text)  # written, not read: the fixture stops reading only
    with pytest.raises(DataError) as err:
        load_instances(path)
    assert str(err.value) == f"{path}: cannot be read (Permission denied)"


def test_skipped_jsonl_rows_are_logged_once_with_the_first_error(tmp_path, caplog):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{oops\n" + json.dumps({**GOOD, "output": ""}) + "\n")
    policy = RowPolicy(skip_bad_rows=True)
    assert len(load_instances(path, policy=policy)) == 1 and policy.skipped == 2
    assert caplog.messages == [f"skipping malformed rows (data.skip_bad_rows); first: {path}:2: not valid JSON "
                               "(Expecting property name enclosed in double quotes at column 2)"]


def test_empty_inputs_are_allowed_and_ids_must_be_strings(tmp_path):
    """An input may be empty (an instruction alone, as in Alpaca); only a string `id` is kept,
    any other is replaced by file stem and line."""
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({**GOOD, "input": "", "id": 5}) + "\n")
    [inst] = load_instances(path, fmt="superni")
    assert (inst.input, inst.id) == ("", "rows-1")
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({**PLAIN, "input": "", "id": ["x"]}) + "\n")
    [inst] = load_instances(plain)
    assert (inst.input, inst.id) == ("", "plain-1")


NI_DOCS = [  # (document text, expected "field ...: message" after the path)
    ('{"Definition": ["d"], "Instances": [{"input": "x", "output": ["y"]}', ":1: not valid JSON (Expecting ',' delimiter)"),
    ('{"Definition": ["d"]}\n{"Instances": []}', ":2: not valid JSON (Extra data); the .json extension selects the "
     "natural-instructions format (one JSON object): for JSON Lines, name the file .jsonl or set the task's `format`"),
    ('["d"]', ": expected a natural-instructions task object"),
    ('{"Instances": [{"input": "x", "output": ["y"]}]}', ": field 'Definition': expected a non-empty string or list of strings"),
    ('{"Definition": [" "], "Instances": []}', ": field 'Definition': expected a non-empty string or list of strings"),
    ('{"Definition": "d"}', ": field 'Instances': missing or not a list"),
    ('{"Definition": "d", "Instances": {"input": "x"}}', ": field 'Instances': missing or not a list"),
    ('{"Definition": "d", "Instances": ["x"]}', ": field 'Instances[0]': expected an object"),
    ('{"Definition": "d", "Instances": [{"input": 1, "output": "y"}]}', ": field 'Instances[0].input': expected a string"),
    ('{"Definition": "d", "Instances": [{"input": "x", "output": []}]}',
     ": field 'Instances[0].output': expected a string or a non-empty list of strings"),
    ('{"Definition": "d", "Instances": [{"input": "x", "output": ["y", 2]}]}',
     ": field 'Instances[0].output': expected a string or a non-empty list of strings"),
    ('{"Definition": "d", "Instances": [{"input": "x", "output": [" ", "y"]}]}', ": field 'Instances[0].output': must not be empty"),
]


@pytest.mark.parametrize("doc, message", NI_DOCS)
def test_natural_instructions_errors(tmp_path, doc, message):
    path = tmp_path / "task.json"
    path.write_text(doc)
    with pytest.raises(DataError) as err:
        load_instances(path)
    assert str(err.value) == f"{path}{message}"


def test_natural_instructions_file_errors_and_skipped_rows(tmp_path, caplog):
    """A task file that is not UTF-8 names the line of the bad byte; skipped instances are each
    counted and logged with the error."""
    path = tmp_path / "task.json"
    path.write_bytes(b'{"Definition": "d",\n "Instances": [\n {"input": "caf\xe9", "output": "y"}]}')
    with pytest.raises(DataError) as err:
        load_instances(path)
    assert str(err.value) == f"{path}:3: not UTF-8 text (byte 0xe9); expected a JSON task file"
    path.write_text('{"Definition": "d", "Instances": [{"input": "x"}, {"input": "y", "output": "z"}, {"output": "w"}]}')
    policy = RowPolicy(skip_bad_rows=True)
    assert [i.input for i in load_instances(path, policy=policy)] == ["y"] and policy.skipped == 2
    assert caplog.messages == [
        f"skipping malformed row: {path}: field 'Instances[0].output': expected a string or a non-empty list of strings",
        f"skipping malformed row: {path}: field 'Instances[2].input': expected a string"]


def test_natural_instructions_definition_and_references(tmp_path):
    path = tmp_path / "task.json"
    path.write_text(json.dumps({"Definition": " Add. ", "Instances": [{"id": "q1", "input": "1+1", "output": ["2", "two"]},
                                                                      {"input": "2+2", "output": "4"}]}))
    a, b = load_instances(path)
    assert (a.id, a.definition, a.output, a.all_references) == ("q1", "Add.", "2", ("2", "two"))
    assert (b.id, b.output, b.all_references) == ("task-Instances-1", "4", ("4",))


def test_format_detection(tmp_path):
    (tmp_path / "s.jsonl").write_text("\n" + json.dumps(GOOD) + "\n")
    (tmp_path / "p.jsonl").write_text(json.dumps(PLAIN) + "\n")
    (tmp_path / "n.json").write_text("{}")
    (tmp_path / "broken.jsonl").write_bytes(b"\xff\n")
    assert [detect_format(tmp_path / n) for n in ("s.jsonl", "p.jsonl", "n.json", "broken.jsonl")] == \
        ["superni", "jsonl", "natural-instructions", "jsonl"]
    [inst] = load_instances(tmp_path / "s.jsonl")
    assert (inst.id, inst.definition, inst.input, inst.output) == ("g", "Reverse it.", "a b", "B A")
