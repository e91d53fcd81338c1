import numpy as np
import pytest

from keras_gr.data import ADDITION_VOCAB_SIZE
from keras_gr.data import addition_dataset
from keras_gr.data import addition_examples
from keras_gr.data import lm_arrays
from keras_gr.data.addition import decode_tokens


def _brute_force_answer(text, reverse):
    """Parses 'a+b+...=s' and checks s with Python ints."""
    problem, answer = text.split("=")
    operands = [int(t) for t in problem.split("+")]
    if reverse:
        answer = answer[::-1]
    return sum(operands), int(answer), operands


@pytest.mark.parametrize("reverse", [False, True])
def test_answers_match_python_ints(reverse):
    data = addition_examples(
        300, [2, 4, 8], digits=3, seed=3, reverse_answer=reverse
    )
    for row in range(300):
        text = decode_tokens(data["tokens"][row])
        want, got, operands = _brute_force_answer(text, reverse)
        assert got == want == data["answers"][row]
        n = data["num_operands"][row]
        assert len(operands) == n
        assert all(len(t) == 3 for t in text.split("=")[0].split("+"))
        assert list(data["operands"][row, :n]) == operands
        # The mask marks exactly the answer digits (fixed width per n).
        width = len(str(n * 999))
        masked = data["tokens"][row][data["answer_mask"][row]]
        assert len(masked) == width
        assert decode_tokens(masked) == text.split("=")[1]


def test_paper_example_format():
    data = addition_examples(1, 4, seed=0)
    text = decode_tokens(data["tokens"][0])
    assert len(text) == 4 * 4 + 4  # '315+120+045+824=' + 4 answer digits
    assert text[-5] == "="


def test_seeded_and_operand_range():
    a = addition_examples(200, [2, 3], digits=2, seed=7)
    b = addition_examples(200, [2, 3], digits=2, seed=7)
    c = addition_examples(200, [2, 3], digits=2, seed=8)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    assert not np.array_equal(a["tokens"], c["tokens"])
    ops = a["operands"][a["operands"] >= 0]
    assert ops.min() >= 0 and ops.max() <= 99
    assert set(np.unique(a["num_operands"])) == {2, 3}
    assert a["tokens"].max() < ADDITION_VOCAB_SIZE


def test_lm_arrays_and_dataset():
    data = addition_examples(10, 2, digits=3, seed=0)
    x, y, w = lm_arrays(data["tokens"], data["answer_mask"])
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(w, data["answer_mask"][:, 1:])
    assert w.sum(axis=1).tolist() == [4] * 10  # 2 * 999 = 1998
    ds = addition_dataset(10, 2, digits=3, seed=0, batch_size=4, shuffle=False)
    bx, by, bw = next(iter(ds))
    np.testing.assert_array_equal(np.asarray(bx), x[:4])
    np.testing.assert_array_equal(np.asarray(by), y[:4])
    np.testing.assert_array_equal(np.asarray(bw), w[:4])


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(num_examples=0, num_operands=2), "num_examples"),
        (dict(num_examples=5, num_operands=0), "num_operands"),
        (dict(num_examples=5, num_operands=[]), "num_operands"),
        (dict(num_examples=5, num_operands=2, digits=0), "digits"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        addition_examples(**kwargs)
