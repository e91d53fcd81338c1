"""Selection rules the benchmarks' verdicts rest on."""

import numpy as np

from benchmarks import laurel
from benchmarks.looped_icl import AGREE_MAX
from benchmarks.looped_icl import FAIL_RATIO
from benchmarks.looped_icl import agreement
from benchmarks.looped_icl import failed_seeds
from benchmarks.looped_icl import pick_learning_rate


def test_learning_rate_judged_by_its_worst_seed():
    lrs = (0.003, 0.01, 0.03)
    best_val = [
        [0.30, 0.31, 0.32],  # 0.003: slow but every seed trains
        [0.20, 0.21, 0.22],  # 0.01: every seed trains
        [0.10, 0.11, 1.01],  # 0.03: best median, one seed failed
    ]
    index, medians = pick_learning_rate(np.ravel(best_val), lrs, 3)
    assert index == 1  # a median rule would pick 0.03
    np.testing.assert_allclose(medians, [0.31, 0.21, 0.11])


def test_learning_rate_rule_counts_nan_as_failed_and_breaks_ties():
    lrs = (0.01, 0.03, 0.1)
    nan, inf = float("nan"), float("inf")
    # NaN is a failed seed, not a missing one.
    index, _ = pick_learning_rate([0.5, 0.5, 0.5, 0.1, 0.1, nan], lrs[:2], 3)
    assert index == 0
    # Every rate failed on some seed: the lowest median wins.
    best_val = [0.4, 0.4, inf, 0.2, 0.3, nan, 0.1, inf, inf]
    index, medians = pick_learning_rate(best_val, lrs, 3)
    assert index == 1
    assert np.isinf(medians[2])


def test_failed_seeds_are_non_finite_or_far_above_typical():
    typical = 0.1
    losses = [0.1, 0.2, FAIL_RATIO * typical, 0.31, 1.0, float("inf"), np.nan]
    np.testing.assert_array_equal(
        failed_seeds(losses, typical),
        [False, False, False, True, True, True, True],
    )


def test_agreement_floor_spread_and_cap():
    # Within the 10% floor.
    ok, gap, tol = agreement([0.105, 0.106, 0.104], [0.1, 0.1, 0.1])
    assert ok and np.isclose(tol, np.log(1.1))
    # Noisy seeds widen the tolerance past the floor ...
    ok, _, tol = agreement([0.1, 0.2, 0.15], [0.12, 0.3, 0.1])
    assert ok and tol > np.log(1.1)
    # ... but one heavy-tailed seed cannot make 0.027 agree with 4.1.
    ok, gap, tol = agreement([0.03, 0.023, 0.025], [0.03, 0.04, 12.3])
    assert not ok and np.isclose(tol, np.log(AGREE_MAX)) and gap > tol
    # Both diverged: they agree; one diverged: they do not.
    assert agreement([np.inf], [np.inf])[0]
    assert not agreement([np.inf, 0.1], [0.1, 0.1])[0]


def test_digits_metrics_read_evaluate_output():
    # `evaluate` returns [loss, accuracy]; both metrics: lower is better.
    label, error = laurel.DIGIT_METRICS["error"]
    assert label == "test error %"
    np.testing.assert_allclose(error([0.2, 0.9]), 10.0)
    label, loss = laurel.DIGIT_METRICS["loss"]
    assert label == "test cross-entropy"
    assert loss([0.2, 0.9]) == 0.2


def test_looped_icl_claims_are_paired_log_loss_comparisons():
    import types

    from benchmarks.looped_icl.analysis import CLAIMS
    from benchmarks.looped_icl.analysis import LOSS_CAP
    from benchmarks.looped_icl.analysis import claim_verdicts
    from benchmarks.looped_icl.analysis import log_loss
    from benchmarks.looped_icl.analysis import paired_comparisons

    cap = np.log10(LOSS_CAP)
    np.testing.assert_allclose(
        log_loss([0.1, np.inf, np.nan, 1e40]), [-1.0, cap, cap, cap]
    )
    args = types.SimpleNamespace(
        main_kappa=64.0, train_depth=2, shifts=[0.0, 0.1], kappas=[64.0]
    )
    seeds = 5
    low, high = np.full(seeds, 0.01), np.full(seeds, 1.0)
    jitter = np.linspace(1.0, 1.1, seeds)
    per_seed = {
        # Unrestricted lower than restricted at the same depth.
        "test": {
            ("looped_unrestricted", 64.0, 2): low * jitter,
            ("looped_restricted", 64.0, 2): high,
        },
        "shifted": {},
        # More loops: the loss falls, and explodes under the shift.
        "loops": {
            "looped_unrestricted": {
                0.0: np.stack([np.geomspace(1, 1e-3, 8) * j for j in jitter]),
                0.1: np.stack([np.geomspace(1, 1e9, 8) * j for j in jitter]),
            }
        },
    }
    rows = paired_comparisons(args, per_seed)
    assert all(r["n"] == seeds for r in rows)
    verdicts = {v["claim"]: v["status"] for v in claim_verdicts(rows, {})}
    assert verdicts[CLAIMS[0]] == "reproduced"
    assert verdicts[CLAIMS[2]] == "not reproduced"
    assert verdicts[CLAIMS[3]] == "reproduced"
    assert verdicts[CLAIMS[1]] == "not testable"  # no shifted models
