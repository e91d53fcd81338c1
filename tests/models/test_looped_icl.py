import os
import tempfile

import keras
import numpy as np
import pytest

from keras_gr.data.icl_regression import icl_regression_problems
from keras_gr.models.looped_icl.looped_icl_regressor import LoopedICLRegressor
from keras_gr.models.looped_icl.looped_icl_regressor import query_prediction


def reference_restricted_step(z, a, u):
    """NumPy restricted layer on token-major prompts (paper: Z + (1/n)
    P Z M Z^T Q Z, P = [[0, 0], [u^T, 1]], Q = [[-A, 0], [0, 0]])."""
    z = np.asarray(z, dtype=np.float64)
    n = z.shape[1] - 1
    x, y = z[..., :-1], z[..., -1]
    values = x[:, :n] @ u + y[:, :n]  # (batch, n): row d+1 of P Z M
    scores = -np.einsum("bji,ik,btk->bjt", x[:, :n], a, x)  # x_j^T Q x_t
    new_y = y + np.einsum("bj,bjt->bt", values, scores) / n
    return np.concatenate([x, new_y[..., None]], axis=-1)


def _data(num=6, dim=3, n=10, seed=0, **kwargs):
    return icl_regression_problems(
        num, dim=dim, num_context=n, kappa=5.0, seed=seed, **kwargs
    )


def test_parameter_counts():
    z = _data()["prompts"]
    counts = {}
    for looped in (True, False):
        for depth in (1, 4):
            model = LoopedICLRegressor(depth=depth, looped=looped)
            model(z)
            counts[looped, depth] = model.count_params()
    # Restricted: A (d x d) + u (d) per distinct layer.
    assert counts[True, 1] == counts[True, 4] == 3 * 3 + 3
    assert counts[False, 4] == 4 * counts[False, 1] == 4 * 12
    model = LoopedICLRegressor(depth=3, restricted=False)
    model(z)
    assert model.count_params() == 2 * 4 * 4


@pytest.mark.parametrize("looped", [True, False])
def test_matches_layers_applied_by_hand(looped):
    data = _data(seed=1)
    z = data["prompts"]
    model = LoopedICLRegressor(depth=3, looped=looped, init_stddev=0.2, seed=0)
    out = keras.ops.convert_to_numpy(model(z))
    assert out.shape == (6, 1)
    layers = model.attention_layers * (3 if looped else 1)
    ref = z
    for layer in layers:
        ref = reference_restricted_step(
            ref, np.asarray(layer.a), np.asarray(layer.u)
        )
    np.testing.assert_allclose(out[:, 0], -ref[:, -1, -1], rtol=1e-4, atol=1e-5)


def test_depth_override_and_all_depths():
    z = _data(seed=2)["prompts"]
    looped = LoopedICLRegressor(depth=2, init_stddev=0.2, seed=0)
    all_depths = keras.ops.convert_to_numpy(
        looped(z, depth=7, return_all_depths=True)
    )
    assert all_depths.shape == (6, 7)
    for depth in (1, 2, 7):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(looped(z, depth=depth))[:, 0],
            all_depths[:, depth - 1],
            rtol=1e-5,
            atol=1e-6,
        )
    deep = LoopedICLRegressor(depth=3, looped=False, init_stddev=0.2, seed=0)
    all_deep = keras.ops.convert_to_numpy(deep(z, return_all_depths=True))
    assert all_deep.shape == (6, 3)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(deep(z, depth=2))[:, 0],
        all_deep[:, 1],
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(deep(z))[:, 0],
        all_deep[:, 2],
        rtol=1e-5,
        atol=1e-6,
    )


def test_query_prediction_sign():
    z = np.zeros((2, 3, 4), dtype="float32")
    z[:, -1, -1] = [1.5, -2.0]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(query_prediction(z)), [[-1.5], [2.0]]
    )


def test_gradient_descent_weights_lower_the_loss_with_every_loop():
    # The construction A = eta I, u = 0: every extra loop is one more GD
    # step, so the mean query error falls monotonically with the loops.
    data = _data(num=512, dim=3, n=20, seed=3)
    model = LoopedICLRegressor(depth=2, init_stddev=0.0)
    model(data["prompts"][:2])
    model.attention_layers[0].a.assign(0.5 * np.eye(3, dtype="float32"))
    preds = keras.ops.convert_to_numpy(
        model(data["prompts"], depth=12, return_all_depths=True)
    )
    mse = np.mean((preds - data["targets"][:, None]) ** 2, axis=0)
    assert np.all(np.diff(mse) < 0), mse
    assert mse[-1] < 0.2 * mse[0]


@pytest.mark.parametrize("looped", [True, False])
def test_fit_lowers_the_loss(looped):
    keras.utils.set_random_seed(0)
    train = _data(num=1024, dim=3, n=12, seed=4)
    test = _data(num=256, dim=3, n=12, seed=5)
    model = LoopedICLRegressor(depth=3, looped=looped, seed=0)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.02),
        loss="mse",
        jit_compile=True,
    )
    before = model.evaluate(test["prompts"], test["targets"], verbose=0)
    model.fit(
        train["prompts"],
        train["targets"],
        batch_size=64,
        epochs=4,
        verbose=0,
    )
    after = model.evaluate(test["prompts"], test["targets"], verbose=0)
    assert np.isfinite(after) and after < 0.5 * before, (before, after)
    if looped:
        # Trained with 3 loops, still better with more loops at test time.
        preds = keras.ops.convert_to_numpy(
            model(test["prompts"], depth=8, return_all_depths=True)
        )
        mse = np.mean((preds - test["targets"][:, None]) ** 2, axis=0)
        assert mse[7] < mse[2], mse


def test_unrestricted_fit_and_save_load():
    keras.utils.set_random_seed(0)
    train = _data(num=512, dim=2, n=8, seed=6)
    model = LoopedICLRegressor(depth=2, restricted=False, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    before = model.evaluate(train["prompts"], train["targets"], verbose=0)
    model.fit(
        train["prompts"], train["targets"], batch_size=64, epochs=3, verbose=0
    )
    after = model.evaluate(train["prompts"], train["targets"], verbose=0)
    assert after < before
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "icl.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(train["prompts"][:8], depth=5)),
        keras.ops.convert_to_numpy(model(train["prompts"][:8], depth=5)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        LoopedICLRegressor(depth=0)
    with pytest.raises(ValueError, match="looped"):
        LoopedICLRegressor(looped="no")
    z = _data()["prompts"]
    deep = LoopedICLRegressor(depth=2, looped=False)
    with pytest.raises(ValueError, match="depth"):
        deep(z, depth=3)
    looped = LoopedICLRegressor(depth=2)
    with pytest.raises(ValueError, match="depth"):
        looped(z, depth=0)
