"""Routing metrics: deferral curves and the measures of UniRoute, RouteLLM
and RouterBench, in NumPy.

"Universal Model Routing for Efficient LLM Inference" (Jitkrittum et al.,
arXiv 2502.08773) evaluates a router by its *deferral curve* (quality
against average cost per prompt while sweeping the cost weight `lambda`),
the area under it and the *quality-neutral cost* (QNC). RouteLLM (Ong et
al., arXiv 2406.18665) reports APGR and CPT for two models; RouterBench
(Hu et al., arXiv 2403.12031) reports AIQ. All are computed here from the
curve's points `(cost_i, quality_i)`.

Conventions (stated because the papers leave them open or differ):

- A curve is read as a *budget* curve: with budget `c` one can use any
  routing of average cost `<= c`, so only its non-dominated points count
  (a point is dropped when a cheaper one is at least as good); they are
  joined linearly (a random mix of two neighbouring routings) and the
  curve is extended flat to the right; below its cheapest point it is 0.
- Costs are normalised to `[c_lo, c_hi]`, by default the cheapest and the
  most expensive model of the pool: `area = (1 / (c_hi - c_lo)) *
  integral_{c_lo}^{c_hi} q(c) dc` (with one model, `c_lo = c_hi`, the area
  is the curve's quality at that cost).
- Two-model measures (APGR, CPT) are generalised to a pool with a *weak*
  point `(c_w, q_w)` (the cheapest model) and a *strong* point `(c_s,
  q_s)` (the most accurate one): the x-axis is the cost fraction
  `(c - c_w) / (c_s - c_w)` (RouteLLM's share of strong-model calls when
  there are two models) and `PGR = (q - q_w) / (q_s - q_w)`.
"""

from typing import Any

import numpy as np

from keras_gr._validation import check_array
from keras_gr._validation import check_fraction
from keras_gr._validation import check_number
from keras_gr._validation import check_positive
from keras_gr._validation import check_same_length


def _points(costs, qualities):
    costs = check_array("costs", costs, ndim=1).astype("float64")
    qualities = check_array("qualities", qualities, ndim=1).astype("float64")
    check_same_length("costs", costs, "qualities", qualities)
    if np.any(costs < 0):
        raise ValueError(f"`costs` must be >= 0. Received: costs={costs!r}")
    return costs, qualities


def monotone_curve(costs: Any, qualities: Any) -> tuple:
    """The curve's non-dominated points: sorted by cost, keeping a point
    only if its quality beats every cheaper point's (`(c, q)` arrays, both
    increasing). Between two of them the curve is their linear
    interpolation (a random mix of the two routings).

    Example:

    >>> c, q = monotone_curve([3.0, 1.0, 2.0], [0.5, 0.1, 0.7])
    >>> c.tolist(), q.tolist()
    ([1.0, 2.0], [0.1, 0.7])
    """
    costs, qualities = _points(costs, qualities)
    order = np.lexsort((-qualities, costs))
    c, q = costs[order], qualities[order]
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(q)[:-1]])
    keep = q > best_before
    return c[keep], q[keep]


def _integrate(c, q, lo, hi):
    """Exact integral over `[lo, hi]` of the piecewise-linear curve
    through `(c, q)`, flat after its last point and 0 before its first."""
    start = max(lo, float(c[0]))
    if hi <= start:
        return 0.0
    grid = np.unique(np.concatenate([[start, hi], c[(c > start) & (c < hi)]]))
    values = np.interp(grid, c, q)
    return float(np.sum(0.5 * (values[1:] + values[:-1]) * np.diff(grid)))


def _range(costs, cost_range):
    if cost_range is None:
        return float(np.min(costs)), float(np.max(costs))
    pair = np.asarray(cost_range)
    lo, hi = (float(v) for v in pair) if pair.shape == (2,) else (-1.0, -1.0)
    if not hi >= lo >= 0 or not np.isfinite(hi):
        raise ValueError(
            "`cost_range` must be (low, high) with 0 <= low <= high. "
            f"Received: cost_range={cost_range!r}"
        )
    return lo, hi


def curve_value(costs: Any, qualities: Any, at_cost: float) -> float:
    """The budget curve's quality at cost `at_cost`.

    Example:

    >>> curve_value([1.0, 3.0], [0.5, 1.0], 2.0)
    0.75
    """
    at_cost = check_number("at_cost", at_cost)
    c, q = monotone_curve(costs, qualities)
    if at_cost < c[0]:
        return 0.0
    return float(np.interp(at_cost, c, q))


