"""k-means in `keras.ops`: k-means++ seeding, Lloyd and mini-batch updates.

The maths is in small pure functions of tensors (`squared_distances`,
`kmeans_plusplus`, `lloyd`, `minibatch_kmeans`); `KMeans` validates its
arguments, draws the random numbers, compiles the loops once per data shape
(`keras_gr._backend.jit`: XLA on JAX and TensorFlow) and keeps the best of
`num_init` runs. Keras and keras-hub have no k-means; this one runs where the
embeddings are (TPU through JAX), so curation, SoftSRV's contexts and the
routers cluster without a round trip to the host.
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from keras_gr import _backend
from keras_gr._validation import check_array
from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr._validation import check_number

METRICS = ("euclidean", "cosine")


def squared_distances(x, centroids):
    """`(n, d), (k, d) -> (n, k)` squared Euclidean distances, clamped at 0.

    Computed as `|x|^2 - 2 x c^T + |c|^2` (one matmul); rounding can make
    that slightly negative, hence the clamp.
    """
    x2 = ops.sum(ops.square(x), axis=1, keepdims=True)
    c2 = ops.sum(ops.square(centroids), axis=1)
    cross = ops.matmul(x, ops.transpose(centroids))
    return ops.maximum(x2 - 2.0 * cross + c2[None, :], 0.0)


def normalize_rows(x, epsilon=1e-12):
    """Rows scaled to unit Euclidean norm (rows of norm < `epsilon` are
    left at zero)."""
    norm = ops.sqrt(ops.sum(ops.square(x), axis=1, keepdims=True))
    return x / ops.maximum(norm, epsilon)


def check_directions(name, x, offset=0):
    """Row norms of `x` (NumPy), refusing rows of zero norm.

    The one rule of `keras_gr.curation` for such rows: a zero row has no
    direction, hence no cosine similarity, so everything cosine-based
    (`KMeans(metric="cosine")`, `semantic_dedup`,
    `reference_similarity_selection` and their streamed forms) refuses it
    rather than silently keeping or dropping it; the message says how many
    and where the first is (`offset` is added to the index, for a batch
    of a stream). Drop such rows (e.g. empty documents) before curating.
    """
    norms = np.linalg.norm(x, axis=1)
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        raise ValueError(
            f"`{name}` has rows of zero norm, which have no direction and "
            "no cosine similarity; remove them (or use metric='euclidean' "
            f"for KMeans). Received: {len(zero)} rows of zero norm, the "
            f"first at index {int(zero[0]) + offset}"
        )
    return norms


def kmeans_plusplus(x, uniforms):
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007).

    `uniforms` is a `(k, trials)` tensor of U[0, 1) numbers that drives every
    random choice, so the function itself is deterministic: the first
    centroid is the point at index `floor(uniforms[0, 0] * n)`; each next
    one is the best (lowest resulting potential) of `trials` candidates
    drawn with probability proportional to the squared distance to the
    nearest centroid chosen so far (inverse-CDF sampling with
    `uniforms[i]`). `trials = 2 + floor(ln k)` is scikit-learn's default.

    Returns:
        `(k, d)` initial centroids.
    """
    x = ops.convert_to_tensor(x, "float32")
    uniforms = ops.convert_to_tensor(uniforms, "float32")
    n = ops.shape(x)[0]
    k, trials = ops.shape(uniforms)
    first = ops.cast(
        ops.floor(uniforms[0, 0] * ops.cast(n, "float32")), "int32"
    )
    first = ops.minimum(first, n - 1)
    first_point = ops.take(x, first[None], axis=0)
    min_dist = squared_distances(x, first_point)[:, 0]
    centroids = ops.zeros((k, ops.shape(x)[1]), x.dtype)
    rows = ops.arange(k)
    centroids = ops.where((rows == 0)[:, None], first_point, centroids)

    def body(i, state):
        centroids, min_dist = state
        cdf = ops.cumsum(min_dist)
        targets = ops.take(uniforms, i, axis=0) * cdf[-1]
        candidates = ops.minimum(
            ops.searchsorted(cdf, targets, side="right"), n - 1
        )
        points = ops.take(x, candidates, axis=0)
        new_min = ops.minimum(min_dist[:, None], squared_distances(x, points))
        best = ops.argmin(ops.sum(new_min, axis=0))
        centroids = ops.where(
            (rows == i)[:, None],
            ops.take(points, best[None], axis=0),
            centroids,
        )
        return centroids, ops.take(new_min, best, axis=1)

    centroids, _ = ops.fori_loop(1, k, body, (centroids, min_dist))
    return centroids


