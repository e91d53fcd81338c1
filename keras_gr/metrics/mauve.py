"""MAUVE: the area under the divergence frontier of two text distributions.

"MAUVE: Measuring the Gap Between Neural Text and Human Text using
Divergence Frontiers" (Pillutla, Swayamdipta, Zellers, Thickstun, Welleck,
Choi, Harchaoui; NeurIPS 2021, arXiv 2102.01454), the measure SoftSRV
("SoftSRV: Learn to Generate Targeted Synthetic Data", arXiv 2410.16534)
reports. Given features of samples from `P` (e.g. generated text) and `Q`
(e.g. target text):

1. stack `[Q; P]`, normalise each row to unit L2 norm, project with PCA on
   the fewest leading components that explain `explained_variance` of the
   variance (no whitening);
2. quantise with k-means into `num_buckets` clusters (the library's one
   k-means, `keras_gr.curation.KMeans`'s in-memory fit from the private
   `keras_gr._kmeans`: full Lloyd, tolerance 1e-4, best of `num_redo`
   seeded runs), giving the
   histograms `p`, `q`;
3. the divergence frontier: for `lambda` on a grid of `discretization_size`
   points in `(0, 1)`, `R_l = l p + (1 - l) q` and the point
   `(exp(-c KL(q || R_l)), exp(-c KL(p || R_l)))` with the scaling
   constant `c = scaling_factor` (5), plus the extreme points `(0, 1)` and
   `(1, 0)`;
4. MAUVE is the area under that curve, averaged over integrating along
   either axis (trapezoid rule), as the reference `mauve-text` 0.4 does;
   the integration follows the curve's mixture-weight order, which equals
   sorting by either axis when the points are distinct and keeps the
   area exactly 1 when `p = q` (all inner points tie at `(1, 1)`).

The defaults are those of `mauve-text` (`num_buckets = max(2, round(min(n_p,
n_q) / 10))`, 0.9 explained variance, 500 k-means iterations, 5 restarts).
The histograms come from a different k-means implementation (faiss there),
so the two agree up to the clustering: exactly given the same histograms
(`mauve_from_histograms`).
"""

from typing import Any

import numpy as np

from keras_gr._kmeans import fit_arrays
from keras_gr._validation import check_array
from keras_gr._validation import check_fraction
from keras_gr._validation import check_integer
from keras_gr._validation import check_positive


def _kl(p, q):
    if np.any((p != 0) & (q == 0)):
        return np.inf
    keep = (p != 0) & (q != 0)
    return float(np.sum(p[keep] * np.log(p[keep] / q[keep])))


def divergence_curve(
    p_hist, q_hist, scaling_factor=5.0, discretization_size=25
):
    """Points `(exp(-c KL(q||R)), exp(-c KL(p||R)))` of the frontier, the
    extreme points first and last; shape `(discretization_size + 2, 2)`."""
    weights = np.linspace(1e-6, 1 - 1e-6, discretization_size)
    points = [[0.0, np.inf]]
    for w in weights:
        r = w * p_hist + (1 - w) * q_hist
        points.append([_kl(q_hist, r), _kl(p_hist, r)])
    points.append([np.inf, 0.0])
    return np.exp(-scaling_factor * np.asarray(points))


def frontier_area(curve) -> float:
    """Area under a divergence frontier given in mixture-weight order.

    `curve` runs from `(1, 0)` to `(0, 1)` (`divergence_curve`), `x`
    falling and `y` rising; the trapezoid rule integrates `y dx` and `x dy`
    along that order and the two areas are averaged. Integrating in the
    curve's own order (not after sorting by `x` or `y`) keeps ties right:
    for `P = Q` every inner point is `(1, 1)` and the area is exactly 1.
    """
    x, y = np.asarray(curve, dtype="float64").T
    along_x = np.sum((x[:-1] - x[1:]) * (y[:-1] + y[1:]) / 2.0)
    along_y = np.sum((y[1:] - y[:-1]) * (x[:-1] + x[1:]) / 2.0)
    return float(0.5 * (along_x + along_y))


