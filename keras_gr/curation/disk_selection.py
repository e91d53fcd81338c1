"""Selection from labels, scores and embeddings on disk: index files out.

The disk-backed forms of `balanced_selection`, `semantic_dedup` and
`reference_similarity_selection` give the same indices as the in-memory
functions (same seeds, same rules) while holding only chunks in memory,
and write sorted int64 indices to a `.npy` file (returned as a read-only
memmap). `select_from_dataset` feeds such a file back into `tf.data`.

Inputs: labels as a `.npy` path, a memmap or an array of non-negative
integers; embeddings as a `.npy` path, a memmap or an array (random access
is needed to gather a cluster's rows; a `tf.data` stream of embeddings is
written to disk first, as `KMeans.predict(..., labels_path=...)` does for
labels and `keras_gr.curation.curate` does for embeddings).

Memory, with `n` rows, `k` clusters and width `d`: `balanced_selection_to_
file` `O(chunk_size + k + budget)`; `semantic_dedup_to_file` `O(chunk_size
+ k + (largest cluster) d + tile_size^2)` plus two scratch files beside
the output (the rows grouped by cluster, int64, and a keep flag per row);
`reference_similarity_selection_to_file` `O(chunk_size d + m d + budget)`.
"""

import os
from typing import Any

import numpy as np

from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr.curation.selection import _unit_rows
from keras_gr.curation.selection import balanced_quotas
from keras_gr.curation.selection import dedup_options
from keras_gr.curation.selection import has_earlier_duplicate
from keras_gr.curation.selection import keep_order
from keras_gr.curation.streaming import NpyWriter
from keras_gr.curation.streaming import Stream

CHUNK = 1 << 20


def open_array(name, value):
    """A `.npy` path opens as a read-only memmap; arrays pass through."""
    if isinstance(value, (str, os.PathLike)):
        return np.load(os.fspath(value), mmap_mode="r")
    if hasattr(value, "as_numpy_iterator") or not hasattr(value, "shape"):
        raise ValueError(
            f"`{name}` must be a `.npy` path, a numpy.memmap or an array "
            "(random access is needed). Received: "
            f"{type(value).__name__}"
        )
    return value


def _labels(value, chunk_size):
    """Labels checked chunk by chunk: `(labels, counts per label value)`."""
    labels = open_array("cluster_labels", value)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            "`cluster_labels` must be a 1-D array of integer labels. "
            f"Received: shape {labels.shape} and dtype {labels.dtype}"
        )
    if len(labels) == 0:
        raise ValueError("`cluster_labels` must not be empty.")
    counts = np.zeros(0, "int64")
    for start in range(0, len(labels), chunk_size):
        chunk = np.asarray(labels[start : start + chunk_size])
        if chunk.min() < 0:
            raise ValueError(
                "`cluster_labels` on disk must be non-negative integers. "
                f"Received: {int(chunk.min())} near row {start}"
            )
        part = np.bincount(chunk)
        if len(part) > len(counts):
            counts = np.pad(counts, (0, len(part) - len(counts)))
        counts[: len(part)] += part
    return labels, counts


def within_cluster_ranks(chunk, seen):
    """Each row's rank among the rows of its cluster so far (0-based, in
    data order); `seen[c]` counts cluster `c`'s rows before the chunk and
    is updated in place."""
    order = np.argsort(chunk, kind="stable")
    sorted_labels = chunk[order]
    starts = np.flatnonzero(
        np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]
    )
    group = np.repeat(starts, np.diff(np.r_[starts, len(chunk)]))
    ranks = np.empty(len(chunk), "int64")
    ranks[order] = np.arange(len(chunk)) - group + seen[sorted_labels]
    np.add.at(seen, chunk, 1)
    return ranks


def _write_where(path, flags, chunk_size):
    """Writes the indices of the True entries of `flags` (in order)."""
    out = NpyWriter(path, "int64")
    for start in range(0, len(flags), chunk_size):
        out.write(start + np.flatnonzero(flags[start : start + chunk_size]))
    return out.close()


