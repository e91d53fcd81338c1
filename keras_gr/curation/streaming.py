"""Streamed and sharded k-means: memory that does not grow with the corpus.

`KMeans.fit`, `predict` and `transform` come here when they are given a
stream instead of one in-memory array: a `numpy.memmap` (e.g.
`np.load(path, mmap_mode="r")`), a `tf.data.Dataset` of rows or of batches,
a callable that returns a fresh iterable of 2-D arrays each time it is
called, or a one-shot iterator / generator of 2-D arrays (one pass only:
`predict` / `transform` take it, `fit` needs several passes and refuses it).

What is held in memory: one padded batch, the reservoir sample used for
seeding, and `O(k d)` statistics, whatever the stream's length.

Fitting a stream (every choice stated):

1. **Seeding pass.** One pass draws a uniform sample of at most
   `sample_size` rows (a bottom-`s` sample: the rows of smallest
   `row_keys`, a seeded hash of each row's bytes, so the sample does not
   depend on how the stream is cut into batches or shards), counts the
   rows and accumulates the per-feature mean and variance in float64
   (for the variance-scaled tolerance, as the in-memory fit). k-means++
   (`kmeans_plusplus`, the same uniforms as the in-memory fit) then seeds
   from the sample. While the stream has at most `sample_size` rows the
   sample is the data itself, in order, so the seeding is exactly the
   in-memory one.
2. **Full Lloyd** (`batch_size=None`): each pass assigns every batch with
   one compiled program (`lloyd_statistics`: the rows in blocks of
   `ASSIGN_BLOCK`, so the distance tile stays in cache) and accumulates
   per-centroid sums (float32 within each block of `SUM_BLOCK` rows,
   float64 across blocks on the host, in order), counts and the `k`
   points farthest from their centroid (for empty clusters, relocated as
   in memory); the new centroids are the means. The next batch is
   dispatched before the last one's statistics are read back. The
   iterations, stopping rule and final inertia are those of the
   in-memory `lloyd`, so for the same seeding the result is the
   in-memory result up to float summation order.
3. **Mini-batch** (`batch_size=b`): `max_iter` steps of Sculley's update
   (`minibatch_step`, the in-memory update), each on the next `b` rows of
   the stream, which is re-read from the start as often as needed.
4. A last pass computes the inertia of the final centroids (distances
   only: no labels, sums or farthest points). A streamed
   fit does not keep `labels` (they would grow with the stream): call
   `predict(stream, labels_path=...)`.

Every batch is padded to one fixed row count and masked, so one program
is compiled per (batch rows, width, k, metric), never per batch or per
dataset. Rows are checked on the host batch by batch: a non-finite value
or (for `metric="cosine"`) a row of zero norm is refused with its global
row index (chosen over skipping: a skipped row would shift every index a
user maps back to documents); so is a batch whose width differs from the
first's, and an empty stream.

**Sharded.** When a `keras.distribution.DataParallel` (or any
distribution) is set, on JAX, each padded batch is laid out along the
distribution's batch dimension (`keras.distribution.distribute_tensor`),
so each device assigns its shard and the compiled program's per-centroid
sums, counts and inertia are reduced across devices by XLA; centroids are
replicated. The batch row count is rounded up to a whole number of
`SUM_BLOCK` blocks per device, so no float32 block sum is split between
devices and XLA's reduction only adds whole blocks to zeros: the fit
equals the one-device fit bit for bit (centroids, inertia, labels; tested
on 8 virtual devices). The sharded path is JAX-only: on TensorFlow a set
distribution is refused with a clear error (the streamed path itself runs
on both).

**Several processes** (JAX, after `keras.distribution.initialize`, e.g.
one process per host of a TPU slice, or CPU processes with gloo
collectives): every process runs the same script with the distribution
over all devices (`DataParallel(devices=keras.distribution.list_devices())`)
and passes `fit` only ITS OWN shard of the stream (e.g. file `i` of `N`
by `jax.process_index()`). Each compiled step takes the global batch made
of every process's padded batch (`keras_gr._backend.global_batch`:
`jax.make_array_from_process_local_data`), so the statistics are reduced
over all processes by XLA and every process takes the same decisions.
The seeding pass all-gathers the row counts, float64 sums and local
samples (the bottom-`s` samples merge exactly), so the fit equals the
one-process fit on the shards read one after the other (process order)
up to float summation order; processes whose shard has fewer batches run
empty (masked) steps so that all run the same program as often. A shard
may be empty (that process then runs masked steps only); an empty stream
on every process is refused on every process alike. Mini-batch steps
then take `batch_size` rows from every process (a global batch of
`processes * batch_size` rows, so not the one-process steps), and every
process runs as many steps per epoch as the longest shard needs.
`predict` and `transform` run on each process's own devices, without
collectives, on its own shard.
"""

