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


# The measure of the verdict: log10 of the final loss relative to f0,
# floored at 1e-30 (float32 reaches an exact 0 on this problem).
LOG_FLOOR = -30.0


def log_relative_loss(losses):
    """`log10(final / f0)`, floored at `LOG_FLOOR`; a diverged run counts
    as the divergence threshold, `log10(1e3) = 3` (finite, so that a
    paired comparison still sees it as the worst outcome)."""
    final = final_loss(losses)
    if not np.isfinite(final):
        return 3.0
    return float(max(np.log10(max(final, 0.0) / losses[0] + 1e-300), LOG_FLOOR))


def tune_with_extensions(grid, run, extensions):
    """`(best, at_edge, tuning)`: every rate of `grid` once on the tuning
    problem, lower score is better (the final loss, ties - e.g. several
    rates reaching an exact 0 - broken by the loss at 25% of the steps);
    a best rate at the grid's edge extends the grid by one more point of
    the same log spacing beyond it, up to `extensions` times."""
    grid = sorted(grid)
    ratio = grid[1] / grid[0]
    tuning = {lr: run(lr) for lr in grid}

    def score(lr):
        losses = tuning[lr][0]
        return (final_loss(losses), losses[len(losses) // 4])

    for i in range(extensions + 1):
        lrs = sorted(tuning)
        best = min(lrs, key=score)
        at_edge = best in (lrs[0], lrs[-1])
        if not at_edge or i == extensions:
            break
        new = best * ratio if best == lrs[-1] else best / ratio
        tuning[new] = run(new)
    return best, at_edge, tuning


def part_regression(args):
    """The paper's quadratic on several random problems (`args.seeds`: Q
    and X* drawn per seed). Every method's rate is tuned on the first
    seed's problem (exploratory: the grid search looks at its results)
    and then fixed; the verdict-bearing comparison is over the other
    seeds (fresh problems), paired per problem."""
    dim, steps = (6, 60) if args.quick else (args.dim, args.steps)
    seeds = list(args.seeds)
    tune_seed, confirm_seeds = seeds[0], seeds[1:]
    problems = {seed: regression_problem(dim, seed) for seed in seeds}
    grid = [float(v) for v in np.logspace(-3, 1.5, 10 if args.quick else 19)]
    rows, per_seed, curves = [], [], {}
    for name, make in REGRESSION_METHODS.items():
        start = time.time()

        def run(lr, seed=tune_seed, make=make):
            h, x_star = problems[seed]
            return run_regression(make(lr), h, x_star, steps)

        best, at_edge, tuning = tune_with_extensions(
            grid, run, args.grid_extensions
        )
        results = {tune_seed: tuning[best]}
        for seed in confirm_seeds:
            results[seed] = run(best, seed)
        curves[name] = results[tune_seed][0]
        for seed, (losses, _) in results.items():
            per_seed.append(
                {
                    "method": name,
                    "seed": seed,
                    "role": "tuning" if seed == tune_seed else "confirm",
                    "lr": best,
                    "f0": losses[0],
                    "final_loss": float(final_loss(losses)),
                    "loss_at_25%": float(losses[steps // 4]),
                    "log10_final_over_f0": log_relative_loss(losses),
                }
            )
        confirm = [r for r in per_seed[-len(seeds) :] if r["role"] == "confirm"]
        rows.append(
            {
                "method": name,
                "best_lr": best,
                "lr_at_grid_edge": at_edge,
                "grid_points": len(tuning),
                "final_loss (tuning problem)": float(
                    final_loss(results[tune_seed][0])
                ),
                "mean log10(final/f0), confirm": float(
                    np.mean([r["log10_final_over_f0"] for r in confirm])
                )
                if confirm
                else float("nan"),
                "state_bytes": int(results[tune_seed][1]),
                "seconds": round(time.time() - start, 1),
            }
        )
        print(rows[-1], flush=True)
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, losses in curves.items():
        ax.semilogy(np.maximum(np.asarray(losses), 1e-30), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("f(X) (best learning rate)")
    ax.set_title(
        f"{dim}x{dim} regression (problem seed {tune_seed}), H eigenvalues i^-2"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    name = f"shampoo_regression{suffix(args)}"
    fig.savefig(harness.result_path(name, ".png"))
    meta = {
        "dim": dim,
        "steps": steps,
        "lr_grid": grid,
        "grid_extensions": args.grid_extensions,
        "seeds": seeds,
        "tuning_seed": tune_seed,
        "confirm_seeds": confirm_seeds,
    }
    md = harness.write_results(
        name,
        {"regression": rows, "per-seed results": per_seed},
        meta=meta,
        notes=(
            "Every method is the Keras optimizer itself (theory settings "
            "for the Shampoo family: no momentum, no grafting, beta_2=1, "
            "roots every step). Each seed draws its own problem (random "
            "orthogonal Q, normal X*). The learning rate of every method is "
            "the best of the same shared log grid on the first seed's "
            "problem (exploratory: chosen by looking at its results; ties "
            "such as an exact 0 broken by the loss at 25% of the steps); a "
            "best rate at the grid's edge extends the grid by one point of "
            "the same spacing, up to `grid_extensions` times "
            "(`lr_at_grid_edge` True: still at the edge after them; "
            "`grid_points`: the points tried). The rate is then fixed and "
            "every method runs on the other seeds' problems (fresh: "
            "`role` confirm); the verdict (`python -m benchmarks.claims`) "
            "compares log10(final loss / f0), floored at 1e-30 (float32 "
            "reaches an exact 0; a diverged run counts as 1e3 x f0), paired "
            "per problem over the confirm "
            "seeds. Loss floor for the plot: 1e-30."
        ),
    )
    print(md)
