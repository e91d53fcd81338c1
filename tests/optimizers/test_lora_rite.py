"""Tests of `keras_gr.optimizers.LoraRite` and its matrix helpers.

The golden values come from `NumpyLoraRite`, an independent float64 NumPy
implementation of the rule in `shared/specs/optimizers.md` section 2
written here (it shares no code with the library).
"""

import os
import tempfile

import keras
import numpy as np
import pytest
from keras import ops

from keras_gr.optimizers import LoraRite
from keras_gr.optimizers.lora_rite import bias_corrected_decay
from keras_gr.optimizers.lora_rite import escaped_mass
from keras_gr.optimizers.lora_rite import find_lora_pairs
from keras_gr.optimizers.lora_rite import load_training_state
from keras_gr.optimizers.lora_rite import precondition
from keras_gr.optimizers.lora_rite import save_training_state
from keras_gr.optimizers.matrix_functions import safe_pinv
from keras_gr.optimizers.matrix_functions import thin_qr
from tests.conformance import check_optimizer

# --------------------------------------------------------------------------
# Independent NumPy reference (float64).
# --------------------------------------------------------------------------


def _np_qr(x):
    n, r = x.shape
    if n < r:
        x = np.vstack([x, np.zeros((r - n, r))])
    return np.linalg.qr(x)


def _np_decay(beta, t):
    return beta * (1 - beta ** (t - 1)) / (1 - beta**t)


class NumpyLoraRite:
    """LoRA-RITE for LoRA pairs given in Keras shapes (a: (..., r),
    b: (r, ...)), following the spec step by step."""

    def __init__(
        self,
        shapes,
        lr,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-6,
        escaped=True,
        clipnorm=None,
        skip=None,
        rcond=1e-6,
        floor=1e-6,
    ):
        self.floor = floor
        self.lr, self.b1, self.b2, self.eps = lr, beta_1, beta_2, epsilon
        self.escaped, self.clipnorm, self.skip = escaped, clipnorm, skip
        self.rcond = rcond
        self.t = 0
        self.state = []
        for a_shape, b_shape in shapes:
            r = a_shape[-1]
            m = int(np.prod(a_shape[:-1]))
            n = int(np.prod(b_shape[1:]))
            self.state.append(
                {
                    "a": dict(
                        v=np.zeros((r, r)),
                        mom=np.zeros((m, r)),
                        basis=np.zeros((max(n, r), r)),
                        rho=0.0,
                    ),
                    "b": dict(
                        v=np.zeros((r, r)),
                        mom=np.zeros((n, r)),
                        basis=np.zeros((max(m, r), r)),
                        rho=0.0,
                    ),
                }
            )

    def step(self, factors, grads):
        """factors, grads: lists of (a, b) in Keras shapes; returns new."""
        self.t += 1
        b1 = _np_decay(self.b1, self.t)
        b2 = _np_decay(self.b2, self.t)
        prepared = []
        for (a, b), (ga, gb) in zip(factors, grads):
            r = a.shape[-1]
            A = a.reshape(-1, r).astype("float64")
            B = b.reshape(r, -1).T.astype("float64")
            gA = ga.reshape(-1, r).astype("float64")
            gB = gb.reshape(r, -1).T.astype("float64")
            qa, ra = _np_qr(A)
            qb, rb = _np_qr(B)
            rb_pinv = np.linalg.pinv(rb, rcond=self.rcond)
            ra_pinv = np.linalg.pinv(ra, rcond=self.rcond)
            prepared.append(
                [
                    ["a", gA @ rb_pinv, qb, rb_pinv, A],
                    ["b", gB @ ra_pinv, qa, ra_pinv, B],
                ]
            )
        if self.clipnorm is not None:
            norm = np.sqrt(
                sum(np.sum(s[1] ** 2) for sides in prepared for s in sides)
            )
            scale = min(1.0, self.clipnorm / norm)
            for sides in prepared:
                for s in sides:
                    s[1] = s[1] * scale
        out = []
        for (a, b), sides, state in zip(factors, prepared, self.state):
            new = {}
            for side, g, basis, other_pinv, X in sides:
                st = state[side]
                if self.skip is not None and np.sqrt(np.mean(g**2)) > self.skip:
                    new[side] = X
                    continue
                P = basis.T @ st["basis"]
                Vt = P @ st["v"] @ P.T
                if self.escaped:
                    lp = np.linalg.eigvalsh(st["v"])
                    ln = np.linalg.eigvalsh(Vt)
                    d = min(
                        max(np.max(lp - ln), 0.0),
                        max(np.trace(st["v"]) - np.trace(Vt), 0.0),
                    )
                    rho = b2 * (st["rho"] + d)
                else:
                    rho = 0.0
                V = b2 * Vt + (1 - b2) * g.T @ g / g.shape[0]
                lam, U = np.linalg.eigh(V)
                lam = np.maximum(lam, self.floor * max(lam.max(), 0))
                root = (
                    U
                    @ np.diag(
                        1 / (np.sqrt(np.maximum(lam, 0) + rho) + self.eps)
                    )
                    @ U.T
                )
                M = b1 * st["mom"] @ P.T + (1 - b1) * g @ root
                st.update(v=V, mom=M, basis=basis, rho=rho)
                new[side] = X - self.lr * M @ other_pinv.T
            r = a.shape[-1]
            out.append(
                (
                    new["a"].reshape(a.shape),
                    new["b"].T.reshape((r,) + b.shape[1:]),
                )
            )
        return out


