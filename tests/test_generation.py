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


def test_finish_reason_says_whether_eos_ended_the_generation(tiny_model_dir):
    from conftest import rewire_eos_rate

    tok = load_tokenizer(str(tiny_model_dir))
    model = load_base_model(str(tiny_model_dir))
    texts = ["Reverse the word.\n\nInput: apple\nOutput:", "Count the letters in stone", "x", "upper case river"]
    prompts = [tok(t)["input_ids"] for t in texts]
    params = SamplingParams(max_new_tokens=40)
    for eos_logit in (None, 40.0, -40.0):  # as built; EOS always first; EOS never
        if eos_logit is not None:
            rewire_eos_rate(model, tok.eos_token_id, eos_logit)
        got = HFGenerator(model, tok, batch_size=4, show_progress=False).generate(prompts, params)
        for prompt, (completion,) in zip(prompts, got):
            # the plain path: transformers' generate on the prompt alone, EOS among the new tokens?
            new = model.generate(input_ids=torch.tensor([prompt], device=model.device), max_new_tokens=40, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[0, len(prompt):]
            assert completion.finish_reason == ("stop" if tok.eos_token_id in new.tolist() else "length")
            assert completion.cut == (completion.finish_reason == "length")
        if eos_logit is not None:
            assert {c.finish_reason for (c,) in got} == {"stop" if eos_logit > 0 else "length"}


def test_max_total_tokens_bounds_prompt_plus_generation(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_base_model(str(tiny_model_dir))
    prompts = [tok(t)["input_ids"] for t in ("Reverse the word apple river stone cloud", "x y")]
    total = max(len(p) for p in prompts) + 6
    one = HFGenerator(model, tok, batch_size=1, show_progress=False)
    bounded = one.generate(prompts, SamplingParams(max_new_tokens=100, max_total_tokens=total))
    for prompt, (completion,) in zip(prompts, bounded):  # alone: exactly the room the prompt leaves
        (expected,) = one.generate([prompt], SamplingParams(max_new_tokens=total - len(prompt)))[0]
        assert completion == expected
    # in one batch, the longest prompt sets the room for every row
    batched = HFGenerator(model, tok, batch_size=2, show_progress=False).generate(
        prompts, SamplingParams(max_new_tokens=100, max_total_tokens=total))
    assert [c for (c,) in batched] == [one.generate([p], SamplingParams(max_new_tokens=6))[0][0] for p in prompts]
    # no room at all: an empty continuation that ended by length
    (empty,) = one.generate([prompts[0]], SamplingParams(max_new_tokens=5, max_total_tokens=len(prompts[0])))[0]
    assert empty == "" and empty.finish_reason == "length"


def test_repetition_penalty_ignores_left_padding(stopping_model_dir):
    """With EOS as the pad token (as SmolLM2's tokenizer has it), a prompt in a left-padded batch
    is generated exactly as alone: the padding must not count as repeated EOS tokens."""
    tok = load_tokenizer(str(stopping_model_dir))
    tok.pad_token = tok.eos_token
    model = load_base_model(str(stopping_model_dir))
    texts = ["Reverse the word.\n\nInput: apple\nOutput:", "x", "Write the input in upper case, then again.\n\nInput: river cloud\nOutput:", "stone"]
    prompts = [tok(t)["input_ids"] for t in texts]
    params = SamplingParams(max_new_tokens=10, repetition_penalty=1000.0)  # topples EOS (logit 3, others ~0.1) if it counted
    alone = HFGenerator(model, tok, batch_size=1, show_progress=False).generate(prompts, params)
    batched = HFGenerator(model, tok, batch_size=4, show_progress=False).generate(prompts, params)
    assert batched == alone
    assert [c.finish_reason for (c,) in batched] == [c.finish_reason for (c,) in alone]
    # and the penalty is transformers' own where there is no padding (batch 1)
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    from ssr.generation import RepetitionPenaltyOverPrompt

    scores, ids = torch.randn(2, 40), torch.randint(0, 40, (2, 7))
    expected = RepetitionPenaltyLogitsProcessor(1.3)(ids, scores.clone())
    assert torch.allclose(RepetitionPenaltyOverPrompt(1.3, torch.zeros(2, dtype=torch.long))(ids, scores.clone()), expected)
