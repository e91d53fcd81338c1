"""`KMeans`: k-means in `keras.ops` (k-means++ seeding, Lloyd and
mini-batch updates), in memory or over a stream.

The maths (pure functions of tensors: `squared_distances`,
`kmeans_plusplus`, `lloyd`, `minibatch_kmeans`, ...) and the in-memory fit
live in the private `keras_gr._kmeans`, below `keras_gr.metrics` in the
dependency order, so MAUVE's quantiser is this same k-means; they are
imported here under their names. `KMeans` validates its arguments and
hands an array to `keras_gr._kmeans.fit_arrays`, a stream to
`keras_gr.curation.streaming`. Keras and keras-hub have no k-means; this
one runs where the embeddings are (TPU through JAX), so curation,
SoftSRV's contexts and the routers cluster without a round trip to the
host.
"""

import keras
from keras import ops

from keras_gr._kmeans import _compiled
from keras_gr._kmeans import assign  # noqa: F401 (re-exported)
from keras_gr._kmeans import check_directions
from keras_gr._kmeans import fit_arrays
from keras_gr._kmeans import kmeans_plusplus  # noqa: F401 (re-exported)
from keras_gr._kmeans import lloyd  # noqa: F401 (re-exported)
from keras_gr._kmeans import minibatch_kmeans  # noqa: F401 (re-exported)
from keras_gr._kmeans import minibatch_step  # noqa: F401 (re-exported)
from keras_gr._kmeans import normalize_rows  # noqa: F401 (re-exported)
from keras_gr._kmeans import squared_distances
from keras_gr._validation import check_array
from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr._validation import check_number

METRICS = ("euclidean", "cosine")