def _merged(a, b):
    r = a.shape[-1]
    return a.reshape(-1, r) @ b.reshape(r, -1)


def _quadratic_grads(factors, targets, weights):
    """Gradients of sum_k 0.5 * ||w_k * (A_k B_k - T_k)||^2 (Keras shapes)."""
    grads = []
    for (a, b), t, w in zip(factors, targets, weights):
        r = a.shape[-1]
        a2 = a.reshape(-1, r).astype("float64")
        b2 = b.reshape(r, -1).astype("float64")
        g = w * w * (a2 @ b2 - t)
        grads.append(((g @ b2.T).reshape(a.shape), (a2.T @ g).reshape(b.shape)))
    return grads


def _assert_rel(actual, desired, tol, what=""):
    """max |actual - desired| <= tol * max |desired| (scale-aware)."""
    actual, desired = np.asarray(actual, "f8"), np.asarray(desired, "f8")
    err = np.max(np.abs(actual - desired))
    scale = max(np.max(np.abs(desired)), 1e-12)
    assert err <= tol * scale, (
        f"{what}: max abs diff {err:.3g} > {tol} x {scale:.3g}"
    )


def _to_np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype="float64")


# --------------------------------------------------------------------------
# Helpers (pure functions).
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 3), (3, 3), (2, 4)])
def test_thin_qr(shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    q, r = (_to_np(t) for t in thin_qr(x))
    n, k = shape
    assert q.shape == (max(n, k), k) and r.shape == (k, k)
    np.testing.assert_allclose(q.T @ q, np.eye(k), atol=1e-5)
    np.testing.assert_allclose((q @ r)[:n], x, atol=1e-5)
    np.testing.assert_allclose((q @ r)[n:], 0.0, atol=1e-5)
    np.testing.assert_allclose(np.tril(r, -1), 0.0, atol=1e-6)


def test_thin_qr_zero_matrix_is_finite():
    q, r = (_to_np(t) for t in thin_qr(np.zeros((5, 3), "float32")))
    assert np.all(np.isfinite(q)) and np.all(r == 0)


@pytest.mark.parametrize("case", ["random", "rank_deficient", "zero"])
def test_safe_pinv_matches_numpy(case):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 4))
    if case == "rank_deficient":
        x = rng.normal(size=(4, 2)) @ rng.normal(size=(2, 4))
    elif case == "zero":
        x = np.zeros((4, 4))
    got = _to_np(safe_pinv(x.astype("float32")))
    want = np.linalg.pinv(x, rcond=1e-6)
    np.testing.assert_allclose(
        got, want, atol=2e-4 * max(1, np.abs(want).max())
    )
    assert np.all(np.isfinite(got))


def test_bias_corrected_decay():
    got = [float(bias_corrected_decay(0.9, t)) for t in (1, 2, 3, 1000)]
    want = [0.0, 0.9 * 0.1 / 0.19, 0.9 * 0.19 / 0.271, 0.9]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_escaped_mass_and_precondition_match_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 3))
    v = x.T @ x / 6
    p = np.linalg.qr(rng.normal(size=(3, 3)))[0] * 0.8  # a contraction
    vt = p @ v @ p.T
    lp, ln = np.linalg.eigvalsh(v), np.linalg.eigvalsh(vt)
    want = min(np.max(lp - ln), np.trace(v) - np.trace(vt))
    got = float(escaped_mass(v.astype("float32"), vt.astype("float32")))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # No mass escapes under a pure rotation.
    q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    got = float(escaped_mass(v.astype("float32"), (q @ v @ q.T).astype("f4")))
    assert abs(got) < 1e-5

    g = rng.normal(size=(5, 3))
    lam, u = np.linalg.eigh(v)
    want = g @ u @ np.diag(1 / (np.sqrt(lam + 0.1) + 1e-3)) @ u.T
    got = _to_np(precondition(g.astype("f4"), v.astype("f4"), 0.1, 1e-3))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------
# Golden steps against NumPy.
# --------------------------------------------------------------------------


def _factor_vars(shapes, seed, zero_b=False):
    rng = np.random.default_rng(seed)
    factors, variables = [], []
    for k, (a_shape, b_shape) in enumerate(shapes):
        a = rng.normal(size=a_shape).astype("float32")
        b = rng.normal(size=b_shape).astype("float32")
        if zero_b:
            b = np.zeros(b_shape, "float32")
        factors.append((a, b))
        with keras.name_scope(f"layer{k}"):
            variables.append(
                (
                    keras.Variable(a, name="lora_kernel_a"),
                    keras.Variable(b, name="lora_kernel_b"),
                )
            )
    return factors, variables


