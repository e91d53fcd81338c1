"""`ConditionalResBlock`, the residual block of `ClassConditionalUNet`,
and `conv_flops`, the FLOP count both use.

Part of the LatentCRF reference pipeline (arXiv 2412.18596); the block is
the usual diffusion U-Net residual block (Ho et al., arXiv 2006.11239):
group normalisation, SiLU, 3x3 convolutions, the conditioning embedding
added between the two convolutions, the second convolution
zero-initialised so a fresh block is its skip path.
"""

import math

import keras
import numpy as np
from keras import ops


def conv_flops(height, width, layer):
    """FLOPs of a `same`-padded stride-1 `Conv2D` `layer` on a `height` x
    `width` input: 2 per multiply-add, bias not counted."""
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
        total = conv_flops(height, width, self.conv1)
        total += conv_flops(height, width, self.conv2)
        total += 2 * int(np.prod(self.emb_proj.kernel.shape))
        if self.skip is not None:
            total += conv_flops(height, width, self.skip)
        return total
