"""Shared plumbing of the token-sequence task generators (addition, p-hop).

Every generator returns full token sequences plus a boolean `answer_mask`
marking the answer tokens. A causal LM is trained on
`x = tokens[:, :-1]`, `y = tokens[:, 1:]` with `sample_weight =
answer_mask[:, 1:]`, so the loss and accuracy see only the answer.
"""

from typing import Any

import numpy as np


def lm_arrays(
    tokens: Any, answer_mask: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shifts `(tokens, answer_mask)` into next-token training arrays.

    Returns:
        `(x, y, sample_weight)`: `x = tokens[:, :-1]`, `y = tokens[:, 1:]`
        (int32) and `sample_weight = answer_mask[:, 1:]` (float32), so that
        `sample_weight[b, t] = 1` exactly when `y[b, t]` is an answer token.

    Example:

    >>> x, y, w = lm_arrays([[5, 6, 7, 8]], [[False, False, True, True]])
    >>> x.tolist(), y.tolist(), w.tolist()
    ([[5, 6, 7]], [[6, 7, 8]], [[0.0, 1.0, 1.0]])
    """
    tokens = np.asarray(tokens, dtype="int32")
    answer_mask = np.asarray(answer_mask, dtype=bool)
    return (
        tokens[:, :-1],
        tokens[:, 1:],
        answer_mask[:, 1:].astype("float32"),
    )


def exact_match(predicted: Any, y: Any, sample_weight: Any) -> float:
    """Fraction of rows whose every weighted (answer) token is predicted.

    `predicted` are argmax token ids of a teacher-forced forward pass; an
    exact match under teacher forcing is the same event as an exact match of
    greedy decoding.

    Example:

    >>> y = [[1, 2, 3], [1, 2, 3]]
    >>> weight = [[0, 1, 1], [0, 1, 1]]
    >>> exact_match([[9, 2, 3], [1, 2, 4]], y, weight)  # 2nd row: 4 != 3
    0.5
    """
    predicted = np.asarray(predicted)
    w = np.asarray(sample_weight) > 0
    wrong = (predicted != np.asarray(y)) & w
    return float(np.mean(~np.any(wrong, axis=1)))


def to_tf_dataset(
    tokens, answer_mask, batch_size=32, shuffle=True, seed=0, drop_last=False
):
    """A `tf.data.Dataset` of `(x, y, sample_weight)` batches for `fit`.

    TensorFlow is imported here only (for `tf.data`), so the generators stay
    usable with any Keras backend.
    """
    import tensorflow as tf

    x, y, w = lm_arrays(tokens, answer_mask)
    ds = tf.data.Dataset.from_tensor_slices((x, y, w))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=drop_last)