GOLDEN_RTOL = 2e-4
"""float32 Keras vs float64 NumPy, max error relative to the factor's largest
entry. Full-rank pairs agree to ~4e-6 after 6 steps; the padded pair (rank 4
> 3 columns: a rank-deficient second moment) to ~5e-5, the float32
rounding amplified by `1 / sqrt(relative_matrix_epsilon)`."""

GOLDEN_SHAPES = [
    ((6, 3), (3, 5)),  # Dense
    ((4, 2, 2), (2, 3)),  # EinsumDense-style kernel of rank 3
    ((5, 4), (4, 3)),  # rank 4 > 3 output columns (padded QR side)
]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"escaped": False},
        {"clipnorm": 0.5},
        {"skip": 3.9},
        # Same-shaped pairs share one batched decomposition.
        {"shapes": GOLDEN_SHAPES + [GOLDEN_SHAPES[0], GOLDEN_SHAPES[2]]},
    ],
    ids=[
        "default",
        "no_escaped_mass",
        "unmagnified_clip",
        "skip",
        "batched_same_shapes",
    ],
)
def test_golden_steps_against_numpy(options):
    steps, lr = 6, 0.05
    options = dict(options)
    shapes = options.pop("shapes", GOLDEN_SHAPES)
    factors, variables = _factor_vars(shapes, seed=3)
    rng = np.random.default_rng(4)
    targets = [rng.normal(size=_merged(a, b).shape) for a, b in factors]
    weights = [rng.uniform(0.5, 2.0, size=t.shape) for t in targets]
    reference = NumpyLoraRite(shapes, lr=lr, **options)
    optimizer = LoraRite(
        learning_rate=lr,
        escaped_mass=options.get("escaped", True),
        unmagnified_clipnorm=options.get("clipnorm"),
        update_skip_threshold=options.get("skip"),
    )
    flat = [v for pair in variables for v in pair]
    optimizer.build(flat)
    assert len(optimizer.lora_pairs) == len(shapes)
    ref_factors = [(a.astype("f8"), b.astype("f8")) for a, b in factors]
    skipped = 0
    for _ in range(steps):
        current = [(np.array(a), np.array(b)) for a, b in variables]
        grads = _quadratic_grads(current, targets, weights)
        flat_grads = [
            ops.convert_to_tensor(g.astype("f4")) for p in grads for g in p
        ]
        optimizer.apply_gradients(zip(flat_grads, flat))
        before = [p for p in ref_factors]
        ref_factors = reference.step(
            ref_factors, _quadratic_grads(ref_factors, targets, weights)
        )
        skipped += sum(
            np.array_equal(x, y)
            for old, new in zip(before, ref_factors)
            for x, y in zip(old, new)
        )
        for k, ((va, vb), (ra, rb)) in enumerate(zip(variables, ref_factors)):
            _assert_rel(np.array(va), ra, GOLDEN_RTOL, f"pair {k} a")
            _assert_rel(np.array(vb), rb, GOLDEN_RTOL, f"pair {k} b")
    if "skip" in options:
        assert 0 < skipped < steps * 2 * len(shapes), skipped


def test_zero_initialised_b_is_finite_and_matches_numpy():
    shapes = GOLDEN_SHAPES[:2]
    factors, variables = _factor_vars(shapes, seed=5, zero_b=True)
    rng = np.random.default_rng(6)
    targets = [rng.normal(size=_merged(a, b).shape) for a, b in factors]
    weights = [np.ones_like(t) for t in targets]
    flat = [v for pair in variables for v in pair]
    optimizer = LoraRite(learning_rate=0.01)
    reference = NumpyLoraRite(shapes, lr=0.01)
    ref_factors = [(a.astype("f8"), b.astype("f8")) for a, b in factors]
    for step in range(3):
        current = [(np.array(a), np.array(b)) for a, b in variables]
        grads = _quadratic_grads(current, targets, weights)
        optimizer.apply_gradients(
            zip([g.astype("f4") for p in grads for g in p], flat)
        )
        ref_factors = reference.step(
            ref_factors, _quadratic_grads(ref_factors, targets, weights)
        )
        for v in flat + list(optimizer.variables):
            assert np.all(np.isfinite(np.array(v))), (step, v.path)
        if step == 0:
            # dL/dA = G B^T = 0: A must not move; B must.
            for (va, vb), (a, _) in zip(variables, factors):
                np.testing.assert_array_equal(np.array(va), a)
                assert np.any(np.array(vb) != 0)
        for k, ((va, vb), (ra, rb)) in enumerate(zip(variables, ref_factors)):
            _assert_rel(np.array(va), ra, GOLDEN_RTOL, f"pair {k} a")
            _assert_rel(np.array(vb), rb, GOLDEN_RTOL, f"pair {k} b")


