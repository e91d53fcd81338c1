import keras
import numpy as np
import pytest

from keras_gr.data.icl_regression import icl_regression_problems
from keras_gr.layers.linear_attention import LinearAttention
from keras_gr.layers.linear_attention import linear_attention_update
from keras_gr.layers.linear_attention import restricted_matrices
from tests.conformance import check_layer

# --------------------------------------------------------------------------
# independent NumPy reference, in the paper's (d + 1, n + 1) layout
# --------------------------------------------------------------------------


def reference_update(z_tokens, p, q):
    """`Z + (1/n) P Z M Z^T Q Z` on each prompt, with an explicit M."""
    out = []
    for x in np.asarray(z_tokens, dtype=np.float64):
        z = x.T  # (d + 1, n + 1), one column per token
        n = z.shape[1] - 1
        m = np.diag(np.r_[np.ones(n), 0.0])
        z = z + (p @ z @ m @ (z.T @ q @ z)) / n
        out.append(z.T)
    return np.stack(out)


def reference_restricted(a, u):
    d = a.shape[0]
    p = np.zeros((d + 1, d + 1))
    p[d, :d] = u
    p[d, d] = 1.0
    q = np.zeros((d + 1, d + 1))
    q[:d, :d] = -a
    return p, q


def _prompts(batch=4, dim=3, n=8, seed=0):
    return icl_regression_problems(
        batch, dim=dim, num_context=n, kappa=4.0, seed=seed
    )


# --------------------------------------------------------------------------
# conformance
# --------------------------------------------------------------------------


@pytest.mark.parametrize("restricted", [True, False])
def test_conformance(restricted):
    z = _prompts()["prompts"]
    check_layer(
        LinearAttention,
        {"restricted": restricted, "init_stddev": 0.1, "seed": 3},
        z,
        expected_output_shape=z.shape,
    )


# --------------------------------------------------------------------------
# golden values
# --------------------------------------------------------------------------


def test_pure_update_matches_reference():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 7, 5)).astype("float32")
    p = rng.normal(size=(5, 5)).astype("float32")
    q = rng.normal(size=(5, 5)).astype("float32")
    got = keras.ops.convert_to_numpy(linear_attention_update(z, p, q))
    np.testing.assert_allclose(
        got, reference_update(z, p, q), rtol=2e-5, atol=2e-5
    )


def test_restricted_matrices_structure():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 3)).astype("float32")
    u = rng.normal(size=(3,)).astype("float32")
    p, q = restricted_matrices(a, u)
    p_ref, q_ref = reference_restricted(a, u)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(p), p_ref)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(q), q_ref)


@pytest.mark.parametrize("restricted", [True, False])
def test_layer_golden_values(restricted):
    z = _prompts(batch=5, dim=4, n=10, seed=2)["prompts"]
    layer = LinearAttention(restricted=restricted, init_stddev=0.3, seed=1)
    out = keras.ops.convert_to_numpy(layer(z))
    if restricted:
        p, q = reference_restricted(
            np.asarray(layer.a, dtype=np.float64),
            np.asarray(layer.u, dtype=np.float64),
        )
        assert len(layer.trainable_weights) == 2
    else:
        p = np.asarray(layer.p, dtype=np.float64)
        q = np.asarray(layer.q, dtype=np.float64)
        assert len(layer.trainable_weights) == 2
        assert layer.p.shape == (5, 5) and layer.q.shape == (5, 5)
    np.testing.assert_allclose(
        out, reference_update(z, p, q), rtol=1e-4, atol=1e-5
    )
    if restricted:
        # Only the y column of the (token-major) prompt changes.
        np.testing.assert_array_equal(out[..., :4], z[..., :4])


def test_query_is_not_a_key():
    # Changing the query's x must not change any context token's update.
    z = _prompts(batch=2, dim=3, n=6, seed=3)["prompts"]
    layer = LinearAttention(restricted=False, init_stddev=0.5, seed=0)
    out = keras.ops.convert_to_numpy(layer(z))
    z2 = z.copy()
    z2[:, -1, :3] += 1.0
    out2 = keras.ops.convert_to_numpy(layer(z2))
    np.testing.assert_allclose(out[:, :-1], out2[:, :-1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[:, -1], out2[:, -1])


@pytest.mark.parametrize("restricted", [True, False])
def test_noise_free_init_is_identity(restricted):
    z = _prompts()["prompts"]
    layer = LinearAttention(restricted=restricted, init_stddev=0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(z)), z)


# --------------------------------------------------------------------------
# the known construction: preconditioned gradient descent
# --------------------------------------------------------------------------


def test_restricted_layers_run_preconditioned_gradient_descent():
    dim, n, steps, eta = 4, 24, 6, 0.4
    data = icl_regression_problems(3, dim=dim, num_context=n, kappa=8.0, seed=7)
    layer = LinearAttention(restricted=True, init_stddev=0.0)
    layer.build((1, n + 1, dim + 1))
    for b in range(3):
        sigma = data["covariances"][b].astype(np.float64)
        gamma = eta * np.linalg.inv(sigma)
        layer.a.assign(gamma.astype("float32"))
        x = data["inputs"][b].astype(np.float64)
        y = data["outputs"][b].astype(np.float64)
        z = data["prompts"][b : b + 1]
        w = np.zeros(dim)
        for _ in range(steps):
            z = layer(z)
            # w <- w - Gamma grad, grad of (1/2n) sum_i (<w, x_i> - y_i)^2.
            grad = -(y[:n] - x[:n] @ w) @ x[:n] / n
            w = w - gamma @ grad
            zn = keras.ops.convert_to_numpy(z)[0]
            np.testing.assert_allclose(
                -zn[-1, -1], w @ x[-1], rtol=1e-4, atol=1e-5
            )
            np.testing.assert_allclose(
                zn[:n, -1], y[:n] - x[:n] @ w, rtol=1e-4, atol=1e-5
            )
        # GD converges towards the exact task (noiseless, n > d).
        assert np.linalg.norm(w - data["weights"][b]) < np.linalg.norm(
            data["weights"][b]
        )


def test_nonzero_u_changes_the_prediction():
    z = _prompts(batch=2, dim=3, n=6, seed=4)["prompts"]
    layer = LinearAttention(init_stddev=0.0)
    layer.build(z.shape)
    layer.a.assign(np.eye(3, dtype="float32"))
    base = keras.ops.convert_to_numpy(layer(z))
    layer.u.assign(np.ones(3, dtype="float32"))
    moved = keras.ops.convert_to_numpy(layer(z))
    assert not np.allclose(base[:, -1, -1], moved[:, -1, -1])


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------


def test_bad_arguments():
    with pytest.raises(ValueError, match="restricted"):
        LinearAttention(restricted="yes")
    with pytest.raises(ValueError, match="init_stddev"):
        LinearAttention(init_stddev=-1.0)
    with pytest.raises(ValueError, match="seed"):
        LinearAttention(seed=1.5)
    with pytest.raises(ValueError, match="init_stddev"):
        LinearAttention(init_stddev=float("nan"))
    layer = LinearAttention(init_stddev=np.float32(0.25), seed=np.int64(2))
    assert (layer.init_stddev, layer.seed) == (0.25, 2)
    assert type(layer.seed) is int
    with pytest.raises(ValueError, match="batch, n \\+ 1, d \\+ 1"):
        LinearAttention().build((2, 5))
    with pytest.raises(ValueError, match="d \\+ 1 >= 2"):
        LinearAttention().build((2, 5, 1))
    with pytest.raises(ValueError, match="n \\+ 1 >= 2"):
        LinearAttention().build((2, 1, 4))
