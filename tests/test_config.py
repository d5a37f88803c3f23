from pathlib import Path

import pytest
import yaml

from ssr.config import apply_overrides, diff, load_config, to_dict, validate
from ssr.errors import ConfigError

BASE = {"tasks": [{"name": "a", "train": "a.jsonl", "eval": "a.eval.jsonl"}]}


def test_defaults_follow_the_paper():
    cfg = validate(BASE)
    assert (cfg.train.lora.r, cfg.train.lora.alpha, cfg.train.lora.dropout) == (8, 32, 0.1)
    assert cfg.train.lora.targets == ["q_proj", "v_proj"]
    assert (cfg.train.lr, cfg.train.scheduler, cfg.train.max_grad_norm) == (2e-4, "cosine", 1.0)
    assert cfg.train.batch_size * cfg.train.grad_accum == 32
    assert (cfg.method.temperature, cfg.method.top_p, cfg.method.repetition_penalty) == (0.9, 0.6, 1.2)
    # the release's lengths: 512 new tokens when evaluating, 2048 tokens per synthesis sample
    assert (cfg.eval.max_new_tokens, cfg.method.synth_max_length, cfg.method.synth_max_new_tokens) == (512, 2048, None)
    assert (cfg.eval.scorer, cfg.method.embedding_pooling) == ("superni", "mean")
    assert cfg.train.group_by_length is True  # README: length-grouped batches unless switched off


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"cfg: field 'train.lrr': Extra inputs are not permitted"):
        validate({**BASE, "train": {"lrr": 1}}, "cfg")


def test_bad_value_names_field_and_value():
    with pytest.raises(ConfigError, match=r"field 'method.name': .*got 'magic'"):
        validate({**BASE, "method": {"name": "magic"}})


def test_missing_tasks():
    with pytest.raises(ConfigError, match=r"field 'tasks': Field required"):
        validate({})


def test_options_of_other_methods_are_rejected():
    with pytest.raises(ConfigError, match="only apply to replay and ssr"):
        validate({**BASE, "method": {"name": "sequential", "ratio": 0.1}})
    with pytest.raises(ConfigError, match="either method.ratio or method.per_task"):
        validate({**BASE, "method": {"name": "replay", "ratio": 0.1, "per_task": 5}})


def test_duplicate_task_names():
    with pytest.raises(ConfigError, match="repeated"):
        validate({"tasks": [{"name": "a"}, {"name": "a"}]})


def test_yaml_on_off_for_bf16():
    assert validate({**BASE, "train": {"bf16": True}}).train.bf16 == "on"
    assert validate({**BASE, "train": {"bf16": False}}).train.bf16 == "off"


def test_overrides_nested_list_and_yaml_values():
    raw = apply_overrides(BASE, ["train.lr=1e-3", "tasks.0.name=b", "method.per_task=3", "train.lora.targets=[q_proj, k_proj]"])
    assert raw["train"]["lr"] == 1e-3 and raw["tasks"][0]["name"] == "b" and raw["method"]["per_task"] == 3
    assert raw["train"]["lora"]["targets"] == ["q_proj", "k_proj"]
    assert BASE["tasks"][0]["name"] == "a"  # the input is not modified
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(BASE, ["train.lr"])
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(BASE, ["tasks.5.name=x"])


