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
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    paths = [*sorted((root / "configs").glob("*.yaml")), root / "src" / "ssr" / "configs" / "demo.yaml"]
    assert len(paths) >= 2
    for path in paths:
        load_config(path)


def test_cpu_configs_keep_their_own_generation_budgets():
    """The release's 512-token answers and uncapped synthesis would blow the CPU configs' time
    budgets: each sets its answer length (run-wide or per task) and caps synthesis."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in [*sorted((root / "configs").glob("*.yaml")), root / "src" / "ssr" / "configs" / "demo.yaml"]:
        raw = yaml.safe_load(path.read_text())
        assert raw.get("eval", {}).get("max_new_tokens") or all("max_new_tokens" in t for t in raw["tasks"]), path
        assert raw["method"].get("synth_max_new_tokens"), path
