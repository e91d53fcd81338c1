import math

import keras
import numpy as np
import pytest
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.datasets import make_blobs

from keras_gr.curation import KMeans
from keras_gr.curation.kmeans import kmeans_plusplus
from keras_gr.curation.kmeans import lloyd


def _numpy_plusplus(x, uniforms):
    """Independent NumPy greedy k-means++ driven by the same uniforms."""
    n = len(x)
    k, trials = uniforms.shape
    centroids = [x[min(int(math.floor(uniforms[0, 0] * n)), n - 1)]]
    min_dist = ((x - centroids[0]) ** 2).sum(1)
    for i in range(1, k):
        cdf = np.cumsum(min_dist)
        cand = np.minimum(
            np.searchsorted(cdf, uniforms[i] * cdf[-1], side="right"), n - 1
        )
        d = ((x[:, None, :] - x[cand][None]) ** 2).sum(-1)
        new_min = np.minimum(min_dist[:, None], d)
        best = int(np.argmin(new_min.sum(0)))
        centroids.append(x[cand[best]])
        min_dist = new_min[:, best]
    return np.stack(centroids)


def _numpy_lloyd_step(x, c):
    d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    labels = d.argmin(1)
    new = np.stack(
        [
            x[labels == j].mean(0) if np.any(labels == j) else c[j]
            for j in range(len(c))
        ]
    )
    return new, labels


def test_plusplus_matches_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype("float32")
    uniforms = rng.random((6, 3)).astype("float32")
    got = keras.ops.convert_to_numpy(kmeans_plusplus(x, uniforms))
    np.testing.assert_allclose(got, _numpy_plusplus(x, uniforms), atol=1e-6)


def test_one_lloyd_step_matches_numpy_reference():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4)).astype("float32")
    c0 = x[:5].copy()
    centroids, labels, inertia, iterations = lloyd(x, c0, 1, -1.0)
    ref, _ = _numpy_lloyd_step(x, c0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(centroids), ref, atol=1e-5
    )
    assert int(keras.ops.convert_to_numpy(iterations)) == 1
    d = ((x[:, None] - ref[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(labels), d.argmin(1)
    )
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(inertia)), d.min(1).sum(), rtol=1e-5
    )


def test_empty_cluster_moves_to_farthest_point():
    x = np.array([[0.0], [0.1], [0.2], [5.0]], "float32")
    c0 = np.array([[0.1], [100.0], [5.0]], "float32")  # centroid 1 empty
    centroids, labels, _, _ = lloyd(x, c0, 1, -1.0)
    got = keras.ops.convert_to_numpy(centroids)[:, 0]
    # The point farthest from its centroid: 0.0 or 0.2 (0.1 away); top_k
    # takes the first of equals.
    assert got[1] == pytest.approx(0.0)


@pytest.mark.parametrize("batch_size", [None, 512])
def test_recovers_known_clusters(batch_size):
    x, y = make_blobs(2000, 8, centers=6, cluster_std=0.5, random_state=3)
    km = KMeans(6, batch_size=batch_size, max_iter=100, seed=0, num_init=2)
    km.fit(x)
    table = np.zeros((6, 6), int)
    np.add.at(table, (km.labels, y), 1)
    # Every found cluster is exactly one true cluster.
    assert np.all((table > 0).sum(axis=1) == 1)
    assert np.all((table > 0).sum(axis=0) == 1)
    np.testing.assert_array_equal(km.predict(x), km.labels)


@pytest.mark.parametrize("batch_size, tolerance", [(None, 0.01), (1024, 0.02)])
def test_objective_within_tolerance_of_sklearn(batch_size, tolerance):
    x, _ = make_blobs(4000, 16, centers=32, cluster_std=1.5, random_state=0)
    # Both keep the best of 3 seeded runs: single runs of either
    # implementation land in different local optima.
    km = KMeans(32, batch_size=batch_size, max_iter=150, seed=0, num_init=3)
    km.fit(x)
    sk = SklearnKMeans(32, n_init=3, random_state=0).fit(x)
    assert km.inertia <= sk.inertia_ * (1 + tolerance)
    d = ((x[:, None] - km.centroids[None]) ** 2).sum(-1)
    np.testing.assert_allclose(km.inertia, d.min(1).sum(), rtol=1e-4)


