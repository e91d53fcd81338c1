"""Multiplication of an n-digit number by a one-digit number.

A third exact-answer task family beside n-ary addition and p-hop induction
(the tasks of "Reasoning with Latent Thoughts", arXiv 2502.17416), used to
grade difficulty in the model pool of the routing benchmark ("Universal
Model Routing for Efficient LLM Inference", Jitkrittum et al., arXiv
2502.08773): every answer digit depends on the carry chain from the right,
so the problem gets harder as the number of digits `d` grows,
e.g. `4821*7=33747`.
"""

from typing import Any

import numpy as np

from keras_gr._validation import check_integer
from keras_gr._validation import check_integer_choices
from keras_gr.data._lm_tasks import DIGIT_SYMBOLS
from keras_gr.data._lm_tasks import decode_symbols
from keras_gr.data._lm_tasks import digit_tokens
from keras_gr.data._lm_tasks import pack_rows
from keras_gr.data._lm_tasks import task_dataset

TIMES = 11
EQUALS = 12
MULTIPLICATION_VOCAB_SIZE = 13
"""Token ids: 0 padding, 1..10 the digits 0..9, 11 `*`, 12 `=`."""

MULTIPLICATION_SYMBOLS = {**DIGIT_SYMBOLS, TIMES: "*", EQUALS: "="}
"""`{token: character}` of the multiplication vocabulary (padding
excluded)."""


def multiplication_answer_width(digits: int) -> int:
    """Digits of the largest product `(10^d - 1) * 9`: `d + 1`."""
    digits = check_integer("digits", digits)
    return len(str((10**digits - 1) * 9))


def encode_multiplication(
    number: int, multiplier: int, digits: int
) -> tuple[list[int], int]:
    """Token ids of `number * multiplier` and the index where its answer
    starts. `number` is zero-padded to `digits`, the product to
    `digits + 1` digits (most significant first)."""
    tokens = digit_tokens(f"{int(number):0{digits}d}")
    tokens += [TIMES, *digit_tokens(str(int(multiplier))), EQUALS]
    start = len(tokens)
    width = multiplication_answer_width(digits)
    tokens += digit_tokens(f"{int(number) * int(multiplier):0{width}d}")
    return tokens, start


def decode_multiplication(tokens) -> str:
    """Inverse of the token mapping (padding dropped), for printing."""
    return decode_symbols(tokens, MULTIPLICATION_SYMBOLS)


def multiplication_examples(
    num_examples: int, digits: int | list[int], seed: int = 0
) -> dict:
    """Exact, seeded problems `a * b = c` with `a` of `d` digits, `b` one
    digit.

    `a` is drawn uniformly from `[0, 10^d - 1]` (zero-padded to `d`
    digits), `b` uniformly from `[0, 9]`; the answer is the exact product
    zero-padded to `d + 1` digits. Rows with a smaller `d` than the largest
    are right-padded with token 0.

    Args:
        num_examples: number of problems.
        digits: `d`, an int or a list of ints (each problem draws its `d`
            uniformly from the list).
        seed: NumPy seed; the same seed gives the same problems. Defaults
            to `0`.

    Returns:
        A dict with `tokens` (int32, `(num_examples, T)`), `answer_mask`
        (bool, `True` on the answer tokens), `numbers`, `multipliers`,
        `answers` (int64) and `digits` (int32, each row's `d`).

    Example:

    >>> data = multiplication_examples(2, 3, seed=0)
    >>> data["tokens"].shape
    (2, 10)
    >>> int(data["answers"][0]) == int(
    ...     data["numbers"][0] * data["multipliers"][0])
    True
    """
    num_examples = check_integer("num_examples", num_examples)
    choices = check_integer_choices("digits", digits)
    rng = np.random.default_rng(seed)
    ds = rng.choice(np.asarray(choices), size=num_examples)
    numbers = np.zeros((num_examples,), dtype="int64")
    multipliers = rng.integers(0, 10, size=num_examples)
    rows = []
    for row, d in enumerate(ds):
        numbers[row] = rng.integers(0, 10 ** int(d))
        rows.append(
            encode_multiplication(numbers[row], multipliers[row], int(d))
        )
    max_d = max(choices)
    length = max_d + 3 + multiplication_answer_width(max_d)
    tokens, mask = pack_rows(rows, length)
    return {
        "tokens": tokens,
        "answer_mask": mask,
        "numbers": numbers,
        "multipliers": multipliers.astype("int64"),
        "answers": numbers * multipliers,
        "digits": ds.astype("int32"),
    }


def multiplication_dataset(
    num_examples: int,
    digits: int | list[int],
    seed: int = 0,
    batch_size: int = 32,
    shuffle: bool = True,
) -> Any:
    """`multiplication_examples` as a `tf.data.Dataset` of `(x, y,
    sample_weight)` next-token batches (weights 1 on the answer targets).

    Example:

    >>> ds = multiplication_dataset(8, digits=2, batch_size=4)
    >>> x, y, weight = next(iter(ds))
    >>> tuple(x.shape), tuple(y.shape), tuple(weight.shape)
    ((4, 7), (4, 7), (4, 7))
    """
    data = multiplication_examples(num_examples, digits, seed)
    return task_dataset(data, batch_size, shuffle, seed)


__all__ = [
    "MULTIPLICATION_SYMBOLS",
    "MULTIPLICATION_VOCAB_SIZE",
    "decode_multiplication",
    "encode_multiplication",
    "multiplication_answer_width",
    "multiplication_dataset",
    "multiplication_examples",
]
