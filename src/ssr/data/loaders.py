"""Loaders for the three task formats. A malformed row is an error naming file, line and field.

- SuperNI split rows (the SSR release): JSONL with `input`, `output`, `full_prompt`
  (definition + blank line + input) and `task_name`.
- natural-instructions task files: one JSON object with `Definition`, `Positive Examples`
  and `Instances` (outputs are lists: the first is the target, all are references).
- plain JSONL: `instruction` (or the task's `definition` in the config), `input`, `output`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssr.data.subsets import sample_subset, subset_seed
from ssr.data.task import Instance, Task, detect_language
from ssr.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class RowPolicy:
    """What to do with a malformed row: fail (default) or skip and count."""

    skip_bad_rows: bool = False
    skipped: int = 0


def _field(path: Path, line: int, row: Any, name: str, *, allow_empty: bool = True) -> str:
    if not isinstance(row, dict):
        raise DataError(path, f"expected a JSON object, got {type(row).__name__}", line)
    if name not in row:
        raise DataError(path, "missing", line, name)
    value = row[name]
    if not isinstance(value, str):
        raise DataError(path, f"expected a string, got {type(value).__name__}", line, name)
    if not allow_empty and not value.strip():
        raise DataError(path, "must not be empty", line, name)
    return value


def read_text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each non-blank line; a line that is not UTF-8 is an error naming it."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(path, f"cannot be read ({err.strerror or err})") from None
    out = []
    for line_no, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(path, f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                                  "expected JSON Lines", line_no) from None
        if text.strip():
            out.append((line_no, text))
    return out


def _parse_json(text: str) -> Any:
    """json.loads, with nesting too deep for the parser reported like any other malformed JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None


def _read_jsonl_rows(path: Path, policy: RowPolicy, parse) -> list[Instance]:
    out = []
    for line_no, text in read_text_lines(path):
        try:
            try:
                row = _parse_json(text)
            except json.JSONDecodeError as err:
                raise DataError(path, f"not valid JSON ({err.msg} at column {err.colno})", line_no) from None
            out.append(parse(row, line_no))
        except DataError as err:
            if not policy.skip_bad_rows:
                raise
            if policy.skipped == 0:
                log.warning("skipping malformed rows (data.skip_bad_rows); first: %s", err)
            policy.skipped += 1
    return out


def load_superni(path: Path, policy: RowPolicy, definition: str | None = None) -> list[Instance]:
    def parse(row: Any, line: int) -> Instance:
        input_ = _field(path, line, row, "input")
        output = _field(path, line, row, "output", allow_empty=False)
        full_prompt = _field(path, line, row, "full_prompt", allow_empty=False)
        row_id = row.get("id") if isinstance(row.get("id"), str) else f"{path.stem}-{line}"
        found = definition or full_prompt.split("\n\n")[0].strip()
        if not found:
            raise DataError(path, "expected the task definition, a blank line, then the input", line, "full_prompt")
        return Instance(row_id, input_, output, found)

    return _read_jsonl_rows(path, policy, parse)


def load_plain_jsonl(path: Path, policy: RowPolicy, definition: str | None = None) -> list[Instance]:
    def parse(row: Any, line: int) -> Instance:
        input_ = _field(path, line, row, "input")
        output = _field(path, line, row, "output", allow_empty=False)
        if definition is None:
            instruction = _field(path, line, row, "instruction", allow_empty=False)
        else:
            instruction = definition
        row_id = row.get("id") if isinstance(row.get("id"), str) else f"{path.stem}-{line}"
        return Instance(row_id, input_, output, instruction)

    return _read_jsonl_rows(path, policy, parse)


