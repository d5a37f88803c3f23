"""The vLLM generation backend: one engine per process, serving the base model and every stage's model.

One `LLM` engine is started the first time a run needs generation and kept for the rest of
the process (every stage of a run, every run of a sweep with the same model). It serves a
stage's fine-tuned model in one of two ways (`EngineSpec.adapters`):
- `lora`: the base model θ(0) answers requests without an adapter, and each stage's model is
  the base plus that stage's PEFT adapter, passed per request as a `LoRARequest`;
- `merged`: the engine has no LoRA support; the caller merges a stage's weights (PEFT) and the
  engine reloads them in place (vLLM's `reload_weights`) when the requested model changes, then
  empties the prefix cache, whose keys and values were computed with the previous weights. On
  CPUs this is the fast way: vLLM applies LoRA there through a PyTorch fallback that copies the
  adapter matrices once per token.
Prompts arrive as token ids (the project tokenizes with its templates), so vLLM sees exactly
what the `hf` backend sees.

vLLM's engine runs in a spawned process; scripts that start it need the
`if __name__ == "__main__":` idiom (the `ssr` command is fine).

Two vLLM settings are fixed on purpose:
- prefix caching on: the hundreds of ICL prompts of a task share its definition;
- chunked prefill off: a request whose prompt is split over two steps has a sampled token
  discarded, and vLLM's CPU build cannot rewind a seeded request's random generator for it
  ("CPU Generator does not use offset"); without chunking, per-request seeds work on both
  builds and sampling is reproducible request by request (the same prompt and seed give the
  same samples whatever else is in the batch or ran before).
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

from ssr.generation import Completion, SamplingParams

log = logging.getLogger(__name__)

_UNKNOWN = object()  # what a merged engine holds while reloading, or after a failed reload

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The adapter ranks a vLLM engine can be sized for (`max_lora_rank`)."""


@dataclass(frozen=True)
class EngineSpec:
    """Everything that fixes an engine; a run that needs another spec gets another engine."""

    model_path: str
    dtype: str
    max_lora_rank: int
    seed: int = 0
    kv_cache_gb: float = 2.0
    gpu_memory_utilization: float = 0.5
    trust_remote_code: bool = False
    allow_pickle: bool = False
    """False: weights only from safetensors (a pickle file can run code when loaded)."""
    adapters: Literal["lora", "merged"] = "lora"
    """How a fine-tuned stage is served: its LoRA adapter per request, or its merged weights reloaded."""


@dataclass(frozen=True)
class Weights:
    """A model a `merged` engine serves by reloading its weights. `key` names the weights (equal
    keys, equal weights: the engine reloads only when the key changes); `save(directory)` writes
    them there as a model directory (safetensors, the engine's dtype) when they must be loaded."""

    key: Hashable
    save: Callable[[Path], None]


def lora_rank_for(r: int) -> int:
    """The smallest rank vLLM accepts that holds an adapter of rank `r`."""
    for rank in LORA_RANKS:
        if rank >= r:
            return rank
    raise ValueError(f"LoRA rank {r} is larger than vLLM supports ({LORA_RANKS[-1]})")


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _registry_dir() -> Path:
    from ssr.models.loading import cache_root

    return cache_root() / "engines"


def register_engine_processes(processes: list[psutil.Process], registry: Path | None = None) -> Path:
    """Record the processes of an engine this process started, so that a later run can stop them
    if this process dies without shutting them down (vLLM's engine core outlives a SIGKILLed or
    OOM-killed parent, holding its memory, and a rerun would start a second engine beside it)."""
    registry = registry or _registry_dir()
    registry.mkdir(parents=True, exist_ok=True)
    owner = psutil.Process()
    path = registry / f"{owner.pid}.json"
    from ssr.io import write_json

    write_json(path, {"owner": [owner.pid, owner.create_time()],
                      "processes": [[p.pid, p.create_time()] for p in processes]})
    return path


def _same_process(pid: int, created: float) -> psutil.Process | None:
    """The process `pid` if it is still the one created at `created` (pids are reused)."""
    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - created) < 0.5 else None
    except psutil.Error:
        return None


