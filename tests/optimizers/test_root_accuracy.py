"""Accuracy of the inverse p-th roots as the optimizers use them (issue 29).

The residual `max |X^p A_f - I|` of the root `X` returned for float32
statistics `A`, where `A_f` is the floored matrix the root is defined for
(`A + floor I` for Newton, the spectrum clipped at the floor for eigh;
`floor = relative_matrix_epsilon * lambda_max + matrix_epsilon`), computed
in float64 against NumPy's `eigh`, must stay within the tolerance that
`matrix_functions.matrix_inverse_pth_root` documents:
`2e-5 + 1e-7 * kappa(A_f)`, the float32 backward error (any float32
algorithm perturbs `A` by ~`eps32 ||A||`, which moves `X^p A` by
~`eps32 kappa`).

Measured on CPU (JAX, n = 64, 3 seeds; max over seeds): Newton p = 2:
1.0e-5 (kappa 1e2), 3.2e-4 (1e4), 2.3e-2 (1e6); p = 4: 1.3e-5, 4.0e-4,
1.5e-2; eigh p = 2: 4.2e-6, 2.8e-4, 5.0e-2; p = 4: 5.7e-6, 2.5e-4,
5.2e-2. The float64 root rounded to float32 reaches 3e-7 to 6e-4. The
same statistics rounded to bfloat16 give 3e-2 already at kappa 1e2 and
0.5-140 beyond (eigh is worse), far outside the tolerance: the optimizers
therefore keep their statistics and roots as float32 variables whatever
the dtype policy, and cast every gradient to float32 before `G G^T`
(checked here under `mixed_bfloat16`).
"""

import keras
import numpy as np
import pytest

from keras_gr.optimizers import OneSidedShampoo
from keras_gr.optimizers import Shampoo
from keras_gr.optimizers import matrix_functions as mf
from tests.optimizers.test_shampoo import compiled_applier

CONDITIONS = (1e2, 1e4, 1e6)
MATRIX_EPSILON = 1e-12
RELATIVE_MATRIX_EPSILON = 1e-6


def tolerance(condition):
    """The documented residual bound for float32 statistics."""
    return 2e-5 + 1e-7 * condition


