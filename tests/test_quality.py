"""The synthetic-data quality report (ssr.synthesis.quality): every expected value below is
worked out by hand from the hand-written data, not by the code under test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssr.data.task import Instance, Task
from ssr.io import read_jsonl, write_jsonl
from ssr.synthesis.quality import (candidate_counts, distinct_n, ensure_quality, mean_nn_similarity, nearest_tasks,
                                   output_quality, own_task_share, pick_examples, quality_path, run_embedder)


def test_distinct_2_by_hand():
    # bigrams: (the cat) (cat sat) | (the cat) (cat ran) | (a dog) | "ok" has none -> 5 in all, 4 distinct
    assert distinct_n(["The cat sat.", "the cat ran", "a dog", "ok"]) == pytest.approx(4 / 5)
    # punctuation is not a word; case is folded: (x y) twice -> 1 of 2
    assert distinct_n(["x, y", "X Y"]) == pytest.approx(1 / 2)
    assert distinct_n(["one", ""]) is None
    # bigrams never cross two inputs: "a b" + "c d" has (a b) (c d), not (b c)
    assert distinct_n(["a b", "c d"]) == 1.0


def unit(*v: float) -> np.ndarray:
    a = np.array(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_nearest_task_on_hand_made_embeddings():
    # task A's real inputs point along x, task B's along y
    refs = {"A": np.stack([unit(1, 0), unit(1, 0.2)]), "B": np.stack([unit(0, 1), unit(0.1, 1)])}
    queries = np.stack([unit(1, 0.1), unit(0.9, 0.3), unit(0.2, 1), unit(1, 1)])
    # (1,1): cosine .832 to (1,.2) against .774 to (.1,1) -> A; (.2,1): .996 to (.1,1) -> B
    assert nearest_tasks(queries, "A", refs) == ["A", "A", "B", "A"]
    assert own_task_share(queries, "A", refs) == pytest.approx(3 / 4)
    assert own_task_share(queries, "B", refs) == pytest.approx(1 / 4)
    # a tie counts for the own task, whichever it is
    tie = {"A": np.stack([unit(1, 0)]), "B": np.stack([unit(0, 1)])}
    assert own_task_share(np.stack([unit(1, 1)]), "A", tie) == 1.0
    assert own_task_share(np.stack([unit(1, 1)]), "B", tie) == 1.0
    assert own_task_share(queries[:0], "A", refs) is None


def test_mean_nearest_neighbour_similarity_by_hand():
    reference = np.stack([unit(1, 0), unit(0, 1)])
    queries = np.stack([unit(1, 0), unit(3, 4)])  # nearest cosines: 1.0 and max(0.6, 0.8) = 0.8
    assert mean_nn_similarity(queries, reference) == pytest.approx(0.9)
    assert mean_nn_similarity(queries[:0], reference) is None


def cand(cid, verdict, prompt, sample, input="x", output="y", finish="stop", selected=False, cluster=None, rank=None):
    c = {"candidate_id": cid, "prompt_id": prompt, "demo_ids": [0, 1], "sample": sample, "continuation": f"gen {prompt}.{sample}",
         "finish_reason": finish, "input": input, "base_output": output, "verdict": verdict, "cluster": cluster,
         "selected": selected}
    if rank is not None:
        c["selection_rank"] = rank
    return c


def hand_built_candidates() -> list[dict]:
    """3 prompts x 2 samples = 6 generations, as the pipeline writes them."""
    return [
        cand(0, "kept", 0, 0, "great phone", "positive", selected=True, cluster=0, rank=1),
        cand(1, "kept", 0, 0, "bad cable", None, cluster=1),  # input-only, kept
        cand(2, "truncated", 0, 1, "long text cut", None, finish="length"),  # the last chunk of a cut generation
        cand(3, "copies_demo", 1, 0, "a demo input", "negative"),
        cand(4, "duplicate", 1, 0, "great phone", "positive"),
        cand(5, "no_instance", 1, 1, None, None),
        cand(6, "duplicate_continuation", 2, 0, None, None),
        cand(7, "multiple_outputs", 2, 1, "two outs", "a"),
        cand(8, "kept", 2, 1, "nice bike", "Positive.", selected=True, cluster=1, rank=0),
        cand(9, "empty_input", 2, 1, "", "z"),
    ]


def test_counts_against_a_hand_built_candidates_file():
    c = candidate_counts(hand_built_candidates(), prompts=3, prompts_skipped=0, rehearsed=2)
    assert c["generations"] == 6  # (0,0) (0,1) (1,0) (1,1) (2,0) (2,1)
    assert c["generations_ended_by_length"] == 1
    assert c["parsed"] == 8  # all but no_instance and duplicate_continuation
    assert c["parsed_pairs"] == 6 and c["input_only"] == 2  # ids 1 and 2 have no Output:
    assert (c["truncated"], c["duplicates"], c["duplicate_generations"], c["copies_demo"]) == (1, 1, 1, 1)
    assert (c["kept"], c["kept_input_only"], c["selected"], c["rehearsed"]) == (3, 1, 2, 2)
    assert c["no_instance"] == 1 and sum(c["verdicts"].values()) == 10 and c["verdicts"]["kept"] == 3


def test_refined_outputs_against_real_labels():
    real = ["Positive"] * 3 + ["Negative"] * 3  # 2 distinct of 6 rows: classification
    refined = ["positive.", "NEGATIVE", "it is fine", "The Positive"]  # normalised: 3 labels, 1 not
    q = output_quality(refined, ["Positive", None, "meh", "negative"], real)
    assert q["classification"] and q["labels"] == ["Negative", "Positive"]
    assert q["label_share"] == 0.75 and q["base_label_share"] == 0.5
    assert q["label_counts"] == {"Positive": 2, "(not a label)": 1, "Negative": 1}
    # words: refined 1,1,3,2 -> mean 1.75; base (None left out) 1,1,1 -> 1; real 1 each
    assert q["length_words"]["refined"] == {"n": 4, "mean": 1.75, "median": 1.5}
    assert q["length_words"]["base"]["mean"] == 1 and q["length_words"]["real_train"]["mean"] == 1
    free = output_quality(["a b c"], ["a"], ["one - two", "three, four five!", "six"])  # free text (3 distinct of 3); "-" is no word
    assert not free["classification"] and "label_share" not in free
    assert free["length_words"]["real_train"]["mean"] == 2 and free["length_words"]["refined"]["median"] == 3


def test_examples_kept_selected_first_and_dropped_one_verdict_after_another():
    cands = hand_built_candidates()
    ex = pick_examples(cands, {0: "positive", 8: "positive"}, seed="s", k=5)
    assert [e["candidate_id"] for e in ex["kept"]] == [0, 1, 8]  # only 3 kept
    assert ex["kept"][0]["refined_output"] == "positive" and "refined_output" not in ex["kept"][1]
    # 7 dropped verdicts of one candidate each: equal counts go alphabetically, one of each
    assert [e["verdict"] for e in ex["dropped"]] == ["copies_demo", "duplicate", "duplicate_continuation",
                                                     "empty_input", "multiple_outputs"]
    assert ex["dropped"][2]["input"] is None and ex["dropped"][2]["continuation"] == "gen 2.0"  # what was generated
    # with 3 more truncated candidates, truncated (4) comes first, then one of each other verdict
    more = cands + [cand(10 + i, "truncated", 3, i, f"cut {i}", None, finish="length") for i in range(3)]
    assert [e["verdict"] for e in pick_examples(more, {}, seed="s", k=3)["dropped"]] == ["truncated", "copies_demo", "duplicate"]
    two = pick_examples(cands, {}, seed="s", k=2)
    assert [e["candidate_id"] for e in two["kept"]] == [0, 8]  # the selected ones first


# ---------------------------------------------------------------- with the packaged encoder

REVIEWS = ["The phone battery lasts all day and the screen is bright.", "This blender is loud but crushes ice well.",
           "The headphones broke after a week, very disappointing.", "Great value laptop, fast and light.",
           "The vacuum cleaner picks up pet hair easily.", "Terrible customer service, the kettle leaked."]
SUMS = ["What is 17 plus 25?", "Compute 8 times 9.", "What is 100 minus 37?", "Divide 81 by 9.",
        "What is 12 squared?", "Add 3, 4 and 5."]


def two_tasks() -> list[Task]:
    def inst(task, i, x, y):
        return Instance(f"{task}-{i}", x, y, f"definition of {task}")
    review = Task("review", "Is the review positive?", train=[inst("r", i, x, "positive" if i % 2 else "negative") for i, x in enumerate(REVIEWS[:4])],
                  eval=[inst("re", i, x, "positive") for i, x in enumerate(REVIEWS[4:])])
    maths = Task("maths", "Solve.", train=[inst("m", i, x, str(i)) for i, x in enumerate(SUMS[:4])],
                 eval=[inst("me", i, x, "1") for i, x in enumerate(SUMS[4:])])
    return [review, maths]


def write_synthetic(folder: Path, inputs: list[str], outputs: list[str]) -> None:
    """A candidates file (all kept, all selected) and the rehearsal rows of task `review`."""
    cands = [cand(i, "kept", i, 0, x, "positive", selected=True, cluster=i % 2, rank=i) for i, x in enumerate(inputs)]
    cands.append(cand(len(inputs), "no_instance", len(inputs), 0, None, None))
    write_jsonl(folder / "review.candidates.jsonl", cands)
    write_jsonl(folder / "review.jsonl", [{"input": x, "output": y, "candidate_id": i} for i, (x, y) in enumerate(zip(inputs, outputs))])
    (folder / "review.stats.json").write_text(json.dumps({"prompts": len(cands), "seconds": 1.0}))


def test_quality_file_with_the_packaged_encoder_is_cached_and_recomputed_on_change(tmp_path):
    """Three synthetic reviews and one arithmetic question for the review task: the reviews are
    nearest to real reviews, the question to real arithmetic: own-task share 3/4."""
    from ssr.config import MethodConfig

    tasks = two_tasks()
    inputs = ["The toaster burns bread and the buttons stick.", "Lovely soft towels, they wash well.",
              "The camera takes sharp photos even at night.", "What is 45 plus 12?"]
    write_synthetic(tmp_path, inputs, ["negative", "positive", "Positive", "57"])
    method = MethodConfig(name="ssr", n_clusters=2)
    q, computed = ensure_quality(tasks[0], tasks, tmp_path, method, seed=1, stage_seed=2)
    assert computed and quality_path(tmp_path, "review").exists()
    fid = q["fidelity"]
    assert fid["selected"]["own_task_share"] == 0.75 and fid["kept"]["nearest_task_counts"] == {"review": 3, "maths": 1}
    assert fid["heldout"]["own_task_share"] == 1.0  # real held-out reviews are nearest to real reviews
    # similarity to real reviews: held-out reviews (ceiling) above the other task's inputs (floor)
    assert fid["heldout"]["nn_similarity"] > fid["other_tasks_heldout"]["nn_similarity"]
    assert q["outputs"]["classification"] and q["outputs"]["label_share"] == 0.75  # "57" is no label
    assert q["diversity"]["clusters"] == {"source": "selection", "clusters": 2, "covered": 2}
    assert q["counts"]["generations"] == 5 and q["counts"]["kept"] == 4 and q["counts"]["rehearsed"] == 4
    # the same inputs: read back, not recomputed (written atomically: no temporaries left)
    before = quality_path(tmp_path, "review").stat().st_mtime_ns
    again, computed = ensure_quality(tasks[0], tasks, tmp_path, method, seed=1, stage_seed=2)
    assert not computed and again == q and quality_path(tmp_path, "review").stat().st_mtime_ns == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # another rehearsal set: recomputed
    write_synthetic(tmp_path, inputs[:3], ["negative", "positive", "Positive"])
    q3, computed = ensure_quality(tasks[0], tasks, tmp_path, method, seed=1, stage_seed=2)
    assert computed and q3["fidelity"]["selected"]["own_task_share"] == 1.0
    # random selection records no clusters: K-means is refitted with the run's K
    rows = read_jsonl(tmp_path / "review.candidates.jsonl")
    write_jsonl(tmp_path / "review.candidates.jsonl", [{**r, "cluster": None} for r in rows])
    q4, _ = ensure_quality(tasks[0], tasks, tmp_path, method, seed=1, stage_seed=2)
    assert q4["diversity"]["clusters"]["source"] == "refit" and q4["diversity"]["clusters"]["clusters"] == 2


def test_embedder_does_not_depend_on_the_order_texts_are_asked_in():
    embed = run_embedder("all-MiniLM-L6-v2", "mean")
    long, short = "a much longer sentence about a loud and badly built fan heater", "a quiet fan"
    one = embed([long, short, short])
    other = embed([short, long])
    assert np.array_equal(one[1], other[0]) and np.array_equal(one[0], other[1]) and np.array_equal(one[1], one[2])
    assert one.shape == (3, 384) and np.allclose(np.linalg.norm(one, axis=1), 1, atol=1e-5)


def test_open_domain_instances_are_compared_by_instruction_and_input(tmp_path):
    """An open-domain task's instances mostly have no input: they differ by instruction. Two
    synthetic cooking instructions and one arithmetic question, all without input: own-task
    share 2/3 (by input alone every one would be the empty string, a tie won by the own task)."""
    from ssr.config import MethodConfig

    cooking = ["Give a recipe for pancakes.", "How long should pasta boil?", "Name three spices used in curry.",
               "Explain how to poach an egg.", "What temperature bakes bread?", "Suggest a quick vegetarian dinner."]
    chat = Task("chat", "(open-domain)", open_domain=True,
                train=[Instance(f"c-{i}", "", "an answer", x) for i, x in enumerate(cooking[:4])],
                eval=[Instance(f"ce-{i}", "", "an answer", x) for i, x in enumerate(cooking[4:])])
    maths = Task("maths", "Solve.", train=[Instance(f"m-{i}", x, str(i), "Solve.") for i, x in enumerate(SUMS[:4])],
                 eval=[Instance(f"me-{i}", x, "1", "Solve.") for i, x in enumerate(SUMS[4:])])
    synthetic = ["How do you make a fluffy omelette?", "Which herbs go well with roast potatoes?", "What is 45 plus 12?"]
    cands = [{**cand(i, "kept", i, 0, "", None, selected=True, cluster=i % 2, rank=i), "instruction": x}
             for i, x in enumerate(synthetic)]
    write_jsonl(tmp_path / "chat.candidates.jsonl", cands)
    write_jsonl(tmp_path / "chat.jsonl", [{"input": "", "output": "ok", "candidate_id": i} for i in range(3)])
    q, _ = ensure_quality(chat, [chat, maths], tmp_path, MethodConfig(name="ssr", n_clusters=2), seed=1, stage_seed=2)
    assert q["fidelity"]["kept"]["nearest_task_counts"] == {"chat": 2, "maths": 1}
    assert q["fidelity"]["heldout"]["own_task_share"] == 1.0
