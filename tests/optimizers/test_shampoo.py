"""Tests of OneSidedShampoo and Shampoo.

Golden steps against an independent float64 NumPy implementation written
here, equality with Keras's own optimizers when preconditioning is off,
robustness (NaN gradients, rank-deficient statistics), validation, routing,
the shared conformance suite and multi-device trajectories.
"""

import itertools
import warnings

import keras
import numpy as np
import pytest

from keras_gr.optimizers import OneSidedShampoo
from keras_gr.optimizers import Shampoo
from keras_gr.optimizers import _blocking
from keras_gr.optimizers import _staggering
from keras_gr.optimizers import _structured
from tests.conformance import check_optimizer
from tests.multidevice import TRAJECTORY_SNIPPET
from tests.multidevice import run_on_devices


def compiled_applier(opt, variables):
    """Returns `apply(grads)` running `opt` on `variables` under jit (eager
    JAX re-compiles every `lax.cond` branch at every call: far too slow)."""
    opt.build(variables)
    if keras.backend.backend() == "jax":
        import jax

        step = jax.jit(opt.stateless_apply)

        def apply(grads):
            new_vars, new_opt = step(
                [v.value for v in opt.variables],
                [keras.ops.convert_to_tensor(g) for g in grads],
                [v.value for v in variables],
            )
            for v, x in zip(variables, new_vars):
                v.assign(x)
            for v, x in zip(opt.variables, new_opt):
                v.assign(x)

        return apply
    import tensorflow as tf

    step = tf.function(lambda grads: opt.apply_gradients(zip(grads, variables)))

    def apply(grads):
        step([tf.convert_to_tensor(g) for g in grads])

    return apply


# --------------------------------------------------------------------------
# independent NumPy reference
# --------------------------------------------------------------------------


def _np_inv_root(mat, p, eps, rel):
    mat = 0.5 * (mat + mat.T)
    lam, u = np.linalg.eigh(mat)
    floor = rel * max(lam.max(), 0.0) + eps
    return (u * np.maximum(lam, floor) ** (-1.0 / p)) @ u.T


