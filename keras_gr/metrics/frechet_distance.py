"""Frechet distance between two feature sets (FID-style)."""

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gr._validation import check_array
from keras_gr._validation import check_integer


def _as_features(name, x):
    x = check_array(name, x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(
            f"`{name}` must be a 2-D array (num_samples >= 2, feature_dim). "
            f"Received: {name}.shape={x.shape}"
        )
    return x.astype("float64")


def _sqrtm_psd(matrix):
    """Symmetric PSD square root via eigh (negative eigenvalues floored)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.maximum(values, 0.0))) @ vectors.T


def frechet_distance_from_moments(
    mean_a: Any, cov_a: Any, mean_b: Any, cov_b: Any
) -> float:
    """`||m_a - m_b||^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)`.

    The squared 2-Wasserstein distance between two Gaussians (the FID
    formula, Heusel et al., arXiv 1706.08500). The trace of the matrix
    square root of `C_a C_b` is computed as that of the symmetric PSD
    matrix `C_a^1/2 C_b C_a^1/2` (same eigenvalues), so no complex parts
    appear. Returns a float >= 0 (up to rounding).

    Raises:
        ValueError: when a moment holds a NaN or infinity (named), or the
            shapes differ.

    Example:

    >>> import numpy as np
    >>> # Means 5 apart; covariances I and 4 I: 25 + 2 * (1 + 4 - 2 * 2).
    >>> round(frechet_distance_from_moments(
    ...     [0.0, 0.0], np.eye(2), [3.0, 4.0], 4 * np.eye(2)), 6)
    27.0
    """
    mean_a = check_array("mean_a", mean_a).astype("float64")
    mean_b = check_array("mean_b", mean_b).astype("float64")
    cov_a = check_array("cov_a", cov_a).astype("float64")
    cov_b = check_array("cov_b", cov_b).astype("float64")
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


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """FID-style Frechet distance between two sets of feature vectors.

    Fits a Gaussian (mean, unbiased covariance) to each set and returns
    `frechet_distance_from_moments`. With features from a classifier
    trained on the real images this is the FID recipe with that
    classifier in place of Inception.

    Args:
        features_a, features_b: `(num_samples, feature_dim)` arrays of
            finite values (a NaN or infinity raises a `ValueError` naming
            the argument).
    Returns:
        A float; ~0 for identical sets.

    Example:

    >>> x = np.random.default_rng(0).normal(size=(50, 3))
    >>> round(frechet_distance(x, x + [1.0, 2.0, 0.0]), 6)
    5.0
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


@keras.saving.register_keras_serializable(package="keras_gr")
class FrechetDistance(keras.metrics.Metric):
    """Frechet distance whose feature statistics accumulate over batches.

    `update_state(reference_features, sample_features)` (the Keras
    `(y_true, y_pred)` order) merges each batch into the running count,
    mean and centred scatter matrix of each set (Chan et al.'s pairwise
    update: `M = M_a + M_b + d d^T n_a n_b / n` with `d` the difference of
    the means, numerically stable in float32); either argument may be
    `None` to update only the other set. `result()` is
    `frechet_distance_from_moments` of the two unbiased Gaussians, in
    `keras.ops` (`eigh`), so it equals `frechet_distance` on the
    concatenated batches up to float32 rounding. A NaN in any feature
    makes the result NaN (the NumPy `frechet_distance` raises instead).

    Args:
        feature_dim: the feature dimension.
        name: metric name. Defaults to `"frechet_distance"`.
        dtype: dtype of the statistics. Defaults to `None` (float32).

    Example:

    >>> rng = np.random.default_rng(0)
    >>> real, fake = rng.normal(size=(64, 3)), rng.normal(size=(64, 3)) + 1
    >>> metric = FrechetDistance(feature_dim=3)
    >>> for i in range(0, 64, 16):
    ...     metric.update_state(real[i : i + 16], fake[i : i + 16])
    >>> bool(abs(float(metric.result()) - frechet_distance(real, fake)) < 1e-3)
    True
    """

    def __init__(
        self,
        feature_dim: int,
        name: str = "frechet_distance",
        dtype: str | None = None,
    ):
        super().__init__(name=name, dtype=dtype)
        self.feature_dim = check_integer("feature_dim", feature_dim)
        d = self.feature_dim
        self._stats = {}
        for side in ("a", "b"):
            self._stats[side] = (
                self.add_variable((), "zeros", name=f"count_{side}"),
                self.add_variable((d,), "zeros", name=f"mean_{side}"),
                self.add_variable((d, d), "zeros", name=f"scatter_{side}"),
            )

    def _merge(self, side, features):
        count, mean, scatter = self._stats[side]
        x = ops.cast(ops.convert_to_tensor(features), self.dtype)
        if len(x.shape) != 2 or x.shape[-1] != self.feature_dim:
            raise ValueError(
                f"features must be (batch, {self.feature_dim}). "
                f"Received: shape={tuple(x.shape)}"
            )
        n_b = ops.cast(ops.shape(x)[0], self.dtype)
        mean_b = ops.mean(x, axis=0)
        centred = x - mean_b[None]
        scatter_b = ops.matmul(ops.transpose(centred), centred)
        n_a = ops.convert_to_tensor(count)
        n = n_a + n_b
        delta = mean_b - mean
        mean.assign(mean + delta * (n_b / n))
        scatter.assign(
            scatter
            + scatter_b
            + ops.outer(delta, delta) * (n_a * n_b / ops.maximum(n, 1.0))
        )
        count.assign(n)

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                "`sample_weight` is not supported by FrechetDistance. "
                f"Received: sample_weight={sample_weight!r}"
            )
        if y_true is not None:
            self._merge("a", y_true)
        if y_pred is not None:
            self._merge("b", y_pred)

    def result(self):
        moments = []
        for side in ("a", "b"):
            count, mean, scatter = self._stats[side]
            cov = scatter / ops.maximum(count - 1.0, 1.0)
            moments.append((ops.convert_to_tensor(mean), cov))
        (mean_a, cov_a), (mean_b, cov_b) = moments
        values, vectors = ops.eigh(0.5 * (cov_a + ops.transpose(cov_a)))
        root_a = ops.matmul(
            vectors * ops.sqrt(ops.maximum(values, 0.0))[None],
            ops.transpose(vectors),
        )
        cross = ops.matmul(ops.matmul(root_a, cov_b), root_a)
        cross_values, _ = ops.eigh(0.5 * (cross + ops.transpose(cross)))
        trace_cross = ops.sum(ops.sqrt(ops.maximum(cross_values, 0.0)))
        diff = mean_a - mean_b
        return (
            ops.sum(diff * diff)
            + ops.trace(cov_a)
            + ops.trace(cov_b)
            - 2.0 * trace_cross
        )

    def reset_state(self):
        for variables in self._stats.values():
            for v in variables:
                v.assign(ops.zeros(v.shape, v.dtype))

    def get_config(self):
        return {
            "feature_dim": self.feature_dim,
            "name": self.name,
            "dtype": self.dtype,
        }