def test_fallback_adam_equals_keras_adam_and_sgd_fallback():
    rng = np.random.default_rng(7)
    w0 = rng.normal(size=(4, 3)).astype("float32")
    grads = [rng.normal(size=(4, 3)).astype("float32") for _ in range(4)]
    results = {}
    for name, opt in (
        ("rite", LoraRite(learning_rate=0.1, beta_1=0.8, beta_2=0.99)),
        ("adam", keras.optimizers.Adam(0.1, beta_1=0.8, beta_2=0.99)),
        ("rite_sgd", LoraRite(learning_rate=0.1, fallback="sgd")),
    ):
        var = keras.Variable(w0, name="kernel")
        for g in grads:
            opt.apply_gradients([(ops.convert_to_tensor(g), var)])
        results[name] = np.array(var)
    np.testing.assert_allclose(results["rite"], results["adam"], atol=1e-6)
    np.testing.assert_allclose(
        results["rite_sgd"], w0 - 0.1 * np.sum(grads, axis=0), atol=1e-5
    )


# --------------------------------------------------------------------------
# Pairing and errors at build.
# --------------------------------------------------------------------------


def test_pairing_errors_at_build():
    with keras.name_scope("dense"):
        a = keras.Variable(np.ones((4, 3), "f4"), name="lora_kernel_a")
        b = keras.Variable(np.ones((2, 5), "f4"), name="lora_kernel_b")
    with pytest.raises(ValueError, match="ranks differ"):
        LoraRite().build([a, b])
    with pytest.raises(ValueError, match="without its partner"):
        LoraRite().build([a])
    with pytest.raises(ValueError, match="without its partner"):
        LoraRite().build([b])


def test_a_without_b_in_a_model_raises_at_build():
    layer = keras.layers.Dense(4)
    layer.build((None, 3))
    layer.enable_lora(2)
    layer.lora_kernel_b.trainable = False
    with pytest.raises(ValueError, match="lora_kernel_a"):
        LoraRite().build(layer.trainable_variables)


def test_pairs_found_on_dense_einsum_and_embedding():
    model, _ = _token_model(seed=0)
    pairs = find_lora_pairs(model.trainable_variables)
    names = [
        (model.trainable_variables[i].path, model.trainable_variables[j].path)
        for i, j in pairs
    ]
    assert len(names) == 3
    leaves = sorted(p[0].split("/")[-1] for p in names)
    assert leaves == ["lora_embeddings_a", "lora_kernel_a", "lora_kernel_a"]
    for pa, pb in names:
        assert pa.rsplit("/", 1)[0] == pb.rsplit("/", 1)[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta_1": 1.0}, "beta_1"),
        ({"beta_2": -0.1}, "beta_2"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"fallback_epsilon": 0.0}, "fallback_epsilon"),
        ({"relative_matrix_epsilon": 1.0}, "relative_matrix_epsilon"),
        ({"beta_1": "0.9"}, "beta_1"),
        ({"unmagnified_clipnorm": 0.0}, "unmagnified_clipnorm"),
        ({"update_skip_threshold": -2}, "update_skip_threshold"),
        ({"pinv_rcond": 1.5}, "pinv_rcond"),
        ({"fallback": "lion"}, "fallback"),
    ],
)
def test_argument_validation(kwargs, match):
    with pytest.raises(ValueError, match=f"`{match}`.*Received: {match}="):
        LoraRite(**kwargs)


def test_numpy_scalars_are_accepted():
    opt = LoraRite(
        learning_rate=np.float32(0.01),
        beta_1=np.float32(0.9),
        beta_2=np.float64(0.99),
        epsilon=np.float32(1e-6),
        unmagnified_clipnorm=np.float32(1.0),
        update_skip_threshold=np.int64(5),
    )
    config = opt.get_config()
    assert config["beta_1"] == pytest.approx(0.9)
    assert config["update_skip_threshold"] == 5.0
    assert LoraRite.from_config(config).get_config() == config


def _one_step_state(grads_scale, nan_in_fallback=False):
    """Two LoRA pairs and a plain variable; returns (before, after) of the
    weights and optimizer state for one step with the given gradients."""
    _, pairs = _factor_vars(GOLDEN_SHAPES[:2], seed=4)
    plain = keras.Variable(np.ones((3,), "float32"), name="bias")
    variables = [v for p in pairs for v in p] + [plain]
    opt = LoraRite(learning_rate=0.05)
    opt.build(variables)
    rng = np.random.default_rng(0)
    good = [rng.normal(size=v.shape).astype("float32") for v in variables]
    opt.apply_gradients(zip(good, variables))  # one normal step first
    before = [np.array(v) for v in variables + list(opt.variables)]
    grads = [g * grads_scale for g in good]
    if nan_in_fallback:
        grads[-1] = grads[-1].copy()
        grads[-1][1] = np.nan
    opt.apply_gradients(zip(grads, variables))
    after = [np.array(v) for v in variables + list(opt.variables)]
    return before, after, opt