import functools
import math
import os

import keras
import numpy as np
from keras import ops

from keras_gr import _backend
from keras_gr.curation.kmeans import assign
from keras_gr.curation.kmeans import check_directions
from keras_gr.curation.kmeans import kmeans_plusplus
from keras_gr.curation.kmeans import minibatch_step
from keras_gr.curation.kmeans import squared_distances


def is_stream(x) -> bool:
    """True for the inputs taken as a stream: a `numpy.memmap`, a
    `tf.data.Dataset`, a callable or an iterator (has `__next__`)."""
    return (
        isinstance(x, np.memmap)
        or hasattr(x, "as_numpy_iterator")
        or callable(x)
        or hasattr(x, "__next__")
    )


class Stream:
    """Batches of exactly `batch_size` rows (the last may be shorter) from
    a stream, checked on the host, as float32 NumPy arrays.

    Args:
        data: see the module docstring for the accepted kinds.
        batch_size: rows per yielded batch.
        name: the argument's name in error messages.
        cosine: refuse rows of zero norm and yield unit rows.
    """

    def __init__(self, data, batch_size, name="x", cosine=False):
        self.data = data
        self.batch_size = batch_size
        self.name = name
        self.cosine = cosine
        self.width = None
        self.one_shot = hasattr(data, "__next__") and not hasattr(
            data, "as_numpy_iterator"
        )
        self._used = False
        # A process of a multi-process fit may hold an empty shard: the
        # emptiness of the whole stream is then decided collectively
        # (`seeding_pass`), never by one process alone (which would
        # leave the others waiting at a collective).
        self.allow_empty = False

    def _chunks(self):
        data = self.data
        if isinstance(data, np.ndarray):
            for start in range(0, len(data), self.batch_size):
                yield data[start : start + self.batch_size]
            return
        if hasattr(data, "as_numpy_iterator"):
            if data.element_spec.shape.rank == 1:
                data = data.batch(self.batch_size)
            yield from data.as_numpy_iterator()
            return
        if self.one_shot:
            if self._used:
                raise ValueError(
                    f"`{self.name}` is a one-shot iterator and was already "
                    "read; pass a re-iterable source (a numpy.memmap, a "
                    "tf.data.Dataset, or a callable returning a fresh "
                    "iterable)."
                )
            self._used = True
            yield from data
            return
        yield from data() if callable(data) else data

    def _check(self, chunk, index, offset):
        chunk = np.asarray(chunk)
        if chunk.ndim == 1:
            chunk = chunk[None, :]
        if chunk.ndim != 2 or not (
            np.issubdtype(chunk.dtype, np.floating)
            or np.issubdtype(chunk.dtype, np.integer)
        ):
            raise ValueError(
                f"`{self.name}` must yield 2-D numeric arrays (rows of "
                f"embeddings). Received: batch {index} with shape "
                f"{chunk.shape} and dtype {chunk.dtype}"
            )
        if self.width is None:
            self.width = chunk.shape[1]
        if chunk.shape[1] != self.width:
            raise ValueError(
                f"Every batch of `{self.name}` must have the width of the "
                f"first ({self.width} columns). Received: batch {index} "
                f"with shape {chunk.shape}"
            )
        chunk = chunk.astype("float32", copy=False)
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            raise ValueError(
                f"`{self.name}` must hold finite values (a NaN or inf row "
                "is refused, not skipped, so indices stay those of the "
                f"data). Received: a non-finite value in row "
                f"{offset + int(np.argmin(finite))}"
            )
        if self.cosine:
            norms = check_directions(self.name, chunk, offset)
            chunk = chunk / norms[:, None]
        return chunk

    def __iter__(self):
        """Yields `(offset, batch)`."""
        buffer, buffered, offset = [], 0, 0
        seen = 0
        for index, chunk in enumerate(self._chunks()):
            chunk = self._check(chunk, index, seen)
            seen += len(chunk)
            buffer.append(chunk)
            buffered += len(chunk)
            while buffered >= self.batch_size:
                joined = (
                    np.concatenate(buffer) if len(buffer) > 1 else buffer[0]
                )
                yield offset, joined[: self.batch_size]
                offset += self.batch_size
                rest = joined[self.batch_size :]
                buffer, buffered = ([rest], len(rest)) if len(rest) else ([], 0)
        if buffered:
            yield offset, np.concatenate(buffer)
            offset += buffered
        if offset == 0 and not self.allow_empty:
            raise ValueError(
                f"`{self.name}` is empty: the stream yielded no rows."
            )