class NumpyShampoo:
    """Float64 reference of one variable's trajectory (see the docstring
    of `keras_gr.optimizers.Shampoo` for the algorithm): per-axis factors,
    blocks cut by explicit slicing of the zero-padded tensor, one factor
    per (block, factored axis), bias-corrected EMA statistics."""

    def __init__(
        self,
        shape,
        one_sided,
        lr,
        beta_1=0.9,
        beta_2=0.999,
        eps=1e-7,
        nesterov=False,
        grafting="adam",
        gbeta2=0.999,
        freq=1,
        start=1,
        meps=1e-12,
        rel=1e-6,
        max_dim=1024,
        fallback=False,
        stat_freq=1,
        offsets=None,
    ):
        self.__dict__.update(locals())
        self.fallback = fallback or len(shape) < 2
        factored = [d > 1 for d in shape]
        if one_sided and len(shape) >= 2:
            largest = max(range(len(shape)), key=lambda a: (shape[a], a))
            factored[largest] = False
        self.axes = [a for a, f in enumerate(factored) if f]
        self.nblocks = [
            -(-d // max_dim) if f and d > max_dim else 1
            for d, f in zip(shape, factored)
        ]
        self.bsize = [-(-d // n) for d, n in zip(shape, self.nblocks)]
        self.blocks = list(itertools.product(*[range(n) for n in self.nblocks]))
        self.stats = {
            (blk, a): np.zeros((self.bsize[a],) * 2)
            for blk in self.blocks
            for a in self.axes
        }
        self.roots = {k: np.eye(v.shape[0]) for k, v in self.stats.items()}
        self.m = np.zeros(shape)
        self.v = np.zeros(shape)
        self.t = 0

    def _pad(self, x):
        padded = [n * b for n, b in zip(self.nblocks, self.bsize)]
        out = np.zeros(padded)
        out[tuple(slice(0, d) for d in self.shape)] = x
        return out

    def step(self, w, g):
        self.t += 1
        t = self.t
        b1 = self.beta_1
        d = g
        if b1 > 0:
            self.m = b1 * self.m + (1 - b1) * g
            if self.nesterov:
                d = (b1 * self.m + (1 - b1) * g) / (1 - b1 ** (t + 1))
            else:
                d = self.m / (1 - b1**t)
        kind = self.grafting
        if self.fallback and kind == "none":
            kind = "adam"
        ref = d
        if kind == "adam":
            self.v = self.gbeta2 * self.v + (1 - self.gbeta2) * g * g
            ref = d * np.sqrt(1 - self.gbeta2**t) / (np.sqrt(self.v) + self.eps)
        elif kind == "adagrad":
            self.v = self.v + g * g
            ref = d / np.sqrt(self.v + self.eps)
        if self.fallback:
            return w - self.lr * ref
        p = 2 * len(self.axes)
        b2 = self.beta_2
        # Statistics on steps 1, 1 + k, 1 + 2k, ...; the bias correction
        # counts those updates only.
        update_stats = (t - 1) % self.stat_freq == 0
        n_updates = (t - 1) // self.stat_freq + 1
        corr = 1 - b2**n_updates if b2 < 1 else 1.0
        gp, dp = self._pad(g), self._pad(d)
        out = np.zeros_like(dp)
        k = len(self.shape)
        for flat, blk in enumerate(self.blocks):
            sl = tuple(
                slice(i * b, (i + 1) * b) for i, b in zip(blk, self.bsize)
            )
            gb, sb = gp[sl], dp[sl]
            for j, a in enumerate(self.axes):
                offset = 0 if self.offsets is None else self.offsets[j][flat]
                recompute = t >= self.start and (
                    t == self.start or (t - self.start) % self.freq == offset
                )
                others = [x for x in range(k) if x != a]
                gram = np.tensordot(gb, gb, axes=(others, others))
                key = (blk, a)
                if not update_stats:
                    pass
                elif b2 < 1:
                    self.stats[key] = b2 * self.stats[key] + (1 - b2) * gram
                else:
                    self.stats[key] = self.stats[key] + gram
                if recompute:
                    self.roots[key] = _np_inv_root(
                        self.stats[key] / corr, p, self.meps, self.rel
                    )
                sb = np.moveaxis(
                    np.tensordot(self.roots[key], sb, axes=(1, a)), 0, a
                )
            out[sl] = sb
        s = out[tuple(slice(0, d) for d in self.shape)]
        if kind != "none":
            s = s * np.linalg.norm(ref) / np.linalg.norm(s)
        update = s if t >= self.start else ref
        return w - self.lr * update


def _keras_kwargs(ref):
    return dict(
        learning_rate=ref.lr,
        beta_1=ref.beta_1,
        beta_2=ref.beta_2,
        epsilon=ref.eps,
        nesterov=ref.nesterov,
        grafting=ref.grafting,
        grafting_beta_2=ref.gbeta2,
        precondition_frequency=ref.freq,
        start_preconditioning_step=ref.start,
        matrix_epsilon=ref.meps,
        relative_matrix_epsilon=ref.rel,
        max_preconditioner_dim=ref.max_dim,
        stagger_roots=False,
        root_method="eigh",
        statistics_frequency=ref.stat_freq,
        flatten_tensors=False,
    )


def _run_both(cls, shapes, steps=4, seed=0, **ref_kwargs):
    rng = np.random.default_rng(seed)
    one_sided = cls is OneSidedShampoo
    refs = [NumpyShampoo(s, one_sided, **ref_kwargs) for s in shapes]
    ws = [rng.normal(size=s) for s in shapes]
    variables = [
        keras.Variable(w.astype("float32"), name=f"w{i}")
        for i, w in enumerate(ws)
    ]
    opt = cls(**_keras_kwargs(refs[0]))
    apply = compiled_applier(opt, variables)
    for _ in range(steps):
        grads = [rng.normal(size=s) for s in shapes]
        ws = [r.step(w, g) for r, w, g in zip(refs, ws, grads)]
        apply([g.astype("float32") for g in grads])
    return ws, [np.asarray(v, dtype="float64") for v in variables], opt


GOLDEN_SHAPES = [(4, 6), (7, 3), (2, 3, 4), (5,)]

GOLDEN_CASES = {
    "paper": dict(lr=0.1, beta_1=0.0, beta_2=1.0, grafting="none"),
    "adam_graft_momentum": dict(lr=0.01),
    "sgd_graft_nesterov_freq3": dict(
        lr=0.05, grafting="sgd", nesterov=True, freq=3, beta_2=0.9
    ),
    # Blocks: 7 -> 2 blocks of 4 (one zero row), 6 -> 2 of 3, 4 -> 4.
    "blocked_no_graft_ema": dict(
        lr=0.05, beta_1=0.0, beta_2=0.9, grafting="none", max_dim=4
    ),
    "adagrad_graft_start3": dict(lr=0.05, grafting="adagrad", start=3, freq=2),
    "no_graft_momentum_freq2": dict(lr=0.05, grafting="none", freq=2),
}


FAST_GOLDEN = (
    "paper",
    "adam_graft_momentum",
    "sgd_graft_nesterov_freq3",
    "blocked_no_graft_ema",
)


@pytest.mark.parametrize("cls", [OneSidedShampoo, Shampoo])
@pytest.mark.parametrize(
    "case",
    [
        c if c in FAST_GOLDEN else pytest.param(c, marks=pytest.mark.slow)
        for c in sorted(GOLDEN_CASES)
    ],
)
def test_golden_steps_vs_numpy(cls, case):
    want, got, _ = _run_both(cls, GOLDEN_SHAPES, steps=5, **GOLDEN_CASES[case])
    for shape, a, b in zip(GOLDEN_SHAPES, want, got):
        np.testing.assert_allclose(
            b, a, rtol=2e-4, atol=2e-5, err_msg=f"{cls.__name__} {shape}"
        )


def test_golden_reference_is_not_trivial():
    """The reference trajectories of the two variants differ, so the golden
    test above would notice a swapped side or exponent."""
    a, _, _ = _run_both(OneSidedShampoo, [(4, 6)], **GOLDEN_CASES["paper"])
    b, _, _ = _run_both(Shampoo, [(4, 6)], **GOLDEN_CASES["paper"])
    assert np.abs(a[0] - b[0]).max() > 1e-2


@pytest.mark.parametrize("cls", [OneSidedShampoo, Shampoo])
@pytest.mark.parametrize(
    "grafting, peer",
    [
        (
            "adam",
            lambda: keras.optimizers.Adam(
                learning_rate=0.01, beta_1=0.9, beta_2=0.99, epsilon=1e-7
            ),
        ),
        ("sgd", lambda: keras.optimizers.SGD(learning_rate=0.01)),
        (
            "adagrad",
            lambda: keras.optimizers.Adagrad(
                learning_rate=0.01, initial_accumulator_value=0.0, epsilon=1e-7
            ),
        ),
    ],
)
def test_disabled_preconditioning_equals_grafting_optimizer(
    cls, grafting, peer
):
    beta_1 = 0.9 if grafting == "adam" else 0.0
    opt = cls(
        learning_rate=0.01,
        beta_1=beta_1,
        grafting=grafting,
        grafting_beta_2=0.99,
        epsilon=1e-7,
        start_preconditioning_step=1000,
    )
    peer_opt = peer()
    rng = np.random.default_rng(0)
    shapes = [(4, 6), (3,), (2, 2, 3)]
    inits = [rng.normal(size=s).astype("float32") for s in shapes]
    mine = [keras.Variable(w) for w in inits]
    theirs = [keras.Variable(w) for w in inits]
    apply_mine = compiled_applier(opt, mine)
    apply_theirs = compiled_applier(peer_opt, theirs)
    for _ in range(6):
        grads = [rng.normal(size=s).astype("float32") for s in shapes]
        apply_mine(grads)
        apply_theirs(grads)
        for a, b in zip(mine, theirs):
            np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize("cls", [OneSidedShampoo, Shampoo])
def test_nan_gradient_keeps_weights_and_root_finite(cls):
    var = keras.Variable(np.ones((3, 5), "float32"))
    opt = cls(learning_rate=0.01, precondition_frequency=1)
    apply = compiled_applier(opt, [var])
    g = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    apply([g])
    before_w = np.asarray(var).copy()
    before_state = [np.asarray(v).copy() for v in opt.variables[1:]]
    bad = g.copy()
    bad[0, 1] = np.nan
    bad[2, 2] = np.inf
    apply([bad])
    np.testing.assert_array_equal(np.asarray(var), before_w)
    for a, b in zip(before_state, opt.variables[1:]):
        np.testing.assert_array_equal(np.asarray(b), a)
    apply([g])
    assert np.all(np.isfinite(np.asarray(var)))
    assert not np.allclose(np.asarray(var), before_w)


def test_rank_deficient_statistics_are_reproducible():
    """A 4 x 3 kernel preconditioned on its 4-side (two-sided Shampoo) with
    rank-1 gradients: two runs whose gradients differ at rounding level stay
    together."""
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(4, 1)), rng.normal(size=(1, 3))
    w0 = rng.normal(size=(4, 3)).astype("float32")

    def run(noise):
        var = keras.Variable(w0)
        opt = Shampoo(learning_rate=0.05, precondition_frequency=1)
        apply = compiled_applier(opt, [var])
        r = np.random.default_rng(1)
        for k in range(5):
            g = (1.0 + 0.1 * k) * (u @ v)
            g = g + noise * r.normal(size=g.shape)
            apply([g.astype("float32")])
        return np.asarray(var) - w0

    a, b = run(0.0), run(1e-6)
    assert np.all(np.isfinite(a))
    assert np.abs(a - b).max() < 1e-3 * np.abs(a).max()


def _summary_by_path(opt):
    return {v["path"]: v for v in opt.preconditioning_summary()["variables"]}


def test_routing_per_axis_blocks_and_summary():
    inputs = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(50, 8)(inputs)
    x = keras.layers.Conv1D(6, 3)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(40, name="big")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, outputs)
    opt = OneSidedShampoo(max_preconditioner_dim=20, flatten_tensors=False)
    opt.build(model.trainable_variables)
    rows = _summary_by_path(opt)

    def row(*words):
        (path,) = [p for p in rows if all(w in p for w in words)]
        return rows[path]

    assert not row("embedding")["preconditioned"]
    assert "embedding" in row("embedding")["reason"]
    # Conv kernel (3, 8, 6): per axis, the largest axis (8) left out.
    conv = row("conv1d", "kernel")
    assert conv["factors"] == [(1, 3, 3), (1, 6, 6)]
    assert conv["root_exponent"] == -0.25
    # (18, 40): the smaller side 18 gets the factor, 40 is left alone.
    assert row("big", "kernel")["factors"] == [(1, 18, 18)]
    assert row("head", "kernel")["factors"] == [(1, 2, 2)]
    assert all(not r["preconditioned"] for p, r in rows.items() if "bias" in p)

    two = Shampoo(max_preconditioner_dim=20, flatten_tensors=False)
    two.build(model.trainable_variables)
    rows = _summary_by_path(two)
    assert row("conv1d", "kernel")["factors"] == [
        (1, 3, 3),
        (1, 8, 8),
        (1, 6, 6),
    ]
    assert row("conv1d", "kernel")["root_exponent"] == -1.0 / 6.0
    # 40 > 20: split into 2 blocks of 20 on that axis.
    assert row("big", "kernel")["factors"] == [(2, 18, 18), (2, 20, 20)]
    summary = two.preconditioning_summary()
    want = 3 * 8 * 6 + 18 * 40 + 40 * 2
    assert summary["preconditioned_parameters"] == want
    assert summary["fallback_parameters"] == 50 * 8 + 6 + 40 + 2
    state = [v for v in two.variables if "statistics" in v.name]
    assert sorted(tuple(v.shape) for v in state) == sorted(
        [(1, 3, 3), (1, 8, 8), (1, 6, 6), (2, 18, 18), (2, 20, 20)]
        + [(2, 20, 20), (2, 2, 2)]  # head (40, 2): 40 -> 2 blocks of 20
    )

    # Blocking off: the old behaviour, axes above the limit get no factor.
    off = Shampoo(max_preconditioner_dim=20, blocking=False)
    off.build(model.trainable_variables)
    rows = _summary_by_path(off)
    assert row("big", "kernel")["factors"] == [(1, 18, 18)]
    assert row("head", "kernel")["factors"] == [(1, 2, 2)]


def test_realistic_kernels_are_preconditioned_in_blocks():
    """4096 x 4096, 4096 x 11008 and 32000 x 4096 kernels: every one is
    preconditioned, in blocks of at most 1024 (nothing falls back)."""
    shapes = [(4096, 4096), (4096, 11008), (32000, 4096)]
    variables = [
        keras.Variable(
            keras.initializers.Zeros()(s), name=f"kernel{i}", trainable=True
        )
        for i, s in enumerate(shapes)
    ]
    opt = OneSidedShampoo()
    opt.build(variables)
    summary = opt.preconditioning_summary()
    assert summary["preconditioned_fraction"] == 1.0
    factors = [v["factors"] for v in summary["variables"]]
    assert factors == [[(4, 1024, 1024)], [(4, 1024, 1024)], [(4, 1024, 1024)]]
    # Two-sided plans (no state allocated: 32000 x 4096 would need 2 GiB).
    plans = [
        _blocking.BlockPlan(s, *Shampoo()._route(v)[:2], 1024)
        for s, v in zip(shapes, variables)
    ]
    assert [p.factor_shapes() for p in plans] == [
        [(16, 1024, 1024)] * 2,
        [(44, 1024, 1024), (44, 1001, 1001)],
        [(128, 1000, 1000), (128, 1024, 1024)],
    ]


def test_block_update_matches_numpy_on_uneven_blocks():
    """Blocks of uneven size (7 -> 4 + 3 padded, 10 -> 4 + 3 + 3 padded):
    two-sided Shampoo with frequency 1 against the per-block reference."""
    shapes = [(7, 10)]
    want, got, opt = _run_both(
        Shampoo,
        shapes,
        steps=3,
        lr=0.05,
        beta_1=0.0,
        beta_2=1.0,
        grafting="none",
        max_dim=4,
    )
    assert opt.preconditioning_summary()["variables"][0]["blocks"] == 6
    np.testing.assert_allclose(got[0], want[0], rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("cls", [OneSidedShampoo, Shampoo])
def test_flatten_tensors_is_the_matrix_update(cls):
    """`flatten_tensors=True`: a (2, 3, 4) kernel is trained exactly as the
    (6, 4) matrix by the reference; the option is in the config."""
    kwargs = dict(lr=0.05, beta_2=0.9, max_dim=4)
    want, _, _ = _run_both(cls, [(6, 4)], steps=3, **kwargs)
    rng = np.random.default_rng(0)
    ref = NumpyShampoo((6, 4), cls is OneSidedShampoo, **kwargs)
    var = keras.Variable(rng.normal(size=(6, 4)).reshape(2, 3, 4), name="w0")
    opt = cls(**{**_keras_kwargs(ref), "flatten_tensors": True})
    apply = compiled_applier(opt, [var])
    for _ in range(3):
        apply([rng.normal(size=(6, 4)).reshape(2, 3, 4).astype("float32")])
    np.testing.assert_allclose(
        np.asarray(var).reshape(6, 4), want[0], rtol=2e-4, atol=2e-5
    )
    assert opt.get_config()["flatten_tensors"] is True
    assert cls.from_config(opt.get_config()).flatten_tensors


def test_mostly_fallback_model_warns():
    inputs = keras.Input((3,), dtype="int32")
    x = keras.layers.Embedding(1000, 16)(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    with pytest.warns(UserWarning, match="preconditioned"):
        OneSidedShampoo().build(model.trainable_variables)
    dense_only = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OneSidedShampoo().build(dense_only.trainable_variables)


def test_summary_before_build_raises():
    with pytest.raises(ValueError, match="build"):
        OneSidedShampoo().preconditioning_summary()


@pytest.mark.parametrize("cls", [OneSidedShampoo, Shampoo])
def test_bias_corrected_statistics(cls):
    """With `grafting="none"` and `beta_1=0` the first step is
    `L^(-1/p) G (R^(-1/p))` of the first gradient whatever `beta_2` (the
    bias-corrected statistic is `G G^T`); uncorrected, `beta_2=0.999` would
    make it `(1 - beta_2)^(-1/2) ~ 30` times larger."""
    g = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    moves = []
    for beta_2 in (0.9, 0.999, 1.0):
        var = keras.Variable(np.zeros((3, 5), "float32"))
        opt = cls(
            learning_rate=0.1,
            beta_1=0.0,
            beta_2=beta_2,
            grafting="none",
            precondition_frequency=1,
        )
        compiled_applier(opt, [var])([g])
        moves.append(np.asarray(var))
    np.testing.assert_allclose(moves[0], moves[2], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(moves[1], moves[2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", [OneSidedShampoo, Shampoo])
def test_non_finite_gradient_skips_the_whole_step(cls):
    """A NaN in one variable's gradient leaves *every* variable and all
    optimizer state unchanged (not only the poisoned variable)."""
    variables = [
        keras.Variable(np.ones((3, 4), "float32"), name="a"),
        keras.Variable(np.ones((4,), "float32"), name="b"),
    ]
    opt = cls(learning_rate=0.01, precondition_frequency=1)
    apply = compiled_applier(opt, variables)
    rng = np.random.default_rng(0)
    good = [rng.normal(size=v.shape).astype("float32") for v in variables]
    apply(good)
    before = [np.asarray(v).copy() for v in variables + opt.variables[1:]]
    bad = [good[0] * 2.0, good[1].copy()]
    bad[1][2] = np.nan
    apply(bad)
    after = [np.asarray(v) for v in variables + opt.variables[1:]]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    apply(good)
    assert not np.array_equal(np.asarray(variables[0]), before[0])


def _all_finite_runners():
    """`_all_finite` eagerly and compiled the ways the backend compiles a
    train step (JAX: `jax.jit`; TensorFlow: `tf.function` with and without
    XLA), so a compiler that folded `x * 0` to 0 would be caught."""
    fn = _structured.all_finite
    runners = {"eager": fn}
    if keras.backend.backend() == "jax":
        import jax

        runners["jit"] = jax.jit(fn)
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        runners["graph"] = tf.function(fn, jit_compile=False)
        runners["xla"] = tf.function(fn, jit_compile=True)
    return runners


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_all_finite_flags_every_non_finite(dtype):
    """The step's finite flag (`sum(x * 0)` is finite) is False for NaN,
    +Inf, -Inf, +Inf and -Inf together (their sum is NaN, not Inf), a
    single bad entry among many and values that overflow only in the sum
    (which must stay True: every entry is finite)."""
    base = np.linspace(-3.0, 3.0, 4096).reshape(64, 64)
    cases = {"finite": (base, True)}
    for label, bad in [
        ("nan", [np.nan]),
        ("inf", [np.inf]),
        ("-inf", [-np.inf]),
        ("inf and -inf", [np.inf, -np.inf]),
        ("nan and inf", [np.nan, np.inf]),
    ]:
        x = base.copy()
        x.flat[[17, 4000][: len(bad)]] = bad
        cases[label] = (x, False)
    # Every entry finite (6e4 < float16's max 65504), but their plain sum
    # overflows float16.
    cases["sum overflows"] = (np.full((64, 64), 6e4), True)
    for runner_name, run in _all_finite_runners().items():
        for label, (x, expected) in cases.items():
            flag = run(keras.ops.convert_to_tensor(x, dtype=dtype))
            got = bool(keras.ops.convert_to_numpy(flag))
            assert got is expected, (runner_name, label, dtype)


def test_numpy_scalars_are_accepted():
    opt = OneSidedShampoo(
        learning_rate=np.float32(0.01),
        beta_1=np.float32(0.9),
        beta_2=np.float64(0.99),
        precondition_frequency=np.int64(10),
        start_preconditioning_step=np.int32(2),
        max_preconditioner_dim=np.int64(256),
        statistics_frequency=np.int64(4),
    )
    config = opt.get_config()
    assert config["statistics_frequency"] == 4
    assert config["root_method"] == "auto"
    assert config["precondition_frequency"] == 10
    assert isinstance(config["precondition_frequency"], int)
    assert config["beta_1"] == pytest.approx(0.9)
    assert OneSidedShampoo.from_config(config).get_config() == config


def test_staggered_roots_spread_over_the_period():
    """Three equal kernels, frequency 3: all roots at the first step, then
    exactly one kernel's roots per step; with `stagger_roots=False` all
    three on the same steps (the spike)."""
    for stagger in (True, False):
        variables = [
            keras.Variable(np.zeros((4, 6), "float32"), name=f"k{i}")
            for i in range(3)
        ]
        opt = OneSidedShampoo(precondition_frequency=3, stagger_roots=stagger)
        apply = compiled_applier(opt, variables)
        roots = [v for v in opt.variables if v.name.endswith("_root")]
        assert len(roots) == 3
        rng = np.random.default_rng(0)
        changed = []
        previous = [np.asarray(r).copy() for r in roots]
        for _ in range(7):
            apply([rng.normal(size=(4, 6)).astype("float32")] * 3)
            now = [np.asarray(r).copy() for r in roots]
            changed.append(
                sum(not np.array_equal(a, b) for a, b in zip(previous, now))
            )
            previous = now
        if stagger:
            assert changed == [3, 1, 1, 1, 1, 1, 1], changed
        else:
            assert changed == [3, 0, 0, 3, 0, 0, 3], changed


@pytest.mark.parametrize("cls", [OneSidedShampoo, Shampoo])
def test_statistics_frequency_matches_numpy(cls):
    """`statistics_frequency=2`: statistics updated on steps 1, 3, 5 only
    (the bias correction counts those updates), roots every 3rd step from
    the current statistics, the preconditioned step taken every step."""
    want, got, opt = _run_both(
        cls,
        [(4, 6), (7, 3)],
        steps=5,
        lr=0.05,
        beta_2=0.9,
        freq=3,
        stat_freq=2,
        max_dim=4,
    )
    assert opt.statistics_frequency == 2
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5)
    # The reference differs from statistics every step (the test can fail).
    every, _, _ = _run_both(
        cls, [(4, 6), (7, 3)], steps=5, lr=0.05, beta_2=0.9, freq=3, max_dim=4
    )
    assert np.abs(every[0] - want[0]).max() > 1e-4


def test_statistics_are_frozen_between_updates():
    var = keras.Variable(np.zeros((3, 5), "float32"))
    opt = OneSidedShampoo(statistics_frequency=3, precondition_frequency=1)
    apply = compiled_applier(opt, [var])
    (stat,) = [v for v in opt.variables if v.name.endswith("_statistics")]
    rng = np.random.default_rng(0)
    values, weights = [], []
    for _ in range(5):
        apply([rng.normal(size=(3, 5)).astype("float32")])
        values.append(np.asarray(stat).copy())
        weights.append(np.asarray(var).copy())
    # Updated at steps 1 and 4 only; the weights move every step.
    changed = [not np.array_equal(a, b) for a, b in zip(values, values[1:])]
    assert changed == [False, False, True, False], changed
    assert all(not np.array_equal(a, b) for a, b in zip(weights, weights[1:]))


def test_busy_offsets_are_the_statistics_steps_of_some_period():
    """`busy_offsets` against brute force over many periods: the root
    offsets whose steps `start + o + k * frequency` meet a statistics step
    (`(t - 1) % statistics_frequency == 0`) for some `k`."""
    for frequency in (1, 3, 4, 10):
        for stat_freq in (1, 2, 3, 10, 20):
            for start in (1, 2, 7):
                brute = tuple(
                    o
                    for o in range(frequency)
                    if any(
                        (start + o + k * frequency - 1) % stat_freq == 0
                        for k in range(200)
                    )
                )
                got = _staggering.busy_offsets(frequency, stat_freq, start)
                assert got == brute, (frequency, stat_freq, start)


def test_roots_avoid_the_statistics_steps():
    """Four 4 x 4 kernels, `precondition_frequency=10`,
    `statistics_frequency=10`: the staggered roots take four offsets other
    than 0 (the statistics step; before, offsets 0-3, so the worst step
    paid a root and the statistics), and with `statistics_frequency=1`
    (every offset busy) the offsets are 0-3 as before."""
    for stat_freq, want in ((10, [1, 2, 3, 4]), (1, [0, 1, 2, 3])):
        variables = [
            keras.Variable(np.zeros((4, 6), "float32"), name=f"k{i}")
            for i in range(4)
        ]
        opt = OneSidedShampoo(
            precondition_frequency=10, statistics_frequency=stat_freq
        )
        opt.build(variables)
        offsets = sorted(o for v in _block_offsets(opt) for (o,) in v)
        assert offsets == want, (stat_freq, offsets)


def _block_offsets(opt):
    return [
        v["root_offsets"] for v in opt.preconditioning_summary()["variables"]
    ]


@pytest.mark.parametrize("cls", [OneSidedShampoo, Shampoo])
def test_block_staggering_balances_root_work_and_matches_numpy(cls):
    """Staggering spreads *blocks*: the blocks of a 12-long side land on
    all three steps of the period, no step's root work exceeds
    `total / frequency + largest block`, and the trajectory equals the
    reference that recomputes each block at its own offset."""
    shapes = [(12, 20), (8, 20), (5, 20)]
    freq = 3
    rng = np.random.default_rng(0)
    one_sided = cls is OneSidedShampoo
    opt = cls(
        learning_rate=0.05,
        precondition_frequency=freq,
        max_preconditioner_dim=4,
        root_method="eigh",
    )
    variables = [
        keras.Variable(rng.normal(size=s).astype("float32"), name=f"w{i}")
        for i, s in enumerate(shapes)
    ]
    apply = compiled_applier(opt, variables)
    summary = opt.preconditioning_summary()
    offsets = _block_offsets(opt)
    # The blocks of one variable's factor go to every step of the period.
    assert set(offsets[0][0]) == {0, 1, 2}, offsets
    loads = summary["root_cost_per_offset"]
    costs = [
        b**3
        for v in summary["variables"]
        for n, b, _ in v["factors"]
        for _ in range(n)
    ]
    assert sum(loads) == sum(costs)
    assert max(loads) <= sum(costs) / freq + max(costs), loads
    assert max(loads) < 0.5 * sum(costs)  # the unstaggered spike is all
    refs = [
        NumpyShampoo(
            s, one_sided, lr=0.05, freq=freq, max_dim=4, offsets=offsets[i]
        )
        for i, s in enumerate(shapes)
    ]
    ws = [np.asarray(v, dtype="float64") for v in variables]
    roots = [v for v in opt.variables if v.name.endswith("_root")]
    per_step = []
    before = [np.asarray(r).copy() for r in roots]
    for _ in range(7):
        grads = [rng.normal(size=s) for s in shapes]
        ws = [r.step(w, g) for r, w, g in zip(refs, ws, grads)]
        apply([g.astype("float32") for g in grads])
        now = [np.asarray(r).copy() for r in roots]
        per_step.append(
            sum(
                int(not np.array_equal(a[k], b[k]))
                for a, b in zip(before, now)
                for k in range(a.shape[0])
            )
        )
        before = now
    for a, v in zip(ws, variables):
        np.testing.assert_allclose(np.asarray(v), a, rtol=2e-4, atol=2e-5)
    # Every block at step 1, then each block once per period.
    n_blocks = sum(r.shape[0] for r in roots)
    assert per_step[0] == n_blocks
    assert sum(per_step[1:4]) == n_blocks and max(per_step[1:]) < n_blocks


def _count_in_jaxpr(opt, variables, primitive):
    import jax

    opt.build(variables)
    grads = [keras.ops.ones(v.shape) for v in variables]
    jaxpr = jax.make_jaxpr(opt.stateless_apply)(
        [v.value for v in opt.variables], grads, [v.value for v in variables]
    )
    return str(jaxpr).count(f"{primitive}[")


@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_same_shaped_factors_share_one_batched_root(method):
    """Factors of the same block size and exponent are decomposed in one
    batched call across variables (jaxpr count under JAX) and the result
    equals each variable optimized alone."""
    shapes = [(4, 6), (4, 9), (5, 4), (3, 7)]  # b = 4, 4, 4, 3
    kwargs = dict(
        learning_rate=0.05,
        precondition_frequency=2,
        stagger_roots=False,
        root_method=method,
    )
    rng = np.random.default_rng(0)
    inits = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [
        [rng.normal(size=s).astype("float32") for s in shapes] for _ in range(4)
    ]
    together = [keras.Variable(w, name=f"w{i}") for i, w in enumerate(inits)]
    apply = compiled_applier(OneSidedShampoo(**kwargs), together)
    for step in grads:
        apply(step)
    for k, w in enumerate(inits):
        alone = keras.Variable(w, name="alone")
        apply_alone = compiled_applier(OneSidedShampoo(**kwargs), [alone])
        for step in grads:
            apply_alone([step[k]])
        np.testing.assert_allclose(
            np.asarray(together[k]), np.asarray(alone), rtol=1e-5, atol=1e-6
        )
    if keras.backend.backend() != "jax":
        return
    primitive = "eigh" if method == "eigh" else "while"
    variables = [keras.Variable(w) for w in inits]
    # Two groups (b = 4: three variables; b = 3: one), not four calls.
    assert _count_in_jaxpr(OneSidedShampoo(**kwargs), variables, primitive) == 2
    staggered = dict(kwargs, stagger_roots=True)
    variables = [keras.Variable(w) for w in inits]
    # Staggered over 2 steps: the b = 4 blocks split over both offsets.
    assert (
        _count_in_jaxpr(OneSidedShampoo(**staggered), variables, primitive) == 3
    )


@pytest.mark.parametrize("cls", [OneSidedShampoo, Shampoo])
def test_newton_root_method_tracks_eigh(cls):
    """The matmul-only root gives the same trajectory as `eigh` to 1e-3
    (well-conditioned statistics: the clip/shift floors coincide)."""
    results = []
    for method in ("eigh", "newton"):
        rng = np.random.default_rng(0)
        var = keras.Variable(rng.normal(size=(6, 9)).astype("float32"))
        opt = cls(
            learning_rate=0.05,
            precondition_frequency=1,
            root_method=method,
            grafting="sgd",
        )
        apply = compiled_applier(opt, [var])
        for _ in range(4):
            apply([rng.normal(size=(6, 9)).astype("float32")])
        results.append(np.asarray(var))
    delta = np.abs(results[0] - results[1]).max()
    assert delta < 1e-3 * np.abs(results[0]).max(), delta


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(epsilon=0.0), "epsilon"),
        (dict(matrix_epsilon=-1e-3), "matrix_epsilon"),
        (dict(precondition_frequency=0), "precondition_frequency"),
        (dict(precondition_frequency=2.5), "precondition_frequency"),
        (dict(start_preconditioning_step=0), "start_preconditioning_step"),
        (dict(beta_1=1.0), "beta_1"),
        (dict(beta_1=-0.1), "beta_1"),
        (dict(beta_2=1.5), "beta_2"),
        (dict(grafting_beta_2=2.0), "grafting_beta_2"),
        (dict(grafting="lamb"), "grafting"),
        (dict(max_preconditioner_dim=0), "max_preconditioner_dim"),
        (dict(relative_matrix_epsilon=-1.0), "relative_matrix_epsilon"),
        (dict(root_method="svd"), "root_method"),
        (dict(statistics_frequency=0), "statistics_frequency"),
        (dict(statistics_frequency=1.5), "statistics_frequency"),
        (dict(beta_1=True), "beta_1"),
        (
            dict(precondition_frequency=np.float32(2.0)),
            "precondition_frequency",
        ),
    ],
)
def test_bad_arguments(kwargs, name):
    for cls in (OneSidedShampoo, Shampoo):
        with pytest.raises(ValueError, match=f"`{name}`"):
            cls(**kwargs)


def test_recompute_frequency_caches_root():
    var = keras.Variable(np.zeros((3, 4), "float32"))
    opt = OneSidedShampoo(precondition_frequency=3)
    apply = compiled_applier(opt, [var])
    root = [v for v in opt.variables if "root" in v.name][0]
    rng = np.random.default_rng(0)
    values = []
    for _ in range(5):
        g = rng.normal(size=(3, 4)).astype("float32")
        apply([g])
        values.append(np.asarray(root).copy())
    # recomputed at steps 1 and 4 only.
    np.testing.assert_array_equal(values[0], values[1])
    np.testing.assert_array_equal(values[1], values[2])
    assert not np.allclose(values[2], values[3])
    np.testing.assert_array_equal(values[3], values[4])


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        # Cached roots recomputed under `ops.cond`, staggered.
        # Statistics every other step (under `ops.cond`, bias-corrected by
        # the number of updates), through fit / resume / accumulation.
        (
            OneSidedShampoo,
            dict(precondition_frequency=2, statistics_frequency=2),
        ),
        # Two-sided, roots every third step, eigh. (The Newton root, the
        # default, runs in the one-sided battery above and is checked
        # against eigh in `test_newton_root_method_tracks_eigh`; with
        # p = 4 its compiled while loop would make this battery several
        # times slower.)
        (Shampoo, dict(precondition_frequency=3, root_method="eigh")),
    ],
)
def test_conformance(cls, kwargs):
    check_optimizer(
        cls,
        dict(learning_rate=0.05, **kwargs),
        fit_learning_rate=0.01,
        # The shared base's `block_size` is `max_preconditioner_dim` (or
        # None with `blocking=False`): both of those are in the config.
        skip_config_args=("block_size",),
    )


