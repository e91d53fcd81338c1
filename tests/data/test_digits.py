"""The digits helpers of keras_gr.data run quietly."""

import warnings

import numpy as np

from keras_gr.data import digits


def test_train_digit_classifier_raises_no_warning(capfd):
    """Its `fit` on a (seeded, shuffled) `tf.data` stream used to leave
    `shuffle=True` at its default, and Keras warned that it is ignored."""
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(16, 8, 8, 1)).astype("float32")
    labels = rng.integers(0, 10, size=16).astype("int32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classifier, features = digits.train_digit_classifier(
            images, labels, steps=1, batch_size=16
        )
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr().out == ""
    assert classifier.predict(images[:2], verbose=0).shape == (2, 10)
    assert tuple(features(images[:2]).shape) == (2, 64)
