"""In-context linear regression with a looped linear-attention transformer.

"On the Role of Depth and Looping for In-Context Learning with Task
Diversity" (Gatmiry et al., arXiv 2410.21698): one linear-attention layer,
looped `L` times with shared weights, learns to solve least squares *in
context* (the prompt holds `n` pairs `(x_i, <w, x_i>)` and a query `x_q`),
for tasks whose input covariance has any condition number up to `kappa`.
The baseline is a non-looped stack of `L` distinct layers trained the same
way. The looped model can also run *more* loops at test time than it was
trained with: its *median* error keeps falling, but its *mean* error can
blow up (on the few prompts whose in-context covariance has an eigenvalue
beyond the learned step's stability limit extra loops diverge), so the
script prints both.

    KERAS_BACKEND=jax python examples/looped_icl_regression.py [--quick]

`--help` lists the options; outputs: none besides the printed tables.
Measured wall time on the loaded 2-core development machine (JAX): --quick
4.5 min, measured while other jobs shared the 2 cores (load average near
12); the full run was not timed in this change.
"""

import keras
import numpy as np
from _example import done
from _example import example_arguments

import keras_gr


def options(parser):
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--num-context", type=int, default=40)
    parser.add_argument("--kappa", type=float, default=10.0)
    parser.add_argument("--loops", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-train", type=int, default=8192)


args = example_arguments(
    __doc__, options, "2048 training prompts and 3 epochs (not 8192 and 10)"
)
if args.quick:
    args.num_train, args.epochs = 2048, 3
keras.utils.set_random_seed(0)

# 1. Data: token-major prompts (batch, n + 1, d + 1); the answer is the
#    query's y slot, hidden as 0 in the prompt.
config = dict(dim=args.dim, num_context=args.num_context, kappa=args.kappa)
train = keras_gr.data.icl_regression_problems(args.num_train, seed=1, **config)
test = keras_gr.data.icl_regression_problems(2048, seed=2, **config)
print("prompts", train["prompts"].shape, "targets", train["targets"].shape)

# 2. A looped model (1 layer x L loops) and the deep baseline (L layers).
models = {
    "looped": keras_gr.models.LoopedICLRegressor(depth=args.loops),
    "deep": keras_gr.models.LoopedICLRegressor(depth=args.loops, looped=False),
}
for name, model in models.items():
    model.compile(
        optimizer=keras.optimizers.Adam(0.01, clipnorm=1.0), loss="mse"
    )
    model.fit(
        train["prompts"],
        train["targets"],
        batch_size=128,
        epochs=args.epochs,
        verbose=0,
    )
    print(f"{name}: {model.count_params()} parameters")


# 3. Loss vs depth: the looped model can run any number of loops. We print
#    the mean and the median squared error (both divided by E[y^2]): on the
#    few prompts whose in-context covariance has an eigenvalue beyond the
#    learned step's stability limit (lambda > 2 / step), extra loops diverge
#    and dominate the mean; the median keeps falling.
def nmse(predictions, targets, reduce=np.mean):
    err = (predictions - targets[:, None]) ** 2
    return reduce(err, axis=0) / np.mean(targets**2)


max_loops = 4 * args.loops
looped_pred = keras.ops.convert_to_numpy(
    models["looped"](test["prompts"], depth=max_loops, return_all_depths=True)
)
deep_pred = keras.ops.convert_to_numpy(
    models["deep"](test["prompts"], return_all_depths=True)
)
curves = {
    "looped mean": nmse(looped_pred, test["targets"]),
    "looped median": nmse(looped_pred, test["targets"], np.median),
    "deep mean": nmse(deep_pred, test["targets"]),
    "deep median": nmse(deep_pred, test["targets"], np.median),
}
print("loops  " + "  ".join(f"{k:>13}" for k in curves))
for depth in range(1, max_loops + 1):
    cells = [
        f"{c[depth - 1]:13.4g}" if depth <= len(c) else " " * 13
        for c in curves.values()
    ]
    print(f"{depth:5d}  " + "  ".join(cells))

# 4. Under a small distribution shift (the spectrum widened by 25%).
shifted = keras_gr.data.icl_regression_problems(
    2048, seed=3, shift=0.25, **config
)
for name, model in models.items():
    pred = keras.ops.convert_to_numpy(model(shifted["prompts"]))
    print(
        f"shifted, {name} at depth {args.loops}: "
        f"{nmse(pred, shifted['targets'])[0]:.4f}"
    )

# 5. What the looped layer learned: a preconditioner A shared by all tasks
#    (one preconditioned gradient-descent step per loop when u = 0).
layer = models["looped"].attention_layers[0]
a = keras.ops.convert_to_numpy(layer.a)
sym = (a + a.T) / 2
print("eigenvalues of (A + A^T) / 2:", np.round(np.linalg.eigvalsh(sym), 3))
print("|A - A^T| / 2 (Frobenius):", float(np.linalg.norm(a - sym)))
print("max |u|:", float(np.abs(keras.ops.convert_to_numpy(layer.u)).max()))
done(args)
