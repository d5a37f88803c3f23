"""The synthesis prompts and parsers, text in and text out (no model): expected values written
out by hand or drawn with `random` directly."""

import itertools
import random

import pytest

from ssr.data.task import Instance
from ssr.synthesis import build_icl_prompts, parse_continuation
from ssr.synthesis.parser import ParsedInstance, parse_open_domain

DEMOS = [Instance(f"d{i}", f"input {i}", f"output {i}", "Define.") for i in range(4)]


def test_prompts_are_numbered_and_a_cap_is_a_seeded_draw_of_the_ordered_pairs():
    prompts = build_icl_prompts("D", DEMOS, max_prompts=5)  # seed 0 by default
    pairs = list(itertools.permutations(range(4), 2))
    drawn = sorted(random.Random(0).sample(pairs, 5))
    assert [p.demo_ids for p in prompts] == [(f"d{a}", f"d{b}") for a, b in drawn]
    assert [p.id for p in prompts] == [0, 1, 2, 3, 4]
    assert [p.id for p in build_icl_prompts("D", DEMOS)] == list(range(12))


def test_too_few_demonstrations_say_how_many():
    with pytest.raises(ValueError) as err:
        build_icl_prompts("D", DEMOS[:1])
    assert str(err.value) == "need at least 2 demonstrations, got 1"


def test_a_blank_chunk_between_instances_is_skipped_not_the_end():
    text = " a\nOutput: b\n\nInput:  \nInput: c\nOutput: d"
    assert parse_continuation(text) == [ParsedInstance("a", "b"), ParsedInstance("c", "d")]
    open_text = " Do A.\nInput: a\nOutput: b\n\nInstruction: \nInstruction: Do C.\nInput: <noinput>\nOutput: d"
    assert parse_open_domain(open_text) == [ParsedInstance("a", "b", None, "Do A."), ParsedInstance("", "d", None, "Do C.")]


def test_open_domain_chunks_that_are_not_instances():
    """Two outputs: malformed, its input the text up to the first `Output:`. An input without an
    output is malformed even when instruction-only candidates are asked for (those have neither)."""
    two = parse_open_domain(" Do A.\nInput: a\nOutput: b\nOutput: c")
    assert two == [ParsedInstance("a", None, "malformed", "Do A.")]
    assert parse_open_domain(" Do A.\nInput: a", instruction_only=True) == [ParsedInstance("a", None, "malformed", "Do A.")]
    assert parse_open_domain(" Do A.", instruction_only=True) == [ParsedInstance("", None, None, "Do A.")]
