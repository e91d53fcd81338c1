"""LAuReL in a functional ResNet on scikit-learn's digits.

"LAuReL: Learned Augmented Residual Layer" (arXiv 2411.07501) replaces the
residual `x + f(x)` by a learned join. In the functional API that is one
line: `Laurel(...)([x, fx])` instead of `keras.layers.Add()([x, fx])`;
`LaurelStack` also feeds the previous activations to the PA variant.

It trains the plain-`Add` baseline and three LAuReL variants with the same
seed, data and steps, and prints their test accuracies side by side.

Run: `KERAS_BACKEND=jax python examples/laurel_resnet_digits.py [--quick]`
(`--help` lists the options; outputs: none besides the printed table).
Measured wall time on the loaded 2-core development machine (JAX): --quick
7.3 min, measured while other jobs shared the 2 cores (load average near
12); the full run was not timed in this change.
"""

import keras
import numpy as np
from _example import done
from _example import example_arguments
from sklearn.datasets import load_digits

from keras_gr.layers import LaurelStack


def options(parser):
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--channels", type=int, default=32)


args = example_arguments(__doc__, options, "2 epochs instead of 10")
if args.quick:
    args.epochs = 2

# Data: 8x8 grey-level digits, 1797 images, 360 held out.
digits = load_digits()
images = (digits.images / 16.0).astype("float32")[..., None]
labels = digits.target.astype("int32")
order = np.random.default_rng(0).permutation(len(images))
test, train = order[:360], order[360:]


def resnet(variant):
    """A small ResNet; `variant=None` uses plain `Add` residuals."""
    stack = LaurelStack(variant=variant or "rw", rank=4, num_activations=2)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(args.channels, 3, padding="same")(inputs)
    for _ in range(args.blocks):
        h = keras.layers.Conv2D(args.channels, 3, padding="same")(x)
        h = keras.layers.BatchNormalization(momentum=0.9)(h)
        h = keras.layers.Activation("relu")(h)
        h = keras.layers.Conv2D(args.channels, 3, padding="same")(h)
        h = keras.layers.BatchNormalization(momentum=0.9)(h)
        if variant is None:
            x = keras.layers.Add()([x, h])
        else:
            x = stack.join(x, h)  # = Laurel(...)([x, h, earlier inputs])
        x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


for variant in [None, "rw", "rw_lr", "rw_lr_pa"]:
    keras.utils.set_random_seed(0)
    model = resnet(variant)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        images[train],
        labels[train],
        epochs=args.epochs,
        batch_size=32,
        verbose=0,
    )
    _, acc = model.evaluate(images[test], labels[test], verbose=0)
    print(
        f"{variant or 'baseline':>9}: {model.count_params():6d} params, "
        f"test accuracy {100 * acc:.2f}%"
    )
if args.quick:
    print(
        "(--quick: 2 epochs and one seed, so gaps of a few points between "
        "variants can be seed noise. The full run trains 10 epochs.)"
    )

# The learned residual weights of the last model (alpha = 1 + a, beta = 1 + b).
for layer in model.layers:
    if layer.__class__.__name__ == "Laurel":
        alpha = 1 + float(keras.ops.convert_to_numpy(layer.alpha))
        beta = 1 + float(keras.ops.convert_to_numpy(layer.beta))
        print(f"{layer.name}: alpha={alpha:.3f} beta={beta:.3f}")
done(args)