def assign(x, centroids):
    """Nearest centroid per row: `(labels (n,) int32, squared distance
    (n,))`."""
    dist = squared_distances(x, centroids)
    labels = ops.cast(ops.argmin(dist, axis=1), "int32")
    return labels, ops.min(dist, axis=1)


def _update(x, centroids, labels, min_dist, spherical):
    """The Lloyd M-step: cluster means; an empty cluster moves to one of
    the points farthest from their centroid (the i-th empty cluster takes
    the i-th farthest point), as scikit-learn relocates empty clusters."""
    k = ops.shape(centroids)[0]
    sums = ops.segment_sum(x, labels, num_segments=k)
    counts = ops.segment_sum(ops.ones_like(min_dist), labels, num_segments=k)
    means = sums / ops.maximum(counts, 1.0)[:, None]
    empty = counts == 0
    farthest = ops.top_k(min_dist, k)[1]
    rank = ops.maximum(ops.cumsum(ops.cast(empty, "int32")) - 1, 0)
    relocated = ops.take(x, ops.take(farthest, rank), axis=0)
    new = ops.where(empty[:, None], relocated, means)
    return normalize_rows(new) if spherical else new


def lloyd(x, centroids, max_iter, tolerance, spherical=False):
    """Lloyd iterations until the total squared centroid shift is at most
    `tolerance` (scikit-learn's criterion) or `max_iter` steps.

    With `spherical=True` (cosine k-means on unit-norm rows) the centroids
    are renormalised after every mean, so each is the unit vector that
    maximises the summed cosine similarity of its cluster.

    Returns:
        `(centroids, labels, inertia, iterations)`, where `labels` and
        `inertia` (sum of squared distances) are those of the returned
        centroids.
    """
    x = ops.convert_to_tensor(x, "float32")
    centroids = ops.convert_to_tensor(centroids, "float32")

    def cond(i, centroids, shift):
        return ops.logical_and(i < max_iter, shift > tolerance)

    def body(i, centroids, shift):
        labels, min_dist = assign(x, centroids)
        new = _update(x, centroids, labels, min_dist, spherical)
        return i + 1, new, ops.sum(ops.square(new - centroids))

    iterations, centroids, _ = ops.while_loop(
        cond,
        body,
        (ops.convert_to_tensor(0), centroids, ops.convert_to_tensor(np.inf)),
    )
    labels, min_dist = assign(x, centroids)
    return centroids, labels, ops.sum(min_dist), iterations


def minibatch_step(x, mask, centroids, counts, spherical=False):
    """One step of Sculley's update: every centroid moves to the running
    mean of all points ever assigned to it (learning rate
    `batch_count / total_count`). `mask` (`(b,)` bool, or `None` for all
    rows) marks the real rows of a padded batch. Returns
    `(centroids, counts)`."""
    k = ops.shape(centroids)[0]
    labels, _ = assign(x, centroids)
    if mask is None:
        weight = ops.ones_like(labels, dtype=x.dtype)
        weighted = x
    else:
        weight = ops.cast(mask, x.dtype)
        weighted = x * weight[:, None]
    sums = ops.segment_sum(weighted, labels, num_segments=k)
    batch_counts = ops.segment_sum(weight, labels, num_segments=k)
    counts = counts + batch_counts
    step = (sums - batch_counts[:, None] * centroids) / ops.maximum(
        counts, 1.0
    )[:, None]
    centroids = centroids + step
    if spherical:
        centroids = normalize_rows(centroids)
    return centroids, counts


