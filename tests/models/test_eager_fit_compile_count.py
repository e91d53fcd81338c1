"""Warm eager `fit` compiles nothing new: every model, both backends.

Issue 26 ("beyond the list") and issue 29: an eager training loop that
compiles a new program at some steps (a conditional or loop whose Python
closures are new at every call, a data-dependent constant baked into a
program) costs compile time on those steps, grows memory with every
program and ends in a crash on a long run. `model.fit(jit_compile=False)`
on JAX runs the step op by op; each op is compiled once and then comes
from JAX's cache, so after a warm-up `fit` a second `fit` on batches of
the same shapes must compile nothing (counted with the public
`jax.monitoring` listener on backend compilations). On TensorFlow the
step is a `tf.function`: a second `fit` must not trace it again (a
Python counter inside `train_step` counts traces).

Every keras_gr model trained with Keras `fit` is here, plus a functional
model through the three trainable layers (`Laurel`, `LoopedBlock`,
`LatentCRF`); the optimizers have their own check in
`tests/optimizers/test_compile_count.py`.
"""

import keras
import numpy as np
import pytest

from keras_gr.data import icl_regression_problems
from keras_gr.layers import LatentCRF
from keras_gr.layers import Laurel
from keras_gr.layers import LoopedBlock
from keras_gr.models import LoopedICLRegressor

JAX = keras.backend.backend() == "jax"
TF = keras.backend.backend() == "tensorflow"


def _count(model, fit):
    """Compilations (JAX) or train-step traces (TensorFlow) during `fit()`,
    after one warm-up `fit()` of the same shapes."""
    if TF:
        # Keras wraps `train_step` in a `tf.function` it keeps private: a
        # Python counter inside the step counts its traces.
        traces = []
        train_step = model.train_step

        def counting_train_step(data):
            traces.append(1)
            return train_step(data)

        model.train_step = counting_train_step
        fit()
        traced = len(traces)
        assert traced > 0, "the counter never ran: it counts nothing"
        fit()
        return len(traces) - traced
    fit()
    if JAX:
        import jax

        compiles = []

        def listener(event, duration, **kwargs):
            if event == "/jax/core/compile/backend_compile_duration":
                compiles.append(duration)

        jax.monitoring.register_event_duration_secs_listener(listener)
        try:
            fit()
        finally:
            jax.monitoring.unregister_event_duration_listener(listener)
        return len(compiles)
    pytest.skip("compile counts are checked on jax and tensorflow")


def _assert_none(model, fit, name):
    count = _count(model, fit)
    assert count == 0, f"{name}: {count} compilations/retraces in a warm fit"
    for v in model.trainable_variables:
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(v))), v.path


def test_looped_icl_regressor():
    data = icl_regression_problems(16, dim=3, kappa=2)
    prompts, targets = data["prompts"], data["targets"]
    model = LoopedICLRegressor(depth=2)
    model.compile(optimizer="adam", loss="mse", jit_compile=False)

    def fit():
        model.fit(prompts, targets, batch_size=8, epochs=2, verbose=0)

    _assert_none(model, fit, "LoopedICLRegressor")


def test_layers_in_a_functional_model():
    keras.utils.set_random_seed(0)
    tokens = keras.Input((6, 8))
    dense = keras.layers.Dense(8)
    joined = Laurel("rw_lr", rank=2)([tokens, dense(tokens)])
    looped = LoopedBlock(
        [keras.layers.Dense(8, activation="tanh")], num_loops=2
    )(joined)
    grid = keras.layers.Reshape((6, 8, 1))(looped)
    refined = LatentCRF(num_steps=2)(grid)
    output = keras.layers.Dense(1)(keras.layers.Flatten()(refined))
    model = keras.Model(tokens, output)
    model.compile(optimizer="adam", loss="mse", jit_compile=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6, 8)).astype("float32")
    y = rng.standard_normal((16, 1)).astype("float32")

    def fit():
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)

    _assert_none(model, fit, "Laurel + LoopedBlock + LatentCRF")


def test_salt_distiller():
    from tests.models.test_salt_distiller import lm_data
    from tests.models.test_salt_distiller import make

    distiller = make(n_kd=3)
    distiller.compile(optimizer="adam", jit_compile=False)
    x, y, w = lm_data(16)

    # Four steps a call: the first call crosses the KD switch (step 3), so
    # the counted call runs after it, in the full-data phase.
    def fit():
        distiller.fit(x, y, sample_weight=w, batch_size=4, verbose=0)

    _assert_none(distiller, fit, "SaltDistiller")


def test_softsrv(tiny_preset):
    import keras_hub

    from keras_gr.models import SoftSRV

    causal_lm = keras_hub.models.CausalLM.from_preset(tiny_preset)
    model = SoftSRV(
        causal_lm,
        prompt_length=4,
        parametrization="nsp",
        sequence_length=8,
    )
    x, y, w = model.preprocess(["zebra 7", "lion 3", "ant 1", "owl 9"])
    model.compile(optimizer="adam", jit_compile=False)

    def fit():
        model.fit(x, y, sample_weight=w, batch_size=2, verbose=0)

    _assert_none(model, fit, "SoftSRV")
