import keras
import numpy as np
import pytest

from keras_gr.models import salt_scores_from_logits
from keras_gr.models import salt_selection_scores
from keras_gr.models import select_top_fraction
from keras_gr.models import teacher_topk_targets
from tests.models.test_salt_distiller import VOCAB
from tests.models.test_salt_distiller import lm_data
from tests.models.test_salt_distiller import tiny_lm


def brute_force_scores(logits, labels, mask, k):
    """Loops over sequences and tokens; independent of the ops version."""
    scores = []
    for b in range(logits.shape[0]):
        kept = []
        for t in range(logits.shape[1]):
            if not mask[b, t]:
                continue
            row = np.asarray(logits[b, t], "float64")
            order = sorted(range(len(row)), key=lambda v: -row[v])
            top = {v for v in order[:k]}
            target = int(labels[b, t])
            # a tie with the k-th logit counts as inside the top-k
            if target in top or row[target] >= row[order[k - 1]]:
                log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
                kept.append(log_z - row[target])
        scores.append(np.median(kept) if kept else -np.inf)
    return np.array(scores)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_scores_match_brute_force(k):
    rng = np.random.default_rng(k)
    logits = rng.normal(size=(5, 7, 12)) * 2
    labels = rng.integers(0, 12, size=(5, 7))
    mask = rng.random((5, 7)) > 0.3
    mask[4] = False  # a fully padded sequence scores -inf
    got = np.asarray(salt_scores_from_logits(logits, labels, mask, k))
    want = brute_force_scores(logits, labels, mask, k)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[4] == -np.inf


def test_compiled_scoring_pass_matches_brute_force_on_teacher():
    teacher = tiny_lm(1, 8, 5)
    x, y, mask = lm_data(10, seed=3)
    scores = salt_selection_scores(
        teacher, x, y, mask, k=10, batch_size=4, verbose=0
    )
    logits = keras.ops.convert_to_numpy(teacher(x))
    np.testing.assert_allclose(
        scores, brute_force_scores(logits, y, mask, 10), rtol=1e-4
    )
    targets = teacher_topk_targets(teacher, x, k=5, temperature=2.0, verbose=0)
    z = logits.astype("float64") / 2.0
    logp = (
        z
        - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1))[..., None]
        - z.max(-1, keepdims=True)
    )
    want_ids = np.argsort(-logp, axis=-1)[..., :5]
    np.testing.assert_array_equal(targets["teacher_topk_ids"], want_ids)
    np.testing.assert_allclose(
        targets["teacher_topk_log_probs"],
        np.take_along_axis(logp, want_ids, -1),
        rtol=1e-4,
        atol=1e-5,
    )


def test_select_top_fraction():
    scores = np.array([0.3, -np.inf, 2.0, 1.0, 2.0])
    assert select_top_fraction(scores, 0.4).tolist() == [2, 4]
    assert select_top_fraction(scores, 1.0).tolist() == [2, 4, 3, 0, 1]
    assert select_top_fraction(scores, 0.01).tolist() == [2]


