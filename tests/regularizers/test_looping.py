import keras
import numpy as np
import pytest

from keras_gr.regularizers import LoopingRegularizer
from keras_gr.regularizers.looping import looping_regularization


def _numpy_reg(groups, k, lam):
    """Independent reference of lambda * (1 - mean_G R_G(k))."""
    rs = []
    for g in groups:
        L = len(g)
        total = 0.0
        for i in range(L // k - 1):
            for j in range(k):
                a = g[i * k + j].ravel()
                b = g[(i + 1) * k + j].ravel()
                total += a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        rs.append(total / (L - k))
    return lam * (1.0 - np.mean(rs))


@pytest.mark.parametrize("L,k", [(4, 1), (6, 2), (6, 3), (8, 4)])
def test_matches_numpy_reference(L, k):
    rng = np.random.default_rng(L * 10 + k)
    groups = [
        [rng.normal(size=(3, 4)) + 0.5 for _ in range(L)],
        [rng.normal(size=(5,)) for _ in range(L)],
    ]
    got = looping_regularization(
        [
            [keras.ops.convert_to_tensor(w, "float32") for w in g]
            for g in groups
        ],
        k,
        10.0,
    )
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(got)),
        _numpy_reg(groups, k, 10.0),
        rtol=1e-5,
        atol=1e-5,
    )


def _stack(num_layers, dim=6, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((dim,))
    layers = [
        keras.layers.Dense(dim, activation="tanh", name=f"d{i}")
        for i in range(num_layers)
    ]
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x)), layers


def _total_loss(model):
    return sum(float(keras.ops.convert_to_numpy(v)) for v in model.losses)


def test_zero_for_identical_blocks():
    model, layers = _stack(6)
    for i in range(2, 6):
        layers[i].set_weights(layers[i % 2].get_weights())
    reg = LoopingRegularizer(layers, block_size=2, strength=10.0)
    assert abs(float(keras.ops.convert_to_numpy(reg()))) < 1e-5
    assert reg.similarity() == pytest.approx(1.0, abs=1e-6)
    # Not identical for block_size 3 (layers 0,1,0 vs 1,0,1).
    assert (
        float(
            keras.ops.convert_to_numpy(
                LoopingRegularizer(layers, block_size=3)()
            )
        )
        > 1.0
    )


def test_pulls_blocks_together_in_compiled_fit():
    model, layers = _stack(4)
    reg = LoopingRegularizer(layers, block_size=2, strength=10.0).attach()
    before = reg.similarity()
    np.testing.assert_allclose(
        _total_loss(model),
        10.0 * (1.0 - before),
        rtol=1e-5,
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    model.compile(keras.optimizers.Adam(0.01), "mse", jit_compile=True)
    model.fit(x, y, epochs=20, batch_size=32, verbose=0)
    after = reg.similarity()
    assert after > before + 0.3, (before, after)
    # Without the regulariser the cosine stays near its random start.
    plain, plain_layers = _stack(4)
    probe = LoopingRegularizer(plain_layers, block_size=2)
    plain.compile(keras.optimizers.Adam(0.01), "mse", jit_compile=True)
    plain.fit(x, y, epochs=20, batch_size=32, verbose=0)
    assert probe.similarity() < after - 0.3
    reg.detach()
    assert not model.losses
    assert all(v.regularizer is None for v in model.weights)


def test_keeps_existing_regularizer():
    keras.utils.set_random_seed(0)
    layers = [
        keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(1.0))
        for _ in range(2)
    ]
    inputs = keras.Input((3,))
    x = inputs
    for layer in layers:
        x = layer(x)
    model = keras.Model(inputs, x)
    l2 = sum(float(np.sum(w.kernel.numpy() ** 2)) for w in layers)
    reg = LoopingRegularizer(layers, block_size=1, strength=1.0).attach()
    total = sum(float(keras.ops.convert_to_numpy(v)) for v in model.losses)
    want = l2 + 1.0 * (1.0 - reg.similarity())
    np.testing.assert_allclose(total, want, rtol=1e-5)


def test_bad_block_size():
    _, layers = _stack(6)
    for bad in (4, 6, 0, -1, 1.5, None):
        with pytest.raises(ValueError, match="block_size"):
            LoopingRegularizer(layers, block_size=bad)
    with pytest.raises(ValueError, match="strength"):
        LoopingRegularizer(layers, block_size=2, strength=-1.0)


def test_mismatched_or_unbuilt_layers():
    _, layers = _stack(2)
    other = keras.layers.Dense(5)
    other.build((None, 6))
    with pytest.raises(ValueError, match="same trainable variable shapes"):
        LoopingRegularizer([layers[0], other], block_size=1)
    with pytest.raises(ValueError, match="built"):
        LoopingRegularizer([keras.layers.Dense(2)] * 2, block_size=1)


def test_serialization_round_trip(tmp_path):
    model, layers = _stack(4, seed=3)
    reg = LoopingRegularizer(layers, block_size=2, strength=3.0, min_ndim=2)
    config = keras.regularizers.serialize(reg)
    again = keras.regularizers.deserialize(config)
    assert isinstance(again, LoopingRegularizer)
    assert again.get_config() == reg.get_config()
    assert again.get_config()["layer_names"] == ["d0", "d1", "d2", "d3"]
    assert not again.bound
    with pytest.raises(ValueError, match="bind"):
        again()
    # Bound by name to the layers of a reloaded model, the loss is equal.
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    again.bind(loaded).attach()
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(again())),
        float(keras.ops.convert_to_numpy(reg())),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        _total_loss(loaded), float(keras.ops.convert_to_numpy(reg())), 1e-6
    )
    # Binding by name fails clearly when a layer is missing.
    other, _ = _stack(2)
    with pytest.raises(ValueError, match="layer_names"):
        LoopingRegularizer.from_config(config["config"]).bind(other)


@pytest.mark.parametrize("when", ["before", "after"])
def test_term_survives_a_frozen_first_layer(when):
    model, layers = _stack(4, seed=1)
    if when == "before":
        layers[0].trainable = False
    reg = LoopingRegularizer(layers, block_size=2, strength=10.0).attach()
    if when == "after":
        layers[0].trainable = False
    # Groups are unchanged by freezing: the frozen layer still counts.
    assert len(reg.groups) == 1 and len(reg.groups[0]) == 4
    np.testing.assert_allclose(
        _total_loss(model), 10.0 * (1.0 - reg.similarity()), rtol=1e-5
    )
    frozen = layers[0].get_weights()[0].copy()
    before = reg.similarity()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    model.compile(keras.optimizers.Adam(0.01), "mse", jit_compile=True)
    model.fit(x, y, epochs=20, batch_size=32, verbose=0)
    assert reg.similarity() > before + 0.3
    np.testing.assert_array_equal(layers[0].get_weights()[0], frozen)
    # Every layer frozen: nothing can move, and the term is absent.
    for layer in layers:
        layer.trainable = False
    assert _total_loss(model) == 0.0
