"""Tests of keras_gr.optimizers.matrix_functions against NumPy float64."""

import keras
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


# Accuracy of the float32 root against float64, at condition numbers up to
# 1e6, n = 16: (max relative error of the root's eigenvalue along the true
# eigenvectors, max entry error / largest entry). Measured on CPU (3 seeds,
# JAX): eigh 2.2e-6 / 1.1e-6 (1e2), 1.6e-4 / 3.8e-5 (1e4), 5.8e-3 / 1.5e-3
# (1e6); newton 3.7e-6 / 1.1e-6, 2.2e-5 / 5.5e-6, 2.9e-3 / 7.8e-4. The
# bounds leave ~5x room for other BLAS/LAPACK builds, and a root whose
# smallest eigenvalue is floored at 1e-5 instead of 1e-6 (or computed in
# bfloat16-like precision) exceeds them (checked below).
ROOT_TOLERANCE = {1e2: (2e-5, 1e-5), 1e4: (1e-3, 3e-4), 1e6: (3e-2, 1e-2)}


def _root_errors(root, q, lam, p):
    root = np.asarray(root, dtype="float64")
    got = np.einsum("ij,jk,ki->i", q.T, root, q)
    want = lam ** (-1.0 / p)
    direction = (np.abs(got - want) / want).max()
    entry = np.abs(root - (q * want) @ q.T).max() / want.max()
    return direction, entry


@pytest.mark.parametrize("method", ["eigh", "newton"])
@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("condition", [1e2, 1e4, 1e6])
def test_inverse_root_accuracy_up_to_condition_1e6(method, p, condition):
    mat, q, lam = _spd(16, condition)
    root, ok = mf.matrix_inverse_pth_root(
        mat.astype("float32"),
        p,
        matrix_epsilon=1e-30,
        relative_matrix_epsilon=0.0,
        method=method,
    )
    assert bool(ok)
    direction, entry = _root_errors(root, q, lam, p)
    tol_direction, tol_entry = ROOT_TOLERANCE[condition]
    assert direction < tol_direction, (method, condition, p, direction)
    assert entry < tol_entry, (method, condition, p, entry)


def test_root_tolerance_at_condition_1e6_can_fail():
    """The 1e6 bounds above are tight enough to catch a wrong root: one
    whose smallest eigenvalue is floored 10x too high, and one with the
    exponent off by 5%."""
    mat, q, lam = _spd(16, 1e6)
    tol_direction, tol_entry = ROOT_TOLERANCE[1e6]
    floored, _ = mf.matrix_inverse_pth_root(
        mat.astype("float32"),
        2,
        matrix_epsilon=1e-30,
        relative_matrix_epsilon=1e-5,
    )
    assert _root_errors(floored, q, lam, 2)[0] > tol_direction
    off, _ = mf.matrix_inverse_pth_root(
        mat.astype("float32"),
        2.1,
        matrix_epsilon=1e-30,
        relative_matrix_epsilon=0.0,
    )
    assert _root_errors(off, q, lam, 2)[1] > tol_entry


def test_newton_matches_eigh_with_floors_and_batches():
    """Both methods on a batch of rank-deficient and full-rank matrices with
    the default floors: the Newton root is the shifted
    `(mat + floor I)^(-1/p)` to 1% of its largest entry (the floor is 1e-6
    of lambda_max, at the float32 resolution of the matrix: the null-space
    directions carry ~1% error, with either method), eigh the clipped one;
    they agree to 1e-3 relative on the directions with eigenvalues above
    1e3 * floor, and each batch entry equals its own unbatched root."""
    rng = np.random.default_rng(3)
    g = rng.normal(size=(3, 8, 5))
    mats = np.einsum("bij,bkj->bik", g, g)  # rank 5 of 8
    mats[1] += np.eye(8)  # full rank
    mats = mats.astype("float32")
    newton, ok = mf.matrix_inverse_pth_root(mats, 4, method="newton")
    assert bool(ok)
    newton = np.asarray(newton, "float64")
    for b in range(3):
        mat = mats[b].astype("float64")
        lam, u = np.linalg.eigh(mat)
        floor = 1e-6 * lam.max() + 1e-6
        shifted = (u * (np.maximum(lam, 0) + floor) ** -0.25) @ u.T
        np.testing.assert_allclose(
            newton[b], shifted, rtol=0, atol=1e-2 * np.abs(shifted).max()
        )
        single, _ = mf.matrix_inverse_pth_root(mats[b], 4, method="newton")
        np.testing.assert_allclose(
            np.asarray(single),
            newton[b],
            rtol=0,
            atol=1e-3 * np.abs(newton[b]).max(),
        )
        eig, _ = mf.matrix_inverse_pth_root(mats[b], 4)
        big = u[:, lam > 1e3 * floor]
        a = big.T @ np.asarray(eig, "float64") @ big
        c = big.T @ newton[b] @ big
        np.testing.assert_allclose(c, a, rtol=0, atol=1e-3 * np.abs(a).max())


