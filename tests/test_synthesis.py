import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssr.config import MethodConfig
from ssr.data.task import Instance, Task
from ssr.synthesis import build_icl_prompts, parse_continuation
from ssr.synthesis.parser import ParsedInstance
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
    assert [(p.input, p.output, p.verdict) for p in parsed] == [
        ("great phone", "positive", None), ("broke in a day", "negative", "multiple_outputs"), ("half", None, None)]
    # a generation that ended by length: its last chunk was cut
    assert [p.verdict for p in parse_continuation(text, complete=False)] == [None, "multiple_outputs", "truncated"]
    assert [p.verdict for p in parse_continuation(text + "\n\nInput:", complete=False)] == [None, "multiple_outputs", None]
    assert parse_continuation("   ") == [] and parse_continuation("Input:Input:") == []
    assert parse_continuation("x\nOutput:") == [ParsedInstance("x", "", None)]  # an empty output, not a missing one


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


def test_filter_verdicts_at_their_bounds():
    """Each length filter keeps a candidate exactly at its bound and drops one token past it
    (word tokens; the definition "Do it." is 2); a verdict the parser gave is final."""
    task = Task("t", "Do it.", train=[], demos=DEMOS)
    rows = [("a b c", "y", None), ("a b c d", "y", None), ("a b c d e", "y", None), ("p q", "y z", None),
            ("r s", "y z w", None), ("t u", None, None), ("t v", "", None), ("a b c", "q", None), ("input 1", "y", None),
            ("cut off", "y", "truncated"), ("x", "y", "multiple_outputs")]
    expected = ["kept", "definition_input_too_long", "input_too_long", "kept", "output_too_long", "no_output", "no_output",
                "duplicate", "copies_demo", "truncated", "multiple_outputs"]
    cfg = dict(name="ssr", max_input_tokens=4, max_definition_input_tokens=5, max_output_tokens=2)
    cands = [{"input": x, "base_output": y, "verdict": v} for x, y, v in rows]
    filter_candidates(cands, task, DEMOS, _CharTokenizer(), MethodConfig(**cfg, keep_input_only=False))
    assert [c["verdict"] for c in cands] == expected
    # with keep_input_only (and refinement) the input-only ones are kept: the latest model writes their outputs
    cands = [{"input": x, "base_output": y, "verdict": v} for x, y, v in rows]
    filter_candidates(cands, task, DEMOS, _CharTokenizer(), MethodConfig(**cfg))
    assert [c["verdict"] for c in cands][5:7] == ["kept", "kept"]


def _synthesize(model_dir, tokenizer_dir, context_length=512, eos_logit=None, seed=0, **opts):
    from conftest import rewire_eos_rate
    from ssr.generation import HFGenerator
    from ssr.models import load_base_model, load_tokenizer
    from ssr.synthesis.pipeline import synthesize

    tok = load_tokenizer(str(tokenizer_dir))
    model = load_base_model(str(model_dir))
    if eos_logit is not None:
        rewire_eos_rate(model, tok.eos_token_id, eos_logit)
    demos = [Instance(f"d{i}", f"apple river {w}", f"{w} river apple", "Reverse the words.")
             for i, w in enumerate(("stone", "cloud", "green", "seven"))]
    task = Task("t", "Reverse the words.", train=demos * 10, demos=demos)
    cfg = MethodConfig(name="ssr", max_prompts=8, samples_per_prompt=2, selection="random", per_task=50, **opts)
    generator = HFGenerator(model, tok, 16, show_progress=False)
    return synthesize(task, demos, generator, tok, context_length, cfg, seed=seed)


