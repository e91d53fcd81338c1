"""scikit-learn's handwritten digits as a small offline image set: the
images, a seeded split, the `tf.data` streams the digits latent-diffusion
pipeline trains on, and the digit classifier whose logits and features are
the evaluation space of generated digits (class accuracy, FID-style
distance, Vendi diversity; see `keras_gr.metrics`).

Everything digits-specific lives here (and in `benchmarks/latent_crf.py`,
`examples/latent_crf_digits.py`); the diffusion parts in `keras_gr.models`
and `keras_gr.layers` take any images.

`sklearn` is imported only by `load_digit_images`, `tensorflow` only by the
`tf.data` functions (tf.data is Keras' backend-independent input pipeline).
"""

import keras
import numpy as np
from keras import ops

from keras_gr._imports import require
from keras_gr.data._tf_data import batched_dataset


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
    datasets = require("sklearn.datasets", "`load_digit_images`")

    digits = datasets.load_digits()
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
    return batched_dataset(
        (inputs, targets),
        batch_size,
        shuffle=shuffle,
        seed=seed,
        repeat=True,
        drop_remainder=True,
        prefetch=2,
    )


def noised_latent_dataset(latents, labels, alpha_bars, batch_size, seed=0):
    """`tf.data` stream of `((z_t, t, label), eps)` for noise prediction.

    `t` is uniform over the training timesteps and
    `z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps`, drawn with stateless
    seeded ops (the stream is reproducible).
    """
    tf = require("tensorflow", "the digits `tf.data` streams")

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

    ds = batched_dataset(
        (latents, labels),
        batch_size,
        seed=seed,
        repeat=True,
        drop_remainder=True,
    )
    return ds.enumerate().map(add_noise).prefetch(2)


def build_digit_classifier(
    image_size: int = 16, num_classes: int = 10, feature_dim: int = 64
) -> tuple[keras.Model, keras.Model]:
    """Small CNN classifier of `(image_size, image_size, 1)` digits; its
    penultimate layer is the metric space of generated samples.

    `conv(16) -> conv(32, stride 2) -> conv(64, stride 2) -> global
    average pool -> dense(feature_dim, relu) -> dense(num_classes)`.

    Args:
        image_size: side of the images. Defaults to `16`.
        num_classes: number of classes. Defaults to `10`.
        feature_dim: size of the feature layer. Defaults to `64`.

    Returns:
        `(classifier, feature_extractor)`, sharing weights; the classifier
        outputs logits.

    Example:

    >>> classifier, features = build_digit_classifier(8, feature_dim=5)
    >>> x = np.zeros((2, 8, 8, 1), "float32")
    >>> classifier.predict(x, verbose=0).shape, tuple(features(x).shape)
    ((2, 10), (2, 5))
    """
    inputs = keras.Input((image_size, image_size, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(
        32, 3, strides=2, padding="same", activation="relu"
    )(x)
    x = keras.layers.Conv2D(
        64, 3, strides=2, padding="same", activation="relu"
    )(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    features = keras.layers.Dense(feature_dim, activation="relu")(x)
    logits = keras.layers.Dense(num_classes)(features)
    return (
        keras.Model(inputs, logits, name="digit_classifier"),
        keras.Model(inputs, features, name="digit_features"),
    )


def train_digit_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    steps: int = 400,
    batch_size: int = 64,
    seed: int = 0,
    num_classes: int = 10,
) -> tuple[keras.Model, keras.Model]:
    """Trains `build_digit_classifier` on real images (cross-entropy, Adam
    2e-3, `steps` batches of a seeded shuffled stream).

    Args:
        images: `(n, s, s, 1)` float images.
        labels: `(n,)` integer classes.
        steps: training steps. Defaults to `400`.
        batch_size: batch size. Defaults to `64`.
        seed: seed of the initialisation and the stream. Defaults to `0`.
        num_classes: number of classes. Defaults to `10`.

    Returns:
        `(classifier, feature_extractor)`.

    Example:

    >>> images, labels = load_digit_images(8)
    >>> classifier, features = train_digit_classifier(
    ...     images[:64], labels[:64], steps=2, batch_size=32
    ... )
    >>> classifier.predict(images[:3], verbose=0).shape
    (3, 10)
    """
    keras.utils.set_random_seed(seed)
    classifier, features = build_digit_classifier(images.shape[1], num_classes)
    classifier.compile(
        keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    ds = array_dataset(images, labels, batch_size, seed=seed)
    # The stream is shuffled (seeded) already: `shuffle=False` says so, and
    # keeps Keras from warning that its default `True` is ignored.
    classifier.fit(
        ds, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0
    )
    return classifier, features
