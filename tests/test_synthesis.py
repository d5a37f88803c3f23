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
    assert all(c["continuation"] == "" and c["input"] is None and c["base_output"] is None and not c["selected"]
               for c in candidates)
    assert [c["candidate_id"] for c in candidates] == list(range(16))  # numbered in order, as rehearsal rows cite them
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


class _Recorder:
    """The real generator, recording what it is asked: a spy that answers as the generator does."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def generate(self, prompts, params, desc="generate"):
        self.calls.append((prompts, params))
        return self.inner.generate(prompts, params, desc=desc)


REVERSE_DEMOS = [Instance(f"d{i}", f"apple river {w}", f"{w} river apple", "Reverse the words.")
                 for i, w in enumerate(("stone", "cloud", "green", "seventeen"))]


def _icl_text_by_hand(demo_ids, with_outputs: bool) -> str:
    by_id = {d.id: d for d in REVERSE_DEMOS}
    shots = [f"Input: {by_id[i].input}\nOutput: {by_id[i].output}" if with_outputs else f"Input: {by_id[i].input}"
             for i in demo_ids]
    return "Reverse the words.\n\n" + "\n\n".join(shots) + "\n\nInput:"


@pytest.mark.parametrize("with_outputs", [True, False])
def test_the_base_model_is_asked_every_prompt_that_fits_encoded_with_its_special_tokens(tiny_model_dir, with_outputs):
    """Each ICL prompt is the definition, the demonstrations (`method.demo_outputs`: with their
    outputs or inputs only) and `Input:`, encoded as the tokenizer encodes a text, special tokens
    included (here a tokenizer that puts <s> first, as Llama's does). A prompt of
    `synth_max_length` tokens or more has no room left and is skipped (a bound set here to the
    longest prompt's length); the sampler gets that bound on prompt + continuation, the new-token
    cap and `ignore_eos`."""
    from tokenizers import processors

    from ssr.generation import HFGenerator
    from ssr.models import load_base_model, load_tokenizer
    from ssr.synthesis.pipeline import generate_candidates

    tok = load_tokenizer(str(tiny_model_dir))
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    pairs = [(a.id, b.id) for a in REVERSE_DEMOS for b in REVERSE_DEMOS if a is not b]  # every ordered pair: 12 prompts
    by_hand = {p: [tok.bos_token_id] + tok(_icl_text_by_hand(p, with_outputs), add_special_tokens=False)["input_ids"]
               for p in pairs}
    longest = max(len(ids) for ids in by_hand.values())
    fitting = [p for p in pairs if len(by_hand[p]) < longest]
    assert 0 < len(fitting) < len(pairs)  # the bound really skips some prompts and keeps others
    task = Task("t", "Reverse the words.", train=REVERSE_DEMOS, demos=REVERSE_DEMOS)
    cfg = MethodConfig(name="ssr", samples_per_prompt=1, synth_max_length=longest, synth_max_new_tokens=8,
                       ignore_eos=True, demo_outputs=with_outputs)
    generator = _Recorder(HFGenerator(load_base_model(str(tiny_model_dir)), tok, 16, show_progress=False))
    candidates, stats, prompts = generate_candidates(task, REVERSE_DEMOS, generator, tok, 512, cfg, seed=3)
    assert [p.demo_ids for p in prompts] == pairs and [p.text for p in prompts] == [_icl_text_by_hand(p, with_outputs) for p in pairs]
    ((asked, params),) = generator.calls
    assert asked == [by_hand[p] for p in fitting]
    assert (params.max_total_tokens, params.max_new_tokens, params.ignore_eos) == (longest, 8, True)
    assert stats["prompts"] == 12 and stats["prompts_skipped_too_long"] == 12 - len(fitting)
    assert stats["generations"] == len(fitting) and {c["prompt_id"] for c in candidates} == {pairs.index(p) for p in fitting}


def test_rehearsal_rows_carry_the_refined_output_and_their_candidates_provenance():
    from ssr.synthesis.pipeline import rehearsal_rows

    task = Task("rev", "Reverse the words.", train=[], demos=DEMOS)
    selected = [
        {"candidate_id": 7, "prompt_id": 2, "demo_ids": ["d0", "d3"], "input": "a b", "base_output": "b a x", "verdict": "kept"},
        {"candidate_id": 9, "prompt_id": 4, "demo_ids": ["d1", "d2"], "input": "c d", "base_output": None, "verdict": "kept"},
    ]
    common = {"task": "rev", "source": "synthetic", "definition": "Reverse the words."}
    assert rehearsal_rows(task, selected, ["b a", "d c"], refined=True) == [
        {**common, "id": "rev-syn-7", "input": "a b", "output": "b a", "base_output": "b a x", "refined": True,
         "candidate_id": 7, "prompt_id": 2, "demo_ids": ["d0", "d3"]},
        {**common, "id": "rev-syn-9", "input": "c d", "output": "d c", "base_output": None, "refined": True,
         "candidate_id": 9, "prompt_id": 4, "demo_ids": ["d1", "d2"]},
    ]


def _spy_on_selection(monkeypatch) -> list[tuple[tuple, dict]]:
    """Record what `select` is handed (the real `select` still selects)."""
    import ssr.synthesis.pipeline as pipeline

    calls, real = [], pipeline.select
    monkeypatch.setattr(pipeline, "select", lambda *a, **kw: calls.append((a, kw)) or real(*a, **kw))
    return calls


def _kept(texts: list[tuple[str | None, str]]) -> list[dict]:
    return [{"candidate_id": k, **({"instruction": i} if i is not None else {}), "input": x, "base_output": "y",
             "verdict": "kept"} for k, (i, x) in enumerate(texts)]


def test_selection_is_handed_the_methods_settings_and_the_texts_to_embed(monkeypatch):
    """The size (`per_task`, else `ratio` x the training size), the embedding model and pooling,
    the cluster rule, and the texts: the kept inputs (a closed-domain task) or each candidate's
    query, its instruction and input (open-domain); with `kmeans_fit: demos` K-means is fit on
    the demonstrations' inputs or queries. Random selection here, so that no encoder loads."""
    from ssr.synthesis.pipeline import select_candidates

    calls = _spy_on_selection(monkeypatch)
    demos = [Instance("d0", "p q", "y", "Say it."), Instance("d1", "", "y", "Name one.")]
    settings = dict(name="ssr", selection="random", embedding_model="my-encoder", embedding_pooling="cls",
                    cluster_quota="one", n_clusters=3, kmeans_fit="demos")
    closed = _kept([(None, f"x{i}") for i in range(8)]) + [{"candidate_id": 8, "input": "z", "verdict": "duplicate"}]
    assert select_candidates(closed, demos, 10, MethodConfig(**settings, per_task=2), seed=0) == 2
    assert select_candidates(closed, demos, 10, MethodConfig(**settings, ratio=0.5), seed=0) == 5
    opened = _kept([("Say it.", "a b"), ("Name one.", "")])
    select_candidates(opened, demos, 10, MethodConfig(**settings, per_task=1), seed=0)
    (texts, k2, *_), kw = calls[0]
    assert texts == [f"x{i}" for i in range(8)] and k2 == 2 and calls[1][0][1] == 5
    assert {key: kw[key] for key in ("embedding_model", "embedding_pooling", "one_per_cluster", "n_clusters", "fit_texts")} == {
        "embedding_model": "my-encoder", "embedding_pooling": "cls", "one_per_cluster": True, "n_clusters": 3,
        "fit_texts": ["p q", ""]}
    (texts, _, *_), kw = calls[2]
    assert texts == ["Say it.\n\na b", "Name one."] and kw["fit_texts"] == ["Say it.\n\np q", "Name one."]
    select_candidates(closed, demos, 10, MethodConfig(name="ssr", selection="random", per_task=2), seed=0)
    assert calls[3][1]["fit_texts"] is None and calls[3][1]["one_per_cluster"] is False  # fit on the candidates, quotas


def test_synthesis_fits_k_means_on_the_demonstrations_it_prompted_with(tiny_model_dir, stopping_model_dir, monkeypatch):
    calls = _spy_on_selection(monkeypatch)
    candidates, _, _ = _synthesize(stopping_model_dir, tiny_model_dir, synth_max_new_tokens=12, kmeans_fit="demos")
    ((texts, *_), kw), = calls
    assert texts == [c["input"] for c in candidates if c["verdict"] == "kept"] and texts
    assert kw["fit_texts"] == ["apple river stone", "apple river cloud", "apple river green", "apple river seven"]
