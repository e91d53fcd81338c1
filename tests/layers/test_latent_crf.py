import keras
import numpy as np
import pytest

from keras_gr.layers import LatentCRF
from keras_gr.layers import latent_crf as lc
from tests.conformance import check_layer

# --------------------------------------------------------------------------
# Independent NumPy reference: explicit loops over positions and pairs.
# --------------------------------------------------------------------------


def _ref_energy(y, u, feats, strength, filters, expert_w):
    """E for ONE example, brute force over all pairs of positions.
    `strength[(dy, dx)]` is defined for both signs of every linked offset
    (the same value); each unordered pair is visited once."""
    h, w, c = y.shape
    energy = 0.5 * np.sum((y - u) ** 2)
    for i in range(h):
        for j in range(w):
            for i2 in range(h):
                for j2 in range(w):
                    dy, dx = i2 - i, j2 - j
                    if (i2, j2) <= (i, j) or (dy, dx) not in strength:
                        continue
                    kern = np.exp(
                        -0.5 * np.sum((feats[i, j] - feats[i2, j2]) ** 2)
                    )
                    diff = np.sum((y[i, j] - y[i2, j2]) ** 2)
                    energy += 0.5 * strength[(dy, dx)] * kern * diff
    if filters is not None:
        e = filters.shape[0]
        p = e // 2
        padded = np.pad(y, [(p, p), (p, p), (0, 0)])
        for k in range(filters.shape[-1]):
            for i in range(h):
                for j in range(w):
                    resp = np.sum(
                        padded[i : i + e, j : j + e] * filters[..., k]
                    )
                    energy += expert_w[k] * np.log1p(0.5 * resp**2)
    return energy


def _ref_grad(y, *args, eps=1e-6):
    g = np.zeros_like(y)
    for idx in np.ndindex(*y.shape):
        yp, ym = y.copy(), y.copy()
        yp[idx] += eps
        ym[idx] -= eps
        g[idx] = (_ref_energy(yp, *args) - _ref_energy(ym, *args)) / (2 * eps)
    return g


def _ref_layer(layer, x, cond=None, timestep=None):
    """Whole forward pass of LatentCRF in float64 NumPy, from its weights."""
    wts = {v.name: np.asarray(v, "float64") for v in layer.weights}
    offsets = layer.offsets
    p, k = len(offsets), layer.num_experts
    outs = []
    for b in range(x.shape[0]):
        u = x[b].astype("float64") @ wts["unary_kernel"] + wts["unary_bias"]
        s = wts["pairwise_weights"] ** 2
        a = wts["expert_weights"] ** 2
        logits = wts["step_logits"].copy()
        parts = [] if cond is None else [np.asarray(cond[b], "float64")]
        if timestep is not None:
            half = layer.timestep_embedding_dim // 2
            freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)
            arg = float(np.reshape(timestep, (-1,))[b]) * freqs
            parts.append(np.concatenate([np.sin(arg), np.cos(arg)]))
        if parts:
            h = np.concatenate(parts)
            u = u * (1 + h @ wts["unary_scale_kernel"])
            u = u + h @ wts["unary_shift_kernel"]
            z = h @ wts["conditioning_kernel"]
            gain = 2.0 / (1.0 + np.exp(-z[: p + k]))
            s, a = s * gain[:p], a * gain[p:]
            logits = logits + z[p + k :]
        feats = u @ wts["feature_kernel"]
        strength = {}
        for i, (dy, dx) in enumerate(offsets):
            strength[(dy, dx)] = strength[(-dy, -dx)] = s[i]
        filt = wts["expert_filters"]
        bound = 1.0 + 4.0 * s.sum()
        bound += np.sum(a * np.sum(np.sum(np.abs(filt), (0, 1)) ** 2, 0))
        taus = 2.0 / (1.0 + np.exp(-logits))
        args = (u, feats, strength, filt, a)
        y = u.copy()
        for t in range(layer.num_steps):
            y = y - taus[t] / bound * _ref_grad(y, *args)
        outs.append(y)
    return np.stack(outs)