def test_relative_paths_resolve_against_config_file(tmp_path):
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(BASE))
    cfg = load_config(tmp_path / "cfg.yaml")
    assert cfg.tasks[0].train == str(tmp_path / "a.jsonl")
    cfg = load_config(tmp_path / "cfg.yaml", ["data.dir=sub"])
    assert cfg.tasks[0].train == str(tmp_path / "sub" / "a.jsonl")


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("tasks: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_diff_names_changed_keys_and_ignores_runtime_ones():
    a = to_dict(validate(BASE))
    b = to_dict(validate({**BASE, "train": {"lr": 1e-3}, "eval": {"batch_size": 3}}))
    assert diff(a, b) == ["train.lr: 0.0002 -> 0.001"]


def test_shipped_configs_are_valid():
    root = Path(__file__).resolve().parents[1]
    paths = [*sorted((root / "configs").glob("*.yaml")), root / "src" / "ssr" / "configs" / "demo.yaml"]
    assert len(paths) >= 2
    for path in paths:
        load_config(path)


def test_cpu_configs_keep_their_own_generation_budgets():
    """The release's 512-token answers and uncapped synthesis would blow the CPU configs' time
    budgets: each sets its answer length (run-wide or per task) and caps synthesis."""
    root = Path(__file__).resolve().parents[1]
    for path in [*sorted((root / "configs").glob("*.yaml")), root / "src" / "ssr" / "configs" / "demo.yaml"]:
        raw = yaml.safe_load(path.read_text())
        assert raw.get("eval", {}).get("max_new_tokens") or all("max_new_tokens" in t for t in raw["tasks"]), path
        assert raw["method"].get("synth_max_new_tokens"), path


def _written(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def _message(fn) -> str:
    with pytest.raises(ConfigError) as err:
        fn()
    return str(err.value)


def test_error_lines_inside_lists_and_for_keys_not_given(tmp_path):
    """A problem inside a list item names the line of its key; a missing key, the line of the
    item holding it (lines worked out by hand from the text)."""
    path = _written(tmp_path, "seed: 3\n"
                              "tasks:\n"
                              "  - {name: a, train: a.jsonl}\n"
                              "  - name: b\n"
                              "    train: b.jsonl\n"
                              "    max_new_tokens: 0\n"
                              "  - train: c.jsonl\n")
    assert _message(lambda: load_config(path)).splitlines() == [
        f"{path}:6: field 'tasks.1.max_new_tokens': Input should be greater than or equal to 1 (got 0)",
        f"{path}:7: field 'tasks.2.name': Field required"]
    fixed = _written(tmp_path, path.read_text().replace("max_new_tokens: 0", "max_new_tokens: 5").replace(
        "  - train: c.jsonl\n", ""))
    cfg = load_config(fixed)
    assert cfg.where("seed") == f"{fixed}:1"  # a top-level key
    assert cfg.where("tasks", 1, "definition") == f"{fixed}:4"  # not given: the item's line, not the list's
    assert cfg.where("nothing") == str(fixed)


def test_what_was_given_is_quoted_only_for_a_value(tmp_path):
    """`(got ...)` follows a wrong value, cut to 80 characters; never a missing key, a mapping
    or a list (which would quote half the file); the top level is named as such."""
    assert _message(lambda: validate({})) == "config: field 'tasks': Field required"
    assert _message(lambda: validate({**BASE, "seed": [1]})) == "config: field 'seed': Input should be a valid integer"
    assert _message(lambda: validate([1])) == (
        "config: field '(top level)': Input should be a valid dictionary or instance of RunConfig")
    exactly = "x" * 78  # its repr, quotes included, is 80 characters: shown whole
    assert _message(lambda: validate({**BASE, "seed": exactly})).endswith(f"(got '{exactly}')")
    longer = "y" * 79  # 81 characters: the first 77, then "..."
    assert _message(lambda: validate({**BASE, "seed": longer})).endswith("(got '" + "y" * 76 + "...)")


def test_merge_keys_are_allowed_and_duplicates_found_wherever_they_are(tmp_path):
    """YAML merges (`<<: *base`, then keys that override) are not duplicates; a key given twice is
    refused naming both lines, also after a merge or after a key that is not a plain value."""
    path = _written(tmp_path, "tasks:\n"
                              "  - &first {name: sentiment, builtin: true}\n"
                              "  - <<: *first\n"
                              "    name: product\n")
    assert [t.name for t in load_config(path).tasks] == ["sentiment", "product"]
    merged_twice = _written(tmp_path, "tasks:\n"
                                      "  - &first {name: sentiment, builtin: true}\n"
                                      "  - <<: *first\n"
                                      "    name: product\n"
                                      "    name: city\n")
    assert _message(lambda: load_config(merged_twice)) == (
        f"{merged_twice}:5: not valid YAML: duplicate key 'name' (first given on line 4)")
    after_a_list_key = _written(tmp_path, "? [a, b]\n: 1\nseed: 1\nseed: 2\n")
    assert _message(lambda: load_config(after_a_list_key)) == (
        f"{after_a_list_key}:4: not valid YAML: duplicate key 'seed' (first given on line 3)")


def test_a_yaml_alias_cycle_is_a_config_error(tmp_path):
    path = _written(tmp_path, "tasks:\n  - {name: sentiment, builtin: true}\nseed: &x [*x]\n")
    assert _message(lambda: load_config(path)) == f"{path}: not valid YAML: nested too deeply"


def test_alias_expansion_is_counted_exactly_up_to_the_limit(tmp_path):
    """By hand: a node counts 1 plus its children (a mapping: keys and values), an alias as
    often as it is used. `a: &x [k zeros]`, `b: [*x] * m` and `extra` scalar pairs make
    1 (the document) + 2 (keys a, b) + (1 + k) + (1 + m(1 + k)) + 2 extra."""
    from ssr.config import MAX_CONFIG_VALUES

    def doc(k: int, m: int, extra: int) -> str:
        return ("a: &x [" + ", ".join(["0"] * k) + "]\n" + "b: [" + ", ".join(["*x"] * m) + "]\n"
                + "".join(f"c{i}: 0\n" for i in range(extra)))

    size = lambda k, m, extra: 1 + 2 + (1 + k) + 1 + m * (1 + k) + 2 * extra  # noqa: E731
    k, m = 998, 99  # 1 + 2 + 999 + 1 + 99 * 999 = 99,904
    extra = (MAX_CONFIG_VALUES - size(k, m, 0)) // 2  # fill up with scalar pairs to exactly the limit
    assert size(k, m, extra) == MAX_CONFIG_VALUES
    at_limit = _written(tmp_path, doc(k, m, extra))
    assert "more than" not in _message(lambda: load_config(at_limit))  # counted as the limit: on to validation
    over = _written(tmp_path, doc(k, m, extra) + "d: 0\n")  # one pair more: 2 values over
    assert _message(lambda: load_config(over)) == (
        f"{over}: more than {MAX_CONFIG_VALUES} values once its YAML aliases are expanded; not a run config")


def test_empty_and_unreadable_set_values(tmp_path):
    assert apply_overrides({}, ["a.b="]) == {"a": {"b": ""}}  # an empty value is the empty string
    assert _message(lambda: apply_overrides({}, ["seed=[1"])) == (
        "--set seed: not a valid YAML value: expected ',' or ']', but got '<stream end>'")
    message = _message(lambda: apply_overrides({}, ["seed=\x07"]))
    assert message.startswith("--set seed: not a valid YAML value: unacceptable character #x0007") and "\n" not in message


def test_diff_lists_every_changed_absent_and_added_key_by_hand():
    old = {"seed": 1, "train": {"lr": 0.1, "epochs": 2}, "tasks": [{"name": "a"}], "eval": {"batch_size": 4}}
    new = {"seed": 1, "train": {"lr": 0.2}, "tasks": [{"name": "a"}, {"name": "b"}], "eval": {"batch_size": 8},
           "extra": None}
    assert diff(old, new) == ["extra: <absent> -> None", "tasks.1.name: <absent> -> 'b'",
                              "train.epochs: 2 -> <absent>", "train.lr: 0.1 -> 0.2"]  # eval.batch_size: runtime only
    assert diff(new, old) == ["extra: None -> <absent>", "tasks.1.name: 'b' -> <absent>",
                              "train.epochs: <absent> -> 2", "train.lr: 0.2 -> 0.1"]
    # whatever a value is, even the text shown for a missing key, it is not taken for absence
    assert diff({}, {"note": "<absent>"}) == ["note: <absent> -> '<absent>'"]


def test_saved_config_is_written_in_schema_order_and_keeps_unicode():
    from ssr.config import to_yaml

    cfg = validate({"tasks": [{"name": "a", "train": "a.jsonl", "definition": "Résumé en français."}], "seed": 3})
    text = to_yaml(cfg)
    assert [line.split(":")[0] for line in text.splitlines() if line[:1].isalpha()] == [
        "seed", "model", "tasks", "data", "train", "eval", "generation", "method"]
    assert "definition: Résumé en français." in text


def test_a_saved_config_from_before_new_keys_reads_as_the_code_then_ran():
    """Keys a saved config predates are the defaults, except generation.backend / vllm_adapters
    (hf / lora then): the same dict the config would give today with those two spelt out."""
    from ssr.config import with_legacy_defaults

    old = {"seed": 3, "tasks": [{"name": "a", "train": "/d/a.jsonl"}], "train": {"lr": 0.01, "lora": {"r": 4}},
           "method": {"name": "replay", "demos_override": {"a": "/d/demos.jsonl"}}}
    before = yaml.safe_dump(old)
    spelt_out = {**old, "generation": {"backend": "hf", "vllm_adapters": "lora"}}
    assert with_legacy_defaults(old) == to_dict(validate(spelt_out))
    assert yaml.safe_dump(old) == before  # the saved dict itself is left alone
    with_generation = {**old, "generation": {}}
    with_legacy_defaults(with_generation)
    assert with_generation["generation"] == {}  # nor the sections inside it
    assert with_legacy_defaults({**old, "tasks": ["not a mapping"]})["tasks"] == ["not a mapping"]  # left to validation
    empty = with_legacy_defaults(None)  # an unreadable file: the defaults, no tasks
    assert "tasks" not in empty and empty["seed"] == validate(BASE).seed and empty["generation"]["backend"] == "hf"


def test_relative_paths_everywhere_resolve_against_the_data_dir(tmp_path, monkeypatch):
    """Task files, lm-eval include paths and task YAMLs, and demo overrides: relative ones
    against `data.dir` (itself relative to the config file), `~` expanded, absolute ones kept as
    given, lm-eval task names kept; the config object given is not changed."""
    from ssr.config import resolve_paths

    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "c.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"dir": "../data"},
        "tasks": [{"name": "a", "train": "a.jsonl", "eval": "/abs/a.eval.jsonl", "demos": "~/a.demos.jsonl"},
                  {"name": "b", "train": "b.jsonl"}],
        "eval": {"general": {"lm_eval": {"tasks": ["arc_easy", "mine.yaml", "/abs/t.yml", "sub/other.yml"],
                                         "include_path": ["tasks", "/abs/tasks", "~/tasks"]}}},
        "method": {"name": "ssr", "demos_override": {"a": "demos/a.jsonl", "b": "/abs/x/../b.jsonl"}}}))
    data = tmp_path / "data"
    cfg = load_config(path)
    assert cfg.data.dir == str(data)
    assert (cfg.tasks[0].train, cfg.tasks[0].eval, cfg.tasks[0].demos) == (
        str(data / "a.jsonl"), "/abs/a.eval.jsonl", str(Path.home() / "a.demos.jsonl"))
    lm = cfg.eval.general.lm_eval
    assert lm.tasks == ["arc_easy", str(data / "mine.yaml"), "/abs/t.yml", str(data / "sub" / "other.yml")]
    assert lm.include_path == [str(data / "tasks"), "/abs/tasks", str(Path.home() / "tasks")]
    assert cfg.method.demos_override == {"a": str(data / "demos" / "a.jsonl"), "b": "/abs/x/../b.jsonl"}
    given = validate({"tasks": [{"name": "a", "train": "a.jsonl"}]})
    resolve_paths(given, tmp_path)
    assert given.tasks[0].train == "a.jsonl" and given.data.dir is None
    # a config given as a dict: relative to the working directory, and named "config"
    monkeypatch.chdir(tmp_path)
    raw = load_config(None, raw={"tasks": [{"name": "a", "train": "a.jsonl"}]})
    assert raw.tasks[0].train == str(tmp_path / "a.jsonl") and raw.where("seed") == "config"
    assert _message(lambda: load_config(None, raw={})) == "config: field 'tasks': Field required"


