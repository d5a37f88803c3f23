import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssr.selection import Selection, kmeans_select, proportional_quotas, random_select, select, target_size


@given(st.lists(st.integers(0, 50), min_size=1, max_size=30), st.integers(0, 400))
def test_quotas_sum_exactly_and_never_exceed_a_cluster(sizes, target):
    quotas = proportional_quotas(sizes, target)
    assert sum(quotas) == min(target, sum(sizes))
    assert all(0 <= q <= s for q, s in zip(quotas, sizes))
    # proportional: no quota is off by one or more from its exact share
    total = sum(sizes)
    if total:
        for q, s in zip(quotas, sizes):
            assert abs(q - min(target, total) * s / total) < 1


def test_quota_example():
    assert proportional_quotas([50, 30, 20], 10) == [5, 3, 2]
    assert proportional_quotas([1, 1, 1], 2) == [1, 1, 0]  # ties to the lower index
    assert proportional_quotas([0, 1, 0], 3) == [0, 1, 0]  # a single instance is kept
    assert proportional_quotas([0, 0], 3) == [0, 0]  # nothing to share out


def test_target_size():
    assert target_size(500, 2000, None, None) == 200  # default ratio 0.1 of the training size
    assert target_size(100, 2000, 0.1, None) == 100  # capped by what is available
    assert target_size(500, 2000, None, 7) == 7
    assert target_size(50, 48, 0.01, None) == 1  # 1 % of 48 rows rounds to 0: at least one is kept
    assert target_size(0, 2000, None, None) == 0  # nothing to keep from: nothing, not one


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    centers = np.eye(3, 8) * 10
    pts = np.concatenate([c + rng.normal(size=(n, 8)) for c, n in zip(centers, (30, 20, 10))])
    return (pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32)


def test_kmeans_takes_quotas_nearest_to_centroids_deterministically():
    emb = _blobs()
    a = kmeans_select(emb, 6, 3, seed=1)
    b = kmeans_select(emb, 6, 3, seed=1)
    assert a.indices == b.indices and len(a.indices) == 6 and len(set(a.indices)) == 6
    labels = np.array(a.clusters)
    per_cluster = sorted(int((labels[a.indices] == c).sum()) for c in range(3))
    assert per_cluster == [1, 2, 3]  # proportional to sizes 10/20/30
    for c in range(3):  # each chosen member is closer to its centroid than any unchosen one
        members = np.flatnonzero(labels == c)
        centroid = emb[members].mean(axis=0)
        d = {int(i): float(np.linalg.norm(emb[i] - centroid)) for i in members}
        chosen = [i for i in a.indices if labels[i] == c]
        assert max(d[i] for i in chosen) <= min(v for i, v in d.items() if i not in chosen) + 1e-5


def _nearest_to_each_centroid(emb: np.ndarray, labels: list[int]) -> list[int]:
    """By hand: in each cluster (in cluster order), the member closest to the members' mean."""
    labels = np.array(labels)
    chosen = []
    for c in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == c)
        centroid = emb[members].mean(axis=0)
        chosen.append(int(members[np.argmin(np.linalg.norm(emb[members] - centroid, axis=1))]))
    return chosen


def test_one_per_cluster_takes_k_clusters_and_the_point_nearest_each():
    emb = _blobs()
    sel = kmeans_select(emb, 3, n_clusters=7, seed=0, one_per_cluster=True)  # n_clusters is ignored
    assert len(set(sel.clusters)) == 3 and sel.indices == _nearest_to_each_centroid(emb, sel.clusters)
    one = kmeans_select(emb, 1, n_clusters=7, seed=0, one_per_cluster=True)  # one cluster: the most central point
    assert set(one.clusters) == {0} and one.indices == _nearest_to_each_centroid(emb, [0] * len(emb))


def test_kmeans_edge_cases():
    emb = _blobs()
    assert kmeans_select(emb, 0, 3, seed=0) == Selection([], [-1] * len(emb))  # nothing asked: no clustering
    assert len(kmeans_select(emb, 1, 3, seed=0).indices) == 1
    # fewer demonstrations than clusters: as many clusters as demonstrations
    assert set(kmeans_select(emb, 4, 3, seed=0, fit_on=emb[[0, 59]]).clusters) == {0, 1}


