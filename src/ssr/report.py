"""`ssr report`: one Markdown (+ HTML) report over any set of run directories.

For every run: AR / FWT / BWT and wall time in one table, a heatmap of its score matrix, the
average score over the tasks seen so far after every stage (all runs in one plot), and, for
SSR runs, a few synthetic instances (input, the base model's output, the refined output) and
the synthetic-data quality of every task (`ssr.synthesis.quality`; computed where missing).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ssr.io import read_jsonl, write_text  # noqa: E402


def load_run(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no results.json (has the run finished? rerun `ssr run` to resume it)")
    results = json.loads(path.read_text())
    results["dir"] = run_dir
    return results


def run_label(results: dict, cfg_text: str) -> str:
    """A short name: the method, with the replay selection and size and a regulariser when relevant."""
    import yaml

    method = yaml.safe_load(cfg_text).get("method", {})
    label = results["method"]
    if label == "replay":
        size = f"{method['per_task']}/task" if method.get("per_task") else f"{100 * (method.get('ratio') or 0.1):g}%"
        label += f" ({method.get('selection') or 'random'}, {size})"
    if method.get("regularizer") not in (None, "none") and label not in ("l2", "ewc"):
        label += f" + {method['regularizer']}"  # e.g. ssr + ewc
    return label


def trained_tasks(results: dict) -> list[str]:
    """The tasks of stages 1, 2, ... (results.json lists learnt tasks, stage 0, first)."""
    learnt = results.get("learnt") or {}
    return [t for t in results["tasks"] if t not in learnt]


def seen_average(scores: list[list[float | None]], learnt: int = 0) -> list[float | None]:
    """After stage i (i >= 1): mean of a_j(i) over tasks j <= i (and the `learnt` first
    columns, known from the start); None where a score is missing."""
    out = []
    for i in range(1, len(scores)):
        seen = scores[i][: learnt + i]
        out.append(sum(seen) / len(seen) if all(v is not None for v in seen) else None)
    return out


def _fmt(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def heatmap(results: dict, label: str, path: Path) -> None:
    scores = np.array([[np.nan if v is None else v for v in row] for row in results["scores"]], dtype=float)
    tasks = results["tasks"]
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(tasks), 1.2 + 0.55 * len(scores)))
    im = ax.imshow(scores, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_yticks(range(len(scores)), ["base"] + [f"after {i}: {t}" if results["method"] not in ("mtl",) else f"stage {i}" for i, t in enumerate(trained_tasks(results), 1)])
    for i in range(scores.shape[0]):
        for j in range(scores.shape[1]):
            if not math.isnan(scores[i, j]):
                ax.text(j, i, f"{scores[i, j]:.0f}", ha="center", va="center", color="white" if scores[i, j] < 60 else "black", fontsize=10)
    ax.set_title(f"{label}: ROUGE-L", fontsize=11)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def seen_curve(runs: list[tuple[str, dict]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4))
    markers, styles = "osD^vP*X", ["-", "--", "-.", ":"]
    for k, (label, results) in enumerate(runs):
        ys = seen_average(results["scores"], len(results.get("learnt") or {}))
        # a small horizontal offset per run keeps lines that coincide (e.g. at 100) visible
        xs = [i + 0.04 * (k - (len(runs) - 1) / 2) for i, y in enumerate(ys, 1) if y is not None]
        ax.plot(xs, [y for y in ys if y is not None], marker=markers[k % len(markers)],
                linestyle=styles[k % len(styles)], label=label)
    tasks = trained_tasks(runs[0][1])
    ax.set_xticks(range(1, len(tasks) + 1), [f"{i}: {t}" for i, t in enumerate(tasks, 1)])
    ax.set_xlabel("after stage")
    ax.set_ylabel("mean ROUGE-L over tasks seen so far")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def general_section(runs: list[tuple[str, dict]]) -> list[str]:
    """Markdown: each run's general-ability scores (eval.general) before training and after
    each measured stage, and the learnt tasks' change; nothing when no run measured them."""
    from ssr.general import summary

    if not any(r.get("general") or r.get("learnt") for _, r in runs):
        return []
    lines = ["## General abilities", ""]
    for label, r in runs:
        general = r.get("general") or {}
        columns = sorted({k for g in general.values() for k in summary(g)})
        if columns:
            lines += [f"{label}:", "", "| after stage | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
            for stage, g in general.items():
                flat = summary(g)
                lines.append(f"| {stage} | " + " | ".join(_fmt(flat.get(c), 2 if c == "instructions.rougeL" else 4) for c in columns) + " |")
            lines.append("")
        for task, v in (r.get("learnt") or {}).items():
            lines.append(f"{label}: learnt task {task} (stage 0): ROUGE-L {_fmt(v['before'])} before training, "
                         f"{_fmt(v['after'])} after the last stage ({_fmt(v['change'])}).")
        lines.append("")
    lines += ["`instructions.rougeL`: ROUGE-L × 100 of the answers to the held-out general instructions (no judge). "
              "lm-eval metrics as lm-evaluation-harness reports them (accuracy as a fraction).", ""]
    return lines


def synthetic_examples(run_dir: Path, per_task: int = 3) -> list[tuple[str, dict]]:
    out = []
    for path in sorted((run_dir / "synthetic").glob("*.jsonl")):
        if path.stem.endswith((".candidates", ".prompts")):  # not the rehearsed data
            continue
        out += [(path.stem, row) for row in read_jsonl(path)[:per_task]]
    return out


def build_report(run_dirs: list[Path], out_dir: Path, title: str = "Continual instruction tuning report",
                 compute_quality: bool = True) -> Path:
    """Write report.md, report.html and the PNGs into `out_dir`; return the Markdown path.
    `compute_quality`: compute the synthetic-data quality files SSR runs lack (else show those there)."""
    from ssr.synthesis.quality import load_or_compute, quality_markdown
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for d in run_dirs:
        results = load_run(Path(d))
        runs.append((run_label(results, (Path(d) / "config.yaml").read_text()), results))
    labels = [lab for lab, _ in runs]
    if len(set(labels)) < len(labels):  # same method twice (orders, seeds): name by folder, as far up as tells them apart
        depth = next((k for k in range(1, 6) if len({Path(r["dir"]).parts[-k:] for _, r in runs}) == len(runs)), 5)
        runs = [(f"{lab} [{'/'.join(Path(r['dir']).parts[-depth:])}]", r) for lab, r in runs]

    lines = [f"# {title}", "", f"Tasks, in order: {', '.join(runs[0][1]['tasks'])}. Scores are ROUGE-L × 100.", "",
             "| run | AR | FWT | BWT | wall time |", "|---|---:|---:|---:|---:|"]
    for label, r in runs:
        lines.append(f"| {label} | {_fmt(r['AR'])} | {_fmt(r['FWT'])} | {_fmt(r['BWT'])} | {r.get('wall_seconds', 0) / 60:.1f} min |")
    lines += ["", "AR: mean score after the last stage. FWT: mean zero-shot score on the next task. "
              "BWT: mean change of each earlier task from right after its own stage to the end (negative = forgetting).", ""]

    lines += general_section(runs)
    seen_curve(runs, out_dir / "seen_average.png")
    lines += ["## Average over the tasks seen so far", "", "![average over seen tasks](seen_average.png)", ""]
    lines += ["## Score matrices", ""]
    for k, (label, r) in enumerate(runs):
        name = f"heatmap_{k}_{r['method']}.png"
        heatmap(r, label, out_dir / name)
        lines += [f"### {label}", "", f"![{label}]({name})", ""]
    for label, r in runs:
        examples = synthetic_examples(Path(r["dir"]))
        if not examples:
            continue
        lines += [f"## Synthetic instances written by {label}", "",
                  "| task | synthetic input | base model's output | refined output (rehearsed) |", "|---|---|---|---|"]
        for task, row in examples:
            cell = lambda s: "–" if not s else str(s).replace("|", "\\|").replace("\n", " ")[:200]  # noqa: E731
            lines.append(f"| {task} | {cell(row['input'])} | {cell(row.get('base_output'))} | {cell(row['output'])} |")
        lines.append("")
    for label, r in runs:
        if r["method"] == "ssr":
            lines += quality_markdown(label, load_or_compute(Path(r["dir"]), compute_quality))
    md_path = out_dir / "report.md"
    write_text(md_path, "\n".join(lines) + "\n")
    write_text(out_dir / "report.html", markdown_to_html("\n".join(lines), title))
    return md_path


def markdown_to_html(md: str, title: str) -> str:
    """Just enough Markdown (headings, tables, images, paragraphs) for this report."""
    body, in_table = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if set(line) <= set("|-: "):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<p><img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = "body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
