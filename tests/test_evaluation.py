import pytest

from ssr.data.task import Instance, detect_language
from ssr.evaluation import UnicodeWordTokenizer, continual_metrics, exact_match, normalize_answer, rouge_l


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
