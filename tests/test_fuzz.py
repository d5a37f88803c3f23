"""Property-based fuzzing of every loader of user input: the config loader (through `ssr
validate`, which also loads the data and checks the plan) and the three task-file loaders.

The property: whatever the bytes, the result is success or an SSRError (exit code 2, one line
per problem), never another exception and never a hang. 320 generated inputs by default
(derandomized, so `make test` is repeatable); `SSR_FUZZ_EXAMPLES=5000` runs that many per test,
randomly seeded.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_config
from ssr.config import load_config
from ssr.data import load_instances
from ssr.errors import SSRError
from ssr.runner import prepare

EXAMPLES = int(os.environ.get("SSR_FUZZ_EXAMPLES", 0))
HANG_SECONDS = 20


def fuzz_settings(default: int):
    return settings(max_examples=EXAMPLES or default, deadline=None, derandomize=not EXAMPLES, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Hang(Exception):
    pass


@contextmanager
def hang_guard(seconds: float = HANG_SECONDS):
    """Fail an input that takes longer than `seconds` (a loop that never ends)."""
    def expire(signum, frame):
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def _tmp_file(name: str, data: bytes) -> Iterator[Path]:
    """`data` in a file named `name` in a directory of its own, removed afterwards: hundreds of
    inputs per run would otherwise pile up in the temporary folder."""
    with tempfile.TemporaryDirectory(prefix="ssr-fuzz-") as directory:
        path = Path(directory) / name
        path.write_bytes(data)
        yield path


# --- strategies ---------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.sampled_from(["", " ", "yes", "no", "on", ".inf", "1e-3", "-1", "0", "x" * 300, "../x", "a/b"]),
)
json_values = st.recursive(scalars.filter(lambda v: not isinstance(v, float) or v == v and abs(v) != float("inf")),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                           max_leaves=12)
yaml_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
                           max_leaves=8)
yaml_noise = st.text(alphabet=st.sampled_from(list("abc: -[]{}'\"#&*!|>%@`\n\t,?0123456789.")), max_size=200)


def _paths(node, prefix=()):
    """Every key path of a nested config dict/list."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_configs(draw, base: dict) -> bytes:
    """A valid config with a few keys replaced, deleted or added, as YAML text (sometimes broken)."""
    cfg = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(cfg) if p]
        path = draw(st.sampled_from(paths))
        parent = cfg
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(yaml_values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(yaml_values)
        if not isinstance(cfg, dict):
            break
    text = yaml.safe_dump(cfg, sort_keys=False)
    if draw(st.integers(0, 9)) == 0:  # now and then, damage the text itself
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(yaml_noise) + text[at:]
    return text.encode("utf-8")


def _validate(config: Path) -> None:
    """What `ssr validate` does (config, data, plan); an error is one line per problem, each
    naming the config file (with its line), a data file, or `--set`."""
    with hang_guard():
        try:
            prepare(load_config(config))
        except SSRError as err:
            _assert_error_lines(err, (str(config), "/"))


def _assert_error_lines(err: SSRError, starts: tuple[str, ...]) -> None:
    lines = str(err).splitlines()
    assert lines and all(line.startswith(starts) for line in lines), str(err)


# --- the config loader --------------------------------------------------------------------

@fuzz_settings(60)
@given(data=st.one_of(st.binary(max_size=300), yaml_noise.map(str.encode), st.text(max_size=200).map(str.encode)))
def test_fuzz_config_bytes(data):
    with _tmp_file("cfg.yaml", data) as path:
        _validate(path)


def test_fuzz_mutated_configs(task_dir, tiny_model_dir):
    base = tiny_config(task_dir, tiny_model_dir, "ssr", selection="random")

    @fuzz_settings(100)
    @given(data=mutated_configs(base))
    def check(data):
        with _tmp_file("cfg.yaml", data) as path:
            _validate(path)

    check()


# --- task files ---------------------------------------------------------------------------

SUPERNI_KEYS = ["input", "output", "full_prompt", "id", "task_name"]
PLAIN_KEYS = ["instruction", "input", "output", "id"]


@st.composite
def jsonl_files(draw, keys: list[str]) -> bytes:
    """JSON Lines whose rows have the format's keys with values of any type, plus stray lines."""
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.integers(0, 9))
        if kind < 6:
            row = {k: draw(st.one_of(st.text(max_size=20), json_values)) for k in keys if draw(st.booleans()) or kind < 3}
            lines.append(json.dumps(row).encode())
        elif kind < 8:
            lines.append(json.dumps(draw(json_values)).encode())
        else:
            lines.append(draw(st.binary(max_size=40)))
    return b"\n".join(lines)


@st.composite
def natural_instructions_files(draw) -> bytes:
    doc = {}
    if draw(st.booleans()):
        doc["Definition"] = draw(st.one_of(st.lists(st.text(max_size=20), max_size=2), json_values))
    for key in ("Instances", "Positive Examples"):
        if draw(st.integers(0, 3)):
            doc[key] = draw(st.one_of(
                st.lists(st.fixed_dictionaries({}, optional={"input": json_values, "output": st.one_of(
                    st.lists(st.text(max_size=10), max_size=3), json_values), "id": json_values}), max_size=4),
                json_values))
    text = json.dumps(doc if draw(st.integers(0, 5)) else draw(json_values))
    if draw(st.integers(0, 7)) == 0:
        text += "\n" + json.dumps(draw(json_values))  # JSON Lines in a .json file
    return text.encode()


def _load(name: str, data: bytes, fmt: str, definition: str | None = None) -> None:
    with _tmp_file(name, data) as path, hang_guard():
        try:
            load_instances(path, fmt, definition)
        except SSRError as err:
            _assert_error_lines(err, (str(path),))


@fuzz_settings(60)
@given(data=st.one_of(jsonl_files(SUPERNI_KEYS), st.binary(max_size=200)))
def test_fuzz_superni_jsonl(data):
    _load("t.jsonl", data, "superni")
    _load("t.jsonl", data, "auto")


@fuzz_settings(50)
@given(data=st.one_of(jsonl_files(PLAIN_KEYS), st.binary(max_size=200)), definition=st.one_of(st.none(), st.text(min_size=1, max_size=10)))
def test_fuzz_plain_jsonl(data, definition):
    _load("t.jsonl", data, "jsonl", definition)


@fuzz_settings(50)
@given(data=st.one_of(natural_instructions_files(), st.binary(max_size=200)))
def test_fuzz_natural_instructions_json(data):
    _load("t.json", data, "natural-instructions")
    _load("t.json", data, "auto")


def test_hang_guard_fires():
    """The guard itself: a loop that never ends is stopped and reported."""
    with pytest.raises(Hang):
        with hang_guard(0.2):
            while True:
                pass