def _check_choices(choices, num_prompts, num_models):
    """`choices` as a rank-2 int64 array of model indices in
    `[0, num_models)`, one column per prompt; raises `ValueError`."""
    array = np.asarray(choices)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != num_prompts or array.size == 0:
        raise ValueError(
            "`choices` must be `(num_lambdas, num_prompts)` or "
            f"`(num_prompts,)` model indices with num_prompts={num_prompts}"
            f". Received: choices with shape {np.shape(choices)}"
        )
    if np.issubdtype(array.dtype, np.integer):
        valid = (array >= 0) & (array < num_models)
    elif np.issubdtype(array.dtype, np.floating):
        valid = np.isfinite(array) & (array == np.round(array))
        valid &= (array >= 0) & (array < num_models)
    else:
        valid = np.zeros(array.shape, bool)
    if not np.all(valid):
        raise ValueError(
            f"`choices` must hold integer model indices in [0, {num_models})"
            " (negative indices are not wrapped). Received: choices with "
            f"the entry {array[~valid].flat[0]!r}"
        )
    return array.astype("int64")


def deferral_curve(choices: Any, correctness: Any, model_costs: Any) -> tuple:
    """Average cost and quality of routings given as chosen model indices.

    Args:
        choices: `(num_lambdas, num_prompts)` int model indices (one
            routing per `lambda`), or `(num_prompts,)` for one routing.
        correctness: `(num_prompts, num_models)` correctness in [0, 1].
        model_costs: `(num_models,)` cost per query.

    Returns:
        `(costs, qualities)`, one entry per routing.

    Example:

    >>> import numpy as np
    >>> correct = np.array([[1.0, 1.0], [0.0, 1.0]])
    >>> deferral_curve([[0, 0], [0, 1], [1, 1]], correct, [1.0, 3.0])
    (array([1., 2., 3.]), array([0.5, 1. , 1. ]))
    """
    correctness = check_array("correctness", correctness, ndim=2)
    correctness = correctness.astype("float64")
    if np.any((correctness < 0.0) | (correctness > 1.0)):
        raise ValueError(
            "`correctness` must hold values in [0, 1]. Received: "
            f"correctness with values in [{correctness.min()!r}, "
            f"{correctness.max()!r}]"
        )
    num_models = correctness.shape[1]
    model_costs = check_array("model_costs", model_costs, ndim=1)
    model_costs = model_costs.astype("float64")
    if len(model_costs) != num_models or np.any(model_costs < 0):
        raise ValueError(
            f"`model_costs` must hold one cost >= 0 per model ({num_models}"
            f" columns of `correctness`). Received: model_costs={model_costs!r}"
        )
    choices = _check_choices(choices, correctness.shape[0], num_models)
    rows = np.arange(correctness.shape[0])[None, :]
    return (
        model_costs[choices].mean(axis=1),
        correctness[rows, choices].mean(axis=1),
    )


def deferral_area(
    costs: Any, qualities: Any, cost_range: tuple | None = None
) -> float:
    """Normalised area under the (budget) deferral curve.

    `(1 / (c_hi - c_lo)) integral_{c_lo}^{c_hi} q(c) dc` with the curve
    conventions of the module docstring; `cost_range=(c_lo, c_hi)`
    defaults to the span of `costs` (pass the pool's cheapest and most
    expensive model costs to compare routers). With `c_lo = c_hi` it is
    the curve's quality there (a single model's curve is one point).

    Example:

    >>> deferral_area([1.0, 3.0], [0.5, 1.0])
    0.75
    >>> deferral_area([2.0], [0.7])
    0.7
    """
    costs, qualities = _points(costs, qualities)
    lo, hi = _range(costs, cost_range)
    c, q = monotone_curve(costs, qualities)
    if hi == lo:
        return curve_value(c, q, lo)
    return _integrate(c, q, lo, hi) / (hi - lo)