def load_natural_instructions(
    path: Path, policy: RowPolicy, definition: str | None = None, key: str = "Instances"
) -> list[Instance]:
    """Read `Instances` (or `Positive Examples`) of a natural-instructions task file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(path, f"cannot be read ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(path, f"not UTF-8 text (byte 0x{data[err.start]:02x}); expected a JSON task file", line) from None
    try:
        doc = _parse_json(text)
    except json.JSONDecodeError as err:
        hint = ""
        if err.msg == "Extra data":  # several JSON values: most likely JSON Lines
            hint = ("; the .json extension selects the natural-instructions format (one JSON object): "
                    "for JSON Lines, name the file .jsonl or set the task's `format`")
        raise DataError(path, f"not valid JSON ({err.msg}){hint}", err.lineno) from None
    if not isinstance(doc, dict):
        raise DataError(path, "expected a natural-instructions task object")
    if definition is None:
        raw_def = doc.get("Definition")
        if isinstance(raw_def, list) and raw_def and all(isinstance(d, str) for d in raw_def) and raw_def[0].strip():
            definition = raw_def[0].strip()
        elif isinstance(raw_def, str) and raw_def.strip():
            definition = raw_def.strip()
        else:
            raise DataError(path, "expected a non-empty string or list of strings", None, "Definition")
    rows = doc.get(key)
    if not isinstance(rows, list):
        raise DataError(path, "missing or not a list", None, key)
    out = []
    for i, row in enumerate(rows):
        where = f"{key}[{i}]"
        try:
            if not isinstance(row, dict):
                raise DataError(path, "expected an object", None, where)
            input_ = row.get("input")
            if not isinstance(input_, str):
                raise DataError(path, "expected a string", None, f"{where}.input")
            outputs = row.get("output")
            outputs = [outputs] if isinstance(outputs, str) else outputs
            if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs):
                raise DataError(path, "expected a string or a non-empty list of strings", None, f"{where}.output")
            if not outputs[0].strip():
                raise DataError(path, "must not be empty", None, f"{where}.output")
            row_id = row.get("id") if isinstance(row.get("id"), str) else f"{path.stem}-{key}-{i}"
            out.append(Instance(row_id, input_, outputs[0], definition, tuple(outputs)))
        except DataError as err:
            if not policy.skip_bad_rows:
                raise
            policy.skipped += 1
            log.warning("skipping malformed row: %s", err)
    return out


def detect_format(path: Path) -> str:
    """`natural-instructions` for .json; for JSONL, by the first row's keys."""
    if path.suffix == ".json":
        return "natural-instructions"
    try:
        with open(path, "rb") as f:
            first = next((raw for raw in f if raw.strip()), b"")
        row = _parse_json(first.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "jsonl"  # the loader reports the problem, with its line
    return "superni" if isinstance(row, dict) and "full_prompt" in row else "jsonl"


LOADERS = {"superni": load_superni, "jsonl": load_plain_jsonl, "natural-instructions": load_natural_instructions}


def load_instances(path: str | Path, fmt: str = "auto", definition: str | None = None, policy: RowPolicy | None = None) -> list[Instance]:
    """Load one split file in the given (or detected) format."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a directory, expected a data file")
    if not path.is_file():
        raise DataError(path, "file not found")
    policy = policy or RowPolicy()
    fmt = detect_format(path) if fmt == "auto" else fmt
    instances = LOADERS[fmt](path, policy, definition)
    if not instances:
        raise DataError(path, "no instances")
    return instances


def _check_one_definition(path: str, instances: list[Instance], given: str | None) -> str:
    """A task has one definition; rows of one file that disagree are an error, not a guess."""
    if given:
        return given
    first = instances[0].definition
    for inst in instances[1:]:
        if inst.definition != first:
            raise DataError(path, f"rows disagree on the task definition (row id {inst.id!r}); set the task's `definition` in the config")
    return first


def load_task(task_cfg, data_cfg, n_demos: int = 20, max_eval: int | None = None, max_new_tokens: int = 128,
              seed: int = 0) -> Task:
    """Build a Task from its config entry: train, eval and demos, capped as configured.

    Caps keep a seeded, class-stratified sample in file order (see `ssr.data.subsets`), never
    the first N rows. `max_new_tokens` is the run's answer length, used where the task sets none.
    """
    def subset(rows: list[Instance], n: int | None, split: str) -> list[Instance]:
        return sample_subset(rows, n, subset_seed(seed, task_cfg.name, split))

    if task_cfg.builtin:
        from ssr.data.builtin import builtin_task

        task = builtin_task(task_cfg.name)
        task.train = subset(task.train, data_cfg.max_train_examples, "train")
        task.eval = subset(task.eval, max_eval, "eval")
        task.max_new_tokens = task_cfg.max_new_tokens or max_new_tokens
        task.language = task_cfg.language or detect_language(task.eval or task.train)
        task.learnt = task_cfg.learnt
        return task
    policy = RowPolicy(skip_bad_rows=data_cfg.skip_bad_rows)
    fmt, given = task_cfg.format, task_cfg.definition
    if task_cfg.train is None and task_cfg.eval is None:
        raise DataError(task_cfg.name, "a task needs at least a `train` or an `eval` file")
    train = load_instances(task_cfg.train, fmt, given, policy) if task_cfg.train else []
    evals = load_instances(task_cfg.eval, fmt, given, policy) if task_cfg.eval else []
    natural_instructions = fmt == "natural-instructions" or (fmt == "auto" and Path(task_cfg.train or "").suffix == ".json")
    if task_cfg.demos:
        demos = load_instances(task_cfg.demos, fmt, given, policy)
    elif task_cfg.train and natural_instructions:
        demos = load_natural_instructions(Path(task_cfg.train), policy, given, key="Positive Examples")
    else:
        demos = subset(train, n_demos, "demos")  # the paper's pool: 1 % of the training split, every class
    if policy.skipped:
        log.warning("task %s: skipped %d malformed rows", task_cfg.name, policy.skipped)
    train = subset(train, data_cfg.max_train_examples, "train")
    evals = subset(evals, max_eval, "eval")
    if task_cfg.open_domain:  # one instruction per row: the task's definition is only a label
        from ssr.data.general import DEFINITION as definition
    else:
        definition = _check_one_definition(task_cfg.train or task_cfg.eval, train or evals, given)
    return Task(task_cfg.name, definition, train, evals, demos, skipped_rows=policy.skipped,
                max_new_tokens=task_cfg.max_new_tokens or max_new_tokens,
                language=task_cfg.language or detect_language(evals or train),
                open_domain=task_cfg.open_domain, learnt=task_cfg.learnt)
