"""Throughput benchmark (`make bench-quick`): the project's fast paths against the plain ones,
measured side by side in one process on SmolLM2-135M-Instruct and the same prompts.

- synthesis: ICL sampling with the project's batched generator vs a transformers
  text-generation pipeline called one prompt at a time (the release's approach);
- training: LoRA tokens/s and model FLOPs utilisation against this machine's matmul peak,
  measured here in the same run, fp32 and bf16;
- evaluation: greedy generation, batched vs batch 1;
- peak resident memory of each phase (and peak GPU memory on a GPU).

`--model` takes any model directory; on a machine without SmolLM2's weights, a directory with
its config and tokenizer and random weights times the same shapes (tokens/s do not depend on
the weights' values, only on how many tokens are generated).

- vLLM (where installed): synthesis and greedy evaluation at the sizes real runs use, against
  the hf batched path and the batch-1 baseline, and generation's model FLOPs utilisation.

The last lines are `synthesis_speedup: X`, `train_mfu: F`, `eval_speedup: X`, then with vLLM
`vllm_synthesis_speedup: X`, `vllm_eval_speedup: X`, `generation_mfu: F` (read by scripts).
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import psutil
import torch

from markdown_section import replace_section
from ssr.config import LoraSettings, TrainConfig
from ssr.data.builtin import builtin_task
from ssr.generation import HFGenerator, SamplingParams
from ssr.models import get_template, load_base_model, load_tokenizer
from ssr.models.dtype import cpu_description
from ssr.models.lora import attach_lora
from ssr.synthesis import build_icl_prompts
from ssr.training import tokenize_rows, train_stage

MODEL = "smollm2-135m"
EVAL_TOKENS = 8  # greedy answer length in the evaluation benchmarks (the demo's)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@contextmanager
def peak_rss(store: dict, key: str):
    """Peak resident set size (MiB) of this process while the block runs (sampled every 20 ms),
    and on a GPU the peak of allocated GPU memory (`<key>_gpu`)."""
    proc, done = psutil.Process(), threading.Event()
    peak = [proc.memory_info().rss]
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        store[key] = round(peak[0] / 2**20)
        if DEVICE == "cuda":
            store[f"{key}_gpu"] = round(torch.cuda.max_memory_allocated() / 2**20)


def matmul_peak(dtype: torch.dtype, n: int = 1024, seconds: float = 2.0) -> float:
    """Achieved FLOP/s of a square matmul: this machine's practical peak for `dtype`."""
    n = 8192 if DEVICE == "cuda" else n
    a, b = torch.randn(n, n, dtype=dtype, device=DEVICE), torch.randn(n, n, dtype=dtype, device=DEVICE)
    a @ b
    synchronize()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        synchronize()
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def count_new_tokens(tokenizer, texts: list[str]) -> int:
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def bench_synthesis(model, tokenizer, n_prompts: int, max_new: int, batch_size: int, mem: dict) -> dict:
    from transformers import pipeline

    task = builtin_task("product")
    prompts = build_icl_prompts(task.definition, task.demos, max_prompts=n_prompts, seed=0)
    params = dict(do_sample=True, temperature=0.9, top_p=0.6, repetition_penalty=1.2)
    # the release's way: a text-generation pipeline, one prompt at a time
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    torch.manual_seed(0)
    with peak_rss(mem, "synthesis_pipeline_batch1"):
        start = time.perf_counter()
        outs = [pipe(p.text, max_new_tokens=max_new, return_full_text=False, top_k=0, **params)[0]["generated_text"] for p in prompts]
        base_s = time.perf_counter() - start
    base_tokens = count_new_tokens(tokenizer, outs)
    generator = HFGenerator(model, tokenizer, batch_size=batch_size, show_progress=False)
    ids = [tokenizer(p.text)["input_ids"] for p in prompts]
    torch.manual_seed(0)
    with peak_rss(mem, "synthesis_project"):
        start = time.perf_counter()
        texts = generator.generate(ids, SamplingParams(max_new_tokens=max_new, do_sample=True, temperature=0.9, top_p=0.6, repetition_penalty=1.2))
        ours_s = time.perf_counter() - start
    ours_tokens = count_new_tokens(tokenizer, [t for (t,) in texts])
    base_tps, ours_tps = base_tokens / base_s, ours_tokens / ours_s
    return {"synthesis_pipeline_tokens_per_s": base_tps, "synthesis_project_tokens_per_s": ours_tps,
            "synthesis_speedup": ours_tps / base_tps, "synthesis_prompts": n_prompts}


