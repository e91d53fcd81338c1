"""Tests of `keras_gr.layers.Laurel` and `LaurelStack` (arXiv 2411.07501)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_gr.layers import Laurel
from keras_gr.layers import LaurelStack
from keras_gr.layers.column_orthogonal import column_orthogonal_matrix
from keras_gr.layers.laurel import rw_weights
from tests.conformance import check_layer

D = 8
R = 2
K = 3


# ---------------------------------------------------------------------------
# independent NumPy reference
# ---------------------------------------------------------------------------


def np_alpha_beta(w, param):
    a = w["alpha"]
    if param == "additive":
        return 1.0 + a, 1.0 + w["beta"]
    if param in ("softmax", "scaled_softmax"):
        e = np.exp(np.stack([a, w["beta"]]).astype("float64"))
        scale = 2.0 if param == "scaled_softmax" else 1.0
        return scale * e[0] / e.sum(0), scale * e[1] / e.sum(0)
    s = 1.0 / (1.0 + np.exp(-a))
    return s, 1.0 - s


def np_laurel(variant, inputs, w, param="additive"):
    x, fx = inputs[0].astype("float64"), inputs[1].astype("float64")
    acts = [x] + [p.astype("float64") for p in inputs[2:]]
    res = x.copy()
    if variant in ("lr", "rw_lr"):
        res = res + x @ w["lr_a"] @ w["lr_b"]
    if variant == "pa":
        res = res + sum(g * a for g, a in zip(w["gamma"], acts))
    if variant == "rw_lr_pa":
        res = res + sum(
            w["gamma"][j] * (acts[j] @ w["pa_a"][j] @ w["pa_b"][j])
            for j in range(len(acts))
        )
    if variant.startswith("rw"):
        alpha, beta = np_alpha_beta(w, param)
        return alpha * fx + beta * res
    return fx + res


def randomise(layer, seed=0):
    """Sets every weight to random values; returns them by short name."""
    rng = np.random.default_rng(seed)
    values = {}
    for v in layer.weights:
        value = rng.normal(scale=0.5, size=v.shape).astype("float32")
        v.assign(value)
        values[v.name] = value
    return values


def make_inputs(variant, shape=(4, D), k=K, seed=1):
    rng = np.random.default_rng(seed)
    n = 2 + (k - 1 if variant.endswith("pa") else 0)
    return [rng.normal(size=shape).astype("float32") for _ in range(n)]


ALL = ["rw", "lr", "pa", "rw_lr", "rw_lr_pa"]


# ---------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------


def test_column_orthogonal_matrix():
    a = np.array(column_orthogonal_matrix(6, 4))
    assert a.shape == (6, 4)
    want = np.zeros((6, 4))
    for i in range(6):
        want[i, i % 4] = 1 / np.sqrt(24)
    np.testing.assert_allclose(a, want)
    gram = a.T @ a
    np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=0)


PARAMS = ["additive", "softmax", "scaled_softmax", "sigmoid"]


@pytest.mark.parametrize("param", PARAMS)
def test_rw_weights(param):
    a = np.array([0.3, -1.0], "float32")
    b = np.array([-0.2, 2.0], "float32")
    alpha, beta = rw_weights(
        keras.ops.convert_to_tensor(a), keras.ops.convert_to_tensor(b), param
    )
    w_alpha, w_beta = np_alpha_beta({"alpha": a, "beta": b}, param)
    np.testing.assert_allclose(np.array(alpha), w_alpha, rtol=1e-6)
    np.testing.assert_allclose(np.array(beta), w_beta, rtol=1e-6)


def test_scaled_softmax_starts_at_one_and_keeps_the_bound():
    # 2 softmax((a, b)): exactly (1, 1) at a = b = 0 (the join starts at
    # f(x) + x), alpha + beta = 2 and both in (0, 2) everywhere.
    zero = keras.ops.zeros((3,))
    alpha, beta = rw_weights(zero, zero, "scaled_softmax")
    np.testing.assert_array_equal(np.array(alpha), 1.0)
    np.testing.assert_array_equal(np.array(beta), 1.0)
    a = np.array([-30.0, -2.0, 0.5, 4.0, 30.0], "float32")
    b = np.array([30.0, 1.0, 0.5, -3.0, -30.0], "float32")
    alpha, beta = rw_weights(
        keras.ops.convert_to_tensor(a),
        keras.ops.convert_to_tensor(b),
        "scaled_softmax",
    )
    alpha, beta = np.array(alpha), np.array(beta)
    np.testing.assert_allclose(alpha + beta, 2.0, rtol=1e-6)
    assert np.all(alpha >= 0.0) and np.all(alpha <= 2.0)
    assert np.all(beta >= 0.0) and np.all(beta <= 2.0)
    soft_alpha, _ = rw_weights(
        keras.ops.convert_to_tensor(a),
        keras.ops.convert_to_tensor(b),
        "softmax",
    )
    np.testing.assert_allclose(alpha, 2.0 * np.array(soft_alpha), rtol=1e-6)


# ---------------------------------------------------------------------------
# golden values, parameter counts, identity at init
# ---------------------------------------------------------------------------


# rw_parametrization only matters for the RW variants.
GOLDEN_CASES = [(v, "additive") for v in ALL] + [
    (v, p)
    for v in ALL
    if v.startswith("rw")
    for p in ("softmax", "scaled_softmax", "sigmoid")
]


@pytest.mark.parametrize("variant,param", GOLDEN_CASES)
def test_golden_against_numpy(variant, param):
    layer = Laurel(
        variant=variant, rank=R, num_activations=K, rw_parametrization=param
    )
    inputs = make_inputs(variant)
    layer(inputs)
    w = randomise(layer)
    got = np.array(layer(inputs))
    np.testing.assert_allclose(
        got, np_laurel(variant, inputs, w, param), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("param", ["additive", "scaled_softmax"])
@pytest.mark.parametrize("variant", ["rw", "rw_lr", "rw_lr_pa"])
def test_golden_per_channel_conv_features(variant, param):
    # Relaxed RW (one alpha / beta per channel) on NHWC features: A, B act
    # on the channel axis like 1x1 convolutions.
    layer = Laurel(
        variant=variant, rank=R, per_channel=True, rw_parametrization=param
    )
    inputs = make_inputs(variant, shape=(2, 3, 3, D))
    layer(inputs)
    w = randomise(layer, seed=4)
    assert w["alpha"].shape == (D,)
    got = np.array(layer(inputs))
    np.testing.assert_allclose(
        got, np_laurel(variant, inputs, w, param), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "variant, kwargs, count",
    [
        ("rw", {}, 2),
        ("rw", {"rw_parametrization": "softmax"}, 2),
        ("rw", {"rw_parametrization": "scaled_softmax"}, 2),
        (
            "rw_lr_pa",
            {"rw_parametrization": "scaled_softmax"},
            2 * R * K * D + K + 2,
        ),
        ("rw", {"rw_parametrization": "sigmoid"}, 1),
        ("rw", {"per_channel": True}, 2 * D),
        ("rw", {"per_channel": True, "rw_parametrization": "sigmoid"}, D),
        ("lr", {}, 2 * R * D),
        ("pa", {}, K),
        ("rw_lr", {}, 2 * R * D + 2),
        ("rw_lr_pa", {}, 2 * R * K * D + K + 2),
    ],
)
def test_parameter_counts(variant, kwargs, count):
    layer = Laurel(variant=variant, rank=R, num_activations=K, **kwargs)
    layer(make_inputs(variant))
    assert layer.count_params() == count


@pytest.mark.parametrize("variant", ALL)
def test_identity_at_init(variant):
    layer = Laurel(variant=variant, rank=R)
    inputs = make_inputs(variant)
    out = np.array(layer(inputs))
    np.testing.assert_array_equal(out, inputs[0] + inputs[1])


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("variant", ["rw", "rw_lr", "rw_lr_pa"])
def test_scaled_softmax_identity_at_init(variant, per_channel):
    # Exactly f(x) + x (bit for bit) at init, unlike the paper's softmax,
    # which starts at 0.5 f(x) + 0.5 x.
    layer = Laurel(
        variant=variant,
        rank=R,
        per_channel=per_channel,
        rw_parametrization="scaled_softmax",
    )
    inputs = make_inputs(variant)
    out = np.array(layer(inputs))
    np.testing.assert_array_equal(out, inputs[0] + inputs[1])
    softmax = Laurel(
        variant=variant,
        rank=R,
        per_channel=per_channel,
        rw_parametrization="softmax",
    )
    np.testing.assert_allclose(
        np.array(softmax(inputs)), 0.5 * (inputs[0] + inputs[1]), rtol=1e-6
    )


@pytest.mark.parametrize("variant", ["rw", "rw_lr", "rw_lr_pa"])
def test_scaled_softmax_identity_at_init_under_bf16(variant):
    # The float32 mixing path: 2 * 0.5 = 1 exactly, cast to bf16.
    layer = Laurel(
        variant=variant,
        rank=R,
        rw_parametrization="scaled_softmax",
        dtype="mixed_bfloat16",
    )
    inputs = [keras.ops.cast(t, "bfloat16") for t in make_inputs(variant)]
    out = layer(inputs)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    for v in (layer.alpha, layer.beta):
        assert keras.backend.standardize_dtype(v.dtype) == "float32"
    want = keras.ops.add(inputs[0], inputs[1])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(want, "float32")),
    )


@pytest.mark.parametrize("init", ["column_orthogonal", "glorot_uniform"])
def test_low_rank_init(init):
    layer = Laurel(variant="rw_lr_pa", rank=R, low_rank_initializer=init)
    layer(make_inputs("rw_lr_pa"))
    a = np.array(layer.pa_a)
    np.testing.assert_array_equal(np.array(layer.pa_b), 0.0)
    np.testing.assert_array_equal(np.array(layer.gamma), 1.0)
    if init == "column_orthogonal":
        for j in range(K):
            np.testing.assert_allclose(a[j], column_orthogonal_matrix(D, R))
    else:
        assert np.count_nonzero(a) == a.size
    pa = Laurel(variant="pa")
    pa(make_inputs("pa"))
    np.testing.assert_array_equal(np.array(pa.gamma), 0.0)


@pytest.mark.parametrize("param", ["additive", "scaled_softmax"])
def test_mixing_scalars_float32_under_mixed_precision(param):
    layer = Laurel(
        variant="rw_lr_pa",
        rank=R,
        dtype="mixed_bfloat16",
        rw_parametrization=param,
    )
    inputs = [keras.ops.cast(t, "bfloat16") for t in make_inputs("rw_lr_pa")]
    out = layer(inputs)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    for v in (layer.alpha, layer.beta, layer.gamma):
        assert keras.backend.standardize_dtype(v.dtype) == "float32"
    # Golden values: (alpha, beta) from the unrounded float32 scalars, the
    # other weights and the activations as the bf16 compute sees them.
    w = randomise(layer, seed=6)

    def bf16(value):
        value = keras.ops.cast(keras.ops.cast(value, "bfloat16"), "float32")
        return keras.ops.convert_to_numpy(value)

    seen = {k: v if k in ("alpha", "beta") else bf16(v) for k, v in w.items()}
    want = np_laurel("rw_lr_pa", [bf16(t) for t in inputs], seen, param)
    got = keras.ops.convert_to_numpy(keras.ops.cast(layer(inputs), "float32"))
    np.testing.assert_allclose(got, want, rtol=0.05, atol=0.1)


# ---------------------------------------------------------------------------
# conformance (both backends)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"variant": "rw"},
        {"variant": "rw", "per_channel": True},
        {"variant": "lr", "rank": R},
        {"variant": "pa", "num_activations": 2},
        {"variant": "rw_lr", "rank": R, "low_rank_initializer": "he_normal"},
        {"variant": "rw_lr", "rank": R, "rw_parametrization": "scaled_softmax"},
        {
            "variant": "rw_lr_pa",
            "rank": R,
            "num_activations": 2,
            "rw_parametrization": "scaled_softmax",
        },
        {"variant": "rw_lr_pa", "rank": R, "num_activations": 2},
    ],
    ids=lambda k: "-".join(str(v) for v in k.values()),
)
def test_conformance(kwargs):
    variant = kwargs["variant"]
    inputs = make_inputs(variant, shape=(4, 5, D), k=2)
    check_layer(Laurel, kwargs, inputs, expected_output_shape=(4, 5, D))


@pytest.mark.parametrize("variant", ["rw", "rw_lr", "rw_lr_pa"])
def test_scaled_softmax_serialization_round_trip(variant, tmp_path):
    layer = Laurel(
        variant=variant,
        rank=R,
        num_activations=K,
        rw_parametrization="scaled_softmax",
    )
    inputs = make_inputs(variant)
    layer(inputs)
    randomise(layer, seed=7)
    config = layer.get_config()
    assert config["rw_parametrization"] == "scaled_softmax"
    again = Laurel.from_config(config)
    again(inputs)
    again.set_weights(layer.get_weights())
    np.testing.assert_array_equal(
        np.array(again(inputs)), np.array(layer(inputs))
    )
    # Through a saved .keras model.
    symbolic = [keras.Input((D,)) for _ in inputs]
    model = keras.Model(symbolic, layer(symbolic))
    path = str(tmp_path / "scaled.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    join = [w for w in loaded.layers if isinstance(w, Laurel)][0]
    assert join.rw_parametrization == "scaled_softmax"
    np.testing.assert_allclose(
        loaded.predict(inputs, verbose=0),
        model.predict(inputs, verbose=0),
        rtol=1e-6,
        atol=1e-6,
    )


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_bad_arguments():
    with pytest.raises(ValueError, match="`variant` must be one of"):
        Laurel(variant="rwlr")
    with pytest.raises(ValueError, match="`rank` must be an integer"):
        Laurel(rank=0)
    with pytest.raises(ValueError, match="`num_activations` must be"):
        Laurel(variant="pa", num_activations=0)
    with pytest.raises(ValueError, match="`rw_parametrization` must be"):
        Laurel(rw_parametrization="tanh")
    # The error lists every allowed value, the new one included.
    with pytest.raises(ValueError) as info:
        Laurel(rw_parametrization="scaled")
    for allowed in PARAMS:
        assert repr(allowed) in str(info.value)
    with pytest.raises(ValueError, match="`rank` must be at most"):
        Laurel(variant="lr", rank=D + 1)(make_inputs("lr"))
    with pytest.raises(ValueError, match="needs the 2 previous activations"):
        Laurel(variant="pa", num_activations=3)(make_inputs("rw"))
    x = np.zeros((2, D), "float32")
    with pytest.raises(ValueError, match="must have the shape of `x`"):
        Laurel(variant="rw")([x, np.zeros((2, D + 1), "float32")])
    with pytest.raises(ValueError, match="list of inputs"):
        Laurel(variant="rw")(x)


# ---------------------------------------------------------------------------
# LaurelStack
# ---------------------------------------------------------------------------


def test_stack_feeds_previous_activations():
    keras.utils.set_random_seed(0)
    stack = LaurelStack(variant="rw_lr_pa", rank=R, num_activations=K)
    blocks = [keras.layers.Dense(D, activation="tanh") for _ in range(4)]
    inputs = keras.Input((D,))
    h = inputs
    for block in blocks:
        h = stack.apply(block, h)
    model = keras.Model(inputs, h)
    assert [layer.num_activations for layer in stack.layers] == [1, 2, 3, 3]
    ws = [randomise(layer, seed=i) for i, layer in enumerate(stack.layers)]
    x = np.random.default_rng(0).normal(size=(3, D)).astype("float32")
    # NumPy replay of the stack.
    history = []
    h_np = x.astype("float64")
    for block, w in zip(blocks, ws):
        kernel, bias = (np.array(v, "float64") for v in block.weights)
        fx = np.tanh(h_np @ kernel + bias)
        acts = [h_np] + history[::-1][: K - 1]
        history.append(h_np)
        h_np = np_laurel("rw_lr_pa", [h_np, fx] + acts[1:], w)
    np.testing.assert_allclose(np.array(model(x)), h_np, rtol=1e-4, atol=1e-5)
    # Replaying after reset reuses the same joins (subclassed-model use).
    stack.reset()
    h = keras.ops.convert_to_tensor(x)
    for block in blocks:
        h = stack.apply(block, h)
    assert len(stack.layers) == 4
    np.testing.assert_allclose(np.array(h), h_np, rtol=1e-4, atol=1e-5)


def test_stack_validates_arguments():
    with pytest.raises(ValueError, match="`variant` must be one of"):
        LaurelStack(variant="nope")


def test_laurel_network_trains():
    # End to end: a residual MLP with LAuReL joins learns a regression task.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, D)).astype("float32")
    y = np.sin(x @ rng.normal(size=(D, 1))).astype("float32")
    stack = LaurelStack(variant="rw_lr_pa", rank=R, num_activations=2)
    inputs = keras.Input((D,))
    h = inputs
    for _ in range(3):
        h = stack.apply(keras.layers.Dense(D, activation="relu"), h)
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, batch_size=32, epochs=15, verbose=0)
    last = model.evaluate(x, y, verbose=0)
    assert last < 0.5 * first
    moved = [
        float(np.abs(np.array(layer.pa_b)).max()) for layer in stack.layers
    ]
    assert min(moved) > 0.0, "B_j never left zero: PA gradients are dead"


# ---------------------------------------------------------------------------
# PA across a shape change, keras-hub dtype conventions
# ---------------------------------------------------------------------------


def _np_pool_project(act, factors, projection):
    b, *middle, c = act.shape
    split = [b]
    for size, f in zip(middle, factors):
        split += [size // f, f]
    pooled = act.reshape(split + [c]).mean(
        axis=tuple(range(2, 2 * len(factors) + 1, 2))
    )
    return pooled if projection is None else pooled @ projection


@pytest.mark.parametrize("variant", ["pa", "rw_lr_pa"])
def test_pa_across_a_stage_transition_matches_numpy(variant):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 4, 8)).astype("float32")
    fx = rng.normal(size=(2, 4, 4, 8)).astype("float32")
    before = rng.normal(size=(2, 8, 8, 4)).astype("float32")  # stride 2
    same = rng.normal(size=(2, 4, 4, 8)).astype("float32")
    layer = Laurel(
        variant=variant,
        rank=R,
        num_activations=3,
        pa_projection="pool_project",
    )
    layer([x, fx, same, before])
    w = randomise(layer, seed=3)
    assert layer.pa_projections[1] is None
    assert tuple(layer.pa_projections[2].shape) == (4, 8)
    got = keras.ops.convert_to_numpy(layer([x, fx, same, before]))
    pooled = _np_pool_project(
        before.astype("float64"), [2, 2], w["pa_projection_2"]
    )
    want = np_laurel(variant, [x, fx, same, pooled], w)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    config = layer.get_config()
    assert config["pa_projection"] == "pool_project"
    with pytest.raises(ValueError, match="pa_projection"):
        Laurel(variant="pa", pa_projection="conv")
    with pytest.raises(ValueError, match="integer"):
        Laurel(variant="pa", num_activations=2, pa_projection="pool_project")(
            [x, fx, rng.normal(size=(2, 6, 6, 4)).astype("float32")]
        )
    with pytest.raises(ValueError, match="shape"):
        Laurel(variant="pa", num_activations=2)([x, fx, before])


def test_pa_stage_transition_trains_and_saves(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    stem = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    f = keras.layers.Conv2D(8, 3, strides=2, padding="same")(stem)
    shortcut = keras.layers.Conv2D(8, 1, strides=2)(stem)
    joined = Laurel(
        variant="rw_lr_pa",
        rank=2,
        num_activations=2,
        pa_projection="pool_project",
    )([shortcut, f, stem])
    outputs = keras.layers.Dense(1)(
        keras.layers.GlobalAveragePooling2D()(joined)
    )
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
    y = x.mean(axis=(1, 2, 3))[:, None] * 4.0
    model.compile(keras.optimizers.Adam(0.01), "mse", jit_compile=True)
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=30, batch_size=32, verbose=0)
    assert model.evaluate(x, y, verbose=0) < 0.5 * first
    path = str(tmp_path / "pa.keras")
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_allclose(
        again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5
    )


@pytest.mark.parametrize("param", ["softmax", "scaled_softmax"])
@pytest.mark.parametrize("variant", ALL)
def test_bfloat16_policy_keeps_every_weight_and_output_in_bf16(variant, param):
    layer = Laurel(
        variant=variant,
        rank=R,
        num_activations=K,
        dtype="bfloat16",
        rw_parametrization=param,
    )
    inputs = make_inputs(variant)
    layer(inputs)
    w = randomise(layer, seed=2)
    out = layer(inputs)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert {keras.backend.standardize_dtype(v.dtype) for v in layer.weights}
    assert all(
        keras.backend.standardize_dtype(v.dtype) == "bfloat16"
        for v in layer.weights
    )
    rounded = {
        k: keras.ops.convert_to_numpy(
            keras.ops.cast(keras.ops.cast(v, "bfloat16"), "float32")
        )
        for k, v in w.items()
    }
    want = np_laurel(variant, inputs, rounded, param)
    got = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
    np.testing.assert_allclose(got, want, rtol=0.05, atol=0.1)


def test_lr_with_norm_matches_numpy_and_starts_at_identity():
    x, fx = make_inputs("lr")
    layer = Laurel(variant="rw_lr", rank=R, lr_norm=True, lr_norm_epsilon=1e-5)
    out = keras.ops.convert_to_numpy(layer([x, fx]))
    np.testing.assert_allclose(out, x + fx, rtol=1e-6, atol=1e-6)
    w = randomise(layer, seed=4)
    low = x.astype("float64") @ w["lr_a"] @ w["lr_b"]
    low = low / np.sqrt(np.mean(low**2, -1, keepdims=True) + 1e-5)
    low = low * w["lr_norm_scale"]
    alpha, beta = 1.0 + w["alpha"], 1.0 + w["beta"]
    want = alpha * fx + beta * (x + low)
    got = keras.ops.convert_to_numpy(layer([x, fx]))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert layer.get_config()["lr_norm"] is True
    with pytest.raises(ValueError, match="lr_norm"):
        Laurel(variant="pa", lr_norm=True)
    with pytest.raises(ValueError, match="lr_norm_epsilon"):
        Laurel(variant="lr", lr_norm=True, lr_norm_epsilon=0.0)


def test_equals_keras_hub_gemma3n_laurel_block():
    # keras-hub does not export the block; the test reaches for it (the
    # library only reads its public attributes).
    layers = pytest.importorskip(
        "keras_hub.src.models.gemma3n.gemma3n_text_layers"
    )
    block = layers.Gemma3nTextLaurelBlock(
        hidden_size=D, laurel_rank=R, rms_norm_eps=1e-6
    )
    block.build((None, 5, D))
    rng = np.random.default_rng(5)
    for v in block.weights:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    laurel = Laurel.from_keras_hub_laurel_block(block)
    x = rng.normal(size=(2, 5, D)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(laurel([x, np.zeros_like(x)])),
        keras.ops.convert_to_numpy(block(x)),
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="block"):
        Laurel.from_keras_hub_laurel_block(keras.layers.Dense(3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"variant": "rw"},
        {"variant": "lr"},
        {"variant": "rw_lr"},
        {"variant": "rw_lr", "per_channel": True},
        {"variant": "lr", "lr_norm": True},
        {"variant": "rw_lr", "rw_parametrization": "softmax"},
        {"variant": "rw", "rw_parametrization": "sigmoid"},
        {"variant": "rw", "rw_parametrization": "scaled_softmax"},
        {"variant": "rw_lr", "rw_parametrization": "scaled_softmax"},
    ],
    ids=lambda kwargs: "-".join(str(v) for v in kwargs.values()),
)
def test_residual_increment_is_the_join_minus_the_residual(kwargs):
    layer = Laurel(rank=R, **kwargs)
    layer.build([(None, 5, D), (None, 5, D)])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, D)).astype("float32")
    fx = rng.normal(size=(2, 5, D)).astype("float32")
    increment = np.asarray(layer.residual_increment(fx, x))
    param = kwargs.get("rw_parametrization", "additive")
    if param in ("additive", "scaled_softmax"):
        # Exactly the branch at init: a retrofitted block is bit-identical.
        np.testing.assert_array_equal(increment, fx)
    np.testing.assert_allclose(
        x + increment, np.asarray(layer([x, fx])), rtol=1e-5, atol=1e-5
    )
    randomise(layer, seed=2)
    increment = np.asarray(layer.residual_increment(fx, x))
    np.testing.assert_allclose(
        x + increment, np.asarray(layer([x, fx])), rtol=1e-5, atol=1e-5
    )


def test_residual_increment_in_the_compute_dtype_outside_call():
    # Called inside another layer's call (no autocast scope of its own):
    # weights are cast explicitly, the result is in the compute dtype.
    layer = Laurel(variant="rw_lr", rank=R, dtype="mixed_bfloat16")
    layer.build([(None, D), (None, D)])
    randomise(layer)
    x = keras.ops.ones((3, D), dtype="bfloat16")
    out = layer.residual_increment(x, x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    want = keras.ops.cast(layer([x, x]), "float32") - 1.0
    np.testing.assert_allclose(
        np.asarray(keras.ops.cast(out, "float32")),
        np.asarray(want),
        rtol=5e-2,
        atol=5e-2,
    )


def test_residual_increment_refuses_pa():
    layer = Laurel(variant="pa", num_activations=2)
    layer.build([(None, D)] * 3)
    x = np.ones((1, D), "float32")
    with pytest.raises(ValueError, match="variant='pa'"):
        layer.residual_increment(x, x)


def _masked_ids():
    ids = np.array([[3, 5, 2, 0, 0], [7, 1, 0, 0, 0]], "int32")
    return ids, ids != 0


@pytest.mark.parametrize(
    "kwargs", [{"variant": "rw_lr", "rank": 2}, {"variant": "rw"}]
)
def test_mask_propagates_like_add(kwargs):
    # Issue 26 item 24: `Add()([e, fx])` keeps the Embedding's mask; Laurel
    # dropped it, so layers after the join no longer saw the padding.
    ids, expected = _masked_ids()
    keras.utils.set_random_seed(0)
    embed = keras.layers.Embedding(10, D, mask_zero=True)
    dense = keras.layers.Dense(D)
    e = embed(ids)
    fx = dense(e)
    reference = keras.layers.Add()([e, fx])
    out = Laurel(**kwargs)([e, fx])
    for tensor in (reference, out):
        mask = getattr(tensor, "_keras_mask", None)
        assert mask is not None
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(mask), expected
        )
    # Functional: a masked mean after the join ignores the padding.
    inputs = keras.Input((5,), dtype="int32")
    x = embed(inputs)
    joined = Laurel(**kwargs)([x, dense(x)])
    pooled = keras.layers.GlobalAveragePooling1D()(joined)
    model = keras.Model(inputs, [joined, pooled])
    seq, mean = (keras.ops.convert_to_numpy(t) for t in model(ids))
    weights = expected[..., None].astype("float32")
    np.testing.assert_allclose(
        mean, (seq * weights).sum(1) / weights.sum(1), rtol=1e-5, atol=1e-6
    )
    # Masks are merged with a logical and, as `Add` does.
    other = np.array([[1, 1, 1, 1, 0], [1, 0, 1, 1, 1]], bool)
    layer = Laurel(**kwargs)
    merged = layer.compute_mask([e, fx], [expected, other])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(merged), expected & other
    )
    assert layer.compute_mask([e, fx], [None, None]) is None
    assert layer.compute_mask([e, fx], None) is None


def test_stack_propagates_masks():
    ids, expected = _masked_ids()
    keras.utils.set_random_seed(0)
    x = keras.layers.Embedding(10, D, mask_zero=True)(ids)
    stack = LaurelStack(variant="rw_lr_pa", rank=2, num_activations=3)
    for _ in range(3):
        x = stack.join(x, keras.layers.Dense(D)(x))
    mask = getattr(x, "_keras_mask", None)
    assert mask is not None
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask), expected)


_WITHOUT_TENSORFLOW = """
import sys
import numpy as np
import keras
import keras_gr.layers
import keras_gr.optimizers

inputs = keras.Input((8,))
branch = keras.layers.Dense(8)(inputs)
outputs = keras_gr.layers.Laurel(variant="rw_lr", rank=2)([inputs, branch])
model = keras.Model(inputs, outputs)
model.compile(optimizer="adam", loss="mse")
model.fit(np.ones((8, 8)), np.ones((8, 8)), epochs=1, verbose=0)
print("tensorflow imported:", "tensorflow" in sys.modules)
"""


@pytest.mark.slow  # a fresh process imports JAX and compiles a fit step
@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="TensorFlow is the backend itself on the TensorFlow pass",
)
def test_laurel_on_jax_does_not_import_tensorflow():
    # Guard (issue 30 item 5): the layer path imports no TensorFlow on JAX.
    # Not reachable TensorFlow-free with Keras 3.15 itself: saving
    # (`keras.saving` checks `tf.available`) and
    # `keras.utils.set_random_seed` import TensorFlow whenever installed,
    # and keras-hub imports it on import.
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TENSORFLOW],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "jax"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tensorflow imported: False" in proc.stdout, proc.stdout
