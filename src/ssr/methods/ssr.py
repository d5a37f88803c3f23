"""Self-Synthesized Rehearsal: after each task, the base model writes new instances of it by
in-context learning, the latest model rewrites their outputs, and a diverse subset is replayed
in every later stage. No real training data of earlier tasks is kept beyond the demonstrations.

Files per finished task (all resumable steps of the run):
    synthetic/<task>.prompts.jsonl      every ICL prompt (id, demonstration ids, text)
    synthetic/generations/<task>.jsonl  the base model's sampled continuations, under a key that
                                        lets a sibling run with the same one reuse them (synthesis.reuse)
    synthetic/<task>.candidates.jsonl   every parsed candidate: prompt, demos, continuation,
                                        input, base output, verdict, cluster, selected
    synthetic/<task>.stats.json         counts of prompts, generations and filter verdicts
    synthetic/<task>.jsonl              what is rehearsed (input, refined output, provenance)
    synthetic/<task>.quality.json       what the synthetic data is like (ssr.synthesis.quality)
"""

from __future__ import annotations

import logging
import math

from pathlib import Path

from ssr.data import load_instances
from ssr.data.task import Task
from ssr.errors import DataError
from ssr.io import read_jsonl, write_json, write_jsonl
from ssr.methods.base import RehearsalMethod, Stage
from ssr.synthesis.pipeline import refine, rehearsal_rows, synthesize
from ssr.synthesis.quality import ensure_quality, quality_path
from ssr.synthesis.reuse import ReusedGenerations
from ssr.synthesis.screen import load_callable


log = logging.getLogger(__name__)

MAX_ICL_TUPLES = 1_000_000
"""Every ordered n-tuple of demonstrations is listed before `max_prompts` samples from them."""


