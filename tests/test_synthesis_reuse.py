"""The base model's samples are reused only by a run that would draw exactly the same ones
(`ssr.synthesis.reuse`): same prompts' token ids, sampling parameters and engine identity."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch

from conftest import SSR_OPTS, tiny_config
from ssr.config import load_config
from ssr.generation import HFGenerator, SamplingParams
from ssr.io import read_jsonl
from ssr.models import load_base_model, load_tokenizer
from ssr.runner import run
from ssr.synthesis.reuse import ReusedGenerations, generation_key

MARK = "REUSED-FROM-THE-SIBLING"


class CountingGenerator:
    """A real generator that counts how often it is asked to sample."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def generate(self, prompts, params, desc="generate"):
        self.calls += 1
        return self.inner.generate(prompts, params, desc)


def test_the_key_is_a_sha256_of_a_canonical_form():
    """The key does not depend on the order the identity's fields were written in."""
    import hashlib

    params = SamplingParams(max_new_tokens=5, seed=3)
    key = generation_key({"engine": "hf", "dtype": "float32"}, [[1, 2]], params)
    assert key == generation_key({"dtype": "float32", "engine": "hf"}, [[1, 2]], params)
    canonical = json.dumps({"identity": {"dtype": "float32", "engine": "hf"}, "params": asdict(params), "prompts": [[1, 2]]},
                           sort_keys=True)
    assert key == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_samples_are_stored_and_read_back_only_under_the_same_key(tiny_model_dir, tmp_path, caplog):
    tok = load_tokenizer(str(tiny_model_dir))
    gen = CountingGenerator(HFGenerator(load_base_model(str(tiny_model_dir)), tok, 4, show_progress=False))
    prompts = [tok("Input: abc\nOutput:")["input_ids"], tok("Input: xy\nOutput:")["input_ids"]]
    params = SamplingParams(max_new_tokens=5, do_sample=True, temperature=0.9, top_p=0.6, num_samples=2, seed=3)
    identity = {"engine": "hf", "dtype": "float32"}
    first = tmp_path / "a" / "synthetic" / "generations" / "t.jsonl"
    fresh = ReusedGenerations(gen, first, identity, [])
    drawn = fresh.generate(prompts, params)
    assert gen.calls == 1 and first.exists() and fresh.reused_from is None
    header, *rows = read_jsonl(first)  # the header says what the samples were drawn with
    assert header == {"key": generation_key(identity, prompts, params), "prompts": 2, "identity": identity,
                      "params": asdict(params)}
    assert rows == [{"samples": [[str(c), c.finish_reason] for c in samples]} for samples in drawn]

    second = tmp_path / "b" / "synthetic" / "generations" / "t.jsonl"
    reuse = ReusedGenerations(gen, second, identity, [first])
    with caplog.at_level("INFO", logger="ssr"):
        again = reuse.generate(prompts, params)
    assert [r.getMessage() for r in caplog.records] == [f"generate: 2 prompts' continuations reused from {first} (the same key)"]
    assert gen.calls == 1, "the same key sampled again"
    assert again == drawn and [[c.finish_reason for c in s] for s in again] == [[c.finish_reason for c in s] for s in drawn]
    assert reuse.reused_from == first and second.read_bytes() == first.read_bytes()

    # anything the samples depend on, changed: sampled afresh, never read from the sibling
    for other_identity, other_prompts, other_params in [
        ({**identity, "dtype": "bfloat16"}, prompts, params),
        (identity, prompts[:1], params),
        (identity, [prompts[0], prompts[1][:-1]], params),
        (identity, prompts, replace(params, top_p=0.9)),
        (identity, prompts, replace(params, seed=4)),
    ]:
        calls = gen.calls
        target = tmp_path / f"c{calls}" / "t.jsonl"
        ReusedGenerations(gen, target, other_identity, [first]).generate(other_prompts, other_params)
        assert gen.calls == calls + 1

    # a sibling file cut short (fewer rows than its header says) or unreadable is no source
    lines = first.read_text().splitlines(keepends=True)
    first.write_text("".join(lines[:-1]))
    calls = gen.calls
    ReusedGenerations(gen, tmp_path / "d" / "t.jsonl", identity, [first]).generate(prompts, params)
    first.write_text("not json\n")
    ReusedGenerations(gen, tmp_path / "e" / "t.jsonl", identity, [first]).generate(prompts, params)
    assert gen.calls == calls + 2


