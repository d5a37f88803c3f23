"""How vLLM serves a fine-tuned stage on this machine: its LoRA adapter per request, or its merged weights.

For stages of a finished run (their saved adapters), the same evaluation prompts (the stage's own
task, as the run evaluated it) are answered greedily three ways on the run's dtype:
- the base model θ(0) (the speed an adapter cannot beat);
- `generation.vllm_adapters: lora`: the base weights plus the stage's adapter per request;
- `generation.vllm_adapters: merged`: the stage's weights merged by PEFT and reloaded in place
  (the time includes the merge and the reload).
It reports seconds per mode, each mode's ratio to lora, the share of outputs identical between
the two, and the ROUGE-L of each against the references. Engine start-up is timed apart.

    python benchmarks/vllm_adapters.py runs/bench/order-3/seed-42/sequential [--stages 1,3,5] [--json F]

Prints a Markdown section; run it on a quiet machine (it is a timing).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path


def main() -> None:
    from ssr.config import load_config
    from ssr.engines import vllm as engines
    from ssr.evaluation import greedy_outputs, score_predictions, score_rows
    from ssr.models.dtype import cpu_description
    from ssr.runner import BASE_STAGE, ModelState, prepare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a finished run (vLLM-served LoRA adapters in stages/*/adapter)")
    ap.add_argument("--stages", default=None, help="comma-separated stage numbers (default: every trained stage)")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    args = ap.parse_args()

    cfg = load_config(str(args.run_dir / "config.yaml"))
    tasks, method = prepare(cfg)
    plan = method.plan()
    chosen = [int(s) for s in args.stages.split(",")] if args.stages else [s.index for s in plan]
    stages = [(k, s) for k, s in enumerate(plan) if s.index in chosen]
    by_name = {t.name: t for t in tasks}

    def answer(models: ModelState, stage, before, base: bool = False) -> tuple[list[str], float, float]:
        """(answers, seconds, ROUGE-L) of the stage's model (`base`: θ(0)'s) on the stage's task's eval rows."""
        task = by_name[stage.tasks[-1]]
        started = time.perf_counter()
        gen = models.stage_generator(BASE_STAGE, []) if base else models.stage_generator(stage, before)
        answers = greedy_outputs(gen, models.template, [(i.definition, i.input) for i in task.eval],
                                 cfg.train.max_source_length, task.max_new_tokens, desc=f"{stage.name}")
        seconds = time.perf_counter() - started
        rouge = score_predictions(score_rows(task.eval, answers, cfg.eval.scorer, task.language))["rougeL"]
        return answers, seconds, rouge

    rows: dict[str, dict] = {s.name: {"task": s.tasks[-1], "rows": len(by_name[s.tasks[-1]].eval)} for _, s in stages}
    startup = {}
    for mode in ("lora", "merged"):
        mode_cfg = cfg.model_copy(deep=True)
        mode_cfg.generation.vllm_adapters = mode
        models = ModelState(mode_cfg, args.run_dir)
        dtype = models.vllm_dtype_name
        started = time.perf_counter()
        models.engine()
        startup[mode] = time.perf_counter() - started
        for k, stage in stages:
            if mode == "lora":  # θ(0) on the same prompts, on this engine
                _, rows[stage.name]["base_s"], rows[stage.name]["base_rouge"] = answer(models, stage, plan[:k], base=True)
            out, rows[stage.name][f"{mode}_s"], rows[stage.name][f"{mode}_rouge"] = answer(models, stage, plan[:k])
            rows[stage.name][f"{mode}_answers"] = out
        engines.shutdown_engine()

    for r in rows.values():
        pairs = list(zip(r.pop("lora_answers"), r.pop("merged_answers")))
        r["identical"] = sum(a == b for a, b in pairs) / len(pairs)
    totals = {m: sum(r[f"{m}_s"] for r in rows.values()) for m in ("base", "lora", "merged")}
    record = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_description(),
              "run": str(args.run_dir), "dtype": dtype,
              "startup_s": startup, "stages": rows, "totals_s": totals}
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    print(markdown(record))


def markdown(record: dict) -> str:
    """The measurements as a Markdown table (seconds, ratio to lora, agreement, ROUGE-L)."""
    lines = [f"Measured {record['date']} on {record['cpu']}; run `{record['run']}`, vLLM dtype {record['dtype']}. "
             f"Engine start: lora {record['startup_s']['lora']:.0f} s, merged {record['startup_s']['merged']:.0f} s.", "",
             "| stage | task | rows | θ(0) s | lora s | merged s (incl. merge + reload) | merged / lora | identical outputs | ROUGE-L lora | ROUGE-L merged |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in record["stages"].items():
        lines.append(f"| {name} | {r['task']} | {r['rows']} | {r['base_s']:.1f} | {r['lora_s']:.1f} | {r['merged_s']:.1f} | "
                     f"{r['merged_s'] / r['lora_s']:.2f} | {r['identical']:.0%} | {r['lora_rouge']:.2f} | {r['merged_rouge']:.2f} |")
    t = record["totals_s"]
    lines.append(f"| all | | | {t['base']:.1f} | {t['lora']:.1f} | {t['merged']:.1f} | {t['merged'] / t['lora']:.2f} | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
