"""Tests of `keras_gr.layers.ColumnOrthogonal`, LAuReL's low-rank init
(arXiv 2411.07501), in its own module since issue 30.8."""

import keras
import numpy as np

import keras_gr.layers
from keras_gr.layers import ColumnOrthogonal
from keras_gr.layers import column_orthogonal


def _reference(shape):
    """NumPy: `A[..., i, j] = 1 / sqrt(r D)` where `i mod r == j`."""
    rows, rank = shape[-2], shape[-1]
    matrix = np.zeros((rows, rank))
    for i in range(rows):
        matrix[i, i % rank] = 1.0 / np.sqrt(rank * rows)
    return np.broadcast_to(matrix, shape)


def test_public_path_is_the_class_of_its_own_module():
    assert ColumnOrthogonal is column_orthogonal.ColumnOrthogonal
    assert "ColumnOrthogonal" in keras_gr.layers.__all__
    assert ColumnOrthogonal.__module__ == "keras_gr.layers.column_orthogonal"


def test_golden_with_leading_axes():
    shape = (3, 5, 2)  # one matrix per previous activation (PA)
    got = np.asarray(ColumnOrthogonal()(shape, dtype="float32"))
    np.testing.assert_allclose(got, _reference(shape), rtol=1e-6, atol=0)


def test_config_saved_under_the_old_module_still_loads():
    # A `.keras` file written before the split names the old module; the
    # registered name `keras_gr>ColumnOrthogonal` is what finds the class.
    config = keras.saving.serialize_keras_object(ColumnOrthogonal())
    assert config["registered_name"] == "keras_gr>ColumnOrthogonal"
    config["module"] = "keras_gr.layers.laurel"
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, ColumnOrthogonal)
    got = np.asarray(restored((4, 2), dtype="float32"))
    np.testing.assert_allclose(got, _reference((4, 2)), rtol=1e-6, atol=0)
