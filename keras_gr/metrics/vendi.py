"""Vendi score: the effective number of distinct samples."""

import numpy as np


def cosine_similarity_matrix(features, eps=1e-12):
    """`K[i, j] = <x_i, x_j> / (||x_i|| ||x_j||)` (float64)."""
    x = np.asarray(features, dtype="float64")
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(
            "`features` must be a 2-D array (num_samples >= 1, feature_dim). "
            f"Received: features.shape={x.shape}"
        )
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
    return x @ x.T


def vendi_score(features, q=1.0):
    """Vendi score of a set of samples (Friedman and Dieng, arXiv 2210.02410).

    `exp(H_q(eig(K / n)))` with `K` the cosine-similarity matrix and `H_q`
    the Renyi entropy of order `q` of the eigenvalues (Shannon entropy for
    `q = 1`, the LatentCRF evaluation code's setting). Ranges from 1 (all
    samples identical) to `n` (mutually orthogonal embeddings).

    Args:
        features: `(n, feature_dim)` embeddings.
        q: entropy order, > 0. Defaults to `1.0`.
    Returns:
        A float.
    """
    if not isinstance(q, (int, float)) or q <= 0:
        raise ValueError(f"`q` must be a positive number. Received: q={q!r}")
    k = cosine_similarity_matrix(features)
    values = np.linalg.eigvalsh(k / k.shape[0])
    values = values[values > 1e-12]
    values = values / values.sum()
    if q == 1:
        entropy = -np.sum(values * np.log(values))
    else:
        entropy = np.log(np.sum(values**q)) / (1.0 - q)
    return float(np.exp(entropy))