# Rows per partial sum of a Lloyd step. Every compiled step returns its
# per-centroid sums and inertia per block of `SUM_BLOCK` consecutive rows
# (float32, summed in row order inside a block) and the host adds the blocks
# in float64, in order. The padded batch holds a whole number of blocks per
# device, so a block never straddles two devices: the blocks, hence the
# fit, are bit for bit those of one device whatever the number of devices
# (no float32 sum is split by the all-reduce).
SUM_BLOCK = 2048
# Rows assigned at a time on one device (`assign_rows`): the (rows, k)
# distance tile then stays in cache. 2.4x faster than one (65,536, 256)
# tile on this project's 2-core CPU, with identical labels and distances.
ASSIGN_BLOCK = 4096


def lloyd_layout(batch_size, k):
    """`(rows, assign_block)` of the compiled Lloyd step: the fixed padded
    row count of this process's batch (at least `batch_size` and `k`, a
    whole number of `SUM_BLOCK` blocks per local device) and the rows per
    `assign_rows` block (None: all at once, as under a distribution, where
    each device assigns its own shard)."""
    devices = num_devices() // _backend.process_count()
    unit = SUM_BLOCK * devices
    rows = int(math.ceil(max(batch_size, k) / unit) * unit)
    return rows, row_block(rows)


def row_block(rows):
    """Rows per block of `assign_rows` for batches of `rows` rows: the
    largest of `ASSIGN_BLOCK`, `SUM_BLOCK` that splits them into several
    blocks, on one device; None (all at once) otherwise, and under a
    distribution, where each device assigns its own shard."""
    if num_devices() == 1:
        for block in (ASSIGN_BLOCK, SUM_BLOCK):
            if rows > block and rows % block == 0:
                return block
    return None


def _by_blocks(fn, x, block):
    """`fn(x)` for a row-wise `fn` of 1-D outputs, computed over
    consecutive blocks of `block` rows (`ops.map`; `block` divides the
    rows) or, with `block=None`, at once. Row by row the same arithmetic."""
    if block is None:
        return fn(x)
    out = ops.map(fn, ops.reshape(x, (-1, block, ops.shape(x)[1])))
    if isinstance(out, (tuple, list)):
        return tuple(ops.reshape(o, (-1,)) for o in out)
    return ops.reshape(out, (-1,))


def assign_rows(x, centroids, block=None):
    """`assign` (labels, squared distances) by blocks of `block` rows (see
    `_by_blocks`): the same labels and distances as at once."""
    return _by_blocks(lambda rows: assign(rows, centroids), x, block)


