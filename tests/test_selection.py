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
