"""General-abilities benchmark (`make bench-general`): does a method keep what the chat model already knew?

The paper's Alpaca setting (its Table 3) at CPU scale: `configs/general-abilities.yaml` treats the
built-in general instruction set as SmolLM2-135M-Instruct's already-learnt stage 0, then fine-tunes
on sum and sa. Each method is an ordinary cached run under `runs/general/<method>/` (`ssr sweep`
machinery: an interrupted benchmark resumes). The section written to BENCHMARKS.md gives, per
method, the held-out general instructions' ROUGE-L and the packaged lm-eval task's accuracy before
training and after each stage, the change in final general ROUGE-L against sequential fine-tuning
paired over the same 60 held-out instructions (± standard error), and AR / BWT on the trained tasks.

    python benchmarks/general_abilities.py --methods sequential,replay-random-10,ssr --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from markdown_section import replace_section
from ssr.compare import final_task_difference
from ssr.config import load_config
from ssr.models.dtype import cpu_description
from ssr.runner import wall_seconds
from ssr.sweep import PAPER_LABELS, run_sweep

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "general-abilities.yaml"
SECTION = "## General abilities under continual fine-tuning (`make bench-general`)"
METHODS = ["sequential", "replay-random-10", "ssr"]
# The paper's Table 3 (Alpaca-7b: learnt Alpaca-52k, then 5 SuperNI tasks): MMLU, AlpacaEval win rate.
PAPER_TABLE_3 = {"before": (41.0, 21.08), "sequential": (34.1, 8.82), "ssr": (37.1, 19.68)}


def _acc(general: dict, stage: str) -> str:
    tasks = (general.get(stage, {}).get("lm_eval") or {}).get("tasks") or {}
    return " / ".join(f"{m['acc']:.3f}" for m in tasks.values() if "acc" in m) or "–"


def section(out: Path, methods: list[str], command: str) -> str:
    runs = {m: out / m for m in methods if (out / m / "results.json").exists()}
    results = {m: json.loads((d / "results.json").read_text()) for m, d in runs.items()}
    first = next(iter(results.values()), None)
    if first is None:
        return f"{SECTION}\n\nNo finished run under `{out}` yet.\n"
    cfg = load_config(next(iter(runs.values())) / "config.yaml")  # the settings the runs were made with
    finished = max((d / "results.json").stat().st_mtime for d in runs.values())
    finished_at = datetime.fromtimestamp(finished, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    learnt = next(iter(first["learnt"]))
    stages = list(first["general"])
    engines = first.get("engines", {})
    n_general = first["general"][stages[0]]["instructions"]["n"]
    lines = [SECTION, "",
             f"Runs finished {finished_at}, on {cpu_description()} (2 cores); generation {engines.get('generation')} "
             f"({engines.get('generation_dtype')}), training {engines.get('training_dtype')} with autocast "
             f"{engines.get('training_autocast')}. Command: `{command}`.", "",
             f"Setting: SmolLM2-135M-Instruct, the built-in `{learnt}` instruction set as the learnt stage 0, then "
             f"{' → '.join(t.name for t in cfg.tasks if not t.learnt)}; {cfg.data.max_train_examples} training rows × "
             f"{cfg.train.epochs:g} epochs per task at lr {cfg.train.lr:g}; {cfg.eval.max_examples} evaluation rows per task "
             f"({n_general} of the general set's held-out instructions); replay and SSR keep 10 % per earlier task, one per K-means "
             f"cluster; SSR from {cfg.method.max_prompts} ICL prompts × {cfg.method.samples_per_prompt} samples per task.", "",
             "| method | general ROUGE-L: " + " | ".join(stages) + " | change vs sequential (paired ± SE) "
             "| ssr_general_mc acc: before / after | AR | BWT | wall |",
             "|---|" + "---:|" * len(stages) + "---:|---:|---:|---:|---:|"]
    for m, r in results.items():
        g = r["general"]
        rouge = [f"{g[s]['instructions']['rougeL']:.2f}" for s in stages]
        if m == "sequential" or "sequential" not in runs:
            change = "–"
        else:
            d, se = final_task_difference(runs[m], runs["sequential"], learnt)
            change = f"{d:+.2f} ± {se:.2f}" + (" *" if abs(d) > 2 * se else "")
        lines.append(f"| {PAPER_LABELS.get(m, m)} | " + " | ".join(rouge) + f" | {change} | {_acc(g, stages[0])} → "
                     f"{_acc(g, stages[-1])} | {r['AR']:.2f} | {r['BWT']:.2f} | {wall_seconds(runs[m]) / 60:.1f} min |")
    lines += ["", f"General ROUGE-L: ROUGE-L × 100 of the answers to the {n_general} held-out general instructions (no judge), "
              "before training (`0-base`) and after each stage. `*`: the paired difference exceeds two standard "
              "errors. ssr_general_mc: the packaged lm-evaluation-harness task (each held-out instruction with four "
              "answers), accuracy as a fraction. AR / BWT over the trained tasks (ROUGE-L).", "",
              f"The paper's Table 3 (Alpaca-7b, MMLU / AlpacaEval win rate): before {PAPER_TABLE_3['before']}, "
              f"non-rehearsal {PAPER_TABLE_3['sequential']}, SSR {PAPER_TABLE_3['ssr']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated variants (default: {','.join(METHODS)})")
    parser.add_argument("--output-dir", "-o", type=Path, default=ROOT / "runs" / "general")
    parser.add_argument("--markdown", type=Path, help="update the general-abilities section of this file (BENCHMARKS.md)")
    parser.add_argument("--report-only", action="store_true", help="write the section from the runs already there")
    args = parser.parse_args()
    methods = args.methods.split(",")
    if not args.report_only:
        run_sweep(CONFIG, methods, args.output_dir, echo=lambda line: print(line, flush=True))
    text = section(args.output_dir, methods, " ".join(["python benchmarks/general_abilities.py",
                                                        *(shlex.quote(a) for a in sys.argv[1:])]))
    print(text)
    if args.markdown:
        replace_section(args.markdown, SECTION, text)


if __name__ == "__main__":
    main()
