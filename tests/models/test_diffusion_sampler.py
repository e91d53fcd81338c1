import functools
import math
import os

import keras
import numpy as np
import pytest

from keras_gr.layers import LatentCRF
from keras_gr.models import DiffusionSampler
from keras_gr.models import NoiseSchedule

SHAPE = (4, 4, 2)


@functools.cache
def _denoiser(seed=0, num_classes=3):
    """A small conditional noise predictor with random weights (built once
    per seed and shared read-only: its compiled predict is reused)."""
    keras.utils.set_random_seed(seed)
    z = keras.Input(SHAPE)
    t = keras.Input((1,))
    label = keras.Input((), dtype="int32")
    emb = keras.layers.Embedding(num_classes, 2)(label)
    temb = keras.layers.Dense(2, activation="tanh")(t / 1000.0)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="tanh")(z)
    h = h + keras.layers.Reshape((1, 1, 2))(emb + temb)[..., :1]
    eps = keras.layers.Conv2D(2, 3, padding="same")(h)
    return keras.Model([z, t, label], eps)


def _crf(seed=1, **kwargs):
    keras.utils.set_random_seed(seed)
    crf = LatentCRF(num_steps=2, num_experts=2, dilations=(2,), **kwargs)
    shapes = [(None,) + SHAPE, (None, 3)]
    if kwargs.get("use_timestep"):
        shapes.append((None, 1))
    crf.build(shapes)
    rng = np.random.default_rng(seed)
    for v in crf.weights:  # move it away from the identity
        v.assign(v + 0.3 * rng.normal(size=v.shape).astype("float32"))
    return crf


def _reference(
    denoiser,
    schedule,
    num_steps,
    noise,
    labels,
    crf=None,
    start=None,
    stop=None,
    clip=None,
    spacing="trailing",
):
    """Step by step: one eager denoiser call per step, NumPy DDIM maths."""
    ts = schedule.timesteps(num_steps, spacing)
    abars = schedule.alpha_bars

    def ab(k):
        return 1.0 if k >= num_steps else abars[ts[k]]

    z = noise.astype("float64")
    x0 = z
    k = 0
    while k < num_steps:
        if crf is not None and k == start:
            x_in = z if k == 0 else x0
            cond = np.eye(3, dtype="float32")[labels]
            inputs = [x_in.astype("float32"), cond]
            if crf.use_timestep:
                inputs.append(np.full((len(z), 1), ts[k], "float32"))
            x0 = np.asarray(crf(inputs), "float64")
            if clip is not None:
                x0 = np.clip(x0, -clip, clip)
            if stop == num_steps:
                return x0
            eps = (z - np.sqrt(ab(k)) * x0) / np.sqrt(1 - ab(k))
            k = stop
            z = np.sqrt(ab(k)) * x0 + np.sqrt(1 - ab(k)) * eps
            continue
        t = np.full((len(z), 1), ts[k], "float32")
        eps = np.asarray(
            denoiser.predict_on_batch([z.astype("float32"), t, labels]),
            "float64",
        )
        x0 = (z - np.sqrt(1 - ab(k)) * eps) / np.sqrt(ab(k))
        if clip is not None:
            x0 = np.clip(x0, -clip, clip)
        z = np.sqrt(ab(k + 1)) * x0 + np.sqrt(1 - ab(k + 1)) * eps
        k += 1
    return x0


