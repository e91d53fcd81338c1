"""Shared conformance checks for every keras_gr layer and optimizer.

Every public component calls one of these from its own test file, so a new
component gets the whole battery of Keras checks for free:

* `check_layer(cls, init_kwargs, input_data)`: configuration round trip
  (`get_config` / `from_config` / `keras.saving`), every `__init__` argument
  present in the config, eager call, functional (symbolic) model, `predict`
  (compiled) equal to eager, a `fit` step under `jit_compile=True`, mixed
  precision (`mixed_bfloat16`), and `.keras` save / load with identical
  outputs.
* `check_optimizer(cls, init_kwargs)`: convergence on an ill-conditioned
  quadratic and on Rosenbrock, configuration round trip, `fit` under
  `jit_compile=True` lowers the loss, save mid-training / load / continue
  equals an uninterrupted run (weights *and* optimizer state),
  `gradient_accumulation_steps` equals one step on the mean gradient, and
  EMA, clipnorm, global_clipnorm, loss scaling and mixed precision accepted.
* `run_on_devices(code, num_devices=8)` (in `tests/multidevice.py`): runs a
  snippet in a fresh JAX process with virtual CPU devices and returns what it
  stored in `RESULT`.

Each check raises `AssertionError` with a message that names the failing
property; `tests/test_conformance.py` proves that each one catches a
deliberately broken component.
"""

import inspect
import os
import tempfile

import keras
import numpy as np

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _to_numpy(x):
    if isinstance(x, (list, tuple)):
        return [_to_numpy(v) for v in x]
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in x.items()}
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")))


def _assert_close(a, b, atol, rtol, what):
    a_list, b_list = _as_list(a), _as_list(b)
    assert len(a_list) == len(b_list), f"{what}: output structure differs"
    for i, (x, y) in enumerate(zip(a_list, b_list)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape, f"{what}: shape {x.shape} != {y.shape}"
        if not np.allclose(x, y, atol=atol, rtol=rtol):
            err = float(np.max(np.abs(x - y)))
            raise AssertionError(
                f"{what}: outputs differ (output {i}, max abs diff {err:.3g}, "
                f"atol={atol}, rtol={rtol})"
            )


def _init_arg_names(cls):
    names = []
    for klass in cls.__mro__:
        if klass in (keras.layers.Layer, keras.optimizers.Optimizer, object):
            break
        sig = inspect.signature(klass.__init__)
        for name, param in sig.parameters.items():
            if name == "self" or param.kind in (
                param.VAR_KEYWORD,
                param.VAR_POSITIONAL,
            ):
                continue
            if name not in names:
                names.append(name)
        # Stop at the first class that does not forward **kwargs upwards.
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return names


def _check_config_has_init_args(cls, config, skip=()):
    missing = [
        n for n in _init_arg_names(cls) if n not in config and n not in skip
    ]
    assert not missing, (
        f"{cls.__name__}.get_config() does not record __init__ "
        f"argument(s) {missing}: from_config would silently use defaults"
    )


def _symbolic_inputs(input_data):
    return [
        keras.Input(shape=np.shape(x)[1:], dtype=str(np.asarray(x).dtype))
        for x in _as_list(input_data)
    ]


def _call(layer_or_model, input_data, call_kwargs):
    args = input_data if not isinstance(input_data, tuple) else list(input_data)
    return layer_or_model(args, **call_kwargs)


def _functional_model(layer, input_data, call_kwargs):
    inputs = _symbolic_inputs(input_data)
    x = inputs if isinstance(input_data, (list, tuple)) else inputs[0]
    outputs = layer(x, **call_kwargs)
    return keras.Model(inputs, outputs)


def _targets_like(outputs, seed):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=np.shape(o)).astype("float32")
        for o in _as_list(outputs)
    ]


# --------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------


