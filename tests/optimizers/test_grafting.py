"""Tests of `keras_gr.optimizers.grafting`: the one Adam of keras_gr."""

import keras
import numpy as np
import pytest

from keras_gr.optimizers import LoraRite
from keras_gr.optimizers import OneSidedShampoo
from keras_gr.optimizers import grafting


def test_adam_direction_equals_keras_adam():
    """`w - lr * adam_direction(momentum_direction(m_t), v_t)` over six
    steps is Keras's `Adam` step to float32 rounding."""
    lr, beta_1, beta_2, epsilon = 0.05, 0.8, 0.99, 1e-7
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 3)).astype("float32")
    grads = [rng.normal(size=(4, 3)).astype("float32") for _ in range(6)]
    var = keras.Variable(w0)
    adam = keras.optimizers.Adam(lr, beta_1=beta_1, beta_2=beta_2)
    w, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    for t, g in enumerate(grads, start=1):
        adam.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        direction = grafting.momentum_direction(m, g, beta_1, t, False)
        update = grafting.adam_direction(direction, v, beta_2, epsilon, t)
        w = w - lr * keras.ops.convert_to_numpy(update)
        np.testing.assert_allclose(
            w, keras.ops.convert_to_numpy(var), rtol=1e-6, atol=1e-7
        )
    assert np.abs(w - w0).max() > 0.1


@pytest.mark.parametrize(
    "make",
    [
        lambda: OneSidedShampoo(learning_rate=0.05),
        lambda: LoraRite(learning_rate=0.05),
    ],
    ids=["OneSidedShampoo", "LoraRite"],
)
def test_every_adam_fallback_is_grafting_adam_direction(monkeypatch, make):
    """Shampoo's Adam fallback (a 1-D variable) and LoraRite's (a
    variable outside any LoRA pair) both step through
    `grafting.adam_direction` (before issue 30 LoraRite wrote its own
    copy of Keras's Adam)."""
    calls = []
    original = grafting.adam_direction

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(grafting, "adam_direction", spy)
    var = keras.Variable(np.ones((3,), "float32"))
    opt = make()
    opt.apply_gradients([(keras.ops.convert_to_tensor([1.0, 2.0, 3.0]), var)])
    assert calls
    # Adam's first step: -lr * sign(g) (up to epsilon).
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(var), 1.0 - 0.05, rtol=1e-5
    )