def _randomize(layer, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        v.assign(scale * rng.normal(size=v.shape).astype("float32"))


# --------------------------------------------------------------------------
# Pure functions.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 5])
def test_neighborhood_offsets_half_window(size):
    offsets = lc.neighborhood_offsets(size)
    assert len(offsets) == (size * size - 1) // 2
    full = set(offsets) | {(-dy, -dx) for dy, dx in offsets}
    assert len(full) == size * size - 1  # no pair listed in both directions
    assert (0, 0) not in full


def test_pairwise_offsets_dilated_star_grows_logarithmically():
    offsets = lc.pairwise_offsets(3, (1, 2, 4))
    assert offsets[:4] == lc.neighborhood_offsets(3)
    assert set(offsets[4:]) == {
        (2, 0),
        (0, 2),
        (2, 2),
        (2, -2),
        (4, 0),
        (0, 4),
        (4, 4),
        (4, -4),
    }  # dilation 1 is inside the window: not listed twice
    full = set(offsets) | {(-dy, -dx) for dy, dx in offsets}
    assert len(full) == 2 * len(offsets)
    # Range 16: 4 offsets per octave against 2 R (R + 1) for a dense window.
    assert len(lc.pairwise_offsets(1, (1, 2, 4, 8, 16))) == 20
    assert len(lc.neighborhood_offsets(33)) == 2 * 16 * 17


@pytest.mark.parametrize("shift", [(1, -1), (-2, 3), (0, 5), (4, 0)])
def test_shift_and_outside_neighbours(shift):
    dy, dx = shift
    x = np.arange(1, 13, dtype="float32").reshape(1, 3, 4, 1)
    out = np.asarray(lc.shift2d(x, dy, dx))[0, ..., 0]
    want = np.zeros((3, 4))
    for i in range(3):
        for j in range(4):
            if 0 <= i + dy < 3 and 0 <= j + dx < 4:
                want[i, j] = x[0, i + dy, j + dx, 0]
    np.testing.assert_array_equal(out, want)
    # Affinities vanish exactly where the neighbour is outside the grid.
    aff = np.asarray(
        lc.pairwise_affinities(
            np.zeros((1, 3, 4, 2), "float32"), [shift], np.ones((1, 1))
        )
    )[0, ..., 0]
    np.testing.assert_array_equal(aff, want > 0)


def test_robust_penalty_and_derivative():
    r = np.linspace(-4, 4, 41).astype("float32")
    np.testing.assert_allclose(
        np.asarray(lc.robust_penalty(r)), np.log(1 + r**2 / 2), rtol=1e-6
    )
    eps = 1e-4
    r64 = r.astype("float64")
    fd = (
        np.log1p(0.5 * (r64 + eps) ** 2) - np.log1p(0.5 * (r64 - eps) ** 2)
    ) / (2 * eps)
    np.testing.assert_allclose(
        np.asarray(lc.robust_penalty_grad(r)), fd, atol=1e-5
    )


def test_expert_adjoint_is_exact():
    rng = np.random.default_rng(0)
    filters = rng.normal(size=(3, 3, 2, 5)).astype("float32")
    y = rng.normal(size=(2, 5, 4, 2)).astype("float32")
    z = rng.normal(size=(2, 5, 4, 5)).astype("float32")
    jy = np.asarray(keras.ops.conv(y, filters, padding="same"))
    jtz = np.asarray(
        keras.ops.conv(z, lc._expert_transpose_kernel(filters), padding="same")
    )
    np.testing.assert_allclose(np.sum(jy * z), np.sum(y * jtz), rtol=1e-4)


@pytest.mark.parametrize(
    "with_experts, size, dilations",
    [(True, 5, ()), (False, 5, ()), (True, 1, (2, 3)), (False, 3, (2, 4))],
)
def test_energy_and_gradient_match_numpy_reference(
    with_experts, size, dilations
):
    # Brute force over every pair of positions of a 6 x 5 grid: the
    # long-range (dilated) links must be exactly those the layer lists.
    rng = np.random.default_rng(1)
    h, w, c = 6, 5, 2
    offsets = lc.pairwise_offsets(size, dilations)
    y = rng.normal(size=(2, h, w, c))
    u = rng.normal(size=(2, h, w, c))
    feats = rng.normal(size=(2, h, w, 3))
    s = rng.uniform(0.1, 1.0, size=(2, len(offsets)))
    filters = rng.normal(size=(3, 3, c, 4)) if with_experts else None
    a = rng.uniform(0.1, 1.0, size=(2, 4))
    aff = np.asarray(
        lc.pairwise_affinities(
            feats.astype("float32"),
            offsets,
            s.astype("float32"),
        )
    )
    f32 = [v.astype("float32") if v is not None else None for v in (y, u)]
    energy = np.asarray(
        lc.crf_energy(
            f32[0],
            f32[1],
            aff,
            offsets,
            None if filters is None else filters.astype("float32"),
            a.astype("float32"),
        )
    )
    grad = np.asarray(
        lc.crf_energy_gradient(
            f32[0],
            f32[1],
            aff,
            offsets,
            None if filters is None else filters.astype("float32"),
            a.astype("float32"),
        )
    )
    for b in range(2):
        strength = {}
        for k, (dy, dx) in enumerate(offsets):
            strength[(dy, dx)] = strength[(-dy, -dx)] = s[b, k]
        args = (u[b], feats[b], strength, filters, a[b])
        np.testing.assert_allclose(
            energy[b], _ref_energy(y[b], *args), rtol=1e-4
        )
        np.testing.assert_allclose(
            grad[b], _ref_grad(y[b], *args), rtol=1e-3, atol=1e-4
        )


def test_lipschitz_bound_dominates_curvature():
    # Power iteration on the Hessian (finite differences of the gradient).
    rng = np.random.default_rng(2)
    offsets = lc.pairwise_offsets(3, (2,))
    s = rng.uniform(0.5, 2.0, size=(1, len(offsets))).astype("float32")
    filters = rng.normal(size=(3, 3, 2, 3)).astype("float32")
    a = rng.uniform(0.5, 2.0, size=(1, 3)).astype("float32")
    u = rng.normal(size=(1, 5, 5, 2)).astype("float32")
    feats = np.zeros((1, 5, 5, 1), "float32")  # kernel = 1: worst case
    aff = lc.pairwise_affinities(feats, offsets, s)
    bound = float(np.asarray(lc.crf_lipschitz_bound(s, filters, a))[0])
    y0 = np.zeros_like(u)  # rho'' = 1 at r = 0: curvature is largest here
    v = rng.normal(size=u.shape).astype("float32")
    for _ in range(50):
        v /= np.linalg.norm(v)
        hv = (
            np.asarray(
                lc.crf_energy_gradient(
                    y0 + 1e-3 * v, u, aff, offsets, filters, a
                )
            )
            - np.asarray(
                lc.crf_energy_gradient(
                    y0 - 1e-3 * v, u, aff, offsets, filters, a
                )
            )
        ) / 2e-3
        top = float(np.sum(hv * v))
        v = hv
    assert 1.0 < top <= bound


# --------------------------------------------------------------------------
# The layer.
# --------------------------------------------------------------------------


def test_conformance_unconditioned():
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype("float32")
    check_layer(
        LatentCRF,
        {
            "num_steps": 1,
            "neighborhood_size": 3,
            "dilations": (),
            "num_experts": 2,
        },
        x,
        expected_output_shape=(4, 6, 6, 3),
        atol=1e-4,
        rtol=1e-4,
    )


def test_conformance_class_and_timestep():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5, 6, 2)).astype("float32")
    c = rng.normal(size=(4, 7)).astype("float32")
    t = rng.uniform(0, 1000, size=(4, 1)).astype("float32")
    check_layer(
        LatentCRF,
        {
            "num_steps": 1,
            "neighborhood_size": 1,
            "dilations": [2],
            "num_experts": 2,
            "use_timestep": True,
            "timestep_embedding_dim": 8,
        },
        [x, c, t],
        expected_output_shape=(4, 5, 6, 2),
        atol=1e-4,
        rtol=1e-4,
    )


