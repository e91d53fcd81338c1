"""Benchmark: looped vs non-looped linear attention for in-context regression.

"On the Role of Depth and Looping for In-Context Learning with Task
Diversity" (Gatmiry, Saunshi, Reddi, Jegelka, Kumar; arXiv 2410.21698),
scaled down to a CPU. Four `keras_gr.models.LoopedICLRegressor`s are
trained with the same data, optimiser and step budget at depth `L`:
looped / non-looped x restricted / unrestricted. Then

1. loss vs number of loops, including loops beyond the training depth
   (looped) and the prediction read after each of the first `l` layers
   (non-looped), in distribution and under a shift;
2. loss vs distribution shift (the covariance spectrum widened by `1 + s`
   at both ends, `keras_gr.data.icl_regression_problems(shift=s)`);
3. parameters and `fit` step time of every model (ratio to the looped
   restricted model, same run).

Losses are normalised mean squared errors `E[(y_hat - y_q)^2] / E[y_q^2]`
(1.0 = predicting 0).

    KERAS_BACKEND=jax .venv/bin/python -m benchmarks.looped_icl [--quick]
"""

import argparse
import time

import keras
import numpy as np

from benchmarks import harness
from keras_gr.data.icl_regression import icl_regression_problems
from keras_gr.models.looped_icl import LoopedICLRegressor

MODELS = (
    ("looped_restricted", True, True),
    ("looped_unrestricted", True, False),
    ("deep_restricted", False, True),
    ("deep_unrestricted", False, False),
)
PEER = "looped_restricted"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--num-context", type=int, default=160)
    parser.add_argument("--kappa", type=float, default=25.0)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--max-loops", type=int, default=30)
    parser.add_argument("--train-prompts", type=int, default=16384)
    parser.add_argument("--test-prompts", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument(
        "--unrestricted-learning-rate", type=float, default=0.001
    )
    parser.add_argument("--shifts", type=str, default="0,0.1,0.25,0.5,1.0,2.0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.train_prompts = 4096
        args.test_prompts = 1024
        args.epochs = 6
        args.max_loops = 15
    args.shifts = [float(s) for s in args.shifts.split(",")]
    return args


def normalised_mse(predictions, targets, reduce=np.mean):
    """`reduce((y_hat - y_q)^2) / E[y_q^2]` per depth (column)."""
    predictions = np.asarray(predictions, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)[:, None]
    return reduce((predictions - targets) ** 2, axis=0) / np.mean(targets**2)


def expansive_prompts(model, data, num_context):
    """Boolean mask of the prompts on which the learned restricted loop is
    expansive: spectral radius of `I - A S` above 1, `S` the prompt's
    in-context covariance (the GD iteration matrix is `I - A^T S` when
    `u = 0`; `A^T S` and `A S` have the same eigenvalues)."""
    a = np.asarray(model.attention_layers[0].a, dtype=np.float64)
    x = np.asarray(data["inputs"][:, :num_context], dtype=np.float64)
    s = np.einsum("bti,btj->bij", x, x) / num_context
    eye = np.eye(a.shape[0])
    radius = np.abs(np.linalg.eigvals(eye - a @ s)).max(axis=-1)
    return radius > 1.0


def problems(args, num, seed, shift=0.0):
    return icl_regression_problems(
        num,
        dim=args.dim,
        num_context=args.num_context,
        kappa=args.kappa,
        shift=shift,
        seed=seed,
    )


def train(name, looped, restricted, args, train_data, val_data):
    keras.utils.set_random_seed(args.seed)
    model = LoopedICLRegressor(
        depth=args.depth,
        looped=looped,
        restricted=restricted,
        seed=args.seed,
        name=name,
    )
    steps = args.epochs * (args.train_prompts // args.batch_size)
    learning_rate = (
        args.learning_rate if restricted else args.unrestricted_learning_rate
    )
    warmup = steps // 10
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate * 0.01,
        decay_steps=steps - warmup,
        alpha=0.01,
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule, clipnorm=1.0),
        loss="mse",
        jit_compile=True,
    )
    start = time.perf_counter()
    # Keep the weights with the best in-distribution validation loss: the
    # cubic-per-layer unrestricted models have rare loss spikes (outlier
    # prompts) and can end on a diverged step.
    best = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=args.epochs,
        restore_best_weights=True,
    )
    history = model.fit(
        train_data["prompts"],
        train_data["targets"],
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(val_data["prompts"], val_data["targets"]),
        callbacks=[best],
        verbose=0,
    )
    seconds = time.perf_counter() - start
    return model, history.history["val_loss"], seconds


