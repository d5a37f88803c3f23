"""Quality benchmark (`make bench`): the paper's 5-task SuperNI protocol at CPU scale.

Runs every core method (`ssr sweep` machinery: each run cached, so an interrupted benchmark
resumes) on `configs/bench-superni.yaml`, builds the report (plots) with `ssr report`, and
writes the "Quality" section of BENCHMARKS.md: AR / FWT / BWT and wall time per method next to
the paper's Llama-2-7b figures, the machine, the date and the exact command.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import torch

from markdown_section import replace_section
from ssr.config import load_config
from ssr.report import build_report
from ssr.runner import wall_seconds
from ssr.sweep import PAPER_LABELS, finished_runs, run_sweep, summary_table
from ssr.sweep import format_mean_std as fmt

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "bench-superni.yaml"
PAPER_ORDERS = {
    1: ("qa", "qg", "sa", "sum", "trans"),
    2: ("trans", "sa", "qa", "sum", "qg"),
    3: ("sum", "qg", "trans", "qa", "sa"),
}
METHODS = ["sequential", "replay-random-1", "replay-kmeans-1", "replay-random-10", "replay-kmeans-10", "ssr", "mtl"]
# The paper's Table 1, Llama-2-7b, mean of its three orders (AR / BWT); FWT is not in that table.
PAPER_7B = {
    "mtl": (53.05, None), "sequential": (19.03, -42.39), "replay-random-1": (49.67, -4.02),
    "replay-kmeans-1": (50.02, -3.61), "replay-random-10": (50.32, -3.02), "replay-kmeans-10": (50.31, -2.96),
    "ssr": (52.16, -0.79),
}
SECTION = "## Quality: the paper's protocol at CPU scale (`make bench`)"


def final_scores(out: Path, sweep: dict, variant: str) -> dict[str, list[float]]:
    """Each task's score after the last stage, over the variant's finished runs."""
    scores: dict[str, list[float]] = {}
    for entry in sweep["runs"]:
        path = out / entry["path"] / "results.json"
        if entry["variant"] == variant and path.exists():
            r = json.loads(path.read_text())
            for task, v in zip(r["tasks"], r["scores"][-1]):
                scores.setdefault(task, []).append(v)
    return scores


def final_predictions(run_dir: Path) -> dict[str, dict[str, float]]:
    """task -> {row id: ROUGE-L} of the run's last model."""
    last = max((run_dir / "stages").iterdir(), key=lambda d: int(d.name.split("-")[0]))
    return {p.stem: {r["id"]: 100 * r["rougeL"] for r in map(json.loads, p.read_text().splitlines()) if r}
            for p in (last / "predictions").glob("*.jsonl")}


def paired_ar_difference(a: Path, b: Path) -> tuple[float, float]:
    """AR of run a minus AR of run b, and its standard error, pairing the same evaluation rows:
    how far apart two methods are, against how much 24 rows per task can tell."""
    pa, pb = final_predictions(a), final_predictions(b)
    means, variances = [], []
    for task in pa:
        diffs = [pa[task][i] - pb[task][i] for i in pa[task]]
        means.append(statistics.mean(diffs))
        variances.append(statistics.variance(diffs) / len(diffs) if len(diffs) > 1 else 0.0)
    return statistics.mean(means), (sum(variances) ** 0.5) / len(means)


def synthesis_stats(out: Path, sweep: dict) -> list[str]:
    lines = []
    for entry in sweep["runs"]:
        if entry["variant"] != "ssr":
            continue
        for stats_path in sorted((out / entry["path"] / "synthetic").glob("*.stats.json")):
            s = json.loads(stats_path.read_text())
            rows = [json.loads(x) for x in (stats_path.parent / f"{stats_path.name.split('.')[0]}.jsonl").read_text().splitlines() if x]
            lines.append(f"{stats_path.name.split('.')[0]} ({entry['order_label']}, seed {entry['seed']}): "
                         f"{s.get('candidates', 0)} candidates, {s.get('verdict_kept', 0)} kept "
                         f"({s.get('input_only_kept', 0)} input-only), {len(rows)} rehearsed, {s.get('seconds', 0):.0f} s")
    return lines


