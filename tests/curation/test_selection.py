import numpy as np
import pytest
import tensorflow as tf

from keras_gr.curation import balanced_quotas
from keras_gr.curation import balanced_selection
from keras_gr.curation import reference_similarity_selection
from keras_gr.curation import semantic_dedup


@pytest.mark.parametrize(
    "sizes, budget, expected",
    [
        ([10, 10, 10], 9, [3, 3, 3]),
        ([10, 2, 10], 12, [5, 2, 5]),
        ([1, 1, 50], 10, [1, 1, 8]),
        ([4, 4], 8, [4, 4]),
        ([5, 6, 7], 4, [1, 1, 2]),
    ],
)
def test_balanced_quotas(sizes, budget, expected):
    quotas = balanced_quotas(sizes, budget)
    assert quotas.tolist() == expected
    assert quotas.sum() == budget


def test_balanced_selection_counts_and_uniqueness():
    rng = np.random.default_rng(0)
    labels = rng.choice(5, size=1000, p=[0.6, 0.2, 0.1, 0.07, 0.03])
    picked = balanced_selection(labels, 100, seed=3)
    assert len(np.unique(picked)) == 100
    counts = np.bincount(labels[picked], minlength=5)
    assert counts.tolist() == balanced_quotas(np.bincount(labels), 100).tolist()
    assert counts.tolist() == [20, 20, 20, 20, 20]
    again = balanced_selection(labels, 100, seed=3)
    np.testing.assert_array_equal(picked, again)
    ds = tf.data.Dataset.from_tensor_slices(labels).batch(64)
    np.testing.assert_array_equal(balanced_selection(ds, 100, seed=3), picked)


def test_semantic_dedup_removes_exactly_the_planted_duplicates():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 32))
    source = rng.choice(200, size=30, replace=False)
    copies = base[source] * rng.uniform(0.5, 2.0, (30, 1))
    copies += 1e-4 * rng.normal(size=copies.shape)
    x = np.concatenate([base, copies])
    labels = (np.concatenate([base, base[source]])[:, 0] > 0).astype(int)
    kept = semantic_dedup(x, labels, similarity_threshold=0.99)
    np.testing.assert_array_equal(kept, np.arange(200))
    # Without clusters: the same answer (just more pairs compared).
    np.testing.assert_array_equal(
        semantic_dedup(x, None, similarity_threshold=0.99), np.arange(200)
    )


def test_semantic_dedup_keep_rules():
    # Cluster 0: three near-duplicates at angles 0, 0.02 and 0.05 rad (mean
    # direction ~0.023: index 1 is the closest, index 2 the farthest).
    angles = np.array([0.0, 0.02, 0.05])
    group = np.stack([np.cos(angles), np.sin(angles), 0 * angles], axis=1)
    x = np.concatenate([group, [[0.0, 0.0, 1.0], [0.0, 0.001, 1.0]]])
    labels = np.array([0, 0, 0, 1, 1])
    first = semantic_dedup(x, labels, 0.998, keep="first")
    assert first.tolist() == [0, 3]
    hard = semantic_dedup(x, labels, 0.998, keep="hard")
    easy = semantic_dedup(x, labels, 0.998, keep="easy")
    assert hard.tolist() == [2, 3] or hard.tolist() == [2, 4]
    assert easy.tolist() in ([1, 3], [1, 4])


def test_reference_similarity_selection():
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(100, 8))
    reference = pool[[5, 17]] + 1e-3
    picked = reference_similarity_selection(pool, reference, 2)
    assert picked.tolist() == [5, 17]
    centroid = reference_similarity_selection(
        pool, reference, 10, aggregate="centroid"
    )
    scores = pool @ reference.mean(0) / np.linalg.norm(pool, axis=1)
    assert set(centroid.tolist()) == set(np.argsort(-scores)[:10].tolist())


def test_bad_input():
    with pytest.raises(ValueError, match="budget"):
        balanced_selection([0, 1, 1], 4)
    with pytest.raises(ValueError, match="budget"):
        balanced_selection([0, 1, 1], 0)
    with pytest.raises(ValueError, match="cluster_labels"):
        balanced_selection([], 1)
    with pytest.raises(ValueError, match="integer"):
        balanced_selection([0.5, 1.0], 1)
    with pytest.raises(ValueError, match="finite"):
        semantic_dedup(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="same length"):
        semantic_dedup(np.ones((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="similarity_threshold"):
        semantic_dedup(np.ones((3, 2)), similarity_threshold=2.0)
    with pytest.raises(ValueError, match="keep"):
        semantic_dedup(np.ones((3, 2)), keep="longest")
    with pytest.raises(ValueError, match="width"):
        reference_similarity_selection(np.ones((3, 2)), np.ones((1, 3)), 1)
    with pytest.raises(ValueError, match="budget"):
        reference_similarity_selection(np.ones((3, 2)), np.ones((1, 2)), 4)


def test_zero_norm_rows_are_refused_as_by_cosine_kmeans():
    """Issue 26.12: one rule for rows of zero norm (no direction, so no
    cosine similarity): `semantic_dedup` refuses them as
    `KMeans(metric="cosine")` does, naming how many and the first."""
    from keras_gr.curation import KMeans

    x = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"zero norm.*2 rows.*index 1"):
        semantic_dedup(x)
    with pytest.raises(ValueError, match=r"zero norm.*2 rows.*index 1"):
        KMeans(2, metric="cosine").fit(x)
    with pytest.raises(ValueError, match=r"zero norm.*2 rows.*index 1"):
        reference_similarity_selection(x, [[1.0, 0.0]], 1)
