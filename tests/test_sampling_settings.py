"""`method.temperature`, `top_p`, `repetition_penalty` and sampling itself reach the sampler of
SSR synthesis (hf backend), checked through `generate_candidates` on the tiny model against
transformers' own greedy search at batch 1 (with its own repetition-penalty processor):

- top_p → 0 keeps only the most likely token: every sample is the penalised greedy continuation;
- temperature → 0 with top_p = 1 does the same;
- temperature 1, top_p 1 really samples: samples differ from the greedy one and from each other.
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from ssr.config import load_config
from ssr.data import load_task
from ssr.generation import HFGenerator
from ssr.models import load_base_model, load_tokenizer
from ssr.synthesis.pipeline import generate_candidates

NEW_TOKENS = 10


@pytest.fixture(scope="module")
def setting(task_dir, tiny_model_dir):
    model = load_base_model(str(tiny_model_dir))
    tok = load_tokenizer(str(tiny_model_dir))
    return task_dir, tiny_model_dir, model, tok


def _candidates(setting, **method) -> tuple[dict[int, list[str]], list]:
    """Continuations per prompt id of 3 ICL prompts x 3 samples under the given settings."""
    task_dir, model_dir, model, tok = setting
    cfg = load_config(None, raw=tiny_config(task_dir, model_dir, "ssr", tasks=("reverse", "upper"), max_prompts=3,
                                            samples_per_prompt=3, synth_max_new_tokens=NEW_TOKENS, **method))
    task = load_task(cfg.tasks[0], cfg.data, seed=cfg.seed)
    candidates, _, prompts = generate_candidates(task, task.demos, HFGenerator(model, tok, 16, show_progress=False),
                                                 tok, 512, cfg.method, seed=11)
    by_prompt: dict[int, dict[int, str]] = {}
    for c in candidates:
        by_prompt.setdefault(c["prompt_id"], {})[c["sample"]] = c["continuation"]
    return {p.id: [by_prompt[p.id][s] for s in range(3)] for p in prompts}, prompts


def _greedy(setting, prompts, penalty: float) -> dict[int, str]:
    """transformers' greedy search, one prompt at a time (no padding), its own penalty processor."""
    _, _, model, tok = setting
    out = {}
    with torch.no_grad():
        for p in prompts:
            ids = tok(p.text, add_special_tokens=True, return_tensors="pt")["input_ids"]
            new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 repetition_penalty=penalty, max_new_tokens=NEW_TOKENS, pad_token_id=tok.pad_token_id)
            out[p.id] = tok.decode(new[0, ids.shape[1]:], skip_special_tokens=True).strip()
    return out


def test_top_p_near_zero_gives_the_penalised_greedy_continuation(setting):
    samples, prompts = _candidates(setting, top_p=1e-9, temperature=1.0, repetition_penalty=3.0)
    greedy = _greedy(setting, prompts, penalty=3.0)
    assert greedy != _greedy(setting, prompts, penalty=1.0)  # the penalty matters for these prompts
    assert samples == {pid: [text] * 3 for pid, text in greedy.items()}


def test_temperature_near_zero_gives_the_greedy_continuation(setting):
    samples, prompts = _candidates(setting, top_p=1.0, temperature=1e-4, repetition_penalty=1.0)
    assert samples == {pid: [text] * 3 for pid, text in _greedy(setting, prompts, penalty=1.0).items()}


def test_synthesis_samples(setting):
    samples, prompts = _candidates(setting, top_p=1.0, temperature=1.0, repetition_penalty=1.0)
    greedy = _greedy(setting, prompts, penalty=1.0)
    assert all(len(set(texts)) > 1 for texts in samples.values())  # 3 samples of a prompt are not one text
    assert all(greedy[pid] not in texts for pid, texts in samples.items())
