import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from sklearn.datasets import make_blobs

from keras_gr.curation import KMeans
from keras_gr.curation import streaming
from keras_gr.curation.kmeans import kmeans_plusplus
from tests.multidevice import run_on_devices


def _blobs(n=1500, d=8, centers=12, seed=0, std=4.0):
    x, _ = make_blobs(n, d, centers=centers, cluster_std=std, random_state=seed)
    return x.astype("float32")


def _as_memmap(x, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, x)
    return np.load(path, mmap_mode="r")


def _sources(x, tmp_path):
    """The stream kinds `fit` takes, with uneven chunks."""
    cuts = [0, 7, 400, 401, 1100, len(x)]
    chunks = [x[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    return {
        "memmap": _as_memmap(x, tmp_path),
        "dataset_rows": tf.data.Dataset.from_tensor_slices(x),
        "dataset_batches": tf.data.Dataset.from_tensor_slices(x).batch(333),
        "callable": lambda: iter(chunks),
    }


@pytest.mark.parametrize(
    "kind", ["memmap", "dataset_rows", "dataset_batches", "callable"]
)
def test_streamed_lloyd_equals_in_memory_lloyd(kind, tmp_path):
    """The stream fits in the reservoir, so the seeding is the in-memory
    one; full Lloyd over batches of 256 must then give the in-memory
    result (overlapping blobs: many iterations)."""
    x = _blobs()
    source = _sources(x, tmp_path)[kind]
    kwargs = dict(max_iter=60, seed=3, tolerance=1e-6)
    ref = KMeans(12, **kwargs).fit(x)
    km = KMeans(12, stream_batch_size=256, sample_size=2000, **kwargs)
    km.fit(source)
    assert ref.iterations > 3
    assert km.iterations == ref.iterations
    assert km.num_rows == len(x)
    assert km.labels is None
    np.testing.assert_allclose(km.centroids, ref.centroids, atol=1e-5)
    np.testing.assert_allclose(km.inertia, ref.inertia, rtol=1e-5)
    np.testing.assert_array_equal(km.predict(source), ref.labels)


def test_streamed_cosine_equals_in_memory():
    x = _blobs(seed=4) + 0.1
    ref = KMeans(6, metric="cosine", seed=0).fit(x)
    km = KMeans(6, metric="cosine", seed=0, stream_batch_size=128)
    km.fit(lambda: iter([x[:1000], x[1000:]]))
    np.testing.assert_allclose(km.centroids, ref.centroids, atol=1e-5)
    np.testing.assert_array_equal(km.predict(x[None][0:1][0]), ref.labels)


def _numpy_minibatch(x, centroids, batch, steps):
    """Sculley's update in NumPy over consecutive batches of the stream,
    re-read from the start."""
    c = centroids.astype("float64")
    counts = np.zeros(len(c))
    n_batches = math.ceil(len(x) / batch)
    for step in range(steps):
        b = step % n_batches
        rows = x[b * batch : (b + 1) * batch]
        labels = ((rows[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        for j in range(len(c)):
            members = rows[labels == j]
            if len(members):
                counts[j] += len(members)
                c[j] += (members.sum(0) - len(members) * c[j]) / counts[j]
    return c


def test_streamed_minibatch_equals_numpy_sculley():
    x = _blobs(n=1000)
    k, seed = 12, 2
    uniforms = np.random.default_rng(seed).random(
        (k, 2 + int(math.log(k))), "float32"
    )
    init = keras.ops.convert_to_numpy(kmeans_plusplus(x, uniforms))
    km = KMeans(k, batch_size=300, max_iter=9, seed=seed, sample_size=1000)
    km.fit(tf.data.Dataset.from_tensor_slices(x))
    expected = _numpy_minibatch(x, init, 300, 9)  # 4 batches: 2.25 passes
    np.testing.assert_allclose(km.centroids, expected, atol=1e-4)
    d = ((x[:, None] - km.centroids[None]) ** 2).sum(-1)
    np.testing.assert_allclose(km.inertia, d.min(1).sum(), rtol=1e-5)


def test_reservoir_is_a_uniform_sample_of_distinct_rows():
    x = np.arange(5000, dtype="float32")[:, None] * np.ones((1, 2), "float32")
    stream = streaming.Stream(x, 700)
    sample, rows, variance, _, _ = streaming.seeding_pass(stream, 500, seed=0)
    assert rows == 5000 and sample.shape == (500, 2)
    values = sample[:, 0]
    assert len(np.unique(values)) == 500
    # Uniform: the sample's mean index is near 2500 (sd ~ 1443/sqrt(500)).
    assert abs(values.mean() - 2499.5) < 4 * 1443 / math.sqrt(500)
    np.testing.assert_allclose(variance, np.var(x[:, 0]), rtol=1e-6)


def test_one_program_for_every_batch_and_dataset(monkeypatch):
    """A ragged last batch is padded and masked, and fresh data of the same
    width compiles nothing new: the statistics program is traced once."""
    traces = []
    original = streaming.lloyd_statistics

    def counting(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(streaming, "lloyd_statistics", counting)
    streaming.compiled.cache_clear()
    for seed in (0, 1):
        x = _blobs(n=1000 + 37 * seed, seed=seed)  # ragged last batches
        KMeans(5, stream_batch_size=256, max_iter=5).fit(
            tf.data.Dataset.from_tensor_slices(x).batch(100)
        )
    assert len(traces) == 1
    streaming.compiled.cache_clear()


def test_predict_and_transform_write_npy_files(tmp_path):
    x = _blobs(n=900)
    km = KMeans(7, seed=0).fit(x)
    stream = tf.data.Dataset.from_tensor_slices(x).batch(250)
    labels = km.predict(
        stream,
        labels_path=tmp_path / "labels.npy",
        distances_path=tmp_path / "dist.npy",
    )
    assert isinstance(labels, np.memmap)
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), km.labels)
    d = ((x[:, None] - km.centroids[None]) ** 2).sum(-1)
    np.testing.assert_allclose(
        np.load(tmp_path / "dist.npy"), d.min(1), rtol=1e-4, atol=1e-3
    )
    full = km.transform(iter([x[:500], x[500:]]), path=tmp_path / "t.npy")
    assert full.shape == (900, 7)
    np.testing.assert_allclose(np.asarray(full), d, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(km.predict(iter([x])), km.labels)


def test_bad_streams():
    x = _blobs(n=300)
    with pytest.raises(ValueError, match="empty"):
        KMeans(2).fit(lambda: iter([]))
    with pytest.raises(ValueError, match="width of the first"):
        KMeans(2).fit(lambda: iter([x[:100], x[100:, :4]]))
    bad = x.copy()
    bad[123, 2] = np.nan
    with pytest.raises(ValueError, match="row 123"):
        KMeans(2, stream_batch_size=50).fit(lambda: iter([bad]))
    with pytest.raises(ValueError, match="num_clusters=400 for a stream of"):
        KMeans(400).fit(lambda: iter([x]))
    with pytest.raises(ValueError, match="one-shot"):
        KMeans(2).fit(iter([x]))
    zero = x.copy()
    zero[77] = 0.0
    with pytest.raises(ValueError, match="zero norm.*index 77"):
        KMeans(2, metric="cosine").fit(lambda: iter([zero[:50], zero[50:]]))
    with pytest.raises(ValueError, match="not fitted"):
        KMeans(2).predict(lambda: iter([x]))
    km = KMeans(2).fit(x)
    with pytest.raises(ValueError, match="8 columns"):
        km.predict(lambda: iter([x[:, :3]]))
    with pytest.raises(ValueError, match="stream_batch_size"):
        KMeans(2, stream_batch_size=0)
    with pytest.raises(ValueError, match="sample_size"):
        KMeans(2, sample_size=-3)


def test_sharded_path_is_refused_clearly_on_tensorflow():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the TensorFlow refusal")
    distribution = keras.distribution.DataParallel(
        devices=keras.distribution.list_devices()[:1]
    )
    keras.distribution.set_distribution(distribution)
    try:
        with pytest.raises(ValueError, match="JAX-only"):
            KMeans(2).fit(lambda: iter([_blobs(n=50)]))
    finally:
        keras.distribution.set_distribution(None)


@pytest.mark.multidevice
def test_sharded_over_eight_devices_equals_one_device():
    result = run_on_devices(
        """
        import keras
        import numpy as np
        from keras_gr.curation import KMeans
        from keras_gr.curation import streaming

        rng = np.random.default_rng(0)
        centres = 6 * rng.normal(size=(16, 8))
        x = centres[rng.integers(0, 16, 1500)] + rng.normal(size=(1500, 8))
        x = x.astype("float32")

        def fit():
            km = KMeans(16, stream_batch_size=400, max_iter=30, seed=1,
                        sample_size=2000, tolerance=1e-6)
            km.fit(lambda: iter([x[:700], x[700:]]))
            return km, km.predict(lambda: iter([x]))

        one, one_labels = fit()
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices))
        many, many_labels = fit()
        sharded = streaming.to_device(x[:10], 16)[0]
        shards = len(sharded.sharding.device_set)
        keras.distribution.set_distribution(None)
        d = ((x[:, None] - one.centroids[None]) ** 2).sum(-1)
        top2 = np.sort(d, axis=1)[:, :2]
        untied = (top2[:, 1] - top2[:, 0]) > 1e-3
        RESULT = dict(
            devices=len(devices),
            shards=shards,
            max_diff=float(np.abs(one.centroids - many.centroids).max()),
            iterations=[one.iterations, many.iterations],
            inertia=[one.inertia, many.inertia],
            same_labels=bool(np.array_equal(one_labels[untied],
                                            many_labels[untied])),
            all_labels_equal=bool(np.array_equal(one_labels, many_labels)),
        )
        """
    )
    assert result["devices"] == 8 and result["shards"] == 8
    # Bit for bit: the per-block float32 sums never straddle two devices
    # and the host adds the blocks in order (`streaming.SUM_BLOCK`).
    assert result["max_diff"] == 0.0
    assert result["iterations"][0] == result["iterations"][1]
    assert result["inertia"][0] == result["inertia"][1]
    assert result["same_labels"] and result["all_labels_equal"]


def test_blocked_assignment_is_the_one_tile_assignment_bit_for_bit():
    """`assign_rows` over blocks of rows (the fast path of one device)
    gives exactly `assign`'s labels and distances, ties included."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2 * streaming.SUM_BLOCK, 16)).astype("float32")
    c = rng.normal(size=(64, 16)).astype("float32")
    x[:5] = c[:5]  # zero distances
    c[40] = c[7]  # an exact tie: the first index wins
    # Compiled, as the fit runs them (op-by-op eager JAX rounds the
    # distance differently from any compiled program).
    backend = keras.backend.backend()
    whole = streaming.compiled("assign", backend)(x, c)
    blocked = streaming.compiled(
        "assign_rows", backend, block=streaming.SUM_BLOCK
    )(x, c)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(blocked[0]), ops.convert_to_numpy(whole[0])
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(blocked[1]), ops.convert_to_numpy(whole[1])
    )
    assert 40 not in ops.convert_to_numpy(blocked[0])


def test_lloyd_layout_holds_whole_sum_blocks():
    rows, block = streaming.lloyd_layout(400, 16)
    assert (rows, block) == (streaming.SUM_BLOCK, None)
    rows, block = streaming.lloyd_layout(65536, 256)
    assert (rows, block) == (65536, streaming.ASSIGN_BLOCK)
    rows, block = streaming.lloyd_layout(10000, 256)
    assert rows % streaming.SUM_BLOCK == 0 and rows >= 10000
    assert rows % block == 0


def test_last_pass_inertia_is_the_lloyd_pass_inertia():
    x = _blobs(n=5000, seed=4)
    c = x[:12].copy()
    stream = streaming.Stream(x, 1500)
    layout = streaming.lloyd_layout(1500, 12)
    _, counts, inertia, _ = streaming.lloyd_pass(stream, c, layout)
    assert counts.sum() == 5000
    last = streaming.inertia_pass(stream, c, layout)
    np.testing.assert_allclose(last, inertia, rtol=1e-6)
    exact = ((x[:, None].astype("float64") - c[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(last, exact.sum(), rtol=1e-5)
