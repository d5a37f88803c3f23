"""The SSR pipeline for one finished task (SSR spec, steps 1-4).

1. synthesise: the base model continues ICL prompts (sampled, several times each), each
   sample up to `method.synth_max_length` tokens of prompt + continuation (the release's 2048),
   capped by the context window and optionally by `method.synth_max_new_tokens`;
2. parse and filter: every continuation becomes candidates, each with a verdict;
3. select: K-means (or random) over the kept candidates' inputs;
4. refine: the latest model rewrites the selected inputs' outputs, greedily, through the
   training template (the base model's output is kept for provenance only).

Steps 1-3 produce the candidates file; step 4 the rehearsal file. Both are plain JSONL.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from functools import partial

from ssr.config import MethodConfig
from ssr.data.task import Instance, Task, training_row
from ssr.evaluation import greedy_outputs
from ssr.generation import Generator, SamplingParams
from ssr.models.templates import PromptTemplate, query_text
from ssr.selection import select, target_size
from ssr.synthesis.parser import ParsedInstance, parse_continuation, parse_open_domain
from ssr.synthesis.prompts import IclPrompt, build_icl_prompts
from ssr.synthesis.screen import Screener, build_screener

log = logging.getLogger(__name__)

KEPT = "kept"
SCREENED = "screened"


def generate_candidates(
    task: Task, demos: list[Instance], generator: Generator, tokenizer, context_length: int, cfg: MethodConfig, seed: int
) -> tuple[list[dict], Counter, list[IclPrompt]]:
    """Step 1 and parsing: one candidate row per parsed chunk, and one per empty or duplicate generation.

    Length rule: prompt + continuation <= min(`synth_max_length`, context window), and at most
    `synth_max_new_tokens` new tokens when that is set. A prompt with no room left is skipped.
    The last chunk of a continuation that ended by length (not EOS) gets the verdict `truncated`.
    """
    prompts = build_icl_prompts(task.definition, demos, cfg.n_shots, cfg.max_prompts, cfg.demo_outputs, seed,
                                open_domain=task.open_domain)
    parse = continuation_parser(task, cfg)
    stats: Counter = Counter(prompts=len(prompts))
    max_total = min(cfg.synth_max_length, context_length)
    encoded, usable = [], []
    for p in prompts:
        ids = tokenizer(p.text, add_special_tokens=True)["input_ids"]
        if len(ids) >= max_total:
            stats["prompts_skipped_too_long"] += 1
            continue
        encoded.append(ids)
        usable.append(p)
    params = SamplingParams(
        max_new_tokens=cfg.synth_max_new_tokens or max_total, max_total_tokens=max_total, do_sample=True,
        temperature=cfg.temperature, top_p=cfg.top_p, repetition_penalty=cfg.repetition_penalty,
        num_samples=cfg.samples_per_prompt, ignore_eos=cfg.ignore_eos, seed=seed,
    )
    continuations = generator.generate(encoded, params, desc=f"synthesize {task.name}")
    candidates: list[dict] = []
    seen: set[str] = set()
    for prompt, samples in zip(usable, continuations):
        for sample, text in enumerate(samples):
            stats["generations"] += 1
            cut = text.cut  # ended by length, not EOS: the last chunk was cut
            stats["generations_ended_by_length"] += cut
            base = {"prompt_id": prompt.id, "demo_ids": list(prompt.demo_ids), "sample": sample, "continuation": str(text),
                    "finish_reason": "length" if cut else "stop"}
            if text in seen:
                candidates.append({**base, "input": None, "base_output": None, "verdict": "duplicate_continuation"})
                continue
            seen.add(text)
            parsed = parse(text, complete=not cut)
            if not parsed:
                candidates.append({**base, "input": None, "base_output": None, "verdict": "no_instance"})
            for item in parsed:  # a parser verdict (truncated, multiple_outputs, malformed) is final
                extra = {"instruction": item.instruction} if task.open_domain else {}
                candidates.append({**base, **extra, "input": item.input, "base_output": item.output, "verdict": item.verdict})
    for i, c in enumerate(candidates):
        c["candidate_id"] = i
    return candidates, stats, prompts


def continuation_parser(task: Task, cfg: MethodConfig) -> Callable[..., list[ParsedInstance]]:
    """How the base model's continuations of `task`'s ICL prompts are parsed (`parser(text,
    complete=...)`): open-domain ones into instructions with their inputs and outputs, where an
    instruction written alone is a candidate only if refinement will answer it."""
    if task.open_domain:
        return partial(parse_open_domain, instruction_only=keeps_outputless(cfg))
    return parse_continuation


def keeps_outputless(cfg: MethodConfig) -> bool:
    """Whether candidates without an output are kept: their output is written by refinement."""
    return cfg.refine and cfg.keep_input_only


def filter_candidates(candidates: list[dict], task: Task, demos: list[Instance], tokenizer, cfg: MethodConfig,
                      screener: Screener | None = None) -> None:
    """Step 2: give every parsed candidate a verdict (`kept` or why it was dropped); a
    candidate that passes every other filter but a `screener` rule is `screened` (`screen_rule`).

    Open-domain candidates are keyed by (instruction, input), the instruction standing in for
    the definition in the length rule; their input may be empty (`<noinput>`)."""
    demo_inputs = {_key(task, d.definition, d.input.strip()) for d in demos}
    def_len = len(tokenizer(task.definition, add_special_tokens=False)["input_ids"])
    input_only_ok = keeps_outputless(cfg)
    kept_inputs: set = set()
    for c in candidates:
        if c["verdict"] is not None:
            continue
        x, y = c["input"], c["base_output"]
        n_in = len(tokenizer(x, add_special_tokens=False)["input_ids"])
        if task.open_domain:
            def_len = len(tokenizer(c["instruction"], add_special_tokens=False)["input_ids"])
        key = _key(task, c.get("instruction"), x)
        if task.open_domain and not c["instruction"]:
            verdict = "empty_instruction"
        elif not x and not task.open_domain:
            verdict = "empty_input"
        elif not y and not input_only_ok:
            verdict = "no_output"
        elif n_in > cfg.max_input_tokens:
            verdict = "input_too_long"
        elif def_len + n_in > cfg.max_definition_input_tokens:
            verdict = "definition_input_too_long"
        elif y and len(tokenizer(y, add_special_tokens=False)["input_ids"]) > cfg.max_output_tokens:
            verdict = "output_too_long"
        elif key in demo_inputs:
            verdict = "copies_demo"
        elif key in kept_inputs:
            verdict = "duplicate"
        elif screener is not None and (rule := screener(x, y)):
            verdict, c["screen_rule"] = SCREENED, rule
        else:
            verdict = KEPT
            kept_inputs.add(key)
        c["verdict"] = verdict


def _key(task: Task, instruction: str | None, input_: str):
    """What makes two instances the same: the input, or (instruction, input) when open-domain."""
    return (instruction, input_) if task.open_domain else input_


def selection_text(c: dict) -> str:
    """What selection embeds: the input, or the query (instruction + input) of an open-domain candidate."""
    return query_text(c["instruction"], c["input"]) if "instruction" in c else c["input"]


def is_open_domain(candidates: list[dict]) -> bool:
    """Whether candidates are open-domain (they carry their own instruction)."""
    return any("instruction" in c for c in candidates)


def select_candidates(candidates: list[dict], demos: list[Instance], train_size: int, cfg: MethodConfig, seed: int) -> int:
    """Step 3: mark the chosen kept candidates (`selected`, `cluster`). Returns how many."""
    kept = [c for c in candidates if c["verdict"] == KEPT]
    k = target_size(len(kept), train_size, cfg.ratio, cfg.per_task)
    fit = [query_text(d.definition, d.input) if is_open_domain(candidates) else d.input for d in demos] if cfg.kmeans_fit == "demos" else None
    chosen = select([selection_text(c) for c in kept], k, cfg.selection_or_default, seed,
                    n_clusters=cfg.n_clusters, embedding_model=cfg.embedding_model, fit_texts=fit,
                    embedding_pooling=cfg.embedding_pooling, one_per_cluster=cfg.cluster_quota == "one")
    for c in candidates:
        c["cluster"], c["selected"] = None, False
    for i, c in enumerate(kept):
        if chosen.clusters is not None:
            c["cluster"] = chosen.clusters[i]
    for rank, i in enumerate(chosen.indices):
        kept[i]["selected"] = True
        kept[i]["selection_rank"] = rank
    return len(chosen.indices)


def synthesize(task: Task, demos: list[Instance], generator: Generator, tokenizer, context_length: int,
               cfg: MethodConfig, seed: int) -> tuple[list[dict], dict, list[IclPrompt]]:
    """Steps 1-3 for one task: the candidates (with verdicts and selection), counts, and the prompts."""
    started = time.perf_counter()
    candidates, stats, prompts = generate_candidates(task, demos, generator, tokenizer, context_length, cfg, seed)
    filter_candidates(candidates, task, demos, tokenizer, cfg, build_screener(cfg.screen))
    stats.update(Counter(f"verdict_{c['verdict']}" for c in candidates))
    stats.update(Counter(f"screened_{c['screen_rule']}" for c in candidates if c["verdict"] == SCREENED))
    stats["candidates"] = len(candidates)
    stats["input_only_kept"] = sum(1 for c in candidates if c["verdict"] == KEPT and not c["base_output"])
    stats["selected"] = select_candidates(candidates, demos, len(task.train), cfg, seed)
    stats["seconds"] = round(time.perf_counter() - started, 1)
    log.info("task %s: synthesis %s", task.name, dict(stats))
    return candidates, dict(stats), prompts


def refine(selected: list[dict], definition: str, generator: Generator, template: PromptTemplate,
           max_source_length: int, max_new_tokens: int, desc: str = "refine") -> list[str]:
    """Step 4: the latest model's greedy outputs for the selected inputs (training template);
    an open-domain candidate is answered under its own instruction."""
    pairs = [(c.get("instruction") or definition, c["input"]) for c in selected]
    return greedy_outputs(generator, template, pairs, max_source_length, max_new_tokens, desc)


def rehearsal_rows(task: Task, selected: list[dict], outputs: list[str | None], refined: bool) -> list[dict]:
    """Rows replayed in later stages: `output` is the refined one (or the base one without refinement)."""
    rows = []
    for c, out in zip(selected, outputs):
        inst = Instance(f"{task.name}-syn-{c['candidate_id']}", c["input"], out, c.get("instruction") or task.definition)
        rows.append(training_row(inst, task.name, "synthetic", base_output=c["base_output"], refined=refined,
                                 candidate_id=c["candidate_id"], prompt_id=c["prompt_id"], demo_ids=c["demo_ids"]))
    return rows