def _spd(n, condition, seed=0):
    """A float32-representable SPD matrix with the given condition number
    (log-spaced spectrum from 1 down to 1 / condition)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    lam = np.logspace(0.0, -np.log10(condition), n)
    return ((q * lam) @ q.T).astype("float32"), q, lam


def _floored(a, method):
    """`A_f` in float64 (NumPy eigh) and its condition number."""
    a = np.asarray(a, dtype="float64")
    a = 0.5 * (a + a.T)
    lam, u = np.linalg.eigh(a)
    floor = RELATIVE_MATRIX_EPSILON * max(lam.max(), 0.0) + MATRIX_EPSILON
    lam = lam + floor if method == "newton" else np.maximum(lam, floor)
    return (u * lam) @ u.T, lam.max() / lam.min()


def _residual(root, a_f, p):
    x = np.asarray(root, dtype="float64")
    return np.abs(np.linalg.matrix_power(x, p) @ a_f - np.eye(len(a_f))).max()


def _root(a, p, method):
    root, ok = mf.matrix_inverse_pth_root(
        a,
        p,
        matrix_epsilon=MATRIX_EPSILON,
        relative_matrix_epsilon=RELATIVE_MATRIX_EPSILON,
        method=method,
    )
    assert bool(ok)
    return keras.ops.convert_to_numpy(root)


@pytest.mark.parametrize("method", ["newton", "eigh"])
@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("condition", CONDITIONS)
def test_float32_root_residual_within_tolerance(method, p, condition):
    a, _, _ = _spd(32, condition)
    a_f, kappa = _floored(a, method)
    # (Newton shifts the smallest eigenvalue, 1 / condition, by a floor
    # of about as much: kappa(A_f) is then about condition / 2.)
    assert condition / 2.1 <= kappa <= 1.01 * condition
    assert _residual(_root(a, p, method), a_f, p) <= tolerance(kappa)
    # The bound is not vacuous: the float64 root rounded to float32 is
    # well inside it, and a root whose smallest eigenvalues are floored
    # ten times too high is outside it.
    lam, u = np.linalg.eigh(a_f)
    exact = ((u * lam ** (-1.0 / p)) @ u.T).astype("float32")
    assert _residual(exact, a_f, p) <= 0.1 * tolerance(kappa)
    lam_off = np.maximum(lam, 10.0 * lam.min())
    off = (u * lam_off ** (-1.0 / p)) @ u.T
    assert _residual(off, a_f, p) > tolerance(kappa)


@pytest.mark.parametrize("method", ["newton", "eigh"])
@pytest.mark.parametrize("condition", CONDITIONS)
def test_bfloat16_statistics_miss_the_tolerance(method, condition):
    """Why the statistics are float32: the same matrix rounded to
    bfloat16 (8 mantissa bits) gives a root whose residual against the
    float32 statistics is far outside the tolerance."""
    a, _, _ = _spd(32, condition)
    a_f, kappa = _floored(a, method)
    a_bf16 = keras.ops.convert_to_numpy(
        keras.ops.cast(keras.ops.cast(a, "bfloat16"), "float32")
    )
    assert _residual(_root(a_bf16, 2, method), a_f, 2) > 10 * tolerance(kappa)


@pytest.fixture(params=["mixed_bfloat16", "bfloat16"])
def bfloat16_policy(request):
    """The global dtype policy `mixed_bfloat16` (float32 variables) or
    `bfloat16` (bfloat16 variables and gradients)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(request.param)
    try:
        yield request.param
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("method", ["newton", "eigh"])
@pytest.mark.parametrize("cls, p", [(OneSidedShampoo, 2), (Shampoo, 4)])
def test_optimizer_roots_under_bfloat16_policies(
    bfloat16_policy, cls, p, method
):
    """The roots the optimizer stores, as used: one Dense kernel per
    condition number under the `mixed_bfloat16` or `bfloat16` policy, one
    step with the gradient `G = Q diag(sqrt(lambda))`, so that the first
    (bias-corrected) statistic is `G G^T` of that condition number (and
    `G^T G = diag(lambda)` for the two-sided right factor). Statistics and
    roots are float32 variables, and every root's residual against its
    stored statistic is within the float32 tolerance."""
    n = 16
    kernels, grads = [], []
    for k, condition in enumerate(CONDITIONS):
        layer = keras.layers.Dense(n, use_bias=False, name=f"dense{k}")
        layer.build((None, n))
        assert layer.compute_dtype == "bfloat16"
        _, q, lam = _spd(n, condition, seed=k)
        grad = (q * np.sqrt(lam)).astype("float32")
        if bfloat16_policy == "bfloat16":
            # A bfloat16 gradient of a bfloat16 kernel.
            assert layer.kernel.dtype == "bfloat16"
            grad = keras.ops.cast(grad, "bfloat16")
        kernels.append(layer.kernel)
        grads.append(grad)
    opt = cls(
        learning_rate=0.01,
        beta_1=0.0,
        precondition_frequency=1,
        matrix_epsilon=MATRIX_EPSILON,
        relative_matrix_epsilon=RELATIVE_MATRIX_EPSILON,
        root_method=method,
    )
    compiled_applier(opt, kernels)(grads)
    stats = [v for v in opt.variables if v.name.endswith("_statistics")]
    roots = [v for v in opt.variables if v.name.endswith("_root")]
    factors = 1 if p == 2 else 2
    assert len(stats) == len(roots) == factors * len(CONDITIONS)
    for k, (stat, root) in enumerate(zip(stats, roots)):
        assert stat.dtype == "float32" and root.dtype == "float32"
        # One statistics update with beta_2 = 0.999: the root is taken
        # of stat / (1 - beta_2).
        a = keras.ops.convert_to_numpy(stat)[0] / (1.0 - 0.999)
        a_f, kappa = _floored(a, method)
        condition = CONDITIONS[k // factors]
        assert condition / 2.1 <= kappa <= 1.01 * condition
        x = keras.ops.convert_to_numpy(root)[0]
        assert _residual(x, a_f, p) <= tolerance(kappa), (stat.name, kappa)
