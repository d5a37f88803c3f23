import pytest

from ssr.data.task import Instance, detect_language
from ssr.evaluation import (UnicodeWordTokenizer, continual_metrics, exact_match, learnt_retention, normalize_answer, rouge_l,
                            score_predictions, score_rows)


def test_rouge_l_superni_conventions():
    assert rouge_l("the cat sat", ["the cat sat"]) == 1.0
    assert rouge_l("", ["something"]) == 0.0
    assert rouge_l("cats sitting", ["cat sits", "dog"]) == 1.0  # stemmed, max over references
    assert 0 < rouge_l("a b c d", ["a b x y"]) < 1


def test_accented_words_survive_the_non_english_scorer():
    assert UnicodeWordTokenizer().tokenize("La canción, ¡Bonita!") == ["la", "canción", "bonita"]
    # one of two words right: P = R = 1/2. rouge-score's default tokenizer would split
    # "canción" into "canci" + "n" and count the shared "n" too.
    assert rouge_l("una canción", ["otra canción"], language="es") == pytest.approx(0.5)
    assert rouge_l("canción", ["cancion"], language="es") == 0.0
    assert rouge_l("una canción", ["una canciones"], language="es") == pytest.approx(0.5)  # no stemmer


def test_references_language_is_detected():
    def rows(outputs):
        return [Instance(str(i), "x", out, "d") for i, out in enumerate(outputs)]

    assert detect_language(rows(["Pronto llamamos a este proyecto.", "Les daré dos estadísticas."])) == "non-en"
    assert detect_language(rows(["We soon called this project."] * 19 + ["A café."])) == "en"


def test_release_scorer_matches_a_hand_computed_value():
    # jieba keeps English words apart: hypothesis 6 tokens, reference 7, LCS "cat sat on mat" = 4;
    # P = 4/6, R = 4/7, F = 2PR / (P + R) = 8/13 (rouge-chinese adds 1e-8 to the denominator).
    assert rouge_l("the cat sat on a mat", ["a cat sat on the red mat"], scorer="release") == pytest.approx(8 / 13, abs=1e-6)
    # Case and punctuation count (no normalisation): "The" != "the"; "," and "." are tokens.
    # hypothesis The/cat/,/sat/. (5), reference the/cat/sat (3), LCS cat sat = 2: P 2/5, R 2/3, F 1/2.
    assert rouge_l("The cat, sat.", ["the cat sat"], scorer="release") == pytest.approx(0.5, abs=1e-6)
    assert rouge_l("", ["the cat"], scorer="release") == 0.0
    assert rouge_l("   ", ["the cat"], scorer="release") == 0.0


def test_exact_match_normalises():
    assert normalize_answer("The  Answer!") == "answer"
    assert exact_match("Positive.", ["positive"]) == 1.0
    assert exact_match("negative", ["positive"]) == 0.0


def test_metrics_follow_the_spec_formulas():
    # rows: base, after stage 1, 2, 3; columns: tasks 1..3
    s = [[10, 20, 30], [80, 25, 35], [70, 90, 40], [60, 85, 95]]
    m = continual_metrics(s)
    assert m["AR"] == pytest.approx((60 + 85 + 95) / 3)
    assert m["FWT"] == pytest.approx((25 + 40) / 2)  # a_2(1), a_3(2)
    assert m["BWT"] == pytest.approx(((60 - 80) + (85 - 90)) / 2)


def test_metrics_with_one_task_or_missing_rows():
    assert continual_metrics([[1.0], [2.0]]) == {"AR": 2.0, "FWT": None, "BWT": None}
    m = continual_metrics([[1, 2], [None, None], [3, 5]])
    assert m["AR"] == 4 and m["FWT"] is None and m["BWT"] is None


def test_two_tasks_give_fwt_and_bwt_and_a_missing_final_score_gives_no_ar():
    # T = 2, the smallest sequence with a transfer term: FWT = a_2(1), BWT = a_1(2) - a_1(1)
    assert continual_metrics([[10, 20], [50, 30], [40, 70]]) == {"AR": 55.0, "FWT": 30.0, "BWT": -10.0}
    assert continual_metrics([[10, 20], [50, 30], [40, None]])["AR"] is None


