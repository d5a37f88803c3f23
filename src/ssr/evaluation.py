"""Scoring: ROUGE-L and exact match, the score matrix, AR/FWT/BWT.

Two ROUGE-L scorers (`eval.scorer`), both F-measure, max over references:
- `superni` (default): Google's rouge-score as SuperNI's compute_metrics.py uses it. English
  references: its default tokenizer (lower case, a-z0-9 words) with the Porter stemmer. Other
  languages: that tokenizer would drop every non-ASCII letter ("canción" -> "canci", "n"),
  so, as SuperNI's cross-lingual scorer does with a byte-level tokenizer, words are kept
  whole: lower-cased Unicode word characters, no stemmer.
- `release`: the paper's release (LLaMA-Factory's ComputeMetrics): jieba segmentation,
  rouge-chinese ROUGE-L, 0 when either side has no token.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Sequence
from functools import lru_cache

from rouge_score import rouge_scorer

from ssr.data.task import Instance
from ssr.generation import Generator, SamplingParams
from ssr.models.templates import PromptTemplate


SCORERS = ("superni", "release")


class UnicodeWordTokenizer:
    """Lower-cased runs of Unicode word characters: accented and non-Latin words stay whole."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


@lru_cache(maxsize=2)
def _scorer(english: bool) -> rouge_scorer.RougeScorer:
    if english:  # SuperNI's default scorer (compute_metrics.py): ROUGE-L with the Porter stemmer
        return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=UnicodeWordTokenizer())


def release_rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F in [0, 1] as the release computed it: jieba words, rouge-chinese, 0 if a side is empty."""
    import jieba
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)
    hypothesis, target = " ".join(jieba.cut(prediction)), " ".join(jieba.cut(reference))
    if not hypothesis.split() or not target.split():
        return 0.0
    return Rouge(metrics=["rouge-l"]).get_scores(hypothesis, target)[0]["rouge-l"]["f"]


def normalize_answer(text: str) -> str:
    """SuperNI/SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def rouge_l(prediction: str, references: Sequence[str], scorer: str = "superni", language: str = "en") -> float:
    """ROUGE-L F1 in [0, 1], the max over references, by `scorer` (see the module docstring)."""
    if scorer == "release":
        return max(release_rouge_l(prediction, ref) for ref in references)
    if scorer != "superni":
        raise ValueError(f"unknown scorer {scorer!r}; known: {SCORERS}")
    rouge = _scorer(language == "en")
    return max(rouge.score(target=ref, prediction=prediction)["rougeL"].fmeasure for ref in references)


def exact_match(prediction: str, references: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(ref) for ref in references))


def score_predictions(rows: list[dict]) -> dict[str, float]:
    """Mean ROUGE-L and exact match, both x 100, over prediction rows."""
    n = max(len(rows), 1)
    return {
        "rougeL": 100 * sum(r["rougeL"] for r in rows) / n,
        "exact_match": 100 * sum(r["exact_match"] for r in rows) / n,
        "n": len(rows),
    }


def greedy_outputs(
    generator: Generator,
    template: PromptTemplate,
    pairs: list[tuple[str, str]],
    max_source_length: int,
    max_new_tokens: int,
    desc: str = "generate",
) -> list[str]:
    """Greedy outputs for (definition, input) pairs through the training template.

    The one path by which a trained model answers: evaluation and SSR refinement both use it.
    """
    prompts = [template.prompt_ids(definition, input_, max_source_length) for definition, input_ in pairs]
    return [out for (out,) in generator.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens), desc=desc)]


def score_rows(instances: list[Instance], outputs: list[str], scorer: str = "superni", language: str = "en") -> list[dict]:
    """One prediction row per instance: its answer scored against its references."""
    rows = []
    for inst, prediction in zip(instances, outputs, strict=True):
        refs = inst.all_references
        rows.append(
            {
                "id": inst.id,
                "input": inst.input,
                "target": inst.output,
                "prediction": prediction,
                "rougeL": rouge_l(prediction, refs, scorer, language),
                "exact_match": exact_match(prediction, refs),
            }
        )
    return rows


def continual_metrics(scores: list[list[float | None]], learnt: int = 0) -> dict[str, float | None]:
    """AR, FWT and BWT of a (T+1) x (L+T) matrix whose row 0 is the base model (SSR spec).

    AR  = mean_i a_i(T);  FWT = mean_{i=2..T} a_i(i-1);  BWT = mean_{i=1..T-1} a_i(T) - a_i(i),
    over the T trained tasks. The first `learnt` columns are tasks learnt before stage 1 (stage
    0): they are not part of these metrics (see `learnt_retention`), so AR / FWT / BWT stay
    comparable with the same sequence run without them.
    FWT/BWT are None when T < 2 or a needed entry is missing.
    """
    scores = [row[learnt:] for row in scores]
    T = len(scores[0])
    final = scores[T]
    ar = sum(final) / T if all(v is not None for v in final) else None
    if T < 2:
        return {"AR": ar, "FWT": None, "BWT": None}
    fwt_terms = [scores[i - 1][i - 1] for i in range(2, T + 1)]  # a_i(i-1), 1-based task i
    bwt_terms = [(scores[T][i - 1], scores[i][i - 1]) for i in range(1, T)]
    fwt = sum(fwt_terms) / (T - 1) if all(v is not None for v in fwt_terms) else None
    bwt = (
        sum(a - b for a, b in bwt_terms) / (T - 1)
        if all(a is not None and b is not None for a, b in bwt_terms)
        else None
    )
    return {"AR": ar, "FWT": fwt, "BWT": bwt}


def learnt_retention(scores: list[list[float | None]], names: list[str], learnt: int) -> dict[str, dict[str, float | None]]:
    """For each learnt task (the first `learnt` columns): its score before training (row 0),
    after the last stage, and the change (negative = forgotten)."""
    out = {}
    for j, name in enumerate(names[:learnt]):
        before, after = scores[0][j], scores[-1][j]
        change = after - before if before is not None and after is not None else None
        out[name] = {"before": before, "after": after, "change": change}
    return out
