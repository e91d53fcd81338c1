"""A small class-conditional latent diffusion model, and the digits
reference pipeline that trains it with a LatentCRF bypassing the last
denoiser steps.

Pieces, top to bottom: the DDIM maths (NumPy, for the host-side reference
sampler), the models (autoencoder, class-conditional U-Net denoiser), the
host-side DDIM sampler that counts denoiser calls (used to make the CRF's
training pairs and as a reference), and `DigitsLatentDiffusion`, which
trains everything and samples through the generic compiled
`keras_gr.models.DiffusionSampler` (one jitted function per method) with
the full, the re-spaced short and the LatentCRF-shortcut timelines.

Nothing here loads or scores digits: the images, their `tf.data` streams
and the digit classifier that scores samples live in
`keras_gr.data.digits`, the evaluation in `benchmarks/latent_crf.py` and
`examples/latent_crf_digits.py`.

Reference: Ranasinghe et al., "LatentCRF: Continuous CRF for Efficient
Latent Diffusion", arXiv 2412.18596 (the LDM stays frozen; a LatentCRF
replaces a block of its DDIM steps). DDIM: Song et al., "Denoising Diffusion
Implicit Models", arXiv 2010.02502.

`tensorflow` is imported lazily, only by the `tf.data` input functions of
`keras_gr.data.digits`.
"""

import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr._validation import check_number
from keras_gr.data.digits import array_dataset
from keras_gr.data.digits import noised_latent_dataset
from keras_gr.layers.latent_crf import LatentCRF
from keras_gr.models.diffusion.diffusion_sampler import DiffusionSampler
from keras_gr.models.diffusion.diffusion_sampler import NoiseSchedule
from keras_gr.models.diffusion.diffusion_sampler import ddim_sigma

# --------------------------------------------------------------------------
# Noise schedule and DDIM maths.
# --------------------------------------------------------------------------


def scaled_linear_alpha_bars(
    num_train_steps=1000, beta_start=0.00085, beta_end=0.012
):
    """`abar_t` of `NoiseSchedule(kind="scaled_linear")`, float64."""
    return NoiseSchedule(
        num_train_steps, "scaled_linear", beta_start, beta_end
    ).alpha_bars


def ddim_timesteps(num_steps, num_train_steps=1000):
    """`NoiseSchedule(num_train_steps).timesteps(num_steps)`: descending,
    trailing spacing (Lin et al., arXiv 2305.08891)."""
    return NoiseSchedule(num_train_steps).timesteps(num_steps)


