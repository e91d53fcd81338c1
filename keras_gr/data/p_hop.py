"""p-hop induction, the reasoning task of the looped-transformer paper.

"Reasoning with Latent Thoughts: On the Power of Looped Transformers"
(Saunshi, Dikkala, Li, Kumar, Reddi; ICLR 2025, arXiv 2502.17416), task
from Sanford, Hsu, Telgarsky ("Transformers, parallel computation, and
logarithmic depth", arXiv 2402.09268). With 1-indexed `v[1..n]`:

```
find_1(v, i) = max({0} U {j <= i : v[j-1] = v[i]})   (j >= 2: v[0] is unset)
find_p(v, i) = find_1(v, find_{p-1}(v, i))
target       = v[find_p(v, n)]
```

i.e. find the last earlier occurrence of the current token, step to the
token after it, and repeat `p` times.
"""

from typing import Any

import numpy as np

from keras_gr._validation import check_integer
from keras_gr.data._lm_tasks import lm_arrays
from keras_gr.data._lm_tasks import task_dataset


def p_hop_vocab_size(alphabet_size: int = 4) -> int:
    """Token ids: 0 padding, `1..alphabet_size` the letters, then `=`.

    Example:

    >>> p_hop_vocab_size(4)
    6
    """
    return alphabet_size + 2


def _find_one_table(v):
    """`find_1(v, i)` for every 1-indexed `i` in `[0, n]` (entry 0 is 0).

    `find_1(v, i) = 1 + (last k < i with v[k] = v[i])`, all 1-indexed, or 0
    if there is none. One left-to-right pass with a last-occurrence dict.
    """
    n = len(v)
    find1 = np.zeros(n + 1, dtype=np.int64)
    last = {}
    for i in range(1, n + 1):
        token = v[i - 1]
        find1[i] = last[token] + 1 if token in last else 0
        last[token] = i
    return find1


def hop_positions(v: Any, p: int) -> list[int]:
    """The positions `find_1(v, n), ..., find_p(v, n)` (1-indexed).

    `v` is one sequence (0-indexed NumPy array holding `v[1..n]`). Uses the
    last-occurrence table, O(n + p); a 0 means the hop does not exist (and
    every later hop is 0 too).

    Example:

    >>> hop_positions(np.array([1, 2, 1, 3, 2]), 2)
    [3, 2]
    """
    find1 = _find_one_table(np.asarray(v))
    positions = []
    i = len(v)
    for _ in range(p):
        i = int(find1[i]) if i > 0 else 0
        positions.append(i)
    return positions


def p_hop_prefix_targets(
    sequences: Any, p: int
) -> tuple[np.ndarray, np.ndarray]:
    """The p-hop answer of every prefix: `v[find_p(v, i)]` for all `i`.

    A causal model reading `v[1..n]` sees at position `i` exactly the
    prefix `v[1..i]`, which is itself a p-hop problem with answer
    `v[find_p(v, i)]` (when its `p` hops exist). Supervising every such
    position gives up to `n` exact training problems per sequence instead
    of one ("dense" supervision: a choice of this library for CPU-scale
    training, documented in `benchmarks/looped_reasoning.py`; the last
    position is the sequence's own problem).

    Args:
        sequences: int array `(num_examples, n)` of letters (as returned in
            `p_hop_examples(...)["sequences"]`).
        p: the number of hops.

    Returns:
        `(targets, valid)`: int32 `(num_examples, n)` with the answer letter
        of prefix `i` at column `i - 1` (0 where undefined) and a bool mask
        of the prefixes whose `p` hops all exist.

    Example:

    >>> targets, valid = p_hop_prefix_targets(np.array([[1, 2, 1, 3, 2]]), 1)
    >>> targets.tolist(), valid.tolist()
    ([[0, 0, 2, 0, 1]], [[False, False, True, False, True]])
    """
    p = check_integer("p", p)
    sequences = np.asarray(sequences)
    if sequences.ndim != 2:
        raise ValueError(
            "`sequences` must be a 2-D array (num_examples, n). Received: "
            f"sequences.shape={sequences.shape}"
        )
    num, n = sequences.shape
    targets = np.zeros((num, n), dtype="int32")
    valid = np.zeros((num, n), dtype=bool)
    for row in range(num):
        find1 = _find_one_table(sequences[row])
        pos = np.arange(1, n + 1)
        for _ in range(p):
            pos = find1[pos]  # find1[0] = 0 keeps a missing hop missing.
        ok = pos >= 1
        valid[row] = ok
        targets[row, ok] = sequences[row, pos[ok] - 1]
    return targets, valid