def test_an_ablation_beside_an_ssr_run_parses_the_samples_that_run_stored(ssr_run, tmp_path):
    """`ssr-random` beside a finished `ssr` run (as a sweep lays them out) parses the continuations
    stored by that run, not new ones: they are marked in the source file, and the marks show up in
    its candidates. (Its tasks stop after the first, evaluated on one row: the key covers only what
    the samples depend on, so they are still the source's.)"""
    source_run, raw = ssr_run
    source = tmp_path / "ssr"
    shutil.copytree(source_run, source)
    stored = source / "synthetic" / "generations" / "reverse.jsonl"
    header, *rows = read_jsonl(stored)
    # the source's samples are stored under the engine that drew them: the config's model, hf, fp32
    identity = header["identity"]
    assert (identity["model"]["name"], identity["engine"], identity["dtype"]) == (raw["model"]["name"], "hf", "float32")
    rows = [{"samples": [[f"{MARK} {text}", reason] for text, reason in row["samples"]]} for row in rows]
    stored.write_text("".join(json.dumps(r) + "\n" for r in [header, *rows]))

    ablation = {**raw, "method": {**raw["method"], "selection": "random"}, "tasks": raw["tasks"][:2],
                "eval": {**raw["eval"], "max_examples": 1}}
    run(load_config(None, raw=ablation), tmp_path / "ssr-random")
    candidates = read_jsonl(tmp_path / "ssr-random" / "synthetic" / "reverse.candidates.jsonl")
    assert candidates and all(c["continuation"].startswith(MARK) for c in candidates)
    assert len({(c["prompt_id"], c["sample"]) for c in candidates}) == sum(len(r["samples"]) for r in rows)
    stats = json.loads((tmp_path / "ssr-random" / "synthetic" / "reverse.stats.json").read_text())
    assert stats["generations_reused_from"] == str(source)


def test_the_generation_identity_names_the_model_the_engine_and_the_dtype_that_sample(task_dir, tiny_model_dir, tmp_path,
                                                                                     monkeypatch):
    """What a run's samples are keyed by besides prompts and sampling parameters, case by case:
    the model and generation settings, the ICL model, the batch size, and which engine samples
    in which dtype: vLLM for θ(0) on a vLLM run, the hf backend for a separate `method.icl_model`."""
    from types import SimpleNamespace

    from ssr.methods.ssr import SelfSynthesizedRehearsal
    from ssr.runner import ModelState

    def identity(backend: str, icl_model: str | None, dtype: str) -> dict:
        raw = tiny_config(task_dir, tiny_model_dir, "ssr", backend=backend, **SSR_OPTS)
        raw["model"]["dtype"], raw["method"]["icl_model"], raw["method"]["batch_size"] = dtype, icl_model, 5
        cfg = load_config(None, raw=raw)
        models = ModelState(cfg, tmp_path)
        return raw, SelfSynthesizedRehearsal(cfg, []).generation_identity(SimpleNamespace(models=models))

    raw, hf = identity("hf", None, "float32")
    assert (hf["engine"], hf["dtype"], hf["icl_model"], hf["batch_size"]) == ("hf", "float32", None, 5)
    assert hf["model"]["name"] == raw["model"]["name"] and hf["model"]["dtype"] == "float32"
    assert hf["generation"]["backend"] == "hf" and hf["generation"]["kv_cache_gb"] == raw["generation"]["kv_cache_gb"]
    # `model.dtype: auto` on a CPU whose bf16 matmul measured 2x fp32: vLLM bf16, the hf model fp32
    # (README), so the engine that samples decides the dtype in the identity
    monkeypatch.setattr("ssr.models.dtype.cpu_bf16_speedup", lambda cache_dir=None: 2.0)
    hf_auto = "bfloat16" if torch.cuda.is_available() else "float32"
    _, vllm = identity("vllm", None, "auto")
    assert (vllm["engine"], vllm["dtype"], vllm["generation"]["backend"]) == ("vllm", "bfloat16", "vllm")
    _, other = identity("vllm", str(tiny_model_dir), "auto")
    assert (other["engine"], other["dtype"], other["icl_model"]) == ("hf", hf_auto, str(tiny_model_dir))
    _, hf_run = identity("hf", None, "auto")
    assert (hf_run["engine"], hf_run["dtype"]) == ("hf", hf_auto)