class KMeans:
    """k-means clustering written in `keras.ops`, compiled with XLA.

    k-means++ seeding (greedy, `2 + floor(ln k)` candidates per centroid, as
    scikit-learn), then either full-batch Lloyd iterations (`batch_size=None`)
    until the total squared centroid shift is at most
    `tolerance * mean per-feature variance` or `max_iter` steps, or
    `max_iter` mini-batch steps (Sculley 2010) of `batch_size` points each.
    The best of `num_init` seeded runs (lowest inertia) is kept.

    Minimised objective (the *inertia*): `sum_i min_j |x_i - c_j|^2`. With
    `metric="cosine"` the rows and the centroids are unit vectors (spherical
    k-means), so the inertia is `sum_i 2 (1 - cos(x_i, c_j(i)))`; rows of
    zero norm are refused.

    Choices left open by the papers that use it (stated here): an empty
    cluster moves to the point currently farthest from its centroid (the
    i-th empty cluster to the i-th farthest point); distances are computed
    in float32 at full matmul precision whatever the input dtype; the fitted
    `labels` and `inertia` are those of the final centroids (one extra
    assignment step after the last update). Memory: full-batch Lloyd holds an
    `(n, k)` distance matrix; use `batch_size` for very large `n`.

    Args:
        num_clusters: number of clusters `k`, an integer >= 1 (and at most
            the number of points at `fit`).
        metric: `"euclidean"` or `"cosine"`. Defaults to `"euclidean"`.
        max_iter: Lloyd iterations (or mini-batch steps). Defaults to `100`.
        tolerance: relative convergence tolerance (scaled by the data's mean
            per-feature variance). Defaults to `1e-4`.
        num_init: independent seeded runs; the lowest inertia wins. Defaults
            to `1`.
        batch_size: `None` for full-batch Lloyd, or the mini-batch size.
            Defaults to `None`.
        seed: integer seed of the seeding and the mini-batches. Defaults to
            `0`.
        stream_batch_size: rows per compiled step when `fit`, `predict` or
            `transform` read a stream (full Lloyd, assignment); every batch
            is padded to this many rows (at least `k`) and masked. Defaults
            to `65536`.
        sample_size: rows of the reservoir sample that seeds a streamed
            fit (k-means++ runs on it); `None` for `max(40 k, 10000)`.
            A stream of at most this many rows is seeded exactly as in
            memory. Defaults to `None`.

    Streams: `x` may be a `numpy.memmap`, a `tf.data.Dataset` of rows or
    batches, a callable returning a fresh iterable of `(b, d)` arrays, or
    (for `predict` / `transform` only) a one-shot iterator; memory then
    stays `O(stream_batch_size d + sample_size d + k d)` and, under a
    `keras.distribution` on JAX, each batch is sharded over the devices.
    See `keras_gr.curation.streaming` for the passes, the exactness of
    streamed full Lloyd and the refusals (non-finite rows, widths).

    After `fit`: `centroids` (`(k, d)` float32 NumPy array), `labels`
    (`(n,)` int32; `None` after a streamed fit: use `predict`), `inertia`
    (float), `iterations` (int, of the best run), `num_rows` (int).

    Example:

    >>> import numpy as np
    >>> x = np.concatenate([np.zeros((20, 2)), np.ones((20, 2)) * 10])
    >>> x = x + 0.01 * np.arange(40)[:, None]
    >>> km = KMeans(num_clusters=2, seed=0).fit(x)
    >>> sorted(np.bincount(km.labels).tolist())
    [20, 20]
    >>> km.predict(np.array([[0.0, 0.0], [10.0, 10.0]])).tolist() == [
    ...     km.labels[0], km.labels[-1]]
    True
    """

    def __init__(
        self,
        num_clusters: int,
        metric: str = "euclidean",
        max_iter: int = 100,
        tolerance: float = 1e-4,
        num_init: int = 1,
        batch_size: int | None = None,
        seed: int = 0,
        stream_batch_size: int = 65536,
        sample_size: int | None = None,
    ):
        self.num_clusters = check_integer("num_clusters", num_clusters)
        self.metric = check_choice("metric", metric, METRICS)
        self.max_iter = check_integer("max_iter", max_iter)
        self.tolerance = check_number("tolerance", tolerance, minimum=0.0)
        self.num_init = check_integer("num_init", num_init)
        self.batch_size = (
            None
            if batch_size is None
            else check_integer("batch_size", batch_size)
        )
        self.seed = check_integer("seed", seed, minimum=0)
        self.stream_batch_size = check_integer(
            "stream_batch_size", stream_batch_size
        )
        self.sample_size = (
            None
            if sample_size is None
            else check_integer("sample_size", sample_size)
        )
        self.centroids = None
        self.labels = None
        self.inertia = None
        self.iterations = None
        self.num_rows = None

    def _prepare(self, x, name="x"):
        x = check_array(name, x, ndim=2).astype("float32")
        if self.metric == "cosine":
            x = x / check_directions(name, x)[:, None]
        return x

    def fit(self, x):
        """Clusters the rows of `x` (`(n, d)`, finite, or a stream of such
        rows: see `keras_gr.curation.streaming`). Returns `self`."""
        from keras_gr.curation import streaming

        if streaming.is_stream(x):
            return streaming.fit_stream(self, x)
        streaming.num_devices()  # refuses a distribution on TensorFlow
        x = self._prepare(x)
        n = x.shape[0]
        if self.num_clusters > n:
            raise ValueError(
                "`num_clusters` must be at most the number of points. "
                f"Received: num_clusters={self.num_clusters} for {n} points"
            )
        (
            self.centroids,
            self.labels,
            self.inertia,
            self.iterations,
        ) = fit_arrays(
            x,
            self.num_clusters,
            self.max_iter,
            self.tolerance,
            self.num_init,
            self.batch_size,
            self.seed,
            self.metric == "cosine",
        )
        self.num_rows = n
        return self

    def _require_fitted(self):
        if self.centroids is None:
            raise ValueError("This KMeans is not fitted yet: call `fit` first.")

    def _check_fitted(self, x):
        self._require_fitted()
        x = self._prepare(x)
        if x.shape[1] != self.centroids.shape[1]:
            raise ValueError(
                f"`x` must have {self.centroids.shape[1]} columns (the width "
                f"of the fitted data). Received: x with shape {x.shape}"
            )
        return x

    def predict(self, x, labels_path=None, distances_path=None):
        """Nearest-centroid labels, `(m,)` int32, of the rows of `x` (an
        array or a stream). With `labels_path` the labels are written to
        that `.npy` file batch by batch and returned as a read-only memmap;
        with `distances_path` the squared distance of every row to its
        centroid is written there too."""
        from keras_gr.curation import streaming

        if streaming.is_stream(x) or labels_path or distances_path:
            self._require_fitted()
            return streaming.predict_stream(
                self, x, labels_path, distances_path
            )
        x = self._check_fitted(x)
        labels, _ = _compiled("assign", keras.backend.backend())(
            ops.convert_to_tensor(x), ops.convert_to_tensor(self.centroids)
        )
        return ops.convert_to_numpy(labels).astype("int32")

    def transform(self, x, path=None):
        """Squared distances `(m, k)` from the rows of `x` (an array or a
        stream) to the centroids (for `metric="cosine"`, `2 (1 - cosine
        similarity)`); with `path`, written to that `.npy` file batch by
        batch and returned as a read-only memmap."""
        from keras_gr.curation import streaming

        if streaming.is_stream(x) or path:
            self._require_fitted()
            return streaming.transform_stream(self, x, path)
        x = self._check_fitted(x)
        dist = squared_distances(
            ops.convert_to_tensor(x), ops.convert_to_tensor(self.centroids)
        )
        return ops.convert_to_numpy(dist).astype("float32")

    def get_config(self):
        return {
            "num_clusters": self.num_clusters,
            "metric": self.metric,
            "max_iter": self.max_iter,
            "tolerance": self.tolerance,
            "num_init": self.num_init,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "stream_batch_size": self.stream_batch_size,
            "sample_size": self.sample_size,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