def check_layer(
    cls,
    init_kwargs,
    input_data,
    *,
    call_kwargs=None,
    expected_output_shape=None,
    skip_config_args=(),
    run_training=True,
    run_mixed_precision=True,
    atol=1e-5,
    rtol=1e-5,
    custom_objects=None,
):
    """Runs the whole layer conformance battery on `cls(**init_kwargs)`.

    Args:
        cls: the layer class (must be registered serializable).
        init_kwargs: constructor keyword arguments.
        input_data: a NumPy array, or a list of arrays for multi-input layers
            (passed to the layer as a list, like `keras.layers.Add`).
        call_kwargs: extra keyword arguments of `call` (constants only).
        expected_output_shape: the shape (or list of shapes) the eager call
            must return; `None` skips the check.
        skip_config_args: `__init__` arguments that legitimately do not
            appear in `get_config` (documented by the caller).
        run_training: whether the layer has trainable weights that a `fit`
            step must change.
        run_mixed_precision: whether to run the `mixed_bfloat16` checks.
        atol, rtol: tolerance for "identical outputs".
        custom_objects: passed to `keras.models.load_model`.
    """
    call_kwargs = dict(call_kwargs or {})
    keras.utils.set_random_seed(0)

    # 1. eager call and output shape.
    layer = cls(**init_kwargs)
    eager_out = _call(layer, input_data, call_kwargs)
    eager_np = _to_numpy(eager_out)
    for o in _as_list(eager_np):
        assert np.all(np.isfinite(o)), f"{cls.__name__}: non-finite output"
    if expected_output_shape is not None:
        got = [tuple(np.shape(o)) for o in _as_list(eager_np)]
        if isinstance(expected_output_shape, list):
            want = [tuple(s) for s in expected_output_shape]
        else:
            want = [tuple(expected_output_shape)]
        assert got == want, f"{cls.__name__}: output shape {got} != {want}"

    # 2. configuration round trip.
    config = layer.get_config()
    _check_config_has_init_args(cls, config, skip_config_args)
    clone = cls.from_config(config)
    assert clone.get_config() == config, (
        f"{cls.__name__}: from_config(get_config()).get_config() differs"
    )
    serialized = keras.saving.serialize_keras_object(layer)
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is cls, (
        f"{cls.__name__}: keras.saving round trip gave {type(revived)}; "
        "is the class registered with register_keras_serializable?"
    )
    _call(clone, input_data, call_kwargs)
    assert len(clone.weights) == len(layer.weights), (
        f"{cls.__name__}: clone has {len(clone.weights)} weights, "
        f"original has {len(layer.weights)}"
    )
    clone.set_weights(layer.get_weights())
    _assert_close(
        _to_numpy(_call(clone, input_data, call_kwargs)),
        eager_np,
        atol,
        rtol,
        f"{cls.__name__}: from_config clone with copied weights",
    )

    # 3. functional model, compiled predict equal to eager.
    model = _functional_model(layer, input_data, call_kwargs)
    _assert_close(
        _to_numpy(_call(model, input_data, {})),
        eager_np,
        atol,
        rtol,
        f"{cls.__name__}: functional model vs eager layer",
    )
    batch = np.shape(_as_list(input_data)[0])[0]
    predicted = model.predict(input_data, batch_size=batch, verbose=0)
    _assert_close(
        _to_numpy(predicted),
        eager_np,
        max(atol, 1e-5),
        max(rtol, 1e-4),
        f"{cls.__name__}: compiled predict vs eager",
    )

    # 4. `.keras` save / load with identical outputs.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        loaded = keras.models.load_model(path, custom_objects=custom_objects)
    _assert_close(
        _to_numpy(_call(loaded, input_data, {})),
        eager_np,
        atol,
        rtol,
        f"{cls.__name__}: .keras save/load",
    )

    # 5. a fit step under jit_compile=True changes the trainable weights.
    if run_training:
        _check_fit_step(model, input_data, eager_np, cls.__name__)

    # 6. mixed precision.
    if run_mixed_precision:
        mp_layer = cls(**{**init_kwargs, "dtype": "mixed_bfloat16"})
        mp_out = _call(mp_layer, input_data, call_kwargs)
        for o in _as_list(mp_out):
            assert keras.backend.standardize_dtype(o.dtype) == "bfloat16", (
                f"{cls.__name__}: mixed_bfloat16 output has dtype {o.dtype}"
            )
            assert np.all(np.isfinite(_to_numpy(o))), (
                f"{cls.__name__}: non-finite mixed precision output"
            )
        for w in mp_layer.weights:
            assert keras.backend.standardize_dtype(w.dtype) == "float32", (
                f"{cls.__name__}: variable {w.path} is {w.dtype} under "
                "mixed_bfloat16; variables must stay float32"
            )
        if run_training:
            mp_model = _functional_model(mp_layer, input_data, call_kwargs)
            _check_fit_step(mp_model, input_data, eager_np, cls.__name__)
    return layer