def verdict(summary: dict[str, dict]) -> str:
    """Whether SSR matches the paper's ordering here, read off the measured means."""
    ssr, seq = summary.get("ssr"), summary.get("sequential")
    real = [summary[v] for v in METHODS if v.startswith("replay") and v in summary and summary[v]["AR"] is not None]
    if not ssr or ssr["AR"] is None or not real or not seq:
        return "Not every method has finished; rerun `make bench` to complete the table."
    best_ar = max(real, key=lambda r: r["AR"])
    best_bwt = max(real, key=lambda r: r["BWT"])
    forgets = "forgets" if seq["BWT"] < -5 else "forgets slightly" if seq["BWT"] < 0 else "does not forget"
    parts = [
        f"Sequential fine-tuning {forgets} here (BWT {seq['BWT']:.2f}; the paper's 7B: −42.39).",
        f"SSR's AR {ssr['AR']:.2f} is {'at or above' if ssr['AR'] >= best_ar['AR'] else 'below'} the best real-data "
        f"rehearsal ({best_ar['variant']}, {best_ar['AR']:.2f}); its BWT {ssr['BWT']:.2f} is "
        f"{'at or above' if ssr['BWT'] >= best_bwt['BWT'] else 'below'} the best real-data BWT ({best_bwt['variant']}, {best_bwt['BWT']:.2f}).",
        f"SSR {'beats' if ssr['AR'] > seq['AR'] else 'does not beat'} sequential fine-tuning in AR ({ssr['AR']:.2f} vs {seq['AR']:.2f}).",
    ]
    paper_order = ssr["AR"] >= best_ar["AR"] and ssr["BWT"] >= best_bwt["BWT"]
    parts.append(f"So the paper's ordering (SSR ≥ real-data rehearsal in AR and BWT) {'holds' if paper_order else 'does not hold'} at this scale.")
    return " ".join(parts)