def lloyd_statistics(x, mask, centroids, assign_block=None):
    """One batch's share of a Lloyd step.

    Args:
        x: `(b, d)` float32 rows (padding rows anywhere), `b` a multiple of
            `SUM_BLOCK`.
        mask: `(b,)` bool, True for real rows.
        centroids: `(k, d)`, `k <= b`.
        assign_block: see `assign_rows`.

    Returns:
        `(sums (b / SUM_BLOCK, k, d), counts (k,), inertia (b / SUM_BLOCK,),
        far_dist (k,), far_points (k, d))`: masked per-centroid sums and
        summed squared distances to the nearest centroid per block of
        `SUM_BLOCK` rows, counts, and the batch's `k` rows farthest from
        their centroid (padding rows rank last with -1).
    """
    k = ops.shape(centroids)[0]
    n, d = ops.shape(x)
    blocks = n // SUM_BLOCK
    labels, min_dist = assign_rows(x, centroids, assign_block)
    weight = ops.cast(mask, x.dtype)
    block = ops.arange(n, dtype="int32") // SUM_BLOCK
    sums = ops.segment_sum(
        x * weight[:, None], labels + block * k, num_segments=blocks * k
    )
    counts = ops.segment_sum(weight, labels, num_segments=k)
    inertia = ops.segment_sum(min_dist * weight, block, num_segments=blocks)
    far_dist, far_index = ops.top_k(ops.where(mask, min_dist, -1.0), k)
    return (
        ops.reshape(sums, (blocks, k, d)),
        counts,
        inertia,
        far_dist,
        ops.take(x, far_index, axis=0),
    )


def batch_inertia(x, mask, centroids, assign_block=None):
    """`(b / SUM_BLOCK,)` summed squared distances to the nearest centroid
    per block of `SUM_BLOCK` rows (padding rows masked out): the last
    pass's objective, without labels, sums or farthest points."""
    n = ops.shape(x)[0]
    dist = _by_blocks(
        lambda rows: ops.min(squared_distances(rows, centroids), axis=1),
        x,
        assign_block,
    )
    block = ops.arange(n, dtype="int32") // SUM_BLOCK
    return ops.segment_sum(
        dist * ops.cast(mask, x.dtype), block, num_segments=n // SUM_BLOCK
    )


@functools.lru_cache(maxsize=32)
def compiled(kind, backend, **static):
    """One compiled program per (kind, backend, static options); shapes
    are fixed by the padded batch, so one trace per (rows, width, k)."""
    del backend  # part of the cache key only
    fn = {
        "statistics": lloyd_statistics,
        "inertia": batch_inertia,
        "minibatch": minibatch_step,
        "assign": assign,
        "seed": kmeans_plusplus,
        "distances": squared_distances,
        "assign_rows": assign_rows,
    }[kind]
    return _backend.jit(functools.partial(fn, **static) if static else fn)


def num_devices():
    """Devices of the set distribution (1 without one), over all
    processes. Refuses a set distribution on a backend other than JAX."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    if keras.backend.backend() != "jax":
        raise ValueError(
            "The sharded k-means path (a keras.distribution set) is "
            "JAX-only; the streamed path runs on every backend without a "
            "distribution. Received: backend="
            f"{keras.backend.backend()!r} with {distribution!r}"
        )
    return int(np.prod(distribution.device_mesh.shape))


def padded_rows(batch_size, k):
    """The fixed row count of every compiled batch of this process: at
    least `k` (for the farthest-point search), rounded up to a multiple of
    this process's devices."""
    devices = num_devices() // _backend.process_count()
    rows = max(batch_size, k)
    return int(math.ceil(rows / devices) * devices)


def to_device(batch, rows, local=False):
    """`(x, mask)` tensors of `rows` rows (zero-padded), laid out along the
    distribution's batch dimension when one is set. In a multi-process
    run each process passes its own rows and the tensors are the global
    batch of every process's `rows` rows, in process order; with
    `local=True` they stay on this process (no distribution, no
    collective: for `predict` / `transform`, where every process labels
    its own shard)."""
    n = len(batch)
    if n < rows:
        batch = np.concatenate(
            [batch, np.zeros((rows - n, batch.shape[1]), batch.dtype)]
        )
    mask = np.arange(rows) < n
    distribution = keras.distribution.distribution()
    processes = _backend.process_count()
    if distribution is None or (local and processes > 1):
        return ops.convert_to_tensor(batch), ops.convert_to_tensor(mask)
    if processes > 1:
        total = rows * processes
        return tuple(
            _backend.global_batch(
                a, distribution.get_data_layout((total,) + a.shape[1:]), total
            )
            for a in (batch, mask)
        )
    x = keras.distribution.distribute_tensor(
        batch, distribution.get_data_layout(batch.shape)
    )
    m = keras.distribution.distribute_tensor(
        mask, distribution.get_data_layout(mask.shape)
    )
    return x, m


