"""Part 1, regression: the paper's quadratic, every method through its
Keras optimizer, the learning rate tuned on a shared log grid (JAX)."""

import inspect
import time

import keras
import numpy as np

from benchmarks import harness
from benchmarks.shampoo.common import state_bytes
from benchmarks.shampoo.common import suffix
from keras_gr.optimizers import AdagradNorm
from keras_gr.optimizers import FullMatrixAdagrad
from keras_gr.optimizers import OneSidedShampoo
from keras_gr.optimizers import Shampoo


def theory_settings():
    """The paper's analysis setting for the Shampoo family: no momentum,
    statistics summed (beta 2 = 1), no grafting, roots every step. Under
    the optimizers' argument names: `beta_1` / `beta_2` since issue 30
    (`beta1` / `beta2` before, still accepted with a warning)."""
    params = inspect.signature(OneSidedShampoo.__init__).parameters
    b1, b2 = ("beta_1", "beta_2") if "beta_1" in params else ("beta1", "beta2")
    return {b1: 0.0, b2: 1.0, "grafting": "none", "precondition_frequency": 1}


THEORY = theory_settings()

REGRESSION_METHODS = {
    "one-sided Shampoo": lambda lr: OneSidedShampoo(lr, **THEORY),
    "two-sided Shampoo": lambda lr: Shampoo(lr, **THEORY),
    "full-matrix AdaGrad": lambda lr: FullMatrixAdagrad(lr, max_size=10**6),
    "diagonal AdaGrad": lambda lr: keras.optimizers.Adagrad(
        lr, initial_accumulator_value=0.0, epsilon=1e-12
    ),
    "AdaGrad-Norm": lambda lr: AdagradNorm(lr),
    "Adam": lambda lr: keras.optimizers.Adam(lr),
    "SGD": lambda lr: keras.optimizers.SGD(lr),
}


def regression_problem(dim, seed=0):
    """`(H, X*)`: H = Q diag(i^-2) Q^T with a random orthogonal Q, and a
    normal target X*, both `dim x dim` (float32)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    h = (q * np.arange(1, dim + 1, dtype="float64") ** -2.0) @ q.T
    x_star = rng.normal(size=(dim, dim))
    return h.astype("float32"), x_star.astype("float32")


def run_regression(opt, h, x_star, steps):
    """`steps` jitted steps of `opt` from X = 0: the loss before and after
    every step, and the optimizer-state bytes."""
    import jax

    h_t = keras.ops.convert_to_tensor(h)
    xs_t = keras.ops.convert_to_tensor(x_star)
    var = keras.Variable(np.zeros_like(x_star), name="x")
    opt.build([var])

    def loss_fn(x):
        e = x - xs_t
        return 0.5 * keras.ops.sum(
            h_t * keras.ops.matmul(e, keras.ops.transpose(e))
        )

    @jax.jit
    def step(opt_vars, x):
        g = keras.ops.matmul(h_t, x - xs_t)
        (x,), opt_vars = opt.stateless_apply(opt_vars, [g], [x])
        return opt_vars, x, loss_fn(x)

    opt_vars = [v.value for v in opt.variables]
    x = var.value
    losses = [float(loss_fn(x))]
    for _ in range(steps):
        opt_vars, x, loss = step(opt_vars, x)
        losses.append(loss)
    losses = [float(v) for v in losses]
    return losses, state_bytes(opt)


def final_loss(losses):
    """The last loss; `inf` for a diverged run (a non-finite loss, or one
    above 1e3 times the start), which then loses the tuning."""
    if not np.all(np.isfinite(losses)) or max(losses) > 1e3 * losses[0]:
        return np.inf
    return losses[-1]


def part_regression(args):
    dim, steps = (6, 60) if args.quick else (args.dim, args.steps)
    h, x_star = regression_problem(dim)
    grid = [float(v) for v in np.logspace(-3, 1.5, 10 if args.quick else 19)]
    rows, curves = [], {}
    for name, make in REGRESSION_METHODS.items():
        start = time.time()
        # One deterministic problem: a single "seed".
        tuned = harness.tune_then_seeds(
            grid,
            lambda lr, seed, make=make: run_regression(
                make(lr), h, x_star, steps
            ),
            [0],
            score=lambda result: final_loss(result[0]),
        )
        losses, nbytes = tuned["results"][0]
        curves[name] = losses
        rows.append(
            {
                "method": name,
                "best_lr": tuned["best"],
                "lr_at_grid_edge": tuned["at_edge"],
                "final_loss": float(final_loss(losses)),
                "loss_at_25%": float(losses[steps // 4]),
                "state_bytes": int(nbytes),
                "tuning_seconds": round(time.time() - start, 1),
            }
        )
        print(rows[-1], flush=True)
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, losses in curves.items():
        ax.semilogy(np.maximum(np.asarray(losses), 1e-30), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("f(X) (best learning rate)")
    ax.set_title(f"{dim}x{dim} regression, H eigenvalues i^-2")
    ax.legend(fontsize=7)
    fig.tight_layout()
    name = f"shampoo_regression{suffix(args)}"
    fig.savefig(harness.result_path(name, ".png"))
    meta = {"dim": dim, "steps": steps, "lr_grid": grid, "f0": curves["SGD"][0]}
    md = harness.write_results(
        name,
        {"regression": rows},
        meta=meta,
        notes=(
            "Every method is the Keras optimizer itself (theory settings "
            "for the Shampoo family: no momentum, no grafting, beta_2=1, "
            "roots every step), its learning rate the best of the shared "
            "grid (`lr_at_grid_edge`: the best is the grid's smallest or "
            "largest value, so the method's best may lie outside it). Loss "
            "floor for the plot: 1e-30."
        ),
    )
    print(md)
