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


@pytest.mark.slow  # the conformance suite over a keras-hub encoder
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


def _mode_model(mode, remat, injection, all_loops, loops=3, seed=0):
    layers = _dense_block(2, 6, seed=seed)
    inputs = keras.Input((6,))
    out = LoopedBlock(
        layers,
        num_loops=loops,
        input_injection=injection,
        return_all_loops=all_loops,
        loop_mode=mode,
        rematerialize=remat,
    )(inputs)
    if all_loops:
        out = keras.layers.Concatenate()(out)
    return keras.Model(inputs, out)


@pytest.mark.parametrize(
    "injection,all_loops,remat",
    [(False, False, False), (True, True, False), (False, True, True)],
)
def test_scan_mode_equals_unrolled_in_compiled_fit(injection, all_loops, remat):
    x = _x((16, 6))
    y = _x((16, 18 if all_loops else 6), seed=1)
    weights = []
    for mode in ("unroll", "scan"):
        model = _mode_model(mode, remat, injection, all_loops)
        if mode == "unroll":
            want = _numpy_loop(
                x.astype("float64"),
                [tuple(w) for w in zip(*[iter(model.get_weights())] * 2)],
                3,
                injection,
            )
            want = np.concatenate(want if all_loops else want[-1:], -1)
        np.testing.assert_allclose(
            model.predict(x, verbose=0), want, atol=1e-5, rtol=1e-5
        )
        model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=True)
        model.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
        weights.append(model.get_weights())
    # The same gradient steps: the weights after training agree.
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert not np.allclose(
        weights[0][0],
        _mode_model("unroll", False, injection, all_loops).get_weights()[0],
    )


def test_scan_mode_transformer_with_mask_and_override():
    x = _x()
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype="int32")
    layers = [keras_hub.layers.TransformerEncoder(16, 2)]
    unrolled = LoopedBlock(layers, num_loops=2)
    scanned = LoopedBlock(layers, num_loops=2, loop_mode="scan")
    for loops in (3,):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(
                scanned(x, padding_mask=mask, num_loops=loops)
            ),
            keras.ops.convert_to_numpy(
                unrolled(x, padding_mask=mask, num_loops=loops)
            ),
            atol=1e-5,
        )


def test_scan_mode_config_round_trip():
    block = LoopedBlock(
        _dense_block(1, 4), num_loops=3, loop_mode="scan", rematerialize=True
    )
    again = LoopedBlock.from_config(block.get_config())
    assert again.loop_mode == "scan" and again.rematerialize
    assert again.num_loops == 3
    with pytest.raises(ValueError, match="loop_mode"):
        LoopedBlock([keras.layers.Dense(4)], loop_mode="while")


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="StableHLO text is JAX's"
)
def test_scan_mode_program_size_is_flat_in_loops():
    import jax

    layers = _dense_block(2, 6)
    x = _x((2, 6))
    sizes = {}
    for mode in ("unroll", "scan"):
        for loops in (1, 8, 32):
            block = LoopedBlock(layers, num_loops=loops, loop_mode=mode)
            block.build(x.shape)
            values = [v.value for v in block.trainable_variables]

            def f(values, x, block=block):
                out, _ = block.stateless_call(values, [], x)
                return out

            text = jax.jit(f).lower(values, x).as_text()
            sizes[mode, loops] = len(text.splitlines())
    assert sizes["scan", 8] == sizes["scan", 32], sizes
    assert sizes["scan", 32] < sizes["scan", 1] + 40, sizes
    assert sizes["unroll", 32] > 3 * sizes["unroll", 8] / 2, sizes


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="only JAX traces the state"
)
def test_scan_mode_refuses_dropout_in_training_on_jax():
    block = LoopedBlock(
        [keras.layers.Dropout(0.5), keras.layers.Dense(4)],
        num_loops=2,
        loop_mode="scan",
    )
    x = _x((2, 4))
    block(x)  # inference is fine
    with pytest.raises(ValueError, match="loop_mode"):
        block(x, training=True)


@pytest.mark.parametrize("policy", ["bfloat16", "mixed_bfloat16"])
@pytest.mark.parametrize("mode", ["unroll", "scan"])
def test_block_adopts_its_layers_dtype_policy(policy, mode):
    layers = [keras.layers.Dense(4, dtype=policy) for _ in range(2)]
    block = LoopedBlock(layers, num_loops=3, loop_mode=mode)
    assert block.dtype_policy.name == policy
    x = _x((2, 4))
    out = block(x)
    compute = keras.DTypePolicy(policy).compute_dtype
    assert keras.backend.standardize_dtype(out.dtype) == compute
    spec = block.compute_output_spec(keras.KerasTensor((2, 4)))
    assert spec.dtype == compute
    assert all(
        keras.backend.standardize_dtype(v.dtype)
        == block.dtype_policy.variable_dtype
        for v in block.weights
    )