def row_keys(batch, seed):
    """A pseudo-random uint64 key per row, a function of the row's bytes
    and `seed` only (not of its position): the row's float32 values read
    as 64-bit words (a zero column appended to an odd width), a seeded
    linear hash of the words modulo 2^64 (odd multipliers), mixed by the
    SplitMix64 finaliser. Integer arithmetic, so exact on every process.
    Identical rows share a key."""
    batch = np.ascontiguousarray(batch, "float32")
    if batch.shape[1] % 2:
        batch = np.pad(batch, ((0, 0), (0, 1)))
    words = batch.view(np.uint64)
    multipliers = np.random.default_rng([seed, 2]).integers(
        1, 2**63, size=words.shape[1], dtype=np.uint64
    ) | np.uint64(1)
    with np.errstate(over="ignore"):
        h = words @ multipliers
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def _smallest(keys, rows, size):
    """The `size` entries of smallest key (all, in order, when there are
    fewer)."""
    if len(keys) <= size:
        return keys, rows
    keep = np.argpartition(keys, size - 1)[:size]
    return keys[keep], rows[keep]


def seeding_pass(stream, sample_size, seed):
    """One pass: `(sample (s, d), rows, mean per-feature variance,
    batches, process_rows)`, over every process of a multi-process run
    (`process_rows`: the rows of every process's shard, in process
    order; a process with an empty shard takes part with none).

    The sample is a bottom-`s` sample: the `s` rows of smallest
    `row_keys` (a uniform sample without replacement of the distinct
    rows; copies of one row share a key, so they enter together), in key
    order. Because a key depends on the row only, the processes' local
    samples merge into exactly the sample one process reading all the
    shards would draw, which is what makes a multi-process fit equal the
    one-process fit: the keys are all-gathered (8 bytes per sampled row
    and process), every process picks the same `s` smallest, and only
    those rows are all-gathered.
    A stream of at most `s` rows in all is its own sample, in stream order
    (processes in order), so the seeding is then the in-memory one.
    `rows`, the variance (float64 sums) and `batches` (the most batches
    any process read: every process then runs that many compiled steps
    per pass, padding with empty batches) are all-reduced too.
    """
    d = None
    keys = np.zeros(0, np.uint64)
    sample = None
    rows = batches = 0
    for offset, batch in stream:
        if sample is None:
            d = batch.shape[1]
            sample = np.zeros((0, d), "float32")
            totals = np.zeros((2, d), "float64")
        totals[0] += batch.sum(axis=0, dtype="float64")
        totals[1] += np.square(batch, dtype="float64").sum(axis=0)
        rows = offset + len(batch)
        batches += 1
        keys, sample = _smallest(
            np.concatenate([keys, row_keys(batch, seed)]),
            np.concatenate([sample, batch]),
            sample_size,
        )
    # Every process: its counts, totals and sample keys, all-gathered;
    # then only the rows of the merged sample travel.
    mine = _backend.process_index()
    counts = _backend.allgather(
        np.array([rows, batches, len(keys), -1 if d is None else d], "int64")
    )
    if int(counts[:, 0].sum()) == 0:
        raise ValueError(
            f"`{stream.name}` is empty: the stream yielded no rows"
            + (" on any process." if len(counts) > 1 else ".")
        )
    widths = sorted({int(w) for w in counts[:, 3] if w >= 0})
    if len(widths) > 1:
        raise ValueError(
            "Every process must stream rows of the same width. Received "
            f"widths {counts[:, 3].tolist()} (process order; -1: an "
            "empty shard)"
        )
    if d is None:  # this process's shard is empty
        d = widths[0]
        sample = np.zeros((0, d), "float32")
        totals = np.zeros((2, d), "float64")
    totals = _backend.allgather(totals).sum(axis=0)
    sizes = counts[:, 2].astype(int)
    gathered = _backend.allgather(np.pad(keys, (0, sample_size - len(keys))))
    all_keys = np.concatenate([g[:n] for g, n in zip(gathered, sizes)])
    owner = np.repeat(np.arange(len(sizes)), sizes)
    local_index = np.concatenate([np.arange(n) for n in sizes])
    rows = int(counts[:, 0].sum())
    # Stream order (process, then local order) while everything fits;
    # else the smallest keys, in key order.
    chosen = np.arange(len(all_keys))
    if rows > sample_size:
        chosen = np.argpartition(all_keys, sample_size - 1)[:sample_size]
        chosen = chosen[np.argsort(all_keys[chosen], kind="stable")]
    per_process = np.bincount(owner[chosen], minlength=len(sizes))
    send = sample[local_index[chosen[owner[chosen] == mine]]]
    send = np.pad(send, ((0, per_process.max() - len(send)), (0, 0)))
    received = _backend.allgather(send)
    merged = np.empty((len(chosen), d), "float32")
    for process, count in enumerate(per_process):
        merged[owner[chosen] == process] = received[process][:count]
    mean = totals[0] / rows
    variance = np.maximum(totals[1] / rows - np.square(mean), 0.0)
    return (
        merged,
        rows,
        float(np.mean(variance)),
        int(counts[:, 1].max()),
        counts[:, 0].astype(int).tolist(),
    )


