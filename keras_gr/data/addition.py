"""n-ary addition, the reasoning task of the looped-transformer paper.

"Reasoning with Latent Thoughts: On the Power of Looped Transformers"
(Saunshi, Dikkala, Li, Kumar, Reddi; ICLR 2025, arXiv 2502.17416): sum `n`
zero-padded `d`-digit operands without chain of thought, e.g.
`315+120+045+824=1304`.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_gr._validation import check_integer
from keras_gr._validation import check_integer_choices
from keras_gr.data._lm_tasks import DIGIT_SYMBOLS
from keras_gr.data._lm_tasks import decode_symbols
from keras_gr.data._lm_tasks import digit_tokens
from keras_gr.data._lm_tasks import lm_arrays
from keras_gr.data._lm_tasks import pack_rows
from keras_gr.data._lm_tasks import task_dataset

PLUS = 11
EQUALS = 12
ADDITION_VOCAB_SIZE = 13
"""Token ids: 0 padding, 1..10 the digits 0..9, 11 `+`, 12 `=`."""

ADDITION_SYMBOLS = {**DIGIT_SYMBOLS, PLUS: "+", EQUALS: "="}
"""`{token: character}` of the addition vocabulary (padding excluded)."""


def answer_width(num_operands, digits=3):
    """Digits of the largest possible sum `n * (10^d - 1)`: the fixed answer
    width (the paper's `315+120+045+824=1304`: 4 operands -> 4 digits)."""
    return len(str(num_operands * (10**digits - 1)))


def encode_addition(operands, digits=3, reverse_answer=False):
    """Token ids of one problem and the index where its answer starts.

    Args:
        operands: a sequence of non-negative Python ints below `10**digits`.
        digits: operand width (zero-padded).
        reverse_answer: write the answer least-significant digit first.
    Returns:
        `(tokens, answer_start)` with `tokens` a list of ints.
    """
    tokens = []
    for i, value in enumerate(operands):
        if i:
            tokens.append(PLUS)
        tokens.extend(digit_tokens(f"{int(value):0{digits}d}"))
    tokens.append(EQUALS)
    start = len(tokens)
    width = answer_width(len(operands), digits)
    answer = f"{sum(int(v) for v in operands):0{width}d}"
    if reverse_answer:
        answer = answer[::-1]
    tokens.extend(digit_tokens(answer))
    return tokens, start


def decode_tokens(tokens):
    """Inverse of the token mapping (padding dropped), for printing."""
    return decode_symbols(tokens, ADDITION_SYMBOLS)


def addition_examples(
    num_examples: int,
    num_operands: int | Sequence[int],
    digits: int = 3,
    seed: int = 0,
    reverse_answer: bool = False,
) -> dict[str, np.ndarray]:
    """Exact, seeded n-ary addition problems as NumPy arrays.

    Operands are drawn uniformly from `[0, 10^digits - 1]` and written
    zero-padded, joined by `+` and closed by `=`; the answer is the exact sum
    (computed with Python ints), zero-padded to `answer_width(n, digits)`
    digits so every problem with `n` operands has the same length. Rows with
    fewer operands are right-padded with token 0. No chain of thought.

    Args:
        num_examples: number of problems.
        num_operands: `n`, an int or a list of ints (each problem draws its
            `n` uniformly from the list, e.g. the paper's training mixture
            `[2, 4, 8, 16, 32]`).
        digits: operand width. Defaults to `3` (the paper's).
        seed: NumPy seed; the same seed gives the same problems.
        reverse_answer: write the answer least-significant digit first (the
            paper writes it most-significant first: `False`, the default).

    Returns:
        A dict with `tokens` (int32, `(num_examples, T)`), `answer_mask`
        (bool, same shape, `True` on the answer tokens), `operands` (int64,
        `(num_examples, max n)`, padded with -1), `num_operands` (int32) and
        `answers` (int64, the sums).

    Example:

    >>> data = addition_examples(2, num_operands=3, digits=2, seed=0)
    >>> data["tokens"].shape, data["answers"].tolist()
    ((2, 12), [199, 60])
    >>> decode_tokens(data["tokens"][0])
    '85+63+51=199'
    """
    num_examples = check_integer("num_examples", num_examples)
    digits = check_integer("digits", digits)
    choices = check_integer_choices("num_operands", num_operands)
    rng = np.random.default_rng(seed)
    ns = rng.choice(np.asarray(choices), size=num_examples)
    max_n = max(choices)
    operands = np.full((num_examples, max_n), -1, dtype="int64")
    answers = np.zeros((num_examples,), dtype="int64")
    rows = []
    for row, n in enumerate(ns):
        values = rng.integers(0, 10**digits, size=int(n))
        rows.append(
            encode_addition([int(v) for v in values], digits, reverse_answer)
        )
        operands[row, :n] = values
        answers[row] = sum(int(v) for v in values)
    length = max_n * (digits + 1) + answer_width(max_n, digits)
    tokens, mask = pack_rows(rows, length)
    return {
        "tokens": tokens,
        "answer_mask": mask,
        "operands": operands,
        "num_operands": ns.astype("int32"),
        "answers": answers,
    }


def addition_dataset(
    num_examples: int,
    num_operands: int | Sequence[int],
    digits: int = 3,
    seed: int = 0,
    reverse_answer: bool = False,
    batch_size: int = 32,
    shuffle: bool = True,
) -> Any:
    """`addition_examples` as a `tf.data.Dataset` of `(x, y, sample_weight)`
    next-token batches (weights 1 exactly on the answer targets).

    Example:

    >>> ds = addition_dataset(8, num_operands=2, batch_size=4)
    >>> x, y, weight = next(iter(ds))
    >>> tuple(x.shape), tuple(y.shape), tuple(weight.shape)
    ((4, 11), (4, 11), (4, 11))
    """
    data = addition_examples(
        num_examples, num_operands, digits, seed, reverse_answer
    )
    return task_dataset(data, batch_size, shuffle, seed)


__all__ = [
    "ADDITION_SYMBOLS",
    "ADDITION_VOCAB_SIZE",
    "addition_dataset",
    "addition_examples",
    "answer_width",
    "decode_tokens",
    "encode_addition",
    "lm_arrays",
]