def test_kmeans_is_sklearns_with_ten_restarts_fit_on_at_most_as_many_clusters_as_points():
    """The clusters are sklearn's KMeans(n_clusters, random_state=seed, n_init=10), run here;
    on these points ten and eleven restarts end in different clusterings. Supervised: never
    more clusters than demonstrations, nor than points to choose from."""
    from sklearn.cluster import KMeans

    points = np.random.default_rng(11).normal(size=(60, 3)).astype(np.float32)
    fits = {n: KMeans(n_clusters=8, random_state=0, n_init=n).fit(points).labels_.tolist() for n in (10, 11)}
    assert fits[10] != fits[11]  # the data tells the number of restarts apart
    assert kmeans_select(points, 8, 8, seed=0).clusters == fits[10]
    # 4 points to choose from, 12 demonstrations, 10 clusters asked: 4 clusters, fit on the demonstrations
    demos, few = points[:12], points[40:44]
    want = KMeans(n_clusters=4, random_state=0, n_init=10).fit(demos).predict(few).tolist()
    assert kmeans_select(few, 2, 10, seed=0, fit_on=demos).clusters == want


def test_encoder_path_resolves_only_packaged_names(monkeypatch):
    import importlib.util

    from ssr.selection import encoder_path

    assert encoder_path("org/some-encoder") == "org/some-encoder"  # not packaged: passed on as given
    assert encoder_path("all-MiniLM-L6-v2").endswith("model")  # packaged: the package's folder
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert encoder_path("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"  # package not installed: the hub name


def test_supervised_kmeans_fits_on_other_points():
    emb = _blobs()
    fit = _blobs(seed=5)[[0, 1, 30, 31, 50, 51]]
    sel = kmeans_select(emb, 6, 3, seed=0, fit_on=fit)
    assert len(sel.indices) == 6 and len(sel.clusters) == len(emb)


def test_random_select_is_seeded_and_without_replacement():
    assert random_select(100, 10, 3).indices == random_select(100, 10, 3).indices
    assert random_select(100, 10, 3).indices != random_select(100, 10, 4).indices
    # numpy's generator called directly: the same seeded draw, sorted
    assert random_select(100, 10, 3).indices == sorted(np.random.default_rng(3).choice(100, 10, replace=False).tolist())
    assert random_select(50, 50, 7).indices == list(range(50))  # every row once: never a row twice
    assert random_select(5, 9, 7).indices == list(range(5))  # capped by what there is


def test_select_dispatches_random_and_refuses_an_unknown_strategy():
    texts = [f"row {i}" for i in range(30)]
    assert select(texts, 4, "random", seed=11, n_clusters=2).indices == sorted(
        np.random.default_rng(11).choice(30, 4, replace=False).tolist())
    with pytest.raises(ValueError, match="unknown selection strategy 'nearest'"):
        select(texts, 4, "nearest", seed=0, n_clusters=2)
    # nothing to choose from: nothing chosen, and no encoder needed
    assert select([], 3, "kmeans", seed=0, n_clusters=2) == Selection([], [])


def test_select_with_the_packaged_encoder(monkeypatch):
    """K-means over all-MiniLM-L6-v2: the clusters are sklearn's, run here on MiniLM's own
    embeddings; quotas are proportional (not one per cluster) unless asked."""
    from sklearn.cluster import KMeans

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    texts = [f"a review about {w} that was great" for w in "apples pears phones cables cars bikes".split()]
    sel = select(texts, 3, "kmeans", seed=0, n_clusters=2)
    assert sel.clusters == KMeans(n_clusters=2, random_state=0, n_init=10).fit(_minilm(texts)).labels_.tolist()
    sizes = [sel.clusters.count(c) for c in (0, 1)]
    assert [sum(sel.clusters[i] == c for i in sel.indices) for c in (0, 1)] == proportional_quotas(sizes, 3)
    assert sel.indices == select(texts, 3, "kmeans", seed=0, n_clusters=2).indices
    # the encoder's tokenizers must not run threads in the processes that later fork
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_embedding_pooling_mean_cls_and_pooler(tmp_path):
    """Each pooling against the encoder's own outputs, computed here directly."""
    import torch

    from ssr.selection import embed

    path = tmp_path / "bert"
    tokenizer, model = _tiny_bert(path, 64, None)
    texts = ["w1 w2", "w3 w4 w5 w6", "w7"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = {
        "cls": out.last_hidden_state[:, 0],
        "pooler": out.pooler_output,
        "mean": (out.last_hidden_state * mask).sum(1) / mask.sum(1),
    }
    got = {}
    for pooling, vectors in expected.items():
        got[pooling] = embed(texts, str(path), pooling=pooling)
        want = torch.nn.functional.normalize(vectors, dim=-1).numpy()
        assert np.allclose(got[pooling], want, atol=1e-5), pooling
        assert got[pooling].dtype == np.float32
    assert not np.allclose(got["cls"], got["pooler"], atol=1e-3)
    assert np.array_equal(embed(texts, str(path)), got["mean"])  # mean pooling is the default
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        embed(texts, str(path), pooling="max")


def test_select_one_per_cluster_clusters_into_k():
    """`select(..., one_per_cluster=True)` (the open-domain rule) makes k clusters whatever
    n_clusters says, and takes the text nearest each centroid (sklearn and MiniLM, run here)."""
    from sklearn.cluster import KMeans

    texts = [f"a review about {w} that was great" for w in "apples pears phones cables cars bikes".split()]
    sel = select(texts, 3, "kmeans", seed=0, n_clusters=1, one_per_cluster=True)
    emb = _minilm(texts)
    labels = KMeans(n_clusters=3, random_state=0, n_init=10).fit(emb).labels_.tolist()
    assert sel.clusters == labels and sel.indices == _nearest_to_each_centroid(emb, labels)


def test_embedding_draws_no_progress_bar_even_when_logging_at_info(caplog, capfd):
    """A run logs at INFO, where sentence-transformers would draw a bar of its own for every
    call: the pipeline's bar is the one shown."""
    import logging

    from ssr.selection import embed

    caplog.set_level(logging.INFO)
    capfd.readouterr()
    vectors = embed(["one text", "another text"], "all-MiniLM-L6-v2")
    assert vectors.shape[0] == 2 and capfd.readouterr().err == ""


def _tiny_bert(path, positions: int, model_max_length: int | None):
    """A saved one-layer BERT with `positions` position embeddings (a longer input cannot run)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir()
    words = [f"w{i}" for i in range(40)]
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), **kwargs)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=positions)).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return tokenizer, model


def test_first_token_pooling_cuts_inputs_at_the_tokenizers_limit_and_at_512(tmp_path):
    """A text longer than the encoder takes is cut, never passed whole: at the tokenizer's
    `model_max_length` when it is below 512, else at 512 tokens (the BERT-family limit)."""
    import torch

    from ssr.selection import embed

    long_text = " ".join(f"w{i % 40}" for i in range(600))
    # each model has exactly as many positions as the cut allows: a longer input cannot run
    for name, positions, limit, cut in (("short", 64, 64, 64), ("unset", 512, None, 512)):
        tokenizer, model = _tiny_bert(tmp_path / name, positions, limit)
        ids = tokenizer(long_text, truncation=True, max_length=cut, return_tensors="pt")
        assert ids["input_ids"].shape[1] == cut
        with torch.no_grad():
            want = torch.nn.functional.normalize(model(**ids).last_hidden_state[:, 0], dim=-1).numpy()
        assert np.allclose(embed([long_text], str(tmp_path / name), pooling="cls"), want, atol=1e-5), name


def test_select_passes_the_pooling_to_the_encoder(tmp_path):
    """`select(..., embedding_pooling="cls")` clusters the first-token vectors: sklearn's K-means
    run here on vectors computed directly from the model."""
    import torch
    from sklearn.cluster import KMeans

    tokenizer, model = _tiny_bert(tmp_path / "bert", 64, 64)
    texts = [" ".join(f"w{(7 * i + 3 * j) % 40}" for j in range(2 + i % 5)) for i in range(12)]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    vectors = {"cls": hidden[:, 0], "mean": (hidden * mask).sum(1) / mask.sum(1)}
    labels = {p: KMeans(n_clusters=3, random_state=0, n_init=10).fit(
        torch.nn.functional.normalize(v, dim=-1).numpy()).labels_.tolist() for p, v in vectors.items()}
    partition = lambda ls: {frozenset(i for i, x in enumerate(ls) if x == c) for c in set(ls)}  # noqa: E731
    assert partition(labels["cls"]) != partition(labels["mean"])  # the two poolings cluster these texts differently
    sel = select(texts, 4, "kmeans", seed=0, n_clusters=3, embedding_model=str(tmp_path / "bert"), embedding_pooling="cls")
    assert sel.clusters == labels["cls"]
    # supervised K-means: the demonstrations are embedded with the same pooling
    fit, rest = list(range(0, 12, 2)), list(range(1, 12, 2))
    unit = {p: torch.nn.functional.normalize(v, dim=-1).numpy() for p, v in vectors.items()}
    supervised = {p: KMeans(n_clusters=3, random_state=0, n_init=10).fit(u[fit]).predict(u[rest]).tolist()
                  for p, u in unit.items()}
    assert partition(supervised["cls"]) != partition(supervised["mean"])
    sel = select([texts[i] for i in rest], 3, "kmeans", seed=0, n_clusters=3, embedding_model=str(tmp_path / "bert"),
                 embedding_pooling="cls", fit_texts=[texts[i] for i in fit])
    assert sel.clusters == supervised["cls"]


def test_pooler_pooling_of_an_encoder_without_a_pooler_is_a_clear_error(tmp_path):
    """DistilBERT's outputs have no pooler at all: `pooler` pooling names the model and the way out."""
    import torch
    from transformers import BertTokenizerFast, DistilBertConfig, DistilBertModel

    from ssr.selection import embed

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "word"]) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    DistilBertModel(DistilBertConfig(vocab_size=6, dim=16, n_layers=1, n_heads=2, hidden_dim=32,
                                     max_position_embeddings=32)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has no pooler output; use cls or mean"):
        embed(["word word"], str(tmp_path), pooling="pooler")


def _minilm(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 from its package, called directly (normalised sentence embeddings)."""
    from sentence_transformers import SentenceTransformer

    from ssr.selection import encoder_path

    return SentenceTransformer(encoder_path("all-MiniLM-L6-v2"), device="cpu").encode(texts, normalize_embeddings=True)


def test_supervised_kmeans_in_the_pipeline_fits_on_the_demonstrations():
    """`method.kmeans_fit: demos`: the centroids come from the real demonstrations and the kept
    synthetic inputs are assigned to them (sklearn's KMeans run here on MiniLM embeddings);
    without it the centroids come from the synthetic inputs themselves."""
    from sklearn.cluster import KMeans

    from ssr.config import MethodConfig
    from ssr.data.task import Instance
    from ssr.synthesis.pipeline import select_candidates

    demos = [Instance(f"d{i}", text, "x", "Classify.") for i, text in enumerate(
        ["I love eating fresh apples", "Bananas and pears are sweet fruit",
         "The stock market fell sharply today", "Shares dropped on Wall Street"])]
    inputs = ["The striker scored a late goal", "The football match ended in a draw", "Boil the pasta for ten minutes",
              "Add tomato sauce to the spaghetti", "The bank raised interest rates", "Investors sold their bonds"]
    labels = {}
    for fit in ("demos", "synthetic"):
        candidates = [{"input": x, "verdict": "kept"} for x in inputs] + [{"input": "dropped", "verdict": "duplicate"}]
        cfg = MethodConfig(name="ssr", kmeans_fit=fit, n_clusters=2, per_task=3)
        assert select_candidates(candidates, demos, 30, cfg, seed=4) == 3
        labels[fit] = [c["cluster"] for c in candidates[:-1]]
        assert candidates[-1]["cluster"] is None and not candidates[-1]["selected"]
    emb, demo_emb = _minilm(inputs), _minilm([d.input for d in demos])
    supervised = KMeans(n_clusters=2, random_state=4, n_init=10).fit(demo_emb).predict(emb).tolist()
    plain = KMeans(n_clusters=2, random_state=4, n_init=10).fit(emb).labels_.tolist()
    same_partition = lambda a, b: len({(x, y) for x, y in zip(a, b)}) == len(set(a))  # noqa: E731
    assert not same_partition(supervised, plain)  # the data tells the two fits apart
    assert labels == {"demos": supervised, "synthetic": plain}