def loss_by_depth(model, data, max_depth, reduce=np.mean):
    preds = keras.ops.convert_to_numpy(
        model(data["prompts"], depth=max_depth, return_all_depths=True)
    )
    return normalised_mse(preds, data["targets"], reduce)


def main():
    args = parse_args()
    print(f"settings: {vars(args)}")
    train_data = problems(args, args.train_prompts, seed=args.seed + 1)
    val_data = problems(args, args.test_prompts // 2, seed=args.seed + 2)
    tests = {
        s: problems(args, args.test_prompts, seed=args.seed + 1000, shift=s)
        for s in args.shifts
    }
    small_shift = next((s for s in args.shifts if s > 0), args.shifts[0])

    models, curves, medians, expansive, cost_rows = {}, {}, {}, {}, []
    for name, looped, restricted in MODELS:
        model, losses, seconds = train(
            name, looped, restricted, args, train_data, val_data
        )
        models[name] = model
        print(
            f"{name}: val loss {losses[0]:.4g} -> {losses[-1]:.4g} "
            f"(best {np.nanmin(_nan_inf(losses)):.4g}) "
            f"({seconds:.1f}s)"
        )
        max_depth = args.max_loops if looped else args.depth
        curves[name] = {
            s: loss_by_depth(model, tests[s], max_depth) for s in args.shifts
        }
        medians[name] = {
            s: loss_by_depth(model, tests[s], max_depth, np.median)
            for s in args.shifts
        }
        if looped and restricted:
            expansive[name] = {}
            for s in args.shifts:
                mask = expansive_prompts(model, tests[s], args.num_context)
                curve = loss_by_depth(
                    model,
                    tests[s],
                    max_depth,
                    lambda e, axis, keep=~mask: np.mean(e[keep], axis=axis),
                )
                expansive[name][s] = (float(np.mean(mask)), curve)
        cost_rows.append(
            {
                "model": name,
                "params": model.count_params(),
                "train_depth": args.depth,
                "train_s": seconds,
            }
        )
    # Step times measured round-robin after all training (the machine is
    # shared: interleaving spreads any background load over every model).
    timings = {name: [] for name in models}
    for _ in range(3):
        for name, model in models.items():
            timings[name].append(
                harness.time_fit_steps(
                    model,
                    train_data["prompts"][: args.batch_size * 4],
                    train_data["targets"][: args.batch_size * 4],
                    batch_size=args.batch_size,
                    steps=20,
                )
            )
    for row in cost_rows:
        row["fit_step_ms"] = 1000 * min(timings[row["model"]])
    harness.ratio_table(cost_rows, key="model", value="fit_step_ms", peer=PEER)

    # 1. loss vs loops.
    loop_rows = []
    shown = sorted(
        set(range(1, min(10, args.max_loops) + 1))
        | set(range(5, args.max_loops + 1, 5))
    )
    for depth in shown:
        row = {"loops": depth}
        for name, _, _ in MODELS:
            for s in (0.0, small_shift):
                curve = curves[name][s]
                key = f"{name}" + ("" if s == 0 else f"@shift{s}")
                row[key] = (
                    float(curve[depth - 1]) if depth <= len(curve) else ""
                )
        loop_rows.append(row)
    monotone_rows = []
    for name, looped, restricted in MODELS:
        for s in args.shifts:
            curve = curves[name][s]
            median = medians[name][s]
            row = {
                "model": name,
                "shift": s,
                "depths": len(curve),
                "mean_monotone": bool(np.all(np.diff(curve) < 0)),
                "mean_best_depth": int(np.nanargmin(_nan_inf(curve))) + 1,
                f"mean@L={args.depth}": float(curve[args.depth - 1]),
                "mean@max": float(curve[-1]),
                "median_monotone": bool(np.all(np.diff(median) < 0)),
                f"median@L={args.depth}": float(median[args.depth - 1]),
                "median@max": float(median[-1]),
            }
            if looped and restricted:
                share, contractive = expansive[name][s]
                row["expansive_prompts"] = share
                row["contractive_mean_monotone"] = bool(
                    np.all(np.diff(contractive) < 0)
                )
                row["contractive_mean@max"] = float(contractive[-1])
            monotone_rows.append(row)

    # 2. loss vs shift at the training depth (and looped at max loops).
    shift_rows = []
    for s in args.shifts:
        row = {"shift": s, "eig_range": _range_text(args.kappa, s)}
        for name, looped, _ in MODELS:
            row[f"{name}@L"] = float(curves[name][s][args.depth - 1])
            if looped:
                row[f"{name}@{args.max_loops}"] = float(curves[name][s][-1])
        row["deep/looped (restricted, @L)"] = (
            row["deep_restricted@L"] / row["looped_restricted@L"]
        )
        row["deep/looped (unrestricted, @L)"] = (
            row["deep_unrestricted@L"] / row["looped_unrestricted@L"]
        )
        shift_rows.append(row)

    plot = _plot(args, curves, medians, small_shift)
    tables = {
        "Loss vs loops (normalised MSE; looped models beyond the training "
        f"depth L={args.depth}, deep models read after layer l)": loop_rows,
        "Monotonicity in depth (mean and median normalised squared error; "
        "expansive_prompts: share of prompts where the looped restricted "
        "layer's GD map I - A S has spectral radius > 1; contractive_*: "
        "the mean over the other prompts)": monotone_rows,
        "Loss vs distribution shift (spectrum widened by 1+s)": shift_rows,
        "Parameters and fit step time (ratio to looped_restricted)": (
            cost_rows
        ),
    }
    name = f"looped_icl_{keras.backend.backend()}" + (
        "_quick" if args.quick else ""
    )
    notes = (
        f"Plot: `{harness.repo_relative(plot)}`. Losses are "
        "E[(y_hat - y_q)^2] / E[y_q^2] on "
        f"{args.test_prompts} fresh prompts per shift; every model trained "
        f"{args.epochs} epochs on {args.train_prompts} prompts "
        "(Adam, 10% linear warm-up then cosine decay, clipnorm 1; peak "
        "learning rate "
        f"{args.learning_rate} restricted, "
        f"{args.unrestricted_learning_rate} unrestricted; weights of the "
        "epoch with the best validation loss restored). Step time: the "
        "best of 3 round-robin medians of 20 compiled fit steps."
    )
    text = harness.write_results(
        name,
        tables,
        meta={k: v for k, v in vars(args).items() if k not in ("quick",)}
        | {"quick": args.quick},
        notes=notes,
    )
    print(text)


def _nan_inf(curve):
    curve = np.asarray(curve, dtype=np.float64)
    return np.where(np.isfinite(curve), curve, np.inf)


def _range_text(kappa, shift):
    lo, hi = 1.0 / (kappa * (1 + shift)), 1.0 + shift
    return f"[{lo:.3g}, {hi:.3g}]"


def _plot(args, curves, medians, small_shift):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(16, 4.5))
    colors = dict(
        zip([m[0] for m in MODELS], ["C0", "C1", "C2", "C3"], strict=True)
    )
    for ax, data, what in ((ax0, curves, "mean"), (ax1, medians, "median")):
        for name, _, _ in MODELS:
            for s, style in ((0.0, "-"), (small_shift, "--")):
                curve = data[name][s]
                ax.semilogy(
                    np.arange(1, len(curve) + 1),
                    curve,
                    style,
                    color=colors[name],
                    marker="o" if len(curve) <= args.depth else None,
                    label=f"{name}" + ("" if s == 0 else f" (shift {s})"),
                )
        ax.axvline(args.depth, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("loops (looped) / layers read (deep)")
        ax.set_ylabel(f"{what} squared error / E[y^2]")
        ax.set_ylim(top=1e3)
        ax.set_title(
            f"{what}: d={args.dim}, n={args.num_context}, kappa={args.kappa}"
        )
        ax.legend(fontsize=6)
    for name, _, _ in MODELS:
        ax2.semilogy(
            args.shifts,
            [curves[name][s][args.depth - 1] for s in args.shifts],
            "o-",
            color=colors[name],
            label=f"{name} @ L={args.depth}",
        )
    ax2.set_xlabel("shift s (eigenvalues in [1/(kappa(1+s)), 1+s])")
    ax2.set_ylabel("normalised MSE")
    ax2.set_title("robustness to a widened spectrum")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    quick = "_quick" if args.quick else ""
    path = harness.result_path(
        f"looped_icl_{keras.backend.backend()}{quick}", ".png"
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