def test_synthesis_counts_are_those_of_its_candidates_and_logged_once(tiny_model_dir, stopping_model_dir, caplog):
    """The counts synthesis returns (written to synthetic/<task>.stats.json), counted here from its
    candidates: all of them, the kept ones without an output (refinement writes those), the
    selected ones; its time in seconds to one decimal, within the call's; one log line shows them."""
    import logging
    import time

    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="ssr"):
        candidates, stats, _ = _synthesize(stopping_model_dir, tiny_model_dir, synth_max_new_tokens=12)
    wall = time.perf_counter() - started
    assert stats["candidates"] == len(candidates) > 0
    assert stats["input_only_kept"] == sum(c["verdict"] == "kept" and not c["base_output"] for c in candidates)
    assert stats["selected"] == sum(c["selected"] for c in candidates) > 0
    for verdict in {c["verdict"] for c in candidates}:
        assert stats[f"verdict_{verdict}"] == sum(c["verdict"] == verdict for c in candidates)
    # the call's own time, rounded to one decimal (so within 0.05 s of a time inside the wall time around it)
    assert isinstance(stats["seconds"], float) and 0 <= stats["seconds"] <= wall + 0.05 and stats["seconds"] == round(stats["seconds"], 1)
    assert [m for m in caplog.messages if "synthesis" in m] == [f"task t: synthesis {stats}"]


def test_synthesis_is_reproducible_from_its_seed(tiny_model_dir, stopping_model_dir):
    """The seed picks the ICL prompts (a seeded sample of the demo tuples) and seeds the sampler:
    the same seed twice gives the same prompts and generations, another seed other prompts."""
    first, again, other = (_synthesize(stopping_model_dir, tiny_model_dir, seed=s, synth_max_new_tokens=12) for s in (5, 5, 0))
    assert [p.text for p in first[2]] == [p.text for p in again[2]] != [p.text for p in other[2]]
    assert [c["continuation"] for c in first[0]] == [c["continuation"] for c in again[0]]


def test_an_empty_generation_has_no_instance_and_a_repeated_one_is_a_duplicate(tiny_model_dir):
    """A generation that parses to no instance is one `no_instance` candidate; a generation equal
    to an earlier one, of any prompt, is a `duplicate_continuation`, not parsed again. With EOS
    certain at once every generation is the empty text: 8 prompts x 2 samples."""
    candidates, stats, _ = _synthesize(tiny_model_dir, tiny_model_dir, eos_logit=1e4)
    assert [c["verdict"] for c in candidates] == ["no_instance"] + ["duplicate_continuation"] * 15
    assert all(c["continuation"] == "" and c["input"] is None and not c["selected"] for c in candidates)
    assert stats["generations"] == 16 and stats.get("verdict_kept", 0) == 0


def test_the_cut_last_chunk_of_a_generation_ended_by_length_is_truncated_and_never_kept(tiny_model_dir, stopping_model_dir):
    candidates, stats, _ = _synthesize(stopping_model_dir, tiny_model_dir, synth_max_new_tokens=12)
    by_generation: dict = {}
    for c in candidates:
        by_generation.setdefault((c["prompt_id"], c["sample"]), []).append(c)
    reasons = [g[0]["finish_reason"] for g in by_generation.values()]
    assert "stop" in reasons and "length" in reasons  # both kinds of ending occur here
    expected_truncated = 0
    for chunks in by_generation.values():
        cut = chunks[0]["finish_reason"] == "length" and chunks[0]["continuation"].split("Input:")[-1].strip() != ""
        expected_truncated += cut
        assert [c["verdict"] == "truncated" for c in chunks] == [False] * (len(chunks) - 1) + [cut]
    assert stats["generations_ended_by_length"] == reasons.count("length")
    assert stats.get("verdict_truncated", 0) == expected_truncated > 0
    assert stats["verdict_kept"] > 0 and not any(c["selected"] for c in candidates if c["verdict"] != "kept")


def test_generation_length_follows_the_context_rule(tiny_model_dir):
    # no cap: a model that never stops (EOS logit -50) runs until prompt + generation reach synth_max_length
    candidates, stats, prompts = _synthesize(tiny_model_dir, tiny_model_dir, eos_logit=-50.0, synth_max_length=60)
    assert stats["generations_ended_by_length"] == stats["generations"] == 16
    last_chunks = {(c["prompt_id"], c["sample"]): c for c in candidates}  # the last candidate of each generation
    assert all(c["verdict"] == "truncated" for c in last_chunks.values() if c["continuation"].split("Input:")[-1].strip())
    # prompts with no room left are skipped: by synth_max_length, or by the context window
    assert _synthesize(tiny_model_dir, tiny_model_dir, synth_max_length=20)[1]["prompts_skipped_too_long"] == 8
    assert _synthesize(tiny_model_dir, tiny_model_dir, context_length=20)[1]["prompts_skipped_too_long"] == 8