@pytest.mark.slow
@pytest.mark.multidevice
def test_data_parallel_equals_single_device():
    """Slow: OneSidedShampoo under DataParallel is also checked by the
    default ModelParallel test below; this one adds two-sided Shampoo."""
    result = run_on_devices(
        TRAJECTORY_SNIPPET
        + """
from keras_gr.optimizers import OneSidedShampoo, Shampoo
out = []
for cls in (OneSidedShampoo, Shampoo):  # two-sided: also 4 x 3 rank-deficient
    make = lambda: cls(learning_rate=0.01, precondition_frequency=2)
    single = trajectory(make)
    dp = trajectory(
        make,
        keras.distribution.DataParallel(devices=keras.distribution.list_devices()),
    )
    out.append(max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(single.weights, dp.weights)
    ))
RESULT = out
"""
    )
    # Max abs weight difference after 8 steps. The all-reduce changes the
    # gradient's summation order (~1e-7 relative); the eigendecompositions
    # of the rank-deficient early statistics carry that into the roots:
    # measured 1.0e-4 (one-sided) and 3.0e-5 (two-sided) on CPU, against
    # weights that move by > 1e-2.
    assert max(result) < 3e-4, result


@pytest.mark.multidevice
def test_model_parallel_shards_factor_blocks_and_equals_single_device():
    """ModelParallel on a (2, 4) mesh of 8 virtual devices: the kernels are
    sharded, the `(N, b, b)` factors are sharded along their block axis
    (over "model" when 4 divides N, else "batch"), each device holds only
    its share of the statistics and roots (memory per device checked
    exactly), and the trajectory equals the single-device one (and the
    DataParallel one)."""
    result = run_on_devices(
        TRAJECTORY_SNIPPET
        + """
import jax
from keras_gr.optimizers import OneSidedShampoo
devices = keras.distribution.list_devices()
mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
layout_map = keras.distribution.LayoutMap(mesh)
layout_map["dense/kernel"] = (None, "model")
layout_map["dense_1/kernel"] = ("model", None)
dist = keras.distribution.ModelParallel(
    layout_map=layout_map, batch_dim_name="batch"
)
def make():
    # Unstaggered: under a distribution a sharded factor is staggered as
    # one unit (single-device runs stagger per block), so only the
    # unstaggered schedule is the same on both.
    return OneSidedShampoo(
        learning_rate=0.01, precondition_frequency=2,
        max_preconditioner_dim=2, root_method="newton", stagger_roots=False,
    )
model = trajectory(make, dist)  # first: the layout map names its layers
single = trajectory(make)
dp = trajectory(make, keras.distribution.DataParallel(devices=devices))
opt = model.optimizer
kernel = [w for w in model.weights if w.path == "dense/kernel"][0]
RESULT = {
    "kernel": str(kernel.value.sharding.spec),
    "states": {
        v.path: [list(v.shape), str(v.value.sharding.spec)]
        for v in opt.variables
        if "statistics" in v.path or "root" in v.path
    },
    # Bytes of statistics + roots held by each device (its shards).
    "per_device_bytes": [
        sum(
            s.data.nbytes
            for v in opt.variables
            if "statistics" in v.path or "root" in v.path
            for s in v.value.addressable_shards
            if s.device.id == d.id
        )
        for d in jax.devices()
    ],
    "total_bytes": sum(
        4 * int(np.prod(v.shape))
        for v in opt.variables
        if "statistics" in v.path or "root" in v.path
    ),
    "diff": max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(single.weights, model.weights)
    ),
    "dp_diff": max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(single.weights, dp.weights)
    ),
    "moved": max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(single.weights, make_regression_model(0).weights)
    ),
}
"""
    )
    assert "model" in result["kernel"], result
    states = result["states"]
    # dense (8, 16): 4 blocks of 2 -> "model"; dense_1 (16, 12): 6 blocks
    # -> "batch"; dense_2 (12, 4): 2 blocks -> "batch".
    by_blocks = {shape[0]: spec for shape, spec in states.values()}
    assert "model" in by_blocks[4], states
    assert "batch" in by_blocks[6] and "batch" in by_blocks[2], states
    # Memory per device: statistics + roots (float32) of (4, 2, 2) / 4 +
    # (6, 2, 2) / 2 + (2, 2, 2) / 2 = 4 + 12 + 4 floats each, i.e.
    # 2 * 20 * 4 = 160 bytes on every device, against 384 bytes replicated.
    assert result["total_bytes"] == 384, result
    assert result["per_device_bytes"] == [160] * 8, result
    # Max abs weight difference after 8 steps (summation order differs
    # across devices; measured ~1e-6 on CPU), against weights that moved.
    assert result["moved"] > 1e-2, result
    assert result["diff"] < 1e-4, result
    assert result["dp_diff"] < 1e-4, result


