import os

import keras
import numpy as np
import pytest

from keras_gr.data import digits
from keras_gr.layers import LatentCRF
from keras_gr.models import DDIMSampler
from keras_gr.models import DigitsLatentDiffusion
from keras_gr.models.diffusion.adversarial_crf_trainer import (
    AdversarialCRFTrainer,
)
from keras_gr.models.diffusion.latent_discriminator import (
    build_latent_discriminator,
)
from keras_gr.models.diffusion.latent_discriminator import spectral_normalize
from tests.models import diffusion_reference as ref


class _OracleDenoiser:
    """The exact noise predictor when the data is the single point x*."""

    def __init__(self, target, alpha_bars):
        self.target = target
        self.alpha_bars = alpha_bars
        self.calls = 0

    def predict_on_batch(self, inputs):
        z, t, _ = inputs
        self.calls += 1
        ab = self.alpha_bars[int(t[0, 0])]
        return (z - np.sqrt(ab) * self.target) / np.sqrt(1.0 - ab)


def test_deprecated_sampler_recovers_point_mass_and_counts_calls():
    abars = ref.scaled_linear_alpha_bars(1000)
    target = np.random.default_rng(1).normal(size=(1, 4, 4, 2))
    oracle = _OracleDenoiser(target, abars)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        sampler = DDIMSampler(oracle, abars, num_steps=6)
    np.testing.assert_array_equal(
        sampler.timesteps, ref.trailing_timesteps(6, 1000)
    )
    noise = np.random.default_rng(2).normal(size=(3, 4, 4, 2))
    out = sampler.sample(noise, np.zeros(3))
    assert sampler.denoiser_calls == oracle.calls == 6
    np.testing.assert_allclose(
        out["latents"], np.broadcast_to(target, noise.shape), atol=1e-4
    )
    sampler.reset_count()
    out = sampler.sample(noise, np.zeros(3), stop_after=4)
    assert sampler.denoiser_calls == 4
    np.testing.assert_allclose(
        out["x0"], np.broadcast_to(target, noise.shape), atol=1e-4
    )
    with pytest.raises(ValueError, match="`stop_after`"):
        sampler.sample(noise, np.zeros(3), stop_after=7)


def test_noised_latent_dataset_formula_and_seed():
    abars = ref.scaled_linear_alpha_bars(50)
    base = np.random.default_rng(3).normal(size=(1, 2, 2, 3)).astype("float32")
    latents = np.repeat(base, 16, axis=0)
    labels = np.arange(16, dtype="int32")
    ds = digits.noised_latent_dataset(
        latents, labels, abars, batch_size=8, seed=5
    )
    (zt, t, y), eps = next(iter(ds))
    zt, t, eps = np.asarray(zt), np.asarray(t), np.asarray(eps)
    ab = abars[t[:, 0].astype(int)].reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(
        zt, np.sqrt(ab) * base + np.sqrt(1 - ab) * eps, rtol=1e-5, atol=1e-5
    )
    (zt2, _, _), _ = next(
        iter(digits.noised_latent_dataset(latents, labels, abars, 8, seed=5))
    )
    np.testing.assert_array_equal(zt, np.asarray(zt2))


def test_digit_images():
    images, labels = digits.load_digit_images(16)
    assert images.shape == (1797, 16, 16, 1) and labels.shape == (1797,)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert set(np.unique(labels)) == set(range(10))


def test_bad_pipeline_arguments():
    with pytest.raises(ValueError, match="`skip_steps`"):
        DigitsLatentDiffusion(num_sampling_steps=3, skip_steps=3)
    with pytest.raises(ValueError, match="`skip_steps`"):
        DigitsLatentDiffusion(num_sampling_steps=3, skip_steps=0)
    with pytest.raises(ValueError, match="`num_sampling_steps`"):
        DigitsLatentDiffusion(num_sampling_steps=1, skip_steps=1)
    with pytest.raises(ValueError, match="`crf_input`"):
        DigitsLatentDiffusion(crf_input="eps")
    for bad in (-0.1, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="`adversarial_weight`"):
            DigitsLatentDiffusion(adversarial_weight=bad)


