"""Tests of the math word-problem domain (exact answers)."""

import numpy as np
import pytest

from keras_gr.data import addition_examples
from keras_gr.data import math_answer_correct
from keras_gr.data import math_word_problems
from keras_gr.data import parse_math_problem


def test_problems_carry_the_exact_addition_sums():
    data = math_word_problems(40, num_operands=[2, 3, 4], digits=3, seed=5)
    raw = addition_examples(40, [2, 3, 4], 3, seed=5)
    np.testing.assert_array_equal(data["answers"], raw["answers"])
    for text, question, ops_, answer in zip(
        data["texts"], data["questions"], data["operands"], data["answers"]
    ):
        assert text.startswith(question)
        addends, stated = parse_math_problem(text)
        assert addends == ops_
        assert stated == int(answer) == sum(ops_)
        assert math_answer_correct(text)


def test_seeded_and_distinct():
    a = math_word_problems(10, seed=1)["texts"]
    assert a == math_word_problems(10, seed=1)["texts"]
    assert a != math_word_problems(10, seed=2)["texts"]
    assert len(set(a)) > 5


def test_checker_rejects_wrong_or_malformed():
    assert math_answer_correct("Ann has 3 pens. Ann gets 4 more. Answer: 7")
    assert not math_answer_correct("Ann has 3 pens. Ann gets 4. Answer: 8")
    assert not math_answer_correct("Ann has 3 pens and 4 more.")
    assert parse_math_problem("Answer: 5") is None


def test_bad_input():
    with pytest.raises(ValueError, match="num_examples"):
        math_word_problems(0)
    with pytest.raises(ValueError, match="num_operands"):
        math_word_problems(3, num_operands=[])