@pytest.mark.multidevice
def test_sharded_roots_are_split_among_devices_without_collectives():
    """Root work under `keras.distribution`: a (64, 64) kernel in 8 blocks
    of 8 has its `(8, 8, 8)` factor sharded over the 8 devices. In the
    compiled (per-device, SPMD-partitioned) train step every Newton root
    iteration works on `f32[1, 8, 8]` (each device decomposes its own
    block, 1/8 of the work) and has no collective inside, with staggered
    roots (the factor is one staggering unit) and without. Before the
    factor was one unit, staggering sliced single blocks out of the
    sharded factor and XLA padded and all-reduced them inside every
    iteration (178 all-reduces in the step)."""
    result = run_on_devices(
        """
import re
import jax
import keras
import numpy as np
from keras_gr.optimizers import OneSidedShampoo

def compiled_step(stagger):
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices)
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, use_bias=False)]
    )
    opt = OneSidedShampoo(
        0.01, precondition_frequency=10, max_preconditioner_dim=8,
        stagger_roots=stagger, root_method="newton",
    )
    model.compile(optimizer=opt, loss="mse", jit_compile=True)
    x = np.random.default_rng(0).normal(size=(64, 64)).astype("float32")
    model.fit(x, x, batch_size=64, epochs=1, verbose=0)
    state = tuple(
        [v.value for v in vs]
        for vs in (model.trainable_variables, model.non_trainable_variables,
                   opt.variables, model.metrics_variables)
    )
    hlo = jax.jit(model.train_step).lower(state, (x, x)).compile().as_text()
    keras.distribution.set_distribution(None)
    computation = r"\\n%?([\\w.-]+) [^\\n]*\\{\\n(.*?)\\n\\}"
    comps = dict(
        (m.group(1), m.group(2))
        for m in re.finditer(computation, hlo, re.S)
    )
    bodies = re.findall(r"while\\([^\\n]*body=%?([\\w.-]+)", hlo)
    def closure(name, seen):
        if name in seen or name not in comps:
            return ""
        seen.add(name)
        text = comps[name]
        callees = re.findall(
            r"(?:calls|to_apply|body|condition|branch_computations)"
            r"=\\{?%?([\\w.-]+)",
            text,
        )
        for callee in callees:
            text += closure(callee, seen)
        return text
    body_text = "".join(closure(b, set()) for b in bodies)
    return {
        "factor_spec": [
            str(v.value.sharding.spec) for v in opt.variables
            if v.path.endswith("_root")
        ],
        "loops": len(bodies),
        "body_shapes": sorted(set(re.findall(r"f32\\[\\d+,8,8\\]", body_text))),
        "body_collectives": len(re.findall(
            r"all-reduce|all-gather|collective-permute|all-to-all", body_text)),
        "step_all_reduces": hlo.count("all-reduce("),
    }

RESULT = {"staggered": compiled_step(True), "unstaggered": compiled_step(False)}
"""
    )
    for name, r in result.items():
        assert r["factor_spec"] == ["P('batch', None, None)"], r
        assert r["loops"] >= 1, (name, r)
        assert r["body_shapes"] == ["f32[1,8,8]"], (name, r)
        assert r["body_collectives"] == 0, (name, r)
    assert (
        result["staggered"]["step_all_reduces"]
        == result["unstaggered"]["step_all_reduces"]
    ), result


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="JAX's CPU eigh rule"
)
@pytest.mark.parametrize(
    "shape, expect_eigh", [((128, 384), False), ((512, 640), True)]
)
def test_auto_roots_small_blocks_without_eigh_on_jax_cpu(shape, expect_eigh):
    """Under JAX on CPU the compiled step of the default `"auto"` root
    contains no `eigh` for factors under 257 (its OpenBLAS threads would
    keep spinning into the next steps) and does for larger ones."""
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("the rule is for JAX on CPU")
    kernel = keras.Variable(np.ones(shape, "float32"), name="kernel")
    opt = OneSidedShampoo(1e-3, precondition_frequency=1)
    opt.build([kernel])
    grads = [np.full(shape, 0.1, "float32")]
    jaxpr = jax.make_jaxpr(opt.stateless_apply)(
        [v.value for v in opt.variables], grads, [kernel.value]
    )
    assert ("eigh" in str(jaxpr)) == expect_eigh