def balanced_selection_to_file(
    cluster_labels: Any,
    budget: int,
    path: str,
    seed: int = 0,
    chunk_size: int = CHUNK,
) -> np.ndarray:
    """`balanced_selection` from labels on disk, written to `path`.

    Same quotas (`balanced_quotas`) and the same within-cluster draws as
    `balanced_selection` with the same `seed` (each cluster draws the
    ranks of its chosen members), found in two passes over the labels.

    Args:
        cluster_labels: `(n,)` non-negative integer labels (path, memmap
            or array).
        budget: number of examples to select, `1 <= budget <= n`.
        path: the `.npy` file to write.
        seed: integer seed of the within-cluster sampling. Defaults to `0`.
        chunk_size: label rows read at a time. Defaults to `2**20`.

    Returns:
        The sorted int64 indices, as a read-only memmap of `path`.

    Example:

    >>> import os, tempfile
    >>> labels = np.array([0] * 90 + [1] * 10)
    >>> out = os.path.join(tempfile.mkdtemp(), "picked.npy")
    >>> picked = balanced_selection_to_file(labels, 20, out)
    >>> np.bincount(labels[picked]).tolist()
    [10, 10]
    """
    chunk_size = check_integer("chunk_size", chunk_size)
    labels, counts = _labels(cluster_labels, chunk_size)
    budget = check_integer("budget", budget, maximum=len(labels))
    rng = np.random.default_rng(check_integer("seed", seed, minimum=0))
    clusters = np.flatnonzero(counts)
    quotas = balanced_quotas(counts[clusters], budget)
    width = int(counts.max()) + 1
    keys = []
    for c, size, quota in zip(clusters, counts[clusters], quotas):
        ranks = rng.choice(int(size), size=int(quota), replace=False)
        keys.append(int(c) * width + ranks)
    keys = np.sort(np.concatenate(keys))
    seen = np.zeros(len(counts), "int64")
    out = NpyWriter(path, "int64")
    for start in range(0, len(labels), chunk_size):
        chunk = np.asarray(labels[start : start + chunk_size], "int64")
        key = chunk * width + within_cluster_ranks(chunk, seen)
        position = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
        out.write(start + np.flatnonzero(keys[position] == key))
    return out.close()


def semantic_dedup_to_file(
    embeddings: Any,
    cluster_labels: Any,
    path: str,
    similarity_threshold: float = 0.95,
    keep: str = "first",
    seed: int = 0,
    tile_size: int = 2048,
    chunk_size: int = CHUNK,
) -> np.ndarray:
    """`semantic_dedup` from embeddings and labels on disk.

    The rows are grouped by cluster with a counting sort into a scratch
    file (`path + ".order.npy"`), then each cluster's rows are read, put in
    keep order and compared in `tile_size` tiles (`has_earlier_duplicate`);
    a keep flag per row (`path + ".keep.npy"`) is finally turned into the
    sorted indices. Same rules and result as `semantic_dedup` with the same
    arguments (rows of zero norm are refused, as there). The scratch files
    are removed at the end.

    Args:
        embeddings: `(n, d)` `.npy` path, memmap or array.
        cluster_labels: `(n,)` non-negative integer labels (path, memmap
            or array), e.g. the file `KMeans.predict(labels_path=...)`
            wrote.
        path: the `.npy` file to write.
        similarity_threshold, keep, seed: as in `semantic_dedup`.
        tile_size: rows per similarity tile. Defaults to `2048`.
        chunk_size: label rows read at a time. Defaults to `2**20`.

    Returns:
        The sorted int64 indices kept, as a read-only memmap of `path`.

    Example:

    >>> import os, tempfile
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.001]])
    >>> out = os.path.join(tempfile.mkdtemp(), "kept.npy")
    >>> semantic_dedup_to_file(x, np.zeros(3, "int64"), out).tolist()
    [0, 1]
    """
    chunk_size = check_integer("chunk_size", chunk_size)
    tile_size = check_integer("tile_size", tile_size)
    x = open_array("embeddings", embeddings)
    if x.ndim != 2:
        raise ValueError(
            f"`embeddings` must have rank 2. Received: shape {x.shape}"
        )
    labels, counts = _labels(cluster_labels, chunk_size)
    if len(labels) != len(x):
        raise ValueError(
            "`cluster_labels` and `embeddings` must have the same length. "
            f"Received: {len(labels)} labels for {len(x)} embeddings"
        )
    threshold, keep, rng = dedup_options(similarity_threshold, keep, seed)
    path = os.fspath(path)
    offsets = np.r_[0, np.cumsum(counts)]
    order = np.lib.format.open_memmap(
        path + ".order.npy", "w+", "int64", (len(labels),)
    )
    flags = np.lib.format.open_memmap(
        path + ".keep.npy", "w+", bool, (len(labels),)
    )
    seen = np.zeros(len(counts), "int64")
    for start in range(0, len(labels), chunk_size):
        chunk = np.asarray(labels[start : start + chunk_size], "int64")
        ranks = within_cluster_ranks(chunk, seen)
        order[offsets[chunk] + ranks] = start + np.arange(len(chunk))
    for c in np.flatnonzero(counts):
        members = np.asarray(order[offsets[c] : offsets[c + 1]])
        rows = np.asarray(x[members], "float32")
        if not np.all(np.isfinite(rows)):
            raise ValueError(
                "`embeddings` must hold only finite values. Received: a "
                f"non-finite value in cluster {int(c)}"
            )
        rows = _unit_rows(rows, "embeddings")
        ordered, ordered_rows = keep_order(rows, members, keep, rng)
        duplicate = has_earlier_duplicate(ordered_rows, threshold, tile_size)
        flags[np.sort(ordered[~duplicate])] = True
    result = _write_where(path, flags, chunk_size)
    del order, flags
    os.remove(path + ".order.npy")
    os.remove(path + ".keep.npy")
    return result