class SelfSynthesizedRehearsal(RehearsalMethod):
    name = "ssr"
    source = "synthetic"
    folder = "synthetic"
    collective = True  # refinement is greedy generation, shared by the processes of a launch

    def demos_for(self, task: Task):
        override = (self.cfg.method.demos_override or {}).get(task.name)
        return load_instances(override, definition=task.definition) if override else task.demos

    def check(self) -> list[str]:
        """Also: every task that gets a synthetic set (all but the last) has a usable
        demonstration pool, and the screen's rules can run."""
        problems = super().check() + self.check_screen()
        for task in self.rehearsed_tasks():
            problems += self.check_demos(task)
        return problems

    def check_demos(self, task: Task) -> list[str]:
        """The task's demonstration pool (its `demos` file, `method.demos_override`, or the last
        `method.n_demos` train rows) holds at least `method.n_shots`, and not so many ordered
        n-tuples that listing the ICL prompts would not finish."""
        m = self.cfg.method
        i = self.task_index(task.name)
        if task.name in (m.demos_override or {}):
            loc = ("method", "demos_override", task.name)
        elif self.cfg.tasks[i].demos:
            loc = ("tasks", i, "demos")
        else:
            loc = ("method", "n_demos")
        try:
            demos = self.demos_for(task)
        except DataError as err:
            return [f"{err} (method.demos_override of task {task.name!r})"]
        if len(demos) < m.n_shots:
            return [self.cfg.problem(loc, f"task {task.name!r} has {len(demos)} demonstrations for SSR synthesis; "
                                          f"method.n_shots = {m.n_shots} needs at least that many")]
        if math.perm(len(demos), m.n_shots) > MAX_ICL_TUPLES:
            return [self.cfg.problem(("method", "n_shots"), f"{len(demos)} demonstrations of task {task.name!r} give "
                                     f"{math.perm(len(demos), m.n_shots)} ordered {m.n_shots}-tuples to draw prompts from "
                                     f"(at most {MAX_ICL_TUPLES}); use fewer demonstrations or a smaller n_shots")]
        return []

    def check_screen(self) -> list[str]:
        """The screen's callable imports and its classifier is a model directory."""
        screen = self.cfg.method.screen
        problems = []
        if screen is not None and screen.callable:
            try:
                load_callable(screen.callable)
            except ValueError as err:
                problems.append(self.cfg.problem(("method", "screen", "callable"), str(err)))
        if screen is not None and screen.classifier and not (Path(screen.classifier).expanduser() / "config.json").is_file():
            problems.append(self.cfg.problem(("method", "screen", "classifier"),
                                             f"{screen.classifier} is not a model directory (no config.json)"))
        return problems

    def pending_after(self, stage: Stage, ctx) -> bool:
        """Also pending: the quality report of a synthetic set (e.g. a run from before it existed)."""
        return super().pending_after(stage, ctx) or any(
            (ctx.run_dir / self.folder / f"{t}.candidates.jsonl").exists() and not quality_path(ctx.run_dir / self.folder, t).exists()
            for t in stage.tasks)

    def after_stage(self, stage: Stage, ctx) -> None:
        """The rehearsal set, then its quality report: with the encoder K-means loaded, over the
        real data already in memory. A failure is logged, not raised: the report is a diagnostic
        (`ssr quality` computes it later) and must not stop a run."""
        super().after_stage(stage, ctx)
        if not ctx.is_main:  # the main process writes every file of a launch
            return
        folder = ctx.run_dir / self.folder
        for name in stage.tasks:
            if not (folder / f"{name}.candidates.jsonl").exists():
                continue
            try:
                ensure_quality(self.by_name[name], self.tasks, folder, self.cfg.method, seed=self.cfg.seed,
                               stage_seed=self.cfg.seed + stage.index)
            except Exception as err:  # noqa: BLE001 - any failure of a diagnostic
                log.warning("task %s: synthetic-data quality not computed (%s: %s); `ssr quality %s` retries",
                            name, type(err).__name__, err, ctx.run_dir)

    def build_rehearsal(self, task: Task, stage: Stage, ctx) -> list[dict]:
        """Synthesis, filtering and selection (the main process; one sampled stream, as on one
        process), then refinement of the selected inputs (every process, each a share)."""
        cfg, m = self.cfg, self.cfg.method
        folder = ctx.run_dir / self.folder
        cand_path = folder / f"{task.name}.candidates.jsonl"
        if not cand_path.exists():
            ctx.write(self._synthesize, task, stage, ctx, folder)
        candidates = read_jsonl(cand_path)
        selected = sorted((c for c in candidates if c["selected"]), key=lambda c: c["selection_rank"])
        if m.refine:
            if ctx.is_main:
                log.info("task %s: refining %d selected inputs", task.name, len(selected))
            latest = ctx.generator_after(stage, m.batch_size)  # θ(i): the model right after this task's stage
            outputs = refine(selected, task.definition, latest,
                             ctx.models.template, cfg.train.max_source_length, task.max_new_tokens,
                             desc=f"refine {task.name}")
        else:
            outputs = [c["base_output"] for c in selected]
        rows = rehearsal_rows(task, selected, outputs, refined=m.refine)
        return [r for r in rows if r["output"]]  # an empty refined output teaches nothing

    def generation_identity(self, ctx) -> dict:
        """What the base model's samples depend on besides the prompts and sampling parameters:
        the model settings, the generation settings and engines as resolved here, the batch size."""
        cfg, models = self.cfg, ctx.models
        vllm = cfg.generation.backend == "vllm" and cfg.method.icl_model is None  # another ICL model runs on hf
        return {"model": cfg.model.model_dump(mode="json"), "icl_model": cfg.method.icl_model,
                "generation": cfg.generation.model_dump(mode="json"), "batch_size": cfg.method.batch_size,
                "engine": "vllm" if vllm else "hf", "dtype": models.vllm_dtype_name if vllm else models.hf_dtype_name}

    def _synthesize(self, task: Task, stage: Stage, ctx, folder: Path) -> None:
        """Steps 1-3 (SSR spec): the base model's ICL continuations, parsed, filtered and selected; three files."""
        m = self.cfg.method
        log.info("task %s: synthesizing", task.name)
        with ctx.models.icl_generator(m.batch_size) as (generator, tokenizer, context_length):
            # the samples of a sibling run with the same key (e.g. an ablation of this run) are reused
            generator = ReusedGenerations(
                generator, folder / "generations" / f"{task.name}.jsonl", self.generation_identity(ctx),
                sorted(ctx.run_dir.parent.glob(f"*/{self.folder}/generations/{task.name}.jsonl")))
            candidates, stats, prompts = synthesize(task, self.demos_for(task), generator, tokenizer, context_length, m,
                                                    self.cfg.seed + stage.index)
        if generator.reused_from is not None:
            stats["generations_reused_from"] = str(generator.reused_from.parent.parent.parent)
        write_jsonl(folder / f"{task.name}.prompts.jsonl", [{"id": p.id, "demo_ids": list(p.demo_ids), "text": p.text} for p in prompts])
        write_json(folder / f"{task.name}.stats.json", stats)
        write_jsonl(folder / f"{task.name}.candidates.jsonl", candidates)
