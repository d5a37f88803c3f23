"""`ssr sweep`: every method variant × task order × seed as its own cached run, then mean ± std.

A sweep is a folder of ordinary run directories, so an interrupted sweep resumes run by run
(and inside a run, step by step):

    <out>/order-<k>/seed-<s>/<variant>/     one `ssr run` directory each
    <out>/<variant>/                        the same, when the sweep has one order and one seed
    <out>/sweep.json                        when it started, variants, orders, seeds, where each run lives
    <out>/summary.json, summary.md          AR / FWT / BWT / wall time per variant: mean ± std (wall time only over runs on one machine)

Within one order and seed, the continual variants (sequential, replay, ssr, l2, ewc) share the base
evaluation and stage 1: plain fine-tuning on the first task is the same computation for all of
them, so it is computed once (see `runner.share_first_stage`), also across invocations (a run of
the same order and seed already on disk, e.g. from an earlier `--methods sequential`, is a source).
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ssr.config import RunConfig, load_config, to_dict, validate
from ssr.errors import ConfigError
from ssr.io import write_json, write_text
from ssr.runlock import run_lock
from ssr.runner import SHARED_FIRST_STAGE, RunDir, first_stage_shareable, prepare, run, wall_seconds_by_machine

log = logging.getLogger("ssr")

# A variant is a method with its settings, named as in the paper's tables.
VARIANTS: dict[str, dict[str, object]] = {
    "sequential": {"name": "sequential"},
    "replay-random-1": {"name": "replay", "selection": "random", "ratio": 0.01},
    "replay-kmeans-1": {"name": "replay", "selection": "kmeans", "ratio": 0.01},
    "replay-random-10": {"name": "replay", "selection": "random", "ratio": 0.1},
    "replay-kmeans-10": {"name": "replay", "selection": "kmeans", "ratio": 0.1},
    "ssr": {"name": "ssr", "ratio": 0.1},
    "l2": {"name": "l2"},
    "ewc": {"name": "ewc"},
    "osf": {"name": "osf"},
    "ssr-ewc": {"name": "ssr", "ratio": 0.1, "regularizer": "ewc"},
    # the paper's ablations of SSR (its Table 4): one switch each
    "ssr-no-refine": {"name": "ssr", "ratio": 0.1, "refine": False},
    "ssr-random": {"name": "ssr", "ratio": 0.1, "selection": "random"},
    "ssr-supervised": {"name": "ssr", "ratio": 0.1, "kmeans_fit": "demos"},
    "ssr-input-demos": {"name": "ssr", "ratio": 0.1, "demo_outputs": False},
    "mtl": {"name": "mtl"},
    "single": {"name": "single"},
}
PAPER_LABELS = {
    "sequential": "Non-rehearsal (sequential)",
    "replay-random-1": "RandSel (1 %)",
    "replay-kmeans-1": "KMeansSel (1 %)",
    "replay-random-10": "RandSel (10 %)",
    "replay-kmeans-10": "KMeansSel (10 %)",
    "ssr": "SSR",
    "l2": "L2",
    "ewc": "EWC",
    "osf": "OSF (PEFT)",
    "ssr-ewc": "SSR + EWC",
    "ssr-no-refine": "SSR w/o refinement",
    "ssr-random": "SSR, random instead of K-means selection",
    "ssr-supervised": "SSR, supervised K-means (centroids from the demos)",
    "ssr-input-demos": "SSR, input-only demonstrations",
    "mtl": "MTL",
    "single": "Single-task",
}
TABLE_1 = ("sequential", "replay-random-1", "replay-kmeans-1", "replay-random-10", "replay-kmeans-10", "ssr", "mtl")
"""What `ssr sweep` runs without --methods: the rows of the paper's Table 1."""
CONTINUAL = SHARED_FIRST_STAGE  # methods whose stage 1 is plain fine-tuning on task 1 (shared within a group)