def bench_eval(model, tokenizer, n: int, max_new: int, batch_size: int, mem: dict) -> dict:
    task = builtin_task("city")
    template = get_template("raw", tokenizer)
    prompts = [template.prompt_ids(i.definition, i.input) for i in task.eval[:n]]
    result = {}
    for name, bs in (("batch1", 1), ("batched", batch_size)):
        gen = HFGenerator(model, tokenizer, batch_size=bs, show_progress=False)
        with peak_rss(mem, f"eval_{name}"):
            start = time.perf_counter()
            outs = gen.generate(prompts, SamplingParams(max_new_tokens=max_new, ignore_eos=True))
            seconds = time.perf_counter() - start
        result[f"eval_{name}_tokens_per_s"] = count_new_tokens(tokenizer, [o for (o,) in outs]) / seconds
    result["eval_speedup"] = result["eval_batched_tokens_per_s"] / result["eval_batch1_tokens_per_s"]
    if DEVICE == "cuda":  # would bf16 weights pay for generation? (the project generates in fp32)
        import copy

        gen = HFGenerator(copy.deepcopy(model).to(torch.bfloat16), tokenizer, batch_size=batch_size, show_progress=False)
        gen.generate(prompts[:2], SamplingParams(max_new_tokens=2))  # warm-up: the first bf16 kernels load lazily
        with peak_rss(mem, "eval_batched_bf16"):
            start = time.perf_counter()
            outs = gen.generate(prompts, SamplingParams(max_new_tokens=max_new, ignore_eos=True))
            seconds = time.perf_counter() - start
        result["eval_batched_bf16_tokens_per_s"] = count_new_tokens(tokenizer, [o for (o,) in outs]) / seconds
    return result


def train_flops_per_token(model, tokens: int, response_tokens: int) -> float:
    """Matmul FLOPs of one LoRA training token: forward 2N + backward (activation grads) 2N over
    the frozen linear layers, the vocabulary projection only where a response token is predicted
    (sparse logits), plus attention scores (ignored: short sequences)."""
    inner = model.get_base_model()
    lm_head = inner.get_output_embeddings().weight.numel()
    linear = sum(m.weight.numel() for n, m in inner.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n)
    linear -= lm_head if inner.get_output_embeddings() in inner.modules() else 0
    return 4 * linear + 6 * lm_head * response_tokens / tokens


def bench_training(model_name: str, tokenizer, rows: list[dict], mem: dict) -> dict:
    template = get_template("raw", tokenizer)
    examples = tokenize_rows(rows, template, 128, 16)
    response = sum(sum(1 for t in labels if t != -100) for _, labels in examples)
    result = {"matmul_peak_fp32_gflops": matmul_peak(torch.float32) / 1e9,
              "matmul_peak_bf16_gflops": matmul_peak(torch.bfloat16, n=256) / 1e9}
    # bf16 pays only where the CPU kernels have it: with this torch build (AVX2 kernels) a bf16
    # matmul is ~100x slower than fp32, so bf16 training is measured only where its peak is higher.
    precisions = ["fp32"] + (["bf16"] if result["matmul_peak_bf16_gflops"] > result["matmul_peak_fp32_gflops"] else [])
    for precision in precisions:
        model = attach_lora(load_base_model(model_name), LoraSettings(), seed=0)
        cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=8, grad_accum=1, max_source_length=128, max_target_length=16,
                          bf16="on" if precision == "bf16" else "off")
        with peak_rss(mem, f"train_{precision}"):
            stats = train_stage(model, template, rows, cfg, seed=0, desc=f"train {precision}")
        flops = train_flops_per_token(model, stats["tokens"], response) * stats["tokens"] / stats["seconds"]
        result[f"train_{precision}_tokens_per_s"] = stats["tokens_per_s"]
        result[f"train_{precision}_mfu"] = flops / (result[f"matmul_peak_{precision}_gflops"] * 1e9)
    best = max(precisions, key=lambda p: result[f"train_{p}_tokens_per_s"])
    result["train_best_precision"] = best
    result["train_mfu"] = result[f"train_{best}_mfu"]
    return result