def reap_orphaned_engines(registry: Path | None = None) -> int:
    """Stop the engine processes of runs that died without shutting them down; returns how many.
    Engines of live processes are left alone."""
    registry = registry or _registry_dir()
    stopped = 0
    for path in sorted(registry.glob("*.json")) if registry.is_dir() else []:
        try:
            entry = json.loads(path.read_text())
            owner, processes = entry["owner"], entry["processes"]
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
            continue
        if _same_process(*owner) is not None:
            continue
        alive = [p for p in (_same_process(pid, created) for pid, created in processes) if p is not None]
        for proc in alive:
            proc.terminate()
        _, still = psutil.wait_procs(alive, timeout=10)
        for proc in still:
            proc.kill()
        if alive:
            log.warning("stopped %d process(es) of a vLLM engine left running by process %d, which died without "
                        "shutting it down", len(alive), owner[0])
        stopped += len(alive)
        path.unlink(missing_ok=True)
    return stopped


class VLLMEngine:
    """A started vLLM engine and the adapters it has been given (by directory)."""

    def __init__(self, spec: EngineSpec):
        from vllm import LLM

        reap_orphaned_engines()  # a killed earlier run's engine would hold its memory beside ours
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        self.spec = spec
        if not on_gpu():
            # vLLM-CPU reserves one core for its front end by default; on a small machine that
            # halves generation speed, and the front end is idle while the engine computes.
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            # vLLM 0.32's CPU build saves its AOT-compiled model but fails to load it again
            # ("'function' object has no attribute 'finalize_loading'") and compiles anew at
            # every start; its older compile cache loads: a warm start's warm-up took 6.7 s
            # here against 13 s (a cold one 32 s against 25 s).
            os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
        memory = (dict(gpu_memory_utilization=spec.gpu_memory_utilization, enable_sleep_mode=True) if on_gpu()
                  else dict(kv_cache_memory_bytes=int(spec.kv_cache_gb * (1 << 30))))
        log.info("starting vLLM engine: %s (%s)", spec.model_path, spec.dtype)
        lora = dict(enable_lora=True, max_lora_rank=spec.max_lora_rank, max_loras=1) if spec.adapters == "lora" else {}
        self.llm = LLM(
            model=spec.model_path, dtype=spec.dtype, seed=spec.seed, trust_remote_code=spec.trust_remote_code,
            load_format="auto" if spec.allow_pickle else "safetensors",
            enable_prefix_caching=True, enable_chunked_prefill=False, **lora, **memory,
        )
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self._adapter_ids: dict[str, int] = {}
        self.serving: Hashable = None
        """The key of the weights a `merged` engine holds now (None: the base model's)."""
        self.asleep = False
        started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        self._registry_file = register_engine_processes(started)

    def lora_request(self, adapter_dir: str | Path | None):
        """The request that selects `adapter_dir` (None = the base model). Ids are per directory:
        an adapter directory is written once (it marks a finished stage) and never changes."""
        if adapter_dir is None:
            return None
        from vllm.lora.request import LoRARequest

        key = str(Path(adapter_dir).resolve())
        lora_id = self._adapter_ids.setdefault(key, len(self._adapter_ids) + 1)
        return LoRARequest(lora_name=key, lora_int_id=lora_id, lora_path=key)

    def serve(self, weights: Weights | None) -> None:
        """Hold `weights` (None: the base model) in a `merged` engine: reloaded in place if another
        model is loaded now, then the prefix cache emptied (its entries belong to the old weights)."""
        key = None if weights is None else weights.key
        if key == self.serving:
            return
        started = time.perf_counter()
        from ssr.models.loading import cache_root

        scratch = cache_root() / "weights"
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:  # removed once the engine has read it
            path = self.spec.model_path
            self.serving = _UNKNOWN  # until the reload has finished: a failed one leaves the weights mixed
            if weights is not None:
                weights.save(Path(tmp))
                path = tmp
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path), "is_checkpoint_format": True})
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM did not empty its prefix cache after new weights were loaded")
        self.serving = key
        log.info("vLLM engine now serves %s (reloaded in %.1f s)", "the base model" if key is None else key,
                 time.perf_counter() - started)

    def generate(self, prompts: list[list[int]], params: SamplingParams, adapter_dir: str | Path | None = None,
                 show_progress: bool = True, weights: Weights | None = None) -> list[list[Completion]]:
        """`params.num_samples` generations per prompt (token ids), in the caller's order, by the base
        model, by the base plus `adapter_dir` (a `lora` engine) or by `weights` (a `merged` engine)."""
        from vllm import SamplingParams as VSamplingParams

        self.wake()
        if self.spec.adapters == "merged":
            if adapter_dir is not None:
                raise ValueError("a merged vLLM engine serves merged weights (Weights), not adapter directories")
            self.serve(weights)
        elif weights is not None:
            raise ValueError("a lora vLLM engine serves adapter directories, not merged weights")
        results: list[list[Completion]] = [[] for _ in prompts]
        requests, request_params, where = [], [], []
        for i, ids in enumerate(prompts):
            limit = self.max_model_len if params.max_total_tokens is None else min(self.max_model_len, params.max_total_tokens)
            room = limit - len(ids)
            if room <= 0:  # nothing fits after the prompt: an empty generation, cut by length
                results[i] = [Completion("", "length")] * params.num_samples
                continue
            # One seed per request (its samples take seed, seed+1, ...): the same prompt and seed
            # give the same samples whatever else shares the batch.
            seed = None if params.seed is None else (params.seed * 1_000_003 + i * params.num_samples) % (2**31)
            request_params.append(VSamplingParams(
                n=params.num_samples,
                temperature=params.temperature if params.do_sample else 0.0,
                top_p=params.top_p if params.do_sample else 1.0,
                repetition_penalty=params.repetition_penalty,
                max_tokens=min(params.max_new_tokens, room),
                ignore_eos=params.ignore_eos,
                seed=seed if params.do_sample else None,
                skip_special_tokens=True,
            ))
            requests.append({"prompt_token_ids": list(ids)})
            where.append(i)
        if requests:
            outputs = self.llm.generate(requests, request_params, use_tqdm=show_progress,
                                        lora_request=self.lora_request(adapter_dir))
            for i, out in zip(where, outputs):
                samples = sorted(out.outputs, key=lambda c: c.index)
                # vLLM says `stop` for EOS and for a stop string, `length` when max_tokens ran out
                results[i] = [Completion(c.text.strip(), "length" if c.finish_reason == "length" else "stop") for c in samples]
        return results

    def sleep(self) -> None:
        """Give the GPU memory back while a stage trains (weights to host memory, KV cache dropped).
        On a CPU there is nothing to give back: the engine keeps its reserved memory."""
        if on_gpu() and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def shutdown(self) -> None:
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception as err:  # noqa: BLE001 - best effort at exit
            log.debug("vLLM shutdown: %s", err)
        self.llm = None
        self._registry_file.unlink(missing_ok=True)
        gc.collect()


