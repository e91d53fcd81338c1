"""Accuracy of class-conditional samples under a reference classifier."""

import numpy as np


def class_accuracy(logits, labels):
    """Fraction of samples whose argmax class equals the conditioning label.

    Args:
        logits: `(n, num_classes)` classifier outputs (logits or
            probabilities).
        labels: `(n,)` integer classes the samples were conditioned on.
    Returns:
        A float in [0, 1].
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            "`logits` must be (n, num_classes) with n = len(labels). "
            f"Received: logits.shape={logits.shape}, "
            f"labels.shape={labels.shape}"
        )
    return float(np.mean(np.argmax(logits, axis=-1) == labels))