def bench_vllm(model_name: str, tokenizer, base_model, n_prompts: int, samples: int, max_new: int, eval_new: int,
               mem: dict, batch1: dict) -> dict:
    """vLLM against the hf batched path and the batch-1 baseline, at the sizes real runs use:
    synthesis = `n_prompts` ICL prompts x `samples` samples; evaluation = `n_prompts` greedy.
    Generation MFU = (prompt + generated tokens) x 2 x parameters per second over the matmul
    peak of the engine's dtype, measured in the same run."""
    from ssr.engines import vllm_installed

    if not vllm_installed():
        return {}
    from ssr.engines.vllm import EngineSpec, VLLMGenerator, get_engine
    from ssr.models.dtype import resolve_dtype
    from ssr.models.loading import cache_root, local_model_dir

    dtype = resolve_dtype("auto", cache_root(), engine="vllm")
    started = time.perf_counter()
    engine = get_engine(EngineSpec(local_model_dir(model_name).path, dtype, max_lora_rank=8))
    result = {"vllm_engine_start_s": time.perf_counter() - started, "vllm_dtype": dtype}
    task = builtin_task("product")
    prompts = [tokenizer(p.text)["input_ids"] for p in build_icl_prompts(task.definition, task.demos, max_prompts=n_prompts, seed=0)]
    template = get_template("raw", tokenizer)
    eval_prompts = [template.prompt_ids(i.definition, i.input) for i in builtin_task("city").eval[:n_prompts]]
    sampled = SamplingParams(max_new_tokens=max_new, do_sample=True, temperature=0.9, top_p=0.6, repetition_penalty=1.2,
                             num_samples=samples, seed=0)
    greedy = SamplingParams(max_new_tokens=eval_new, ignore_eos=True)  # as bench_eval's batch-1 baseline
    params_count = sum(p.numel() for p in base_model.parameters())
    hf = HFGenerator(base_model, tokenizer, batch_size=48, show_progress=False)
    vllm = VLLMGenerator(engine, None, show_progress=False)
    vllm.generate(prompts[:2], SamplingParams(max_new_tokens=2))  # warm-up
    for phase, batch, params in (("synthesis", prompts, sampled), ("eval", eval_prompts, greedy)):
        for name, gen in (("vllm", vllm), ("hf", hf)):
            with peak_rss(mem, f"{phase}_{name}"):
                start = time.perf_counter()
                outs = gen.generate(batch, params)
                seconds = time.perf_counter() - start
            new = count_new_tokens(tokenizer, [t for sample in outs for t in sample])
            result[f"{phase}_{name}_tokens_per_s"] = new / seconds
            if name == "vllm":
                processed = new + sum(len(p) for p in batch) * params.num_samples
                peak = matmul_peak(torch.bfloat16 if dtype == "bfloat16" else torch.float32, n=1024)
                result[f"{phase}_vllm_mfu"] = processed * 2 * params_count / seconds / peak
        result[f"vllm_{phase}_speedup"] = result[f"{phase}_vllm_tokens_per_s"] / batch1[phase]
        result[f"vllm_{phase}_vs_hf"] = result[f"{phase}_vllm_tokens_per_s"] / result[f"{phase}_hf_tokens_per_s"]
    result["generation_mfu"] = max(result["synthesis_vllm_mfu"], result["eval_vllm_mfu"])
    result["vllm_prompts"], result["vllm_samples"] = n_prompts, samples
    return result


SECTION = "## Throughput (`make bench-quick`)"


