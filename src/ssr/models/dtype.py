"""Which floating-point type the weights use: decided once per machine, by measurement on CPUs.

CPUs of one kind differ: one here ran bf16 matmuls ~2.5x faster than fp32 (AVX-512 BF16),
another at 1 % of fp32. So `model.dtype: auto` never assumes: on a CPU it times a matmul of
a transformer-layer shape in both types (a fraction of a second), caches the verdict under
the cache directory keyed by CPU model and torch version, and logs it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BF16_MIN_SPEEDUP = 1.3
"""bf16 is chosen on a CPU only when its matmul measured at least this much faster than fp32."""


def _cpu_name() -> str:
    """The CPU's model name and feature flags (machines with one model name may differ in flags)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [next((ln for ln in lines if ln.startswith(key)), "") for key in ("model name", "flags")]
        if any(wanted):
            return " | ".join(wanted)
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_description() -> str:
    """The CPU's model name and whether it has bf16 instructions, for benchmark records."""
    name, _, flags = _cpu_name().partition(" | ")
    model = name.split(":", 1)[-1].strip() or platform.machine()
    bf16 = "yes" if any(f in flags.split() for f in ("avx512_bf16", "amx_bf16")) else "no"
    return f"{model}, bf16 {bf16}"


@functools.cache
def machine_description() -> str:
    """What a wall time was measured on: the CPU (model, bf16 instructions), its cores, and the
    GPU where one is visible. Machines of one kind differ several-fold in speed, so every timing
    names its machine and wall times are compared only between runs on the same one."""
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_description()}, {os.cpu_count()} cores{gpu}"


def matmul_gflops(dtype: torch.dtype, m: int = 512, k: int = 576, n: int = 1536, seconds: float = 0.15) -> float:
    """Measured GFLOP/s of an (m x k) @ (k x n) matmul in `dtype` on the CPU (best of a short run)."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # warm-up: first calls pick kernels
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * m * k * n / (time.perf_counter() - started) / 1e9)
    return best


_MEASURED: dict[str, tuple[float, float]] = {}
"""This process's measurements by CPU key: one process decides once, even without a cache dir
(a second measurement on a busy machine could decide otherwise mid-run)."""


def cpu_bf16_speedup(cache_dir: Path | None = None) -> float:
    """bf16 / fp32 matmul throughput on this CPU, measured once and cached per CPU and torch."""
    key = hashlib.sha1(f"{_cpu_name()}|{torch.__version__}|{torch.get_num_threads()}".encode()).hexdigest()[:12]
    path = (cache_dir / f"cpu-bf16-{key}.json") if cache_dir else None
    if path is not None and path.exists():
        try:
            return float(json.loads(path.read_text())["bf16_speedup"])
        except (ValueError, KeyError, OSError):
            pass  # a damaged cache file is measured again
    if key not in _MEASURED:
        _MEASURED[key] = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    fp32, bf16 = _MEASURED[key]
    speedup = bf16 / fp32
    log.info("CPU matmul: fp32 %.1f GFLOP/s, bf16 %.1f GFLOP/s (bf16 %.2fx)", fp32, bf16, speedup)
    if path is not None:
        from ssr.io import write_json

        write_json(path, {"cpu": _cpu_name().split(" | ")[0], "torch": torch.__version__, "fp32_gflops": round(fp32, 1),
                          "bf16_gflops": round(bf16, 1), "bf16_speedup": round(speedup, 3)})
    return speedup


def resolve_dtype(setting: str, cache_dir: Path | None = None, engine: str = "vllm") -> str:
    """`model.dtype` as a concrete name for the weights of one engine (`vllm` generation, or the
    `hf` model that trains and, with the hf backend, generates).

    `auto`: bf16 on a bf16-capable GPU (fp16 on an older one). On a CPU: for the vLLM engine,
    bf16 only where its matmul measured >= BF16_MIN_SPEEDUP x faster than fp32 here; for the hf
    model, fp32 (a LoRA step of SmolLM2-135M, 8 x 128 tokens, took 52 s with bf16 weights against
    24 s in fp32 on the development machine, although its bf16 matmul alone ran ~2x faster;
    bf16 *autocast* over fp32 weights is `train.bf16`). An explicit setting applies to both.
    """
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        choice = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        log.info("model.dtype auto: %s on %s", choice, torch.cuda.get_device_name())
        return choice
    if engine != "vllm":
        return "float32"
    speedup = cpu_bf16_speedup(cache_dir)
    choice = "bfloat16" if speedup >= BF16_MIN_SPEEDUP else "float32"
    log.info("model.dtype auto: %s for vLLM on this CPU (bf16 matmul measured %.2fx fp32)", choice, speedup)
    return choice


def resolve_autocast(setting: str, cache_dir: Path | None = None) -> bool:
    """`train.bf16` as a decision: bf16 autocast (over fp32 master weights) on or off.

    `auto`: on where a GPU supports bf16; on a CPU, on only where its bf16 matmul measured
    >= BF16_MIN_SPEEDUP x faster than fp32 (the same cached measurement as `model.dtype`). On the
    development machine (AMD EPYC with AVX-512 BF16) a SmolLM2-135M LoRA step ran 1.37x faster
    with autocast than in fp32; on a CPU without fast bf16 it would run many times slower.
    """
    if setting in ("on", "off"):
        return setting == "on"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    speedup = cpu_bf16_speedup(cache_dir)
    choice = speedup >= BF16_MIN_SPEEDUP
    log.info("train.bf16 auto: %s on this CPU (bf16 matmul measured %.2fx fp32)", "on" if choice else "off", speedup)
    return choice
