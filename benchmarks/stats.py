"""The one statistics rule behind every benchmark verdict (issue 28).

A claim of a paper is tested as a *paired* comparison over seeds: the
method and its baseline run on the same seeds (same initialisation seed,
same data order), and the unit of evidence is the per-seed difference
`d_i = method_i - baseline_i`. From the `n` differences we report their
mean and a 95% confidence interval:

- `"t"` (default): the paired t interval, `mean +- t_{0.975, n-1} * s /
  sqrt(n)` with `s` the sample standard deviation of the differences;
- `"bootstrap"`: the percentile bootstrap of the mean difference (10 000
  resamples of the seeds with replacement, a fixed generator seed so the
  interval is reproducible); use it where the differences are skewed
  (one diverged seed, a heavy tail).

The verdict words are defined here once; every script uses `verdict`:

- **reproduced**: the mean difference has the paper's direction, its 95%
  interval excludes zero, and (when the paper's size is given) it is at
  least `MUCH_SMALLER` (one half) of the paper's size;
- **partly reproduced**: the paper's direction but the interval contains
  zero, or significant but smaller than half the paper's size;
- **not reproduced**: otherwise: a zero mean difference or the opposite
  direction (significant or not); a claim tested by several comparisons
  (`combine`) is not reproduced as soon as one of them is significant in
  the opposite direction;
- **not testable**: fewer than `MIN_SEEDS` (5) paired seeds, or both arms
  sit at the measure's floor (MAUVE of disjoint sets, chance accuracy),
  where no difference can show, or a non-finite value (a diverged seed
  the caller did not cap). Never a verdict then.

The t quantile is computed here (regularised incomplete beta function,
inverted by bisection) so that the benchmarks need no SciPy; the tests
check it against `scipy.stats`.
"""

import math

import numpy as np

REPRODUCED = "reproduced"
PARTLY = "partly reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable"
WORDS = (REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_TESTABLE)

MIN_SEEDS = 5
MUCH_SMALLER = 0.5
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000

RULE = (
    "Verdicts follow benchmarks/stats.py: paired per-seed differences "
    "(method - baseline, same seeds), mean with a 95% interval (paired t, "
    "or percentile bootstrap where marked). 'reproduced' = the paper's "
    "direction, interval excluding 0, and at least half the paper's size "
    "where it is compared; 'partly reproduced' = the direction but not "
    "significant, or significant but under half the paper's size; 'not "
    "reproduced' = zero or the opposite direction (and a claim with any "
    "comparison significantly opposite); 'not testable' = fewer "
    f"than {MIN_SEEDS} seeds or both arms at the measure's floor."
)