_ENGINE: VLLMEngine | None = None


def get_engine(spec: EngineSpec) -> VLLMEngine:
    """The process's engine for `spec`: started once and shared (stages, runs of a sweep).
    A different spec shuts the current engine down first: one engine's memory at a time."""
    global _ENGINE
    if _ENGINE is not None and _ENGINE.spec == spec:
        return _ENGINE
    shutdown_engine()
    _ENGINE = VLLMEngine(spec)
    return _ENGINE


def current_engine() -> VLLMEngine | None:
    return _ENGINE


def shutdown_engine() -> None:
    global _ENGINE
    if _ENGINE is not None:
        _ENGINE.shutdown()
        _ENGINE = None


atexit.register(shutdown_engine)


class VLLMGenerator:
    """The `Generator` interface over the shared engine, for one model: the base model, the base
    plus `adapter_dir` (a `lora` engine) or `weights` (a `merged` engine)."""

    def __init__(self, engine: VLLMEngine, adapter_dir: str | Path | None = None, show_progress: bool = True,
                 weights: Weights | None = None):
        self.engine, self.adapter_dir, self.show_progress, self.weights = engine, adapter_dir, show_progress, weights

    def generate(self, prompts: list[list[int]], params: SamplingParams, desc: str = "generate") -> list[list[Completion]]:
        model = f" (adapter {self.adapter_dir})" if self.adapter_dir else f" (merged {self.weights.key})" if self.weights else ""
        log.info("%s: %d prompts on vLLM%s", desc, len(prompts), model)
        return self.engine.generate(prompts, params, self.adapter_dir, self.show_progress, self.weights)
