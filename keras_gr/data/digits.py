"""scikit-learn's handwritten digits as a small offline image set, and the
`tf.data` streams the digits latent-diffusion pipeline trains on.

`sklearn` is imported only by `load_digit_images`, `tensorflow` only by the
`tf.data` functions (tf.data is Keras' backend-independent input pipeline).
"""

import numpy as np
from keras import ops


def load_digit_images(image_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits, upsampled (bilinear) to `image_size`.

    Args:
        image_size: side of the returned images. Defaults to `16`.

    Returns:
        `(images, labels)`: float32 `(1797, image_size, image_size, 1)` in
        `[-1, 1]` and int32 `(1797,)`.

    Example:

    >>> images, labels = load_digit_images(16)
    >>> images.shape, labels.shape, float(images.min()), float(images.max())
    ((1797, 16, 16, 1), (1797,), -1.0, 1.0)
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images[..., None].astype("float32") / 16.0 * 2.0 - 1.0
    if image_size != 8:
        images = ops.image.resize(
            images, (image_size, image_size), interpolation="bilinear"
        )
        images = np.clip(ops.convert_to_numpy(images), -1.0, 1.0)
    return images.astype("float32"), digits.target.astype("int32")


def split_digits(
    images: np.ndarray,
    labels: np.ndarray,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded random split: `(x_train, y_train, x_test, y_test)`.

    Example:

    >>> x = np.arange(10)
    >>> x_train, _, x_test, _ = split_digits(x, x, test_fraction=0.2)
    >>> len(x_train), len(x_test), sorted(np.r_[x_train, x_test].tolist())
    (8, 2, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(test_fraction * len(images)))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def array_dataset(inputs, targets, batch_size, seed=0, shuffle=True):
    """Shuffled, batched, repeated `tf.data.Dataset` of `(inputs, targets)`."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((inputs, targets))
    if shuffle:
        ds = ds.shuffle(len(targets), seed=seed, reshuffle_each_iteration=True)
    return ds.repeat().batch(batch_size, drop_remainder=True).prefetch(2)


def noised_latent_dataset(latents, labels, alpha_bars, batch_size, seed=0):
    """`tf.data` stream of `((z_t, t, label), eps)` for noise prediction.

    `t` is uniform over the training timesteps and
    `z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps`, drawn with stateless
    seeded ops (the stream is reproducible).
    """
    import tensorflow as tf

    alpha_bars = tf.constant(np.asarray(alpha_bars, "float32"))
    num_train_steps = int(alpha_bars.shape[0])

    def add_noise(step, batch):
        z0, y = batch
        seed_t = tf.stack([tf.cast(seed, tf.int64), step])
        seed_e = tf.stack([tf.cast(seed + 1, tf.int64), step])
        t = tf.random.stateless_uniform(
            [batch_size], seed_t, 0, num_train_steps, dtype=tf.int32
        )
        eps = tf.random.stateless_normal(tf.shape(z0), seed_e)
        ab = tf.reshape(tf.gather(alpha_bars, t), [-1, 1, 1, 1])
        zt = tf.sqrt(ab) * z0 + tf.sqrt(1.0 - ab) * eps
        t = tf.cast(t, tf.float32)[:, None]
        return (zt, t, y), eps

    ds = tf.data.Dataset.from_tensor_slices((latents, labels))
    ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat().batch(batch_size, drop_remainder=True).enumerate()
    return ds.map(add_noise).prefetch(2)
