"""The `ssr` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

from ssr.errors import PeerError, SSRError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML run configuration")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=1e-3 (repeatable)")


def cmd_run(args: argparse.Namespace) -> int:
    from ssr.config import load_config
    from ssr.runner import run

    cfg = load_config(args.config, args.overrides)

    def note(shared: bool) -> None:
        if not shared:
            print(f"note: stage 1 of {args.reuse_first_stage} not reused (not finished, another training "
                  "setting, or this run has begun)", file=sys.stderr)

    reuse = Path(args.reuse_first_stage) if args.reuse_first_stage else None
    results = run(cfg, args.output_dir, reuse_from=reuse, on_reuse=note)
    if not _is_main_process():  # under accelerate launch the main process reports, once
        return 0
    print(format_results(results))
    print(f"results: {os.path.join(args.output_dir, 'results.json')}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """SSR synthesis of one task on its own: candidates, stats and the rehearsal set."""
    from ssr.config import load_config
    from ssr.data import load_task
    from ssr.errors import ConfigError
    from ssr.io import write_jsonl
    from ssr.methods import Stage
    from ssr.methods.ssr import SelfSynthesizedRehearsal
    from ssr.models.loading import check_model_source
    from ssr.runner import ModelState, RunContext, resolve_settings

    cfg = resolve_settings(load_config(args.config, args.overrides))
    entry = next((t for t in cfg.tasks if t.name == args.task), None)
    if entry is None:
        raise ConfigError(f"--task {args.task!r} is not in the config (tasks: {[t.name for t in cfg.tasks]})")
    check_model_source(cfg)
    task = load_task(entry, cfg.data, cfg.method.n_demos, cfg.eval.max_examples, cfg.eval.max_new_tokens, cfg.seed)
    method = SelfSynthesizedRehearsal(cfg, [task])
    problems = method.check_screen() + method.check_demos(task)
    if problems:
        raise ConfigError("\n".join(problems))
    out = Path(args.output_dir)
    stage = Stage(1, f"1-{task.name}", (task.name,))
    models = ModelState(cfg, out)
    # Refine with a fine-tuned model (e.g. stages/<i>-<task>/adapter of a run), or the base model.
    models.serve_as(stage, Path(args.adapter) if args.adapter else None)
    ctx = RunContext(cfg, out, [task], models, [stage])
    rows = method.build_rehearsal(task, stage, ctx)
    path = method.rehearsal_path(ctx, task.name)
    write_jsonl(path, rows)
    print(f"{len(rows)} synthetic instances: {path}")
    print(f"candidates: {path.with_suffix('.candidates.jsonl')}")
    return 0


DEMO_VARIANTS = ["sequential", "replay-random-10", "ssr", "mtl"]


def cmd_demo(args: argparse.Namespace) -> int:
    """The built-in demo: the main methods on the built-in tasks, then one report."""
    from ssr.errors import ConfigError
    from ssr.report import build_report
    from ssr.sweep import run_sweep

    _one_process("demo")
    variants = args.methods.split(",") if args.methods else DEMO_VARIANTS
    unknown = [m for m in variants if m not in DEMO_VARIANTS]
    if unknown:
        raise ConfigError(f"--methods: unknown {unknown}; the demo runs {DEMO_VARIANTS}")
    out = Path(args.output_dir)
    run_sweep(Path(__file__).parent / "configs" / "demo.yaml", variants, out, overrides=args.overrides,
              echo=lambda line: print(line, flush=True))
    run_dirs = [out / v for v in variants]
    report = build_report(run_dirs, out, title="ssr demo: built-in tasks on SmolLM2-135M-Instruct")
    print()
    print(comparison_table(run_dirs))
    print(f"report: {report}")
    return 0


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _one_process(command: str) -> None:
    """`ssr sweep` and `ssr demo` run their runs one after another in one process."""
    from ssr.errors import ConfigError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"ssr {command} runs in one process; under accelerate launch, launch `ssr run` for each run "
                          "(README, Scaling)")


def _parse_seeds(text: str | None) -> list[int] | None:
    from ssr.errors import ConfigError

    if not text:
        return None
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 1,2,3") from None


def cmd_sweep(args: argparse.Namespace) -> int:
    """Methods x task orders x seeds, each a cached run; mean ± std per method."""
    from ssr.report import build_report
    from ssr.sweep import TABLE_1, finished_runs, run_sweep, summary_table

    _one_process("sweep")
    variants = args.methods.split(",") if args.methods else list(TABLE_1)
    orders = [tuple(o.split(",")) for o in args.order] or None
    out = Path(args.output_dir)
    summary = run_sweep(args.config, variants, out, orders, _parse_seeds(args.seeds), args.overrides,
                        echo=lambda line: print(line, flush=True))
    report = build_report(finished_runs(out), out, title=f"ssr sweep: {args.config}")
    print()
    print(summary_table(summary))
    print(f"summary: {out / 'summary.md'}\nreport: {report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ssr.report import build_report

    run_dirs = [Path(d) for d in args.run_dirs]
    out = Path(args.output_dir) if args.output_dir else run_dirs[0].parent
    try:
        report = build_report(run_dirs, out, compute_quality=not args.no_compute_quality)
    except FileNotFoundError as err:
        from ssr.errors import SSRError

        raise SSRError(str(err)) from None
    print(comparison_table(run_dirs))
    print(f"report: {report}")
    return 0


def cmd_quality(args: argparse.Namespace) -> int:
    """The synthetic-data quality of SSR run directories (finished or not), where missing or stale."""
    from ssr.errors import SSRError
    from ssr.synthesis.quality import quality_summary, run_quality

    for d in map(Path, args.run_dirs):
        if not (d / "config.yaml").is_file():
            raise SSRError(f"{d}: no config.yaml (not a run directory)")
        out = Path(args.output_dir) / d.name if args.output_dir and len(args.run_dirs) > 1 else args.output_dir
        by_task = run_quality(d, Path(out) if out else None, force=args.force)
        if not by_task:
            print(f"{d}: no synthetic data (not an SSR run, or no task synthesized yet)")
            continue
        print(quality_summary(d, by_task))
        print(f"quality: {(Path(out) if out else d) / 'synthetic'}/<task>.quality.json")
    return 0


def comparison_table(run_dirs) -> str:
    from ssr.report import load_run

    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"{'run':<28}{'AR':>8}{'FWT':>8}{'BWT':>8}{'minutes':>9}"]
    for d in run_dirs:
        r = load_run(d)
        lines.append(f"{d.name:<28}{fmt(r['AR']):>8}{fmt(r['FWT']):>8}{fmt(r['BWT']):>8}{r.get('wall_seconds', 0) / 60:>9.1f}")
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    from ssr.compare import paired_difference

    print(f"{args.run_a} minus {args.run_b}, paired over the same evaluation rows (± standard error):")
    for metric in ("AR", "FWT", "BWT"):
        diff, se = paired_difference(args.run_a, args.run_b, metric)
        verdict = "resolved" if abs(diff) > 2 * se else "not resolved"
        print(f"  {metric:<4}{diff:+8.2f} ± {se:.2f}   ({verdict} at two standard errors)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """A dry run: the config, every data file and the method's plan, no model. Prints the
    resolved config and what `ssr run` would do."""
    from ssr.config import load_config, to_yaml
    from ssr.runner import prepare

    cfg = load_config(args.config, args.overrides)
    _, method = prepare(cfg)
    print(to_yaml(cfg), end="")
    print(f"# ok: {len(cfg.tasks)} tasks, data and plan valid; `ssr run` would do:")
    print(f"#   evaluate the base model on {', '.join(t.name for t in method.tasks)}")
    stage0 = method.learnt_stage()
    if stage0 is not None:
        kept = "synthesise and keep" if method.name == "ssr" else "keep" if method.name == "replay" else "rehearse nothing of"
        print(f"#   stage 0 (learnt, not trained): {', '.join(stage0.tasks)}; {kept} them for later stages")
    approx = " (at most)" if method.name == "ssr" else ""
    for stage in method.plan():
        rows = method.planned_rows(stage)
        parts = ", ".join(f"{k} {v}" for k, v in rows.items())
        print(f"#   stage {stage.name}: train on {sum(rows.values())} rows{approx if len(rows) > len(stage.tasks) else ''} "
              f"({parts}); evaluate {', '.join(stage.evaluate)}")
    return 0


def format_results(results: dict) -> str:
    """The score matrix and metrics as a small text table."""
    names = results["tasks"]
    width = max(8, *(len(n) for n in names))
    lines = [f"method: {results['method']}", "stage".ljust(8) + "".join(n.rjust(width + 1) for n in names)]
    for i, row in enumerate(results["scores"]):
        cells = "".join(("-" if v is None else f"{v:.1f}").rjust(width + 1) for v in row)
        lines.append(("base" if i == 0 else str(i)).ljust(8) + cells)
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines.append(f"AR {fmt(results['AR'])}  FWT {fmt(results['FWT'])}  BWT {fmt(results['BWT'])}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssr", description="Continual instruction tuning with Self-Synthesized Rehearsal.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level on the console")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run (or resume) a continual-learning sequence")
    _add_config_args(p)
    p.add_argument("--output-dir", "-o", required=True, help="run directory (rerun the same command to resume)")
    p.add_argument("--reuse-first-stage", metavar="RUN_DIR",
                   help="start from the base evaluation and stage 1 of a finished sequential/replay/ssr run "
                        "with the same settings apart from method.* (stage 1 is the same computation)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("synth", help="run SSR synthesis for one task of a config, on its own")
    _add_config_args(p)
    p.add_argument("--task", required=True, help="task name from the config")
    p.add_argument("--output-dir", "-o", required=True, help="writes synthetic/<task>.{candidates.jsonl,stats.json,jsonl}")
    p.add_argument("--adapter", help="PEFT adapter of the model that refines the outputs (default: the base model)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("demo", help="run the built-in demo (every method) and write a report")
    p.add_argument("--output-dir", "-o", default="runs/demo")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(DEMO_VARIANTS)}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the demo config")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="run methods x task orders x seeds (cached, resumable) and report mean ± std")
    _add_config_args(p)
    p.add_argument("--output-dir", "-o", required=True, help="sweep directory (rerun the same command to resume)")
    p.add_argument("--methods", help="comma-separated variants: sequential, replay-random-1, replay-kmeans-1, "
                                     "replay-random-10, replay-kmeans-10, ssr, mtl, single, l2, ewc, osf, ssr-ewc, "
                                     "and SSR's ablations ssr-no-refine, ssr-random, ssr-supervised, ssr-input-demos "
                                     "(default: the paper's Table 1 rows)")
    p.add_argument("--order", action="append", default=[], metavar="T1,T2,...",
                   help="a task order (comma-separated task names, repeatable; default: the config's order)")
    p.add_argument("--seeds", metavar="S1,S2,...", help="comma-separated seeds (default: the config's seed)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="build a report (tables, heatmaps, curves) over run directories")
    p.add_argument("run_dirs", nargs="+", help="run directories (each with results.json)")
    p.add_argument("--output-dir", "-o", help="where report.md goes (default: the parent of the first run)")
    p.add_argument("--no-compute-quality", action="store_true",
                   help="show the synthetic-data quality files SSR runs have, without computing missing ones")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("quality", help="compute the synthetic-data quality of SSR runs "
                                       "(synthetic/<task>.quality.json), where missing or stale")
    p.add_argument("run_dirs", nargs="+", help="SSR run directories")
    p.add_argument("--output-dir", "-o", help="write <dir>/synthetic/<task>.quality.json here instead of into the run "
                                              "(one subfolder per run when several)")
    p.add_argument("--force", action="store_true", help="recompute even when up to date")
    p.set_defaults(func=cmd_quality)

    p = sub.add_parser("compare", help="difference of AR / FWT / BWT between two runs of the same tasks, "
                                       "with its standard error over the paired evaluation rows")
    p.add_argument("run_a", help="run directory")
    p.add_argument("run_b", help="run directory evaluated on the same rows (e.g. another method, same order)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("validate", help="check a config, its data files and the method's plan (no model); "
                                        "print it resolved and what would run")
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the run log (a file) records INFO regardless
        handler.setLevel(level)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not the user's concern
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except PeerError as err:  # the main process failed and has said why; the others stop quietly
        return err.exit_code
    except SSRError as err:  # one line per problem (the plan checks report them all at once)
        if not _is_main_process():
            return err.exit_code  # every process found the same problem: the main process reports it
        print("\n".join(f"error: {line}" for line in str(err).splitlines()), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:  # SIGINT (Ctrl-C), or SIGTERM through `_terminate`
        code = err.exit_code if isinstance(err, Terminated) else 130
        print(f"interrupted ({'SIGTERM' if code == 143 else 'SIGINT'}): finished steps are saved; "
              "rerun the same command to resume", file=sys.stderr)
        return code
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every `finally` runs (temporaries removed, lock released)."""

    exit_code = 128 + signal.SIGTERM


def _terminate(signum, frame) -> None:
    raise Terminated()


if __name__ == "__main__":
    sys.exit(main())
