import pytest

from ssr.evaluation import continual_metrics, exact_match, normalize_answer, rouge_l


def test_rouge_l_superni_conventions():
    assert rouge_l("the cat sat", ["the cat sat"]) == 1.0
    assert rouge_l("", ["something"]) == 0.0
    assert rouge_l("cats sitting", ["cat sits", "dog"]) == 1.0  # stemmed, max over references
    assert 0 < rouge_l("a b c d", ["a b x y"]) < 1


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
