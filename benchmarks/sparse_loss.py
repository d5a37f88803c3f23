"""Training speed with the vocabulary projection at response positions only (`logits_to_keep`)
against the whole sequence, on SmolLM2-135M-Instruct and the benchmark's own rows and lengths.

    python benchmarks/sparse_loss.py [--task qa] [--rows 48] [--repeats 2] [--markdown BENCHMARKS.md]

Both modes train the same LoRA stage (the bench config's batch, lengths and precision) on the
same seeded rows, alternated (plain, sparse, plain, sparse, ...) in one process so that a
machine slowing down or speeding up weighs on both; tokens/s is the median over the repeats.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

import ssr.training
from markdown_section import replace_section
from ssr.config import load_config
from ssr.data import load_task
from ssr.data.task import training_row
from ssr.models import get_template, load_base_model, load_tokenizer
from ssr.models.dtype import cpu_description, resolve_autocast
from ssr.models.loading import cache_root
from ssr.models.lora import attach_lora

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Training: vocabulary projection at response positions only (`benchmarks/sparse_loss.py`)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "bench-superni.yaml")
    parser.add_argument("--task", default="qa")
    parser.add_argument("--rows", type=int, default=48, help="rows trained per measurement (batch 8: 6 steps)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    cfg = load_config(args.config)
    task_cfg = next(t for t in cfg.tasks if t.name == args.task)
    task = load_task(task_cfg, cfg.data, seed=cfg.seed)
    chosen = random.Random(0).sample(task.train, args.rows)
    rows = [training_row(inst, task.name, "new") for inst in chosen]
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.cache_dir)
    template = get_template(cfg.model.template, tokenizer)
    train = cfg.train.model_copy(update={"epochs": 1})
    bf16 = resolve_autocast(cfg.train.bf16, cache_root(cfg.model.cache_dir))
    real = ssr.training.supports_sparse_logits
    speeds: dict[str, list[float]] = {"plain": [], "sparse": []}
    for _ in range(args.repeats):
        for mode in ("plain", "sparse"):
            ssr.training.supports_sparse_logits = real if mode == "sparse" else (lambda model: False)
            model = attach_lora(load_base_model(cfg.model.name, cfg.model.cache_dir), train.lora, seed=0)
            stats = ssr.training.train_stage(model, template, rows, train, seed=0, desc=f"train {mode}", bf16=bf16)
            speeds[mode].append(stats["tokens_per_s"])
            print(f"{mode}: {stats['tokens_per_s']:.1f} tokens/s ({stats['steps']} steps, loss {stats['final_loss']:.4f})",
                  flush=True)
    ssr.training.supports_sparse_logits = real
    plain, sparse = (statistics.median(speeds[m]) for m in ("plain", "sparse"))
    print(f"sparse_speedup: {sparse / plain:.3f}")
    if args.markdown:
        command = "python benchmarks/sparse_loss.py " + " ".join(sys.argv[1:])
        body = "\n".join([
            SECTION, "",
            f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {cpu_description()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), training autocast {'bf16' if bf16 else 'off'}. Command: `{command}`. "
            f"SmolLM2-135M-Instruct + LoRA as in `{args.config.name}` (batch {train.batch_size}, prompts ≤ "
            f"{train.max_source_length} tokens, responses ≤ {train.max_target_length}), {args.rows} `{args.task}` rows, "
            f"{args.repeats} alternated repeats per mode.", "",
            "| loss | tokens/s (each repeat) | median | ratio |", "|---|---|---:|---:|",
            f"| whole sequence projected (`model(**batch).loss`) | {', '.join(f'{v:.1f}' for v in speeds['plain'])} | "
            f"{plain:.1f} | 1.00 |",
            f"| response positions only (`logits_to_keep`) | {', '.join(f'{v:.1f}' for v in speeds['sparse'])} | "
            f"{sparse:.1f} | {sparse / plain:.2f} |", ""])
        replace_section(args.markdown, SECTION, body)


if __name__ == "__main__":
    main()