@pytest.mark.parametrize(
    "conditioned, timed", [(False, False), (True, False), (True, True)]
)
def test_matches_numpy_reference_forward(conditioned, timed):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 5, 2)).astype("float32")
    c = rng.normal(size=(2, 3)).astype("float32")
    t = np.array([3.0, 250.0], "float32")
    inputs = [x] + ([c] if conditioned else []) + ([t] if timed else [])
    layer = LatentCRF(
        num_steps=2,
        neighborhood_size=3,
        dilations=(2,),
        num_experts=2,
        use_timestep=timed,
        timestep_embedding_dim=4,
    )
    inputs = inputs if len(inputs) > 1 else x
    layer(inputs)
    _randomize(layer, seed=4, scale=0.5)
    out = np.asarray(layer(inputs))
    want = _ref_layer(
        layer, x, c if conditioned else None, t if timed else None
    )
    assert np.max(np.abs(want - x)) > 0.1  # the reference does move
    np.testing.assert_allclose(out, want, rtol=2e-3, atol=2e-4)


def test_any_latent_size_equals_crf_built_at_that_size():
    rng = np.random.default_rng(7)
    x8 = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    labels = np.eye(4, dtype="float32")[rng.integers(0, 4, 16)]
    t8 = rng.uniform(0, 1000, size=(16, 1)).astype("float32")
    kwargs = {
        "num_steps": 2,
        "neighborhood_size": 1,
        "dilations": (1, 3),
        "num_experts": 2,
        "use_timestep": True,
    }

    # Train at 8 x 8 through a model whose latent inputs are (None, None).
    keras.utils.set_random_seed(0)
    crf = LatentCRF(**kwargs)
    z_in = keras.Input((None, None, 3))
    c_in = keras.Input((4,))
    t_in = keras.Input((1,))
    model = keras.Model([z_in, c_in, t_in], crf([z_in, c_in, t_in]))
    model.compile(keras.optimizers.Adam(1e-2), loss="mse", jit_compile=True)
    target = np.roll(x8, 1, axis=1) * 0.5
    history = model.fit(
        [x8, labels, t8], target, epochs=3, batch_size=16, verbose=0
    )
    losses = history.history["loss"]  # full batch: one step per epoch
    assert losses[-1] < losses[0]

    # Run at 16 x 12: the same model, and a CRF built at that size.
    x = rng.normal(size=(3, 16, 12, 3)).astype("float32")
    c, t = labels[:3], t8[:3]
    out = np.asarray(model.predict([x, c, t], verbose=0))
    fixed = LatentCRF(**kwargs)
    fixed([keras.Input((16, 12, 3)), keras.Input((4,)), keras.Input((1,))])
    fixed.set_weights(crf.get_weights())
    want = np.asarray(fixed([x, c, t]))
    assert out.shape == (3, 16, 12, 3)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # ... and the NumPy reference agrees at a size never seen in training.
    small = x[:1, :4, :5]
    np.testing.assert_allclose(
        np.asarray(crf([small, c[:1], t[:1]])),
        _ref_layer(crf, small, c[:1], t[:1]),
        rtol=2e-3,
        atol=2e-4,
    )