def _farthest(far_dist, far_points, new_dist, new_points, k):
    """The `k` largest distances (earlier first on ties) of two lists."""
    dist = np.concatenate([far_dist, new_dist])
    points = np.concatenate([far_points, new_points])
    order = np.argsort(-dist, kind="stable")[:k]
    return dist[order], points[order]


def lloyd_pass(stream, centroids, layout, batches=0):
    """One full pass: float64 `(sums, counts, inertia)` and the `k`
    farthest points; at least `batches` compiled steps (empty, masked
    batches after the stream's own: every process of a multi-process run
    must run as many). `layout`: `lloyd_layout`'s `(rows, assign_block)`.

    The next batch is dispatched before the previous step's results are
    read back, so on JAX the host reads and checks a batch while the
    device computes (asynchronous dispatch)."""
    rows, block = layout
    k, d = centroids.shape
    fn = compiled("statistics", keras.backend.backend(), assign_block=block)
    c = ops.convert_to_tensor(centroids)
    totals = {
        "sums": np.zeros((k, d), "float64"),
        "counts": np.zeros(k, "float64"),
        "inertia": 0.0,
        "far_dist": np.full(0, -1.0, "float32"),
        "far_points": np.zeros((0, d), "float32"),
    }

    def absorb(out):
        s, n, e, fd, fp = (ops.convert_to_numpy(v) for v in out)
        for block_sums, block_inertia in zip(s.astype("float64"), e):
            totals["sums"] += block_sums
            totals["inertia"] += float(block_inertia)
        totals["counts"] += n
        totals["far_dist"], totals["far_points"] = _farthest(
            totals["far_dist"], totals["far_points"], fd, fp, k
        )

    _pipelined(fn, c, _then_empty(stream, batches, _empty(d)), rows, absorb)
    return (
        totals["sums"],
        totals["counts"],
        totals["inertia"],
        totals["far_points"],
    )


def inertia_pass(stream, centroids, layout, batches=0):
    """One pass: the float64 inertia of `centroids` (blocks summed as in
    `lloyd_pass`; the distances come from a program without labels, so
    the value may differ from `lloyd_pass`'s in the last float32 bits)."""
    rows, block = layout
    fn = compiled("inertia", keras.backend.backend(), assign_block=block)
    c = ops.convert_to_tensor(centroids)
    total = [0.0]

    def absorb(out):
        for block_inertia in ops.convert_to_numpy(out):
            total[0] += float(block_inertia)

    batches_in = _then_empty(stream, batches, _empty(centroids.shape[1]))
    _pipelined(fn, c, batches_in, rows, absorb)
    return total[0]


