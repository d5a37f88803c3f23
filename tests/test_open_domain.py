"""Open-domain SSR (the paper's Alpaca setting): the instruction-writing prompt, its parser, the
filters keyed by (instruction, input), one-per-cluster selection, the learnt stage 0's metrics,
and the built-in general instruction set."""

import numpy as np
import pytest

from ssr.config import MethodConfig, RunConfig
from ssr.data.general import general_items, general_task, number_words
from ssr.data.task import Instance, Task
from ssr.errors import ConfigError
from ssr.evaluation import continual_metrics, learnt_retention
from ssr.models.templates import query_text
from ssr.selection import kmeans_select
from ssr.synthesis.parser import parse_open_domain
from ssr.synthesis.pipeline import filter_candidates, selection_text
from ssr.synthesis.prompts import build_icl_prompts

OPEN_DEMOS = [
    Instance("a", "", "Paris", "Name the capital of France."),
    Instance("b", "3, 1, 2", "1, 2, 3", "Sort the numbers."),
]


def test_open_domain_prompt_is_the_release_alpaca_prompt():
    prompts = build_icl_prompts("unused definition", OPEN_DEMOS, n_shots=2, open_domain=True)
    assert [p.demo_ids for p in prompts] == [("a", "b"), ("b", "a")]
    assert prompts[0].text == (
        "Create task instructions following examples below.\n\n"
        "Instruction: Name the capital of France.\nInput: <noinput>\nOutput: Paris\n\n"
        "Instruction: Sort the numbers.\nInput: 3, 1, 2\nOutput: 1, 2, 3\n\n"
        "Instruction:"
    )
    only_inputs = build_icl_prompts("", OPEN_DEMOS, open_domain=True, with_outputs=False)[1].text
    assert only_inputs == ("Create task instructions following examples below.\n\n"
                           "Instruction: Sort the numbers.\nInput: 3, 1, 2\n\n"
                           "Instruction: Name the capital of France.\nInput: <noinput>\n\nInstruction:")


CONTINUATION = (" Give a colour.\nInput: <noinput>\nOutput: blue\n\n"
                "Instruction: Add the numbers.\nInput: 2 and 3\nOutput: 5\n\n"
                "Instruction: Say hi.\nOutput: hi\n\n"
                "Instruction: Two inputs.\nInput: a\nInput: b\nOutput: c\n\n"
                "Instruction: Answer twice.\nInput: q\nOutput: x\nOutput: y\n\n"
                "Instruction: Backwards.\nOutput: y\nInput: x\n\n"
                "Instruction: Cut here.\nInput: x")


def test_open_domain_parser_keeps_exactly_one_input_and_one_output():
    parsed = parse_open_domain(CONTINUATION, complete=False)
    assert [(p.instruction, p.input, p.output, p.verdict) for p in parsed[:2]] == [
        ("Give a colour.", "", "blue", None),  # <noinput> reads as an empty input
        ("Add the numbers.", "2 and 3", "5", None),
    ]
    assert [p.verdict for p in parsed] == [None, None, "malformed", "malformed", "malformed", "malformed", "truncated"]
    assert [p.output for p in parsed[2:6]] == [None] * 4  # never an output from a malformed chunk
    # the same text ended by EOS: its last chunk is complete, but has no Output: either
    assert [p.verdict for p in parse_open_domain(CONTINUATION, complete=True)][-1] == "malformed"
    assert parse_open_domain("  ") == [] and parse_open_domain("Instruction:Instruction:") == []


def test_an_instruction_written_alone_is_a_candidate_only_when_asked():
    """SmolLM2-135M mostly writes an instruction and stops (0 of 48 generations well formed):
    with `instruction_only`, such a chunk is an instruction with no input and no output."""
    text = " Name a fruit.\n\nInstruction: Say hi.\nOutput: hi\n\nInstruction: Describe the sea"
    assert [(p.instruction, p.input, p.output, p.verdict) for p in parse_open_domain(text, instruction_only=True)] == [
        ("Name a fruit.", "", None, None),
        ("Say hi.\nOutput: hi", "", None, "malformed"),  # one marker without the other: still malformed
        ("Describe the sea", "", None, None),
    ]
    assert [p.verdict for p in parse_open_domain(text, complete=False, instruction_only=True)][-1] == "truncated"
    assert [p.verdict for p in parse_open_domain(text)] == ["malformed", "malformed", "malformed"]  # the release's rule