def mauve_from_histograms(
    p_hist: Any,
    q_hist: Any,
    scaling_factor: float = 5.0,
    discretization_size: int = 25,
) -> float:
    """MAUVE of two histograms over the same buckets (step 3 and 4).

    Args:
        p_hist, q_hist: non-negative 1-D arrays of the same length; each is
            normalised to sum to 1.
        scaling_factor: the constant `c`. Defaults to `5.0`.
        discretization_size: mixture weights on the frontier. Defaults to
            `25`.

    Example:

    >>> round(mauve_from_histograms([0.5, 0.5], [0.5, 0.5]), 4)
    1.0
    >>> mauve_from_histograms([1.0, 0.0], [0.0, 1.0]) < 0.01
    True
    """
    scaling_factor = check_positive("scaling_factor", scaling_factor)
    discretization_size = check_integer(
        "discretization_size", discretization_size, minimum=2
    )
    p = check_array("p_hist", p_hist, ndim=1).astype("float64")
    q = check_array("q_hist", q_hist, ndim=1).astype("float64")
    for name, h in (("p_hist", p), ("q_hist", q)):
        if np.any(h < 0) or h.sum() <= 0:
            raise ValueError(
                f"`{name}` must be non-negative with a positive sum. "
                f"Received: {name}={h!r}"
            )
    if p.shape != q.shape:
        raise ValueError(
            "`p_hist` and `q_hist` must have the same length. Received: "
            f"{p.shape[0]} and {q.shape[0]}"
        )
    curve = divergence_curve(
        p / p.sum(), q / q.sum(), scaling_factor, discretization_size
    )
    return frontier_area(curve)


def quantize(
    p_features,
    q_features,
    num_buckets="auto",
    explained_variance: float = 0.9,
    kmeans_max_iter: int = 500,
    num_redo: int = 5,
    seed: int = 25,
):
    """Histograms `(p_hist, q_hist)` of steps 1 and 2 (see the module)."""
    p = check_array("p_features", p_features, ndim=2).astype("float64")
    q = check_array("q_features", q_features, ndim=2).astype("float64")
    if p.shape[1] != q.shape[1]:
        raise ValueError(
            "`p_features` and `q_features` must have the same width. "
            f"Received: {p.shape[1]} and {q.shape[1]}"
        )
    if num_buckets == "auto":
        num_buckets = max(2, int(round(min(len(p), len(q)) / 10)))
    num_buckets = check_integer(
        "num_buckets", num_buckets, maximum=len(p) + len(q)
    )
    explained_variance = check_fraction(
        "explained_variance", explained_variance
    )
    data = np.concatenate([q, p], axis=0)
    norms = np.linalg.norm(data, axis=1, keepdims=True)
    data = data / np.maximum(norms, 1e-12)
    centred = data - data.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    ratio = singular**2 / max(float(np.sum(singular**2)), 1e-30)
    keep = int(np.argmax(np.cumsum(ratio) >= explained_variance - 1e-12)) + 1
    reduced = (centred @ components[:keep].T).astype("float32")

    # The library's one k-means (`keras_gr.curation.KMeans`'s in-memory
    # fit), from the private core below the metrics in the dependency
    # order (ARCHITECTURE.md).
    _, labels, _, _ = fit_arrays(
        reduced,
        num_clusters=num_buckets,
        max_iter=check_integer("kmeans_max_iter", kmeans_max_iter),
        tolerance=1e-4,
        num_init=check_integer("num_redo", num_redo),
        batch_size=None,
        seed=check_integer("seed", seed, minimum=0),
        spherical=False,
    )
    q_counts = np.bincount(labels[: len(q)], minlength=num_buckets)
    p_counts = np.bincount(labels[len(q) :], minlength=num_buckets)
    return p_counts / p_counts.sum(), q_counts / q_counts.sum()


def mauve(
    p_features: Any,
    q_features: Any,
    num_buckets: int | str = "auto",
    explained_variance: float = 0.9,
    scaling_factor: float = 5.0,
    discretization_size: int = 25,
    kmeans_max_iter: int = 500,
    num_redo: int = 5,
    seed: int = 25,
) -> float:
    """MAUVE between feature sets `p_features` (n, d) and `q_features`
    (m, d): 1 for identical distributions, near 0 for disjoint ones.

    Features come from any embedder, e.g. `keras_gr.curation`'s
    `BackboneEmbedder(...).embed(texts)` or `HashedNgramEmbedder`.

    Args:
        p_features, q_features: 2-D float arrays of the same width.
        num_buckets: k-means clusters, or `"auto"` (`max(2, round(min(n, m)
            / 10))`). Defaults to `"auto"`.
        explained_variance: PCA variance kept, in (0, 1]. Defaults to `0.9`.
        scaling_factor: the constant `c`. Defaults to `5.0`.
        discretization_size: points on the frontier. Defaults to `25`.
        kmeans_max_iter: Lloyd iterations. Defaults to `500`.
        num_redo: k-means restarts (lowest inertia kept). Defaults to `5`.
        seed: k-means seed. Defaults to `25`.

    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(60, 4))
    >>> round(mauve(x, x), 3)
    1.0
    >>> round(mauve(x + 10.0, -x - 10.0), 3) < 0.1
    True
    """
    p_hist, q_hist = quantize(
        p_features,
        q_features,
        num_buckets=num_buckets,
        explained_variance=explained_variance,
        kmeans_max_iter=kmeans_max_iter,
        num_redo=num_redo,
        seed=seed,
    )
    return mauve_from_histograms(
        p_hist, q_hist, scaling_factor, discretization_size
    )