def _empty(d):
    return np.zeros((0, d), "float32")


def _pipelined(fn, centroids, batches, rows, absorb):
    """`absorb(fn(x, mask, centroids))` for every batch, each step
    dispatched before the previous one's results are read."""
    pending = None
    for batch in batches:
        out = fn(*to_device(batch, rows), centroids)
        if pending is not None:
            absorb(pending)
        pending = out
    if pending is not None:
        absorb(pending)


def _then_empty(stream, batches, empty):
    """The stream's batches, then `empty` until `batches` in all."""
    count = 0
    for _, batch in stream:
        count += 1
        yield batch
    for _ in range(batches - count):
        yield empty


def lloyd_update(centroids, sums, counts, far_points, spherical):
    """The in-memory `_update` from streamed statistics: means; the i-th
    empty cluster takes the i-th farthest point."""
    means = (sums / np.maximum(counts, 1.0)[:, None]).astype("float32")
    empty = counts == 0
    rank = np.maximum(np.cumsum(empty) - 1, 0)
    new = np.where(empty[:, None], far_points[rank], means)
    if spherical:
        new = new / np.maximum(
            np.linalg.norm(new, axis=1, keepdims=True), 1e-12
        )
    return new.astype("float32")


def fit_stream(kmeans, data):
    """`KMeans.fit` on a stream; sets the fitted attributes of `kmeans`."""
    spherical = kmeans.metric == "cosine"
    k = kmeans.num_clusters
    layout = lloyd_layout(kmeans.stream_batch_size, k)
    stream = Stream(data, kmeans.stream_batch_size, "x", spherical)
    if stream.one_shot:
        raise ValueError(
            "`x` is a one-shot iterator, but fitting reads the stream "
            "several times; pass a numpy.memmap, a tf.data.Dataset or a "
            "callable returning a fresh iterable."
        )
    stream.allow_empty = _backend.process_count() > 1
    sample_size = kmeans.sample_size or max(40 * k, 10_000)
    reservoir, rows, variance, batches, process_rows = seeding_pass(
        stream, sample_size, kmeans.seed
    )
    if k > rows:
        raise ValueError(
            "`num_clusters` must be at most the number of points. "
            f"Received: num_clusters={k} for a stream of {rows} rows"
        )
    tolerance = kmeans.tolerance * variance
    trials = 2 + int(math.log(k))
    rng = np.random.default_rng(kmeans.seed)
    backend = keras.backend.backend()
    best = None
    for _ in range(kmeans.num_init):
        uniforms = rng.random((k, trials), "float32")
        centroids = ops.convert_to_numpy(
            compiled("seed", backend)(
                ops.convert_to_tensor(reservoir),
                ops.convert_to_tensor(uniforms),
            )
        ).astype("float32")
        if kmeans.batch_size is None:
            iterations = 0
            shift = np.inf
            while iterations < kmeans.max_iter and shift > tolerance:
                sums, counts, _, far = lloyd_pass(
                    stream, centroids, layout, batches
                )
                new = lloyd_update(centroids, sums, counts, far, spherical)
                shift = float(np.sum(np.square(new - centroids)))
                centroids = new
                iterations += 1
        else:
            mini = Stream(data, kmeans.batch_size, "x", spherical)
            mini.allow_empty = stream.allow_empty
            # Every process runs as many steps per epoch as the process
            # with the most mini-batches (masked empty ones after its
            # own), so all meet at every collective.
            steps = max(-(-r // kmeans.batch_size) for r in process_rows)
            empty = np.zeros((0, reservoir.shape[1]), "float32")
            rows_b = padded_rows(kmeans.batch_size, 1)
            fn = compiled("minibatch", backend, spherical=spherical)
            c = ops.convert_to_tensor(centroids)
            n = ops.zeros((k,), "float32")
            iterations = 0
            while iterations < kmeans.max_iter:
                epoch = ((0, b) for b in _then_empty(mini, steps, empty))
                for _, batch in epoch:
                    c, n = fn(*to_device(batch, rows_b), c, n)
                    iterations += 1
                    if iterations == kmeans.max_iter:
                        break
            centroids = ops.convert_to_numpy(c).astype("float32")
        inertia = inertia_pass(stream, centroids, layout, batches)
        if best is None or inertia < best[1]:
            best = (centroids, inertia, iterations)
    kmeans.centroids, kmeans.inertia, kmeans.iterations = best
    kmeans.labels = None
    kmeans.num_rows = rows
    return kmeans


class NpyWriter:
    """Appends rows to a `.npy` file whose length is not known in advance
    (a fixed 128-byte header is rewritten with the final shape on
    `close`); the file then opens with `np.load(path, mmap_mode="r")`."""

    HEADER = 128

    def __init__(self, path, dtype, trailing=()):
        self.path = os.fspath(path)
        self.dtype = np.dtype(dtype)
        self.trailing = tuple(trailing)
        self.rows = 0
        self.file = open(self.path, "wb")
        self.file.write(b"\0" * self.HEADER)

    def write(self, values):
        values = np.ascontiguousarray(values, self.dtype)
        self.file.write(values.tobytes())
        self.rows += len(values)

    def close(self):
        shape = (self.rows,) + self.trailing
        descr = np.lib.format.dtype_to_descr(self.dtype)
        header = repr(
            {"descr": descr, "fortran_order": False, "shape": shape}
        ).encode("latin1")
        prefix = b"\x93NUMPY\x01\x00"
        pad = self.HEADER - len(prefix) - 2 - len(header) - 1
        header = header + b" " * pad + b"\n"
        self.file.seek(0)
        self.file.write(prefix + len(header).to_bytes(2, "little") + header)
        self.file.close()
        return np.load(self.path, mmap_mode="r")


def predict_stream(kmeans, data, labels_path=None, distances_path=None):
    """Streamed `predict`: labels (and optionally the squared distance to
    the nearest centroid), in memory or written to `.npy` files."""
    spherical = kmeans.metric == "cosine"
    rows = padded_rows(kmeans.stream_batch_size, 1)
    block = row_block(rows)
    fn = compiled("assign_rows", keras.backend.backend(), block=block)
    c = ops.convert_to_tensor(kmeans.centroids)
    labels = NpyWriter(labels_path, "int32") if labels_path else []
    dists = NpyWriter(distances_path, "float32") if distances_path else None
    stream = Stream(data, kmeans.stream_batch_size, "x", spherical)
    for _, batch in _checked_width(stream, kmeans):
        lab, dist = fn(to_device(batch, rows, local=True)[0], c)
        lab = ops.convert_to_numpy(lab)[: len(batch)]
        if labels_path:
            labels.write(lab)
        else:
            labels.append(lab)
        if dists is not None:
            dists.write(ops.convert_to_numpy(dist)[: len(batch)])
    if dists is not None:
        dists.close()
    if labels_path:
        return labels.close()
    return np.concatenate(labels).astype("int32")


def transform_stream(kmeans, data, path=None):
    """Streamed `transform`: `(n, k)` squared distances, in memory or
    written to a `.npy` file."""
    rows = padded_rows(kmeans.stream_batch_size, 1)
    fn = compiled("distances", keras.backend.backend())
    c = ops.convert_to_tensor(kmeans.centroids)
    k = len(kmeans.centroids)
    out = NpyWriter(path, "float32", (k,)) if path else []
    stream = Stream(
        data, kmeans.stream_batch_size, "x", kmeans.metric == "cosine"
    )
    for _, batch in _checked_width(stream, kmeans):
        d = ops.convert_to_numpy(fn(to_device(batch, rows, local=True)[0], c))
        d = d[: len(batch)]
        if path:
            out.write(d)
        else:
            out.append(d)
    if path:
        return out.close()
    return np.concatenate(out).astype("float32")


def _checked_width(stream, kmeans):
    width = kmeans.centroids.shape[1]
    for offset, batch in stream:
        if batch.shape[1] != width:
            raise ValueError(
                f"`x` must have {width} columns (the width of the fitted "
                f"data). Received: batches of shape {batch.shape}"
            )
        yield offset, batch