def test_timestep_changes_the_output():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 4, 5, 3)).astype("float32")
    early = np.full((2, 1), 950.0, "float32")
    late = np.full((2, 1), 20.0, "float32")
    layer = LatentCRF(
        num_steps=2, dilations=(2,), num_experts=2, use_timestep=True
    )
    # At initialisation the conditioning maps are zero: t has no effect.
    np.testing.assert_allclose(
        np.asarray(layer([x, early])), np.asarray(layer([x, late])), atol=1e-6
    )
    rng2 = np.random.default_rng(9)
    for v in (layer.conditioning_kernel, layer.unary_scale_kernel):
        v.assign(0.3 * rng2.normal(size=v.shape).astype("float32"))
    a, b = np.asarray(layer([x, early])), np.asarray(layer([x, late]))
    assert np.max(np.abs(a - b)) > 0.05
    np.testing.assert_allclose(a, _ref_layer(layer, x, None, early), atol=2e-4)


def test_zero_pairwise_and_prior_weights_give_unary_solution():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4, 4, 3)).astype("float32")
    c = rng.normal(size=(3, 6)).astype("float32")
    layer = LatentCRF(
        num_steps=3, neighborhood_size=3, dilations=(2,), num_experts=3
    )
    layer.build([x.shape, c.shape])
    _randomize(layer, seed=6)  # everything random, including step sizes ...
    layer.pairwise_weights.assign(np.zeros(layer.pairwise_weights.shape))
    layer.expert_weights.assign(np.zeros(layer.expert_weights.shape))
    w = np.asarray(layer.unary_kernel)
    b = np.asarray(layer.unary_bias)
    g = np.asarray(layer.unary_scale_kernel)
    h = np.asarray(layer.unary_shift_kernel)
    want = (x @ w + b) * (1 + c @ g)[:, None, None, :] + (c @ h)[
        :, None, None, :
    ]
    out = np.asarray(layer([x, c]))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # ... and at initialisation (identity unary map, zero conditioning
    # maps) the input itself.
    fresh = LatentCRF(
        num_steps=3, neighborhood_size=3, dilations=(2,), num_experts=3
    )
    fresh.build([x.shape, c.shape])
    fresh.pairwise_weights.assign(np.zeros(fresh.pairwise_weights.shape))
    fresh.expert_weights.assign(np.zeros(fresh.expert_weights.shape))
    np.testing.assert_array_equal(np.asarray(fresh([x, c])), x)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_energy_decreases_over_unrolled_steps(seed):
    rng = np.random.default_rng(seed)
    x = 2.0 * rng.normal(size=(4, 5, 7, 3)).astype("float32")
    c = rng.normal(size=(4, 5)).astype("float32")
    t = rng.uniform(0, 1000, size=(4,)).astype("float32")
    layer = LatentCRF(num_steps=4, num_experts=6, use_timestep=True)
    layer([x, c, t])
    _randomize(layer, seed=seed + 10, scale=1.5)  # large, random step sizes
    y, energies = layer.energy_trajectory([x, c, t])
    energies = np.asarray(energies)
    assert energies.shape == (4, 5)
    # Never up (a tiny learned step may leave it equal in float32) ...
    assert np.all(np.diff(energies, axis=-1) <= 0), energies
    # ... and strictly down over the inference.
    assert np.all(energies[:, -1] < energies[:, 0] - 1e-3), energies
    np.testing.assert_allclose(
        np.asarray(y), np.asarray(layer([x, c, t])), atol=1e-6
    )


