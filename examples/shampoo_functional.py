"""Train a functional Keras model with one-sided Shampoo.

`keras_gr.optimizers.OneSidedShampoo` ("Structured Preconditioners in
Adaptive Optimization: A Unified Analysis", arXiv:2503.10537) preconditions
every matrix weight on its smaller side with `(sum G G^T)^(-1/2)` and grafts
the step to Adam's norm, so Adam's learning rate works as is. Biases and
normalisation scales get the Adam update.

This script fits a small MLP on a synthetic regression task with Adam and
with OneSidedShampoo (same learning rate, same steps) and prints both
validation losses.

Run: `KERAS_BACKEND=jax python examples/shampoo_functional.py [--quick]`
(`--help` lists the options; outputs: none besides the printed table).
Measured wall time on the loaded 2-core development machine (JAX): --quick
2.5 min, measured while other jobs shared the 2 cores (load average near
12); the full run was not timed in this change.
"""

import keras
import numpy as np
from _example import done
from _example import example_arguments

import keras_gr


def options(parser):
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=2048)


args = example_arguments(__doc__, options, "3 epochs instead of 10")
if args.quick:
    args.epochs = 3

# Data: y = tanh(x A) B with an ill-conditioned input covariance.
rng = np.random.default_rng(0)
scales = np.logspace(0, -2, 32).astype("float32")
x = rng.normal(size=(args.samples, 32)).astype("float32") * scales
a = rng.normal(size=(32, 16)).astype("float32") / scales.mean()
b = rng.normal(size=(16, 4)).astype("float32")
y = np.tanh(x @ a) @ b
x_train, y_train, x_val, y_val = x[:-256], y[:-256], x[-256:], y[-256:]


def make_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32,))
    h = keras.layers.Dense(64, activation="gelu")(inputs)
    h = keras.layers.LayerNormalization()(h)
    h = keras.layers.Dense(64, activation="gelu")(h)
    outputs = keras.layers.Dense(4)(h)
    return keras.Model(inputs, outputs)


optimizers = {
    "Adam": keras.optimizers.Adam(learning_rate=3e-3),
    "OneSidedShampoo": keras_gr.optimizers.OneSidedShampoo(
        learning_rate=3e-3, precondition_frequency=10
    ),
}
for name, optimizer in optimizers.items():
    model = make_model()
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x_train, y_train, batch_size=64, epochs=args.epochs, verbose=0)
    val = model.evaluate(x_val, y_val, verbose=0)
    print(f"{name:>16}: validation MSE {val:.4f}")

# What is preconditioned: one (blocks, m, m) statistic and root per kernel
# (m = the smaller side, split into blocks of at most
# `max_preconditioner_dim`); biases and norms get the Adam update.
summary = optimizers["OneSidedShampoo"].preconditioning_summary()
for row in summary["variables"]:
    what = row["factors"] if row["preconditioned"] else row["reason"]
    print(f"{row['path']:>32} {str(row['shape']):>10}: {what}")
print(
    f"preconditioned: {100 * summary['preconditioned_fraction']:.1f}% of "
    f"{summary['parameters']} parameters"
)
if args.quick:
    print(
        "(--quick: 3 epochs, where the two optimizers are not yet apart; "
        "the full run trains 10.)"
    )
done(args)
