"""Tests of AdagradNorm and FullMatrixAdagrad against NumPy float64."""

import keras
import numpy as np
import pytest

from keras_gr.optimizers import AdagradNorm
from keras_gr.optimizers import FullMatrixAdagrad
from tests.conformance import check_optimizer
from tests.optimizers.test_shampoo import compiled_applier


def _np_full_matrix(shape, grads, lr, eps, rel, w0):
    w = w0.reshape(-1).astype("float64")
    f = np.zeros((w.size, w.size))
    for g in grads:
        g = g.reshape(-1)
        f += np.outer(g, g)
        lam, u = np.linalg.eigh(f)
        floor = rel * max(lam.max(), 0.0) + eps
        root = (u * np.maximum(lam, floor) ** -0.5) @ u.T
        w = w - lr * root @ g
    return w.reshape(shape)


def _np_norm(grads, lr, eps, w0):
    w, s = w0.astype("float64"), 0.0
    for g in grads:
        s += np.sum(g * g)
        w = w - lr * g / np.sqrt(max(s, eps))
    return w


def _run(opt, shapes, steps, seed=0):
    rng = np.random.default_rng(seed)
    w0 = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [
        [rng.normal(size=s).astype("float32") for s in shapes]
        for _ in range(steps)
    ]
    variables = [keras.Variable(w) for w in w0]
    apply = compiled_applier(opt, variables)
    for gs in grads:
        apply(gs)
    return w0, grads, [np.asarray(v, dtype="float64") for v in variables]


SHAPES = [(3, 4), (5,), (2, 2, 2)]


def test_full_matrix_adagrad_golden():
    w0, grads, got = _run(
        FullMatrixAdagrad(learning_rate=0.1, matrix_epsilon=1e-6), SHAPES, 5
    )
    for i, shape in enumerate(SHAPES):
        want = _np_full_matrix(
            shape, [g[i] for g in grads], 0.1, 1e-6, 1e-6, w0[i]
        )
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-4)


def test_adagrad_norm_golden():
    w0, grads, got = _run(AdagradNorm(learning_rate=0.3), SHAPES, 5)
    for i in range(len(SHAPES)):
        want = _np_norm([g[i] for g in grads], 0.3, 1e-10, w0[i])
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


def test_full_matrix_differs_from_diagonal():
    """Sanity of the golden test: full-matrix AdaGrad is not the diagonal
    method on these gradients."""
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(3, 4)) for _ in range(4)]
    w0 = np.zeros((3, 4))
    full = _np_full_matrix((3, 4), grads, 0.1, 1e-6, 1e-6, w0)
    acc, diag = 0.0, w0.copy()
    for g in grads:
        acc = acc + g * g
        diag = diag - 0.1 * g / np.sqrt(acc)
    assert np.abs(full - diag).max() > 1e-2


def test_full_matrix_refuses_large_variables():
    opt = FullMatrixAdagrad(max_size=100)
    big = keras.Variable(np.zeros((11, 10), "float32"), name="big_kernel")
    with pytest.raises(ValueError, match="big_kernel.*size=110.*max_size"):
        opt.build([big])


@pytest.mark.parametrize(
    "cls, kwargs, name",
    [
        (FullMatrixAdagrad, dict(learning_rate=0.0), "learning_rate"),
        (FullMatrixAdagrad, dict(matrix_epsilon=0.0), "matrix_epsilon"),
        (FullMatrixAdagrad, dict(max_size=0), "max_size"),
        (
            FullMatrixAdagrad,
            dict(relative_matrix_epsilon=-1.0),
            "relative_matrix_epsilon",
        ),
        (AdagradNorm, dict(learning_rate=-1.0), "learning_rate"),
        (AdagradNorm, dict(matrix_epsilon=-1.0), "matrix_epsilon"),
    ],
)
def test_bad_arguments(cls, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}"):
        cls(**kwargs)


def test_nan_gradient_leaves_state_unchanged():
    var = keras.Variable(np.ones((2, 3), "float32"))
    opt = FullMatrixAdagrad(learning_rate=0.1)
    apply = compiled_applier(opt, [var])
    g = np.arange(6, dtype="float32").reshape(2, 3)
    apply([g])
    before = [np.asarray(v).copy() for v in [var] + opt.variables[1:]]
    apply([np.full((2, 3), np.nan, "float32")])
    after = [np.asarray(v) for v in [var] + opt.variables[1:]]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (FullMatrixAdagrad, dict(learning_rate=0.5)),
        (AdagradNorm, dict(learning_rate=0.5)),
    ],
)
def test_conformance(cls, kwargs):
    # The shared base's keyword-only settings are fixed by these classes
    # (the paper's theory settings), not user arguments: not in the config.
    fixed = (
        "beta_1",
        "beta_2",
        "epsilon",
        "nesterov",
        "grafting",
        "grafting_beta_2",
        "precondition_frequency",
        "start_preconditioning_step",
        "relative_matrix_epsilon",
        "block_size",
        "stagger_roots",
        "root_method",
        "statistics_frequency",
    )
    check_optimizer(
        cls,
        kwargs,
        fit_learning_rate=0.05,
        skip_config_args=fixed,
        model_fn=_small_model,
    )


def _small_model(seed=0, dtype=None):
    """8 -> 4 -> 4 MLP: kernels of 32 and 16 entries, so full-matrix
    AdaGrad's (size x size) roots stay cheap in the `fit` checks."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(4, activation="tanh", dtype=dtype)(inputs)
    outputs = keras.layers.Dense(4, dtype=dtype)(x)
    return keras.Model(inputs, outputs)
