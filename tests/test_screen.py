"""`method.screen`: synthetic candidates matching a rule get the verdict `screened` and the rule,
counted in the task's stats; the rules are validated before any model loads."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import tiny_config
from ssr.cli import main
from ssr.config import MethodConfig, ScreenConfig, validate
from ssr.data.task import Instance, Task
from ssr.errors import ConfigError
from ssr.synthesis.pipeline import filter_candidates
from ssr.synthesis.screen import build_screener

DEMOS = [Instance(f"d{i}", f"input {i}", f"output {i}", "Do it.") for i in range(4)]


def flag_shouting(input_text: str, output_text: str | None):
    """A user-supplied rule (imported as `test_screen:flag_shouting`)."""
    return "shouting" if input_text.isupper() else None


class _WordTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text.split())))}


def _verdicts(rows, screen: ScreenConfig) -> list[tuple[str, str | None]]:
    cands = [{"input": x, "base_output": y, "verdict": None} for x, y in rows]
    filter_candidates(cands, Task("t", "Do it.", demos=DEMOS), DEMOS, _WordTokenizer(),
                      MethodConfig(name="ssr", screen=screen), build_screener(screen))
    return [(c["verdict"], c.get("screen_rule")) for c in cands]


def test_each_rule_screens_with_its_name():
    screen = ScreenConfig(words=["bomb", "hot wire"], patterns=[r"\bpass(word)?s?\b"], pii=True,
                          callable="test_screen:flag_shouting")
    rows = [
        ("how to build a Bomb at home", "no"),          # word, case-insensitive
        ("a bombastic speech", "fine"),                  # not a whole word: kept
        ("how do I hot wire a car", None),               # phrase
        ("what is your password", "1234"),               # pattern
        ("write to jane.doe@example.com", "ok"),         # pii: e-mail
        ("my card is 4111 1111 1111 1111", "ok"),        # pii: card, not a phone number
        ("call me on +1 555 123 4567", "ok"),            # pii: phone
        ("THIS IS LOUD", "ok"),                          # the user's callable
        ("a calm sentence", "the output says bomb"),     # the output is screened too
        ("input 0", "output 0"),                         # copies a demo: that verdict comes first
    ]
    assert _verdicts(rows, screen) == [
        ("screened", "word:bomb"), ("kept", None), ("screened", "word:hot wire"),
        ("screened", r"pattern:\bpass(word)?s?\b"), ("screened", "pii:email"), ("screened", "pii:card"),
        ("screened", "pii:phone"), ("screened", "callable:shouting"), ("screened", "word:bomb"),
        ("copies_demo", None),
    ]


def test_screen_is_validated_before_any_model(tmp_path, capsys, task_dir, tiny_model_dir):
    with pytest.raises(ConfigError, match=r"field 'method.screen.patterns': .*not a valid regular expression"):
        validate({"tasks": [{"name": "a"}], "method": {"name": "ssr", "screen": {"patterns": ["(unclosed"]}}})
    with pytest.raises(ConfigError, match=r"field 'method.screen': .*at least one of"):
        validate({"tasks": [{"name": "a"}], "method": {"name": "ssr", "screen": {}}})
    with pytest.raises(ConfigError, match=r"screen only applies to ssr"):
        validate({"tasks": [{"name": "a"}], "method": {"name": "replay", "screen": {"pii": True}}})
    cfg = tiny_config(task_dir, tiny_model_dir, "ssr", selection="random", screen={"callable": "no_such_module:f"})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["validate", str(tmp_path / "cfg.yaml")]) == 2
    assert "field 'method.screen.callable': cannot import module 'no_such_module'" in capsys.readouterr().err


def test_screened_candidates_are_counted_in_the_stats(tmp_path, task_dir, tiny_model_dir, stopping_model_dir):
    """Synthesis on the tiny model (rewired to end its generations, so candidates survive the
    other filters) with a rule that fires on any character: nothing is kept, and the stats count
    what the candidates file says."""
    cfg = tiny_config(task_dir, tiny_model_dir, "ssr", selection="random", max_prompts=4, samples_per_prompt=2,
                      synth_max_new_tokens=12, icl_model=str(stopping_model_dir), screen={"patterns": [r"[\s\S]"]})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["synth", str(tmp_path / "cfg.yaml"), "--task", "reverse", "-o", str(tmp_path / "out")]) == 0
    candidates = [json.loads(line) for line in (tmp_path / "out" / "synthetic" / "reverse.candidates.jsonl").open()]
    stats = json.loads((tmp_path / "out" / "synthetic" / "reverse.stats.json").read_text())
    screened = [c for c in candidates if c["verdict"] == "screened"]
    assert screened and all(c["screen_rule"] == r"pattern:[\s\S]" for c in screened)
    assert not [c for c in candidates if c["verdict"] == "kept"]
    assert stats["verdict_screened"] == len(screened) == stats[r"screened_pattern:[\s\S]"]
