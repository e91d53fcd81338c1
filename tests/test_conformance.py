"""The shared conformance helpers pass on plain Keras components and catch
deliberately broken ones."""

import keras
import numpy as np
import pytest

from tests import conformance
from tests.multidevice import TRAJECTORY_SNIPPET
from tests.multidevice import assert_same_weights
from tests.multidevice import run_on_devices

X = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")


# ---------------------------------------------------------------- layers


def test_check_layer_passes_on_dense():
    conformance.check_layer(
        keras.layers.Dense,
        {"units": 3, "activation": "tanh"},
        X,
        expected_output_shape=(4, 3),
        # Keras's Dense omits these from its config while they are default.
        skip_config_args=("activity_regularizer", "lora_rank", "lora_alpha"),
    )


def test_check_layer_passes_on_multi_input_add():
    conformance.check_layer(
        keras.layers.Add, {}, [X, X * 2], run_training=False
    )


@keras.saving.register_keras_serializable(package="keras_gr_tests")
class ScaleDroppedFromConfig(keras.layers.Layer):
    def __init__(self, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w * self.scale

    def get_config(self):
        # "Forgets" `scale`: from_config silently uses 1.0.
        return super().get_config()


def test_check_layer_catches_dropped_config_argument():
    with pytest.raises(AssertionError, match="scale"):
        conformance.check_layer(ScaleDroppedFromConfig, {"scale": 3.0}, X)


@keras.saving.register_keras_serializable(package="keras_gr_tests")
class CastsToFloat32(keras.layers.Layer):
    """Ignores the compute dtype: breaks mixed precision."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return keras.ops.cast(x, "float32") * keras.ops.cast(self.w, "float32")


def test_check_layer_catches_broken_mixed_precision():
    with pytest.raises(AssertionError, match="mixed_bfloat16"):
        conformance.check_layer(CastsToFloat32, {}, X)


class NotRegistered(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def test_check_layer_catches_unregistered_layer():
    with pytest.raises((AssertionError, TypeError, ValueError)):
        conformance.check_layer(NotRegistered, {}, X, run_training=False)


@keras.saving.register_keras_serializable(package="keras_gr_tests")
class FrozenByMistake(keras.layers.Layer):
    """Creates its weight non-trainable: a fit step changes nothing."""

    def build(self, input_shape):
        self.w = self.add_weight(
            shape=(input_shape[-1],), initializer="ones", trainable=False
        )
        self.v = self.add_weight(
            shape=(input_shape[-1],), initializer="zeros", trainable=True
        )

    def call(self, x):
        # `v` only enters through a zero-gradient path.
        return x * self.w + keras.ops.stop_gradient(self.v)


def test_check_layer_catches_untrainable_layer():
    with pytest.raises(AssertionError, match="changed no weight"):
        conformance.check_layer(FrozenByMistake, {}, X)


# ------------------------------------------------------------ optimizers

ADAM = {"learning_rate": 0.05}


def test_check_optimizer_passes_on_adam():
    conformance.check_optimizer(
        keras.optimizers.Adam, ADAM, fit_learning_rate=0.01
    )


@keras.saving.register_keras_serializable(package="keras_gr_tests")
class ForgetfulAdam(keras.optimizers.Adam):
    """Does not restore its state when loaded: resuming restarts Adam."""

    def load_own_variables(self, store):
        return None


def test_check_optimizer_catches_state_not_restored():
    with pytest.raises(AssertionError, match="save/load"):
        conformance._check_save_resume(
            ForgetfulAdam,
            {"learning_rate": 0.01},
            conformance.make_regression_model,
            *conformance.regression_data(),
            atol=1e-6,
        )


def test_weights_resume_still_checks_the_saved_state():
    with pytest.raises(AssertionError, match="save/load"):
        conformance._check_save_resume(
            ForgetfulAdam,
            {"learning_rate": 0.01},
            conformance.make_regression_model,
            *conformance.regression_data(),
            atol=1e-6,
            resume_via="weights",
        )


@keras.saving.register_keras_serializable(package="keras_gr_tests")
class AmnesicAdam(keras.optimizers.Adam):
    """Records its custom `boost` argument nowhere."""

    def __init__(self, boost=1.0, **kwargs):
        super().__init__(**kwargs)
        self.boost = boost


def test_check_optimizer_catches_dropped_config_argument():
    with pytest.raises(AssertionError, match="boost"):
        conformance.check_optimizer(AmnesicAdam, ADAM)


@keras.saving.register_keras_serializable(package="keras_gr_tests")
class ImpatientSGD(keras.optimizers.SGD):
    """Applies every micro-batch at once, ignoring accumulation (the bug of
    a joint update written outside Keras's accumulation path)."""

    def apply(self, grads, trainable_variables=None):
        for g, v in zip(
            grads, trainable_variables or self._trainable_variables
        ):
            v.assign_sub(self.learning_rate * g)
        self._iterations.assign_add(1)


def test_check_optimizer_catches_broken_accumulation():
    with pytest.raises(AssertionError, match="accumulation"):
        conformance._check_gradient_accumulation(
            ImpatientSGD, {"learning_rate": 0.1}
        )


def test_check_optimizer_catches_divergence():
    with pytest.raises(AssertionError, match="quadratic"):
        conformance.check_optimizer(
            keras.optimizers.SGD, {"learning_rate": 3.0}
        )


# ---------------------------------------------------------- multi-device


@pytest.mark.multidevice
def test_multidevice_data_and_model_parallel_match_single_device():
    result = run_on_devices(
        TRAJECTORY_SNIPPET
        + """
import jax
devices = keras.distribution.list_devices()
adam = lambda: keras.optimizers.Adam(0.01)
single = trajectory(adam)
data = trajectory(adam, keras.distribution.DataParallel(devices=devices))
mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
layout_map = keras.distribution.LayoutMap(mesh)
layout_map["dense.*kernel"] = (None, "model")
model_parallel = keras.distribution.ModelParallel(
    layout_map=layout_map, batch_dim_name="batch"
)
sharded = trajectory(adam, model_parallel)
kernel = [v for v in sharded.weights if v.path.endswith("kernel")][0]
RESULT = {
    "devices": jax.device_count(),
    "kernel_sharding": str(kernel.value.sharding.spec),
    "single": [np.asarray(w).tolist() for w in single.weights],
    "data": [np.asarray(w).tolist() for w in data.weights],
    "model": [np.asarray(w).tolist() for w in sharded.weights],
}
"""
    )
    assert result["devices"] == 8
    assert "model" in result["kernel_sharding"]
    assert_same_weights(result["single"], result["data"])
    assert_same_weights(result["single"], result["model"])
    # The comparison itself can fail: a 1e-3 perturbation is caught.
    perturbed = [np.array(w) for w in result["data"]]
    perturbed[0].flat[0] += 1e-3
    with pytest.raises(AssertionError, match="differs"):
        assert_same_weights(result["single"], perturbed)
