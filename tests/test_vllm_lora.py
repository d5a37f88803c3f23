"""vLLM's LoRA-per-request engine (`generation.vllm_adapters: lora`, the default on GPUs), for
real on vLLM's CPU build: a second engine beside test_vllm.py's merged one, in a file of its own
so that `make test`'s two workers start the two engines side by side."""

from __future__ import annotations

import shutil

import pytest

from conftest import tiny_config
from ssr.config import load_config
from ssr.engines.vllm import VLLMGenerator, current_engine
from ssr.generation import SamplingParams
from ssr.methods.base import Stage
from ssr.runner import BASE_STAGE, ModelState
from vllm_support import adapter_dir, hf_generator, merged_with_peft, needs_vllm, prompts, spec_for  # noqa: F401 (fixtures)

pytestmark = needs_vllm


def test_a_lora_engine_applies_adapters_per_request_as_the_hf_backend_does(task_dir, stopping_model_dir, prompts,
                                                                          adapter_dir, tmp_path):
    """`generation.vllm_adapters: lora` (the default on GPUs): the base weights stay, each request
    names its adapter, as the runner's ModelState asks for θ(0) and for stage 1's adapter where
    a run keeps it."""
    raw = tiny_config(task_dir, stopping_model_dir, "sequential", tasks=("reverse", "upper"), backend="vllm")
    raw["generation"]["vllm_adapters"] = "lora"
    state = ModelState(load_config(None, raw=raw), tmp_path)
    shutil.copytree(adapter_dir, tmp_path / "stages" / "1-reverse" / "adapter")
    params = SamplingParams(max_new_tokens=12)
    base = state.stage_generator(BASE_STAGE, []).generate(prompts, params)
    tuned = state.stage_generator(Stage(1, "1-reverse", ("reverse",)), [BASE_STAGE]).generate(prompts, params)
    lora_engine = current_engine()
    assert lora_engine.spec == spec_for(stopping_model_dir, "lora")
    assert base == hf_generator(stopping_model_dir).generate(prompts, params)
    assert tuned == hf_generator(stopping_model_dir, adapter_dir).generate(prompts, params)
    assert tuned != base  # the adapter reached the engine
    with pytest.raises(ValueError, match="not merged weights"):
        VLLMGenerator(lora_engine, weights=merged_with_peft(stopping_model_dir, adapter_dir), show_progress=False).generate(prompts, params)
