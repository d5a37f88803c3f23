"""Correctness of the vLLM backend against the hf backend on SmolLM2-135M and real SuperNI prompts.

- greedy parity: the same prompts (20 per shared task, a seeded sample of each eval split,
  through the project's template), the same dtype, the same token budget: the share of
  outputs that are identical, and for the others the first token where they part;
- sampling: ICL synthesis of one task on both backends from the same prompts and settings,
  the distribution of candidate verdicts (parse rate, input-only rate) side by side.

    python benchmarks/vllm_parity.py --data ../shared/data/superni [--dtype float32] [--json out.json]

Prints a Markdown summary; the last lines are `greedy_parity: F` and `sampling_kept_rate: hf=F vllm=F`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path


def _prompts(data: Path, template, per_task: int, seed: int) -> list[tuple[str, list[int], int]]:
    """(task, prompt ids, answer budget) for `per_task` random eval rows of each task."""
    budgets = {"qa": 24, "qg": 24, "sa": 4, "sum": 48, "trans": 64}
    out = []
    for task, budget in budgets.items():
        rows = [json.loads(line) for line in (data / f"{task}.eval.jsonl").read_text().splitlines() if line.strip()]
        for row in random.Random(seed).sample(rows, per_task):
            definition = row["full_prompt"].split("\n\n")[0].strip()
            out.append((task, template.prompt_ids(definition, row["input"], 512), budget))
    return out


def main() -> None:
    from ssr.config import MethodConfig
    from ssr.data.loaders import load_instances
    from ssr.data.task import Task
    from ssr.engines.vllm import EngineSpec, VLLMGenerator, get_engine
    from ssr.generation import HFGenerator, SamplingParams
    from ssr.models import get_template, load_base_model, load_tokenizer
    from ssr.models.loading import local_model_dir
    from ssr.models.dtype import DTYPES
    from ssr.synthesis.pipeline import filter_candidates, generate_candidates

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/superni")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--per-task", type=int, default=20)
    ap.add_argument("--synth-task", default="qa")
    ap.add_argument("--synth-prompts", type=int, default=40)
    ap.add_argument("--json")
    args = ap.parse_args()
    data = Path(args.data)

    tok = load_tokenizer("smollm2-135m")
    template = get_template("auto", tok)
    items = _prompts(data, template, args.per_task, seed=0)
    hf = HFGenerator(load_base_model("smollm2-135m", dtype=DTYPES[args.dtype]), tok, batch_size=25, show_progress=False)
    started = time.perf_counter()
    engine = get_engine(EngineSpec(local_model_dir("smollm2-135m").path, args.dtype, max_lora_rank=8))
    engine_start = time.perf_counter() - started
    vllm = VLLMGenerator(engine, None, show_progress=False)

    same, parted, timings = 0, [], {}
    by_task: Counter = Counter()
    for budget in sorted({b for _, _, b in items}):
        group = [(t, p) for t, p, b in items if b == budget]
        prompts = [p for _, p in group]
        params = SamplingParams(max_new_tokens=budget)
        t0 = time.perf_counter()
        a = hf.generate(prompts, params)
        timings["hf_greedy_s"] = timings.get("hf_greedy_s", 0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        b = vllm.generate(prompts, params)
        timings["vllm_greedy_s"] = timings.get("vllm_greedy_s", 0) + time.perf_counter() - t0
        print(f"budget {budget}: {len(prompts)} prompts, hf {timings['hf_greedy_s']:.0f} s, vllm {timings['vllm_greedy_s']:.0f} s (cumulative)",
              flush=True)
        for (task, _), (x,), (y,) in zip(group, a, b):
            if x == y:
                same += 1
                by_task[task] += 1
            else:
                ta, tb = tok(x, add_special_tokens=False)["input_ids"], tok(y, add_special_tokens=False)["input_ids"]
                first = next((k for k, (u, v) in enumerate(zip(ta, tb)) if u != v), min(len(ta), len(tb)))
                parted.append({"task": task, "first_differing_token": first, "hf": x[:80], "vllm": y[:80]})
    parity = same / len(items)

    # Sampling: one task's ICL synthesis on both backends, same prompts and settings.
    demos = load_instances(data / f"{args.synth_task}.train.smp001.jsonl")
    task = Task(args.synth_task, demos[0].definition, demos, [], demos)
    cfg = MethodConfig(name="ssr", max_prompts=args.synth_prompts, samples_per_prompt=3, synth_max_new_tokens=160)
    sampling = {}
    for name, gen in (("hf", HFGenerator(hf.model, tok, batch_size=48, show_progress=False)), ("vllm", vllm)):
        t0 = time.perf_counter()
        candidates, stats, _ = generate_candidates(task, demos, gen, tok, 8192, cfg, seed=1)
        filter_candidates(candidates, task, demos, tok, cfg)
        verdicts = Counter(c["verdict"] for c in candidates)
        parsed = [c for c in candidates if c["input"] is not None]
        sampling[name] = {
            "generations": stats["generations"],
            "seconds": round(time.perf_counter() - t0, 1),
            "ended_by_length": stats.get("generations_ended_by_length", 0),
            "parsed_rate": round(len(parsed) / stats["generations"], 3),
            "input_only_rate": round(sum(1 for c in parsed if not c["base_output"]) / max(len(parsed), 1), 3),
            "kept_rate": round(verdicts["kept"] / stats["generations"], 3),
            "verdicts": dict(verdicts),
        }
        print(f"sampling on {name}: {sampling[name]}", flush=True)

    report = {"dtype": args.dtype, "prompts": len(items), "identical": same, "greedy_parity": round(parity, 3),
              "identical_by_task": dict(by_task), "differing": parted, "engine_start_s": round(engine_start, 1),
              **{k: round(v, 1) for k, v in timings.items()}, "sampling": sampling}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"| dtype | prompts | identical greedy outputs | engine start |\n|---|---:|---:|---:|\n"
          f"| {args.dtype} | {len(items)} | {same} ({100 * parity:.0f} %) | {engine_start:.0f} s |")
    for p in parted:
        print(f"- {p['task']}: parts at token {p['first_differing_token']}: hf {p['hf']!r} / vllm {p['vllm']!r}")
    print("\n| backend | generations | parsed | input-only of parsed | kept | ended by length | seconds |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, s in sampling.items():
        print(f"| {name} | {s['generations']} | {s['parsed_rate']:.2f} | {s['input_only_rate']:.2f} | {s['kept_rate']:.2f} | "
              f"{s['ended_by_length']} | {s['seconds']} |")
    print(f"greedy_parity: {parity:.3f}")
    print(f"sampling_kept_rate: hf={sampling['hf']['kept_rate']:.3f} vllm={sampling['vllm']['kept_rate']:.3f}")


if __name__ == "__main__":  # vLLM starts its engine in a spawned process
    main()