def _check_fit_step(model, input_data, reference_out, name):
    before = [np.array(w) for w in model.trainable_weights]
    assert before, f"{name}: run_training=True but no trainable weights"
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=1e-2),
        loss="mse",
        jit_compile=True,
    )
    targets = _targets_like(reference_out, seed=1)
    y = targets if len(targets) > 1 else targets[0]
    batch = np.shape(_as_list(input_data)[0])[0]
    try:
        history = model.fit(
            input_data, y, batch_size=batch, epochs=2, verbose=0, shuffle=False
        )
    except ValueError as err:  # TensorFlow refuses an all-None gradient.
        if "No gradients" not in str(err):
            raise
        raise AssertionError(
            f"{name}: a jit-compiled fit step changed no weight (no gradient "
            "reached any trainable weight)"
        ) from err
    losses = history.history["loss"]
    assert all(np.isfinite(losses)), f"{name}: non-finite fit loss {losses}"
    after = [np.array(w) for w in model.trainable_weights]
    changed = any(
        not np.array_equal(a, b) for a, b in zip(before, after, strict=True)
    )
    assert changed, f"{name}: a jit-compiled fit step changed no weight"


# --------------------------------------------------------------------------
# optimizers
# --------------------------------------------------------------------------


def quadratic_problem(shape=(6, 4), condition=100.0, seed=0):
    """`f(W) = 0.5 * sum(d * (W - W*)^2)` with curvatures `d` log-uniform in
    `[1 / condition, 1]`. Returns `(w0, loss_fn)`; `loss_fn(w, ops)` works on
    NumPy arrays (`ops=np`) and on Keras tensors (`ops=keras.ops`)."""
    rng = np.random.default_rng(seed)
    d = np.exp(rng.uniform(-np.log(condition), 0.0, size=shape))
    d = d.astype("float32")
    w_star = rng.normal(size=shape).astype("float32")
    w0 = np.zeros(shape, dtype="float32")

    def loss_fn(w, ops=np):
        return 0.5 * ops.sum(d * (w - w_star) ** 2)

    return w0, loss_fn


def rosenbrock_problem(shape=(2, 3)):
    """Chained Rosenbrock over the flattened variable; minimum 0 at ones."""
    size = int(np.prod(shape))
    w0 = np.full(shape, -0.5, dtype="float32")
    w0.flat[::2] = 0.5

    def loss_fn(w, ops=np):
        x = ops.reshape(w, (size,))
        head, tail = x[:-1], x[1:]
        return ops.sum(100.0 * (tail - head**2) ** 2 + (1.0 - head) ** 2)

    return w0, loss_fn


class _ProblemLayer(keras.layers.Layer):
    """Holds the one variable of a test problem and outputs its loss."""

    def __init__(self, w0, loss_fn, **kwargs):
        super().__init__(**kwargs)
        self._w0 = w0
        self._loss_fn = loss_fn

    def build(self, input_shape):
        self.w = self.add_weight(
            shape=self._w0.shape,
            initializer=keras.initializers.Constant(self._w0),
            name="w",
        )

    def call(self, x):
        return keras.ops.zeros_like(x) + self._loss_fn(self.w, ops=keras.ops)


def minimize(optimizer, problem, steps, jit_compile=True):
    """Minimises a `(w0, loss_fn)` problem with `optimizer` for `steps`
    compiled `fit` steps; returns `(initial_loss, final_loss)`."""
    w0, loss_fn = problem
    inputs = keras.Input((1,))
    model = keras.Model(inputs, _ProblemLayer(w0, loss_fn)(inputs))
    model.compile(
        optimizer=optimizer,
        loss=lambda y_true, y_pred: keras.ops.mean(y_pred),
        jit_compile=jit_compile,
    )
    ones = np.ones((steps, 1), dtype="float32")
    model.fit(ones, ones, batch_size=1, epochs=1, verbose=0, shuffle=False)
    final = np.asarray(model.weights[0], dtype="float64")
    return float(loss_fn(w0.astype("float64"))), float(loss_fn(final))


