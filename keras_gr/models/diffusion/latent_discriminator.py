"""The class-conditional latent discriminator of the LatentCRF's optional
adversarial loss, with its spectrally normalised convolutions.

The LatentCRF paper (Ranasinghe et al., arXiv 2412.18596) trains the CRF
with a latent denoising loss "plus optionally a latent-space adversarial
loss" and gives no discriminator; this one is our reconstruction: SN-GAN's
spectral normalisation (Miyato et al., arXiv 1802.05957) and the projection
head of Miyato and Koyama (arXiv 1802.05637).
"""

import keras
from keras import ops


def spectral_normalize(kernel, iterations=5):
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
        kernel = spectral_normalize(self.kernel)
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
