"""Self-Synthesized Rehearsal: after each task, the base model writes new instances of it by
in-context learning, the latest model rewrites their outputs, and a diverse subset is replayed
in every later stage. No real training data of earlier tasks is kept beyond the demonstrations.

Files per finished task (all resumable steps of the run):
    synthetic/<task>.prompts.jsonl      every ICL prompt (id, demonstration ids, text)
    synthetic/<task>.candidates.jsonl   every parsed candidate: prompt, demos, continuation,
                                        input, base output, verdict, cluster, selected
    synthetic/<task>.stats.json         counts of prompts, generations and filter verdicts
    synthetic/<task>.jsonl              what is rehearsed (input, refined output, provenance)
"""

from __future__ import annotations

from ssr.data import load_instances
from ssr.data.task import Task
from ssr.io import read_jsonl, write_json, write_jsonl
from ssr.methods.base import RehearsalMethod, Stage
from ssr.models.loading import context_length
from ssr.synthesis.pipeline import refine, rehearsal_rows, synthesize


class SelfSynthesizedRehearsal(RehearsalMethod):
    name = "ssr"
    source = "synthetic"
    folder = "synthetic"
    uses_model = True

    def demos_for(self, task: Task):
        override = (self.cfg.method.demos_override or {}).get(task.name)
        return load_instances(override, definition=task.definition) if override else task.demos

    def build_rehearsal(self, task: Task, stage: Stage, ctx) -> list[dict]:
        cfg, m = self.cfg, self.cfg.method
        folder = ctx.run_dir / self.folder
        cand_path = folder / f"{task.name}.candidates.jsonl"
        if cand_path.exists():
            candidates = read_jsonl(cand_path)
        else:
            demos = self.demos_for(task)
            with ctx.models.icl_model() as (model, tokenizer):
                generator = ctx.models.generator(model, m.batch_size, tokenizer)
                candidates, stats, prompts = synthesize(task, demos, generator, tokenizer, context_length(model), m, cfg.seed + stage.index)
            write_jsonl(folder / f"{task.name}.prompts.jsonl", [{"id": p.id, "demo_ids": list(p.demo_ids), "text": p.text} for p in prompts])
            write_json(folder / f"{task.name}.stats.json", stats)
            write_jsonl(cand_path, candidates)
        selected = sorted((c for c in candidates if c["selected"]), key=lambda c: c["selection_rank"])
        if m.refine:
            latest = ctx.models.model  # the runner loaded the model right after this task's stage
            outputs = refine(selected, task.definition, ctx.models.generator(latest, m.batch_size),
                             ctx.models.template, cfg.train.max_source_length, task.max_new_tokens,
                             desc=f"refine {task.name}")
        else:
            outputs = [c["base_output"] for c in selected]
        rows = rehearsal_rows(task, selected, outputs, refined=m.refine)
        return [r for r in rows if r["output"]]  # an empty refined output teaches nothing