def test_refinement_runs_in_float32_under_mixed_bfloat16():
    # Large latents and strong pairwise weights: the regime where a bf16
    # refinement stopped descending. The mixed layer must compute exactly
    # what the float32 layer computes, and only round its output.
    rng = np.random.default_rng(11)
    x = 8.0 * rng.normal(size=(4, 8, 8, 4)).astype("float32")
    c = rng.normal(size=(4, 3)).astype("float32")
    kwargs = {"num_steps": 4, "num_experts": 4, "dilations": (2, 4)}
    ref = LatentCRF(**kwargs)
    ref.build([x.shape, c.shape])
    _randomize(ref, seed=12, scale=1.5)
    ref.pairwise_weights.assign(np.full(ref.pairwise_weights.shape, 2.0))
    mixed = LatentCRF(**kwargs, dtype="mixed_bfloat16")
    mixed.build([x.shape, c.shape])
    mixed.set_weights(ref.get_weights())
    assert all(w.dtype == "float32" for w in mixed.weights)
    y_ref, e_ref = ref.energy_trajectory([x, c])
    y_mix, e_mix = mixed.energy_trajectory([x, c])
    e_mix = np.asarray(e_mix)
    # Never up at any step (a tiny learned step may leave it equal in
    # float32), and strictly down over the inference.
    assert np.all(np.diff(e_mix, axis=-1) <= 0), e_mix
    assert np.all(e_mix[:, -1] < e_mix[:, 0] - 1e-2), e_mix
    np.testing.assert_allclose(e_mix, np.asarray(e_ref), rtol=1e-5)
    out = mixed([x, c])
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    out = np.asarray(keras.ops.cast(out, "float32"))
    # Only the final rounding: relative error of bf16 (8 mantissa bits).
    y_ref = np.asarray(y_ref)
    np.testing.assert_allclose(out, y_ref, rtol=2**-8, atol=1e-6)
    assert np.max(np.abs(y_ref - x)) > 0.1


