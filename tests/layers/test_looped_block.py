import keras
import keras_hub
import numpy as np
import pytest

from keras_gr.layers import LoopedBlock
from tests.conformance import check_layer


def _encoder_configs(k, dim=8):
    return [
        keras.layers.serialize(
            keras_hub.layers.TransformerEncoder(
                intermediate_dim=2 * dim, num_heads=2, name=f"enc_{i}"
            )
        )
        for i in range(k)
    ]


def _x(shape=(2, 5, 8), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_conformance_transformer_block():
    check_layer(
        LoopedBlock,
        dict(layers=_encoder_configs(2, dim=4), num_loops=2),
        _x((2, 3, 4)),
        expected_output_shape=[(2, 3, 4)],
    )


def test_conformance_injection_all_loops():
    check_layer(
        LoopedBlock,
        dict(
            layers=[keras.layers.serialize(keras.layers.Dense(8))],
            num_loops=2,
            input_injection=True,
            return_all_loops=True,
        ),
        _x((4, 8)),
        expected_output_shape=[(4, 8), (4, 8)],
    )


def _dense_block(k, dim, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.layers.Dense(dim, activation="tanh") for _ in range(k)]
    for layer in layers:
        layer.build((None, dim))
    return layers


def _numpy_loop(x, weights, loops, injection):
    """Independent reference: h_t = block(h_{t-1} (+ x)), block = tanh dense
    layers, h_0 = x (vanilla) or 0 (injection)."""
    h = np.zeros_like(x) if injection else x
    outs = []
    for _ in range(loops):
        z = h + x if injection else h
        for kernel, bias in weights:
            z = np.tanh(z @ kernel + bias)
        h = z
        outs.append(h)
    return outs


@pytest.mark.parametrize("injection", [False, True])
@pytest.mark.parametrize("k,loops", [(1, 4), (2, 3)])
def test_matches_numpy_reference(k, loops, injection):
    x = _x((3, 6))
    layers = _dense_block(k, 6)
    weights = [tuple(layer.get_weights()) for layer in layers]
    block = LoopedBlock(
        layers,
        num_loops=loops,
        input_injection=injection,
        return_all_loops=True,
    )
    got = [keras.ops.convert_to_numpy(o) for o in block(x)]
    want = _numpy_loop(x.astype("float64"), weights, loops, injection)
    assert len(got) == loops
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


def test_params_do_not_grow_with_loops():
    counts = []
    for loops in (1, 5):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((5, 8))
        out = LoopedBlock(
            [keras_hub.layers.TransformerEncoder(16, 2) for _ in range(2)],
            num_loops=loops,
        )(inputs)
        counts.append(keras.Model(inputs, out).count_params())
    assert counts[0] == counts[1] > 0


def test_transformer_block_by_hand_with_mask():
    x = _x()
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype="int32")
    layers = [keras_hub.layers.TransformerEncoder(16, 2) for _ in range(2)]
    block = LoopedBlock(layers, num_loops=3)
    got = block(x, padding_mask=mask)
    h = x
    for _ in range(3):
        for layer in layers:
            h = layer(h, padding_mask=mask)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got),
        keras.ops.convert_to_numpy(h),
        atol=1e-5,
    )
    # The mask matters (so it was passed through).
    unmasked = keras.ops.convert_to_numpy(block(x))
    assert not np.allclose(unmasked[0], keras.ops.convert_to_numpy(got)[0])


def test_num_loops_override_at_call_time():
    x = _x((3, 6))
    layers = _dense_block(1, 6)
    block = LoopedBlock(layers, num_loops=2)
    more = block(x, num_loops=5)
    by_hand = x
    for _ in range(5):
        by_hand = layers[0](by_hand)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(more),
        keras.ops.convert_to_numpy(by_hand),
        atol=1e-6,
    )
    all_loops = LoopedBlock(layers, num_loops=2, return_all_loops=True)
    outs = all_loops(x, num_loops=4)
    assert len(outs) == 4
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outs[-1]),
        keras.ops.convert_to_numpy(block(x, num_loops=4)),
        atol=1e-6,
    )


def test_functional_override_and_jit():
    inputs = keras.Input((6,))
    block = LoopedBlock(_dense_block(1, 6), num_loops=2)
    model = keras.Model(inputs, block(inputs, num_loops=3))
    model.compile("sgd", "mse", jit_compile=True)
    x = _x((8, 6))
    model.fit(x, x, epochs=1, verbose=0)
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        keras.ops.convert_to_numpy(block(x, num_loops=3)),
        atol=1e-5,
    )


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_bad_num_loops(bad):
    with pytest.raises(ValueError, match="num_loops"):
        LoopedBlock([keras.layers.Dense(4)], num_loops=bad)


def test_bad_num_loops_at_call_time():
    block = LoopedBlock([keras.layers.Dense(4)], num_loops=2)
    with pytest.raises(ValueError, match="num_loops"):
        block(_x((2, 4)), num_loops=0)


def test_shape_changing_block_raises():
    block = LoopedBlock([keras.layers.Dense(3)], num_loops=2)
    with pytest.raises(ValueError, match="same shape|input's shape"):
        block(_x((2, 4)))


def test_bad_layers_and_kwargs():
    with pytest.raises(ValueError, match="layers"):
        LoopedBlock([], num_loops=2)
    with pytest.raises(ValueError, match="layers"):
        LoopedBlock(["dense"], num_loops=2)
    block = LoopedBlock([keras.layers.Dense(4)], num_loops=2)
    with pytest.raises(ValueError, match="padding_mask"):
        block(_x((2, 4)), padding_mask=np.ones((2,)))