def upper_hull(costs: Any, qualities: Any) -> tuple:
    """The non-decreasing upper convex hull of the points (RouterBench):
    the concave envelope from the cheapest point up to the best one, flat
    after it. Returns its vertices `(c, q)`.

    Example:

    >>> c, q = upper_hull([1.0, 2.0, 3.0], [0.0, 0.2, 1.0])
    >>> c.tolist(), q.tolist()
    ([1.0, 3.0], [0.0, 1.0])
    """
    c, q = monotone_curve(costs, qualities)
    hull = []
    for point in zip(c, q):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # Drop the middle point if it lies on or below the chord.
            if (y2 - y1) * (point[0] - x1) <= (point[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(point)
    hc = np.array([h[0] for h in hull])
    hq = np.array([h[1] for h in hull])
    return hc, hq


def aiq(costs: Any, qualities: Any, cost_range: tuple | None = None) -> float:
    """RouterBench's Average Improvement in Quality: the normalised area
    under the non-decreasing convex hull of the `(cost, quality)` points,
    `(1 / (c_hi - c_lo)) integral_{c_lo}^{c_hi} hull(c) dc`.

    Example:

    >>> aiq([1.0, 2.0, 3.0], [0.0, 0.2, 1.0])  # (2, 0.2) is under the hull
    0.5
    """
    costs, qualities = _points(costs, qualities)
    lo, hi = _range(costs, cost_range)
    hc, hq = upper_hull(costs, qualities)
    if hi == lo:
        return curve_value(hc, hq, lo)
    return _integrate(hc, hq, lo, hi) / (hi - lo)


def quality_neutral_cost(
    costs: Any,
    qualities: Any,
    target_quality: float,
    reference_cost: float,
) -> float:
    """QNC: the least average cost at which the budget curve reaches
    `target_quality` (the best single LLM's quality), relative to
    `reference_cost` (that LLM's cost). `inf` if never reached.

    Example:

    >>> quality_neutral_cost([1.0, 3.0], [0.5, 1.0], 0.75, 4.0)
    0.5
    """
    target_quality = check_number("target_quality", target_quality)
    reference_cost = check_positive("reference_cost", reference_cost)
    c, q = monotone_curve(costs, qualities)
    if q[-1] < target_quality - 1e-12:
        return float("inf")
    i = int(np.argmax(q >= target_quality - 1e-12))
    if i == 0:
        cost = c[0]
    else:
        frac = (target_quality - q[i - 1]) / (q[i] - q[i - 1])
        cost = c[i - 1] + frac * (c[i] - c[i - 1])
    return float(cost / reference_cost)


def _point(name, value):
    """A `(cost, quality)` pair of finite numbers."""
    pair = np.asarray(value)
    if pair.shape != (2,) or not np.issubdtype(pair.dtype, np.number):
        raise ValueError(
            f"`{name}` must be a `(cost, quality)` pair of numbers. "
            f"Received: {name}={value!r}"
        )
    return tuple(check_number(name, float(v)) for v in pair)


def _pgr_curve(costs, qualities, weak, strong):
    (cw, qw), (cs, qs) = _point("weak", weak), _point("strong", strong)
    if not cs > cw:
        raise ValueError(
            "`strong` must cost more than `weak`. Received: "
            f"weak={weak!r}, strong={strong!r}"
        )
    if not qs > qw:
        raise ValueError(
            "`strong` must be of higher quality than `weak`. Received: "
            f"weak={weak!r}, strong={strong!r}"
        )
    c, q = monotone_curve(costs, qualities)
    return (c - cw) / (cs - cw), (q - qw) / (qs - qw)


def apgr(costs: Any, qualities: Any, weak: tuple, strong: tuple) -> float:
    """RouteLLM's average performance gap recovered:
    `integral_0^1 PGR(x) dx` over the cost fraction `x` (module docstring).

    Args:
        costs, qualities: the curve's points.
        weak: `(cost, quality)` of the weak (cheapest) model.
        strong: `(cost, quality)` of the strong (best) model.

    Example:

    >>> apgr([1.0, 3.0], [0.5, 1.0], weak=(1.0, 0.5), strong=(3.0, 1.0))
    0.5
    """
    x, g = _pgr_curve(costs, qualities, weak, strong)
    return _integrate(x, g, 0.0, 1.0)


def cpt(
    costs: Any,
    qualities: Any,
    weak: tuple,
    strong: tuple,
    fraction: float = 0.5,
) -> float:
    """RouteLLM's call-performance threshold CPT(`fraction`): the least
    cost fraction `x` (the share of strong-model calls for two models) at
    which `PGR(x) >= fraction`. `inf` if never reached.

    Example:

    >>> cpt([1.0, 3.0], [0.5, 1.0], (1.0, 0.5), (3.0, 1.0), fraction=0.8)
    0.8
    """
    fraction = check_fraction("fraction", fraction)
    x, g = _pgr_curve(costs, qualities, weak, strong)
    return quality_neutral_cost(x, g, fraction, 1.0)


def plot_deferral_curves(
    curves: dict,
    path: str,
    model_points: tuple | None = None,
    title: str = "Deferral curves",
    xlabel: str = "average cost per prompt",
    ylabel: str = "quality (exact match)",
) -> str:
    """Saves a plot of deferral curves (one line per name) to `path`.

    Args:
        curves: name -> `(costs, qualities)`.
        path: output image file (e.g. `.png`).
        model_points: optional `(costs, qualities, names)` of the single
            models, drawn as labelled dots.
        title, xlabel, ylabel: figure text.

    Returns:
        `path`.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "curves.png")
    >>> out = plot_deferral_curves({"router": ([1.0, 3.0], [0.5, 0.9])}, path)
    >>> out == path and os.path.getsize(path) > 0
    True
    """
    if not isinstance(curves, dict) or not curves:
        raise ValueError(
            "`curves` must be a non-empty dict name -> (costs, qualities). "
            f"Received: curves={curves!r}"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (c, q) in curves.items():
        mc, mq = monotone_curve(c, q)
        ax.plot(mc, mq, marker=".", markersize=3, label=name)
    if model_points is not None:
        pc, pq, names = model_points
        ax.scatter(pc, pq, color="black", s=12, zorder=3)
        for x, y, n in zip(pc, pq, names):
            ax.annotate(str(n), (x, y), fontsize=6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
