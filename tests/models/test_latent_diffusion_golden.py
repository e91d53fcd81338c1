"""Golden samples of `DigitsLatentDiffusion`: the same seeds give the same
samples and CRF training pairs as before the pipeline was split into one
file per role and moved onto the Keras `DiffusionSampler` path (issue 30).

`GOLDEN` was written by running this file as a script (JAX backend) at
commit c0214b6, before the split, when `"truncated"` and the CRF training
pairs still ran through the host-side NumPy `DDIMSampler`. Every weight is
set from a NumPy generator (not from Keras's backend-specific random
initialisers), so one file serves both backends; the tolerance covers
float32 rounding differences between backends and between the compiled
and the step-by-step paths.
"""

import os

import numpy as np
import pytest

from keras_gr.models import DigitsLatentDiffusion

GOLDEN = os.path.join(os.path.dirname(__file__), "latent_diffusion_golden.npz")
METHODS = ("full", "truncated", "crf", "short")


def _golden_pipeline():
    """A tiny pipeline with every weight drawn from `default_rng(0)`."""
    pipe = DigitsLatentDiffusion(
        image_size=8,
        latent_channels=2,
        width=8,
        autoencoder_width=4,
        num_sampling_steps=4,
        skip_steps=2,
        num_classes=4,
        crf_kwargs={"num_steps": 2, "num_experts": 2},
    )
    rng = np.random.default_rng(0)
    for model in (pipe.encoder, pipe.decoder, pipe.denoiser, pipe.crf_model):
        for v in model.weights:
            fan_in = int(np.prod(v.shape[:-1])) if len(v.shape) > 1 else 1
            scale = 0.5 / np.sqrt(fan_in)
            v.assign(scale * rng.normal(size=v.shape).astype("float32"))
    pipe.latent_mean = np.array([0.5, -1.0], "float32")
    pipe.latent_std = np.array([2.0, 0.5], "float32")
    return pipe


def _outputs(pipe):
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(5, 4, 4, 2)).astype("float32")
    labels = np.array([0, 3, 1, 2, 3])
    out = {}
    for method in METHODS:
        out[method], calls = pipe.generate(labels, noise, method, decode=False)
        out[f"{method}_calls"] = np.array(calls)
    out["crf_images"], _ = pipe.generate(labels, noise, "crf")
    for eta in (0.0, 1.0):
        x, y_labels, y = pipe.crf_training_pairs(
            6, batch_size=4, seed=5, target_eta=eta
        )
        out[f"pairs_x_eta{eta:g}"] = x
        out[f"pairs_labels_eta{eta:g}"] = y_labels
        out[f"pairs_y_eta{eta:g}"] = y
    return out


def _set_clip(pipe, clip):
    """The clip of every clean estimate (what `fit_autoencoder` sets)."""
    if hasattr(pipe, "clip"):
        pipe.clip = clip
    else:  # the pipeline before the split
        pipe.sampler.clip = clip
        pipe._samplers = {}


def _all_outputs():
    pipe = _golden_pipeline()
    _set_clip(pipe, 20.0)  # binds on some entries, not on others
    return _outputs(pipe)


@pytest.mark.slow  # a whole tiny pipeline, 4 compiled samplers: 35-180 s
def test_same_seeds_give_the_golden_samples():
    want = dict(np.load(GOLDEN))
    got = _all_outputs()
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_allclose(
            got[key], value, rtol=1e-4, atol=1e-4, err_msg=key
        )
    # The clip binds on some entries of the clean estimates, and the
    # stochastic tail (eta = 1) gives other targets from the same inputs.
    assert np.max(np.abs(want["truncated"])) == np.float32(20.0)
    assert np.mean(np.abs(want["truncated"]) < 20.0) > 0.5
    np.testing.assert_array_equal(want["pairs_x_eta0"], want["pairs_x_eta1"])
    assert np.mean(np.abs(want["pairs_y_eta0"] - want["pairs_y_eta1"])) > 0.1


if __name__ == "__main__":
    np.savez(GOLDEN, **_all_outputs())
