"""Vendi score: the effective number of distinct samples."""

import math
import numbers
from typing import Any

import numpy as np

from keras_gr._validation import check_array


def cosine_similarity_matrix(features: Any, eps: float = 1e-12) -> np.ndarray:
    """`K[i, j] = <x_i, x_j> / (||x_i|| ||x_j||)` (float64).

    Example:

    >>> cosine_similarity_matrix([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    array([[1., 1., 0.],
           [1., 1., 0.],
           [0., 0., 1.]])
    """
    x = check_array("features", features).astype("float64")
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(
            "`features` must be a 2-D array (num_samples >= 1, feature_dim). "
            f"Received: features.shape={x.shape}"
        )
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
    return x @ x.T


def vendi_score(features: Any, q: float = 1.0) -> float:
    """Vendi score of a set of samples (Friedman and Dieng, arXiv 2210.02410).

    `exp(H_q(p))` with `p = eig(K / n)`, `K` the cosine-similarity matrix
    and `H_q` the Renyi entropy of order `q`: the Shannon entropy
    `-sum p log p` for `q = 1` (the LatentCRF evaluation code's setting),
    `log(sum p^q) / (1 - q)` otherwise, and `-log max p` for `q = inf`
    (so the score is `1 / max p`). Ranges from 1 (all samples identical)
    to `n` (mutually orthogonal embeddings).

    Args:
        features: `(n, feature_dim)` finite embeddings.
        q: entropy order, a number > 0 (`float("inf")` allowed; booleans
            are rejected). Defaults to `1.0`.
    Returns:
        A float.

    Example:

    >>> vendi_score(np.eye(4))
    4.0
    """
    ok = (
        not isinstance(q, (bool, np.bool_))
        and isinstance(q, (numbers.Real, np.integer, np.floating))
        and not math.isnan(q)
        and q > 0
    )
    if not ok:
        raise ValueError(
            "`q` must be a positive number (or float('inf')). "
            f"Received: q={q!r}"
        )
    k = cosine_similarity_matrix(features)
    values = np.linalg.eigvalsh(k / k.shape[0])
    values = values[values > 1e-12]
    values = values / values.sum()
    if q == 1:
        entropy = -np.sum(values * np.log(values))
    elif math.isinf(q):
        entropy = -np.log(np.max(values))
    else:
        entropy = np.log(np.sum(values**q)) / (1.0 - q)
    return float(np.exp(entropy))
