import keras
import numpy as np
import pytest

from keras_gr.layers import LatentCRF
from keras_gr.layers import latent_crf as lc
from tests.conformance import check_layer

# --------------------------------------------------------------------------
# Independent NumPy reference: explicit loops over positions and pairs.
# --------------------------------------------------------------------------


def _ref_energy(y, u, feats, strength, filters, expert_w, size):
    """E for ONE example. `strength[(dy, dx)]` is defined for both signs of
    an offset (the same value), each unordered pair is visited once."""
    h, w, c = y.shape
    r = size // 2
    energy = 0.5 * np.sum((y - u) ** 2)
    for i in range(h):
        for j in range(w):
            for i2 in range(h):
                for j2 in range(w):
                    dy, dx = i2 - i, j2 - j
                    if (i2, j2) <= (i, j) or max(abs(dy), abs(dx)) > r:
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


def _ref_layer(layer, x, cond=None):
    """Whole forward pass of LatentCRF in float64 NumPy, from its weights."""
    wts = {v.name: np.asarray(v, "float64") for v in layer.weights}
    offsets = lc.neighborhood_offsets(layer.neighborhood_size)
    outs = []
    for b in range(x.shape[0]):
        u = x[b].astype("float64") @ wts["unary_kernel"] + wts["unary_bias"]
        feats = u @ wts["feature_kernel"]
        s = wts["pairwise_weights"] ** 2
        a = wts["expert_weights"] ** 2
        if cond is not None:
            z = cond[b] @ wts["conditioning_kernel"] + wts["conditioning_bias"]
            gain = 2.0 / (1.0 + np.exp(-z))
            s, a = s * gain[: len(s)], a * gain[len(s) :]
        strength = {}
        for k, (dy, dx) in enumerate(offsets):
            strength[(dy, dx)] = strength[(-dy, -dx)] = s[k]
        filt = wts["expert_filters"]
        bound = 1.0 + 4.0 * s.sum()
        bound += np.sum(a * np.sum(np.sum(np.abs(filt), (0, 1)) ** 2, 0))
        taus = 2.0 / (1.0 + np.exp(-wts["step_logits"]))
        args = (u, feats, strength, filt, a, layer.expert_size)
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


def test_shift_and_masks():
    x = np.arange(12, dtype="float32").reshape(1, 3, 4, 1)
    out = np.asarray(lc.shift2d(x, 1, -1))[0, ..., 0]
    want = np.zeros((3, 4))
    want[:2, 1:] = x[0, 1:, :3, 0]
    np.testing.assert_array_equal(out, want)
    masks = lc.offset_masks(3, 4, [(1, -1)])[..., 0]
    want_mask = np.zeros((3, 4))
    want_mask[:2, 1:] = 1.0  # i + 1 < 3 and j - 1 >= 0
    np.testing.assert_array_equal(masks, want_mask)


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


@pytest.mark.parametrize("with_experts", [True, False])
def test_energy_and_gradient_match_numpy_reference(with_experts):
    rng = np.random.default_rng(1)
    h, w, c, size = 4, 3, 2, 5
    offsets = lc.neighborhood_offsets(size)
    y = rng.normal(size=(2, h, w, c))
    u = rng.normal(size=(2, h, w, c))
    feats = rng.normal(size=(2, h, w, 3))
    s = rng.uniform(0.1, 1.0, size=(2, len(offsets)))
    filters = rng.normal(size=(3, 3, c, 4)) if with_experts else None
    a = rng.uniform(0.1, 1.0, size=(2, 4))
    aff = np.asarray(
        lc.pairwise_affinities(
            feats.astype("float32"),
            lc.offset_masks(h, w, offsets),
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
        args = (u[b], feats[b], strength, filters, a[b], size)
        np.testing.assert_allclose(
            energy[b], _ref_energy(y[b], *args), rtol=1e-4
        )
        np.testing.assert_allclose(
            grad[b], _ref_grad(y[b], *args), rtol=1e-3, atol=1e-4
        )


def test_lipschitz_bound_dominates_curvature():
    # Power iteration on the Hessian (finite differences of the gradient).
    rng = np.random.default_rng(2)
    offsets = lc.neighborhood_offsets(3)
    s = rng.uniform(0.5, 2.0, size=(1, len(offsets))).astype("float32")
    filters = rng.normal(size=(3, 3, 2, 3)).astype("float32")
    a = rng.uniform(0.5, 2.0, size=(1, 3)).astype("float32")
    u = rng.normal(size=(1, 5, 5, 2)).astype("float32")
    feats = np.zeros((1, 5, 5, 1), "float32")  # kernel = 1: worst case
    aff = lc.pairwise_affinities(
        feats, lc.offset_masks(5, 5, offsets), offsets, s
    )
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
        {"num_steps": 1, "neighborhood_size": 3, "num_experts": 2},
        x,
        expected_output_shape=(4, 6, 6, 3),
        atol=1e-4,
        rtol=1e-4,
    )


def test_conformance_conditioned():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5, 5, 2)).astype("float32")
    c = rng.normal(size=(4, 7)).astype("float32")
    check_layer(
        LatentCRF,
        {"num_steps": 2, "neighborhood_size": 3, "num_experts": 2},
        [x, c],
        expected_output_shape=(4, 5, 5, 2),
        atol=1e-4,
        rtol=1e-4,
    )