def test_bad_input():
    teacher = tiny_lm(1, 8, 5)
    x, y, mask = lm_data(4)
    with pytest.raises(ValueError, match="Received: fraction=0.0"):
        select_top_fraction([1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="Received: fraction=1.5"):
        select_top_fraction([1.0, 2.0], 1.5)
    with pytest.raises(ValueError, match="Received: k=0"):
        salt_selection_scores(teacher, x, y, k=0)
    with pytest.raises(ValueError, match=f"<= {VOCAB}. Received: k=33"):
        teacher_topk_targets(teacher, x, k=VOCAB + 1)
    empty = {
        "token_ids": np.zeros((0, 8), "int32"),
        "padding_mask": np.zeros((0, 8), bool),
    }
    with pytest.raises(ValueError, match="must not be empty"):
        salt_selection_scores(teacher, empty, np.zeros((0, 8)))
    with pytest.raises(ValueError, match="`labels` must have the shape"):
        salt_selection_scores(teacher, x, y[:, :3])


@pytest.mark.multidevice
@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="multi-device runs once, on JAX"
)
def test_data_parallel_scoring_equals_single_device():
    from tests.multidevice import run_on_devices

    result = run_on_devices(
        """
import keras
import numpy as np
from keras_gr.losses import teacher_topk
from keras_gr.models import salt_scores_from_logits, salt_selection_scores
from keras_gr.models import teacher_topk_targets
from tests.models.test_salt_distiller import lm_data, tiny_lm

teacher = tiny_lm(1, 8, 5)
x, y, mask = lm_data(32, seed=4)
# One-device reference: the same reductions, eagerly on the whole batch.
logits = teacher(x)
single = np.asarray(salt_scores_from_logits(logits, y, mask, 10))
ids, logp = teacher_topk(logits, 4)
top1 = dict(teacher_topk_ids=np.asarray(ids),
            teacher_topk_log_probs=np.asarray(logp))
keras.distribution.set_distribution(keras.distribution.DataParallel())
n_dev = len(keras.distribution.list_devices())
weights = teacher.get_weights()
teacher = tiny_lm(1, 8, 5)  # built under the distribution: replicated
teacher.set_weights(weights)
multi = salt_selection_scores(teacher, x, y, mask, batch_size=16, verbose=0)
topm = teacher_topk_targets(teacher, x, k=4, batch_size=16, verbose=0)
RESULT = dict(
    devices=n_dev,
    scores_close=bool(np.allclose(single, multi, rtol=1e-5, atol=1e-6)),
    finite=int(np.isfinite(single).sum()),
    ids_equal=bool(np.array_equal(top1["teacher_topk_ids"],
                                  topm["teacher_topk_ids"])),
    logp_diff=float(np.max(np.abs(top1["teacher_topk_log_probs"]
                                  - topm["teacher_topk_log_probs"]))),
)
"""
    )
    assert result["devices"] == 8
    assert result["scores_close"] and result["finite"] > 16
    assert result["ids_equal"]
    assert result["logp_diff"] < 1e-5


def test_default_label_mask_is_shifted():
    # Issue 26 item 9: without a label mask the scorer used padding_mask,
    # which also scores each row's last real token (label: padding).
    from tests.models.test_salt_distiller import packed_data

    teacher = tiny_lm(1, 8, 5)
    x, y, label_mask = packed_data(6)
    got = salt_selection_scores(teacher, x, y, k=VOCAB, verbose=0)
    want = salt_selection_scores(teacher, x, y, label_mask, k=VOCAB, verbose=0)
    np.testing.assert_array_equal(got, want)
    logits = keras.ops.convert_to_numpy(teacher(x))
    np.testing.assert_allclose(
        got, brute_force_scores(logits, y, label_mask, VOCAB), rtol=1e-4
    )


@pytest.mark.parametrize(
    "case, match",
    [
        ("label_mask_shape", "`label_mask` must have the shape"),
        ("padding_mask_shape", "`x\\['padding_mask'\\]` must have the shape"),
        ("float_ids", "must hold integer token ids"),
        ("ids_out_of_vocab", "must hold ids in \\[0, 32\\)"),
        ("negative_labels", "`labels` must hold ids in"),
        ("nan_label_mask", "must hold only finite"),
    ],
)
def test_bad_scoring_inputs(case, match):
    # Issue 26 item 10: a wrong-shape label_mask was a TypeError from
    # inside the teacher pass (JAX).
    teacher = tiny_lm(1, 8, 5)
    x, y, mask = lm_data(4)
    if case == "label_mask_shape":
        mask = mask[:, :-1]
    elif case == "padding_mask_shape":
        x = dict(x, padding_mask=x["padding_mask"][:, :3])
    elif case == "float_ids":
        x = dict(x, token_ids=x["token_ids"].astype("float32"))
    elif case == "ids_out_of_vocab":
        x = dict(x, token_ids=x["token_ids"] + VOCAB)
    elif case == "negative_labels":
        y = -y
    elif case == "nan_label_mask":
        mask = mask.copy()
        mask[0, 0] = np.nan
    with pytest.raises(ValueError, match=match):
        salt_selection_scores(teacher, x, y, mask, verbose=0)


@pytest.mark.parametrize(
    "scores", [[0.5, np.nan, 1.0], [np.inf, 1.0]], ids=["nan", "inf"]
)
def test_select_top_fraction_rejects_nan_scores(scores):
    # Issue 26 item 10: NaN scores were ranked silently.
    with pytest.raises(ValueError, match="`scores` must not hold NaN"):
        select_top_fraction(scores, 0.5)
