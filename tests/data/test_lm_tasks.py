"""The shared plumbing of the task generators: one integer-or-list check,
one row packer, one digit vocabulary decoder, one dataset wrapper."""

import numpy as np
import pytest

from keras_gr._validation import check_integer_choices
from keras_gr.data import _lm_tasks
from keras_gr.data import addition
from keras_gr.data import multiplication
from keras_gr.data import p_hop
from keras_gr.presets import llm_pool


@pytest.mark.parametrize(
    "value,want",
    [
        (3, [3]),
        (np.int32(3), [3]),
        ([2, 4], [2, 4]),
        ((2, np.int64(4)), [2, 4]),
        (np.array([2, 3], dtype="int32"), [2, 3]),
    ],
)
def test_integer_choices_accepts_ints_and_sequences(value, want):
    got = check_integer_choices("digits", value)
    assert got == want and all(type(v) is int for v in got)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda v: addition.addition_examples(4, v), "num_operands"),
        (lambda v: multiplication.multiplication_examples(4, v), "digits"),
    ],
)
@pytest.mark.parametrize("value", [2.0, 2.5, [], [2, 0], "3", True, None])
def test_generators_refuse_bad_choices_with_a_value_error(call, name, value):
    # A float or None used to escape as a TypeError from `list(value)`.
    with pytest.raises(ValueError, match=f"`{name}` must be") as info:
        call(value)
    assert f"Received: {name}=" in str(info.value)


def test_pack_rows_right_pads_and_masks_the_answer():
    tokens, mask = _lm_tasks.pack_rows([([5, 6, 7], 2), ([8, 9], 1)], 4)
    np.testing.assert_array_equal(tokens, [[5, 6, 7, 0], [8, 9, 0, 0]])
    np.testing.assert_array_equal(
        mask, [[False, False, True, False], [False, True, False, False]]
    )
    assert tokens.dtype == np.int32 and mask.dtype == bool


def test_one_digit_vocabulary_for_every_arithmetic_task():
    # The digits are the same tokens in all three vocabularies.
    for symbols in (
        addition.ADDITION_SYMBOLS,
        multiplication.MULTIPLICATION_SYMBOLS,
        llm_pool.POOL_SYMBOLS,
    ):
        for d in range(10):
            assert symbols[d + 1] == str(d)
    # Each decoder inverts its encoder, padding dropped.
    seq, _ = addition.encode_addition([7, 45, 300], 3)
    assert addition.decode_tokens(seq + [0, 0]) == "007+045+300=0352"
    seq, _ = multiplication.encode_multiplication(4821, 7, 4)
    assert multiplication.decode_multiplication(seq) == "4821*7=33747"
    text = "12+07=019*3=abcd"
    assert llm_pool.decode_pool_tokens(llm_pool.encode_pool_text(text)) == text


@pytest.mark.parametrize(
    "decode,token",
    [
        (addition.decode_tokens, 13),
        (multiplication.decode_multiplication, -1),
        (llm_pool.decode_pool_tokens, 18),
    ],
)
def test_decoders_name_a_foreign_token(decode, token):
    # A foreign id used to escape as a bare KeyError.
    with pytest.raises(ValueError, match=f"`tokens`.*token {token}"):
        decode([2, token])


@pytest.mark.parametrize(
    "make",
    [
        lambda b: addition.addition_dataset(8, 2, batch_size=b),
        lambda b: multiplication.multiplication_dataset(8, 2, batch_size=b),
        lambda b: p_hop.p_hop_dataset(8, 2, 8, batch_size=b),
    ],
)
def test_dataset_wrappers_check_batch_size_first(make):
    # Checked before TensorFlow is imported or anything is built.
    with pytest.raises(ValueError, match="`batch_size` must be"):
        make(0)
