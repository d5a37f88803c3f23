"""Screening of synthetic candidates (`method.screen`): unsafe or unwanted text is dropped with
the verdict `screened` and the rule that fired, before selection.

The paper names unsafe synthetic content as a limitation of SSR: the base model writes the
rehearsal data, and whatever it writes is learnt again in every later stage. Rules, checked in
this order on the candidate's input and base output:

- `words`: whole words or phrases, case-insensitive (rule `word:<word>`);
- `patterns`: Python regular expressions, case-insensitive (rule `pattern:<regex>`);
- `pii: true`: the built-in patterns for e-mail addresses, phone numbers and payment card
  numbers (rule `pii:<kind>`);
- `callable: "module:function"`: your function, called with (input, output), returns a rule
  name (a string) to screen the candidate, or None / False to keep it (rule `callable:<name>`);
- `classifier`: a local text-classification model directory (transformers pipeline); a
  candidate is screened when a label in `classifier_labels` scores at least
  `classifier_threshold` (rule `classifier:<label>`).

The callable and the classifier run code you named on purpose (a module, a model directory
loaded with `trust_remote_code` off); nothing else from a config is ever run as code.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

PII_PATTERNS = {  # checked in this order: a card number would also pass for a phone number
    "email": r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b",
    "card": r"\b(?:\d[ -]?){12,15}\d\b",
    "phone": r"(?<!\w)\+?\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}(?!\w)",
}


def load_callable(spec: str) -> Callable:
    """`module:function` -> the function (ValueError naming what is missing)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r}: {err}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"module {module_name!r} has no function {attr!r}")
    return fn


@dataclass
class Screener:
    """The compiled rules of one `method.screen`; call it with (input, output) for the rule that fires."""

    rules: list[tuple[str, re.Pattern]] = field(default_factory=list)
    function: Callable | None = None
    function_name: str = ""
    classifier: Callable | None = None
    classifier_labels: tuple[str, ...] = ()
    classifier_threshold: float = 0.5

    def __call__(self, input_text: str, output_text: str | None) -> str | None:
        text = input_text if not output_text else f"{input_text}\n{output_text}"
        for name, pattern in self.rules:
            if pattern.search(text):
                return name
        if self.function is not None:
            verdict = self.function(input_text, output_text)
            if verdict:
                return f"callable:{verdict if isinstance(verdict, str) else self.function_name}"
        if self.classifier is not None:
            scores = self.classifier(text, top_k=None, truncation=True)
            for item in scores:
                if item["label"] in self.classifier_labels and item["score"] >= self.classifier_threshold:
                    return f"classifier:{item['label']}"
        return None


def build_screener(cfg) -> Screener | None:
    """The Screener of a `ScreenConfig` (None when screening is off)."""
    if cfg is None:
        return None
    rules = [(f"word:{w}", re.compile(rf"(?<!\w){re.escape(w)}(?!\w)", re.IGNORECASE)) for w in cfg.words]
    rules += [(f"pattern:{p}", re.compile(p, re.IGNORECASE)) for p in cfg.patterns]
    if cfg.pii:
        rules += [(f"pii:{kind}", re.compile(p)) for kind, p in PII_PATTERNS.items()]
    screener = Screener(rules, classifier_labels=tuple(cfg.classifier_labels), classifier_threshold=cfg.classifier_threshold)
    if cfg.callable:
        screener.function = load_callable(cfg.callable)
        screener.function_name = cfg.callable.partition(":")[2]
    if cfg.classifier:
        from transformers import pipeline

        screener.classifier = pipeline("text-classification", model=cfg.classifier, trust_remote_code=False)
    return screener