def test_override_errors_and_locations(tmp_path):
    """`--set` splits at the first `=`; an index past the list, or a key under a plain value,
    is named; a value set on the command line is reported at `--set`, and the file's lines of
    the keys not overridden stay."""
    assert apply_overrides({"a": {}}, ["a.b=x=y"]) == {"a": {"b": "x=y"}}
    assert _message(lambda: apply_overrides({"t": [1]}, ["t.1=2"])) == "--set t.1: '1' is not an index of a list of 1"
    assert _message(lambda: apply_overrides({"a": {"b": 1}}, ["a.b.c=1"])) == "--set a.b.c: 'a.b' is not a mapping"
    path = _written(tmp_path, "seed: 1\ntrain:\n  lr: 0.001\ntasks:\n  - {name: sentiment, builtin: true}\n")
    assert _message(lambda: load_config(path, ["tasks.0.max_new_tokens=0"])) == (
        "--set: field 'tasks.0.max_new_tokens': Input should be greater than or equal to 1 (got 0)")
    assert _message(lambda: load_config(path, ["seed=x=1"])).startswith("--set: field 'seed': ")
    cfg = load_config(path, ["seed=5"])
    assert (cfg.where("seed"), cfg.where("train", "lr")) == (str(path), f"{path}:3")


def test_empty_and_non_mapping_config_files(tmp_path):
    empty = _written(tmp_path, "")
    assert _message(lambda: load_config(empty)) == (
        f"{empty}: the config must be a YAML mapping (key: value lines), got NoneType")
    listed = _written(tmp_path, "- a\n")
    assert _message(lambda: load_config(listed)) == (
        f"{listed}: the config must be a YAML mapping (key: value lines), got list")
    control = _written(tmp_path, "seed: 1\x07\n")
    assert _message(lambda: load_config(control)) == (
        f"{control}: not valid YAML: unacceptable character #x0007: special characters are not allowed "
        f'in "<unicode string>", position 7')


def test_an_unreadable_config_file_says_why(tmp_path, unreadable_files):
    path = _written(tmp_path, "seed: 1\n")  # written, not read: the fixture stops reading only
    assert _message(lambda: load_config(path)) == f"{path}: cannot be read (Permission denied)"
