import numpy as np
import pytest

from keras_gr.data import hop_positions
from keras_gr.data import lm_arrays
from keras_gr.data import p_hop_dataset
from keras_gr.data import p_hop_examples
from keras_gr.data import p_hop_prefix_targets
from keras_gr.data import p_hop_vocab_size


def _find_1(v, i):
    """Direct search of the definition: 1-indexed v, v[0] undefined."""
    best = 0
    for j in range(2, i + 1):
        if v[j - 2] == v[i - 1]:  # v[j-1] == v[i] in 1-indexed terms
            best = j
    return best


def _brute_force(v, p):
    i = len(v)
    hops = []
    for _ in range(p):
        i = _find_1(v, i) if i > 0 else 0
        hops.append(i)
    return hops


@pytest.mark.parametrize("p,n", [(1, 8), (3, 16), (6, 32)])
def test_answers_by_direct_search(p, n):
    data = p_hop_examples(200, p, n, seed=p)
    for row in range(200):
        v = list(data["sequences"][row])
        hops = _brute_force(v, p)
        assert hops == list(data["hops"][row])
        assert all(h >= 1 for h in hops)  # the p hops exist
        assert data["answers"][row] == v[hops[-1] - 1]
        tokens = data["tokens"][row]
        assert list(tokens[:n]) == [t + 1 for t in v]
        assert tokens[n] == 5  # separator
        assert tokens[-1] == data["answers"][row] + 1
        assert np.flatnonzero(data["answer_mask"][row]).tolist() == [n + 1]


def test_hop_positions_on_random_sequences():
    rng = np.random.default_rng(0)
    for _ in range(100):
        v = list(rng.integers(0, 3, size=12))
        assert hop_positions(v, 5) == _brute_force(v, 5)


def test_no_adjacent_repeats_and_uniform_letters():
    data = p_hop_examples(500, 2, 24, seed=0)
    seqs = data["sequences"]
    assert np.all(seqs[:, 1:] != seqs[:, :-1])
    counts = np.bincount(seqs.ravel(), minlength=4) / seqs.size
    np.testing.assert_allclose(counts, 0.25, atol=0.02)
    free = p_hop_examples(200, 2, 24, seed=0, allow_adjacent_repeats=True)
    assert np.any(free["sequences"][:, 1:] == free["sequences"][:, :-1])


def test_seeded_and_dataset():
    a = p_hop_examples(50, 2, 16, seed=4)
    b = p_hop_examples(50, 2, 16, seed=4)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    assert a["tokens"].max() < p_hop_vocab_size(4)
    x, y, w = lm_arrays(a["tokens"], a["answer_mask"])
    assert w.sum() == 50 and np.all(w[:, -1] == 1)
    np.testing.assert_array_equal(y[:, -1], a["answers"] + 1)
    ds = p_hop_dataset(50, 2, 16, seed=4, batch_size=50, shuffle=False)
    bx, by, bw = next(iter(ds))
    np.testing.assert_array_equal(np.asarray(bx), x)


def test_p_too_large():
    with pytest.raises(ValueError, match="`p`"):
        p_hop_examples(5, 15, 16)
    # Allowed in principle but not reachable by sampling: clear error.
    with pytest.raises(ValueError, match="`p` is too large"):
        p_hop_examples(5, 14, 16, max_tries=20)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(p=0), "p"),
        (dict(seq_len=1), "seq_len"),
        (dict(alphabet_size=1), "alphabet_size"),
        (dict(num_examples=0), "num_examples"),
    ],
)
def test_bad_arguments(kwargs, name):
    args = dict(num_examples=5, p=2, seq_len=16)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        p_hop_examples(**args)


@pytest.mark.parametrize("p", [1, 2, 4])
def test_prefix_targets_by_direct_search(p):
    data = p_hop_examples(60, p, 14, seed=10 + p, allow_adjacent_repeats=True)
    targets, valid = p_hop_prefix_targets(data["sequences"], p)
    for row in range(60):
        v = list(data["sequences"][row])
        for i in range(1, 15):
            hops = _brute_force(v[:i], p)
            exists = hops[-1] >= 1
            assert valid[row, i - 1] == exists, (row, i)
            if exists:
                assert targets[row, i - 1] == v[hops[-1] - 1]
        # The last prefix is the sequence's own problem.
        assert valid[row, -1]
        assert targets[row, -1] == data["answers"][row]
    assert 0 < valid.mean() < 1  # short prefixes lack their hops


def test_prefix_targets_bad_input():
    with pytest.raises(ValueError, match="`p`"):
        p_hop_prefix_targets(np.zeros((2, 5), "int32"), 0)
    with pytest.raises(ValueError, match="`sequences`"):
        p_hop_prefix_targets(np.zeros((5,), "int32"), 1)
