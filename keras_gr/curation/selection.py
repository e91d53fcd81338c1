"""Selecting training data from embeddings: balanced sampling across
clusters, semantic deduplication, similarity to a reference set.

Every function returns sorted int64 indices into the user's data, and takes
NumPy arrays or `tf.data` datasets (of rows or of batches) of embeddings /
labels.
"""

from typing import Any

import numpy as np

from keras_gr._validation import check_array
from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr._validation import check_number
from keras_gr._validation import check_same_length
from keras_gr.curation.kmeans import check_directions

KEEP_RULES = ("first", "hard", "easy", "random")


def as_array(name, value, ndim):
    """A NumPy array from an array-like or a `tf.data` dataset (elements or
    batches are concatenated), checked for rank, emptiness and NaN."""
    if hasattr(value, "as_numpy_iterator"):
        parts = [np.asarray(v) for v in value.as_numpy_iterator()]
        if not parts:
            value = np.zeros((0,) * ndim)
        elif parts[0].ndim == ndim:
            value = np.concatenate(parts, axis=0)
        else:
            value = np.stack(parts, axis=0)
    return check_array(name, value, ndim=ndim)


def _labels(name, value, n=None, other="embeddings"):
    labels = as_array(name, value, ndim=1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`{name}` must hold integer cluster labels. Received: {name} "
            f"of dtype {labels.dtype}"
        )
    if n is not None and len(labels) != n:
        check_same_length(name, labels, other, range(n))
    return labels.astype("int64")


def balanced_quotas(cluster_sizes: Any, budget: int) -> np.ndarray:
    """Per-cluster sample counts that spread `budget` as evenly as the
    cluster sizes allow (water-filling).

    Every cluster gets `min(size, t)` for the largest level `t` that keeps
    the total within `budget`; the remaining units (fewer than the number
    of clusters still unfilled) go one each to the largest unfilled
    clusters (ties: lower cluster index first). The result sums to exactly
    `budget` when `budget <= sum(sizes)`.

    Example:

    >>> balanced_quotas([10, 2, 10], 12).tolist()
    [5, 2, 5]
    """
    sizes = np.asarray(cluster_sizes, "int64")
    budget = check_integer("budget", budget, minimum=0)
    if budget > sizes.sum():
        raise ValueError(
            "`budget` must be at most the number of points. Received: "
            f"budget={budget} for {int(sizes.sum())} points"
        )
    low, high = 0, int(sizes.max(initial=0))
    while low < high:  # largest level t with sum(min(size, t)) <= budget
        mid = (low + high + 1) // 2
        if np.minimum(sizes, mid).sum() <= budget:
            low = mid
        else:
            high = mid - 1
    quotas = np.minimum(sizes, low)
    left = budget - int(quotas.sum())
    unfilled = np.flatnonzero(sizes > quotas)
    order = unfilled[np.argsort(-sizes[unfilled], kind="stable")]
    quotas[order[:left]] += 1
    return quotas


def balanced_selection(
    cluster_labels: Any, budget: int, seed: int = 0
) -> np.ndarray:
    """The paper's diversity curation: an equal share of `budget` from every
    cluster, uniformly at random inside each cluster.

    "Analyzing Similarity Metrics for Data Selection for Language Model
    Pretraining" (arXiv 2502.02494) clusters the pool in embedding space
    and samples the same number of examples from each cluster, so that
    large, redundant clusters do not dominate the selection. A cluster
    smaller than its share gives all of its points and the rest of its
    share is spread over the other clusters (`balanced_quotas`).

    Args:
        cluster_labels: `(n,)` integer cluster label per example.
        budget: number of examples to select, `1 <= budget <= n`.
        seed: integer seed of the within-cluster sampling. Defaults to `0`.

    Returns:
        Sorted `(budget,)` int64 indices into the data.

    Example:

    >>> labels = np.array([0] * 90 + [1] * 10)
    >>> picked = balanced_selection(labels, 20)
    >>> np.bincount(labels[picked]).tolist()
    [10, 10]
    """
    labels = _labels("cluster_labels", cluster_labels)
    budget = check_integer("budget", budget)
    if budget > len(labels):
        raise ValueError(
            "`budget` must be at most the number of examples. Received: "
            f"budget={budget} for {len(labels)} examples"
        )
    rng = np.random.default_rng(check_integer("seed", seed, minimum=0))
    clusters, inverse = np.unique(labels, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(clusters))
    quotas = balanced_quotas(sizes, budget)
    picked = []
    for c in range(len(clusters)):
        members = np.flatnonzero(inverse == c)
        picked.append(rng.choice(members, size=quotas[c], replace=False))
    return np.sort(np.concatenate(picked)).astype("int64")


def _unit_rows(x, name=None):
    """Rows scaled to unit norm; with a `name`, rows of zero norm are
    refused (`check_directions`: the one rule of `keras_gr.curation`)."""
    if name is not None:
        return x / check_directions(name, x)[:, None]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def has_earlier_duplicate(x, threshold, tile_size=2048):
    """`duplicate[j]`: is `x[i] . x[j] > threshold` for some `i < j`.

    Tiled: tile `(a, b)` compares rows `a*t .. (a+1)*t` with columns
    `b*t .. (b+1)*t` for `b <= a` only, so memory is `tile_size^2` floats
    whatever the number of rows (no `n x n` matrix, even for one large
    cluster), and each pair is compared once.
    """
    n = len(x)
    duplicate = np.zeros(n, bool)
    for start in range(0, n, tile_size):
        stop = min(start + tile_size, n)
        rows = np.arange(start, stop)[:, None]
        for col in range(0, stop, tile_size):
            col_stop = min(col + tile_size, stop)
            sims = x[start:stop] @ x[col:col_stop].T
            sims[np.arange(col, col_stop)[None, :] >= rows] = -np.inf
            duplicate[start:stop] |= sims.max(axis=1) > threshold
    return duplicate


