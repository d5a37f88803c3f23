"""What SSR's synthetic data is like, per task: `synthetic/<task>.quality.json`.

Computed at the end of each task's synthesis (after refinement) and by `ssr quality RUN_DIR`
or `ssr report` for runs that lack it. Sections of the file:

- `counts`: prompts, generations, parsed chunks (pairs with an `Output:` / input-only),
  truncated, duplicates, copies of a demonstration, kept, selected, rehearsed, and every
  verdict. Counted from the candidates file, not copied from `<task>.stats.json`.
- `fidelity`: are the synthetic inputs inputs of this task? Every input is embedded with the
  run's own selection encoder (`method.embedding_model` / `embedding_pooling`, the model K-means
  uses; `ssr.selection.embed` keeps one loaded copy). The *reference* is the real training
  inputs of **every task of the config** (not only the tasks seen so far: with one task seen,
  "nearest task" would always be the task itself; the reference is the same for every task
  and every task order, so the figures compare across both). It is a diagnostic, read after
  the fact: nothing of a later task reaches training. Each task contributes at most
  `REFERENCE_CAP` training inputs (a seeded sample, stratified like any subset), so no task
  wins the nearest-neighbour vote by size alone. An open-domain task's instances (synthetic and
  real) are compared by their query, instruction + input, as selection embeds them: most of them
  have no input, and they differ by instruction.
  * `own_task_share`: the share of inputs whose nearest real input (cosine) belongs to their own
    task (a tie counts for the own task);
  * `nn_similarity`: the mean cosine similarity of each input to its nearest real training
    input of its own task.
  Both for the kept and the selected synthetic inputs, and for the task's held-out real inputs
  (its evaluation rows: the ceiling) and the other tasks' held-out inputs (`nn_similarity`
  only: the floor).
- `diversity`: distinct-2 (distinct word bigrams / all word bigrams, within each input, words =
  lower-cased runs of Unicode word characters) of the kept and selected inputs, each next to a
  seeded sample of as many real training inputs (distinct-n falls as a set grows, so only
  equal sizes compare); and how many K-means clusters of the kept inputs the selection covers
  (the selection's own clusters; for random selection, K-means refitted with the same K and seed).
- `outputs`: the rehearsed (refined) outputs. For classification-like tasks
  (`ssr.data.subsets.is_classification` of the real training outputs) the share equal to a real
  label after SuperNI's exact-match normalisation, and their distribution over labels; for every
  task, output length in words (as above) against the real training outputs. The base model's
  outputs of the same candidates are given beside them.
- `examples`: 5 kept candidates (selected ones first, with their refined output) and 5 dropped
  ones (one per verdict in turn, most frequent verdict first), seeded.

The file records a `fingerprint` of everything it was computed from (the task's synthetic files,
every task's real rows, the settings); it is recomputed only when that changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from statistics import mean, median

import numpy as np

from ssr.data.subsets import is_classification, sample_subset
from ssr.data.task import Task
from ssr.evaluation import normalize_answer
from ssr.io import read_jsonl, write_json
from ssr.models.templates import query_text
from ssr.synthesis.pipeline import selection_text

log = logging.getLogger(__name__)

QUALITY_VERSION = 2
"""Bump when a figure's definition changes: existing files are then recomputed (2: open-domain
instances are compared by their query, instruction + input, as selection embeds them)."""
REFERENCE_CAP = 500
"""Real inputs per task and split in the embedding reference (a seeded sample beyond it)."""
N_EXAMPLES = 5
TEXT_CHARS = 600
"""Example texts are cut to this many characters in the file."""

KEPT = "kept"
Embedder = Callable[[list[str]], np.ndarray]
"""Texts -> L2-normalised embeddings, one row per text."""


def quality_path(folder: Path, task: str) -> Path:
    return Path(folder) / f"{task}.quality.json"


# ---------------------------------------------------------------- figures on plain data

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased runs of Unicode word characters (the unit of distinct-2 and of lengths)."""
    return _WORD.findall(text.lower())


