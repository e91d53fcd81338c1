"""Multiplication by a digit: exact answers, layout, seeding, bad input."""

import keras
import numpy as np
import pytest

from keras_gr.data import lm_arrays
from keras_gr.data.multiplication import decode_multiplication
from keras_gr.data.multiplication import multiplication_dataset
from keras_gr.data.multiplication import multiplication_examples


def test_answers_are_exact_products():
    data = multiplication_examples(300, [1, 2, 4], seed=3)
    assert data["tokens"].shape == (300, 4 + 3 + 5)
    for row in range(300):
        text = decode_multiplication(data["tokens"][row])
        left, answer = text.split("=")
        a, b = left.split("*")
        d = int(data["digits"][row])
        assert len(a) == d and len(b) == 1 and len(answer) == d + 1
        assert int(answer) == int(a) * int(b)  # Python's own arithmetic
        masked = data["tokens"][row][data["answer_mask"][row]]
        assert decode_multiplication(masked) == answer
    assert set(np.unique(data["digits"]).tolist()) == {1, 2, 4}


def test_seeded_and_trainable_arrays():
    a = multiplication_examples(50, 3, seed=7)
    b = multiplication_examples(50, 3, seed=7)
    c = multiplication_examples(50, 3, seed=8)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    assert not np.array_equal(a["tokens"], c["tokens"])
    x, y, w = lm_arrays(a["tokens"], a["answer_mask"])
    np.testing.assert_array_equal(w.sum(1), 4)  # 3 digits -> 4 answer digits


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="tf.data is checked once, on the TensorFlow run",
)
def test_tf_dataset():
    a = multiplication_examples(50, 3, seed=7)
    x, y, w = lm_arrays(a["tokens"], a["answer_mask"])
    ds = multiplication_dataset(50, 3, seed=7, batch_size=25, shuffle=False)
    first = next(iter(ds))
    for got, want in zip(first, (x[:25], y[:25], w[:25])):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_bad_input():
    with pytest.raises(ValueError, match="digits"):
        multiplication_examples(10, 0)
    with pytest.raises(ValueError, match="digits"):
        multiplication_examples(10, [])
    with pytest.raises(ValueError, match="num_examples"):
        multiplication_examples(-1, 2)
