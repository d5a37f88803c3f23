import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssr.config import MethodConfig
from ssr.data.task import Instance, Task
from ssr.synthesis import build_icl_prompts, parse_continuation
from ssr.synthesis.pipeline import filter_candidates

DEMOS = [Instance(f"d{i}", f"input {i}", f"output {i}", "Do it.") for i in range(4)]


def test_prompt_format_matches_the_release():
    (p,) = build_icl_prompts("Define.", DEMOS[:2], max_prompts=1, seed=0)
    assert p.text in (
        "Define.\n\nInput: input 0\nOutput: output 0\n\nInput: input 1\nOutput: output 1\n\nInput:",
        "Define.\n\nInput: input 1\nOutput: output 1\n\nInput: input 0\nOutput: output 0\n\nInput:",
    )


def test_all_ordered_pairs_and_capping():
    prompts = build_icl_prompts("D", DEMOS)
    assert len(prompts) == 4 * 3 and len({p.demo_ids for p in prompts}) == 12
    assert all(a != b for a, b in (p.demo_ids for p in prompts))
    assert len(build_icl_prompts("D", DEMOS, n_shots=3)) == 4 * 3 * 2
    capped = build_icl_prompts("D", DEMOS, max_prompts=5, seed=1)
    assert len(capped) == 5 and capped == build_icl_prompts("D", DEMOS, max_prompts=5, seed=1)
    only_inputs = build_icl_prompts("D", DEMOS, with_outputs=False)[0].text
    assert "Output:" not in only_inputs and only_inputs.endswith("\n\nInput:")
    with pytest.raises(ValueError):
        build_icl_prompts("D", DEMOS[:1])


def test_parser_splits_several_instances():
    text = " great phone\nOutput: positive\n\nInput: broke in a day\nOutput: negative\nOutput: extra\n\nInput: half"
    parsed = parse_continuation(text)
    assert [(p.input, p.output) for p in parsed] == [
        ("great phone", "positive"), ("broke in a day", "negative"), ("half", None)]
    assert parse_continuation("   ") == [] and parse_continuation("Input:Input:") == []
    assert parse_continuation("x\nOutput:") == [parse_continuation("x\nOutput:")[0]] and parse_continuation("x\nOutput:")[0].output == ""


ALPHABET = string.ascii_letters + " \n:"
pieces = st.lists(st.one_of(st.text(ALPHABET, max_size=12), st.sampled_from(["Input:", "Output:", "\n\n", "Input: ", "Output: "])), max_size=12)


@settings(max_examples=300, deadline=None)
@given(pieces)
def test_parser_never_crashes_nor_invents_text(parts):
    text = "".join(parts)
    for item in parse_continuation(text):
        # an empty input is returned (and later dropped by the filter as `empty_input`)
        assert item.input in text and "Input:" not in item.input and "Output:" not in item.input
        assert item.input == item.input.strip()
        if item.output is not None:
            assert item.output in text and "Input:" not in item.output and "Output:" not in item.output
            assert item.output == item.output.strip()


class _CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text.split())))}


def test_filter_verdicts():
    task = Task("t", "Do it.", train=[], demos=DEMOS)
    rows = [("new one", "y"), ("", "y"), ("input 0", "y"), ("new one", "z"), ("w " * 20, "y"), ("only input", None)]
    cands = [{"input": x, "base_output": y, "verdict": None} for x, y in rows]
    cfg = MethodConfig(name="ssr", max_input_tokens=10)
    filter_candidates(cands, task, DEMOS, _CharTokenizer(), cfg)
    assert [c["verdict"] for c in cands] == ["kept", "empty_input", "copies_demo", "duplicate", "input_too_long", "kept"]
    cands = [{"input": "only input", "base_output": None, "verdict": None}]
    filter_candidates(cands, task, DEMOS, _CharTokenizer(), MethodConfig(name="ssr", refine=False))
    assert cands[0]["verdict"] == "no_output"  # without refinement an input-only candidate has nothing to teach