def ddim_step(z, eps, alpha_bar, alpha_bar_next, clip=None):
    """One deterministic DDIM update (eta = 0).

    `x0 = (z - sqrt(1 - abar) eps) / sqrt(abar)` (optionally clipped to
    `[-clip, clip]`) and `z' = sqrt(abar') x0 + sqrt(1 - abar') eps`.

    Returns:
        `(z_next, x0)`.
    """
    x0 = (z - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    if clip is not None:
        x0 = np.clip(x0, -clip, clip)
    z_next = (
        math.sqrt(alpha_bar_next) * x0 + math.sqrt(1.0 - alpha_bar_next) * eps
    )
    return z_next, x0


# --------------------------------------------------------------------------
# Models.
# --------------------------------------------------------------------------


def build_autoencoder(image_size=16, latent_channels=4, width=16):
    """Convolutional autoencoder, images -> `(s/2, s/2, latent_channels)`.

    Returns:
        `(encoder, decoder)` functional models; the decoder ends in `tanh`.
    """
    inputs = keras.Input((image_size, image_size, 1))
    x = keras.layers.Conv2D(width, 3, padding="same", activation="silu")(inputs)
    x = keras.layers.Conv2D(
        2 * width, 3, strides=2, padding="same", activation="silu"
    )(x)
    x = keras.layers.Conv2D(2 * width, 3, padding="same", activation="silu")(x)
    latents = keras.layers.Conv2D(latent_channels, 1)(x)
    encoder = keras.Model(inputs, latents, name="encoder")

    size = image_size // 2
    z = keras.Input((size, size, latent_channels))
    x = keras.layers.Conv2D(2 * width, 3, padding="same", activation="silu")(z)
    x = keras.layers.UpSampling2D(2)(x)
    x = keras.layers.Conv2D(width, 3, padding="same", activation="silu")(x)
    x = keras.layers.Conv2D(width, 3, padding="same", activation="silu")(x)
    images = keras.layers.Conv2D(1, 3, padding="same", activation="tanh")(x)
    decoder = keras.Model(z, images, name="decoder")
    return encoder, decoder


def _conv_flops(height, width, layer):
    kh, kw, cin, cout = layer.kernel.shape
    return 2 * height * width * kh * kw * cin * cout


@keras.saving.register_keras_serializable(package="keras_gr")
class ConditionalResBlock(keras.layers.Layer):
    """`skip(x) + conv(silu(norm(conv(silu(norm(x))) + dense(emb))))`.

    Call arguments: `[x, emb]` with `x` `(batch, h, w, c)` and `emb`
    `(batch, embedding_dim)`. Returns `(batch, h, w, filters)`.

    Args:
        filters: output channels.
        **kwargs: base layer arguments.
    """

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters

    def build(self, input_shape):
        x_shape, emb_shape = input_shape
        groups = math.gcd(8, self.filters)
        self.norm1 = keras.layers.GroupNormalization(
            math.gcd(8, x_shape[-1]), dtype=self.dtype_policy
        )
        self.conv1 = keras.layers.Conv2D(
            self.filters, 3, padding="same", dtype=self.dtype_policy
        )
        self.emb_proj = keras.layers.Dense(
            self.filters, dtype=self.dtype_policy
        )
        self.norm2 = keras.layers.GroupNormalization(
            groups, dtype=self.dtype_policy
        )
        self.conv2 = keras.layers.Conv2D(
            self.filters,
            3,
            padding="same",
            kernel_initializer="zeros",
            dtype=self.dtype_policy,
        )
        self.skip = None
        if x_shape[-1] != self.filters:
            self.skip = keras.layers.Conv2D(
                self.filters, 1, dtype=self.dtype_policy
            )
        self.norm1.build(x_shape)
        self.conv1.build(x_shape)
        self.emb_proj.build(emb_shape)
        h_shape = tuple(x_shape[:-1]) + (self.filters,)
        self.norm2.build(h_shape)
        self.conv2.build(h_shape)
        if self.skip is not None:
            self.skip.build(x_shape)

    def call(self, inputs):
        x, emb = inputs
        h = self.conv1(ops.silu(self.norm1(x)))
        h = h + self.emb_proj(emb)[:, None, None, :]
        h = self.conv2(ops.silu(self.norm2(h)))
        skip = x if self.skip is None else self.skip(x)
        return skip + h

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config["filters"] = self.filters
        return config

    def flops(self, height, width):
        total = _conv_flops(height, width, self.conv1)
        total += _conv_flops(height, width, self.conv2)
        total += 2 * int(np.prod(self.emb_proj.kernel.shape))
        if self.skip is not None:
            total += _conv_flops(height, width, self.skip)
        return total


@keras.saving.register_keras_serializable(package="keras_gr")
class ClassConditionalUNet(keras.Model):
    """Small class-conditional U-Net predicting the noise `eps(z_t, t, y)`.

    One resolution level below the input: `conv_in -> res(w) -> down ->
    res(2w) -> res(2w) -> up -> concat skip -> res(w) -> conv_out`, the
    sinusoidal timestep embedding plus a learned class embedding added in
    every residual block, the output convolution zero-initialised.

    Call arguments: `[z_t, t, labels]` with `z_t` `(batch, h, w, c)`, `t`
    `(batch, 1)` float timesteps and integer `labels` `(batch,)`.
    Returns the predicted noise, shape of `z_t`.

    Args:
        latent_shape: `(h, w, c)` with even `h` and `w`.
        num_classes: number of classes. Defaults to `10`.
        width: channels at the top level. Defaults to `32`.
        embedding_dim: timestep / class embedding size. Defaults to `64`.
        **kwargs: base `keras.Model` arguments.

    Example:

    >>> unet = ClassConditionalUNet((4, 4, 2), num_classes=3, width=8)
    >>> z, t = keras.Input((4, 4, 2)), keras.Input((1,))
    >>> label = keras.Input((), dtype="int32")
    >>> tuple(unet([z, t, label]).shape)
    (None, 4, 4, 2)
    """

    def __init__(
        self,
        latent_shape: Sequence[int],
        num_classes: int = 10,
        width: int = 32,
        embedding_dim: int = 64,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.latent_shape = tuple(latent_shape)
        self.num_classes = num_classes
        self.width = width
        self.embedding_dim = embedding_dim
        channels = self.latent_shape[-1]
        self.time_dense1 = keras.layers.Dense(embedding_dim, activation="silu")
        self.time_dense2 = keras.layers.Dense(embedding_dim)
        self.class_embedding = keras.layers.Embedding(
            num_classes, embedding_dim
        )
        self.conv_in = keras.layers.Conv2D(width, 3, padding="same")
        self.res_top = ConditionalResBlock(width)
        self.down = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same")
        self.res_low = ConditionalResBlock(2 * width)
        self.res_mid = ConditionalResBlock(2 * width)
        self.up = keras.layers.UpSampling2D(2)
        self.up_conv = keras.layers.Conv2D(width, 3, padding="same")
        self.res_out = ConditionalResBlock(width)
        self.norm_out = keras.layers.GroupNormalization(math.gcd(8, width))
        self.conv_out = keras.layers.Conv2D(
            channels, 3, padding="same", kernel_initializer="zeros"
        )

    def _embedding(self, t, labels):
        half = self.embedding_dim // 2
        freqs = ops.exp(
            -math.log(10000.0) * ops.arange(half, dtype="float32") / half
        )
        args = ops.cast(t, "float32") * freqs[None, :]
        emb = ops.concatenate([ops.sin(args), ops.cos(args)], axis=-1)
        emb = self.time_dense2(self.time_dense1(emb))
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        return ops.silu(emb + self.class_embedding(labels))

    def call(self, inputs):
        z, t, labels = inputs
        emb = self._embedding(t, labels)
        h_top = self.res_top([self.conv_in(z), emb])
        h = self.down(h_top)
        h = self.res_low([h, emb])
        h = self.res_mid([h, emb])
        h = self.up_conv(self.up(h))
        h = self.res_out([ops.concatenate([h, h_top], axis=-1), emb])
        return self.conv_out(ops.silu(self.norm_out(h)))

    def get_config(self):
        return {
            "latent_shape": self.latent_shape,
            "num_classes": self.num_classes,
            "width": self.width,
            "embedding_dim": self.embedding_dim,
            "name": self.name,
        }

    def flops(self):
        """FLOPs per example of one call: convolutions and dense layers
        (2 per multiply-add); normalisation and activations not counted."""
        h, w = self.latent_shape[:2]
        e = self.embedding_dim
        total = 2 * e * e * 2  # time MLP
        total += _conv_flops(h, w, self.conv_in)
        total += self.res_top.flops(h, w)
        total += _conv_flops(h // 2, w // 2, self.down)
        total += self.res_low.flops(h // 2, w // 2)
        total += self.res_mid.flops(h // 2, w // 2)
        total += _conv_flops(h, w, self.up_conv)
        total += self.res_out.flops(h, w)
        total += _conv_flops(h, w, self.conv_out)
        return int(total)


# --------------------------------------------------------------------------
# Latent adversarial training of the CRF (optional).
# --------------------------------------------------------------------------


def _spectral_normalize(kernel, iterations=5):
    """`kernel / sigma`, `sigma` its largest singular value (as a matrix
    `(fan_in, fan_out)`) by power iteration from a fixed start (no state;
    the vectors are constants for the gradient)."""
    w = ops.reshape(kernel, (-1, kernel.shape[-1]))
    u = ops.ones((1, kernel.shape[-1]), kernel.dtype)
    for _ in range(iterations):
        v = ops.matmul(u, ops.transpose(w))
        v = v / (ops.norm(v) + 1e-12)
        u = ops.matmul(v, w)
        u = u / (ops.norm(u) + 1e-12)
    u, v = ops.stop_gradient(u), ops.stop_gradient(v)
    sigma = ops.sum(ops.matmul(v, w) * u)
    return kernel / (sigma + 1e-12)


class _SpectralConv2D(keras.layers.Layer):
    """A `same`-padded convolution (a dense layer for `kernel_size=None`)
    whose kernel is spectrally normalised at every call (Miyato et al.,
    arXiv 1802.05957): about 1-Lipschitz (5 power iterations from a fixed
    start underestimate the top singular value, so the normalised norm is
    a little above 1), so the discriminator's gradients stay bounded."""

    def __init__(self, filters, kernel_size=None, strides=1, bias=True, **kw):
        super().__init__(**kw)
        self.filters, self.kernel_size = filters, kernel_size
        self.strides, self.bias = strides, bias

    def build(self, input_shape):
        fan_in = input_shape[-1]
        shape = (fan_in, self.filters)
        if self.kernel_size is not None:
            shape = (self.kernel_size, self.kernel_size) + shape
        self.kernel = self.add_weight(
            shape=shape, initializer="glorot_uniform", name="kernel"
        )
        self.b = None
        if self.bias:
            self.b = self.add_weight(
                shape=(self.filters,), initializer="zeros", name="bias"
            )

    def call(self, x):
        kernel = _spectral_normalize(self.kernel)
        if self.kernel_size is None:
            y = ops.matmul(x, kernel)
        else:
            y = ops.conv(x, kernel, self.strides, padding="same")
        return y if self.b is None else y + self.b

    def compute_output_shape(self, input_shape):
        shape = list(input_shape[:-1]) + [self.filters]
        if self.kernel_size is not None and self.strides > 1:
            for i in (1, 2):
                if shape[i] is not None:
                    shape[i] = -(-shape[i] // self.strides)
        return tuple(shape)


def build_latent_discriminator(latent_channels, num_classes, width=32):
    """A small class-conditional convolutional discriminator of latents.

    `[latents (batch, h, w, latent_channels), one-hot class (batch,
    num_classes)]` -> one logit per sample (`(batch, 1)`, "real" > 0):
    3x3 conv (`width`) -> 3x3 stride-2 conv (`2 width`) -> 3x3 conv
    (`2 width`), leaky ReLU (0.2) after each, global average pooling to
    `h`, then the projection head `dense(h) + <embed(y), h>` (Miyato and
    Koyama, "cGANs with Projection Discriminator", arXiv 1802.05637). Every
    kernel is spectrally normalised (SN-GAN, arXiv 1802.05957). The
    pooling makes it size-agnostic (`h`, `w` may be `None`).

    Returns:
        A functional `keras.Model` named `"latent_discriminator"`.
    """
    z = keras.Input((None, None, latent_channels))
    y = keras.Input((num_classes,))
    h = z
    # Explicit names: TensorFlow refuses the default scope name of a
    # class whose name starts with an underscore.
    for i, (filters, strides) in enumerate(
        ((width, 1), (2 * width, 2), (2 * width, 1))
    ):
        h = _SpectralConv2D(filters, 3, strides, name=f"sn_conv{i}")(h)
        h = keras.layers.LeakyReLU(0.2)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    embedded = _SpectralConv2D(2 * width, bias=False, name="sn_embed")(y)
    projection = keras.layers.Dot(axes=1)([embedded, h])
    logit = keras.layers.Add()(
        [_SpectralConv2D(1, name="sn_logit")(h), projection]
    )
    return keras.Model([z, y], logit, name="latent_discriminator")


class _AdversarialCRFTrainer(keras.Model):
    """Training-only model: the CRF (generator) and a latent discriminator
    updated in the same step, each by its own loss.

    Called on the CRF's inputs `[x, one-hot class(, t)]` with the target
    latents `y` (the full sampler's final latents) as the label:

    - CRF loss: `mean((crf(x) - y)^2) + w * softplus(-D(crf(x)))`
      (non-saturating GAN loss), with the discriminator's weights held
      constant (`stateless_call` on `stop_gradient` copies);
    - discriminator loss: `softplus(-D(y)) + softplus(D(sg(crf(x))))`
      (the CRF output enters through `stop_gradient`).

    Their sum is the loss `fit` differentiates: each set of weights gets
    exactly its own player's gradient, so one Adam over both equals two
    Adams with the same hyperparameters (Adam is per parameter), and the
    updates are simultaneous. Only `compute_loss` is overridden: the same
    code runs under JAX and TensorFlow, with `fit`'s callbacks. It logs
    `mse`, `adversarial` (the CRF's GAN term, unweighted) and
    `discriminator`.
    """

    def __init__(self, crf_model, discriminator, adversarial_weight, **kw):
        kw.setdefault("name", "adversarial_crf_trainer")
        super().__init__(**kw)
        self.crf_model = crf_model
        self.discriminator = discriminator
        self.adversarial_weight = float(adversarial_weight)
        self.mse_tracker = keras.metrics.Mean(name="mse")
        self.adversarial_tracker = keras.metrics.Mean(name="adversarial")
        self.discriminator_tracker = keras.metrics.Mean(name="discriminator")

    def call(self, inputs, training=False):
        return self.crf_model(inputs, training=training)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        onehot = x[1]
        y = ops.cast(y, "float32")
        fake = ops.cast(y_pred, "float32")
        mse = ops.mean(ops.square(fake - y))
        frozen = [
            ops.stop_gradient(v) for v in self.discriminator.trainable_variables
        ]
        fake_logit, _ = self.discriminator.stateless_call(
            frozen,
            [v.value for v in self.discriminator.non_trainable_variables],
            [fake, onehot],
        )
        adversarial = ops.mean(ops.softplus(-fake_logit))
        real_logit = self.discriminator([y, onehot])
        detached = self.discriminator([ops.stop_gradient(fake), onehot])
        disc = ops.mean(ops.softplus(-real_logit)) + ops.mean(
            ops.softplus(detached)
        )
        self.mse_tracker.update_state(mse)
        self.adversarial_tracker.update_state(adversarial)
        self.discriminator_tracker.update_state(disc)
        return mse + self.adversarial_weight * adversarial + disc


# --------------------------------------------------------------------------
# Sampling.
# --------------------------------------------------------------------------


class DDIMSampler:
    """Deterministic DDIM sampler that counts denoiser evaluations.

    `denoiser_calls` counts invocations of the denoiser on a batch (one per
    executed DDIM step, whatever the batch size); `reset_count()` zeroes it.

    Args:
        denoiser: a model `[z_t, t, labels] -> eps`.
        alpha_bars: the training schedule `abar_t`.
        num_steps: `T`, the number of DDIM steps of the full sampler.
        clip: clip of the predicted clean latents (None: no clipping).

    Example:

    >>> class Zero:  # predicts no noise: every clean estimate is z / sqrt(abar)
    ...     def predict_on_batch(self, inputs):
    ...         return np.zeros_like(inputs[0])
    >>> sampler = DDIMSampler(Zero(), scaled_linear_alpha_bars(), num_steps=4)
    >>> out = sampler.sample(np.ones((2, 4, 4, 1)), [0, 1], stop_after=2)
    >>> sampler.denoiser_calls, out["x0"].shape
    (2, (2, 4, 4, 1))
    """

    def __init__(
        self,
        denoiser: Any,
        alpha_bars: Any,
        num_steps: int,
        clip: float | None = None,
    ):
        self.denoiser = denoiser
        self.alpha_bars = np.asarray(alpha_bars, "float64")
        self.num_steps = check_integer("num_steps", num_steps)
        self.timesteps = ddim_timesteps(num_steps, len(self.alpha_bars))
        self.clip = clip
        self.denoiser_calls = 0

    def reset_count(self):
        self.denoiser_calls = 0

    def _eps(self, z, t, labels):
        self.denoiser_calls += 1
        t = np.full((z.shape[0], 1), float(t), "float32")
        out = self.denoiser.predict_on_batch([z.astype("float32"), t, labels])
        return np.asarray(out, "float32")

    def sample(self, noise, labels, stop_after=None, timesteps=None):
        """Runs DDIM from `noise`.

        Args:
            noise: `(batch, h, w, c)` starting latents.
            labels: `(batch,)` integer classes.
            stop_after: run only the first `stop_after` steps of the
                `T`-step schedule (None: all `T`).
            timesteps: a different descending schedule (e.g. a shorter
                DDIM); overrides `T`.
        Returns:
            A dict: `latents` (final latents, or the clean-latent estimate
            `x0` after the last executed step when stopped early), `x0` and
            `zt` (the DDIM state after the last executed step).
        """
        timesteps = self.timesteps if timesteps is None else timesteps
        n = len(timesteps)
        if stop_after is None:
            stop_after = n
        stop_after = check_integer("stop_after", stop_after, 1, n)
        labels = np.asarray(labels, "int32")
        z = np.asarray(noise, "float32")
        x0 = z
        for k in range(stop_after):
            t = int(timesteps[k])
            ab = self.alpha_bars[t]
            ab_next = 1.0 if k + 1 == n else self.alpha_bars[timesteps[k + 1]]
            eps = self._eps(z, t, labels)
            z, x0 = ddim_step(z, eps, ab, ab_next, self.clip)
        z = z.astype("float32")
        x0 = x0.astype("float32")
        final = z if stop_after == n else x0
        return {"latents": final, "x0": x0, "zt": z}


# --------------------------------------------------------------------------
# The pipeline.
# --------------------------------------------------------------------------


class DigitsLatentDiffusion:
    """The digits reference pipeline: a class-conditional latent diffusion
    model of small grayscale images with a LatentCRF shortcut for the last
    `skip_steps` DDIM steps.

    It trains on any `(n, image_size, image_size, 1)` images in `[-1, 1]`
    with integer labels; its name and defaults (16 x 16 grayscale, 10
    classes, the widths) are the digits set-up of `benchmarks/latent_crf.py`
    and `examples/latent_crf_digits.py` (data and classifier:
    `keras_gr.data.digits`). It is kept in the library as the one tested
    recipe that wires the generic parts together (`build_autoencoder`,
    `ClassConditionalUNet`, `NoiseSchedule`, `DiffusionSampler`,
    `LatentCRF`), trains the CRF's pairs with the LDM frozen, and saves and
    loads as a whole; a model of other images uses those parts directly.

    Usage: `fit_autoencoder`, `fit_denoiser`, `fit_crf` (base frozen),
    then `generate(labels, noise, method)` with method `"full"` (T denoiser
    steps), `"truncated"` (the first T - s steps, returning the DDIM clean
    estimate; host-side reference sampler), `"crf"` (the first T - s steps
    + one LatentCRF call) or `"short"` (a DDIM schedule of T - s steps over
    the whole timeline). `"full"`, `"crf"` and `"short"` run as one
    compiled `DiffusionSampler` each (`sampler_for(method)`). `save(dir)`
    writes every model as a `.keras` file plus the latent statistics;
    `DigitsLatentDiffusion.load(dir)` restores the pipeline.

    Choices (the paper is about Stable Diffusion; these are ours): 16x16
    images, an 8x8 latent grid (one stride-2 level) normalised to zero mean
    and unit variance per channel, the Stable-Diffusion "scaled linear"
    schedule with 1000 training steps, trailing DDIM timesteps, clean
    latents clipped to 1.2 x the largest training latent, a one-hot class as
    the CRF's conditioning vector, and the CRF fed the DDIM clean-latent
    estimate `x0` after step T - s by default (`crf_input="x0"`; `"zt"`
    feeds the noisy DDIM state instead). Both are functions of the latents
    at step T - s that the sampler already holds: no extra denoiser call.
    With `crf_kwargs={"use_timestep": True}` the CRF also receives the
    timestep it starts at.

    CRF training: latent MSE to the full sampler's final latents (the
    paper's latent denoising / distillation loss) "plus optionally a
    latent-space adversarial loss" (arXiv 2412.18596, summary only). With
    `adversarial_weight=w > 0`, `fit_crf` adds `w` times a non-saturating
    GAN loss `softplus(-D(crf(x), y))` against a fresh class-conditional
    latent discriminator `D` (`build_latent_discriminator`: three
    spectrally normalised 3x3 convolutions, global pooling, projection
    head), trained at the same
    time with `softplus(-D(real)) + softplus(D(crf(x)))`, the real latents
    being the full sampler's final latents. The discriminator architecture,
    the loss and the simultaneous (not alternating) updates with one Adam
    of the CRF's learning rate are reconstructed choices; the discriminator
    is training-only and not saved. `w = 0` (the default) is the MSE-only
    training, unchanged.

    Args:
        image_size: side of the (square, one-channel) images. Defaults to
            `16`.
        latent_channels: channels of the latent grid. Defaults to `4`.
        width: U-Net top width. Defaults to `32`.
        autoencoder_width: autoencoder width. Defaults to `16`.
        num_train_steps: diffusion training timesteps. Defaults to `1000`.
        num_sampling_steps: `T`. Defaults to `12`.
        skip_steps: `s`, the steps the CRF replaces. Defaults to `4`.
        crf_kwargs: `LatentCRF` arguments. Defaults to `{}`.
        crf_input: `"x0"` or `"zt"`. Defaults to `"x0"`.
        num_classes: number of classes. Defaults to `10`.
        adversarial_weight: weight `w >= 0` of the CRF's latent adversarial
            loss (see above). Defaults to `0.0` (MSE only).
        seed: seed of every initialisation and data stream. Defaults to
            `0`.

    Example:

    >>> pipe = DigitsLatentDiffusion(
    ...     image_size=8, latent_channels=2, width=8, autoencoder_width=4,
    ...     num_sampling_steps=3, skip_steps=1,
    ... )
    >>> pipe.latent_shape
    (4, 4, 2)
    >>> [pipe.sampler_for(m).denoiser_calls for m in ("full", "crf", "short")]
    [3, 2, 2]
    """

    def __init__(
        self,
        image_size: int = 16,
        latent_channels: int = 4,
        width: int = 32,
        autoencoder_width: int = 16,
        num_train_steps: int = 1000,
        num_sampling_steps: int = 12,
        skip_steps: int = 4,
        crf_kwargs: dict | None = None,
        crf_input: str = "x0",
        num_classes: int = 10,
        seed: int = 0,
        adversarial_weight: float = 0.0,
    ):
        num_sampling_steps = check_integer(
            "num_sampling_steps", num_sampling_steps, 2
        )
        self.skip_steps = check_integer(
            "skip_steps", skip_steps, 1, num_sampling_steps - 1
        )
        self.crf_input = check_choice("crf_input", crf_input, ("x0", "zt"))
        self.image_size = check_integer("image_size", image_size, 2)
        self.latent_channels = check_integer("latent_channels", latent_channels)
        self.num_train_steps = check_integer(
            "num_train_steps", num_train_steps, num_sampling_steps
        )
        self.num_sampling_steps = num_sampling_steps
        self.num_classes = check_integer("num_classes", num_classes, 2)
        self.seed = check_integer("seed", seed, 0)
        self.adversarial_weight = check_number(
            "adversarial_weight", adversarial_weight, minimum=0.0
        )
        self._config = {
            "image_size": image_size,
            "latent_channels": latent_channels,
            "width": width,
            "autoencoder_width": autoencoder_width,
            "num_train_steps": num_train_steps,
            "num_sampling_steps": num_sampling_steps,
            "skip_steps": skip_steps,
            "crf_kwargs": dict(crf_kwargs or {}),
            "crf_input": crf_input,
            "num_classes": num_classes,
            "seed": seed,
            "adversarial_weight": self.adversarial_weight,
        }
        size = image_size // 2
        self.latent_shape = (size, size, latent_channels)
        self.schedule = NoiseSchedule(num_train_steps)
        self.alpha_bars = self.schedule.alpha_bars

        keras.utils.set_random_seed(seed)
        self.encoder, self.decoder = build_autoencoder(
            image_size, latent_channels, autoencoder_width
        )
        self.denoiser = ClassConditionalUNet(
            self.latent_shape, self.num_classes, width
        )
        self.denoiser(  # symbolic call: builds every sublayer, no compute
            [
                keras.Input(self.latent_shape),
                keras.Input((1,)),
                keras.Input((), dtype="int32"),
            ]
        )
        self.crf_kwargs = dict(crf_kwargs or {})
        self._samplers = {}
        self.reset_crf()
        self.latent_mean = np.zeros(latent_channels, "float32")
        self.latent_std = np.ones(latent_channels, "float32")
        self.sampler = DDIMSampler(
            self.denoiser, self.alpha_bars, num_sampling_steps
        )
        self._samplers = {}
        self.history = {}

    def reset_crf(
        self,
        seed=None,
        crf_kwargs=None,
        crf_input=None,
        skip_steps=None,
        adversarial_weight=None,
    ):
        """A fresh, untrained LatentCRF (and its training model), e.g. to
        repeat the CRF training with another seed, or (for ablations) with
        other `crf_kwargs`, `crf_input`, `skip_steps` or
        `adversarial_weight` (None: unchanged; the config follows). The LDM
        is untouched."""
        if adversarial_weight is not None:
            self.adversarial_weight = check_number(
                "adversarial_weight", adversarial_weight, minimum=0.0
            )
            self._config["adversarial_weight"] = self.adversarial_weight
        if seed is not None:
            keras.utils.set_random_seed(seed)
        if crf_kwargs is not None:
            self.crf_kwargs = dict(crf_kwargs)
            self._config["crf_kwargs"] = dict(crf_kwargs)
        if crf_input is not None:
            self.crf_input = check_choice("crf_input", crf_input, ("x0", "zt"))
            self._config["crf_input"] = crf_input
        new_skip = skip_steps is not None and skip_steps != self.skip_steps
        if new_skip:
            self.skip_steps = check_integer(
                "skip_steps", skip_steps, 1, self.num_sampling_steps - 1
            )
            self._config["skip_steps"] = skip_steps
            self._samplers = {}  # the short sampler changes too
        self.crf = LatentCRF(**self.crf_kwargs, name="latent_crf")
        inputs = [
            keras.Input((None, None, self.latent_channels)),
            keras.Input((self.num_classes,)),
        ]
        if self.crf.use_timestep:
            inputs.append(keras.Input((1,)))
        self.crf_model = keras.Model(inputs, self.crf(inputs), name="crf")
        self.discriminator = None  # made by fit_crf when adversarial
        self._samplers.pop("crf", None)

    # --- saving -------------------------------------------------------------

    def get_config(self):
        """The constructor arguments (JSON-serializable)."""
        return json.loads(json.dumps(self._config))

    def save(self, directory):
        """Writes the whole pipeline to `directory` (created if needed).

        Files: `encoder.keras`, `decoder.keras`, `denoiser.keras`,
        `crf.keras` (the CRF's training model, holding the `LatentCRF`), and
        `pipeline.json` with the constructor config, the noise schedule,
        the latent normalisation, the clip and the training history.
        `DigitsLatentDiffusion.load(directory)` restores it: the same
        samples for the same noise, and training can resume.
        """
        os.makedirs(directory, exist_ok=True)
        for name, model in (
            ("encoder", self.encoder),
            ("decoder", self.decoder),
            ("denoiser", self.denoiser),
            ("crf", self.crf_model),
        ):
            model.save(os.path.join(directory, f"{name}.keras"))
        state = {
            "config": self.get_config(),
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "latent_mean": self.latent_mean.tolist(),
            "latent_std": self.latent_std.tolist(),
            "clip": self.sampler.clip,
            "history": self.history,
        }
        with open(os.path.join(directory, "pipeline.json"), "w") as f:
            json.dump(state, f, indent=1)

    @classmethod
    def load(cls, directory):
        """The pipeline `save(directory)` wrote."""
        with open(os.path.join(directory, "pipeline.json")) as f:
            state = json.load(f)
        pipe = cls(**state["config"])

        def load(name):
            return keras.models.load_model(
                os.path.join(directory, f"{name}.keras")
            )

        pipe.encoder, pipe.decoder = load("encoder"), load("decoder")
        pipe.denoiser = load("denoiser")
        pipe.crf_model = load("crf")
        pipe.crf = pipe.crf_model.get_layer("latent_crf")
        pipe.schedule = keras.saving.deserialize_keras_object(state["schedule"])
        pipe.alpha_bars = pipe.schedule.alpha_bars
        pipe.latent_mean = np.asarray(state["latent_mean"], "float32")
        pipe.latent_std = np.asarray(state["latent_std"], "float32")
        pipe.sampler = DDIMSampler(
            pipe.denoiser,
            pipe.alpha_bars,
            pipe.num_sampling_steps,
            clip=state["clip"],
        )
        pipe.history = dict(state["history"])
        pipe._samplers = {}
        return pipe

    # --- autoencoder ------------------------------------------------------

    def fit_autoencoder(
        self,
        images,
        steps=400,
        batch_size=64,
        lr=2e-3,
        verbose=0,
        callbacks=None,
    ):
        """Trains the autoencoder (MSE) and fixes the latent normalisation."""
        inputs = keras.Input(self.encoder.input_shape[1:])
        ae = keras.Model(inputs, self.decoder(self.encoder(inputs)))
        ae.compile(keras.optimizers.Adam(lr), loss="mse")
        ds = array_dataset(images, images, batch_size, seed=self.seed)
        h = ae.fit(
            ds,
            steps_per_epoch=steps,
            epochs=1,
            verbose=verbose,
            callbacks=callbacks,
        )
        self.history["autoencoder_loss"] = float(h.history["loss"][-1])
        raw = np.asarray(self.encoder.predict(images, verbose=0))
        self.latent_mean = raw.mean(axis=(0, 1, 2)).astype("float32")
        self.latent_std = raw.std(axis=(0, 1, 2)).astype("float32") + 1e-6
        latents = self.encode(images)
        self.sampler.clip = float(1.2 * np.max(np.abs(latents)))
        self._samplers = {}
        return self.history["autoencoder_loss"]

    def encode(self, images):
        raw = np.asarray(self.encoder.predict(images, verbose=0))
        return (raw - self.latent_mean) / self.latent_std

    def decode(self, latents):
        raw = np.asarray(latents) * self.latent_std + self.latent_mean
        return np.asarray(self.decoder.predict(raw, verbose=0))

    # --- denoiser -----------------------------------------------------------

    def fit_denoiser(
        self,
        images,
        labels,
        steps=2000,
        batch_size=64,
        lr=2e-3,
        verbose=0,
        callbacks=None,
    ):
        """Noise-prediction training (MSE on eps), cosine-decayed Adam."""
        latents = self.encode(images).astype("float32")
        ds = noised_latent_dataset(
            latents, labels, self.alpha_bars, batch_size, seed=self.seed
        )
        schedule = keras.optimizers.schedules.CosineDecay(
            lr, decay_steps=steps, alpha=0.05, warmup_target=None
        )
        self.denoiser.trainable = True
        self.denoiser.compile(keras.optimizers.Adam(schedule), loss="mse")
        h = self.denoiser.fit(
            ds,
            steps_per_epoch=steps,
            epochs=1,
            verbose=verbose,
            callbacks=callbacks,
        )
        self.history["denoiser_loss"] = float(h.history["loss"][-1])
        return self.history["denoiser_loss"]

    # --- LatentCRF ----------------------------------------------------------

    def _crf_inputs(self, x, labels):
        inputs = [x, np.eye(self.num_classes, dtype="float32")[labels]]
        if self.crf.use_timestep:
            keep = self.num_sampling_steps - self.skip_steps
            t = float(self.sampler.timesteps[keep])
            inputs.append(np.full((len(x), 1), t, "float32"))
        return inputs

    def crf_training_pairs(
        self, num_pairs=1024, batch_size=512, seed=1, target_eta=0.0
    ):
        """Inputs at step T - s and the latents the last s steps produce
        (host-side reference sampler).

        Args:
            num_pairs: number of pairs (fresh noise and random labels).
            batch_size: denoiser batch.
            seed: seed of the noise, labels and tail noise.
            target_eta: `eta` of the last s steps that make the target: 0
                (deterministic DDIM, the full sampler's own output) or up
                to 1 (DDPM-like ancestral steps: a random target with the
                detail the deterministic tail does not add).

        Returns:
            `(crf_inputs, labels, targets)`.
        """
        rng = np.random.default_rng(seed)
        tail_rng = np.random.default_rng([seed, 1])  # inputs independent of eta
        inputs, labels_out, targets = [], [], []
        keep = self.num_sampling_steps - self.skip_steps
        for start in range(0, num_pairs, batch_size):
            n = min(batch_size, num_pairs - start)
            noise = rng.normal(size=(n,) + self.latent_shape).astype("float32")
            labels = rng.integers(0, self.num_classes, n).astype("int32")
            partial = self.sampler.sample(noise, labels, stop_after=keep)
            # Resume the remaining s steps from the saved state.
            final = self._finish(
                partial["zt"], labels, keep, target_eta, tail_rng
            )
            inputs.append(partial[self.crf_input])
            labels_out.append(labels)
            targets.append(final)
        return (
            np.concatenate(inputs),
            np.concatenate(labels_out),
            np.concatenate(targets),
        )

    def _finish(self, z, labels, start, eta=0.0, rng=None):
        ts = self.sampler.timesteps
        x0 = z
        for k in range(start, len(ts)):
            ab = self.alpha_bars[ts[k]]
            ab_next = 1.0 if k + 1 == len(ts) else self.alpha_bars[ts[k + 1]]
            eps = self.sampler._eps(z, int(ts[k]), labels)
            sigma = ddim_sigma(ab, ab_next, eta)
            if sigma == 0:
                z, x0 = ddim_step(z, eps, ab, ab_next, self.sampler.clip)
                continue
            x0 = (z - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab)
            if self.sampler.clip is not None:
                x0 = np.clip(x0, -self.sampler.clip, self.sampler.clip)
            z = (
                math.sqrt(ab_next) * x0
                + math.sqrt(max(1.0 - ab_next - sigma**2, 0.0)) * eps
                + sigma * rng.normal(size=z.shape)
            )
        return np.asarray(z, "float32")

    def fit_crf(
        self,
        num_pairs=1024,
        steps=400,
        batch_size=128,
        lr=1e-2,
        seed=1,
        verbose=0,
        callbacks=None,
        target_eta=0.0,
    ):
        """Trains the LatentCRF with the diffusion model frozen (latent MSE
        to the full sampler's final latents; with `target_eta > 0` to
        those of a stochastic tail, see `crf_training_pairs`), plus, when
        `adversarial_weight > 0`, the latent adversarial term against a
        fresh discriminator (class docstring; its last losses go to
        `history`). Returns (before, after) MSE on the training pairs."""
        self.denoiser.trainable = False
        x, labels, y = self.crf_training_pairs(
            num_pairs, seed=seed, target_eta=target_eta
        )
        inputs = self._crf_inputs(x, labels)
        self.crf_model.compile(keras.optimizers.Adam(lr), loss="mse")
        before = float(self.crf_model.evaluate(inputs, y, verbose=0))
        ds = array_dataset(tuple(inputs), y, batch_size, seed=seed)
        trainer = self.crf_model
        if self.adversarial_weight > 0:
            trainer = _AdversarialCRFTrainer(
                self.crf_model,
                build_latent_discriminator(
                    self.latent_channels, self.num_classes
                ),
                self.adversarial_weight,
            )
            trainer.compile(keras.optimizers.Adam(lr))
        self.history.pop("crf_adversarial_loss", None)
        self.history.pop("crf_discriminator_loss", None)
        h = trainer.fit(
            ds,
            steps_per_epoch=steps,
            epochs=1,
            verbose=verbose,
            callbacks=callbacks,
        )
        if trainer is not self.crf_model:
            self.discriminator = trainer.discriminator
            for key in ("adversarial", "discriminator"):
                self.history[f"crf_{key}_loss"] = float(h.history[key][-1])
        after = float(self.crf_model.evaluate(inputs, y, verbose=0))
        truncation = float(np.mean(np.square(x - y)))
        self.history.update(
            crf_mse_before=before,
            crf_mse_after=after,
            crf_input_mse=truncation,
        )
        return before, after

    # --- generation ---------------------------------------------------------

    def sampler_for(self, method):
        """The compiled `DiffusionSampler` of `"full"`, `"crf"` or
        `"short"` (built once per method and clip)."""
        method = check_choice("method", method, ("full", "crf", "short"))
        if method not in self._samplers:
            keep = self.num_sampling_steps - self.skip_steps
            kwargs = {}
            if method == "crf":
                kwargs = {
                    "crf": self.crf,
                    "crf_start": keep,
                    "crf_input": self.crf_input,
                    "crf_num_classes": self.num_classes,
                }
            steps = keep if method == "short" else self.num_sampling_steps
            self._samplers[method] = DiffusionSampler(
                self.denoiser,
                self.schedule,
                num_steps=steps,
                clip=self.sampler.clip,
                **kwargs,
            )
        return self._samplers[method]

    def generate(self, labels, noise, method="crf", decode=True):
        """Samples with one of the methods; returns `(images or latents,
        denoiser_calls)` (calls per batch)."""
        method = check_choice(
            "method", method, ("full", "truncated", "crf", "short")
        )
        labels = np.asarray(labels, "int32")
        noise = np.asarray(noise, "float32")
        if method == "truncated":
            self.sampler.reset_count()
            keep = self.num_sampling_steps - self.skip_steps
            latents = self.sampler.sample(noise, labels, stop_after=keep)["x0"]
            calls = self.sampler.denoiser_calls
        else:
            sampler = self.sampler_for(method)
            latents = np.asarray(sampler.predict_on_batch([noise, labels]))
            calls = sampler.denoiser_calls
        return (self.decode(latents) if decode else latents), calls

    def time_generation(self, labels, noise, method, repeats=3):
        """Median wall seconds of `generate(..., decode=False)` (after one
        warm-up call that compiles)."""
        self.generate(labels, noise, method, decode=False)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.generate(labels, noise, method, decode=False)
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    def cost_table(self):
        """FLOPs / params of LatentCRF vs one denoiser call."""
        crf = self.crf.cost(self.latent_shape, self.num_classes)
        return {
            "denoiser_flops": self.denoiser.flops(),
            "denoiser_params": int(self.denoiser.count_params()),
            "crf_flops": crf["flops"],
            "crf_params": crf["params"],
        }