def test_synthesis_parses_each_task_kind_with_its_own_parser():
    """An open-domain task's continuations are parsed into instructions; one written alone is a
    candidate (for refinement to answer) unless input-only candidates or refinement are off. A
    closed-domain task's are parsed into inputs and outputs under its definition."""
    from ssr.synthesis.pipeline import continuation_parser

    text = " Name a fruit.\n\nInstruction: Sort the words.\nInput: b a\nOutput: a b\n\nInstruction:"
    general = Task("general", "(open)", open_domain=True)
    parsed = lambda cfg: [(p.instruction, p.input, p.output, p.verdict)  # noqa: E731
                          for p in continuation_parser(general, cfg)(text, complete=True)]
    assert parsed(MethodConfig(name="ssr")) == [("Name a fruit.", "", None, None), ("Sort the words.", "b a", "a b", None)]
    for cfg in (MethodConfig(name="ssr", keep_input_only=False), MethodConfig(name="ssr", refine=False)):
        assert parsed(cfg) == [("Name a fruit.", "", None, "malformed"), ("Sort the words.", "b a", "a b", None)]
    closed = continuation_parser(Task("t", "Reverse the words."), MethodConfig(name="ssr"))
    assert [(p.instruction, p.input, p.output) for p in closed(" b a\nOutput: a b\n\nInput: d c", complete=False)] == [
        (None, "b a", "a b"), (None, "d c", None)]


class _WordTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text.split())))}


def test_open_domain_filters_key_on_instruction_and_input():
    task = Task("general", "(open)", demos=OPEN_DEMOS, open_domain=True)
    rows = [
        ("Give a colour.", "", "blue"),            # empty input is fine in the open domain
        ("Give a colour.", "", "red"),             # same (instruction, input): duplicate
        ("Give a fruit.", "", "apple"),            # same empty input, other instruction: kept
        ("Name the capital of France.", "", "x"),  # a demonstration's (instruction, input)
        ("", "some input", "y"),                   # no instruction
        ("w " * 6, "w " * 6, "z"),                 # instruction + input over 10 tokens
    ]
    cands = [{"instruction": i, "input": x, "base_output": y, "verdict": None} for i, x, y in rows]
    filter_candidates(cands, task, OPEN_DEMOS, _WordTokenizer(), MethodConfig(name="ssr", max_definition_input_tokens=10))
    assert [c["verdict"] for c in cands] == ["kept", "duplicate", "kept", "copies_demo", "empty_instruction",
                                             "definition_input_too_long"]
    assert selection_text(cands[0]) == "Give a colour." and selection_text(cands[5]).startswith("w w")
    assert selection_text({"instruction": "Sort.", "input": "3, 1"}) == "Sort.\n\n3, 1"


def test_one_per_cluster_takes_the_point_nearest_each_centroid():
    # three well-separated groups of 5, 2 and 1 points; each group's centre point is a member
    groups = [[(0, 0), (0.1, 0), (-0.1, 0), (0, 0.1), (0, -0.1)], [(10, 11), (10, 9)], [(-10, 5)]]
    points = np.array([p for g in groups for p in g], dtype=np.float32)
    one = kmeans_select(points, k=3, n_clusters=20, seed=0, one_per_cluster=True)
    # one from each group (k clusters, n_clusters ignored); the nearest to the mean: (0, 0) and
    # the lower index of the tied pair (10, 11) / (10, 9)
    assert sorted(one.indices) == [0, 5, 7]
    assert len(set(one.clusters)) == 3
    # the proportional rule with 3 clusters gives 2 / 1 / 0 by size: the singleton is never taken
    prop = kmeans_select(points, k=3, n_clusters=3, seed=0)
    assert 7 not in prop.indices and len(prop.indices) == 3
    # fewer points than k: every point, one cluster each
    assert sorted(kmeans_select(points[:2], k=5, n_clusters=1, seed=0, one_per_cluster=True).indices) == [0, 1]


def test_metrics_leave_the_learnt_columns_out():
    # columns: learnt g, then trained a, b; rows: base, after a, after b
    scores = [[50.0, 10.0, 20.0],
              [40.0, 60.0, 30.0],
              [20.0, 45.0, 80.0]]
    m = continual_metrics(scores, learnt=1)
    assert m == {"AR": pytest.approx((45 + 80) / 2), "FWT": pytest.approx(30.0), "BWT": pytest.approx(45 - 60)}
    assert learnt_retention(scores, ["g", "a", "b"], 1) == {"g": {"before": 50.0, "after": 20.0, "change": -30.0}}


def _raw(**general):
    return {"tasks": [{"name": "g", "builtin": False, "learnt": True, "train": "x.jsonl"}, {"name": "a", "train": "a.jsonl"}],
            "eval": {"general": general} if general else {}}