def write_section(path: Path, f: dict) -> None:
    """Replace (or add) the throughput section of BENCHMARKS.md with these figures."""
    mem = f["peak_rss_mib"]
    if "train_bf16_tokens_per_s" in f:
        bf16_row = (f"| LoRA training tokens/s, bf16 autocast | {f['train_bf16_tokens_per_s']:.1f} | | "
                    f"MFU {f['train_bf16_mfu']:.3f} of {f['matmul_peak_bf16_gflops']:.0f} GFLOP/s |")
    else:
        bf16_row = (f"| bf16 | not measured: a bf16 matmul peaks at {f['matmul_peak_bf16_gflops']:.1f} GFLOP/s here "
                    f"against {f['matmul_peak_fp32_gflops']:.0f} for fp32 | | |")
    vllm_rows = ""
    if "vllm_synthesis_speedup" in f:
        vllm_rows = (
            f"\nvLLM backend ({f['vllm_dtype']}, engine start {f['vllm_engine_start_s']:.0f} s), {f['vllm_prompts']} prompts"
            f" (synthesis: × {f['vllm_samples']} samples), against the hf batched path and batch 1 in the same run:\n\n"
            "| what | vLLM tokens/s | hf batched | vs hf | vs batch 1 | generation MFU |\n|---|---:|---:|---:|---:|---:|\n"
            f"| ICL synthesis, sampled | {f['synthesis_vllm_tokens_per_s']:.1f} | {f['synthesis_hf_tokens_per_s']:.1f} | "
            f"{f['vllm_synthesis_vs_hf']:.2f}× | **{f['vllm_synthesis_speedup']:.2f}×** | {f['synthesis_vllm_mfu']:.3f} |\n"
            f"| evaluation, greedy | {f['eval_vllm_tokens_per_s']:.1f} | {f['eval_hf_tokens_per_s']:.1f} | "
            f"{f['vllm_eval_vs_hf']:.2f}× | **{f['vllm_eval_speedup']:.2f}×** | {f['eval_vllm_mfu']:.3f} |\n\n"
            "Generation MFU = (prompt + generated tokens) × 2 × parameters per second over the matmul peak of "
            "the engine's dtype (1024² matmul, same run).\n"
        )
    body = f"""{SECTION}

Measured {f['date']} on {f['machine']}; command: `make bench-quick`
(`python benchmarks/throughput.py --markdown BENCHMARKS.md`). SmolLM2-135M-Instruct, built-in
tasks; every ratio is against a baseline measured in the same run.

| what | project | baseline | ratio |
|---|---:|---:|---:|
| ICL synthesis, tokens/s ({f['synthesis_prompts']} prompts, sampled) | {f['synthesis_project_tokens_per_s']:.1f} (batched) | {f['synthesis_pipeline_tokens_per_s']:.1f} (text-generation pipeline, batch 1) | **{f['synthesis_speedup']:.2f}×** |
| evaluation, greedy tokens/s | {f['eval_batched_tokens_per_s']:.1f} (batched) | {f['eval_batch1_tokens_per_s']:.1f} (batch 1) | **{f['eval_speedup']:.2f}×** |
| LoRA training tokens/s, fp32 | {f['train_fp32_tokens_per_s']:.1f} | | MFU {f['train_fp32_mfu']:.3f} of {f['matmul_peak_fp32_gflops']:.0f} GFLOP/s |
{bf16_row}
{vllm_rows}
MFU = achieved matmul FLOP/s (4 × frozen linear parameters per token, plus the vocabulary
projection only where a response token is predicted) over the peak of a 1024² matmul in the
same precision, measured in the same run. Peak resident memory per phase (MiB):
{', '.join(f'{k} {v}' for k, v in mem.items())}.
"""
    replace_section(path, SECTION, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL, help="model alias or directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--synth-tokens", type=int, default=48)
    parser.add_argument("--eval-examples", type=int, default=32)
    parser.add_argument("--train-examples", type=int, default=64)
    parser.add_argument("--vllm-prompts", type=int, default=96, help="prompts for the vLLM comparison (synthesis: x 3 samples)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--markdown", type=Path, help="update the throughput section of this file (BENCHMARKS.md)")
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    model = load_base_model(args.model)
    mem: dict = {}
    figures: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": f"{platform.machine()} ({cpu_description()}), {psutil.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if DEVICE == "cuda" else "")}
    figures |= bench_synthesis(model, tokenizer, args.prompts, args.synth_tokens, batch_size=args.prompts, mem=mem)
    figures |= bench_eval(model, tokenizer, args.eval_examples, EVAL_TOKENS, batch_size=args.eval_examples, mem=mem)
    rows = [{"definition": i.definition, "input": i.input, "output": i.output} for i in builtin_task("product").train[: args.train_examples]]
    figures |= bench_training(args.model, tokenizer, rows, mem)
    batch1 = {"synthesis": figures["synthesis_pipeline_tokens_per_s"], "eval": figures["eval_batch1_tokens_per_s"]}
    figures |= bench_vllm(args.model, tokenizer, model, args.vllm_prompts, 3, args.synth_tokens, EVAL_TOKENS, mem, batch1)
    figures["peak_rss_mib"] = mem
    for key, value in figures.items():
        if key not in ("synthesis_speedup", "train_mfu", "eval_speedup", "vllm_synthesis_speedup", "vllm_eval_speedup", "generation_mfu"):
            print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    if args.markdown:
        write_section(args.markdown, figures)
    print(f"synthesis_speedup: {figures['synthesis_speedup']:.2f}")
    print(f"train_mfu: {figures['train_mfu']:.3f}")
    print(f"eval_speedup: {figures['eval_speedup']:.2f}")
    if "vllm_synthesis_speedup" in figures:
        print(f"vllm_synthesis_speedup: {figures['vllm_synthesis_speedup']:.2f}")
        print(f"vllm_eval_speedup: {figures['vllm_eval_speedup']:.2f}")
        print(f"generation_mfu: {figures['generation_mfu']:.3f}")


if __name__ == "__main__":
    main()
