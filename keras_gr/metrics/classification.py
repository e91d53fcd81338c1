"""Accuracy of class-conditional samples under a reference classifier."""

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gr._validation import check_array


def class_accuracy(logits: Any, labels: Any) -> float:
    """Fraction of samples whose argmax class equals the conditioning label.

    A sample whose logits hold a NaN or an infinity counts as wrong (never
    as class 0, which is what a bare `argmax` would make of it): a
    diverged sampler must not score.

    Args:
        logits: `(n, num_classes)` classifier outputs (logits or
            probabilities).
        labels: `(n,)` integer classes the samples were conditioned on.
    Returns:
        A float in [0, 1].

    Example:

    >>> class_accuracy([[2.0, 0.0], [0.0, 1.0], [np.nan, 0.0]], [0, 0, 0])
    0.3333333333333333
    """
    logits = check_array("logits", logits, ndim=2, finite=False)
    labels = check_array("labels", labels).reshape(-1)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(
            "`logits` must be (n, num_classes) with n = len(labels). "
            f"Received: logits.shape={logits.shape}, "
            f"labels.shape={labels.shape}"
        )
    finite = np.all(np.isfinite(logits), axis=-1)
    safe = np.where(finite[:, None], logits, 0.0)
    return float(np.mean((np.argmax(safe, axis=-1) == labels) & finite))


@keras.saving.register_keras_serializable(package="keras_gr")
class ClassAccuracy(keras.metrics.Mean):
    """`class_accuracy` as a Keras metric accumulated over batches.

    `update_state(labels, logits)` (the Keras `(y_true, y_pred)` order)
    adds one 0/1 score per sample: 1 when the argmax of the logits equals
    the integer label and every logit is finite (a NaN or infinite row is
    wrong, never class 0); `result()` is their (optionally weighted) mean.

    Args:
        name: metric name. Defaults to `"class_accuracy"`.
        dtype: metric dtype. Defaults to `None` (float32).

    Example:

    >>> metric = ClassAccuracy()
    >>> metric.update_state([0, 1], [[2.0, 0.0], [3.0, 1.0]])
    >>> metric.update_state([1], [[0.0, 1.0]])
    >>> round(float(metric.result()), 4)
    0.6667
    """

    def __init__(self, name: str = "class_accuracy", dtype: str | None = None):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        logits = ops.convert_to_tensor(y_pred)
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        finite = ops.all(ops.isfinite(logits), axis=-1)
        safe = ops.where(finite[:, None], logits, ops.zeros_like(logits))
        predicted = ops.cast(ops.argmax(safe, axis=-1), "int32")
        correct = ops.logical_and(ops.equal(predicted, labels), finite)
        return super().update_state(
            ops.cast(correct, self.dtype), sample_weight=sample_weight
        )

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}
