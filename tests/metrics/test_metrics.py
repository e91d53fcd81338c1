import keras
import numpy as np
import pytest
import scipy.linalg

from keras_gr.metrics import ClassAccuracy
from keras_gr.metrics import FrechetDistance
from keras_gr.metrics import class_accuracy
from keras_gr.metrics import cosine_similarity_matrix
from keras_gr.metrics import frechet_distance
from keras_gr.metrics import frechet_distance_from_moments
from keras_gr.metrics import vendi_score


def _scipy_frechet(a, b):
    """The textbook FID formula with scipy's general matrix square root."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 16))
    assert abs(frechet_distance(x, x)) < 1e-8


def test_frechet_matches_scipy_reference():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(size=(250, 8)) @ rng.normal(size=(8, 8)) + 0.7
    want = _scipy_frechet(a, b)
    assert want > 1.0
    np.testing.assert_allclose(frechet_distance(a, b), want, rtol=1e-6)


def test_frechet_closed_forms():
    # Mean shift only: ||delta||^2.  Isotropic covariances: d (s1 - s2)^2.
    x = np.random.default_rng(2).normal(size=(100, 5))
    delta = np.array([1.0, -2.0, 0.0, 0.5, 3.0])
    np.testing.assert_allclose(frechet_distance(x, x + delta), delta @ delta)
    d = 6
    value = frechet_distance_from_moments(
        np.zeros(d), 4.0 * np.eye(d), np.ones(d), 9.0 * np.eye(d)
    )
    np.testing.assert_allclose(value, d * 1.0 + d * (2.0 - 3.0) ** 2)


def test_frechet_bad_inputs():
    with pytest.raises(ValueError, match="`features_a` must be a 2-D"):
        frechet_distance(np.zeros(5), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="same feature_dim"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 2)))


def test_vendi_known_answers():
    n = 7
    same = np.tile(np.random.default_rng(3).normal(size=(1, 12)), (n, 1))
    np.testing.assert_allclose(vendi_score(same), 1.0, atol=1e-6)
    # Orthogonal embeddings (rows of a random rotation, scaled): n.
    q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(12, 12)))
    ortho = q[:n] * np.arange(1, n + 1)[:, None]
    np.testing.assert_allclose(vendi_score(ortho), n, rtol=1e-6)
    # Two orthogonal clusters of equal size: 2; unequal sizes: exp(H).
    two = np.concatenate([np.tile(q[:1], (4, 1)), np.tile(q[1:2], (4, 1))])
    np.testing.assert_allclose(vendi_score(two), 2.0, rtol=1e-6)
    three = np.concatenate([np.tile(q[:1], (1, 1)), np.tile(q[1:2], (3, 1))])
    p = np.array([0.25, 0.75])
    np.testing.assert_allclose(
        vendi_score(three), np.exp(-np.sum(p * np.log(p))), rtol=1e-6
    )
    # q = 2: 1 / sum(p^2).
    np.testing.assert_allclose(vendi_score(three, q=2), 1 / np.sum(p**2))


def test_vendi_between_one_and_n_and_bad_q():
    x = np.random.default_rng(5).normal(size=(20, 4))
    assert 1.0 < vendi_score(x) < 20.0
    k = cosine_similarity_matrix(x)
    np.testing.assert_allclose(np.diag(k), 1.0)
    with pytest.raises(ValueError, match="`q` must be a positive"):
        vendi_score(x, q=0)
    with pytest.raises(ValueError, match="`features` must be a 2-D"):
        vendi_score(np.zeros(3))


def test_class_accuracy():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0]])
    assert class_accuracy(logits, [0, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="`logits` must be"):
        class_accuracy(logits, [0, 1])


def test_frechet_nan_features_raise_a_named_error():
    x = np.random.default_rng(6).normal(size=(10, 3))
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="`features_b` must hold only finite"):
        frechet_distance(x, bad)
    with pytest.raises(ValueError, match="`features_a` must hold only finite"):
        frechet_distance(np.where(bad > 0, np.inf, bad), x)
    with pytest.raises(ValueError, match="`cov_b`"):
        frechet_distance_from_moments(
            np.zeros(2), np.eye(2), np.zeros(2), np.full((2, 2), np.nan)
        )


def test_frechet_metric_accumulates_over_batches():
    rng = np.random.default_rng(7)
    mix = rng.normal(size=(6, 6))
    real = rng.normal(size=(96, 6)) @ mix + 3.0  # offset: tests centring
    fake = 1.3 * rng.normal(size=(80, 6)) @ mix + 2.5
    metric = FrechetDistance(feature_dim=6)
    for i, j in [(0, 16), (16, 50), (50, 96)]:  # unequal batches
        metric.update_state(real[i:j], None)
    for i in range(0, 80, 20):
        metric.update_state(None, fake[i : i + 20])
    want = frechet_distance(real, fake)
    assert want > 1.0
    np.testing.assert_allclose(float(metric.result()), want, rtol=2e-3)
    metric.reset_state()
    metric.update_state(real, real)
    assert abs(float(metric.result())) < 1e-2 * want
    clone = FrechetDistance.from_config(metric.get_config())
    assert clone.feature_dim == 6
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(metric)
    )
    assert isinstance(revived, FrechetDistance)
    with pytest.raises(ValueError, match="`feature_dim`"):
        FrechetDistance(feature_dim=0)


def test_vendi_rejects_bool_and_nan_q_and_handles_inf():
    x = np.random.default_rng(8).normal(size=(12, 5))
    for q in (True, float("nan"), -1.0, "2"):
        with pytest.raises(ValueError, match="`q` must be a positive"):
            vendi_score(x, q=q)
    k = cosine_similarity_matrix(x)
    p = np.linalg.eigvalsh(k / len(k))
    p = p[p > 1e-12] / p[p > 1e-12].sum()
    np.testing.assert_allclose(vendi_score(x, q=float("inf")), 1 / p.max())
    # Renyi entropies fall with the order: 1/max p is the smallest score.
    assert vendi_score(x, q=np.inf) < vendi_score(x, q=2) < vendi_score(x)
    with pytest.raises(ValueError, match="`features` must hold only finite"):
        vendi_score(np.full((3, 2), np.nan))


def test_class_accuracy_nan_logits_are_wrong_not_class_zero():
    logits = np.array([[np.nan, 0.0], [0.0, 1.0], [np.inf, 0.0], [1.0, 0.0]])
    labels = np.array([0, 1, 0, 0])
    assert class_accuracy(logits, labels) == pytest.approx(0.5)
    metric = ClassAccuracy()
    metric.update_state(labels[:2], logits[:2])
    metric.update_state(labels[2:], logits[2:])
    assert float(metric.result()) == pytest.approx(0.5)
    rng = np.random.default_rng(9)
    big = rng.normal(size=(50, 10))
    lab = rng.integers(0, 10, 50)
    metric.reset_state()
    for i in range(0, 50, 15):
        metric.update_state(lab[i : i + 15], big[i : i + 15])
    assert float(metric.result()) == pytest.approx(class_accuracy(big, lab))
    assert isinstance(
        keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(metric)
        ),
        ClassAccuracy,
    )
