import functools
import math
import os
import warnings

import keras
import numpy as np
import pytest

from keras_gr.layers import LatentCRF
from keras_gr.models import DiffusionSampler
from keras_gr.models import NoiseSchedule
from keras_gr.models.diffusion.diffusion_sampler import ddim_update
from tests.models import diffusion_reference as ref

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
    for bad in (0, 5, 1.5):
        with pytest.raises(ValueError, match="`stop_step` must be an integer"):
            DiffusionSampler(den, schedule, num_steps=4, stop_step=bad)
    with pytest.raises(ValueError, match="`stop_step` cannot be combined"):
        DiffusionSampler(
            den, schedule, num_steps=4, crf=crf, crf_start=2, stop_step=2
        )


def test_ddim_update_matches_numpy_reference():
    rng = np.random.default_rng(0)
    z, eps, xi = (rng.normal(size=(2, 3, 3, 1)) for _ in range(3))
    ab, ab_next = 0.3, 0.8
    for clip, eta in ((None, 0.0), (0.5, 0.0), (0.5, 1.0), (None, 0.7)):
        sigma = ref.ddim_sigma(ab, ab_next, eta)
        got = ddim_update(
            z.astype("float32"),
            eps.astype("float32"),
            ab,
            ab_next,
            sigma,
            xi.astype("float32"),
            clip,
        )
        want = ref.ddim_step(z, eps, ab, ab_next, clip, sigma, xi)
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-5)
    # The exact property: on x0 and eps of a forward-noised point, DDIM's
    # clean estimate is x0 and the next state is the point noised to abar'.
    x0 = rng.normal(size=(2, 3))
    z_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps[:, 0, :, 0]
    z_next, x0_hat = ddim_update(z_t, eps[:, 0, :, 0], ab, ab_next)
    np.testing.assert_allclose(np.asarray(x0_hat), x0, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(z_next),
        math.sqrt(ab_next) * x0 + math.sqrt(1 - ab_next) * eps[:, 0, :, 0],
        atol=1e-6,
    )


def test_truncated_sampler_and_step_equal_the_host_reference():
    # `stop_step` returns the clean estimate after the first steps, and
    # `step` with given noise reproduces a host loop with the same noise:
    # both against the NumPy host sampler, one eager denoiser call a step.
    schedule = NoiseSchedule(1000)
    denoiser = _denoiser()
    rng = np.random.default_rng(4)
    noise = rng.normal(size=(3,) + SHAPE).astype("float32")
    labels = np.array([2, 0, 1], "int32")
    host = ref.HostDDIMSampler(denoiser, schedule.alpha_bars, 5, clip=2.0)
    _, want_x0 = host.run(noise, labels, stop=3)
    truncated = DiffusionSampler(
        denoiser, schedule, num_steps=5, clip=2.0, stop_step=3
    )
    assert truncated.denoiser_calls == 3
    got = np.asarray(truncated.predict_on_batch([noise, labels]))
    np.testing.assert_allclose(got, want_x0, rtol=1e-4, atol=1e-4)
    assert truncated.get_config()["stop_step"] == 3
    # A DDPM tail (eta = 1) from step 3 with host noise, step by step.
    tail = DiffusionSampler(denoiser, schedule, num_steps=5, eta=1.0, clip=2.0)
    z, _ = host.run(noise, labels, stop=3)
    want_z, want_x0 = host.run(
        z, labels, 3, 5, eta=1.0, rng=np.random.default_rng(9)
    )
    draws = np.random.default_rng(9)
    got_z = z.astype("float32")
    for k in (3, 4):
        assert (tail.sigma(k) > 0) == (k == 3)  # none at the last step
        xi = draws.normal(size=z.shape) if tail.sigma(k) > 0 else None
        got_z, got_x0 = tail.step(got_z, k, labels, xi)
    np.testing.assert_allclose(np.asarray(got_z), want_z, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got_x0), want_x0, atol=1e-4)


def test_deprecated_ddim_sampler_warns_and_matches_reference():
    from keras_gr.models import DDIMSampler

    schedule = NoiseSchedule(1000)
    denoiser = _denoiser()
    with pytest.warns(DeprecationWarning, match="DiffusionSampler"):
        sampler = DDIMSampler(denoiser, schedule.alpha_bars, 4, clip=2.0)
    noise = np.random.default_rng(5).normal(size=(2,) + SHAPE)
    labels = np.array([1, 2], "int32")
    host = ref.HostDDIMSampler(denoiser, schedule.alpha_bars, 4, clip=2.0)
    out = sampler.sample(noise, labels, stop_after=2)
    want_z, want_x0 = host.run(noise, labels, stop=2)
    assert sampler.denoiser_calls == 2
    np.testing.assert_allclose(out["x0"], want_x0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["zt"], want_z, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out["latents"], out["x0"])
    sampler.reset_count()
    full = sampler.sample(noise, labels)
    assert sampler.denoiser_calls == 4
    compiled = DiffusionSampler(denoiser, schedule, num_steps=4, clip=2.0)
    np.testing.assert_allclose(
        full["latents"],
        np.asarray(compiled.predict_on_batch([noise, labels])),
        rtol=1e-4,
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="`stop_after`"):
        sampler.sample(noise, labels, stop_after=5)


def _keras_warnings(caught, captured):
    """The warnings of a save / load that keras_gr causes: every recorded
    Python warning except NumPy 2's `__array__` copy-keyword deprecation
    that Keras's own JAX variable conversion raises on any save, and every
    line of captured output that says "warn" or names the known culprits."""
    found = [
        str(w.message)
        for w in caught
        if "__array__ implementation" not in str(w.message)
    ]
    text = captured.out + captured.err
    for line in text.splitlines():
        low = line.lower()
        if "warn" in low or "not yet been built" in low or "compile()" in low:
            found.append(line)
    return found


def test_sampler_save_and_load_are_quiet(tmp_path, capfd):
    # A sampler of built parts is built before its first call, so saving
    # it does not warn "not yet been built"; it carries no compile config,
    # so loading does not warn "compile() was not called".
    denoiser = _denoiser(seed=2)
    crf = _crf(seed=3)
    sampler = DiffusionSampler(
        denoiser,
        NoiseSchedule(100),
        num_steps=3,
        crf=crf,
        crf_start=1,
        crf_num_classes=3,
    )
    path = os.path.join(tmp_path, "sampler.keras")
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler.save(path)
        loaded = keras.models.load_model(path)
    assert _keras_warnings(caught, capfd.readouterr()) == []
    assert sampler.built and loaded.built
    noise = np.random.default_rng(0).normal(size=(2,) + SHAPE)
    labels = np.array([0, 2], "int32")
    np.testing.assert_allclose(
        np.asarray(loaded.predict_on_batch([noise, labels])),
        np.asarray(sampler.predict_on_batch([noise, labels])),
        atol=1e-5,
    )
    # Unbuilt parts: the sampler stays unbuilt (Keras's warning is then
    # the truth) until its first call builds them.
    # (An explicit name: TensorFlow refuses a scope name starting "_".)
    lazy = DiffusionSampler(
        _UnbuiltDenoiser(name="unbuilt"), NoiseSchedule(100), 2
    )
    assert not lazy.built
    lazy.predict_on_batch(noise.astype("float32"))
    assert lazy.built


class _UnbuiltDenoiser(keras.layers.Layer):
    """`[z, t] -> conv(z)`, its weights made on the first call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(SHAPE[-1], 1)

    def call(self, inputs):
        return self.conv(inputs[0])