def test_lloyd_equals_sklearn_from_the_same_start():
    """With the same initial centroids, Lloyd is deterministic: our result
    must be sklearn's (overlapping clusters, so it takes many steps)."""
    x, _ = make_blobs(3000, 8, centers=20, cluster_std=4.0, random_state=2)
    x = x.astype("float32")
    rng = np.random.default_rng(0)
    init = keras.ops.convert_to_numpy(
        kmeans_plusplus(x, rng.random((20, 4)).astype("float32"))
    )
    sk = SklearnKMeans(20, init=init, n_init=1, max_iter=300, tol=0.0)
    sk.fit(x)
    centroids, labels, inertia, iterations = lloyd(x, init, 300, 0.0)
    assert int(keras.ops.convert_to_numpy(iterations)) > 5
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(inertia)), sk.inertia_, rtol=1e-4
    )
    assert np.mean(keras.ops.convert_to_numpy(labels) == sk.labels_) > 0.999


def test_cosine_is_spherical_and_scale_invariant():
    rng = np.random.default_rng(0)
    directions = np.eye(4)[rng.integers(0, 4, 400)]
    x = directions + 0.05 * rng.normal(size=(400, 4))
    scaled = x * rng.uniform(0.1, 10.0, size=(400, 1))
    a = KMeans(4, metric="cosine", seed=0).fit(x)
    b = KMeans(4, metric="cosine", seed=0).fit(scaled)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(
        np.linalg.norm(a.centroids, axis=1), 1.0, atol=1e-5
    )
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = unit @ a.centroids.T
    np.testing.assert_allclose(
        a.inertia, np.sum(2 * (1 - cos.max(1))), rtol=1e-3
    )
    assert len(np.unique(a.labels)) == 4


def test_num_init_keeps_best_and_is_deterministic():
    x, _ = make_blobs(500, 4, centers=10, cluster_std=2.0, random_state=1)
    one = KMeans(10, seed=5).fit(x)
    three = KMeans(10, seed=5, num_init=3).fit(x)
    again = KMeans(10, seed=5, num_init=3).fit(x)
    assert three.inertia <= one.inertia + 1e-3
    np.testing.assert_array_equal(three.labels, again.labels)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_clusters=0), "num_clusters"),
        (dict(num_clusters=2, metric="manhattan"), "metric"),
        (dict(num_clusters=2, batch_size=0), "batch_size"),
        (dict(num_clusters=2, tolerance=-1.0), "tolerance"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KMeans(**kwargs)


def test_bad_data():
    with pytest.raises(ValueError, match="num_clusters"):
        KMeans(5).fit(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="finite"):
        KMeans(1).fit(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="empty"):
        KMeans(1).fit(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="rank 2"):
        KMeans(1).fit(np.zeros(4))
    with pytest.raises(ValueError, match="zero norm"):
        KMeans(1, metric="cosine").fit(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not fitted"):
        KMeans(1).predict(np.zeros((2, 2)))
    km = KMeans(1).fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match="2 columns"):
        km.predict(np.ones((3, 3)))


@pytest.mark.parametrize("batch_size", [None, 64])
def test_fresh_data_of_the_same_shape_compiles_nothing_new(
    batch_size, monkeypatch
):
    """Issue 26.11: a fit on new data of the same shape must reuse the
    compiled program (data-dependent scalars are arguments, not constants).
    Python runs the seeding function only when a program is traced."""
    import keras_gr._kmeans as kmeans_module

    traces = []
    original = kmeans_module.kmeans_plusplus

    def counting(*args):
        traces.append(1)
        return original(*args)

    monkeypatch.setattr(kmeans_module, "kmeans_plusplus", counting)
    kmeans_module._compiled.cache_clear()
    rng = np.random.default_rng(0)
    for scale in (1.0, 3.0, 0.5):
        x = scale * rng.normal(size=(300, 6)).astype("float32")
        KMeans(5, batch_size=batch_size, max_iter=20, seed=1).fit(x)
    assert len(traces) == 1
    kmeans_module._compiled.cache_clear()


@pytest.mark.parametrize("k", [7, 64, 256])
def test_nearest_is_exactly_argmin_and_min_ties_included(k):
    """The grouped arg-reduction must give NumPy's argmin (first index on
    ties) and min, for k that is grouped (64, 256) and k that is not."""
    from keras import ops

    from keras_gr._kmeans import nearest

    rng = np.random.default_rng(k)
    dist = rng.integers(0, 5, size=(300, k)).astype("float32")  # many ties
    dist[:50] = 2.0  # every column tied
    dist[50, [3, k - 1]] = -1.0  # a tie across groups
    labels, values = nearest(ops.convert_to_tensor(dist))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(labels), np.argmin(dist, axis=1)
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(values), dist.min(axis=1)
    )