def test_config_rules_for_learnt_tasks_and_general_evaluation():
    from ssr.config import validate

    assert validate(_raw(instructions="g")).eval.general.stages == "all"
    bad = [
        {"tasks": [{"name": "a", "train": "a"}, {"name": "g", "learnt": True, "train": "g"}]},  # learnt not first
        {"tasks": [{"name": "g", "learnt": True, "train": "g"}]},  # nothing trained
        _raw(instructions="nope"),  # not a configured task
        _raw(stages=[0]),  # neither lm_eval nor instructions
        _raw(instructions="g", stages=[2]),  # one trained stage only
        _raw(lm_eval={"tasks": ["mmlu"]}, judge="m:f"),  # a judge without instructions
        {"tasks": [{"name": "g", "open_domain": True, "format": "superni", "train": "g"}]},
    ]
    for raw in bad:
        with pytest.raises(ConfigError):
            validate(raw)
    assert RunConfig.model_validate(_raw(lm_eval={"tasks": ["mmlu"], "num_fewshot": 5})).eval.general.lm_eval.num_fewshot == 5


def test_empty_input_queries_are_the_instruction_alone():
    assert query_text("Name a colour.", "") == "Name a colour."
    assert query_text("Sort.", "b, a") == "Sort.\n\nb, a"


def test_the_general_set_is_split_disjointly_with_correct_generated_answers():
    items = general_items()
    task = general_task()
    assert task.open_domain and len(items) >= 300
    assert (len(task.eval), len(task.demos), len(task.train)) == (60, 20, len(items) - 80)
    keys = [(i.definition, i.input) for split in (task.train, task.eval, task.demos) for i in split]
    assert len(keys) == len(set(keys)) == len(items)
    assert len({i.definition for i in task.train}) > 40  # varied instructions
    assert sum(not i.input for i in task.train) > 30 and sum(bool(i.input) for i in task.train) > 30
    checked = 0
    for instruction, input_, output in items:  # recompute every generated answer independently
        words = instruction.rstrip("?.").split()
        if instruction.startswith("What is ") and " + " in instruction:
            assert int(output) == int(words[2]) + int(words[4]); checked += 1
        elif instruction.startswith("What is ") and " - " in instruction:
            assert int(output) == int(words[2]) - int(words[4]); checked += 1
        elif instruction.startswith("What is ") and " times " in instruction:
            assert int(output) == int(words[2]) * int(words[4]); checked += 1
        elif instruction == "Rewrite the sentence in capital letters.":
            assert output == input_.upper() and output != input_; checked += 1
        elif instruction.startswith("Remove the repeated items"):
            items_in = input_.split(", ")
            assert output.split(", ") == [x for k, x in enumerate(items_in) if x not in items_in[:k]]; checked += 1
        elif instruction.startswith("Which day of the week comes"):
            week = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
            k = ["two", "three", "four", "five"].index(words[6]) + 2
            assert output == week[(week.index(words[9]) + k) % 7]; checked += 1
        elif instruction == "What is the last word of the list?":
            assert output == input_.split()[-1]; checked += 1
        elif instruction.startswith("How many letters are in the word"):
            assert int(output) == len(words[-1].strip("'")); checked += 1
        elif instruction.startswith("Add "):
            assert int(output) == int(words[1]) + int(words[3]); checked += 1
        elif instruction.startswith("Subtract "):
            assert int(output) == int(words[3]) - int(words[1]); checked += 1
        elif instruction.startswith("Multiply "):
            assert int(output) == int(words[1]) * int(words[3]); checked += 1
        elif instruction == "Reverse the order of the words.":
            assert output.split() == input_.split()[::-1]; checked += 1
        elif instruction == "Sort the list in alphabetical order.":
            assert output.split(", ") == sorted(input_.split(", ")); checked += 1
        elif instruction.startswith("Which number in the list"):
            assert int(output) == max(int(x) for x in input_.split(", ")); checked += 1
        elif instruction.startswith("Convert ") and "Celsius" in instruction:
            assert float(output.split()[0]) == int(words[1]) * 1.8 + 32; checked += 1
        elif instruction.startswith("Convert "):
            factors = {("kilometres", "metres"): 1000, ("metres", "centimetres"): 100, ("hours", "minutes"): 60,
                       ("minutes", "seconds"): 60, ("kilograms", "grams"): 1000, ("litres", "millilitres"): 1000}
            assert output == f"{int(words[1]) * factors[(words[2], words[4])]} {words[4]}"; checked += 1
        elif instruction.startswith("How many words"):
            assert int(output) == len(input_.split()); checked += 1
        elif instruction.startswith("Is ") and "even or an odd" in instruction:
            assert output == ("even" if int(words[1]) % 2 == 0 else "odd"); checked += 1
        elif instruction == "Form an acronym from the first letter of each word.":
            assert output == "".join(w[0].upper() for w in input_.split()); checked += 1
    assert checked >= 16 * 14  # every generated kind but number words and word replacement
    assert [number_words(n) for n in (0, 7, 13, 20, 42, 99)] == ["zero", "seven", "thirteen", "twenty", "forty-two", "ninety-nine"]
