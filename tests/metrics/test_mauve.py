"""Tests of the native MAUVE (features -> PCA -> k-means -> frontier)."""

import numpy as np
import pytest

from keras_gr.metrics import mauve
from keras_gr.metrics import mauve_from_histograms
from keras_gr.metrics.mauve import divergence_curve
from keras_gr.metrics.mauve import frontier_area
from keras_gr.metrics.mauve import quantize


def _reference_mauve(p, q, c=5.0, size=25):
    """Independent NumPy transcription of the frontier area."""
    p = np.asarray(p, float) / np.sum(p)
    q = np.asarray(q, float) / np.sum(q)

    def kl(a, b):
        if np.any((a > 0) & (b == 0)):
            return np.inf
        m = a > 0
        return np.sum(a[m] * np.log(a[m] / b[m]))

    xs, ys = [0.0], [1.0]
    for w in np.linspace(1e-6, 1 - 1e-6, size):
        r = w * p + (1 - w) * q
        xs.append(np.exp(-c * kl(q, r)))
        ys.append(np.exp(-c * kl(p, r)))
    xs.append(1.0)
    ys.append(0.0)
    xs, ys = np.array(xs), np.array(ys)
    o1, o2 = np.argsort(xs), np.argsort(ys)
    return 0.5 * (np.trapezoid(ys[o1], xs[o1]) + np.trapezoid(xs[o2], ys[o2]))


def test_histogram_mauve_matches_reference():
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = rng.dirichlet(np.ones(7))
        q = rng.dirichlet(np.ones(7) * 0.5)
        np.testing.assert_allclose(
            mauve_from_histograms(p, q), _reference_mauve(p, q), rtol=1e-10
        )
    assert mauve_from_histograms([1, 1, 1], [1, 1, 1]) == pytest.approx(1.0)
    # Exactly equal histograms: every inner frontier point ties at (1, 1);
    # sorting the points by one axis (stable) would give 0.75 here.
    assert mauve_from_histograms([0.5, 0.5], [0.5, 0.5]) == 1.0
    assert mauve_from_histograms([0.2, 0.3, 0.5], [2, 3, 5]) == 1.0


def test_frontier_area_of_known_polylines():
    # The unit square's corner path (1, 0) -> (1, 1) -> (0, 1): area 1;
    # the straight diagonal (1, 0) -> (0, 1): area 1/2.
    assert frontier_area([[1, 0], [1, 1], [1, 1], [0, 1]]) == 1.0
    assert frontier_area([[1, 0], [0.5, 0.5], [0, 1]]) == 0.5
    assert frontier_area([[1, 0], [0.5, 1.0], [0, 1]]) == 0.75
    assert mauve_from_histograms([1, 0], [0, 1]) < 0.01


def test_curve_extremes_and_monotone():
    curve = divergence_curve(np.array([0.7, 0.3]), np.array([0.2, 0.8]))
    assert curve.shape == (27, 2)
    np.testing.assert_allclose(curve[0], [1.0, 0.0])
    np.testing.assert_allclose(curve[-1], [0.0, 1.0])
    assert np.all(np.diff(curve[:, 0]) <= 1e-12)
    assert np.all(np.diff(curve[:, 1]) >= -1e-12)


def test_identical_high_disjoint_low():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 16))
    y = rng.normal(size=(200, 16))
    far = rng.normal(size=(200, 16)) + np.r_[np.full(8, 6.0), np.zeros(8)]
    assert mauve(x, x, kmeans_max_iter=50, num_redo=1) > 0.99
    same = mauve(x, y, kmeans_max_iter=50, num_redo=1)
    apart = mauve(x, far, kmeans_max_iter=50, num_redo=1)
    assert same > 0.7
    assert apart < 0.1


def test_parity_with_mauve_text():
    compute_mauve = pytest.importorskip("mauve").compute_mauve
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    base = rng.normal(size=(300, 12))
    pairs = [
        (base[:150], base[150:]),
        (base[:150], base[150:] + np.r_[np.full(6, 0.8), np.zeros(6)]),
        (base[:150], base[150:] + np.r_[np.full(6, 3.0), np.zeros(6)]),
    ]
    for p, q in pairs:
        ours = mauve(p, q, kmeans_max_iter=100, num_redo=3)
        theirs = compute_mauve(
            p_features=p, q_features=q, kmeans_max_iter=100, kmeans_num_redo=3
        ).mauve
        # Different k-means (faiss vs ours): the histograms differ a little.
        assert abs(ours - theirs) < 0.1, (ours, theirs)
    # Same histograms: exactly the same frontier area.
    hist_p, hist_q = quantize(*pairs[1], kmeans_max_iter=100, num_redo=1)
    from mauve.compute_mauve import get_divergence_curve_for_multinomials
    from sklearn.metrics import auc

    curve = get_divergence_curve_for_multinomials(
        hist_p, hist_q, np.linspace(1e-6, 1 - 1e-6, 25), 5
    )
    x, y = curve.T
    i1, i2 = np.argsort(x), np.argsort(y)
    expected = 0.5 * (auc(x[i1], y[i1]) + auc(y[i2], x[i2]))
    assert mauve_from_histograms(hist_p, hist_q) == pytest.approx(expected)


def test_bad_inputs():
    x = np.ones((10, 3))
    with pytest.raises(ValueError, match="p_features"):
        mauve(np.ones((0, 3)), x)
    with pytest.raises(ValueError, match="same width"):
        mauve(x, np.ones((10, 4)))
    with pytest.raises(ValueError, match="num_buckets"):
        mauve(x, x, num_buckets=0)
    with pytest.raises(ValueError, match="p_hist"):
        mauve_from_histograms([-1.0, 2.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="scaling_factor"):
        mauve_from_histograms([1.0], [1.0], scaling_factor=0)
