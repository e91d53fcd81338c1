"""The Shampoo benchmark package's pure pieces (`benchmarks/shampoo/`)."""

import numpy as np
import pytest

from benchmarks.shampoo import parse_args
from benchmarks.shampoo.common import round_steps
from benchmarks.shampoo.common import speed_row
from benchmarks.shampoo.regression import LOG_FLOOR
from benchmarks.shampoo.regression import final_loss
from benchmarks.shampoo.regression import log_relative_loss
from benchmarks.shampoo.regression import regression_problem
from benchmarks.shampoo.regression import tune_with_extensions


def test_seeds_are_a_list_like_every_script():
    assert parse_args([]).seeds == [0, 1, 2, 3, 4]
    assert parse_args(["--seeds", "3"]).seeds == [3]
    assert parse_args(["--seeds", "1", "2"]).seeds == [1, 2]
    assert parse_args(["--quick", "--seeds", "7"]).seeds == [0, 1]


def test_rounds_cover_whole_root_periods():
    class Opt:
        def __init__(self, f):
            self.precondition_frequency = f

    opts = {"adam": object(), "f10": Opt(10), "f100": Opt(100)}
    assert round_steps(20, opts) == 100
    assert round_steps(20, {"adam": object(), "f10": Opt(10)}) == 20
    assert round_steps(3, {"f10": Opt(10)}) == 30


def test_speed_row_ratios():
    adam = {"mean": 1.0, "median": 0.9, "worst": 2.0, "rounds": [1.0, 1.0]}
    root = {"mean": 3.0, "median": 1.8, "worst": 12.0, "rounds": [2.0, 4.0]}
    row = speed_row("shampoo", root, {"Adam": adam})
    assert row["mean_s"] == 3.0 and row["worst_s"] == 12.0
    assert row["mean_vs_Adam"] == pytest.approx(3.0)
    assert row["median_vs_Adam"] == pytest.approx(2.0)
    assert row["worst_vs_Adam_mean"] == pytest.approx(12.0)
    assert row["round_means_vs_Adam"] == pytest.approx([2.0, 4.0])


def test_regression_problem_and_divergence():
    h, x_star = regression_problem(5)
    np.testing.assert_allclose(h, h.T, atol=1e-6)
    eig = np.sort(np.linalg.eigvalsh(h.astype("float64")))[::-1]
    np.testing.assert_allclose(eig, np.arange(1, 6) ** -2.0, rtol=1e-4)
    assert x_star.shape == (5, 5)
    assert final_loss([1.0, 0.5, 0.25]) == 0.25
    assert final_loss([1.0, np.nan, 0.25]) == np.inf
    assert final_loss([1.0, 2e3, 0.25]) == np.inf


def test_regression_methods_use_the_current_argument_names():
    import warnings

    from benchmarks.shampoo.regression import REGRESSION_METHODS

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for make in REGRESSION_METHODS.values():
            make(0.1)
    renamed = [w for w in caught if "keras_gr" in str(w.message)]
    assert not renamed, [str(w.message) for w in renamed]


def test_regression_measure_is_floored_and_relative():
    assert log_relative_loss([10.0, 1.0, 0.1]) == pytest.approx(-2.0)
    assert log_relative_loss([10.0, 1.0, 0.0]) == LOG_FLOOR
    assert log_relative_loss([10.0, np.inf]) == 3.0


def test_a_best_rate_at_the_edge_extends_the_grid():
    # Loss falls with the rate up to 10 ** 1.6: the top edge moves out,
    # one point of the grid's own spacing at a time.
    def run(lr):
        return [1.0, abs(np.log10(lr) - 1.6) + 1e-3], 0

    grid = [0.1, 1.0, 10.0]
    best, at_edge, tuning = tune_with_extensions(grid, run, 2)
    assert best == pytest.approx(100.0) and not at_edge
    assert sorted(tuning) == pytest.approx([0.1, 1.0, 10.0, 100.0, 1000.0])
    # Out of extensions while still at the edge: flagged.
    best, at_edge, tuning = tune_with_extensions(grid, run, 0)
    assert best == 10.0 and at_edge and len(tuning) == 3

    # Ties at an exact 0 are broken by the loss at 25% of the steps.
    def run0(lr):
        return [1.0, 1.0 / lr, 0.5 / lr, 0.0, 0.0], 0

    best, _, _ = tune_with_extensions([1.0, 2.0, 4.0, 8.0], run0, 0)
    assert best == 8.0