def _adversarial_trainer(weight, seed=0):
    keras.utils.set_random_seed(seed)
    crf = LatentCRF(num_steps=1, num_experts=1, name="latent_crf")
    inputs = [keras.Input((None, None, 2)), keras.Input((3,))]
    crf_model = keras.Model(inputs, crf(inputs))
    discriminator = build_latent_discriminator(2, 3, width=4)
    return AdversarialCRFTrainer(crf_model, discriminator, weight)


def _values(variables):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


@pytest.mark.slow  # 30-55 s on the loaded 2-core CPU (three CRF trainings)
def test_adversarial_crf_training_gradients_reach_only_their_player():
    # One full-batch step from the same initial weights. Each player must
    # get exactly its own loss's gradient: at w = 0 the CRF moves as under
    # plain MSE training (the discriminator's loss does not reach it); the
    # discriminator moves the same for any w (the CRF's GAN term does not
    # reach it); with w > 0 the CRF moves differently.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4, 4, 2)).astype("float32")
    onehot = np.eye(3, dtype="float32")[rng.integers(0, 3, 16)]
    y = (x + 0.3 * rng.normal(size=x.shape)).astype("float32")
    crf, disc = {}, {}
    for weight in (0.0, 5.0):
        trainer = _adversarial_trainer(weight)
        initial = _values(trainer.discriminator.weights)
        trainer.compile(keras.optimizers.Adam(1e-2))
        history = trainer.fit([x, onehot], y, batch_size=16, verbose=0)
        logs = {k: v[-1] for k, v in history.history.items()}
        # Logged terms: the loss is MSE + w * GAN term + discriminator loss.
        np.testing.assert_allclose(
            logs["loss"],
            logs["mse"] + weight * logs["adversarial"] + logs["discriminator"],
            rtol=1e-5,
        )
        crf[weight] = _values(trainer.crf_model.weights)
        disc[weight] = _values(trainer.discriminator.weights)
        assert any(
            np.max(np.abs(a - b)) > 1e-4 for a, b in zip(disc[weight], initial)
        )
    keras.utils.set_random_seed(0)
    layer = LatentCRF(num_steps=1, num_experts=1, name="latent_crf")
    inputs = [keras.Input((None, None, 2)), keras.Input((3,))]
    plain = keras.Model(inputs, layer(inputs))
    plain.compile(keras.optimizers.Adam(1e-2), loss="mse")
    plain.fit([x, onehot], y, batch_size=16, verbose=0)
    for a, b in zip(crf[0.0], _values(plain.weights)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(disc[0.0], disc[5.0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(np.max(np.abs(a - b)) > 1e-4 for a, b in zip(crf[0.0], crf[5.0]))


def test_spectral_normalize_against_numpy_svd():
    # Power iteration from a fixed start underestimates the top singular
    # value, so the normalised kernel's spectral norm is >= 1 and, after 5
    # iterations, close to it; the result does not depend on the scale.
    for seed, shape in enumerate(((3, 3, 4, 8), (10, 64), (64, 1))):
        kernel = np.random.default_rng(seed).normal(size=shape)
        kernel = kernel.astype("float32")
        normalized = np.asarray(spectral_normalize(kernel))
        top = np.linalg.svd(
            normalized.reshape(-1, shape[-1]), compute_uv=False
        )[0]
        assert 1.0 - 1e-5 <= top <= 1.2, (shape, top)
        np.testing.assert_allclose(
            np.asarray(spectral_normalize(3.0 * kernel)),
            normalized,
            rtol=1e-5,
            atol=1e-6,
        )


def test_latent_discriminator_any_size_and_class_conditioned():
    keras.utils.set_random_seed(0)
    disc = build_latent_discriminator(2, 3, width=4)
    z = np.random.default_rng(1).normal(size=(1, 6, 10, 2)).astype("float32")
    logits = np.asarray(
        disc.predict_on_batch(
            [np.repeat(z, 2, axis=0), np.eye(3, dtype="float32")[[0, 2]]]
        )
    )
    # One logit per sample; the projection head: another class, another
    # logit for the same latents.
    assert logits.shape == (2, 1)
    assert abs(logits[0, 0] - logits[1, 0]) > 1e-6


def _tiny_pipeline(**kwargs):
    return DigitsLatentDiffusion(
        image_size=8,
        latent_channels=2,
        width=8,
        autoencoder_width=4,
        crf_kwargs={"num_steps": 2, "num_experts": 2},
        **kwargs,
    )


@pytest.mark.slow  # ~20 s CPU on JAX (two compiled U-Net samplers)
def test_pipeline_save_load_gives_same_samples(tmp_path):
    # Untrained but non-trivial: random denoiser, CRF moved off identity,
    # latent statistics and clip set by hand.
    pipe = _tiny_pipeline(num_sampling_steps=2, skip_steps=1, num_classes=4)
    rng = np.random.default_rng(0)
    for v in pipe.crf.weights:
        v.assign(v + 0.2 * rng.normal(size=v.shape).astype("float32"))
    pipe.denoiser.conv_out.kernel.assign(
        0.1 * rng.normal(size=pipe.denoiser.conv_out.kernel.shape)
    )
    pipe.latent_mean = np.array([0.5, -1.0], "float32")
    pipe.latent_std = np.array([2.0, 0.5], "float32")
    pipe.clip = 2.5
    noise = rng.normal(size=(4, 4, 4, 2)).astype("float32")
    labels = np.array([0, 3, 1, 2])
    want, calls = pipe.generate(labels, noise, "crf", decode=False)
    assert calls == 1 and np.max(np.abs(want)) <= 2.5
    directory = os.path.join(tmp_path, "pipe")
    pipe.save(directory)
    assert sorted(os.listdir(directory)) == [
        "crf.keras",
        "decoder.keras",
        "denoiser.keras",
        "encoder.keras",
        "pipeline.json",
    ]
    loaded = DigitsLatentDiffusion.load(directory)
    assert loaded.get_config() == pipe.get_config()
    assert loaded.num_classes == 4 and loaded.clip == 2.5
    assert loaded.sampler.clip == 2.5  # the full sampler follows
    np.testing.assert_array_equal(loaded.latent_std, pipe.latent_std)
    again, calls = loaded.generate(labels, noise, "crf", decode=False)
    assert calls == 1
    np.testing.assert_allclose(again, want, atol=1e-5)


@pytest.mark.slow
def test_tiny_pipeline_counts_calls_crf_learns_and_saves(tmp_path):
    images, labels = digits.load_digit_images(8)
    images, labels = images[:128], labels[:128]
    pipe = DigitsLatentDiffusion(
        image_size=8,
        latent_channels=2,
        width=8,
        autoencoder_width=4,
        num_sampling_steps=3,
        skip_steps=1,
        crf_kwargs={"num_steps": 2, "num_experts": 2},
    )
    pipe.fit_autoencoder(images, steps=5, batch_size=32)
    pipe.fit_denoiser(images, labels, steps=5, batch_size=32)
    before, after = pipe.fit_crf(num_pairs=64, steps=40, batch_size=32)
    assert after < before

    calls = []
    original = pipe.denoiser.predict_on_batch

    def counting(inputs):
        calls.append(1)
        return original(inputs)

    pipe.denoiser.predict_on_batch = counting
    noise = np.random.default_rng(0).normal(size=(10, 4, 4, 2))
    lab = np.arange(10) % 10
    expected = {"full": 3, "truncated": 2, "crf": 2, "short": 2}
    outputs = {}
    for method, want in expected.items():
        calls.clear()
        out, counted = pipe.generate(lab, noise, method)
        assert counted == want, method
        # Every method is one compiled function: no host call per step.
        assert calls == [], method
        assert out.shape == (10, 8, 8, 1) and np.all(np.isfinite(out))
        outputs[method] = out
    # The compiled full and truncated samplers equal the NumPy host loop.
    pipe.denoiser.predict_on_batch = original
    host = ref.HostDDIMSampler(pipe.denoiser, pipe.alpha_bars, 3, pipe.clip)
    for method, stop in (("full", 3), ("truncated", 2)):
        compiled, _ = pipe.generate(lab, noise, method, decode=False)
        _, want = host.run(noise, lab, stop=stop)
        np.testing.assert_allclose(compiled, want, rtol=1e-4, atol=1e-4)
    # the CRF path does change the truncated output
    assert not np.allclose(outputs["crf"], outputs["truncated"])
    costs = pipe.cost_table()
    assert costs["crf_params"] == pipe.crf.count_params()
    assert costs["crf_flops"] < costs["denoiser_flops"]
    with pytest.raises(ValueError, match="`method`"):
        pipe.generate(lab, noise, "bogus")

    # Save / load: every model as .keras plus the latent statistics; the
    # reloaded pipeline gives the same samples for the same noise.
    directory = os.path.join(tmp_path, "pipe")
    pipe.save(directory)
    assert sorted(os.listdir(directory)) == [
        "crf.keras",
        "decoder.keras",
        "denoiser.keras",
        "encoder.keras",
        "pipeline.json",
    ]
    loaded = DigitsLatentDiffusion.load(directory)
    np.testing.assert_array_equal(loaded.latent_std, pipe.latent_std)
    assert loaded.clip == pipe.clip
    again, calls = loaded.generate(lab, noise, "crf")
    assert calls == 2
    np.testing.assert_allclose(again, outputs["crf"], atol=1e-5)
    assert loaded.get_config() == pipe.get_config()


def _perturbed_denoiser(pipe, seed=0):
    """Moves the zero-initialised output convolution off zero, so the
    untrained denoiser predicts a non-trivial noise."""
    kernel = pipe.denoiser.conv_out.kernel
    rng = np.random.default_rng(seed)
    kernel.assign(0.3 * rng.normal(size=kernel.shape).astype("float32"))


@pytest.mark.slow  # a whole (tiny) pipeline: ~80 weight initialisations
def test_crf_pairs_targets_and_reset_options():
    pipe = _tiny_pipeline(num_sampling_steps=4, skip_steps=2, num_classes=3)
    _perturbed_denoiser(pipe)
    pipe.clip = 3.0
    x, labels, y = pipe.crf_training_pairs(6, batch_size=4, seed=5)
    # Deterministic targets are the full sampler's output from the same
    # noise; the inputs are its clean estimate after T - s steps (checked
    # against the NumPy host sampler).
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(4, 4, 4, 2)).astype("float32")
    lab = rng.integers(0, 3, 4)
    host = ref.HostDDIMSampler(pipe.denoiser, pipe.alpha_bars, 4, clip=3.0)
    z_keep, x0_keep = host.run(noise, lab, stop=2)
    _, final = host.run(z_keep, lab, start=2)
    np.testing.assert_array_equal(labels[:4], lab)
    np.testing.assert_allclose(y[:4], final, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(x[:4], x0_keep, rtol=1e-4, atol=1e-4)
    # A DDPM tail (eta = 1): the same inputs, other (random) targets, the
    # tail noise drawn from default_rng([seed, 1]).
    x1, labels1, y1 = pipe.crf_training_pairs(
        6, batch_size=4, seed=5, target_eta=1.0
    )
    np.testing.assert_array_equal(x1, x)
    np.testing.assert_array_equal(labels1, labels)
    assert np.mean(np.abs(y1 - y)) > 1e-2
    _, final1 = host.run(
        z_keep, lab, start=2, eta=1.0, rng=np.random.default_rng([5, 1])
    )
    np.testing.assert_allclose(y1[:4], final1, rtol=1e-4, atol=1e-4)
    # Ablation options: a fresh CRF with other arguments, input and s;
    # the config follows and the short sampler is rebuilt.
    assert pipe.sampler_for("short").denoiser_calls == 2
    pipe.reset_crf(
        seed=0, crf_kwargs={"num_steps": 1}, crf_input="zt", skip_steps=1
    )
    config = pipe.get_config()
    assert config["crf_kwargs"] == {"num_steps": 1}
    assert (config["crf_input"], config["skip_steps"]) == ("zt", 1)
    assert pipe.crf.num_steps == 1
    assert pipe.sampler_for("short").denoiser_calls == 3
    assert pipe.sampler_for("truncated").denoiser_calls == 3
    assert pipe.sampler_for("crf").crf_input == "zt"
    # With crf_input="zt" the inputs are the DDIM state after T - s steps.
    x_zt, _, _ = pipe.crf_training_pairs(4, batch_size=4, seed=5)
    z_keep3, _ = host.run(noise, lab, stop=3)
    np.testing.assert_allclose(x_zt, z_keep3, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="`skip_steps`"):
        pipe.reset_crf(skip_steps=4)
    with pytest.raises(ValueError, match="`target_eta`"):
        pipe.crf_training_pairs(4, target_eta=1.5)


@pytest.mark.slow  # a compiled training step; the docstring example runs it
def test_digit_classifier_learns():
    images, labels = digits.load_digit_images(8)
    classifier, features = digits.train_digit_classifier(
        images[:512], labels[:512], steps=60, batch_size=64
    )
    logits = np.asarray(classifier.predict(images[512:1024], verbose=0))
    accuracy = np.mean(np.argmax(logits, -1) == labels[512:1024])
    assert accuracy > 0.5  # chance: 0.1
    assert features.output_shape == (None, 64)


@pytest.mark.slow  # a whole (tiny) pipeline and three CRF trainings
def test_fit_crf_adversarial_weight(tmp_path):
    def trained(**kwargs):
        pipe = _tiny_pipeline(
            num_sampling_steps=3, skip_steps=1, num_classes=3, **kwargs
        )
        _perturbed_denoiser(pipe)
        pipe.clip = 3.0
        pipe.reset_crf(seed=0)
        before, after = pipe.fit_crf(num_pairs=32, steps=6, batch_size=16)
        return pipe, before, after

    default, before, after = trained()
    zero, _, _ = trained(adversarial_weight=0.0)
    # w = 0 is today's MSE-only training, exactly.
    assert default.discriminator is None and zero.discriminator is None
    for a, b in zip(_values(default.crf.weights), _values(zero.crf.weights)):
        np.testing.assert_array_equal(a, b)
    assert "crf_adversarial_loss" not in default.history
    adv, before_adv, after_adv = trained(adversarial_weight=0.5)
    assert before_adv == pytest.approx(before)  # same pairs, same init
    assert adv.discriminator is not None
    assert np.isfinite(adv.history["crf_adversarial_loss"])
    assert np.isfinite(adv.history["crf_discriminator_loss"])
    assert any(
        np.max(np.abs(a - b)) > 1e-6
        for a, b in zip(_values(default.crf.weights), _values(adv.crf.weights))
    )
    # The weight is in the config and survives save / load; reset_crf can
    # change it (for ablations) and checks it.
    assert adv.get_config()["adversarial_weight"] == 0.5
    directory = os.path.join(tmp_path, "pipe")
    adv.save(directory)
    assert DigitsLatentDiffusion.load(directory).adversarial_weight == 0.5
    adv.reset_crf(adversarial_weight=0.1)
    assert adv.get_config()["adversarial_weight"] == 0.1
    with pytest.raises(ValueError, match="`adversarial_weight`"):
        adv.reset_crf(adversarial_weight=-1.0)