def variant_overrides(variant: str) -> list[str]:
    """`--set` lines that turn any config into `variant` (rehearsal keys cleared where unused)."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown method variant {variant!r}; known: {', '.join(VARIANTS)}")
    settings = {"selection": None, "ratio": None, "per_task": None, "regularizer": None, **VARIANTS[variant]}
    if settings["name"] != "osf":  # a --set method.osf_effective_rank stays for the osf variant only
        settings["osf_effective_rank"] = None
    return [f"method.{k}={'null' if v is None else v}" for k, v in settings.items()]


@dataclass(frozen=True)
class SweepRun:
    variant: str
    order: tuple[str, ...]
    order_label: str
    seed: int
    path: Path


def reorder(cfg: RunConfig, order: tuple[str, ...], seed: int) -> RunConfig:
    """`cfg` with its tasks in `order` (a permutation of the config's task names) and `seed`."""
    by_name = {t.name: t for t in cfg.tasks}
    if sorted(order) != sorted(by_name):
        raise ConfigError(f"task order {','.join(order)} is not a permutation of the config's tasks {','.join(by_name)}")
    raw = to_dict(cfg)
    tasks = {t["name"]: t for t in raw["tasks"]}
    raw["tasks"], raw["seed"] = [tasks[name] for name in order], seed
    reordered = validate(raw, f"{cfg.where()} (order {','.join(order)}, seed {seed})")
    reordered._source = cfg._source
    return reordered


def plan_sweep(config: str | Path, variants: list[str], orders: list[tuple[str, ...]] | None,
               seeds: list[int] | None, out: Path, overrides: list[str] | None = None,
               order_labels: list[str] | None = None) -> list[tuple[SweepRun, RunConfig]]:
    """Every (variant, order, seed) with its validated config, continual variants first within a group.

    `order_labels` names each order's folder (`<out>/<label>/seed-<s>/<variant>`) whatever the
    number of orders and seeds, so that runs keep their paths, and their cache, when a later
    invocation adds orders or seeds (the benchmark's `order-3` is the paper's order 3 either way).
    """
    overrides = overrides or []
    settings = {v: variant_overrides(v) for v in variants}  # unknown names fail here, before any work
    base = load_config(config, overrides)
    orders = orders or [tuple(t.name for t in base.tasks)]
    seeds = seeds or [base.seed]
    if order_labels is not None and len(order_labels) != len(orders):
        raise ConfigError(f"{len(order_labels)} order labels for {len(orders)} orders")
    flat = order_labels is None and len(orders) == 1 and len(seeds) == 1
    labels = order_labels or [f"order-{k}" for k in range(1, len(orders) + 1)]
    ranked = sorted(variants, key=lambda v: VARIANTS[v]["name"] not in CONTINUAL)  # stable: given order otherwise
    planned = []
    for label, order in zip(labels, orders):
        for seed in seeds:
            for variant in ranked:
                cfg = reorder(load_config(config, [*overrides, *settings[variant]]), order, seed)
                path = out / variant if flat else out / label / f"seed-{seed}" / variant
                planned.append((SweepRun(variant, order, label, seed, path), cfg))
    return planned


def run_sweep(config: str | Path, variants: list[str], out: str | Path, orders: list[tuple[str, ...]] | None = None,
              seeds: list[int] | None = None, overrides: list[str] | None = None, echo=print,
              order_labels: list[str] | None = None) -> list[dict]:
    """Run (or resume) every run of the sweep; write sweep.json and the summary; return the summaries."""
    out = Path(out)
    planned = plan_sweep(config, variants, orders, seeds, out, overrides, order_labels)
    sweep_dir = RunDir(out)
    sweep_dir.check()
    for _, cfg in planned:  # every run's data and plan, before the first one starts
        prepare(cfg)
    sweep_dir.create()
    with run_lock(out):
        return _run_planned(planned, variants, out, config, overrides, echo)


def _run_planned(planned: list[tuple[SweepRun, RunConfig]], variants: list[str], out: Path, config: str | Path,
                 overrides: list[str] | None, echo) -> list[dict]:
    previous = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").exists() else {}
    write_json(out / "sweep.json", {
        "started": previous.get("started") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": str(config), "overrides": overrides or [], "variants": variants,
        "runs": [{"variant": r.variant, "order": list(r.order), "order_label": r.order_label, "seed": r.seed,
                  "path": str(r.path.relative_to(out))} for r, _ in planned],
    })
    first_stage_of: dict[tuple[str, int], Path] = {}  # (order, seed) -> a run whose stage 1 is done
    for n, (sweep_run, cfg) in enumerate(planned, 1):
        group = (sweep_run.order_label, sweep_run.seed)
        echo(f"== [{n}/{len(planned)}] {sweep_run.variant}, {sweep_run.order_label} ({','.join(sweep_run.order)}), "
             f"seed {sweep_run.seed} -> {sweep_run.path}")
        source = first_stage_of.get(group) or _finished_sibling(sweep_run.path, cfg)

        def note(shared: bool, source=source) -> None:
            if shared:
                echo(f"   base evaluation and stage 1 reused from {source} (the same computation)")

        results = run(cfg, sweep_run.path, reuse_from=source, on_reuse=note)
        echo(f"   AR {format_mean_std(results['AR'])}  FWT {format_mean_std(results['FWT'])}  BWT {format_mean_std(results['BWT'])}  "
             f"{results['wall_seconds'] / 60:.1f} min")
        if cfg.method.name in CONTINUAL:
            first_stage_of.setdefault(group, sweep_run.path)
    summary = summarize(out)
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", summary_table(summary) + "\n")
    return summary


def _finished_sibling(path: Path, cfg: RunConfig) -> Path | None:
    """A run beside `path` (same order and seed, from an earlier invocation) whose stage 1 this
    run may reuse, if any; the first in name order, so the choice is reproducible."""
    if (path / "stages").exists() or not path.parent.is_dir():
        return None
    return next((d for d in sorted(path.parent.iterdir()) if d != path and first_stage_shareable(d, cfg)), None)


def finished_runs(out: str | Path) -> list[Path]:
    """Run directories of a sweep that have their results, in sweep order."""
    out = Path(out)
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    return [out / r["path"] for r in runs if (out / r["path"] / "results.json").exists()]


def summarize(out: str | Path) -> list[dict]:
    """Mean ± sample std of AR / FWT / BWT / wall time per variant over the finished runs of a sweep.
    `machines`: what the runs' steps ran on (from their timings); a sweep resumed on another
    machine has no mean wall time, since machines of one kind differ several-fold in speed."""
    out = Path(out)
    sweep = json.loads((out / "sweep.json").read_text())
    by_variant: dict[str, list[Path]] = {v: [] for v in sweep["variants"]}
    for entry in sweep["runs"]:
        if (out / entry["path"] / "results.json").exists():
            by_variant[entry["variant"]].append(out / entry["path"])
    rows = []
    for variant, run_dirs in by_variant.items():
        results = [json.loads((d / "results.json").read_text()) for d in run_dirs]
        machines = sorted({m or "not recorded" for d in run_dirs for m in wall_seconds_by_machine(d)})
        row: dict = {"variant": variant, "runs": len(results)}
        for key in ("AR", "FWT", "BWT", "wall_seconds"):
            values = [r[key] for r in results if r.get(key) is not None and not (key == "wall_seconds" and len(machines) > 1)]
            row[key] = statistics.mean(values) if values else None
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row | {"machines": machines})
    return rows