def reference_similarity_selection_to_file(
    embeddings: Any,
    reference_embeddings: Any,
    budget: int,
    path: str,
    aggregate: str = "max",
    batch_size: int = 65536,
) -> np.ndarray:
    """`reference_similarity_selection` over a stream of embeddings.

    `embeddings` may be anything `KMeans.fit` streams (a memmap, a
    `tf.data.Dataset`, a callable). Scores are computed batch by batch in
    float32 and only the best `budget` (score, index) pairs are kept (ties:
    the lower index, as in memory). Same rules as the in-memory function.

    Args:
        embeddings: the `(n, d)` candidates, an array or a stream.
        reference_embeddings: `(m, d)` reference examples (in memory).
        budget: number to select, `1 <= budget <= n`.
        path: the `.npy` file to write.
        aggregate: `"max"` or `"centroid"`. Defaults to `"max"`.
        batch_size: rows scored at a time. Defaults to `65536`.

    Returns:
        The sorted int64 indices, as a read-only memmap of `path`.

    Example:

    >>> import os, tempfile
    >>> pool = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    >>> out = os.path.join(tempfile.mkdtemp(), "picked.npy")
    >>> reference_similarity_selection_to_file(
    ...     pool, [[1.0, 0.05]], 2, out).tolist()
    [0, 2]
    """
    aggregate = check_choice("aggregate", aggregate, ("max", "centroid"))
    budget = check_integer("budget", budget)
    ref = np.asarray(reference_embeddings, "float32")
    if ref.ndim != 2 or len(ref) == 0 or not np.all(np.isfinite(ref)):
        raise ValueError(
            "`reference_embeddings` must be a non-empty finite 2-D array. "
            f"Received: shape {ref.shape}"
        )
    ref = _unit_rows(ref, "reference_embeddings")
    if aggregate == "centroid":
        ref = _unit_rows(ref.mean(axis=0, keepdims=True))
    stream = Stream(embeddings, batch_size, "embeddings", cosine=True)
    best_scores = np.zeros(0, "float32")
    best_index = np.zeros(0, "int64")
    rows = 0
    for offset, batch in stream:
        if batch.shape[1] != ref.shape[1]:
            raise ValueError(
                "`reference_embeddings` must have the width of "
                f"`embeddings` ({batch.shape[1]}). Received: width "
                f"{ref.shape[1]}"
            )
        scores = np.concatenate([best_scores, (batch @ ref.T).max(axis=1)])
        index = np.concatenate([best_index, offset + np.arange(len(batch))])
        top = np.lexsort((index, -scores))[:budget]
        best_scores, best_index = scores[top], index[top]
        rows = offset + len(batch)
    if budget > rows:
        raise ValueError(
            "`budget` must be at most the number of examples. Received: "
            f"budget={budget} for {rows} examples"
        )
    out = NpyWriter(path, "int64")
    out.write(np.sort(best_index))
    return out.close()


def select_from_dataset(dataset: Any, indices: Any) -> Any:
    """The elements of `dataset` (one example per element) at `indices`
    (an index file path, a memmap or an array), in dataset order:
    `dataset.enumerate().filter(...)` with a boolean lookup table of
    `max(indices) + 1` entries.

    Example:

    >>> import tensorflow as tf
    >>> ds = tf.data.Dataset.range(10, 20)
    >>> [int(v) for v in select_from_dataset(ds, [1, 4])]
    [11, 14]
    """
    import tensorflow as tf

    if isinstance(indices, (str, os.PathLike)):
        indices = np.load(os.fspath(indices), mmap_mode="r")
    indices = np.asarray(indices).astype("int64")
    if indices.ndim != 1 or (len(indices) and indices.min() < 0):
        raise ValueError(
            "`indices` must be a 1-D array of non-negative indices. "
            f"Received: shape {indices.shape}"
        )
    table = np.zeros(int(indices.max(initial=0)) + 1, bool)
    table[indices] = True
    table = tf.constant(table)
    size = tf.constant(len(table), tf.int64)

    def wanted(i, _):
        return tf.logical_and(
            i < size, tf.gather(table, tf.minimum(i, size - 1))
        )

    return dataset.enumerate().filter(wanted).map(lambda i, value: value)