def distinct_n(texts: Sequence[str], n: int = 2) -> float | None:
    """Distinct n-grams / all n-grams (Li et al., 2016), n-grams taken within each text.
    None when no text has n words."""
    grams = []
    for text in texts:
        w = words(text)
        grams += [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def nearest_tasks(queries: np.ndarray, own: str, references: dict[str, np.ndarray]) -> list[str]:
    """For each row of `queries`, the task whose reference holds its most similar row (cosine:
    rows are L2-normalised). A tie with `own` goes to `own`."""
    names = [own] + [t for t in references if t != own and len(references[t])]  # own first: argmax keeps the first of ties
    if len(queries) == 0:
        return []
    best = np.stack([(queries @ references[t].T).max(axis=1) if len(references[t]) else np.full(len(queries), -np.inf)
                     for t in names], axis=1)
    return [names[k] for k in best.argmax(axis=1)]


def own_task_share(queries: np.ndarray, own: str, references: dict[str, np.ndarray]) -> float | None:
    """Share of `queries` whose nearest real input belongs to `own`."""
    nearest = nearest_tasks(queries, own, references)
    return sum(t == own for t in nearest) / len(nearest) if nearest else None


def mean_nn_similarity(queries: np.ndarray, reference: np.ndarray) -> float | None:
    """Mean over `queries` of the cosine similarity to the most similar row of `reference`."""
    if len(queries) == 0 or len(reference) == 0:
        return None
    return float((queries @ reference.T).max(axis=1).mean())


def candidate_counts(candidates: list[dict], prompts: int, prompts_skipped: int, rehearsed: int | None) -> dict:
    """The pipeline's funnel, counted from the candidates file.

    Verdicts partition the candidates; `parsed` (chunks the parser returned) splits into
    `parsed_pairs` (with an `Output:`) and `input_only`. `duplicates` counts repeated inputs
    (`duplicate`), `duplicate_generations` repeated whole continuations."""
    verdicts = Counter(c["verdict"] for c in candidates)
    parsed = [c for c in candidates if c["verdict"] not in ("no_instance", "duplicate_continuation")]
    generations = {(c["prompt_id"], c["sample"]) for c in candidates}
    by_length = {(c["prompt_id"], c["sample"]) for c in candidates if c.get("finish_reason") == "length"}
    kept = [c for c in candidates if c["verdict"] == KEPT]
    return {
        "prompts": prompts,
        "prompts_skipped_too_long": prompts_skipped,
        "generations": len(generations),
        "generations_ended_by_length": len(by_length),
        "duplicate_generations": verdicts["duplicate_continuation"],
        "no_instance": verdicts["no_instance"],
        "parsed": len(parsed),
        "parsed_pairs": sum(c["base_output"] is not None for c in parsed),
        "input_only": sum(c["base_output"] is None for c in parsed),
        "truncated": verdicts["truncated"],
        "duplicates": verdicts["duplicate"],
        "copies_demo": verdicts["copies_demo"],
        "screened": verdicts["screened"],
        "kept": len(kept),
        "kept_input_only": sum(not c["base_output"] for c in kept),
        "selected": sum(bool(c.get("selected")) for c in candidates),
        "rehearsed": rehearsed,
        "verdicts": dict(sorted(verdicts.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _length_summary(texts: Sequence[str]) -> dict | None:
    lengths = [len(words(t)) for t in texts]
    return {"n": len(lengths), "mean": round(mean(lengths), 2), "median": median(lengths)} if lengths else None


def output_quality(refined: Sequence[str], base: Sequence[str | None], real_outputs: Sequence[str]) -> dict:
    """Rehearsed outputs against the task's real training outputs: label share (classification
    tasks), label distribution, and length in words."""
    real = [o.strip() for o in real_outputs]
    classification = bool(real) and is_classification(real)
    out: dict = {"classification": classification, "n": len(refined),
                 "length_words": {"refined": _length_summary(refined),
                                  "base": _length_summary([b for b in base if b is not None]),
                                  "real_train": _length_summary(real)}}
    if classification:
        labels = {normalize_answer(label): label for label in sorted(set(real))}  # normalised -> as written
        label_of = lambda text: labels.get(normalize_answer(text)) if text is not None else None  # noqa: E731
        counts = Counter(label_of(t) or "(not a label)" for t in refined)
        out["labels"] = sorted(set(real))
        out["label_share"] = round(sum(label_of(t) is not None for t in refined) / len(refined), 4) if refined else None
        out["base_label_share"] = round(sum(label_of(t) is not None for t in base) / len(base), 4) if base else None
        out["label_counts"] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        out["real_label_counts"] = dict(sorted(Counter(real).items(), key=lambda kv: (-kv[1], kv[0])))
    return out


def _cut(text: str | None) -> str | None:
    return text if text is None or len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + "…"


def pick_examples(candidates: list[dict], refined_by_id: dict[int, str], seed: str, k: int = N_EXAMPLES) -> dict:
    """`k` kept candidates (selected first) and `k` dropped ones, one verdict after another
    (most frequent first), so the dropped examples show the different reasons."""
    rng = random.Random(seed)

    def row(c: dict) -> dict:
        r = {"candidate_id": c["candidate_id"], "verdict": c["verdict"], "selected": bool(c.get("selected")),
             "input": _cut(c["input"]), "base_output": _cut(c["base_output"])}
        if c["candidate_id"] in refined_by_id:
            r["refined_output"] = _cut(refined_by_id[c["candidate_id"]])
        if c.get("screen_rule"):
            r["screen_rule"] = c["screen_rule"]
        if c["input"] is None:  # nothing was parsed: show what was generated
            r["continuation"] = _cut(c["continuation"])
        return r

    kept = [c for c in candidates if c["verdict"] == KEPT]
    selected = [c for c in kept if c.get("selected")]
    others = [c for c in kept if not c.get("selected")]
    chosen = rng.sample(selected, min(k, len(selected)))
    chosen += rng.sample(others, min(k - len(chosen), len(others)))
    by_verdict: dict[str, list[dict]] = {}
    for c in candidates:
        if c["verdict"] != KEPT:
            by_verdict.setdefault(c["verdict"], []).append(c)
    queues = [rng.sample(v, len(v)) for _, v in sorted(by_verdict.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    dropped = []
    while len(dropped) < k and any(queues):
        for q in queues:
            if q and len(dropped) < k:
                dropped.append(q.pop(0))
    return {"kept": [row(c) for c in sorted(chosen, key=lambda c: c["candidate_id"])],
            "dropped": [row(c) for c in dropped]}


# ---------------------------------------------------------------- embeddings

@lru_cache(maxsize=2)
def _embed_unique(model: str, pooling: str, texts: tuple[str, ...]) -> np.ndarray:
    from ssr.selection import embed

    return embed(list(texts), model, pooling=pooling) if texts else np.zeros((0, 1), dtype=np.float32)


def run_embedder(model: str, pooling: str) -> Embedder:
    """The run's selection encoder (`ssr.selection.embed`: one loaded copy per process).

    Texts are embedded as a sorted set, so a vector never depends on what else was asked
    before (batching changes float rounding); the last sets are remembered, so the tasks of a
    run embed the shared reference once."""
    def embed_texts(texts: list[str]) -> np.ndarray:
        unique = tuple(sorted(set(texts)))
        vectors = _embed_unique(model, pooling, unique)
        index = {t: i for i, t in enumerate(unique)}
        return vectors[[index[t] for t in texts]] if texts else np.zeros((0, vectors.shape[1]), dtype=np.float32)

    return embed_texts


# ---------------------------------------------------------------- one task

def instance_text(task: Task, inst) -> str:
    """What a real instance is compared by: its input, or its query (instruction + input) for an
    open-domain task, whose instances differ by instruction (the text selection embeds)."""
    return query_text(inst.definition, inst.input) if task.open_domain else inst.input


def _reference(task: Task, split: str, seed: int) -> list[str]:
    rows = task.train if split == "train" else task.eval
    return [instance_text(task, inst) for inst in sample_subset(rows, REFERENCE_CAP, f"{seed}:{task.name}:quality-{split}")]


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def _synthetic_files(folder: Path, task: str) -> dict[str, Path]:
    return {"candidates": folder / f"{task}.candidates.jsonl", "prompts": folder / f"{task}.prompts.jsonl",
            "stats": folder / f"{task}.stats.json", "rehearsal": folder / f"{task}.jsonl"}


def compute_quality(task: Task, tasks: list[Task], folder: Path, embed_texts: Embedder, *, seed: int,
                    stage_seed: int, n_clusters: int) -> dict:
    """Every figure of `<task>.quality.json` (see the module docstring) from the task's files in
    `folder`. `tasks`: every task of the config (the reference); `seed`: the run's seed (reference
    samples); `stage_seed`: the seed synthesis used for this task (K-means refit, examples)."""
    files = _synthetic_files(Path(folder), task.name)
    candidates = read_jsonl(files["candidates"])
    stats = json.loads(files["stats"].read_text()) if files["stats"].exists() else {}
    rehearsed = read_jsonl(files["rehearsal"]) if files["rehearsal"].exists() else None
    prompts = stats.get("prompts", len(read_jsonl(files["prompts"])) if files["prompts"].exists() else None)
    counts = candidate_counts(candidates, prompts, stats.get("prompts_skipped_too_long", 0),
                              None if rehearsed is None else len(rehearsed))

    kept = [c for c in candidates if c["verdict"] == KEPT]
    selected = sorted((c for c in kept if c.get("selected")), key=lambda c: c.get("selection_rank", 0))
    train_refs = {t.name: _reference(t, "train", seed) for t in tasks}
    eval_refs = {t.name: _reference(t, "eval", seed) for t in tasks}
    all_refs = [x for t in tasks for x in train_refs[t.name] + eval_refs[t.name]]
    ref_vectors = embed_texts(all_refs)  # one call for the whole reference: the same for every task
    ref_emb, eval_emb, at = {}, {}, 0
    for t in tasks:
        ref_emb[t.name] = ref_vectors[at : at + len(train_refs[t.name])]
        at += len(train_refs[t.name])
        eval_emb[t.name] = ref_vectors[at : at + len(eval_refs[t.name])]
        at += len(eval_refs[t.name])
    kept_emb = embed_texts([selection_text(c) for c in kept])
    sel_pos = {c["candidate_id"]: i for i, c in enumerate(kept)}
    sel_emb = kept_emb[[sel_pos[c["candidate_id"]] for c in selected]] if selected else kept_emb[:0]
    own_train = ref_emb[task.name]
    others_eval = np.concatenate([eval_emb[t.name] for t in tasks if t.name != task.name] or [own_train[:0]])

    def fidelity(vectors: np.ndarray, share: bool = True) -> dict:
        out = {"n": len(vectors), "nn_similarity": _round(mean_nn_similarity(vectors, own_train))}
        if share:
            nearest = nearest_tasks(vectors, task.name, ref_emb)
            out["own_task_share"] = _round(sum(t == task.name for t in nearest) / len(nearest)) if nearest else None
            out["nearest_task_counts"] = dict(sorted(Counter(nearest).items(), key=lambda kv: (-kv[1], kv[0])))
        return out

    fid = {
        "reference": {"tasks": [t.name for t in tasks], "train_inputs": {t: len(v) for t, v in train_refs.items()},
                      "cap_per_task": REFERENCE_CAP},
        "kept": fidelity(kept_emb), "selected": fidelity(sel_emb),
        "heldout": fidelity(eval_emb[task.name]),  # the ceiling: real inputs the model never trained on
        "other_tasks_heldout": fidelity(others_eval, share=False),  # the floor
    }

    real_train = [instance_text(task, inst) for inst in task.train]
    sample = lambda n: random.Random(f"{seed}:{task.name}:distinct").sample(real_train, min(n, len(real_train)))  # noqa: E731
    diversity = {"distinct_2": {
        "kept": _round(distinct_n([selection_text(c) for c in kept])),
        "real_same_size_as_kept": _round(distinct_n(sample(len(kept)))),
        "selected": _round(distinct_n([selection_text(c) for c in selected])),
        "real_same_size_as_selected": _round(distinct_n(sample(len(selected)))),
    }, "clusters": cluster_coverage(kept, kept_emb, n_clusters, stage_seed)}

    refined = [r["output"] for r in rehearsed] if rehearsed is not None else []
    by_id = {c["candidate_id"]: c for c in candidates}
    base = [by_id[r["candidate_id"]]["base_output"] for r in rehearsed if r.get("candidate_id") in by_id] if rehearsed else []
    refined_by_id = {r["candidate_id"]: r["output"] for r in rehearsed or [] if "candidate_id" in r}
    return {
        "version": QUALITY_VERSION,
        "task": task.name,
        "counts": counts,
        "fidelity": fid,
        "diversity": diversity,
        "outputs": output_quality(refined, base, [inst.output for inst in task.train]),
        "examples": pick_examples(candidates, refined_by_id, f"{stage_seed}:{task.name}:examples"),
    }


def cluster_coverage(kept: list[dict], kept_emb: np.ndarray, n_clusters: int, seed: int) -> dict:
    """How many K-means clusters of the kept inputs hold a selected one. The selection's own
    clusters when it recorded them (K-means selection), else K-means refitted here with the
    run's K and the task's seed (random selection)."""
    if not kept:
        return {"source": None, "clusters": 0, "covered": 0}
    labels = [c.get("cluster") for c in kept]
    source = "selection"
    if any(label is None for label in labels):
        from ssr.selection import kmeans_select

        labels = kmeans_select(kept_emb, len(kept), n_clusters, seed).clusters
        source = "refit"
    covered = {label for label, c in zip(labels, kept) if c.get("selected")}
    return {"source": source, "clusters": len(set(labels)), "covered": len(covered)}


# ---------------------------------------------------------------- cached, per task and per run

def fingerprint(task: Task, tasks: list[Task], folder: Path, settings: dict) -> str:
    """sha256 of what the figures are computed from: the task's synthetic files (not the
    stats, which hold a timing), every task's real rows, the settings and QUALITY_VERSION."""
    h = hashlib.sha256(json.dumps({"version": QUALITY_VERSION, "task": task.name, **settings}, sort_keys=True).encode())
    for name, path in _synthetic_files(Path(folder), task.name).items():
        if name != "stats":
            h.update(path.read_bytes() if path.exists() else b"\0missing")
    for t in tasks:
        h.update(json.dumps([t.name, [(i.input, i.output) for i in t.train], [i.input for i in t.eval]]).encode())
    return h.hexdigest()


def ensure_quality(task: Task, tasks: list[Task], folder: Path, method_cfg, *, seed: int, stage_seed: int,
                   out_folder: Path | None = None, force: bool = False,
                   embed_texts: Embedder | None = None) -> tuple[dict, bool]:
    """`<task>.quality.json` in `out_folder` (default `folder`), computed unless it exists with
    the same fingerprint. Returns (figures, whether they were computed now)."""
    settings = {"tasks": [t.name for t in tasks], "seed": seed, "stage_seed": stage_seed,
                "embedding_model": method_cfg.embedding_model, "embedding_pooling": method_cfg.embedding_pooling,
                "n_clusters": method_cfg.n_clusters, "reference_cap": REFERENCE_CAP}
    path = quality_path(out_folder or folder, task.name)
    fp = fingerprint(task, tasks, folder, settings)
    if path.exists() and not force:
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            existing = None
        if isinstance(existing, dict) and existing.get("fingerprint") == fp:
            return existing, False
    embed_texts = embed_texts or run_embedder(method_cfg.embedding_model, method_cfg.embedding_pooling)
    figures = compute_quality(task, tasks, folder, embed_texts, seed=seed, stage_seed=stage_seed,
                              n_clusters=method_cfg.n_clusters)
    figures["settings"] = settings
    figures["fingerprint"] = fp
    write_json(path, figures)
    log.info("task %s: synthetic-data quality written to %s", task.name, path)
    return figures, True


def run_quality(run_dir: Path, out_dir: Path | None = None, force: bool = False) -> dict[str, dict]:
    """Quality of every synthetic set of an SSR run directory (finished or not), computed where
    missing or stale; written to `<out_dir or run_dir>/synthetic/`. {} for other methods."""
    from ssr.config import load_config
    from ssr.data import load_task

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    if cfg.method.name != "ssr":
        return {}
    folder = run_dir / "synthetic"
    tasks = [load_task(t, cfg.data, cfg.method.n_demos, cfg.eval.max_examples, cfg.eval.max_new_tokens, cfg.seed)
             for t in cfg.tasks]
    out = {}
    for index, task in enumerate(tasks, 1):  # SSR's stage i learns task i: synthesis seed = seed + i
        if (folder / f"{task.name}.candidates.jsonl").exists():
            out[task.name], _ = ensure_quality(task, tasks, folder, cfg.method, seed=cfg.seed, stage_seed=cfg.seed + index,
                                               out_folder=(Path(out_dir) / "synthetic") if out_dir else None, force=force)
    return out


def load_or_compute(run_dir: Path, compute: bool = True) -> dict[str, dict]:
    """Quality figures of a run for the report: computed where missing or stale when `compute`
    (a run that cannot be written to, or whose data moved, falls back to the files it has,
    with a warning), else only the files already there."""
    from ssr.errors import SSRError

    run_dir = Path(run_dir)
    if compute:
        try:
            return run_quality(run_dir)
        except (OSError, SSRError) as err:
            log.warning("%s: synthetic-data quality not computed (%s); showing the files already there", run_dir, err)
    found = {}
    for path in sorted((run_dir / "synthetic").glob("*.quality.json")):
        figures = json.loads(path.read_text(encoding="utf-8"))
        found[figures["task"]] = figures
    return found


# ---------------------------------------------------------------- report section

def _f(v, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _cell(text) -> str:
    """One Markdown table cell: no line breaks or other control characters, pipes escaped, cut."""
    if text is None or text == "":
        return "–"
    flat = "".join(ch if ch.isprintable() else " " for ch in str(text))
    return flat[:200].replace("|", "\\|")


def quality_markdown(label: str, by_task: dict[str, dict]) -> list[str]:
    """Markdown lines of one run's synthetic-data quality: counts, figures, examples."""
    if not by_task:
        return []
    lines = [f"## Synthetic data of {label}", "",
             "| task | prompts | generations | parsed pairs | input-only | truncated | duplicates | copies of a demo | kept | selected |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for task, q in by_task.items():
        c = q["counts"]
        lines.append(f"| {task} | {c['prompts']} | {c['generations']} | {c['parsed_pairs']} | {c['input_only']} | "
                     f"{c['truncated']} | {c['duplicates'] + c['duplicate_generations']} | {c['copies_demo']} | "
                     f"{c['kept']} | {c['selected']} |")
    lines += ["", "Parsed pairs and input-only: chunks with and without an `Output:`. Duplicates: repeated inputs "
              "plus repeated whole generations. Selected: kept candidates chosen for rehearsal.", "",
              "| task | own task nearest: kept / selected / held-out real | similarity to real train inputs: "
              "kept / selected / held-out real (ceiling) / other tasks' real (floor) | distinct-2: selected (real) / "
              "kept (real) | clusters covered | refined = a real label (base) | output words: refined / base / real |",
              "|---|---|---|---|---|---|---|"]
    for task, q in by_task.items():
        fid, div, out = q["fidelity"], q["diversity"], q["outputs"]
        d2, cl, lw = div["distinct_2"], div["clusters"], out["length_words"]
        share = " / ".join(_f(fid[k].get("own_task_share")) for k in ("kept", "selected", "heldout"))
        sim = " / ".join(_f(fid[k]["nn_similarity"]) for k in ("kept", "selected", "heldout", "other_tasks_heldout"))
        labels = f"{_f(out.get('label_share'))} ({_f(out.get('base_label_share'))})" if out["classification"] else "– (not classification)"
        mean_words = " / ".join(_f(lw[k]["mean"] if lw[k] else None, 1) for k in ("refined", "base", "real_train"))
        lines.append(f"| {task} | {share} | {sim} | {_f(d2['selected'])} ({_f(d2['real_same_size_as_selected'])}) / "
                     f"{_f(d2['kept'])} ({_f(d2['real_same_size_as_kept'])}) | {cl['covered']} of {cl['clusters']} | "
                     f"{labels} | {mean_words} |")
    tasks = next(iter(by_task.values()))["fidelity"]["reference"]["tasks"]
    lines += ["", f"Nearest task: the task of the most similar real training input among all tasks of the run "
              f"({', '.join(tasks)}; at most {REFERENCE_CAP} per task), by cosine similarity of "
              f"`{next(iter(by_task.values()))['settings']['embedding_model']}` embeddings. Similarity: mean over inputs "
              "of the cosine to the nearest real training input of the task itself. Held-out real: the task's evaluation "
              "inputs. Distinct-2 of real training inputs in parentheses, over as many inputs. Clusters: K-means clusters "
              "of the kept inputs that hold a selected one. Label share (classification tasks): refined outputs equal to a "
              "real label after SuperNI normalisation, base model's outputs in parentheses. Lengths: mean words.", "",
              "| task | candidate | verdict | input | base model's output | refined output |", "|---|---|---|---|---|---|"]
    for task, q in by_task.items():
        for kind in ("kept", "dropped"):
            for e in q["examples"][kind]:
                verdict = e["verdict"] + (" (selected)" if e["selected"] else "") + (f" ({e['screen_rule']})" if e.get("screen_rule") else "")
                shown = e["input"] if e["input"] is not None else f"(generated: {e.get('continuation')})"
                lines.append(f"| {task} | {e['candidate_id']} | {verdict} | {_cell(shown)} | {_cell(e['base_output'])} | "
                             f"{_cell(e.get('refined_output'))} |")
    lines.append("")
    return lines


def quality_summary(run_dir: Path, by_task: dict[str, dict]) -> str:
    """A few columns per task for the terminal."""
    lines = [f"{run_dir}", f"{'task':<12}{'gens':>6}{'kept':>6}{'sel':>5}{'own kept':>10}{'own held':>10}"
             f"{'sim kept':>10}{'sim held':>10}{'sim other':>10}{'dist-2':>8}{'clusters':>10}{'labels':>8}"]
    for task, q in by_task.items():
        c, fid, out = q["counts"], q["fidelity"], q["outputs"]
        cl = q["diversity"]["clusters"]
        lines.append(f"{task:<12}{c['generations']:>6}{c['kept']:>6}{c['selected']:>5}"
                     f"{_f(fid['kept'].get('own_task_share')):>10}{_f(fid['heldout'].get('own_task_share')):>10}"
                     f"{_f(fid['kept']['nn_similarity']):>10}{_f(fid['heldout']['nn_similarity']):>10}"
                     f"{_f(fid['other_tasks_heldout']['nn_similarity']):>10}{_f(q['diversity']['distinct_2']['kept']):>8}"
                     f"{cl['covered']:>5} of {cl['clusters']:<2}{_f(out.get('label_share')):>8}")
    return "\n".join(lines)