def _betacf(a, b, x):
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a, b, x):
    """Regularised incomplete beta function I_x(a, b) for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b)
        - math.lgamma(a)
        - math.lgamma(b)
        + a * math.log(x)
        + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t, df):
    """Student t cumulative distribution function with `df` degrees."""
    t2 = t * t
    # P(|T| > |t|) = I_x(df/2, 1/2) with x = df / (df + t^2); for small t
    # the complement I_{1-x}(1/2, df/2) keeps the precision of 1 - x.
    if t2 < df:
        tail = 0.5 * (1.0 - _betainc(0.5, 0.5 * df, t2 / (df + t2)))
    else:
        tail = 0.5 * _betainc(0.5 * df, 0.5, df / (df + t2))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p, df):
    """Inverse of `t_cdf` in `t` (bisection to 1e-12), for 0 < p < 1."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"`p` must be in (0, 1). Received: p={p}")
    if df < 1:
        raise ValueError(f"`df` must be >= 1. Received: df={df}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def _pair(method, baseline):
    method = np.asarray(method, dtype=float).ravel()
    baseline = np.asarray(baseline, dtype=float).ravel()
    if method.shape != baseline.shape:
        raise ValueError(
            "`method` and `baseline` must hold one value per seed, the "
            f"same seeds in the same order. Received: {method.size} and "
            f"{baseline.size} values"
        )
    return method, baseline


def paired_difference(
    method, baseline, *, interval="t", confidence=CONFIDENCE, seed=0
):
    """Mean of the per-seed differences `method - baseline` and its interval.

    Args:
        method: one value per seed for the paper's method.
        baseline: one value per seed for the baseline, same seeds, same
            order.
        interval: `"t"` (paired t) or `"bootstrap"` (percentile bootstrap
            of the mean, `BOOTSTRAP_RESAMPLES` resamples).
        confidence: two-sided level of the interval. Defaults to 0.95.
        seed: generator seed of the bootstrap. Defaults to 0.

    Returns:
        dict with `n`, `mean`, `low`, `high`, `t` (the paired t statistic,
        `inf` when every difference is equal and non-zero), `interval`.
        Non-finite values (a diverged seed) are kept, so the mean and the
        interval are then non-finite; `verdict` calls that not testable
        (the caller should first replace a diverged seed's value by the
        measure's worst finite value, e.g. the loss at initialisation).
    """
    if interval not in ("t", "bootstrap"):
        raise ValueError(
            "`interval` must be 't' or 'bootstrap'. "
            f"Received: interval={interval!r}"
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(
            f"`confidence` must be in (0, 1). Received: confidence={confidence}"
        )
    method, baseline = _pair(method, baseline)
    d = method - baseline
    n = int(d.size)
    out = {"n": n, "interval": interval, "confidence": confidence}
    if n == 0:
        return {
            **out,
            "mean": math.nan,
            "low": math.nan,
            "high": math.nan,
            "t": math.nan,
        }
    mean = float(np.mean(d))
    if not np.all(np.isfinite(d)):
        return {
            **out,
            "mean": mean,
            "low": math.nan,
            "high": math.nan,
            "t": math.nan,
        }
    if n == 1:
        return {
            **out,
            "mean": mean,
            "low": -math.inf,
            "high": math.inf,
            "t": math.nan,
        }
    sd = float(np.std(d, ddof=1))
    se = sd / math.sqrt(n)
    if se > 0:
        t_stat = mean / se
    else:
        t_stat = math.copysign(math.inf, mean) if mean else 0.0
    alpha = 1.0 - confidence
    if interval == "t":
        q = t_quantile(1.0 - alpha / 2.0, n - 1)
        low, high = mean - q * se, mean + q * se
    else:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
        means = d[idx].mean(axis=1)
        low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
        low, high = float(low), float(high)
    return {**out, "mean": mean, "low": low, "high": high, "t": t_stat}


def at_floor(values, floor, margin):
    """Whether the mean of `values` lies within `margin` of `floor`."""
    values = np.asarray(values, dtype=float)
    return bool(abs(float(np.mean(values)) - floor) <= margin)


def verdict(
    method,
    baseline,
    *,
    direction,
    paper_effect=None,
    relative=False,
    floor=None,
    floor_margin=0.0,
    interval="t",
):
    """The verdict on one claim, from paired per-seed values.

    Args:
        method: one value per seed for the paper's method.
        baseline: one value per seed for the baseline (same seeds).
        direction: `+1` when the paper says the method's value is higher
            (accuracy, MAUVE), `-1` when lower (loss, error, time).
        paper_effect: the paper's size of `method - baseline`, in the same
            units (or, with `relative=True`, as a fraction of the
            baseline, e.g. -0.05 for "5% lower"). `None`: the size is not
            compared (the paper's scale is not ours) and the record says so.
        relative: compare `mean(d) / mean(baseline)` to `paper_effect`.
        floor: the measure's floor (MAUVE of disjoint sets, chance
            accuracy), or `None`.
        floor_margin: how close to `floor` an arm's mean must be to count
            as "at the floor". Both arms at the floor -> not testable.
        interval: `"t"` or `"bootstrap"` (see `paired_difference`).

    Returns:
        dict: `verdict` (one of `WORDS`), `reason` (one sentence),
        the `paired_difference` fields, `size_ratio` (ours over the
        paper's, or `None`), `opposite_significant` (the difference is
        against the paper's direction and its 95% interval excludes 0).
    """
    if direction not in (1, -1):
        raise ValueError(
            f"`direction` must be +1 or -1. Received: direction={direction}"
        )
    method, baseline = _pair(method, baseline)
    diff = paired_difference(method, baseline, interval=interval)
    out = {**diff, "size_ratio": None, "opposite_significant": False}
    if diff["n"] < MIN_SEEDS:
        return {
            **out,
            "verdict": NOT_TESTABLE,
            "reason": f"n seeds < {MIN_SEEDS} (n={diff['n']})",
        }
    if floor is not None and (
        at_floor(method, floor, floor_margin)
        and at_floor(baseline, floor, floor_margin)
    ):
        return {
            **out,
            "verdict": NOT_TESTABLE,
            "reason": f"both arms at the measure's floor ({floor:g})",
        }
    mean = diff["mean"]
    signed = direction * mean
    if not math.isfinite(mean):
        return {
            **out,
            "verdict": NOT_TESTABLE,
            "reason": "non-finite value (a diverged seed, not capped)",
        }
    low, high = diff["low"], diff["high"]
    if signed <= 0:
        # Significant against the paper: the interval excludes zero on the
        # other side. `combine` lets no other comparison outvote it.
        opposite = bool(high < 0 if direction > 0 else low > 0)
        reason = "no difference"
        if signed < 0:
            reason = "opposite direction"
            if opposite:
                reason += ", significant"
        return {
            **out,
            "opposite_significant": opposite,
            "verdict": NOT_REPRODUCED,
            "reason": reason,
        }
    significant = low > 0 if direction > 0 else high < 0
    if not significant:
        return {
            **out,
            "verdict": PARTLY,
            "reason": "paper's direction, 95% interval contains 0",
        }
    if paper_effect is None:
        return {
            **out,
            "verdict": REPRODUCED,
            "reason": "paper's direction, significant; size not compared",
        }
    ours = mean / float(np.mean(baseline)) if relative else mean
    ratio = ours / paper_effect if paper_effect else math.inf
    out["size_ratio"] = ratio
    if ratio < MUCH_SMALLER:
        return {
            **out,
            "verdict": PARTLY,
            "reason": f"significant but {ratio:.2f}x the paper's size",
        }
    return {
        **out,
        "verdict": REPRODUCED,
        "reason": f"paper's direction, significant, {ratio:.2f}x the "
        "paper's size",
    }


def summary(result, digits=3):
    """One line for a results table: verdict, mean difference, interval."""
    if result["n"] < 2:
        return f"{result['verdict']} ({result['reason']})"
    return (
        f"{result['verdict']}: diff {result['mean']:.{digits}g} "
        f"[{result['low']:.{digits}g}, {result['high']:.{digits}g}], "
        f"n={result['n']} ({result['reason']})"
    )


def combine(results):
    """One verdict for a claim tested by several comparisons.

    `results` are `verdict` dicts (or bare verdict words, which carry no
    significance and so count as not significantly opposite). The
    not-testable comparisons are left out; of the rest:

    - any comparison significant in the opposite direction of the paper
      (`opposite_significant`) -> not reproduced: the data contradict the
      claim, whatever the other comparisons say;
    - all reproduced -> reproduced; all not reproduced -> not reproduced;
    - anything else -> partly reproduced;
    - none left -> not testable.
    """
    results = [r if isinstance(r, dict) else {"verdict": r} for r in results]
    results = [r for r in results if r["verdict"] != NOT_TESTABLE]
    if not results:
        return NOT_TESTABLE
    words = [r["verdict"] for r in results]
    if any(r.get("opposite_significant") for r in results):
        return NOT_REPRODUCED
    if all(w == REPRODUCED for w in words):
        return REPRODUCED
    if all(w == NOT_REPRODUCED for w in words):
        return NOT_REPRODUCED
    return PARTLY
