"""No new program per step: compile and retrace counts of warm optimizers.

Issue 29: an eager `optimizer.apply` loop (and `model.fit(jit_compile=
False)` on JAX) compiled a new XLA program at every root step of
`OneSidedShampoo` and `Shampoo` (the coupled Newton root's
`ops.while_loop` got new Python closures at every call, so JAX's cache of
compiled loops never hit): compile time on every root step, memory
growing with every program, and crashes after ~1,000 eager steps.

For every keras_gr optimizer, after a warm-up that visits every step kind
(every staggered root offset, statistics and no-statistics steps), 40
more eager steps must compile nothing on JAX (counted with the public
`jax.monitoring` listener on backend compilations) and must not retrace a
`tf.function` on TensorFlow (`experimental_get_tracing_count`).
"""

import keras
import numpy as np
import pytest

from keras_gr.optimizers import AdagradNorm
from keras_gr.optimizers import FullMatrixAdagrad
from keras_gr.optimizers import LoraRite
from keras_gr.optimizers import OneSidedShampoo
from keras_gr.optimizers import Shampoo

WARM_STEPS = 8
COUNTED_STEPS = 40

# Small periods so the warm-up visits every root offset (twice) and both
# statistics and no-statistics steps; blocks of 4 give several staggered
# root groups; `root_method="newton"` is the default (the loop that
# recompiled).
_SHAMPOO = dict(
    precondition_frequency=4,
    statistics_frequency=2,
    max_preconditioner_dim=4,
)

OPTIMIZERS = {
    "one_sided_shampoo": lambda: OneSidedShampoo(**_SHAMPOO),
    "shampoo": lambda: Shampoo(**_SHAMPOO),
    "one_sided_shampoo_eigh": lambda: OneSidedShampoo(
        root_method="eigh", **_SHAMPOO
    ),
    "one_sided_shampoo_every_step": lambda: OneSidedShampoo(
        precondition_frequency=1, max_preconditioner_dim=4
    ),
    "adagrad_norm": lambda: AdagradNorm(),
    "full_matrix_adagrad": lambda: FullMatrixAdagrad(),
    "lora_rite": lambda: LoraRite(),
}


def _variables(lora):
    """Trainable variables of a small two-layer model (LoRA on the first
    layer for `LoraRite`)."""
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, name="dense_a"),
            keras.layers.Dense(4, name="dense_b"),
        ]
    )
    if lora:
        model.layers[0].enable_lora(2)
    return list(model.trainable_variables)


def _gradients(variables, rng):
    return [
        rng.standard_normal(tuple(v.shape)).astype("float32") for v in variables
    ]


def _count_jax_compiles(opt, variables, rng):
    import jax

    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    def step():
        grads = [
            keras.ops.convert_to_tensor(g) for g in _gradients(variables, rng)
        ]
        opt.apply(grads, variables)

    for _ in range(WARM_STEPS):
        step()
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for _ in range(COUNTED_STEPS):
            step()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return len(compiles)


def _count_tf_retraces(opt, variables, rng):
    import tensorflow as tf

    @tf.function
    def step(grads):
        opt.apply(grads, variables)

    for _ in range(WARM_STEPS):
        step([tf.constant(g) for g in _gradients(variables, rng)])
    traced = step.experimental_get_tracing_count()
    for _ in range(COUNTED_STEPS):
        step([tf.constant(g) for g in _gradients(variables, rng)])
    return step.experimental_get_tracing_count() - traced


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_warm_eager_steps_compile_nothing(name):
    rng = np.random.default_rng(0)
    variables = _variables(lora=name == "lora_rite")
    opt = OPTIMIZERS[name]()
    if keras.backend.backend() == "jax":
        count = _count_jax_compiles(opt, variables, rng)
    elif keras.backend.backend() == "tensorflow":
        count = _count_tf_retraces(opt, variables, rng)
    else:
        pytest.skip("compile counts are checked on jax and tensorflow")
    assert count == 0, (
        f"{name}: {count} compilations/retraces in {COUNTED_STEPS} warm steps"
    )
    for v in variables:
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(v)))
