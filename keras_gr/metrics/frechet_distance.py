"""Frechet distance between two feature sets (FID-style)."""

import numpy as np


def _as_features(name, x):
    x = np.asarray(x, dtype="float64")
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(
            f"`{name}` must be a 2-D array (num_samples >= 2, feature_dim). "
            f"Received: {name}.shape={x.shape}"
        )
    return x


def _sqrtm_psd(matrix):
    """Symmetric PSD square root via eigh (negative eigenvalues floored)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.maximum(values, 0.0))) @ vectors.T


def frechet_distance_from_moments(mean_a, cov_a, mean_b, cov_b):
    """`||m_a - m_b||^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)`.

    The squared 2-Wasserstein distance between two Gaussians (the FID
    formula, Heusel et al., arXiv 1706.08500). The trace of the matrix
    square root of `C_a C_b` is computed as that of the symmetric PSD
    matrix `C_a^1/2 C_b C_a^1/2` (same eigenvalues), so no complex parts
    appear. Returns a float >= 0 (up to rounding).
    """
    mean_a, mean_b = (
        np.asarray(mean_a, "float64"),
        np.asarray(mean_b, "float64"),
    )
    cov_a, cov_b = np.asarray(cov_a, "float64"), np.asarray(cov_b, "float64")
    if mean_a.shape != mean_b.shape or cov_a.shape != cov_b.shape:
        raise ValueError(
            "the two sets of moments must have the same dimension. Received: "
            f"mean shapes {mean_a.shape} and {mean_b.shape}, covariance "
            f"shapes {cov_a.shape} and {cov_b.shape}"
        )
    root_a = _sqrtm_psd(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_cross = float(np.sum(np.sqrt(np.maximum(cross, 0.0))))
    diff = mean_a - mean_b
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b))
    return value - 2.0 * trace_cross


def frechet_distance(features_a, features_b):
    """FID-style Frechet distance between two sets of feature vectors.

    Fits a Gaussian (mean, unbiased covariance) to each set and returns
    `frechet_distance_from_moments`. With features from a classifier
    trained on the real images this is the FID recipe with that
    classifier in place of Inception.

    Args:
        features_a, features_b: `(num_samples, feature_dim)` arrays.
    Returns:
        A float; ~0 for identical sets.
    """
    a = _as_features("features_a", features_a)
    b = _as_features("features_b", features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            "`features_a` and `features_b` must have the same feature_dim. "
            f"Received: {a.shape[1]} and {b.shape[1]}"
        )
    return frechet_distance_from_moments(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    )