@pytest.mark.parametrize("conditioned", [False, True])
def test_matches_numpy_reference_forward(conditioned):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 4, 2)).astype("float32")
    c = rng.normal(size=(2, 3)).astype("float32")
    inputs = [x, c] if conditioned else x
    layer = LatentCRF(num_steps=2, neighborhood_size=3, num_experts=2)
    layer(inputs)
    _randomize(layer, seed=4, scale=0.5)
    out = np.asarray(layer(inputs))
    want = _ref_layer(layer, x, c if conditioned else None)
    assert np.max(np.abs(want - x)) > 0.1  # the reference does move
    np.testing.assert_allclose(out, want, rtol=2e-3, atol=2e-4)


def test_zero_pairwise_and_prior_weights_give_unary_solution():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4, 4, 3)).astype("float32")
    c = rng.normal(size=(3, 6)).astype("float32")
    layer = LatentCRF(num_steps=3, neighborhood_size=5, num_experts=3)
    layer([x, c])
    _randomize(layer, seed=6)  # everything random, including step sizes ...
    layer.pairwise_weights.assign(np.zeros(layer.pairwise_weights.shape))
    layer.expert_weights.assign(np.zeros(layer.expert_weights.shape))
    w = np.asarray(layer.unary_kernel)
    b = np.asarray(layer.unary_bias)
    out = np.asarray(layer([x, c]))
    np.testing.assert_allclose(out, x @ w + b, rtol=1e-5, atol=1e-5)
    # ... and at initialisation (identity unary map) the input itself.
    fresh = LatentCRF(num_steps=2, num_experts=2)
    fresh(x)
    fresh.pairwise_weights.assign(np.zeros(fresh.pairwise_weights.shape))
    fresh.expert_weights.assign(np.zeros(fresh.expert_weights.shape))
    np.testing.assert_array_equal(np.asarray(fresh(x)), x)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_energy_decreases_over_unrolled_steps(seed):
    rng = np.random.default_rng(seed)
    x = 2.0 * rng.normal(size=(4, 5, 5, 3)).astype("float32")
    c = rng.normal(size=(4, 5)).astype("float32")
    layer = LatentCRF(num_steps=4, neighborhood_size=3, num_experts=6)
    layer([x, c])
    _randomize(layer, seed=seed + 10, scale=1.5)  # large, random step sizes
    y, energies = layer.energy_trajectory([x, c])
    energies = np.asarray(energies)
    assert energies.shape == (4, 5)
    assert np.all(np.diff(energies, axis=-1) < 0), energies
    np.testing.assert_allclose(
        np.asarray(y), np.asarray(layer([x, c])), atol=1e-6
    )


def test_disabled_terms_and_cost():
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
    plain = LatentCRF(num_steps=2, neighborhood_size=1, num_experts=0)
    np.testing.assert_allclose(np.asarray(plain(x)), x, atol=1e-6)
    for kwargs, inputs in [
        ({}, x),
        (
            {"neighborhood_size": 5, "num_experts": 2},
            [x, np.ones((2, 9), "float32")],
        ),
    ]:
        layer = LatentCRF(**kwargs)
        layer(inputs)
        cost = layer.cost()
        assert cost["params"] == layer.count_params()
        more = LatentCRF(**{**kwargs, "num_steps": layer.num_steps + 2})
        more(inputs)
        extra = more.cost()["flops"] - cost["flops"]
        per_step = (more.cost()["flops"] - cost["flops"]) / 2
        assert extra > 0 and per_step > 2 * 4 * 4 * 3


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="`num_steps` must be a positive"):
        LatentCRF(num_steps=0)
    with pytest.raises(ValueError, match="`neighborhood_size` must be an odd"):
        LatentCRF(neighborhood_size=4)
    with pytest.raises(ValueError, match="`num_experts`"):
        LatentCRF(num_experts=-1)
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