def test_mask_follows_the_per_call_loop_count():
    keras.utils.set_random_seed(0)
    x = _x((2, 5, 4))
    x[0, 3:] = 0.0  # masked steps of the first sequence
    inputs = keras.Input((5, 4))
    masked = keras.layers.Masking(0.0)(inputs)
    block = LoopedBlock(
        [keras.layers.Dense(4, activation="tanh")],
        num_loops=2,
        return_all_loops=True,
    )
    outs = block(masked, num_loops=3)
    assert len(outs) == 3
    pooled = keras.layers.GlobalAveragePooling1D()(outs[2])
    model = keras.Model(inputs, pooled)
    hidden = keras.Model(inputs, outs[2]).predict(x, verbose=0)
    mask = np.any(x != 0.0, axis=-1).astype("float32")[..., None]
    want = (hidden * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-5)


@pytest.mark.multidevice
def test_scan_mode_under_model_parallel_equals_single_device():
    """8 virtual JAX devices, a (2, 4) mesh: the looped block's kernels
    sharded over "model" and the batch over "batch". Compiled `fit` in
    `loop_mode="scan"` with rematerialisation gives the weights of the
    unrolled single-device run (and the kernels stay sharded)."""
    from tests.multidevice import run_on_devices

    result = run_on_devices(
        """
import keras
import numpy as np
from keras_gr.layers import LoopedBlock

rng = np.random.default_rng(0)
x = rng.normal(size=(32, 8)).astype("float32")
y = rng.normal(size=(32, 8)).astype("float32")

def train(mode, remat, distribution=None):
    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8,))
        block = [
            keras.layers.Dense(8, activation="tanh", name=f"loop_{i}")
            for i in range(2)
        ]
        out = LoopedBlock(
            block, num_loops=4, loop_mode=mode, rematerialize=remat
        )(inputs)
        model = keras.Model(inputs, out)
        model.initial_weights = model.get_weights()
        model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=True)
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        return model
    if distribution is None:
        return build()
    with distribution.scope():
        return build()

devices = keras.distribution.list_devices()
mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
layout_map = keras.distribution.LayoutMap(mesh)
layout_map[".*loop_0/kernel"] = (None, "model")
layout_map[".*loop_1/kernel"] = ("model", None)
dist = keras.distribution.ModelParallel(
    layout_map=layout_map, batch_dim_name="batch"
)
sharded = train("scan", True, dist)
single = train("unroll", False)
start = single.initial_weights
kernel = [w for w in sharded.weights if w.path.endswith("loop_0/kernel")][0]
RESULT = {
    "devices": len(devices),
    "kernel": str(kernel.value.sharding.spec),
    "diff": max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(single.get_weights(), sharded.get_weights())
    ),
    "moved": float(np.max(np.abs(single.get_weights()[0] - start[0]))),
}
"""
    )
    assert result["devices"] == 8
    assert "model" in result["kernel"], result
    assert result["diff"] < 1e-5, result
    assert result["moved"] > 1e-3, result


class _Scale(keras.layers.Layer):
    """`w * x` with one scalar weight."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(), initializer="ones")

    def call(self, x):
        return self.w * x


@pytest.mark.parametrize("mode", ["unroll", "scan"])
def test_remat_refuses_random_sublayers_in_training(mode):
    # Issue 26 items 22-23: the recomputation drew new dropout masks (wrong
    # gradients on TensorFlow, a leaked tracer on JAX): now refused.
    def make(remat):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((16,))
        block = LoopedBlock(
            [keras.layers.Dropout(0.5), _Scale()],
            num_loops=2,
            loop_mode=mode,
            rematerialize=remat,
        )
        return keras.Model(inputs, block(inputs))

    x = np.abs(_x((8, 16))) + 1.0
    model = make(True)
    np.testing.assert_allclose(model(x), x, rtol=1e-6)  # inference is fine
    with pytest.raises(ValueError, match=r"rematerialize.*training"):
        model(x, training=True)
    model.compile(optimizer="sgd", loss="mae", jit_compile=False)
    with pytest.raises(ValueError, match=r"rematerialize.*training"):
        model.fit(x, np.zeros((8, 1)), epochs=1, verbose=0)
    # Without remat (and in unroll mode on JAX), training works: the loss
    # sum(w^2 * mask(x)) has d/dw = 2 * loss at w = 1.
    if mode == "scan" and keras.backend.backend() == "jax":
        return
    block = make(False).layers[-1]
    out = block(x, training=True)
    assert 0 < np.mean(keras.ops.convert_to_numpy(out) == 0) < 1
    if keras.backend.backend() != "tensorflow":
        return  # the wrong gradients were TensorFlow's
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(block(x, training=True))
    grad = tape.gradient(loss, block.block_layers[1].w)
    np.testing.assert_allclose(float(grad), 2.0 * float(loss), rtol=1e-5)
