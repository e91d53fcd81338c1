"""`ClassConditionalUNet`: the small class-conditional noise predictor of
the digits latent-diffusion pipeline.

Part of the LatentCRF reference pipeline (Ranasinghe et al., "LatentCRF:
Continuous CRF for Efficient Latent Diffusion", arXiv 2412.18596): the
paper freezes Stable Diffusion's U-Net; this one-level U-Net is our
stand-in at 8 x 8 latents.
"""

import math
from collections.abc import Sequence

import keras
from keras import ops

from keras_gr.models.diffusion.conditional_res_block import ConditionalResBlock
from keras_gr.models.diffusion.conditional_res_block import conv_flops


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
        total += conv_flops(h, w, self.conv_in)
        total += self.res_top.flops(h, w)
        total += conv_flops(h // 2, w // 2, self.down)
        total += self.res_low.flops(h // 2, w // 2)
        total += self.res_mid.flops(h // 2, w // 2)
        total += conv_flops(h, w, self.up_conv)
        total += self.res_out.flops(h, w)
        total += conv_flops(h, w, self.conv_out)
        return int(total)
