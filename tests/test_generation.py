"""The generator's fast paths against the plain ones: batched greedy decoding equals batch 1,
and the Gumbel-max nucleus sampler draws from exactly the distribution of transformers' top-p."""

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from ssr.generation import GumbelTopP, HFGenerator, SamplingParams
from ssr.models import load_base_model, load_tokenizer


def test_batched_greedy_equals_batch_one(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_base_model(str(tiny_model_dir))
    texts = ["Reverse the word.\n\nInput: apple\nOutput:", "Count the letters in stone", "x",
             "Write the input in upper case, then again, and once more.\n\nInput: river cloud\nOutput:"]
    prompts = [tok(t)["input_ids"] for t in texts]
    params = SamplingParams(max_new_tokens=8)
    one_by_one = HFGenerator(model, tok, batch_size=1, show_progress=False).generate(prompts, params)
    batched = HFGenerator(model, tok, batch_size=4, show_progress=False).generate(prompts, params)
    assert batched == one_by_one and all(len(o) == 1 for o in batched)


def test_samples_come_back_per_prompt_and_reproducibly(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    gen = HFGenerator(load_base_model(str(tiny_model_dir)), tok, batch_size=3, show_progress=False)
    prompts = [tok(t)["input_ids"] for t in ("short", "a longer prompt here", "mid one")]
    params = SamplingParams(max_new_tokens=6, do_sample=True, temperature=0.9, top_p=0.9, num_samples=2)
    torch.manual_seed(1)
    first = gen.generate(prompts, params)
    torch.manual_seed(1)
    assert gen.generate(prompts, params) == first and [len(o) for o in first] == [2, 2, 2]


def _nucleus(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """transformers' own temperature + top-p warpers: the plain path."""
    warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, scores.clone()))
    return torch.softmax(warped, dim=-1)


def test_gumbel_nucleus_keeps_the_same_tokens_as_transformers_top_p():
    torch.manual_seed(0)
    scores = torch.randn(6, 500) * 3
    for top_p, k in ((0.6, 256), (0.95, 4), (1.0, 8)):  # k=4 and 8: the nucleus goes past the top k
        kept = torch.isfinite(GumbelTopP(0.9, top_p, k=k)(None, scores.clone()))
        assert torch.equal(kept, _nucleus(scores, 0.9, top_p) > 0), (top_p, k)


def test_gumbel_nucleus_samples_the_renormalised_distribution():
    torch.manual_seed(0)
    scores = torch.randn(1, 50) * 2
    expected = _nucleus(scores, 0.9, 0.8)[0]
    sampler = GumbelTopP(0.9, 0.8, k=16)
    draws = torch.stack([sampler(None, scores.clone()).argmax(-1) for _ in range(20000)]).flatten()
    frequencies = torch.bincount(draws, minlength=50).float() / len(draws)
    assert frequencies[expected == 0].sum() == 0  # never outside the nucleus
    assert torch.allclose(frequencies, expected, atol=0.015)  # 20k draws: standard error <= 0.0035
