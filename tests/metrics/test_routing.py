"""Routing metrics (deferral curve, area, QNC, APGR, CPT, AIQ): known
answers and an independent dense-grid NumPy reference."""

import numpy as np
import pytest

from keras_gr.metrics import aiq
from keras_gr.metrics import apgr
from keras_gr.metrics import cpt
from keras_gr.metrics import deferral_area
from keras_gr.metrics import deferral_curve
from keras_gr.metrics import monotone_curve
from keras_gr.metrics import plot_deferral_curves
from keras_gr.metrics import quality_neutral_cost
from keras_gr.metrics import upper_hull


def _dense_area(costs, qualities, lo, hi, hull=False, num=200001):
    """Reference: evaluate the budget curve (or the best mix of two points
    for the hull) on a dense grid and average it."""
    costs = np.asarray(costs, float)
    qualities = np.asarray(qualities, float)
    grid = np.linspace(lo, hi, num)
    if hull:
        # Best quality of any mix of two points with average cost <= c.
        best = np.zeros_like(grid)
        for i in range(len(costs)):
            for j in range(len(costs)):
                ci, cj = costs[i], costs[j]
                qi, qj = qualities[i], qualities[j]
                if ci == cj:
                    val = np.where(grid >= ci, max(qi, qj), 0.0)
                else:
                    a, b = (i, j) if ci < cj else (j, i)
                    t = np.clip((grid - costs[a]) / (costs[b] - costs[a]), 0, 1)
                    val = np.where(
                        grid >= costs[a],
                        qualities[a] + t * (qualities[b] - qualities[a]),
                        0.0,
                    )
                best = np.maximum(best, val)
        values = best
    else:
        # Non-dominated points (brute force), joined linearly, flat after
        # the last one, 0 before the first.
        keep = [
            i
            for i in range(len(costs))
            if not any(
                (costs[j] < costs[i] and qualities[j] >= qualities[i])
                or (costs[j] == costs[i] and qualities[j] > qualities[i])
                or (
                    costs[j] == costs[i]
                    and qualities[j] == qualities[i]
                    and j < i
                )
                for j in range(len(costs))
            )
        ]
        order = sorted(keep, key=lambda i: costs[i])
        c, q = costs[order], qualities[order]
        values = np.where(grid >= c[0], np.interp(grid, c, q), 0.0)
    return float(np.trapezoid(values, grid) / (hi - lo))