def test_non_finite_gradient_skips_the_whole_step():
    """A NaN in a plain variable's gradient leaves the LoRA pairs (and all
    state) unchanged too; only the iteration counter moves."""
    before, after, _ = _one_step_state(1.0, nan_in_fallback=True)
    changed = [
        i
        for i, (a, b) in enumerate(zip(before, after))
        if not np.array_equal(a, b)
    ]
    # Only `iterations` (an optimizer variable) may change.
    assert len(changed) <= 1, changed
    for b in after:
        assert np.all(np.isfinite(b))


def test_finite_guard_checks_the_result():
    """Finite but huge gradients (1e25: their squares overflow float32)
    make the second moment infinite: the step must be skipped, not turn the
    factors into NaN (a guard on the incoming gradient alone lets it
    through)."""
    before, after, _ = _one_step_state(1e25)
    n_weights = 2 * 2 + 1
    for a, b in zip(before[:n_weights], after[:n_weights]):
        np.testing.assert_array_equal(a, b)
    assert all(np.all(np.isfinite(b)) for b in after)
    # And a normal-size step afterwards still moves the factors.
    _, again, _ = _one_step_state(1.0)
    assert not np.array_equal(again[0], before[0])


def test_smallest_epsilon_keeps_zero_b_finite():
    """With Keras's zero-initialised `B` the second moment of `A`'s side
    is zero on the first step: `epsilon` alone keeps `1 / (sqrt(0) + eps)`
    finite, which is why `epsilon=0` is refused."""
    _, pairs = _factor_vars(GOLDEN_SHAPES[:1], seed=5, zero_b=True)
    variables = list(pairs[0])
    opt = LoraRite(learning_rate=0.01, epsilon=1e-12)
    rng = np.random.default_rng(1)
    for _ in range(3):
        grads = [rng.normal(size=v.shape).astype("float32") for v in variables]
        opt.apply_gradients(zip(grads, variables))
    assert all(np.all(np.isfinite(np.array(v))) for v in variables)
    assert np.abs(np.array(variables[1])).max() > 0


_MIRRORED_SNIPPET = """
import json
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
import keras
from keras_gr.optimizers import LoraRite

rng = np.random.default_rng(0)
x = rng.normal(size=(32, 8)).astype("float32")
y = np.tanh(x @ rng.normal(size=(8, 3))).astype("float32")


def model_fn(lora):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    d1 = keras.layers.Dense(6, activation="tanh")
    out = keras.layers.Dense(3)(d1(inputs))
    model = keras.Model(inputs, out)
    if lora:
        d1.enable_lora(2)
    return model


def train(strategy, lora, make_opt):
    with strategy.scope():
        model = model_fn(lora)
        model.compile(optimizer=make_opt(), loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    return [np.array(w) for w in model.weights]


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
one = tf.distribute.get_strategy()
out = {"replicas": mirrored.num_replicas_in_sync}
try:
    train(mirrored, True, lambda: LoraRite(0.01))
    out["lora_error"] = None
except ValueError as e:
    out["lora_error"] = str(e)
for name, make in (
    ("rite_fallback", lambda: LoraRite(0.01)),
    ("adam", lambda: keras.optimizers.Adam(0.01)),
):
    a = train(one, False, make)
    b = train(mirrored, False, make)
    out[name] = max(float(np.abs(u - v).max()) for u, v in zip(a, b))
print("RESULT" + json.dumps(out))
"""


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="tf.distribute MirroredStrategy: TensorFlow pass only",
)
def test_mirrored_strategy_refused_for_pairs_and_exact_otherwise():
    """Under a 2-replica `MirroredStrategy` (2 virtual CPU devices, in a
    fresh process) LoraRite with LoRA pairs raises a clear error at build
    instead of drifting silently; its fallback path (no LoRA pairs) equals
    the one-device run within 1e-5, like Keras Adam."""
    import subprocess
    import sys

    env = dict(os.environ, KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="")
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SNIPPET],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    import json

    result = json.loads(lines[-1][len("RESULT") :])
    assert result["replicas"] == 2
    assert result["lora_error"] is not None, "no error for LoRA pairs"
    assert "num_replicas_in_sync=2" in result["lora_error"]
    assert result["adam"] < 1e-5, result
    assert result["rite_fallback"] < 1e-5, result


# --------------------------------------------------------------------------
# Models with LoRA layers.
# --------------------------------------------------------------------------