def test_normalisation_keeps_one_space_between_words():
    assert normalize_answer("  Two\twords \n here ") == "two words here"


def test_an_unknown_scorer_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown scorer 'bleu'"):
        rouge_l("a", ["a"], scorer="bleu")


def test_rows_score_each_answer_against_every_reference_and_average_to_percent():
    instances = [Instance("a", "in a", "the cat sat", "d"), Instance("b", "in b", "yes", "d", references=("yes", "no"))]
    rows = score_rows(instances, ["the cat", "No."])
    # "the cat" vs "the cat sat": LCS 2, precision 2/2, recall 2/3, F = 0.8; "No." matches the reference "no"
    assert [(r["id"], r["input"], r["target"], r["prediction"]) for r in rows] == [
        ("a", "in a", "the cat sat", "the cat"), ("b", "in b", "yes", "No.")]
    assert [r["rougeL"] for r in rows] == [pytest.approx(0.8), 1.0]
    assert [r["exact_match"] for r in rows] == [0.0, 1.0]
    assert score_predictions(rows) == {"rougeL": pytest.approx(90.0), "exact_match": 50.0, "n": 2}
    assert score_predictions(rows[:1]) == {"rougeL": pytest.approx(80.0), "exact_match": 0.0, "n": 1}
    assert score_predictions([]) == {"rougeL": 0.0, "exact_match": 0.0, "n": 0}
    with pytest.raises(ValueError):  # one answer per instance, never silently fewer
        score_rows(instances, ["only one"])


def test_rows_are_scored_in_the_tasks_language():
    """English (the default) stems ("cats sitting" = "cat sits"); another language is scored on
    Unicode words without a stemmer (one word of two right: 0.5)."""
    english = score_rows([Instance("a", "x", "cat sits", "d")], ["cats sitting"])
    assert english[0]["rougeL"] == 1.0
    spanish = score_rows([Instance("b", "x", "otra canción", "d")], ["una canción"], language="es")
    assert spanish[0]["rougeL"] == pytest.approx(0.5)  # the English tokenizer would also count a stray "n"


def test_learnt_tasks_retention_is_before_after_and_change():
    scores = [[40.0, 5.0, 6.0], [35.0, 20.0, 7.0], [30.0, 18.0, 25.0]]
    assert learnt_retention(scores, ["general", "x", "y"], learnt=1) == {
        "general": {"before": 40.0, "after": 30.0, "change": -10.0}}
    assert learnt_retention([[None, 1.0], [2.0, 3.0]], ["general", "x"], learnt=1)["general"]["change"] is None


def test_greedy_outputs_are_the_frozen_models_own_greedy_answers(tiny_model_dir):
    """Evaluation and refinement answer through `greedy_outputs`: batched, it must give what the
    model itself generates greedily for each prompt alone (the template's prompt, its start cut
    to `max_source_length`), no more than `max_new_tokens` tokens, special tokens dropped."""
    import torch

    from ssr.evaluation import greedy_outputs
    from ssr.generation import HFGenerator
    from ssr.models import get_template, load_base_model, load_tokenizer

    model, tok = load_base_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    template = get_template("vanilla", tok)
    pairs = [("Write the input in upper case, then reverse the order of the words, then count them.",
              "green table ocean silver window garden"),
             ("Reverse the words.", "apple river stone cloud"), ("Count the words.", "one")]
    got = greedy_outputs(HFGenerator(model, tok, batch_size=3, show_progress=False), template, pairs, 10, 5)
    want = []
    for definition, input_ in pairs:
        ids = template.prompt_ids(definition, input_)[-10:]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        want.append(tok.decode(out[0, len(ids):], skip_special_tokens=True).strip())
    assert got == want
    lengths = [len(template.prompt_ids(d, i)) for d, i in pairs]
    assert max(lengths) > 10 and len({min(n, 10) for n in lengths}) > 1  # cut prompts, and a padded batch