def test_disabled_terms_and_cost():
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
    plain = LatentCRF(
        num_steps=2, neighborhood_size=1, dilations=(), num_experts=0
    )
    np.testing.assert_allclose(np.asarray(plain(x)), x, atol=1e-6)
    for kwargs, inputs in [
        ({}, x),
        (
            {"neighborhood_size": 5, "num_experts": 2, "use_timestep": True},
            [x, np.ones((2, 9), "float32"), np.ones((2,), "float32")],
        ),
    ]:
        shapes = [v.shape for v in inputs] if kwargs else x.shape
        layer = LatentCRF(**kwargs)
        layer.build(shapes)  # costs need weights, not a call
        cost = layer.cost((4, 4))
        assert cost["params"] == layer.count_params()
        more = LatentCRF(**{**kwargs, "num_steps": layer.num_steps + 2})
        more.build(shapes)
        assert more.cost((4, 4))["params"] == more.count_params()
        per_step = (more.cost((4, 4))["flops"] - cost["flops"]) / 2
        assert per_step > 2 * 4 * 4 * 3
        # FLOPs scale with the area of the grid.
        assert layer.cost((8, 8))["flops"] > 3.5 * cost["flops"]


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="`num_steps` must be an integer >="):
        LatentCRF(num_steps=0)
    with pytest.raises(ValueError, match="`neighborhood_size` must be an odd"):
        LatentCRF(neighborhood_size=4)
    with pytest.raises(ValueError, match="`num_experts`"):
        LatentCRF(num_experts=-1)
    with pytest.raises(ValueError, match="`dilations`"):
        LatentCRF(dilations=(2, 0))
    with pytest.raises(ValueError, match="`dilations`"):
        LatentCRF(dilations=2)
    with pytest.raises(ValueError, match="`timestep_embedding_dim`"):
        LatentCRF(timestep_embedding_dim=5)
    with pytest.raises(ValueError, match="`use_timestep`"):
        LatentCRF(use_timestep="yes")
    with pytest.raises(ValueError, match="`initial_expert_weight`"):
        LatentCRF(initial_expert_weight=-1.0)
    with pytest.raises(ValueError, match="must be 4-D"):
        LatentCRF()(np.zeros((2, 4, 4), "float32"))
    layer = LatentCRF()
    layer(np.zeros((2, 4, 4, 3), "float32"))
    with pytest.raises(ValueError, match=r"inputs.shape=\(2, 4, 4, 5\)"):
        layer(np.zeros((2, 4, 4, 5), "float32"))
    with pytest.raises(ValueError, match="must be 4-D"):
        layer(np.zeros((2, 4, 4, 3, 1), "float32"))
    with pytest.raises(ValueError, match="`conditioning`"):
        layer([np.zeros((2, 4, 4, 3), "float32"), np.zeros((2, 3), "float32")])
    with pytest.raises(ValueError, match="`conditioning` must be 2-D"):
        LatentCRF()(
            [np.zeros((2, 4, 4, 3), "float32"), np.zeros((2, 3, 1), "float32")]
        )
    with pytest.raises(ValueError, match="`timestep` must have shape"):
        LatentCRF(use_timestep=True)(
            [np.zeros((2, 4, 4, 3), "float32"), np.zeros((2, 3), "float32")]
        )
    with pytest.raises(ValueError, match="a list of 3 inputs"):
        LatentCRF()([np.zeros((2, 4, 4, 3), "float32")] * 3)
    with pytest.raises(ValueError, match="`inputs` must have a static"):
        LatentCRF().build((None, 4, 4, None))
