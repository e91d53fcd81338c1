"""The k-means core in `keras.ops`, shared by `keras_gr.curation.KMeans`
and `keras_gr.metrics.mauve` (private; the public class is
`keras_gr.curation.KMeans`).

It sits at the bottom of the dependency order (ARCHITECTURE.md) beside
`_validation` and `_backend`, so the metrics, which are below curation,
quantise with the library's one k-means without importing
`keras_gr.curation`. The maths is in small pure functions of tensors
(`squared_distances`, `kmeans_plusplus`, `lloyd`, `minibatch_kmeans`);
`fit_arrays` draws the random numbers, compiles the loops once per data
shape (`keras_gr._backend.jit`: XLA on JAX and TensorFlow) and keeps the
best of `num_init` runs.
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from keras_gr import _backend


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


def nearest(dist, group=16):
    """`(argmin (n,) int32, min (n,))` of `dist` `(n, k)` along axis 1:
    exactly `ops.argmin`'s labels (the first index on ties) and
    `ops.min`'s values.

    For `k` a multiple of `group` (at least `4 group`), the columns are
    read as `k / group` consecutive groups: the group of the smallest
    group minimum (the first on ties), then the first minimum inside it.
    Same result, about 25% faster than one `argmin` over `k` columns on
    CPU (XLA's variadic arg-reductions are slow there; measured at 65,536
    x 256 on JAX and TensorFlow).
    """
    k = dist.shape[1]
    if not isinstance(k, int) or k % group or k < 4 * group:
        return ops.cast(ops.argmin(dist, axis=1), "int32"), ops.min(dist, 1)
    grouped = ops.reshape(dist, (-1, k // group, group))
    group_min = ops.min(grouped, axis=2)
    best = ops.argmin(group_min, axis=1)
    inside = ops.take_along_axis(grouped, best[:, None, None], axis=1)[:, 0]
    labels = best * group + ops.argmin(inside, axis=1)
    return ops.cast(labels, "int32"), ops.min(group_min, axis=1)


def assign(x, centroids):
    """Nearest centroid per row: `(labels (n,) int32, squared distance
    (n,))`."""
    return nearest(squared_distances(x, centroids))


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


def fit_arrays(
    x, num_clusters, max_iter, tolerance, num_init, batch_size, seed, spherical
):
    """The in-memory fit of `KMeans` on a checked float32 array `x`
    (`(n, d)`, unit rows when `spherical`), `num_clusters <= n`.

    Returns:
        `(centroids, labels, inertia, iterations)` of the lowest-inertia
        run as NumPy values (float32 `(k, d)`, int32 `(n,)`, float, int).
    """
    n = x.shape[0]
    trials = 2 + int(math.log(num_clusters))
    rng = np.random.default_rng(seed)
    backend = keras.backend.backend()
    if batch_size is None:
        tolerance = np.float32(tolerance * np.mean(np.var(x, axis=0)))
        fn = _compiled("full", backend, max_iter=max_iter, spherical=spherical)
    else:
        fn = _compiled("minibatch", backend, spherical=spherical)
    x_tensor = ops.convert_to_tensor(x)
    best = None
    for _ in range(num_init):
        uniforms = rng.random((num_clusters, trials), "float32")
        args = [x_tensor, ops.convert_to_tensor(uniforms)]
        if batch_size is None:
            args.append(ops.convert_to_tensor(tolerance))
        else:
            indices = rng.integers(0, n, (max_iter, min(batch_size, n))).astype(
                "int32"
            )
            args.append(ops.convert_to_tensor(indices))
        centroids, labels, inertia, iterations = fn(*args)
        inertia = float(ops.convert_to_numpy(inertia))
        if best is None or inertia < best[2]:
            best = (centroids, labels, inertia, iterations)
    centroids, labels, inertia, iterations = best
    return (
        ops.convert_to_numpy(centroids).astype("float32"),
        ops.convert_to_numpy(labels).astype("int32"),
        inertia,
        int(ops.convert_to_numpy(iterations)),
    )
