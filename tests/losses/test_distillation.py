import numpy as np
import pytest

from keras_gr.losses import distillation_divergence
from keras_gr.losses import kd_weight_schedule
from keras_gr.losses import masked_mean
from keras_gr.losses import teacher_topk
from keras_gr.losses import topk_distillation_divergence


def _np_log_softmax(z, tau):
    z = np.asarray(z, "float64") / tau
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_kl(teacher, student, tau, divergence):
    lt, ls = _np_log_softmax(teacher, tau), _np_log_softmax(student, tau)
    if divergence == "forward":
        kl = (np.exp(lt) * (lt - ls)).sum(-1)
    else:
        kl = (np.exp(ls) * (ls - lt)).sum(-1)
    return tau**2 * kl


def _logits(seed, shape=(3, 5, 11), scale=3.0):
    return np.random.default_rng(seed).normal(size=shape) * scale


@pytest.mark.parametrize("divergence", ["forward", "reverse"])
@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_kd_loss_matches_numpy_with_padding(divergence, tau):
    t, s = _logits(0), _logits(1)
    mask = np.ones((3, 5))
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    got = distillation_divergence(t, s, tau, divergence)
    want = _np_kl(t, s, tau, divergence)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    got_mean = float(masked_mean(got, mask))
    want_mean = (want * mask).sum() / mask.sum()
    np.testing.assert_allclose(got_mean, want_mean, rtol=1e-4)
    # Padding positions must not matter at all.
    s2 = s.copy()
    s2[mask == 0] = 1e3
    got2 = float(masked_mean(distillation_divergence(t, s2, tau), mask))
    got1 = float(masked_mean(distillation_divergence(t, s, tau), mask))
    np.testing.assert_allclose(got2, got1, rtol=1e-6)


def test_kd_loss_zero_iff_equal_and_forward_differs_from_reverse():
    t, s = _logits(2), _logits(3)
    np.testing.assert_allclose(
        np.asarray(distillation_divergence(t, t, 1.7)), 0.0, atol=1e-5
    )
    fwd = np.asarray(distillation_divergence(t, s, 1.0, "forward"))
    rev = np.asarray(distillation_divergence(t, s, 1.0, "reverse"))
    assert np.all(fwd > 0) and np.all(rev > 0)
    assert np.abs(fwd - rev).max() > 1e-2


@pytest.mark.parametrize("divergence", ["forward", "reverse"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_topk_loss_equals_full_loss_at_k_equal_vocabulary(divergence, tau):
    t, s = _logits(4), _logits(5)
    ids, logp = teacher_topk(t, k=11, temperature=tau)
    got = topk_distillation_divergence(ids, logp, s, tau, divergence)
    want = _np_kl(t, s, tau, divergence)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("divergence", ["forward", "reverse"])
def test_topk_loss_matches_numpy_rest_bucket(divergence):
    t, s, k, tau = _logits(6), _logits(7), 3, 1.5
    lt, ls = _np_log_softmax(t, tau), _np_log_softmax(s, tau)
    idx = np.argsort(-lt, axis=-1)[..., :k]
    pt = np.take_along_axis(np.exp(lt), idx, -1)
    ps = np.take_along_axis(np.exp(ls), idx, -1)
    bt = np.concatenate([pt, 1 - pt.sum(-1, keepdims=True)], -1)
    bs = np.concatenate([ps, 1 - ps.sum(-1, keepdims=True)], -1)
    if divergence == "forward":
        want = (bt * (np.log(bt) - np.log(bs))).sum(-1)
    else:
        want = (bs * (np.log(bs) - np.log(bt))).sum(-1)
    ids, logp = teacher_topk(t, k=k, temperature=tau)
    np.testing.assert_array_equal(np.asarray(ids), idx)
    got = topk_distillation_divergence(ids, logp, s, tau, divergence)
    np.testing.assert_allclose(
        np.asarray(got), tau**2 * want, rtol=1e-4, atol=1e-5
    )
    assert np.all(np.asarray(got) >= -1e-6)


def test_schedules_are_exact():
    steps = np.arange(8)
    step = [float(kd_weight_schedule(t, 0.6, 5, "step")) for t in steps]
    assert step == [0.6000000238418579] * 5 + [0.0] * 3
    lin = [float(kd_weight_schedule(t, 0.6, 4, "linear")) for t in steps]
    np.testing.assert_allclose(lin, [0.6, 0.45, 0.3, 0.15, 0, 0, 0, 0])
    assert lin[4:] == [0.0] * 4
    const = [float(kd_weight_schedule(t, 0.3, 2, "constant")) for t in steps]
    np.testing.assert_allclose(const, 0.3)
    assert float(kd_weight_schedule(0, 0.5, 0, "step")) == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=0.0), "`temperature` must be a finite number > 0"),
        (dict(temperature=-1.0), "Received: temperature=-1.0"),
        (dict(divergence="jsd"), "`divergence` must be one of"),
    ],
)
def test_kd_loss_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distillation_divergence(_logits(0), _logits(1), **kwargs)


def test_schedule_and_topk_bad_input():
    with pytest.raises(ValueError, match="Received: n_kd_steps=-1"):
        kd_weight_schedule(0, 0.5, -1)
    with pytest.raises(ValueError, match="Received: kd_weight=1.5"):
        kd_weight_schedule(0, 1.5, 3)
    with pytest.raises(ValueError, match="`schedule` must be one of"):
        kd_weight_schedule(0, 0.5, 3, "cosine")
    with pytest.raises(ValueError, match="Received: k=0"):
        teacher_topk(_logits(0), k=0)