def format_mean_std(v: float | None, std: float | None = None) -> str:
    """`12.34`, `12.34 ± 0.56` with a std, `–` for a missing value."""
    if v is None:
        return "–"
    return f"{v:.2f}" if std is None else f"{v:.2f} ± {std:.2f}"


def summary_table(summary: list[dict]) -> str:
    """Markdown: one row per variant, mean ± std over its runs (± only with 2 runs or more)."""
    lines = ["| method | runs | AR | FWT | BWT | wall time (min) |", "|---|---:|---:|---:|---:|---:|"]
    for row in summary:
        wall = None if row["wall_seconds"] is None else row["wall_seconds"] / 60
        wall_std = None if row["wall_seconds_std"] is None else row["wall_seconds_std"] / 60
        machines = len(row.get("machines", []))
        wall_cell = f"– (runs on {machines} machines)" if machines > 1 else format_mean_std(wall, wall_std)
        lines.append(f"| {row['variant']} | {row['runs']} | {format_mean_std(row['AR'], row['AR_std'])} | "
                     f"{format_mean_std(row['FWT'], row['FWT_std'])} | {format_mean_std(row['BWT'], row['BWT_std'])} | "
                     f"{wall_cell} |")
    return "\n".join(lines)


__all__ = ["VARIANTS", "TABLE_1", "PAPER_LABELS", "variant_overrides", "plan_sweep", "run_sweep", "summarize", "summary_table", "finished_runs", "format_mean_std"]