def minibatch_kmeans(x, centroids, batch_indices, spherical=False):
    """Mini-batch k-means (Sculley 2010) with per-centroid learning rates.

    `batch_indices` is an `(iterations, batch_size)` integer tensor of row
    indices. Each step assigns the batch and moves every centroid to the
    running mean of all points ever assigned to it (learning rate
    `batch_count / total_count`, i.e. Sculley's `1 / count` per point).

    Returns:
        `(centroids, labels, inertia)` with labels and inertia over all of
        `x` for the final centroids.
    """
    x = ops.convert_to_tensor(x, "float32")
    centroids = ops.convert_to_tensor(centroids, "float32")
    k = ops.shape(centroids)[0]

    def body(i, state):
        centroids, counts = state
        batch = ops.take(x, ops.take(batch_indices, i, axis=0), axis=0)
        return minibatch_step(batch, None, centroids, counts, spherical)

    counts = ops.zeros((k,), x.dtype)
    centroids, _ = ops.fori_loop(
        0, ops.shape(batch_indices)[0], body, (centroids, counts)
    )
    labels, min_dist = assign(x, centroids)
    return centroids, labels, ops.sum(min_dist)


def _fit_full(x, uniforms, tolerance, max_iter, spherical):
    centroids = kmeans_plusplus(x, uniforms)
    return lloyd(x, centroids, max_iter, tolerance, spherical)


def _fit_minibatch(x, uniforms, batch_indices, spherical):
    centroids = kmeans_plusplus(x, uniforms)
    centroids, labels, inertia = minibatch_kmeans(
        x, centroids, batch_indices, spherical
    )
    return centroids, labels, inertia, ops.shape(batch_indices)[0]


@functools.lru_cache(maxsize=32)
def _compiled(kind, backend, **static):
    """One compiled program per (kind, backend, static arguments); the data
    shape is handled by the backend's own trace cache. Data-dependent
    scalars (the variance-scaled tolerance) are tensor arguments, never
    static ones, so fresh data of the same shape compiles nothing new."""
    del backend  # part of the cache key only
    if kind == "assign":
        return _backend.jit(assign)
    fn = _fit_full if kind == "full" else _fit_minibatch
    return _backend.jit(functools.partial(fn, **static))


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
        spherical = self.metric == "cosine"
        trials = 2 + int(math.log(self.num_clusters))
        rng = np.random.default_rng(self.seed)
        backend = keras.backend.backend()
        if self.batch_size is None:
            tolerance = np.float32(self.tolerance * np.mean(np.var(x, axis=0)))
            fn = _compiled(
                "full", backend, max_iter=self.max_iter, spherical=spherical
            )
        else:
            fn = _compiled("minibatch", backend, spherical=spherical)
        x_tensor = ops.convert_to_tensor(x)
        best = None
        for _ in range(self.num_init):
            uniforms = rng.random((self.num_clusters, trials), "float32")
            args = [x_tensor, ops.convert_to_tensor(uniforms)]
            if self.batch_size is None:
                args.append(ops.convert_to_tensor(tolerance))
            else:
                indices = rng.integers(
                    0, n, (self.max_iter, min(self.batch_size, n))
                ).astype("int32")
                args.append(ops.convert_to_tensor(indices))
            centroids, labels, inertia, iterations = fn(*args)
            inertia = float(ops.convert_to_numpy(inertia))
            if best is None or inertia < best[2]:
                best = (centroids, labels, inertia, iterations)
        centroids, labels, inertia, iterations = best
        self.centroids = ops.convert_to_numpy(centroids).astype("float32")
        self.labels = ops.convert_to_numpy(labels).astype("int32")
        self.inertia = inertia
        self.iterations = int(ops.convert_to_numpy(iterations))
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
