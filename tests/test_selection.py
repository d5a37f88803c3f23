import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ssr.selection import kmeans_select, proportional_quotas, random_select, select, target_size


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


def test_target_size():
    assert target_size(500, 2000, None, None) == 200  # default ratio 0.1 of the training size
    assert target_size(100, 2000, 0.1, None) == 100  # capped by what is available
    assert target_size(500, 2000, None, 7) == 7
    assert target_size(50, 48, 0.01, None) == 1  # 1 % of 48 rows rounds to 0: at least one is kept


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


def test_supervised_kmeans_fits_on_other_points():
    emb = _blobs()
    fit = _blobs(seed=5)[[0, 1, 30, 31, 50, 51]]
    sel = kmeans_select(emb, 6, 3, seed=0, fit_on=fit)
    assert len(sel.indices) == 6 and len(sel.clusters) == len(emb)


def test_random_select_is_seeded():
    assert random_select(100, 10, 3).indices == random_select(100, 10, 3).indices
    assert random_select(100, 10, 3).indices != random_select(100, 10, 4).indices


def test_select_with_the_packaged_encoder():
    texts = [f"a review about {w} that was great" for w in "apples pears phones cables cars bikes".split()]
    sel = select(texts, 3, "kmeans", seed=0, n_clusters=3)
    assert len(sel.indices) == 3 and sel.indices == select(texts, 3, "kmeans", seed=0, n_clusters=3).indices


def test_embedding_pooling_mean_cls_and_pooler(tmp_path):
    """Each pooling against the encoder's own outputs, computed here directly."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from ssr.selection import embed

    words = "apple river stone cloud green quick seven table".split()
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=64)).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    texts = ["apple river", "stone cloud green quick", "seven"]
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
        got[pooling] = embed(texts, str(tmp_path), pooling=pooling)
        want = torch.nn.functional.normalize(vectors, dim=-1).numpy()
        assert np.allclose(got[pooling], want, atol=1e-5), pooling
    assert not np.allclose(got["cls"], got["pooler"], atol=1e-3)


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
