"""SALT teacher passes: data-selection scores (SALT_DS) and offline top-k
distillation targets, each one batched, compiled `predict` pass.

From "A Little Help Goes a Long Way: Efficient LLM Training by Leveraging
Small LMs" (Rawat et al., arXiv 2410.18779). The small LM scores every
training sequence once; the score is the median per-token loss over the
"learnable" tokens, those whose target is in the teacher's top-k (k = 10)
predictions; the highest-scoring sequences ("challenging yet learnable")
feed the KD phase.

Both passes run through `keras.Model.predict` (progress bar, jit). For
data-parallel scoring, call `keras.distribution.set_distribution(
keras.distribution.DataParallel())` before building or loading the
teacher (so its weights are replicated); each predict batch is then
sharded over the devices, with the same scores as on one device.
"""

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gr._validation import check_array
from keras_gr._validation import check_fraction
from keras_gr._validation import check_integer
from keras_gr._validation import check_positive
from keras_gr.losses.distillation import teacher_topk
from keras_gr.models.salt.salt_distiller import TOPK_IDS
from keras_gr.models.salt.salt_distiller import TOPK_LOG_PROBS
from keras_gr.models.salt.salt_distiller import _vocabulary_size
from keras_gr.models.salt.salt_distiller import label_mask_from_padding