def test_deferral_curve_known_answer():
    correct = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 1]], float)
    costs, qualities = deferral_curve(
        [[0, 0, 0], [0, 1, 2], [2, 2, 2]], correct, [1.0, 2.0, 5.0]
    )
    np.testing.assert_allclose(costs, [1.0, 8.0 / 3.0, 5.0])
    np.testing.assert_allclose(qualities, [1.0 / 3.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="choices"):
        deferral_curve([[0, 1]], correct, [1.0, 2.0, 5.0])


def test_single_point_and_two_point_areas():
    assert deferral_area([3.0], [0.4]) == pytest.approx(0.4)
    assert aiq([3.0], [0.4]) == pytest.approx(0.4)
    # A straight line from (1, 0.2) to (3, 0.6): mean 0.4.
    assert deferral_area([1.0, 3.0], [0.2, 0.6]) == pytest.approx(0.4)
    # Extended flat to the pool's most expensive model.
    assert deferral_area([1.0, 3.0], [0.2, 0.6], (1.0, 5.0)) == (
        pytest.approx((0.4 * 2 + 0.6 * 2) / 4)
    )
    # Zero before the curve's cheapest point.
    assert deferral_area([3.0], [0.6], (1.0, 5.0)) == pytest.approx(0.3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_areas_match_dense_reference(seed):
    rng = np.random.default_rng(seed)
    costs = rng.uniform(1.0, 10.0, size=7)
    qualities = rng.uniform(0.0, 1.0, size=7)
    lo, hi = 0.5, 11.0
    assert deferral_area(costs, qualities, (lo, hi)) == pytest.approx(
        _dense_area(costs, qualities, lo, hi), abs=2e-4
    )
    assert aiq(costs, qualities, (lo, hi)) == pytest.approx(
        _dense_area(costs, qualities, lo, hi, hull=True), abs=2e-4
    )
    assert aiq(costs, qualities) >= deferral_area(costs, qualities) - 1e-12


def test_hull_and_monotone_curve():
    c, q = monotone_curve([3.0, 1.0, 2.0, 2.0], [0.5, 0.1, 0.7, 0.2])
    np.testing.assert_allclose(c, [1.0, 2.0])  # (3, .5) and (2, .2) drop
    np.testing.assert_allclose(q, [0.1, 0.7])
    hc, hq = upper_hull([1.0, 2.0, 3.0, 4.0], [0.0, 0.2, 1.0, 0.9])
    np.testing.assert_allclose(hc, [1.0, 3.0])  # (2, .2) under, (4, .9) flat
    np.testing.assert_allclose(hq, [0.0, 1.0])


def test_qnc():
    # Reaches 0.75 halfway between (1, 0.5) and (3, 1.0): cost 2.
    assert quality_neutral_cost([1.0, 3.0], [0.5, 1.0], 0.75, 4.0) == 0.5
    assert quality_neutral_cost([1.0, 3.0], [0.5, 1.0], 0.5, 4.0) == 0.25
    assert quality_neutral_cost([1.0], [0.5], 0.9, 4.0) == float("inf")


def test_apgr_and_cpt_of_the_random_mix():
    # The random mix of weak and strong: PGR(x) = x, APGR = 1/2,
    # CPT(p) = p.
    weak, strong = (2.0, 0.3), (10.0, 0.8)
    costs, qualities = [2.0, 10.0], [0.3, 0.8]
    assert apgr(costs, qualities, weak, strong) == pytest.approx(0.5)
    for p in [0.2, 0.5, 0.8]:
        assert cpt(costs, qualities, weak, strong, p) == pytest.approx(p)
    # A router that recovers the whole gap at 25% cost: APGR = 1 - 0.25/2.
    routed = [2.0, 4.0, 10.0], [0.3, 0.8, 0.8]
    assert apgr(*routed, weak, strong) == pytest.approx(0.875)
    assert cpt(*routed, weak, strong, 0.5) == pytest.approx(0.125)
    with pytest.raises(ValueError, match="strong"):
        apgr(costs, qualities, strong, weak)
    with pytest.raises(ValueError, match="fraction"):
        cpt(costs, qualities, weak, strong, 1.5)


def test_bad_input():
    with pytest.raises(ValueError, match="costs"):
        deferral_area([1.0, -1.0], [0.2, 0.3])
    with pytest.raises(ValueError, match="qualities"):
        deferral_area([1.0, 2.0], [0.2])
    with pytest.raises(ValueError, match="cost_range"):
        deferral_area([1.0, 2.0], [0.2, 0.3], (3.0, 1.0))


def test_plot(tmp_path):
    path = plot_deferral_curves(
        {"a": ([1.0, 2.0], [0.2, 0.5])},
        str(tmp_path / "curves.png"),
        model_points=([1.0, 2.0], [0.2, 0.5], ["x", "y"]),
    )
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "choices, match",
    [
        ([[-1, 0]], r"choices.*-1"),  # was wrapped to the last model
        ([[0, 2]], r"choices.*2"),  # was a raw IndexError
        ([[0.5, 1]], "choices"),  # was truncated to 0
        ([[[0, 1]]], "choices"),  # rank 3
        (np.zeros((1, 0), "int64"), "choices"),  # empty
    ],
)
def test_deferral_curve_rejects_bad_model_indices(choices, match):
    # Issue 26 item 18: out-of-range indices must not wrap or raise a raw
    # IndexError.
    correct = np.array([[1.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=match):
        deferral_curve(choices, correct, [1.0, 3.0])


def test_deferral_curve_rejects_inconsistent_pool():
    correct = np.array([[1.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="model_costs"):
        deferral_curve([[0, 1]], correct, [1.0, 3.0, 4.0])
    with pytest.raises(ValueError, match=r"correctness.*\[0, 1\]"):
        deferral_curve([[0, 1]], correct * 2.0, [1.0, 3.0])
    with pytest.raises(ValueError, match="model_costs"):
        deferral_curve([[0, 1]], correct, [1.0, -3.0])
