"""The digits pipeline's convolutional autoencoder (the latent space the
diffusion model and the LatentCRF work in).

Part of the LatentCRF reference pipeline (Ranasinghe et al., "LatentCRF:
Continuous CRF for Efficient Latent Diffusion", arXiv 2412.18596): the paper
uses Stable Diffusion's VAE; this small deterministic autoencoder (no KL
term, MSE only) is our stand-in for 16 x 16 grayscale images.
"""

import keras


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