def salt_scores_from_logits(
    logits: Any, labels: Any, mask: Any = None, k: int = 10
) -> Any:
    """SALT_DS score of each sequence from its teacher logits.

    With per-token loss `l_i = -log p_T(y_i | x_<i)` and the learnable set
    `S = {i : mask_i and rank(y_i) < k}` (`rank` = number of tokens whose
    logit is strictly larger than the target's, so ties count in the
    target's favour), the score is `median_{i in S} l_i` (the mean of the two
    middle values when `|S|` is even, as `numpy.median`), and `-inf` when
    `S` is empty (such a sequence is never selected before another).

    Args:
        logits: `(B, T, V)` teacher logits.
        labels: `(B, T)` next-token ids.
        mask: `(B, T)` 0/1 label mask, or `None` for all tokens. Defaults to
            `None`.
        k: top-k size, `1 <= k <= V`. Defaults to `10`.

    Returns:
        float32 `(B,)` scores.

    Example:

    >>> import numpy as np
    >>> logits = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]]))
    >>> s = salt_scores_from_logits(logits, np.array([[0, 1]]), k=2)
    >>> round(float(s[0]), 4)  # median of -log 0.7 and -log 0.2
    0.9831
    """
    k = check_integer("k", k)
    logits = ops.cast(logits, "float32")
    labels = ops.cast(labels, "int32")
    log_p = ops.log_softmax(logits, axis=-1)
    target_logit = ops.take_along_axis(logits, labels[..., None], axis=-1)
    target_log_p = ops.take_along_axis(log_p, labels[..., None], axis=-1)
    rank = ops.sum(ops.cast(logits > target_logit, "int32"), axis=-1)
    valid = rank < k
    if mask is not None:
        valid = ops.logical_and(valid, ops.cast(mask, "bool"))
    loss = -target_log_p[..., 0]
    big = ops.convert_to_tensor(3.0e38, "float32")
    ordered = ops.sort(ops.where(valid, loss, big), axis=-1)
    n = ops.sum(ops.cast(valid, "int32"), axis=-1)
    lo = ops.maximum((n - 1) // 2, 0)
    hi = ops.maximum(n // 2, 0)
    v_lo = ops.take_along_axis(ordered, lo[:, None], axis=-1)[:, 0]
    v_hi = ops.take_along_axis(ordered, hi[:, None], axis=-1)[:, 0]
    median = 0.5 * (v_lo + v_hi)
    return ops.where(n > 0, median, float("-inf"))


class _TeacherPass(keras.Model):
    """Runs a frozen teacher and reduces its logits per sequence."""

    def __init__(self, teacher, mode, k, temperature, **kwargs):
        super().__init__(**kwargs)
        self.teacher = teacher
        self.mode = mode
        self.k = k
        self.temperature = temperature

    def call(self, inputs):
        x = {
            "token_ids": inputs["token_ids"],
            "padding_mask": inputs["padding_mask"],
        }
        logits = self.teacher(x, training=False)
        if self.mode == "score":
            return salt_scores_from_logits(
                logits, inputs["labels"], inputs["label_mask"], self.k
            )
        ids, log_probs = teacher_topk(logits, self.k, self.temperature)
        return {TOPK_IDS: ids, TOPK_LOG_PROBS: log_probs}


def _token_array(name, value, shape, vocab):
    """An integer `(N, T)` array of ids in `[0, vocab)`, checked."""
    array = check_array(name, value, ndim=2, allow_empty=False)
    if shape is not None and array.shape != shape:
        raise ValueError(
            f"`{name}` must have the shape of x['token_ids'] {shape}. "
            f"Received: {name} with shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"`{name}` must hold integer token ids. Received: {name} with "
            f"dtype {array.dtype}"
        )
    if vocab is not None and (array.min() < 0 or array.max() >= vocab):
        raise ValueError(
            f"`{name}` must hold ids in [0, {vocab}) (the teacher's "
            f"vocabulary). Received: ids from {array.min()} to {array.max()}"
        )
    return array.astype("int32")


def _mask_array(name, value, shape):
    array = np.asarray(value)
    if array.shape != shape:
        raise ValueError(
            f"`{name}` must have the shape of x['token_ids'] {shape}. "
            f"Received: {name} with shape {array.shape}"
        )
    if np.issubdtype(array.dtype, np.floating) and not np.all(
        np.isfinite(array)
    ):
        raise ValueError(
            f"`{name}` must hold only finite 0/1 values. Received: {name} "
            "with NaN or infinite entries"
        )
    return array.astype(bool)


def _teacher_inputs(teacher, x, labels=None, label_mask=None):
    if not isinstance(x, dict) or "token_ids" not in x:
        raise ValueError(
            "`x` must be a dict with 'token_ids' (and 'padding_mask'), as a "
            f"keras-hub CausalLMPreprocessor returns. Received: x={type(x)!r}"
        )
    vocab = _vocabulary_size(teacher)
    token_ids = _token_array("x['token_ids']", x["token_ids"], None, vocab)
    shape = token_ids.shape
    padding_mask = x.get("padding_mask")
    padding_mask = (
        np.ones(shape, bool)
        if padding_mask is None
        else _mask_array("x['padding_mask']", padding_mask, shape)
    )
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    if labels is not None:
        inputs["labels"] = _token_array("labels", labels, shape, vocab)
        inputs["label_mask"] = (
            np.asarray(label_mask_from_padding(padding_mask)).astype(bool)
            if label_mask is None
            else _mask_array("label_mask", label_mask, shape)
        )
    return inputs


def salt_selection_scores(
    teacher: keras.Model,
    x: dict,
    labels: Any,
    label_mask: Any = None,
    *,
    k: int = 10,
    batch_size: int = 32,
    verbose: str | int = "auto",
) -> np.ndarray:
    """Scores every sequence once with the teacher (SALT_DS), in one
    compiled, batched `predict` pass; see `salt_scores_from_logits`.

    Args:
        teacher: a keras-hub `CausalLM` (its `call` maps `{"token_ids",
            "padding_mask"}` to logits).
        x: `{"token_ids": (N, T), "padding_mask": (N, T)}`.
        labels: `(N, T)` next-token ids.
        label_mask: `(N, T)` label mask (keras-hub's `sample_weight`).
            Defaults to the label mask keras-hub's `CausalLMPreprocessor`
            makes from `x["padding_mask"]` (shifted by one position, see
            `keras_gr.models.salt.salt_distiller.label_mask_from_padding`), so a
            row's last real token, whose label is padding, is not scored.
        k: top-k size, `1 <= k <= V`. Defaults to `10` (the paper).
        batch_size: sequences per predict batch. Defaults to `32`.
        verbose: `predict`'s progress bar setting. Defaults to `"auto"`.

    Returns:
        float32 `(N,)` NumPy scores.

    Example:

    Any `keras.Model` mapping `{"token_ids", "padding_mask"}` to logits
    works as the teacher (a keras-hub `CausalLM` does):

    >>> import keras, numpy as np
    >>> class TinyLM(keras.Model):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.embed = keras.layers.Embedding(16, 4)
    ...         self.head = keras.layers.Dense(16)
    ...     def call(self, x):
    ...         return self.head(self.embed(x["token_ids"]))
    >>> x = {"token_ids": np.ones((3, 5), "int32"),
    ...      "padding_mask": np.ones((3, 5), bool)}
    >>> labels = np.ones((3, 5), "int32")
    >>> scores = salt_selection_scores(TinyLM(), x, labels, k=16,
    ...                                verbose=0)
    >>> scores.shape, bool(np.all(scores > 0))
    ((3,), True)
    """
    vocab = _vocabulary_size(teacher)
    k = check_integer("k", k, maximum=vocab)
    batch_size = check_integer("batch_size", batch_size)
    inputs = _teacher_inputs(teacher, x, labels, label_mask)
    scorer = _TeacherPass(teacher, "score", k, 1.0, name="salt_scorer")
    return np.asarray(
        scorer.predict(inputs, batch_size=batch_size, verbose=verbose),
        "float32",
    )


def select_top_fraction(scores: Any, fraction: float) -> np.ndarray:
    """Indices of the `ceil(fraction * N)` highest-scoring sequences,
    best first (ties broken by the lower index).

    `scores` is a non-empty `(N,)` array; `-inf` (a sequence with no
    learnable token) is allowed and ranked last, NaN and `+inf` are
    rejected with a `ValueError`.

    Example:

    >>> select_top_fraction([0.1, 0.9, 0.5, 0.7], 0.5).tolist()
    [1, 3]
    """
    fraction = check_fraction("fraction", fraction)
    scores = check_array("scores", scores, ndim=1, finite=False)
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(
        scores.dtype, np.complexfloating
    ):
        raise ValueError(
            "`scores` must be real numbers. Received: scores with dtype "
            f"{scores.dtype}"
        )
    bad = np.isnan(scores) | (scores == np.inf)
    if np.any(bad):
        raise ValueError(
            "`scores` must not hold NaN or +inf (-inf, a sequence with no "
            f"learnable token, is allowed). Received: {int(bad.sum())} such "
            f"entries, first at index {int(np.argmax(bad))}"
        )
    count = max(1, math.ceil(fraction * len(scores) - 1e-9))
    order = np.lexsort((np.arange(len(scores)), -scores.astype("float64")))
    return order[:count].astype("int64")


def teacher_topk_targets(
    teacher: keras.Model,
    x: dict,
    *,
    k: int = 32,
    temperature: float = 1.0,
    batch_size: int = 32,
    verbose: str | int = "auto",
) -> dict:
    """Stores the teacher's top-k next-token ids and log-probabilities at
    temperature `tau` for every position, in one compiled `predict` pass.

    Feed them to `SaltDistiller(student, teacher=None, ...)` as extra
    inputs, `x = {**x, **targets}`; the distiller's `temperature` must
    equal the one used here. Memory: `N * T * k * 8` bytes.

    Args:
        teacher: a keras-hub `CausalLM`.
        x: `{"token_ids": (N, T), "padding_mask": (N, T)}`.
        k: positions kept per token, `1 <= k <= V`. Defaults to `32`.
        temperature: `tau > 0`. Defaults to `1.0`.
        batch_size: sequences per predict batch. Defaults to `32`.
        verbose: `predict`'s progress bar setting. Defaults to `"auto"`.

    Returns:
        `{"teacher_topk_ids": int32 (N, T, k),
        "teacher_topk_log_probs": float32 (N, T, k)}` NumPy arrays.

    Example:

    >>> import keras, numpy as np
    >>> class TinyLM(keras.Model):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.embed = keras.layers.Embedding(16, 4)
    ...         self.head = keras.layers.Dense(16)
    ...     def call(self, x):
    ...         return self.head(self.embed(x["token_ids"]))
    >>> x = {"token_ids": np.ones((3, 5), "int32"),
    ...      "padding_mask": np.ones((3, 5), bool)}
    >>> targets = teacher_topk_targets(TinyLM(), x, k=4, verbose=0)
    >>> targets["teacher_topk_ids"].shape
    (3, 5, 4)
    >>> bool(np.all(np.diff(targets["teacher_topk_log_probs"]) <= 0))
    True
    """
    vocab = _vocabulary_size(teacher)
    k = check_integer("k", k, maximum=vocab)
    temperature = check_positive("temperature", temperature)
    batch_size = check_integer("batch_size", batch_size)
    inputs = _teacher_inputs(teacher, x)
    extractor = _TeacherPass(
        teacher, "topk", k, temperature, name="salt_topk_targets"
    )
    out = extractor.predict(inputs, batch_size=batch_size, verbose=verbose)
    return {
        TOPK_IDS: np.asarray(out[TOPK_IDS], "int32"),
        TOPK_LOG_PROBS: np.asarray(out[TOPK_LOG_PROBS], "float32"),
    }
