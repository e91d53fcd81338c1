"""The one `tf.data` wrapper of the generators' arrays.

`tf.data` is Keras's backend-independent input pipeline, so the dataset
functions of `keras_gr.data` return `tf.data.Dataset`s on every backend.
TensorFlow is imported here only, when a dataset is asked for: generating
the NumPy arrays never imports it.
"""

from typing import Any

from keras_gr._imports import require
from keras_gr._validation import check_bool
from keras_gr._validation import check_integer


def batched_dataset(
    arrays: Any,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
    prefetch: int | None = None,
) -> Any:
    """`tf.data.Dataset.from_tensor_slices(arrays)`, batched.

    In this order: shuffled over the whole set with `seed`, reshuffled every
    pass (when `shuffle`); repeated forever (when `repeat`); batched by
    `batch_size` (the last, smaller batch dropped when `drop_remainder`);
    prefetching `prefetch` batches (when given).

    Args:
        arrays: an array or a tuple of arrays with the same first dimension.
        batch_size: rows per batch, >= 1.
        shuffle: shuffle the rows. Defaults to `True`.
        seed: the shuffle's seed. Defaults to `0`.
        repeat: repeat forever. Defaults to `False`.
        drop_remainder: drop the last batch when smaller. Defaults to
            `False`.
        prefetch: batches to prefetch, or `None` (no prefetch, the
            default).
    """
    batch_size = check_integer("batch_size", batch_size)
    shuffle = check_bool("shuffle", shuffle)
    tf = require("tensorflow", "the `tf.data` datasets of `keras_gr.data`")

    ds = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        count = int(ds.cardinality())
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if prefetch is not None:
        ds = ds.prefetch(prefetch)
    return ds