def make_regression_model(seed=0, dtype=None):
    """A small MLP: matrix kernels, biases and a LayerNorm's 1-D weights."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16, activation="tanh", dtype=dtype)(inputs)
    x = keras.layers.LayerNormalization(dtype=dtype)(x)
    x = keras.layers.Dense(12, activation="tanh", dtype=dtype)(x)
    outputs = keras.layers.Dense(4, dtype=dtype)(x)
    return keras.Model(inputs, outputs)


def regression_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    w = rng.normal(size=(8, 4)).astype("float32")
    y = np.tanh(x @ w).astype("float32")
    return x, y


def _optimizer_state(optimizer):
    return [np.array(v) for v in optimizer.variables]


def check_optimizer(
    cls,
    init_kwargs,
    *,
    quadratic_steps=200,
    quadratic_tol=1e-2,
    rosenbrock_steps=300,
    rosenbrock_tol=0.2,
    model_fn=make_regression_model,
    data_fn=regression_data,
    resume_atol=1e-6,
    skip_config_args=(),
    fit_learning_rate=None,
    resume_via="keras_file",
):
    """Runs the whole optimizer conformance battery on `cls(**init_kwargs)`.

    Args:
        cls: the optimizer class (registered serializable).
        init_kwargs: constructor keyword arguments, used by every check.
        quadratic_steps, quadratic_tol: the final quadratic loss must be below
            `quadratic_tol` times the initial loss after this many steps.
        rosenbrock_steps, rosenbrock_tol: same for chained Rosenbrock.
        model_fn, data_fn: the model and data of the `fit` checks.
        resume_atol: tolerance of save / load / continue vs uninterrupted.
        skip_config_args: `__init__` arguments legitimately absent from
            `get_config`.
        fit_learning_rate: overrides `learning_rate` for the `fit` checks.
        resume_via: how the mid-training state is carried over in the
            resume check: `"keras_file"` (a `.keras` save / load) or
            `"weights"` (model weights + optimizer variables copied into a
            fresh model; for models whose `.keras` file does not round-trip
            every weight, e.g. Keras LoRA layers, which save the factors
            merged into the kernel). With `"weights"` the optimizer state
            must still survive a `.keras` round trip unchanged.
    """
    name = cls.__name__
    fit_kwargs = dict(init_kwargs)
    if fit_learning_rate is not None:
        fit_kwargs["learning_rate"] = fit_learning_rate

    # 1. convergence, through a compiled fit on a one-variable model.
    for problem, steps, tol, label in (
        (quadratic_problem(), quadratic_steps, quadratic_tol, "quadratic"),
        (rosenbrock_problem(), rosenbrock_steps, rosenbrock_tol, "Rosenbrock"),
    ):
        first, last = minimize(cls(**init_kwargs), problem, steps)
        assert np.isfinite(last) and last < tol * first, (
            f"{name}: {label} loss {first:.4g} -> {last:.4g} after {steps} "
            f"steps (needs < {tol} x initial)"
        )

    # 2. configuration round trip.
    opt = cls(**init_kwargs)
    config = opt.get_config()
    _check_config_has_init_args(cls, config, skip_config_args)
    clone = cls.from_config(config)
    assert clone.get_config() == config, (
        f"{name}: from_config(get_config()).get_config() differs"
    )
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(revived) is cls and revived.get_config() == config, (
        f"{name}: keras.optimizers serialize/deserialize round trip failed"
    )

    # 3. jit fit lowers the loss; 4. save mid-training, load, continue
    # equals the uninterrupted run.
    x, y = data_fn()
    _check_save_resume(
        cls, fit_kwargs, model_fn, x, y, resume_atol, resume_via=resume_via
    )

    # 5. gradient accumulation == one step on the mean gradient.
    _check_gradient_accumulation(cls, init_kwargs)

    # 6. Keras features accepted: EMA + clipnorm + accumulation in one run,
    # global_clipnorm in another, loss scaling under mixed precision.
    for extra in (
        {
            "use_ema": True,
            "ema_overwrite_frequency": 2,
            "clipnorm": 1.0,
            "gradient_accumulation_steps": 2,
        },
        {"global_clipnorm": 1.0},
    ):
        m = model_fn(seed=0)
        m.compile(
            optimizer=cls(**fit_kwargs, **extra), loss="mse", jit_compile=True
        )
        h = m.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        assert np.all(np.isfinite(h.history["loss"])), (
            f"{name}: non-finite loss with {extra}"
        )
    m = model_fn(seed=0, dtype="mixed_bfloat16")
    m.compile(
        optimizer=keras.optimizers.LossScaleOptimizer(cls(**fit_kwargs)),
        loss="mse",
        jit_compile=True,
    )
    before = [np.array(w) for w in m.trainable_weights]
    h = m.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    assert np.all(np.isfinite(h.history["loss"])), (
        f"{name}: non-finite loss under mixed_bfloat16 + LossScaleOptimizer"
    )
    assert any(
        not np.array_equal(a, np.array(b))
        for a, b in zip(before, m.trainable_weights, strict=True)
    ), f"{name}: no weight changed under LossScaleOptimizer"


def _check_save_resume(
    cls, fit_kwargs, model_fn, x, y, atol, resume_via="keras_file"
):
    name = cls.__name__

    def fresh():
        m = model_fn(seed=0)
        m.compile(optimizer=cls(**fit_kwargs), loss="mse", jit_compile=True)
        return m

    straight = fresh()
    first = straight.evaluate(x, y, verbose=0)
    straight.fit(x, y, batch_size=16, epochs=4, verbose=0, shuffle=False)
    last = straight.evaluate(x, y, verbose=0)
    assert np.isfinite(last) and last < first, (
        f"{name}: jit fit did not lower the loss ({first:.4g} -> {last:.4g})"
    )

    first_half = fresh()
    first_half.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mid.keras")
        first_half.save(path)
        loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is cls, (
        f"{name}: loaded model has optimizer {type(loaded.optimizer)}"
    )
    _assert_close(
        _optimizer_state(loaded.optimizer),
        _optimizer_state(first_half.optimizer),
        0.0,
        0.0,
        f"{name}: optimizer state after .keras save/load",
    )
    resumed = loaded
    if resume_via == "weights":
        resumed = fresh()
        resumed.optimizer.build(resumed.trainable_variables)
        resumed.set_weights(first_half.get_weights())
        resumed.optimizer.set_weights(_optimizer_state(loaded.optimizer))
    resumed.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    _assert_close(
        [np.array(w) for w in resumed.weights],
        [np.array(w) for w in straight.weights],
        atol,
        0.0,
        f"{name}: save/load/continue vs uninterrupted training (weights)",
    )
    _assert_close(
        _optimizer_state(resumed.optimizer),
        _optimizer_state(straight.optimizer),
        max(atol, 1e-6),
        1e-5,
        f"{name}: save/load/continue vs uninterrupted training (state)",
    )


def _check_gradient_accumulation(cls, init_kwargs, shape=(5, 3)):
    """Four micro-steps with `gradient_accumulation_steps=2` must equal two
    steps on the mean gradients (weights and optimizer state), through the
    same `apply_gradients` path that `fit` uses."""
    name = cls.__name__
    rng = np.random.default_rng(3)
    w0 = rng.normal(size=shape).astype("float32")
    grads = [rng.normal(size=shape).astype("float32") for _ in range(4)]

    accumulated = keras.Variable(w0)
    acc_opt = cls(**init_kwargs, gradient_accumulation_steps=2)
    acc_opt.build([accumulated])
    for g in grads:
        acc_opt.apply_gradients([(keras.ops.convert_to_tensor(g), accumulated)])

    plain = keras.Variable(w0)
    opt = cls(**init_kwargs)
    opt.build([plain])
    for g1, g2 in zip(grads[0::2], grads[1::2], strict=True):
        mean = keras.ops.convert_to_tensor((g1 + g2) / 2)
        opt.apply_gradients([(mean, plain)])
    _assert_close(
        np.array(accumulated),
        np.array(plain),
        1e-5,
        1e-5,
        f"{name}: gradient_accumulation_steps=2 vs mean-gradient steps",
    )
