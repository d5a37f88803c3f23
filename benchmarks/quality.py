"""Quality benchmark (`make bench`): the paper's 5-task SuperNI protocol at CPU scale.

Runs every method on `configs/bench-superni.yaml` in the paper's task orders (`ssr sweep`
machinery: each run is an ordinary cached run directory under `runs/bench/order-<k>/seed-<s>/`,
so an interrupted benchmark resumes, and a later invocation with more orders reuses the earlier
ones). Each finished run is also recorded in the repository (`benchmarks/records/superni/`, see
records.py): a later invocation in any checkout skips a run recorded with the same config, so the
table grows over sessions. Then it builds the report (plots) with `ssr report`, and writes the "Quality" section of
BENCHMARKS.md: Table 1's shape (AR / BWT per order, mean ± std), FWT, paired standard errors of
every method's difference from SSR, Table 5's (L2 / EWC), the ablations, the synthetic-data
quality per task and the wall time per method, next to the paper's Llama-2-7b figures.

    python benchmarks/quality.py --orders 3 --methods sequential,replay-random-10,ssr
    python benchmarks/quality.py --orders 1,2,3 --markdown BENCHMARKS.md   # everything
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import signal
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import torch

from markdown_section import replace_section
from records import RECORDS, differences, is_record, save_record
from ssr.compare import paired_difference
from ssr.config import load_config
from ssr.models.dtype import cpu_description
from ssr.report import build_report
from ssr.runner import wall_seconds, wall_seconds_by_machine
from ssr.sweep import PAPER_LABELS, plan_sweep, run_sweep
from ssr.sweep import format_mean_std as fmt
from ssr.synthesis.quality import load_or_compute

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "bench-superni.yaml"
PAPER_ORDERS = {
    1: ("qa", "qg", "sa", "sum", "trans"),
    2: ("trans", "sa", "qa", "sum", "qg"),
    3: ("sum", "qg", "trans", "qa", "sa"),
}
TABLE_1 = ["sequential", "replay-random-1", "replay-kmeans-1", "replay-random-10", "replay-kmeans-10", "ssr", "mtl"]
TABLE_5 = ["l2", "ewc"]
ABLATIONS = ["ssr-no-refine", "ssr-random", "ssr-supervised", "ssr-input-demos"]
METHODS = TABLE_1 + TABLE_5
ORDER_1_ONLY = ["replay-random-1", "replay-kmeans-1", "mtl", *ABLATIONS]
"""Run on order 1 only by default (the issue's time budget): the 1 % variants, the ablations, and
MTL, which learns every task at once from the base model: another order changes only the draw of
its shuffled rows, not what it computes."""
# The paper's Table 1, Llama-2-7b, mean of its three orders (AR / BWT); FWT is not in that table.
PAPER_7B = {
    "mtl": (53.05, None), "sequential": (19.03, -42.39), "replay-random-1": (49.67, -4.02),
    "replay-kmeans-1": (50.02, -3.61), "replay-random-10": (50.32, -3.02), "replay-kmeans-10": (50.31, -2.96),
    "ssr": (52.16, -0.79),
}
# The paper's Table 5 (order 1, Llama-2-7b).
PAPER_ORDER_1 = {"sequential": (17.67, -44.09), "l2": (29.22, -28.45), "ewc": (15.94, -46.30), "ssr": (52.61, -0.23)}
SECTION = "## Quality: the paper's protocol at CPU scale (`make bench`)"
BENCH_RECORDS = RECORDS / "superni"


def collect(out: Path, records: Path = BENCH_RECORDS) -> dict[str, dict[tuple[int, int], Path]]:
    """variant -> {(order, seed): finished run directory, else its record} over `out` and `records`."""
    runs: dict[str, dict[tuple[int, int], Path]] = {}
    for root in (records, out):  # a run directory here wins over its record
        for results in sorted(root.glob("order-*/seed-*/*/results.json")):
            run_dir = results.parent
            order = int(run_dir.parent.parent.name.removeprefix("order-"))
            seed = int(run_dir.parent.name.removeprefix("seed-"))
            runs.setdefault(run_dir.name, {})[(order, seed)] = run_dir
    return runs


def repo_path(path: Path) -> Path:
    """`path` relative to the repository where it lies inside it (as messages and BENCHMARKS.md name it)."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def record_finished(out: Path, records: Path = BENCH_RECORDS, echo=print) -> None:
    """Record every finished run under `out` whose record is missing or older than its results."""
    for results in sorted(out.glob("order-*/seed-*/*/results.json")):
        run_dir = results.parent
        record = records / run_dir.relative_to(out)
        if not (record / "results.json").exists() or (record / "results.json").read_bytes() != results.read_bytes():
            save_record(run_dir, record)
            echo(f"   recorded {run_dir.relative_to(out)} in {repo_path(record)}")


def unrecorded(variants: list[str], out: Path, order: int, seed: int | None, overrides: list[str],
               records: Path = BENCH_RECORDS, echo=print) -> list[str]:
    """The variants of one order and seed that still need a run: no run directory in `out` and no
    record made with the same config (a record of another config is reported, then run anew)."""
    todo = []
    for sweep_run, cfg in plan_sweep(CONFIG, variants, [PAPER_ORDERS[order]], [seed] if seed is not None else None,
                                     out, overrides, [f"order-{order}"]):
        record = records / sweep_run.path.relative_to(out)
        if sweep_run.path.exists() or not (record / "results.json").exists():
            todo.append(sweep_run.variant)
        elif changes := differences(record, cfg):
            echo(f"   {repo_path(record)} was made with another config ({'; '.join(changes)}): running it anew")
            todo.append(sweep_run.variant)
    return todo


@functools.cache
def result(run_dir: Path) -> dict:
    """A finished run's results.json, read once (every table of the section reads it)."""
    return json.loads((run_dir / "results.json").read_text())


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return fmt(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


def per_order_cells(by_group: dict[tuple[int, int], Path], metric: str, orders: list[int]) -> list[str]:
    """One cell per order: the metric (mean over seeds where there are several)."""
    cells = []
    for order in orders:
        values = [result(d)[metric] for (o, _), d in by_group.items() if o == order and result(d)[metric] is not None]
        cells.append(fmt(statistics.fmean(values)) if values else "–")
    return cells


def paired(a: Path, b: Path, metric: str) -> str:
    """'+d ± se' with a mark where |d| > 2 se (resolved at this many evaluation rows)."""
    diff, se = paired_difference(a, b, metric)
    return f"{diff:+.2f} ± {se:.2f}{' *' if abs(diff) > 2 * se else ''}"


def machine_marks(run_dirs: list[Path]) -> dict[str | None, str]:
    """A mark per machine the runs' steps ran on, from their timings: A, B, ... (machines sorted
    by name), and ? for steps timed before timings named their machine."""
    machines = {m for d in run_dirs for m in wall_seconds_by_machine(d)}
    marks = {m: chr(ord("A") + i) for i, m in enumerate(sorted(m for m in machines if m is not None))}
    return marks | ({None: "?"} if None in machines else {})


def run_marks(run_dir: Path, marks: dict[str | None, str]) -> str:
    """'[A]', or '[A+?]' for a run whose steps ran on more than one machine (a resumed run)."""
    return "[" + "+".join(sorted(marks[m] for m in wall_seconds_by_machine(run_dir))) + "]"


def machine_line(runs: dict[str, dict[tuple[int, int], Path]], marks: dict[str | None, str]) -> str:
    """The machines the runs ran on, with each one's runs and compute: machines of one kind differ
    several-fold in speed, so a wall time means something only beside its machine."""
    dirs = [d for by in runs.values() for d in by.values()]
    engines = next((result(d).get("engines") for d in dirs), None) or {}
    ran_on = []
    for machine, mark in marks.items():
        count = sum(machine in wall_seconds_by_machine(d) for d in dirs)
        hours = sum(wall_seconds_by_machine(d, own_only=True).get(machine, 0.0) for d in dirs) / 3600
        name = machine or "not recorded (timed before timings named their machine; the dated readings below name it)"
        ran_on.append(f"[{mark}] {name}: {count} run{'s' if count != 1 else ''}, {hours:.1f} h")
    return (f"Machines, from the runs' timings (shared base evaluation and stage 1 counted once; wall times are "
            f"never averaged across machines): {'; '.join(ran_on) or 'none'}. Regenerated on {cpu_description()}, "
            f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads). Engines recorded in the runs: generation {engines.get('generation', '?')} "
            f"in {engines.get('generation_dtype', '?')}, training {engines.get('training_dtype', '?')} weights with "
            f"{engines.get('training_autocast') or 'no'} autocast.")


def wall_cell(by_group: dict[tuple[int, int], Path], marks: dict[str | None, str]) -> str:
    """Each run's wall time in minutes with its order and machine mark, e.g. 'o1 111.8 [?], o3 53.7 [A]'."""
    return ", ".join(f"o{order}{f' s{seed}' if len({s for _, s in by_group}) > 1 else ''} "
                     f"{wall_seconds(d) / 60:.1f} {run_marks(d, marks)}" for (order, seed), d in sorted(by_group.items()))


def quality_rows(label: str, run_dir: Path) -> list[str]:
    rows = []
    for task, q in load_or_compute(run_dir, compute=not is_record(run_dir)).items():
        c, fid, div, out = q["counts"], q["fidelity"], q["diversity"], q["outputs"]
        f = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        words = out["length_words"]
        rows.append(
            f"| {label} | {task} | {c['generations']} | {c['parsed_pairs']} / {c['input_only']} / {c['truncated']} | {c['kept']} | {c['selected']} | "
            f"{f(fid['kept'].get('own_task_share'))} / {f(fid['selected'].get('own_task_share'))} / {f(fid['heldout'].get('own_task_share'))} | "
            f"{f(fid['kept']['nn_similarity'])} / {f(fid['heldout']['nn_similarity'])} / {f(fid['other_tasks_heldout']['nn_similarity'])} | "
            f"{f(div['distinct_2']['kept'])} ({f(div['distinct_2']['real_same_size_as_kept'])}) | "
            f"{div['clusters']['covered']} of {div['clusters']['clusters']} | "
            f"{f(out.get('label_share')) if out['classification'] else '–'} | "
            f"{f(words['refined']['mean'] if words['refined'] else None)} / {f(words['real_train']['mean'] if words['real_train'] else None)} |")
    return rows


def section(out: Path, command: str, started: str, overrides: list[str], records: Path = BENCH_RECORDS) -> str:
    runs = collect(out, records)
    orders = sorted({o for by in runs.values() for o, _ in by})
    cfg = load_config(CONFIG, overrides)
    shown = [v for v in [*TABLE_1, *TABLE_5, *[v for v in runs if v not in TABLE_1 + TABLE_5 + ABLATIONS]] if v in runs]
    marks = machine_marks([d for by in runs.values() for d in by.values()])
    order_names = "; ".join(f"{o}: {'→'.join(PAPER_ORDERS[o])}" for o in orders)
    lines = [SECTION, "",
             f"Measured {started} (UTC) with `{command}`; runs, predictions and plots under "
             f"`{repo_path(out)}/` (report: `report.md` there); each finished run's "
             f"record (no weights) in `{repo_path(records)}/`. {machine_line(runs, marks)}",
             "",
             f"Scale (config `configs/bench-superni.yaml`{', with ' + ', '.join(f'`{o}`' for o in overrides) if overrides else ''}): "
             f"SmolLM2-135M-Instruct; orders {order_names}; {cfg.data.max_train_examples} training rows per task, "
             f"{cfg.train.epochs:g} epochs, lr {cfg.train.lr:g}, batch {cfg.train.batch_size * cfg.train.grad_accum}, "
             f"LoRA r {cfg.train.lora.r} on {', '.join(cfg.train.lora.targets)}, prompts cut to {cfg.train.max_source_length} tokens; "
             f"{cfg.eval.max_examples} evaluation rows per task (seeded; sa class-balanced), greedy, evaluation schedule "
             f"`{cfg.eval.schedule}`. Replay r % = r % of the training rows. SSR: {cfg.method.max_prompts} ICL prompts × "
             f"{cfg.method.samples_per_prompt} samples per task by the base model (≤ {cfg.method.synth_max_new_tokens} new tokens each), "
             f"K-means ({cfg.method.n_clusters} clusters) keeps 10 %, outputs refined by the latest model.",
             "",
             "### Table 1: AR and BWT per order (ROUGE-L), mean ± sample std over the orders run",
             "",
             "| method | " + " | ".join(f"AR o{o}" for o in orders) + " | AR | " + " | ".join(f"BWT o{o}" for o in orders)
             + " | BWT | FWT | wall min per run [machine] | paper 7B: AR / BWT |",
             "|---|" + "---:|" * (2 * len(orders) + 5)]
    for variant in shown:
        by = runs[variant]
        paper = PAPER_7B.get(variant)
        lines.append(f"| {PAPER_LABELS.get(variant, variant)} | " + " | ".join(per_order_cells(by, "AR", orders))
                     + f" | {mean_std([result(d)['AR'] for d in by.values()])} | " + " | ".join(per_order_cells(by, "BWT", orders))
                     + f" | {mean_std([result(d)['BWT'] for d in by.values()])} | {mean_std([result(d)['FWT'] for d in by.values()])} | "
                     f"{wall_cell(by, marks)} | {fmt(paper[0]) + ' / ' + fmt(paper[1]) if paper else '–'} |")
    lines += ["",
              "The paper's column: its Table 1 (Llama-2-7b, 2,000 examples × 3 epochs per task, 500 evaluation rows, mean of "
              "3 orders), quoted, not measured here. Wall time per run includes the shared base evaluation and stage 1; "
              "the mark in brackets is the machine it ran on (above). "
              "The 1 % variants, MTL (every task at once: the order changes only its shuffle) and the ablations run on "
              "order 1 only, by default. SSR's ablations other than input-only demonstrations parse the base model's "
              "samples of SSR's run on the same order (`synthesis.reuse`): the same computation, so their wall time "
              "leaves it out.", ""]

    if "ssr" in runs:
        lines += ["### Each method against SSR, paired over the same evaluation rows",
                  "",
                  "Difference of AR and BWT from SSR's run on the same order and seed, ± the standard error over the paired "
                  "evaluation rows (`ssr.compare.paired_difference`); `*` marks a difference larger than two standard errors.",
                  "",
                  "| method | order | AR − SSR | BWT − SSR |", "|---|---:|---:|---:|"]
        for variant in [v for v in shown if v != "ssr"]:
            for (order, seed), run_dir in sorted(runs[variant].items()):
                ssr_run = runs["ssr"].get((order, seed))
                if ssr_run is None:
                    continue
                bwt = paired(run_dir, ssr_run, "BWT") if result(run_dir)["BWT"] is not None else "–"
                lines.append(f"| {PAPER_LABELS.get(variant, variant)} | {order}{f' (seed {seed})' if seed != cfg.seed else ''} | "
                             f"{paired(run_dir, ssr_run, 'AR')} | {bwt} |")
        lines.append("")

    for order in orders:
        for variant in [v for v in ("sequential", "ssr") if v in runs]:
            run_dir = next((d for (o, _), d in sorted(runs[variant].items()) if o == order), None)
            if run_dir is None:
                continue
            r = result(run_dir)
            lines += [f"Score matrix of {PAPER_LABELS[variant]}, order {order} (row = after that stage; · = not evaluated under "
                      f"`eval.schedule: metrics`, which evaluates only what AR / FWT / BWT read):", "",
                      "| after | " + " | ".join(r["tasks"]) + " |", "|---|" + "---:|" * len(r["tasks"])]
            for stage, row in zip(["base", *r["tasks"]], r["scores"]):
                lines.append(f"| {stage} | " + " | ".join("·" if v is None else f"{v:.2f}" for v in row) + " |")
            lines.append("")

    # methods may have run different orders so far: each row names the orders its means are over
    lines += ["### Each task's score after the last stage (ROUGE-L, mean over the orders each method ran)", "",
              "| method | orders | " + " | ".join(t.name for t in cfg.tasks) + " |", "|---|---|" + "---:|" * len(cfg.tasks)]
    for variant in shown + [v for v in ABLATIONS if v in runs]:
        finals: dict[str, list[float]] = {}
        for d in runs[variant].values():
            r = result(d)
            for task, v in zip(r["tasks"], r["scores"][-1]):
                finals.setdefault(task, []).append(v)
        ran = ", ".join(f"o{o}" for o in sorted({o for o, _ in runs[variant]}))
        lines.append(f"| {PAPER_LABELS.get(variant, variant)} | {ran} | "
                     + " | ".join(fmt(statistics.fmean(finals[t.name])) if t.name in finals else "–" for t in cfg.tasks) + " |")
    lines.append("")

    if 1 in orders and any(v in runs for v in TABLE_5):
        lines += ["### Table 5: regularisation beside SSR (order 1)", "",
                  "| method | AR | BWT | paper 7B, order 1: AR / BWT |", "|---|---:|---:|---:|"]
        for variant in ["sequential", *TABLE_5, "ssr"]:
            order_1 = [d for (o, _), d in runs.get(variant, {}).items() if o == 1]
            if order_1:
                paper = PAPER_ORDER_1[variant]
                lines.append(f"| {PAPER_LABELS[variant]} | {mean_std([result(d)['AR'] for d in order_1])} | "
                             f"{mean_std([result(d)['BWT'] for d in order_1])} | {fmt(paper[0])} / {fmt(paper[1])} |")
        lines.append("")

    ablations = [v for v in ABLATIONS if v in runs]
    if ablations:
        lines += ["### Ablations of SSR", "",
                  "| variant | order | AR | BWT | AR − SSR | BWT − SSR |", "|---|---:|---:|---:|---:|---:|"]
        for variant in ablations:
            for (order, seed), run_dir in sorted(runs[variant].items()):
                r, ssr_run = result(run_dir), runs.get("ssr", {}).get((order, seed))
                lines.append(f"| {PAPER_LABELS[variant]} | {order} | {fmt(r['AR'])} | {fmt(r['BWT'])} | "
                             f"{paired(run_dir, ssr_run, 'AR') if ssr_run else '–'} | {paired(run_dir, ssr_run, 'BWT') if ssr_run else '–'} |")
        lines.append("")

    ssr_like = [(v, key, d) for v in ["ssr", *ablations] for key, d in sorted(runs.get(v, {}).items())]
    if ssr_like:
        lines += ["### The synthetic data (per SSR run and task; `synthetic/<task>.quality.json`)", "",
                  "| run | task | generations | pairs / input-only / truncated | kept | selected | own task nearest: kept / selected / "
                  "held-out real | NN similarity to real inputs: kept / held-out real / other tasks | distinct-2 kept (real) | "
                  "clusters covered | refined = a label | words refined / real |",
                  "|---|---|---:|---|---:|---:|---|---|---|---:|---:|---|"]
        for variant, (order, seed), run_dir in ssr_like:
            lines += quality_rows(f"{PAPER_LABELS[variant]}, o{order}", run_dir)
        lines += ["", "Nearest task: the task of the most similar real training input over all five tasks (all-MiniLM-L6-v2 "
                  "cosine). NN similarity: mean cosine to the nearest real training input of the task itself; held-out real "
                  "(the task's evaluation inputs) is the ceiling, other tasks' inputs the floor. Examples of kept and dropped "
                  "candidates: the report.", ""]
    return "\n".join(lines)


def serving_overrides(out: Path, order: int, overrides: list[str]) -> list[str]:
    """`overrides`, plus the vLLM serving mode the order's earlier runs used, if any ran: its
    methods are compared row by row, so they must be served alike (runs made before
    `generation.vllm_adapters` existed served LoRA; the default on CPUs is now merged)."""
    import yaml

    from ssr.config import with_legacy_defaults

    if any(o.startswith("generation.vllm_adapters=") for o in overrides):
        return overrides
    for saved in sorted([*(out / f"order-{order}").glob("seed-*/*/config.yaml"),
                         *(BENCH_RECORDS / f"order-{order}").glob("seed-*/*/config.yaml")]):
        mode = with_legacy_defaults(yaml.safe_load(saved.read_text()))["generation"]["vllm_adapters"]
        if mode != "auto":
            return [*overrides, f"generation.vllm_adapters={mode}"]
    return overrides


def exit_on_sigterm() -> None:
    """Make `kill` (SIGTERM) leave like Ctrl-C does, through the `finally` that records the runs
    that finished: Python's default SIGTERM ends the process without running it."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", default="1", help="paper orders, comma-separated: 1, 2, 3 (default 1)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the config's)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated variants (default: {','.join(METHODS)})")
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True,
                        help=f"also run SSR's ablations on order 1 ({', '.join(ABLATIONS)})")
    parser.add_argument("--output-dir", "-o", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--markdown", type=Path, help="update the quality section of this file (BENCHMARKS.md)")
    parser.add_argument("--report-only", action="store_true", help="write the section from the runs already there")
    args = parser.parse_args()
    orders = [int(o) for o in args.orders.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    methods = args.methods.split(",")
    started = datetime.now(timezone.utc).isoformat(timespec="minutes")
    t0 = time.perf_counter()
    echo = lambda line: print(line, flush=True)  # noqa: E731
    if not args.report_only:
        exit_on_sigterm()
        # every order: the methods asked for; order 1 also the 1 % variants and ablations when asked
        everywhere = [m for m in methods if m not in ORDER_1_ONLY]
        order_1_extra = [m for m in methods if m in ORDER_1_ONLY] + (ABLATIONS if args.ablations else [])
        for order in orders:
            variants = list(dict.fromkeys(everywhere + (order_1_extra if order == 1 else [])))
            overrides = serving_overrides(args.output_dir, order, args.overrides)
            for seed in seeds or [None]:
                todo = unrecorded(variants, args.output_dir, order, seed, overrides, echo=echo)
                if len(todo) < len(variants):
                    echo(f"== order {order}: {', '.join(v for v in variants if v not in todo)} recorded in "
                         f"{BENCH_RECORDS.relative_to(ROOT)}/ with this config: not run again")
                if not todo:
                    continue
                try:
                    run_sweep(CONFIG, todo, args.output_dir, [PAPER_ORDERS[order]], [seed] if seed is not None else None,
                              overrides, echo=echo, order_labels=[f"order-{order}"])
                finally:  # also when interrupted: the runs that finished are kept
                    record_finished(args.output_dir, echo=echo)
    runs = collect(args.output_dir)
    for by in runs.values():  # the quality figures of live SSR runs, before the report reads them
        for d in by.values():
            if not is_record(d) and (d / "synthetic").is_dir():
                load_or_compute(d, compute=True)
    report = build_report([d for by in runs.values() for d in by.values()], args.output_dir,
                          title="ssr benchmark: SuperNI, 5 tasks, SmolLM2-135M-Instruct", compute_quality=False)
    print(f"report: {report}; this invocation took {(time.perf_counter() - t0) / 60:.1f} min")
    if args.markdown:
        command = " ".join(["python benchmarks/quality.py", *(shlex.quote(a) for a in sys.argv[1:])])
        replace_section(args.markdown, SECTION, section(args.output_dir, command, started, args.overrides))
        print(f"updated {args.markdown}")


if __name__ == "__main__":
    main()