def keep_order(x, members, keep, rng):
    """`members` (indices of one cluster, ascending) in keep-priority
    order; `x` holds their unit rows (`x[i]` is member `members[i]`)."""
    if keep == "first":
        return members, x
    if keep == "random":
        order = rng.permutation(len(members))
    else:
        centre = _unit_rows(x.mean(axis=0, keepdims=True))[0]
        direction = 1 if keep == "easy" else -1
        order = np.argsort(-direction * (x @ centre), kind="stable")
    return members[order], x[order]


def dedup_options(similarity_threshold, keep, seed):
    """Checked `(threshold, keep rule, generator)` of a dedup call."""
    threshold = check_number(
        "similarity_threshold",
        similarity_threshold,
        minimum=-1.0,
        maximum=1.0,
        min_inclusive=False,
    )
    keep = check_choice("keep", keep, KEEP_RULES)
    rng = np.random.default_rng(check_integer("seed", seed, minimum=0))
    return threshold, keep, rng


def semantic_dedup(
    embeddings: Any,
    cluster_labels: Any | None = None,
    similarity_threshold: float = 0.95,
    keep: str = "first",
    seed: int = 0,
) -> np.ndarray:
    """SemDeDup (Abbas et al. 2023, arXiv 2303.09540): drop near-duplicates
    inside each cluster.

    Inside a cluster the points are put in keep-priority order; a point is
    removed when its cosine similarity to any point earlier in that order
    is above `similarity_threshold` (SemDeDup's `1 - eps`). So of a group of
    near-duplicates exactly the first in the order survives. Orders
    (`keep`): `"first"` the data order; `"hard"` farthest from the cluster's
    mean direction first (SemDeDup's default: keep the least prototypical);
    `"easy"` closest first; `"random"` a seeded shuffle. Comparing only
    inside clusters is what makes this scale (pairs cost `sum size_c^2`,
    not `n^2`); with `cluster_labels=None` the whole set is one cluster.
    Similarities are computed in tiles of 2048 x 2048 (no `size_c^2`
    matrix). For embeddings and labels on disk, `semantic_dedup_to_file`
    gives the same indices with memory independent of `n`.

    Args:
        embeddings: `(n, d)` finite embeddings, no row of zero norm (such
            a row has no cosine similarity: it is refused, as by
            `KMeans(metric="cosine")`, never silently kept).
        cluster_labels: `(n,)` integer labels, or `None`. Defaults to
            `None`.
        similarity_threshold: cosine similarity above which two points are
            duplicates, in (-1, 1]. Defaults to `0.95`.
        keep: `"first"`, `"hard"`, `"easy"` or `"random"`. Defaults to
            `"first"`.
        seed: seed of `keep="random"`. Defaults to `0`.

    Returns:
        Sorted int64 indices of the points kept.

    Example:

    >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.001]])
    >>> semantic_dedup(x).tolist()
    [0, 1]
    """
    x = as_array("embeddings", embeddings, ndim=2).astype("float32")
    if cluster_labels is None:
        labels = np.zeros(len(x), "int64")
    else:
        labels = _labels("cluster_labels", cluster_labels, len(x))
    threshold, keep, rng = dedup_options(similarity_threshold, keep, seed)
    x = _unit_rows(x, "embeddings")
    kept = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order, rows = keep_order(x[members], members, keep, rng)
        kept.append(order[~has_earlier_duplicate(rows, threshold)])
    return np.sort(np.concatenate(kept)).astype("int64")


def reference_similarity_selection(
    embeddings: Any,
    reference_embeddings: Any,
    budget: int,
    aggregate: str = "max",
) -> np.ndarray:
    """Selects the `budget` examples most similar to a high-quality
    reference set (cosine similarity).

    `aggregate="max"`: an example's score is its highest similarity to any
    reference example (finds the neighbours of every reference point);
    `"centroid"`: its similarity to the mean reference direction (one
    topic). Ties keep the lower index.

    Args:
        embeddings: `(n, d)` candidates, no row of zero norm (refused, as
            by `semantic_dedup`).
        reference_embeddings: `(m, d)` reference examples, no row of zero
            norm.
        budget: number to select, `1 <= budget <= n`.
        aggregate: `"max"` or `"centroid"`. Defaults to `"max"`.

    Returns:
        Sorted int64 indices of the selected examples.

    Example:

    >>> pool = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    >>> reference_similarity_selection(pool, [[1.0, 0.05]], 2).tolist()
    [0, 2]
    """
    x = _unit_rows(as_array("embeddings", embeddings, ndim=2), "embeddings")
    ref = _unit_rows(
        as_array("reference_embeddings", reference_embeddings, ndim=2),
        "reference_embeddings",
    )
    if ref.shape[1] != x.shape[1]:
        raise ValueError(
            "`reference_embeddings` must have the width of `embeddings` "
            f"({x.shape[1]}). Received: width {ref.shape[1]}"
        )
    budget = check_integer("budget", budget, maximum=len(x))
    aggregate = check_choice("aggregate", aggregate, ("max", "centroid"))
    if aggregate == "centroid":
        scores = x @ _unit_rows(ref.mean(axis=0, keepdims=True))[0]
    else:
        scores = np.concatenate(
            [
                (x[i : i + 4096] @ ref.T).max(axis=1)
                for i in range(0, len(x), 4096)
            ]
        )
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:budget]).astype("int64")