def test_noise_schedule_golden_and_config():
    s = NoiseSchedule(1000)
    np.testing.assert_array_equal(s.timesteps(4), [999, 749, 499, 249])
    np.testing.assert_array_equal(NoiseSchedule(10).timesteps(1), [9])
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000) ** 2
    np.testing.assert_allclose(s.alpha_bars, np.cumprod(1 - betas))
    lin = NoiseSchedule(100, kind="linear", beta_start=1e-4, beta_end=0.02)
    np.testing.assert_allclose(
        lin.alpha_bars, np.cumprod(1 - np.linspace(1e-4, 0.02, 100))
    )
    cos = NoiseSchedule(50, kind="cosine")
    f = np.cos((np.arange(51) / 50 + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(cos.alpha_bars[:-1], (f[1:] / f[0])[:-1])
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(lin)
    )
    np.testing.assert_array_equal(clone.alpha_bars, lin.alpha_bars)
    with pytest.raises(ValueError, match="`num_steps` must be an integer"):
        s.timesteps(1001)
    # The other spacings, written out for N = 1000, T = 8.
    np.testing.assert_array_equal(
        s.timesteps(8, "leading"), [875, 750, 625, 500, 375, 250, 125, 0]
    )
    np.testing.assert_array_equal(
        s.timesteps(8, "linspace"), np.round(np.linspace(999, 0, 8))
    )
    np.testing.assert_array_equal(
        s.timesteps(8, "quadratic"),
        np.round(999 * (np.arange(7, -1, -1) / 7) ** 2),
    )
    np.testing.assert_array_equal(s.timesteps(1, "linspace"), [999])
    with pytest.raises(ValueError, match="repeats a timestep"):
        NoiseSchedule(20).timesteps(10, "quadratic")
    with pytest.raises(ValueError, match="`spacing` must be one of"):
        s.timesteps(4, "uniform")
    with pytest.raises(ValueError, match="`kind` must be one of"):
        NoiseSchedule(kind="sigmoid")


def test_compiled_sampler_recovers_a_point_mass():
    # The exact noise predictor of a one-point data set: every DDIM clean
    # estimate is the point itself, so the sampler must return it.
    schedule = NoiseSchedule(1000)
    target = np.random.default_rng(1).normal(size=(1,) + SHAPE)
    abars = schedule.alpha_bars.astype("float32")

    class Oracle(keras.layers.Layer):
        def call(self, inputs):
            z, t = inputs
            ab = keras.ops.take(abars, keras.ops.cast(t[:, 0], "int32"))
            ab = keras.ops.reshape(ab, (-1, 1, 1, 1))
            x = keras.ops.convert_to_tensor(target.astype("float32"))
            return (z - keras.ops.sqrt(ab) * x) / keras.ops.sqrt(1 - ab)

    noise = np.random.default_rng(2).normal(size=(3,) + SHAPE)
    for eta in (0.0, 1.0):
        sampler = DiffusionSampler(Oracle(), schedule, num_steps=6, eta=eta)
        out = np.asarray(sampler.predict_on_batch(noise.astype("float32")))
        np.testing.assert_allclose(
            out, np.broadcast_to(target, noise.shape), atol=1e-3
        )


@pytest.mark.parametrize(
    "start, stop, timed, spacing",
    [
        (None, None, False, "linspace"),
        (3, 5, False, "trailing"),
        (1, 3, True, "trailing"),
    ],
)
def test_compiled_sampler_equals_step_by_step_reference(
    start, stop, timed, spacing
):
    schedule = NoiseSchedule(1000)
    denoiser = _denoiser()
    crf = None if start is None else _crf(use_timestep=timed)
    sampler = DiffusionSampler(
        denoiser,
        schedule,
        num_steps=5,
        clip=3.0,
        crf=crf,
        crf_start=start,
        crf_stop=stop,
        crf_num_classes=3,
        spacing=spacing,
    )
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(4,) + SHAPE).astype("float32")
    labels = np.array([0, 1, 2, 1], "int32")
    out = np.asarray(sampler.predict_on_batch([noise, labels]))
    want = _reference(
        denoiser, schedule, 5, noise, labels, crf, start, stop, 3.0, spacing
    )
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    assert sampler.denoiser_calls == 5 - (0 if start is None else stop - start)
    if start is not None:  # the bypass does change the samples
        plain = _reference(denoiser, schedule, 5, noise, labels, clip=3.0)
        assert np.max(np.abs(plain - want)) > 1e-2


def test_sampler_save_load_gives_same_samples(tmp_path):
    schedule = NoiseSchedule(500, kind="linear", beta_start=1e-4, beta_end=0.02)
    sampler = DiffusionSampler(
        _denoiser(seed=4),
        schedule,
        num_steps=4,
        eta=1.0,
        crf=_crf(seed=5, use_timestep=True),
        crf_start=1,
        crf_stop=3,
        crf_num_classes=3,
        spacing="quadratic",
        seed=7,
    )
    rng = np.random.default_rng(6)
    noise = rng.normal(size=(3,) + SHAPE).astype("float32")
    labels = np.array([2, 0, 1], "int32")
    out = np.asarray(sampler.predict_on_batch([noise, labels]))
    # eta = 1: seeded, so the same noise gives the same samples ...
    np.testing.assert_array_equal(
        out, np.asarray(sampler.predict_on_batch([noise, labels]))
    )
    path = os.path.join(tmp_path, "sampler.keras")
    sampler.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, DiffusionSampler)
    assert isinstance(loaded.crf, LatentCRF)
    assert loaded.schedule.get_config() == schedule.get_config()
    np.testing.assert_array_equal(loaded.timesteps, [499, 222, 55, 0])
    np.testing.assert_allclose(
        np.asarray(loaded.predict_on_batch([noise, labels])), out, atol=1e-5
    )
    # ... the pieces save on their own too: the denoiser resumes equal.
    den_path = os.path.join(tmp_path, "denoiser.keras")
    sampler.denoiser.save(den_path)
    den = keras.models.load_model(den_path)
    t = np.full((3, 1), 10.0, "float32")
    np.testing.assert_allclose(
        np.asarray(den.predict_on_batch([noise, t, labels])),
        np.asarray(sampler.denoiser.predict_on_batch([noise, t, labels])),
        atol=1e-6,
    )


def test_bad_sampler_arguments():
    den, schedule = _denoiser(), NoiseSchedule(100)
    with pytest.raises(ValueError, match="`schedule` must be a NoiseSchedule"):
        DiffusionSampler(den, "linear")
    with pytest.raises(ValueError, match="`num_steps` must be an integer"):
        DiffusionSampler(den, schedule, num_steps=101)
    with pytest.raises(ValueError, match="`eta`"):
        DiffusionSampler(den, schedule, eta=2.0)
    with pytest.raises(ValueError, match="need a `crf`"):
        DiffusionSampler(den, schedule, crf_start=2)
    crf = LatentCRF()
    with pytest.raises(ValueError, match="`crf_start` must be given"):
        DiffusionSampler(den, schedule, num_steps=4, crf=crf)
    with pytest.raises(ValueError, match="`crf_stop` must be an integer"):
        DiffusionSampler(
            den, schedule, num_steps=4, crf=crf, crf_start=2, crf_stop=2
        )
    with pytest.raises(ValueError, match="`crf_input`"):
        DiffusionSampler(
            den, schedule, num_steps=4, crf=crf, crf_start=2, crf_input="eps"
        )
