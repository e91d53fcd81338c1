"""Tests of keras_gr.optimizers.matrix_functions against NumPy float64."""

import numpy as np
import pytest

from keras_gr.optimizers import matrix_functions as mf


def _np_root(mat, p, epsilon, relative_floor):
    """Independent float64 reference of the floored inverse p-th root."""
    mat = 0.5 * (mat + mat.T)
    lam, u = np.linalg.eigh(mat.astype("float64"))
    floor = relative_floor * max(lam.max(), 0.0) + epsilon
    lam = np.maximum(lam, floor)
    return (u * lam ** (-1.0 / p)) @ u.T


def _spd(n, condition, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    lam = np.logspace(0.0, -np.log10(condition), n)
    return (q * lam) @ q.T, q, lam


def test_symmetrize():
    m = np.arange(9.0).reshape(3, 3)
    s = np.asarray(mf.symmetrize(m))
    np.testing.assert_allclose(s, 0.5 * (m + m.T))
    assert s.dtype == np.float32


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("condition", [1e2, 1e4, 1e6])
def test_inverse_root_accuracy_up_to_condition_1e6(p, condition):
    mat, q, lam = _spd(16, condition)
    root, ok = mf.matrix_inverse_pth_root(
        mat.astype("float32"), p, epsilon=1e-30, relative_floor=0.0
    )
    root = np.asarray(root, dtype="float64")
    assert bool(ok)
    # Eigenvalues of the root along the true eigenvectors, relative error.
    got = np.einsum("ij,jk,ki->i", q.T, root, q)
    want = lam ** (-1.0 / p)
    rel = np.abs(got - want) / want
    # float32 eigh: absolute eigenvalue error ~ n * 1e-7 * lambda_max, so the
    # error grows with the condition number; p = 2 at 1e6 is the hardest.
    tol = {1e2: 1e-4, 1e4: 5e-3, 1e6: 0.2}[condition]
    assert rel.max() < tol, (condition, p, rel.max())
    # Applying the root p times to mat gives the identity in the well
    # conditioned part of the spectrum.
    np.testing.assert_allclose(
        root, _np_root(mat, p, 1e-30, 0.0), rtol=0.0, atol=tol * want.max()
    )


def test_inverse_root_matches_reference_with_floors():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(6, 2))
    mat = g @ g.T  # rank 2 of 6
    root, ok = mf.matrix_inverse_pth_root(
        mat, 2, epsilon=1e-3, relative_floor=1e-2
    )
    assert bool(ok)
    want = _np_root(mat, 2, 1e-3, 1e-2)
    np.testing.assert_allclose(np.asarray(root), want, rtol=1e-4, atol=1e-4)


def test_all_zero_statistics():
    root, ok = mf.matrix_inverse_pth_root(np.zeros((5, 5)), 4, epsilon=1e-8)
    assert bool(ok)
    np.testing.assert_allclose(
        np.asarray(root), np.eye(5) * 1e-8 ** (-0.25), rtol=1e-5
    )


def test_non_finite_input_is_flagged():
    mat = np.eye(4)
    mat[1, 2] = np.nan
    root, ok = mf.matrix_inverse_pth_root(mat, 2)
    assert not bool(ok)
    mat = np.eye(4)
    mat[0, 0] = np.inf
    _, ok = mf.matrix_inverse_pth_root(mat, 2)
    assert not bool(ok)


def test_rank_deficient_root_is_reproducible():
    """Rounding-level perturbations of rank-deficient statistics give nearly
    the same preconditioned gradient with the relative floor, and wildly
    different ones without it."""
    rng = np.random.default_rng(2)
    g = rng.normal(size=(8, 2)).astype("float32")
    mat = g @ g.T
    noise = 1e-6 * np.abs(mat).max() * rng.normal(size=mat.shape)
    noise = 0.5 * (noise + noise.T)
    direction = g + 1e-6 * rng.normal(size=g.shape)

    def precondition(m, relative_floor):
        root, _ = mf.matrix_inverse_pth_root(
            m.astype("float32"), 2, epsilon=1e-12, relative_floor=relative_floor
        )
        return np.asarray(root) @ direction

    a = precondition(mat, 1e-4)
    b = precondition(mat + noise, 1e-4)
    assert np.abs(a - b).max() / np.abs(a).max() < 1e-2
    a = precondition(mat, 0.0)
    b = precondition(mat + noise, 0.0)
    assert np.abs(a - b).max() / np.abs(a).max() > 1e-1


def test_safe_eigh_sanitises_and_symmetrises():
    mat = np.array([[2.0, 1.0], [0.0, 2.0]])
    lam, u = mf.safe_eigh(mat)
    np.testing.assert_allclose(np.asarray(lam), [1.5, 2.5], rtol=1e-6)
    lam, _ = mf.safe_eigh(np.array([[np.nan, 0.0], [0.0, 1.0]]))
    assert np.all(np.isfinite(np.asarray(lam)))


def test_ema_statistics_and_grams():
    g = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(np.asarray(mf.left_gram(g)), g @ g.T)
    np.testing.assert_allclose(np.asarray(mf.right_gram(g)), g.T @ g)
    s = np.ones((2, 2))
    np.testing.assert_allclose(
        np.asarray(mf.ema_statistics(s, 2 * s, 1.0)), 3 * s
    )
    np.testing.assert_allclose(
        np.asarray(mf.ema_statistics(s, 2 * s, 0.75)), 1.25 * s
    )
