"""Shared plumbing of the token-sequence task generators (addition,
multiplication, p-hop, the LLM pool's mixture).

Every generator returns full token sequences plus a boolean `answer_mask`
marking the answer tokens. A causal LM is trained on
`x = tokens[:, :-1]`, `y = tokens[:, 1:]` with `sample_weight =
answer_mask[:, 1:]`, so the loss and accuracy see only the answer.

The arithmetic tasks share one digit vocabulary: token 0 is padding and
tokens 1..10 are the digits 0..9 (`DIGIT_SYMBOLS`); each task adds its
operator tokens (a `{token: character}` table) and decodes / encodes
through `decode_symbols` / `encode_symbols`.
"""

from typing import Any

import numpy as np

from keras_gr.data._tf_data import batched_dataset

PAD = 0
"""The padding token of every task."""

DIGIT_SYMBOLS = {d + 1: str(d) for d in range(10)}
"""Token `d + 1` is the digit `d`."""


def digit_tokens(text: str) -> list[int]:
    """Token ids of a string of decimal digits (`"407"` -> `[5, 1, 8]`)."""
    return [int(c) + 1 for c in text]


def decode_symbols(tokens: Any, symbols: dict[int, str]) -> str:
    """The text of token ids under the vocabulary `symbols` (`{token:
    character}`), padding (0) dropped.

    Raises `ValueError` on an id that is neither padding nor in `symbols`.

    Example:

    >>> decode_symbols([2, 3, 11, 0], {**DIGIT_SYMBOLS, 11: "+"})
    '12+'
    """
    chars = []
    for token in tokens:
        token = int(token)
        if token == PAD:
            continue
        if token not in symbols:
            raise ValueError(
                "`tokens` must hold padding (0) or ids of the vocabulary "
                f"{sorted(symbols)}. Received: a token {token}"
            )
        chars.append(symbols[token])
    return "".join(chars)


def encode_symbols(text: str, symbols: dict[int, str]) -> list[int]:
    """Token ids of `text` under `symbols` (inverse of `decode_symbols`);
    raises `ValueError` naming `text` on a character outside it."""
    vocab = {c: t for t, c in symbols.items()}
    bad = sorted(set(text) - set(vocab))
    if bad:
        raise ValueError(
            "`text` must use only the characters "
            f"{''.join(sorted(vocab))!r}. Received: text={text!r}"
        )
    return [vocab[c] for c in text]


def pack_rows(rows: list, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads variable-length problems into `(tokens, answer_mask)`.

    Args:
        rows: `(tokens, answer_start)` pairs, `tokens` a list of ids whose
            answer runs from `answer_start` to its end.
        length: the width `T` of the arrays (at least the longest row).

    Returns:
        int32 `tokens` and bool `answer_mask`, both `(len(rows), T)`,
        padded with 0 / `False`.
    """
    tokens = np.zeros((len(rows), length), dtype="int32")
    mask = np.zeros((len(rows), length), dtype=bool)
    for row, (seq, start) in enumerate(rows):
        tokens[row, : len(seq)] = seq
        mask[row, start : len(seq)] = True
    return tokens, mask


def lm_arrays(
    tokens: Any, answer_mask: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shifts `(tokens, answer_mask)` into next-token training arrays.

    Returns:
        `(x, y, sample_weight)`: `x = tokens[:, :-1]`, `y = tokens[:, 1:]`
        (int32) and `sample_weight = answer_mask[:, 1:]` (float32), so that
        `sample_weight[b, t] = 1` exactly when `y[b, t]` is an answer token.

    Example:

    >>> x, y, w = lm_arrays([[5, 6, 7, 8]], [[False, False, True, True]])
    >>> x.tolist(), y.tolist(), w.tolist()
    ([[5, 6, 7]], [[6, 7, 8]], [[0.0, 1.0, 1.0]])
    """
    tokens = np.asarray(tokens, dtype="int32")
    answer_mask = np.asarray(answer_mask, dtype=bool)
    return (
        tokens[:, :-1],
        tokens[:, 1:],
        answer_mask[:, 1:].astype("float32"),
    )


def exact_match(predicted: Any, y: Any, sample_weight: Any) -> float:
    """Fraction of rows whose every weighted (answer) token is predicted.

    `predicted` are argmax token ids of a teacher-forced forward pass; an
    exact match under teacher forcing is the same event as an exact match of
    greedy decoding.

    Example:

    >>> y = [[1, 2, 3], [1, 2, 3]]
    >>> weight = [[0, 1, 1], [0, 1, 1]]
    >>> exact_match([[9, 2, 3], [1, 2, 4]], y, weight)  # 2nd row: 4 != 3
    0.5
    """
    predicted = np.asarray(predicted)
    w = np.asarray(sample_weight) > 0
    wrong = (predicted != np.asarray(y)) & w
    return float(np.mean(~np.any(wrong, axis=1)))


def task_dataset(data: dict, batch_size: int, shuffle: bool, seed: int) -> Any:
    """A generator's `{"tokens", "answer_mask", ...}` as a `tf.data.Dataset`
    of `(x, y, sample_weight)` next-token batches (`lm_arrays`), reshuffled
    every pass with `seed` when `shuffle`, the last batch kept."""
    x, y, w = lm_arrays(data["tokens"], data["answer_mask"])
    return batched_dataset((x, y, w), batch_size, shuffle=shuffle, seed=seed)