def p_hop_examples(
    num_examples: int,
    p: int,
    seq_len: int,
    alphabet_size: int = 4,
    seed: int = 0,
    allow_adjacent_repeats: bool = False,
    max_tries: int = 1000,
) -> dict[str, np.ndarray]:
    """Exact, seeded p-hop induction problems whose `p` hops all exist.

    Each row is `v[1..n]`, a separator `=` and the answer `v[find_p(v, n)]`.
    Sequences are drawn uniformly (letters i.i.d. uniform) and rejected until
    all `p` hops land on a position `>= 1` (so the answer is a real token).
    Sampling choice (the papers leave it open): by default no letter repeats
    its left neighbour; otherwise `v[i-1] = v[i]` makes `find_1(v, i) = i`,
    a hop that does not move, and with 4 letters a quarter of the hops would
    be such no-ops. Then every hop moves back by at least one position, so
    `p <= n - 2` is necessary.

    Args:
        num_examples: number of problems.
        p: the number of hops.
        seq_len: `n`, the length of `v`.
        alphabet_size: number of letters. Defaults to `4` (the paper's).
        seed: NumPy seed.
        allow_adjacent_repeats: draw letters fully i.i.d. (a hop may then
            stay in place). Defaults to `False`.
        max_tries: rejection-sampling attempts per problem before giving up
            with a `ValueError` (then `p` is too large for `seq_len`).

    Returns:
        A dict with `tokens` (int32, `(num_examples, n + 2)`), `answer_mask`
        (bool, `True` on the answer token, the last one), `sequences` (the
        letters `0..alphabet_size-1`, `(num_examples, n)`), `answers` (the
        answer letter) and `hops` (`(num_examples, p)`, the 1-indexed hop
        positions).

    Example:

    >>> data = p_hop_examples(3, p=2, seq_len=8, seed=0)
    >>> data["tokens"].shape, data["answers"].tolist()
    ((3, 10), [0, 0, 2])
    >>> data["tokens"][0].tolist()  # letters + 1, then "=" (5), answer + 1
    [1, 3, 1, 2, 3, 4, 1, 2, 5, 1]
    >>> data["hops"][0].tolist()
    [5, 3]
    """
    num_examples = check_integer("num_examples", num_examples)
    p = check_integer("p", p)
    seq_len = check_integer("seq_len", seq_len, 2)
    alphabet_size = check_integer("alphabet_size", alphabet_size, 2)
    if not allow_adjacent_repeats and p > seq_len - 2:
        raise ValueError(
            "`p` must be at most `seq_len - 2` (each hop moves back at least "
            f"one position). Received: p={p}, seq_len={seq_len}"
        )
    rng = np.random.default_rng(seed)
    sequences = np.zeros((num_examples, seq_len), dtype="int32")
    hops = np.zeros((num_examples, p), dtype="int64")
    for row in range(num_examples):
        for _ in range(max_tries):
            v = _sample_sequence(
                rng, seq_len, alphabet_size, allow_adjacent_repeats
            )
            positions = hop_positions(v, p)
            if positions[-1] > 0:
                break
        else:
            raise ValueError(
                f"`p` is too large for `seq_len`: no sequence with {p} "
                f"existing hops in {max_tries} tries. Received: p={p}, "
                f"seq_len={seq_len}, alphabet_size={alphabet_size}"
            )
        sequences[row] = v
        hops[row] = positions
    answers = sequences[np.arange(num_examples), hops[:, -1] - 1]
    separator = alphabet_size + 1
    tokens = np.concatenate(
        [
            sequences + 1,
            np.full((num_examples, 1), separator, dtype="int32"),
            (answers + 1)[:, None],
        ],
        axis=1,
    ).astype("int32")
    mask = np.zeros_like(tokens, dtype=bool)
    mask[:, -1] = True
    return {
        "tokens": tokens,
        "answer_mask": mask,
        "sequences": sequences,
        "answers": answers.astype("int32"),
        "hops": hops,
    }


def _sample_sequence(rng, n, alphabet_size, allow_adjacent_repeats):
    if allow_adjacent_repeats:
        return rng.integers(0, alphabet_size, size=n)
    # v[0] uniform, then each letter uniform among the alphabet_size - 1
    # letters different from its left neighbour.
    steps = rng.integers(1, alphabet_size, size=n)
    steps[0] = rng.integers(0, alphabet_size)
    return np.cumsum(steps) % alphabet_size


def p_hop_dataset(
    num_examples: int,
    p: int,
    seq_len: int,
    alphabet_size: int = 4,
    seed: int = 0,
    batch_size: int = 32,
    shuffle: bool = True,
) -> Any:
    """`p_hop_examples` as a `tf.data.Dataset` of `(x, y, sample_weight)`
    next-token batches (weight 1 only on the answer target).

    Example:

    >>> ds = p_hop_dataset(8, p=2, seq_len=8, batch_size=4)
    >>> x, y, weight = next(iter(ds))
    >>> tuple(x.shape), tuple(y.shape), tuple(weight.shape)
    ((4, 9), (4, 9), (4, 9))
    """
    data = p_hop_examples(num_examples, p, seq_len, alphabet_size, seed)
    return task_dataset(data, batch_size, shuffle, seed)


__all__ = [
    "hop_positions",
    "p_hop_prefix_targets",
    "lm_arrays",
    "p_hop_dataset",
    "p_hop_examples",
    "p_hop_vocab_size",
]