def test_unknown_root_method_raises():
    with pytest.raises(ValueError, match="`method`.*Received: method='svd'"):
        mf.matrix_inverse_pth_root(np.eye(2), 2, method="svd")


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="JAX matmul precision"
)
@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_root_products_run_at_highest_precision(method):
    import jax

    def root(m):
        return mf.matrix_inverse_pth_root(m, 2, method=method)[0]

    closed = jax.make_jaxpr(root)(np.eye(4, dtype="float32"))
    precisions = _dot_precisions(closed.jaxpr)
    assert precisions
    assert all("HIGHEST" in str(p) for p in precisions), precisions
    # The check can fail: without the context the precision is default.
    plain = _dot_precisions(jax.make_jaxpr(lambda m: m @ m)(np.eye(2)).jaxpr)
    assert not any("HIGHEST" in str(p) for p in plain), plain


def _dot_precisions(jaxpr):
    """The `precision` of every `dot_general` in a jaxpr, sub-jaxprs
    (while / cond bodies) included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out.append(eqn.params.get("precision"))
        for value in eqn.params.values():
            values = value if isinstance(value, (tuple, list)) else [value]
            for sub in values:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out += _dot_precisions(inner)
    return out


def test_inverse_root_matches_reference_with_floors():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(6, 2))
    mat = g @ g.T  # rank 2 of 6
    root, ok = mf.matrix_inverse_pth_root(
        mat, 2, matrix_epsilon=1e-3, relative_matrix_epsilon=1e-2
    )
    assert bool(ok)
    want = _np_root(mat, 2, 1e-3, 1e-2)
    np.testing.assert_allclose(np.asarray(root), want, rtol=1e-4, atol=1e-4)


def test_all_zero_statistics():
    root, ok = mf.matrix_inverse_pth_root(
        np.zeros((5, 5)), 4, matrix_epsilon=1e-8
    )
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
            m.astype("float32"),
            2,
            matrix_epsilon=1e-12,
            relative_matrix_epsilon=relative_floor,
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


@pytest.mark.parametrize("p", [2, 4])
def test_newton_eager_loop_equals_traced_loop(p):
    """Eager execution runs the Newton iteration as a Python loop (an eager
    `ops.while_loop` compiles a new program at every call, issue 29);
    traced code keeps the loop. Both give the same root, batch included
    (each matrix stops on its own)."""
    mats = np.stack([_spd(8, c, seed=s)[0] for s, c in enumerate((1e2, 1e5))])
    mats = mats.astype("float32")

    def root(m):
        return mf.matrix_inverse_pth_root(m, p, method="newton")[0]

    eager = keras.ops.convert_to_numpy(root(mats))
    if keras.backend.backend() == "jax":
        import jax

        traced = np.asarray(jax.jit(root)(mats))
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        traced = tf.function(root)(tf.constant(mats)).numpy()
    else:
        pytest.skip("eager vs traced is checked on jax and tensorflow")
    np.testing.assert_allclose(eager, traced, rtol=1e-5, atol=1e-6)
    # Newton shifts the spectrum by the floor (it does not clip).
    expected = []
    for m in mats.astype("float64"):
        floor = 1e-6 * np.linalg.eigvalsh(m).max() + 1e-6
        expected.append(_np_root(m + floor * np.eye(8), p, 0.0, 0.0))
    expected = np.stack(expected)
    scale = np.abs(expected).max(axis=(1, 2), keepdims=True)
    assert np.all(np.abs(eager - expected) < 1e-3 * scale)


def test_auto_root_method_is_eigh_on_jax_cpu_for_large_blocks_else_newton():
    """`"auto"` resolves on the running backend: `eigh` under JAX on CPU
    for matrices of `AUTO_EIGH_MIN_SIZE` (257) and more (LAPACK, ~5x
    cheaper than Newton at 512), Newton for smaller ones there (as cheap,
    and no OpenBLAS threads left spinning) and Newton elsewhere
    (TensorFlow's compiled `eigh` is ~25x slower than its Newton; TPUs and
    GPUs run matrix products best). The root it returns is that method's
    root, bit for bit, on each side of the size threshold."""
    large = "newton"
    if keras.backend.backend() == "jax":
        import jax

        large = "eigh" if jax.default_backend() == "cpu" else "newton"
    limit = mf.AUTO_EIGH_MIN_SIZE
    assert limit == 257
    assert mf.resolve_root_method("auto") == large
    assert mf.resolve_root_method("auto", size=limit) == large
    assert mf.resolve_root_method("auto", size=limit - 1) == "newton"
    assert mf.resolve_root_method("auto", size=6) == "newton"
    for size in (None, 6, limit):
        assert mf.resolve_root_method("eigh", size=size) == "eigh"
        assert mf.resolve_root_method("newton", size=size) == "newton"
    rng = np.random.default_rng(0)
    for n, expected in ((6, "newton"), (limit, large)):
        g = rng.normal(size=(2, n, n + 8)).astype("float32")
        mats = g @ np.swapaxes(g, -1, -2)
        auto, _ = mf.matrix_inverse_pth_root(mats, 2, method="auto")
        direct, _ = mf.matrix_inverse_pth_root(mats, 2, method=expected)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(auto),
            keras.ops.convert_to_numpy(direct),
        )