def _token_model(seed, ranks=(2, 3, 2)):
    """Embedding -> Dense -> EinsumDense, LoRA on all three (random b)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,), dtype="int32")
    emb = keras.layers.Embedding(10, 6)
    dense = keras.layers.Dense(8, activation="tanh")
    einsum = keras.layers.EinsumDense("ab,bcd->acd", output_shape=(2, 3))
    x = keras.layers.Flatten()(emb(inputs))
    x = einsum(dense(x))
    outputs = keras.layers.Flatten()(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for layer, rank in zip((emb, dense, einsum), ranks):
        layer.enable_lora(rank)
        b = _lora_b(layer)
        b.assign(0.3 * rng.normal(size=b.shape).astype("float32"))
    return model, (emb, dense, einsum)


def _lora_a(layer):
    if isinstance(layer, keras.layers.Embedding):
        return layer.lora_embeddings_a
    return layer.lora_kernel_a


def _lora_b(layer):
    if isinstance(layer, keras.layers.Embedding):
        return layer.lora_embeddings_b
    return layer.lora_kernel_b


def _token_data(seed=0, n=32):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 10, size=(n, 4)).astype("int32")
    y = np.tanh(rng.normal(size=(n, 6))).astype("float32")
    return x, y


def _transform(layers, mats):
    """(a, b) -> (a S, S^-1 b) in Keras shapes, layer by layer."""
    for layer, s in zip(layers, mats):
        a, b = _lora_a(layer), _lora_b(layer)
        r = a.shape[-1]
        a_np = np.array(a).reshape(-1, r) @ s
        b_np = np.linalg.solve(s, np.array(b).reshape(r, -1))
        a.assign(a_np.reshape(a.shape).astype("float32"))
        b.assign(b_np.reshape(b.shape).astype("float32"))


def _merged_trajectory(optimizer, mats, epochs=8, seed=0):
    model, layers = _token_model(seed=seed)
    if mats is not None:
        _transform(layers, mats)

    def merged():
        return [
            _merged(np.array(_lora_a(lay)), np.array(_lora_b(lay)))
            for lay in layers
        ]

    z0 = merged()
    trajectory = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            trajectory.append([z - z_0 for z, z_0 in zip(merged(), z0)])

    x, y = _token_data()
    model.compile(optimizer=optimizer, loss="mse", jit_compile=True)
    model.fit(
        x,
        y,
        batch_size=32,
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=[Record()],
    )
    return trajectory


def _relative_gap(t1, t2):
    """max over steps and layers of ||dZ1 - dZ2|| / ||dZ1||."""
    return max(
        np.linalg.norm(z1 - z2) / np.linalg.norm(z1)
        for s1, s2 in zip(t1, t2)
        for z1, z2 in zip(s1, s2)
    )


INVARIANCE_RTOL = 1e-3
"""Bound on max_t ||dZ_t - dZ'_t|| / ||dZ_t|| (dZ: change of the merged
A B since the start) for runs from (A, B) and (A S, S^-1 B) in float32.
Measured (8 jit fit steps, S = 10 I / random S): JAX 1.2e-6 / 1.5e-6,
TensorFlow 7.8e-6 / 3.5e-6, while Adam differs by 750% / 100% (JAX) and
710% / 118% (TF); the bound leaves room for other BLAS/LAPACK builds.
Adam must differ by > 10%."""


def _scalings(kind):
    if kind == "scalar":
        return [10.0 * np.eye(r) for r in (2, 3, 2)]
    rng = np.random.default_rng(11)
    mats = []
    for r in (2, 3, 2):
        q1 = np.linalg.qr(rng.normal(size=(r, r)))[0]
        q2 = np.linalg.qr(rng.normal(size=(r, r)))[0]
        mats.append(q1 @ np.diag(np.exp(rng.uniform(-1, 1, r))) @ q2)
    return mats


@pytest.mark.parametrize(
    "kind", [pytest.param("scalar", marks=pytest.mark.slow), "random"]
)
def test_transformation_invariance_through_fit(kind):
    mats = _scalings(kind)

    def rite():
        return LoraRite(learning_rate=0.02)

    base = _merged_trajectory(rite(), None)
    moved = _merged_trajectory(rite(), mats)
    gap = _relative_gap(base, moved)
    assert gap < INVARIANCE_RTOL, f"LoRA-RITE trajectories differ by {gap}"

    adam_base = _merged_trajectory(keras.optimizers.Adam(0.02), None)
    adam_moved = _merged_trajectory(keras.optimizers.Adam(0.02), mats)
    adam_gap = _relative_gap(adam_base, adam_moved)
    assert adam_gap > 0.1, f"Adam unexpectedly invariant ({adam_gap})"


@pytest.mark.slow
def test_invariance_with_safety_steps_on():
    mats = _scalings("random")

    def rite():
        return LoraRite(
            learning_rate=0.02,
            unmagnified_clipnorm=0.05,
            update_skip_threshold=10.0,
        )

    gap = _relative_gap(
        _merged_trajectory(rite(), None, epochs=8),
        _merged_trajectory(rite(), mats, epochs=8),
    )
    assert gap < INVARIANCE_RTOL, gap


# --------------------------------------------------------------------------
# Keras optimizer features (shared conformance + LoRA specifics).
# --------------------------------------------------------------------------


def _lora_regression_model(seed=0, dtype=None):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    d1 = keras.layers.Dense(16, activation="tanh", dtype=dtype)
    d2 = keras.layers.EinsumDense(
        "ab,bcd->acd", output_shape=(3, 4), dtype=dtype
    )
    x = d2(d1(inputs))
    x = keras.layers.Flatten(dtype=dtype)(x)
    outputs = keras.layers.Dense(3, dtype=dtype)(x)
    model = keras.Model(inputs, outputs)
    d1.enable_lora(4)
    d2.enable_lora(3)
    return model


def _lora_regression_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(8, 3))).astype("float32")
    return x, y


def test_conformance():
    # The shared battery on a model with two LoRA pairs (Dense and a rank-3
    # EinsumDense kernel) plus plain kernels and biases (Adam fallback).
    # Keras's `.keras` format stores a LoRA layer's kernel with the factors
    # merged in, so the resume check carries the weights and optimizer
    # variables over directly (and still checks that the optimizer state
    # survives a `.keras` round trip unchanged).
    check_optimizer(
        LoraRite,
        {"learning_rate": 0.1},
        fit_learning_rate=0.01,
        model_fn=_lora_regression_model,
        data_fn=_lora_regression_data,
        resume_via="weights",
    )


# Slow: `test_conformance` runs the same Keras features on this LoRA
# model; this adds weight decay and the loss / factor-movement checks.
@pytest.mark.slow
def test_keras_features_on_a_lora_model():
    x, y = _lora_regression_data()
    for extra in (
        {
            "use_ema": True,
            "ema_overwrite_frequency": 2,
            "clipnorm": 1.0,
            "gradient_accumulation_steps": 2,
        },
        {"global_clipnorm": 1.0, "weight_decay": 0.01},
    ):
        model = _lora_regression_model(seed=0)
        optimizer = LoraRite(learning_rate=0.01, **extra)
        model.compile(optimizer=optimizer, loss="mse", jit_compile=True)
        first = model.evaluate(x, y, verbose=0)
        model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
        last = model.evaluate(x, y, verbose=0)
        assert len(optimizer.lora_pairs) == 2
        assert np.isfinite(last) and last < first, (extra, first, last)
    model = _lora_regression_model(seed=0, dtype="mixed_bfloat16")
    model.compile(
        optimizer=keras.optimizers.LossScaleOptimizer(LoraRite(0.01)),
        loss="mse",
        jit_compile=True,
    )
    lora = [w for w in model.trainable_weights if "lora" in w.path]
    before = [np.array(w) for w in lora]
    h = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    assert np.all(np.isfinite(h.history["loss"]))
    assert all(
        not np.array_equal(b, np.array(w)) for b, w in zip(before, lora)
    ), "a LoRA factor did not move under mixed_bfloat16 + loss scaling"


def test_gradient_accumulation_equals_mean_gradient_for_pairs():
    # Keras's JAX path runs the update on every micro-step and keeps it only
    # on the last one: the state must come out as in the mean-gradient run.
    shapes = GOLDEN_SHAPES[:2]
    rng = np.random.default_rng(9)
    grad_seq = [
        [rng.normal(size=s).astype("f4") for pair in shapes for s in pair]
        for _ in range(4)
    ]
    _, acc_vars = _factor_vars(shapes, seed=8)
    acc_flat = [v for p in acc_vars for v in p]
    opt = LoraRite(learning_rate=0.05, gradient_accumulation_steps=2)
    for g in grad_seq:
        opt.apply_gradients(zip(g, acc_flat))
    _, plain_vars = _factor_vars(shapes, seed=8)
    plain_flat = [v for p in plain_vars for v in p]
    opt2 = LoraRite(learning_rate=0.05)
    for g1, g2 in zip(grad_seq[0::2], grad_seq[1::2]):
        opt2.apply_gradients(
            zip([(x + y) / 2 for x, y in zip(g1, g2)], plain_flat)
        )
    for v1, v2 in zip(acc_flat, plain_flat):
        np.testing.assert_allclose(np.array(v1), np.array(v2), atol=1e-5)

    def state(optimizer):
        return [
            np.array(v)
            for v in optimizer.variables
            if "accumulator" not in v.path and "iteration" not in v.path
        ]

    for s1, s2 in zip(state(opt), state(opt2), strict=True):
        np.testing.assert_allclose(s1, s2, atol=1e-5)


def _eqn_names(jaxpr, in_cond=False, out=None):
    """`(primitive name, inside a cond branch?)` for every equation of a
    jaxpr, sub-jaxprs included."""
    out = [] if out is None else out
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        out.append((name, in_cond))
        for value in eqn.params.values():
            values = value if isinstance(value, (tuple, list)) else [value]
            for sub in values:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _eqn_names(inner, in_cond or name == "cond", out)
    return out


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="JAX runs the update on every micro-step",
)
def test_accumulation_decomposes_once_per_optimizer_step():
    """Under JAX gradient accumulation the pair decompositions (eigh, QR,
    SVD) sit inside a `cond` taken on the last micro-step only; without
    accumulation they run unconditionally (so the check can fail)."""
    import jax

    def names(accumulation):
        _, pairs = _factor_vars(GOLDEN_SHAPES[:1], seed=1)
        flat = list(pairs[0])
        opt = LoraRite(0.01, gradient_accumulation_steps=accumulation)
        opt.build(flat)
        grads = [np.ones(v.shape, "float32") for v in flat]
        closed = jax.make_jaxpr(opt.stateless_apply)(
            [v.value for v in opt.variables], grads, [v.value for v in flat]
        )
        return _eqn_names(closed.jaxpr)

    with_acc = names(2)
    assert ("eigh", True) in with_acc
    assert ("eigh", False) not in with_acc
    assert ("eigh", False) in names(None)


# Slow: `test_conformance` checks the weights resume on a LoRA model.
@pytest.mark.slow
def test_resume_is_exact_on_a_lora_model():
    """The optimizer state is complete: restoring model weights (factors
    included) and optimizer variables continues the run exactly; and the
    state survives a `.keras` round trip unchanged."""
    x, y = _token_data()

    def fresh():
        model, _ = _token_model(seed=0)
        model.compile(
            optimizer=LoraRite(learning_rate=0.02, weight_decay=0.01),
            loss="mse",
            jit_compile=True,
        )
        return model

    straight = fresh()
    straight.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    half = fresh()
    half.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        half.save(path)
        loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, LoraRite)
    for v1, v2 in zip(
        loaded.optimizer.variables, half.optimizer.variables, strict=True
    ):
        np.testing.assert_array_equal(np.array(v1), np.array(v2))

    resumed = fresh()
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.set_weights(half.get_weights())
    resumed.optimizer.set_weights(
        [np.array(v) for v in half.optimizer.variables]
    )
    resumed.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for w1, w2 in zip(resumed.weights, straight.weights, strict=True):
        np.testing.assert_allclose(np.array(w1), np.array(w2), atol=1e-6)


# --------------------------------------------------------------------------
# keras-hub preset.
# --------------------------------------------------------------------------


# Slow: a keras-hub preset (fixture setup + 12 compiled LM steps).
@pytest.mark.slow
def test_keras_hub_preset_lora_fit(tiny_preset):
    import keras_hub

    keras.utils.set_random_seed(0)
    lm = keras_hub.models.CausalLM.from_preset(tiny_preset, preprocessor=None)
    lm.backbone.enable_lora(rank=4)
    optimizer = LoraRite(learning_rate=2e-2)
    lm.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    # One fixed random sequence, to be memorised through the LoRA factors
    # of the attention query/value projections only.
    seq = 32
    rng = np.random.default_rng(0)
    tokens = np.tile(rng.integers(4, 250, size=(1, seq + 1)), (8, 1))
    tokens = tokens.astype("int32")
    x = {
        "token_ids": tokens[:, :-1],
        "padding_mask": np.ones((8, seq), "int32"),
    }
    y = tokens[:, 1:]
    first = lm.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    lm.fit(x, y, batch_size=8, epochs=12, verbose=0)
    last = lm.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert len(optimizer.lora_pairs) == 2 * lm.backbone.num_layers
    # query/value EinsumDense kernels are 3-D: (heads, hidden, rank).
    assert len(optimizer.lora_pairs[0][0].shape) == 3
    assert np.isfinite(last) and last < 0.9 * first, (first, last)


def test_resume_from_training_state_equals_uninterrupted(tmp_path):
    """Issue 26 item 25: Keras folds LoRA into the kernel when it writes a
    `.keras` or `.weights.h5` file (the factors come back as zeros and
    never train again), so resuming from those differs from uninterrupted
    training. `save_training_state` / `load_training_state` resume
    exactly."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = np.tanh(rng.normal(size=(32, 4))).astype("float32")

    def fresh(rank=2):
        keras.utils.set_random_seed(0)
        dense = keras.layers.Dense(4)
        model = keras.Sequential([keras.Input((6,)), dense])
        dense.enable_lora(rank)
        b = np.random.default_rng(1).normal(size=(rank, 4))
        dense.lora_kernel_b.assign(0.3 * b)
        model.compile(
            optimizer=LoraRite(learning_rate=0.02),
            loss="mse",
            jit_compile=False,
        )
        return model, [None, dense]

    straight, _ = fresh()
    straight.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    half, _ = fresh()
    half.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    state = str(tmp_path / "state.npz")
    save_training_state(half, state)

    # What Keras's own weights file does (the reason for the helper).
    folded, folded_layers = fresh()
    half.save_weights(str(tmp_path / "w.weights.h5"))
    folded.load_weights(str(tmp_path / "w.weights.h5"))
    assert not np.any(np.array(_lora_b(folded_layers[1])))

    resumed, _ = fresh()
    load_training_state(resumed, state)
    assert int(resumed.optimizer.iterations) == 4
    resumed.fit(
        x, y, batch_size=8, epochs=2, initial_epoch=1, verbose=0, shuffle=False
    )
    for w1, w2 in zip(resumed.weights, straight.weights, strict=True):
        np.testing.assert_allclose(np.array(w1), np.array(w2), atol=1e-6)

    other, _ = fresh(rank=3)
    with pytest.raises(ValueError, match=r"model.*shape"):
        load_training_state(other, state)
    uncompiled = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="compiled"):
        load_training_state(uncompiled, state)
