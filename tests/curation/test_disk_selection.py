import numpy as np
import pytest
import tensorflow as tf

from keras_gr.curation import balanced_selection
from keras_gr.curation import balanced_selection_to_file
from keras_gr.curation import reference_similarity_selection
from keras_gr.curation import reference_similarity_selection_to_file
from keras_gr.curation import select_from_dataset
from keras_gr.curation import semantic_dedup
from keras_gr.curation import semantic_dedup_to_file
from keras_gr.curation.disk_selection import within_cluster_ranks
from keras_gr.curation.selection import has_earlier_duplicate


def _npy(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array)
    return path


def _near_duplicates(rng, n=600, d=16, copies=150):
    base = rng.normal(size=(n, d)).astype("float32")
    source = rng.choice(n, size=copies, replace=True)
    dup = base[source] * rng.uniform(0.5, 2.0, (copies, 1)).astype("float32")
    dup += 1e-3 * rng.normal(size=dup.shape).astype("float32")
    x = np.concatenate([base, dup])
    perm = rng.permutation(len(x))
    x = x[perm]
    # Sign pattern of 3 coordinates: 8 clusters, kept by positive scaling.
    labels = ((x[:, :3] > 0) * [4, 2, 1]).sum(axis=1).astype("int64")
    return x, labels


def test_within_cluster_ranks():
    seen = np.zeros(3, "int64")
    a = within_cluster_ranks(np.array([2, 0, 2, 2, 0]), seen)
    b = within_cluster_ranks(np.array([0, 2, 1]), seen)
    assert a.tolist() == [0, 0, 1, 2, 1]
    assert b.tolist() == [2, 3, 0]
    assert seen.tolist() == [3, 1, 4]


def test_tiled_duplicates_equal_the_dense_rule():
    rng = np.random.default_rng(0)
    x, _ = _near_duplicates(rng, n=300, copies=90)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    dense = np.array(
        [j > 0 and sims[j, :j].max() > 0.99 for j in range(len(x))]
    )
    for tile in (7, 64, 1000):
        np.testing.assert_array_equal(
            has_earlier_duplicate(x, 0.99, tile_size=tile), dense
        )
    assert dense.sum() > 50


@pytest.mark.parametrize("keep", ["first", "hard", "easy", "random"])
def test_dedup_on_disk_equals_in_memory(keep, tmp_path):
    rng = np.random.default_rng(1)
    x, labels = _near_duplicates(rng)
    expected = semantic_dedup(x, labels, 0.99, keep=keep, seed=4)
    assert len(expected) < len(x) - 100
    got = semantic_dedup_to_file(
        _npy(tmp_path, "x.npy", x),
        _npy(tmp_path, "labels.npy", labels),
        tmp_path / "kept.npy",
        0.99,
        keep=keep,
        seed=4,
        tile_size=32,
        chunk_size=100,
    )
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.load(tmp_path / "kept.npy"), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "kept.npy",
        "labels.npy",
        "x.npy",
    ]


def test_balanced_selection_on_disk_equals_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.choice(
        [0, 1, 3, 7, 8], size=5000, p=[0.6, 0.2, 0.1, 0.07, 0.03]
    )
    for budget in (1, 250, 4999):
        expected = balanced_selection(labels, budget, seed=3)
        got = balanced_selection_to_file(
            _npy(tmp_path, "labels.npy", labels),
            budget,
            tmp_path / "picked.npy",
            seed=3,
            chunk_size=333,
        )
        np.testing.assert_array_equal(got, expected)


def test_reference_selection_on_disk_equals_in_memory(tmp_path):
    rng = np.random.default_rng(2)
    pool = rng.normal(size=(3000, 8)).astype("float32")
    reference = pool[[5, 17, 900]] + 1e-3
    for aggregate in ("max", "centroid"):
        expected = reference_similarity_selection(
            pool, reference, 100, aggregate=aggregate
        )
        got = reference_similarity_selection_to_file(
            tf.data.Dataset.from_tensor_slices(pool).batch(700),
            reference,
            100,
            tmp_path / "ref.npy",
            aggregate=aggregate,
            batch_size=256,
        )
        np.testing.assert_array_equal(got, expected)


def test_select_from_dataset(tmp_path):
    path = _npy(tmp_path, "idx.npy", np.array([0, 3, 4, 9], "int64"))
    ds = tf.data.Dataset.range(100, 112)
    assert [int(v) for v in select_from_dataset(ds, path)] == [
        100,
        103,
        104,
        109,
    ]
    assert list(select_from_dataset(ds, np.zeros(0, "int64"))) == []


def test_bad_disk_inputs(tmp_path):
    x = np.ones((4, 2), "float32")
    with pytest.raises(ValueError, match="same length"):
        semantic_dedup_to_file(x, np.zeros(3, "int64"), tmp_path / "o.npy")
    with pytest.raises(ValueError, match="non-negative"):
        balanced_selection_to_file(np.array([0, -1]), 1, tmp_path / "o.npy")
    with pytest.raises(ValueError, match="integer labels"):
        balanced_selection_to_file(np.array([0.5]), 1, tmp_path / "o.npy")
    with pytest.raises(ValueError, match="budget"):
        balanced_selection_to_file(np.array([0, 1]), 3, tmp_path / "o.npy")
    with pytest.raises(ValueError, match="random access"):
        semantic_dedup_to_file(
            tf.data.Dataset.from_tensor_slices(x), [0] * 4, tmp_path / "o.npy"
        )
    zero = x.copy()
    zero[2] = 0
    with pytest.raises(ValueError, match="zero norm"):
        semantic_dedup_to_file(zero, np.zeros(4, "int64"), tmp_path / "o.npy")
    with pytest.raises(ValueError, match="budget=9 for 4"):
        reference_similarity_selection_to_file(x, x[:1], 9, tmp_path / "o.npy")
    with pytest.raises(ValueError, match="width"):
        reference_similarity_selection_to_file(
            x, np.ones((1, 3)), 1, tmp_path / "o.npy"
        )