def section(out: Path, command: str, started: str, orders: list[int], seeds: list[int] | None, overrides: list[str]) -> str:
    sweep = json.loads((out / "sweep.json").read_text())
    summary = {row["variant"]: row for row in json.loads((out / "summary.json").read_text())}
    shown = METHODS + [v for v in summary if v not in METHODS]  # e.g. --methods ...,l2,ewc,osf
    cfg = load_config(CONFIG, overrides)
    total = sum(wall_seconds(out / r["path"], own_only=True) for r in sweep["runs"])
    lines = [SECTION, "",
             f"Measured from {sweep.get('started', started)} (last invocation {started}) on {platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
             f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__} ({torch.get_num_threads()} threads), "
             f"no GPU, fp32. Command: `{command}`. Runs, predictions and plots: `{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}/report.md`.",
             "",
             f"Scale (config `configs/bench-superni.yaml`{', with ' + ', '.join(f'`{o}`' for o in overrides) if overrides else ''}): "
             f"SmolLM2-135M-Instruct, orders {', '.join(str(o) for o in orders)} "
             f"({'; '.join('→'.join(PAPER_ORDERS[o]) for o in orders)}), seeds {', '.join(str(s) for s in (seeds or [cfg.seed]))}; "
             f"{cfg.data.max_train_examples} training rows per task, {cfg.train.epochs:g} epochs, lr {cfg.train.lr:g}, "
             f"batch {cfg.train.batch_size * cfg.train.grad_accum}, LoRA r {cfg.train.lora.r} on {', '.join(cfg.train.lora.targets)}, "
             f"prompts cut to {cfg.train.max_source_length} tokens; {cfg.eval.max_examples} evaluation rows per task, greedy, "
             f"answers up to {', '.join(f'{t.name} {t.max_new_tokens or cfg.eval.max_new_tokens}' for t in cfg.tasks)} tokens; "
             f"evaluation schedule `{cfg.eval.schedule}`. Replay r % = r % of the training rows, at least one. SSR: "
             f"{cfg.method.max_prompts} ICL prompts × {cfg.method.samples_per_prompt} samples per task by the base model, "
             f"K-means ({cfg.method.n_clusters} clusters) keeps 10 %, outputs refined by the latest model.",
             "",
             "| method | AR | FWT | BWT | wall time (min) | paper, Llama-2-7b: AR / BWT |",
             "|---|---:|---:|---:|---:|---:|"]
    for variant in shown:
        row = summary.get(variant)
        if row is None:
            continue
        paper = PAPER_7B.get(variant, (None, None))
        wall = None if row["wall_seconds"] is None else row["wall_seconds"] / 60
        lines.append(f"| {PAPER_LABELS[variant]} | {fmt(row['AR'], row['AR_std'])} | {fmt(row['FWT'], row['FWT_std'])} | "
                     f"{fmt(row['BWT'], row['BWT_std'])} | {fmt(wall)} | {fmt(paper[0])} / {fmt(paper[1])} |")
    lines += ["",
              "The paper's column is its Table 1 (Llama-2-7b, 2,000 examples × 3 epochs per task, 500 evaluation rows, "
              "mean of 3 orders), quoted for reference, not measured here. Wall times include the shared base evaluation "
              f"and stage 1, counted in each continual method; the whole benchmark took {total / 60:.0f} min of compute "
              "(shared steps once).",
              "",
              "Each task's score after the last stage (ROUGE-L):",
              "",
              "| method | " + " | ".join(cfg.tasks[i].name for i in range(len(cfg.tasks))) + " |",
              "|---|" + "---:|" * len(cfg.tasks)]
    for variant in shown:
        scores = final_scores(out, sweep, variant)
        if scores:
            lines.append(f"| {PAPER_LABELS[variant]} | " + " | ".join(
                fmt(sum(scores[t.name]) / len(scores[t.name])) if t.name in scores else "–" for t in cfg.tasks) + " |")
    first_run = {r["variant"]: out / r["path"] for r in reversed(sweep["runs"]) if (out / r["path"] / "results.json").exists()}
    if "sequential" in first_run and len(first_run) > 1:
        lines += ["", f"AR difference from sequential fine-tuning, ± its standard error over the paired evaluation rows "
                      f"({sweep['runs'][0]['order_label']}, seed {sweep['runs'][0]['seed']}): differences within about two "
                      "standard errors are not resolved by this many evaluation rows.", "",
                  "| method | AR − sequential AR |", "|---|---:|"]
        for variant in shown:
            if variant != "sequential" and variant in first_run:
                diff, se = paired_ar_difference(first_run[variant], first_run["sequential"])
                lines.append(f"| {PAPER_LABELS[variant]} | {diff:+.2f} ± {se:.2f} |")
    stats = synthesis_stats(out, sweep)
    if stats:
        lines += ["", "SSR synthesis per task: " + "; ".join(stats) + "."]
    reading = verdict(summary)
    replays = [v for v in METHODS if v.startswith("replay") and v in first_run]
    if "ssr" in first_run and replays:
        best = max(replays, key=lambda v: summary[v]["AR"])
        diff, se = paired_ar_difference(first_run["ssr"], first_run[best])
        resolved = "resolved" if abs(diff) > 2 * se else "not resolved"
        reading += (f" Paired over the same evaluation rows, SSR − {best} is {diff:+.2f} ± {se:.2f} AR: "
                    f"{resolved} at two standard errors.")
    lines += ["", f"**Reading.** {reading}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", default="1", help="paper orders, comma-separated: 1, 2, 3 (default 1)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the config's)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated variants")
    parser.add_argument("--output-dir", "-o", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--markdown", type=Path, help="update the quality section of this file (BENCHMARKS.md)")
    args = parser.parse_args()
    orders = [int(o) for o in args.orders.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    run_sweep(CONFIG, args.methods.split(","), args.output_dir, [PAPER_ORDERS[o] for o in orders], seeds,
              args.overrides, echo=lambda line: print(line, flush=True))
    report = build_report(finished_runs(args.output_dir), args.output_dir, title="ssr benchmark: SuperNI, 5 tasks, SmolLM2-135M-Instruct")
    print(summary_table(json.loads((args.output_dir / "summary.json").read_text())))
    print(f"report: {report}; this invocation took {(time.perf_counter() - t0) / 60:.1f} min")
    if args.markdown:
        command = " ".join(["python benchmarks/quality.py", *(shlex.quote(a) for a in sys.argv[1:])])
        replace_section(args.markdown, SECTION, section(args.output_dir, command, started, orders, seeds, args.overrides))
        print(f"updated {args.markdown}")


if __name__ == "__main__":
    main()
