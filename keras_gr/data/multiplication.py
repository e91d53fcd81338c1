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
from keras_gr.data._lm_tasks import to_tf_dataset

PAD = 0
TIMES = 11
EQUALS = 12
MULTIPLICATION_VOCAB_SIZE = 13
"""Token ids: 0 padding, 1..10 the digits 0..9, 11 `*`, 12 `=`."""


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
    tokens = [int(c) + 1 for c in f"{int(number):0{digits}d}"]
    tokens += [TIMES, int(multiplier) + 1, EQUALS]
    start = len(tokens)
    width = multiplication_answer_width(digits)
    tokens += [int(c) + 1 for c in f"{int(number) * int(multiplier):0{width}d}"]
    return tokens, start


def decode_multiplication(tokens) -> str:
    """Inverse of the token mapping (padding dropped), for printing."""
    chars = {TIMES: "*", EQUALS: "="}
    chars.update({d + 1: str(d) for d in range(10)})
    return "".join(chars[int(t)] for t in tokens if int(t) != PAD)


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
    choices = [digits] if isinstance(digits, (int, np.integer)) else digits
    choices = list(choices)
    if not choices:
        raise ValueError(
            "`digits` must be a positive integer or a non-empty list of "
            f"them. Received: digits={digits!r}"
        )
    for d in choices:
        check_integer("digits", d)
    rng = np.random.default_rng(seed)
    ds = rng.choice(np.asarray(choices), size=num_examples)
    max_d = int(max(choices))
    length = max_d + 3 + multiplication_answer_width(max_d)
    tokens = np.zeros((num_examples, length), dtype="int32")
    mask = np.zeros((num_examples, length), dtype=bool)
    numbers = np.zeros((num_examples,), dtype="int64")
    multipliers = rng.integers(0, 10, size=num_examples)
    for row, d in enumerate(ds):
        numbers[row] = rng.integers(0, 10 ** int(d))
        seq, start = encode_multiplication(
            numbers[row], multipliers[row], int(d)
        )
        tokens[row, : len(seq)] = seq
        mask[row, start : len(seq)] = True
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
    return to_tf_dataset(
        data["tokens"],
        data["answer_mask"],
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
    )


__all__ = [
    "MULTIPLICATION_VOCAB_SIZE",
    "decode_multiplication",
    "encode_multiplication",
    "multiplication_answer_width",
    "multiplication_dataset",
    "multiplication_examples",
]
