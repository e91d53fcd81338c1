"""Part 4, scale: mean, median and worst step of OneSidedShampoo (before
issue 15, the defaults, the statistics interval, ...) against Keras Adam
and Muon on wide MLPs, in interleaved rounds of whole root periods."""

import os

import keras
import numpy as np

from benchmarks import harness
from benchmarks.shampoo.common import round_steps
from benchmarks.shampoo.common import speed_row
from benchmarks.shampoo.common import state_bytes
from benchmarks.shampoo.common import suffix
from keras_gr.optimizers import OneSidedShampoo


def scale_model(widths, seed=0):
    """An MLP `widths[0] -> ... -> widths[-1]` (tanh), one Dense per step."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((widths[0],))
    x = inputs
    for i, w in enumerate(widths[1:]):
        last = i == len(widths) - 2
        x = keras.layers.Dense(w, activation=None if last else "tanh")(x)
    return keras.Model(inputs, x)


SCALE_OPTIMIZERS = {
    "Adam": ("Adam", lambda: keras.optimizers.Adam(1e-3)),
    "Muon": ("Muon", lambda: keras.optimizers.Muon(1e-3)),
    # The behaviour before issue 15: sides above 2048 fall back to Adam,
    # eigh, every root on the same step, statistics every step.
    "before": (
        "before: unblocked (max_dim 2048), eigh, unstaggered",
        lambda: OneSidedShampoo(
            1e-3,
            precondition_frequency=10,
            max_preconditioner_dim=2048,
            blocking=False,
            stagger_roots=False,
            root_method="eigh",
        ),
    ),
    # Staggered per variable and eigh: the previous defaults (except
    # that staggering is now per block).
    "eigh": (
        "eigh: blocks 1024, block-staggered, statistics every step",
        lambda: OneSidedShampoo(
            1e-3, precondition_frequency=10, root_method="eigh"
        ),
    ),
    "defaults": (
        "defaults: blocks 1024, root_method='auto', block-staggered, "
        "stats every step",
        lambda: OneSidedShampoo(1e-3, precondition_frequency=10),
    ),
    "tuned": (
        "tuned: defaults + statistics_frequency=10",
        lambda: OneSidedShampoo(
            1e-3, precondition_frequency=10, statistics_frequency=10
        ),
    ),
    "tuned_newton": (
        "tuned_newton: tuned + root_method='newton'",
        lambda: OneSidedShampoo(
            1e-3,
            precondition_frequency=10,
            statistics_frequency=10,
            root_method="newton",
        ),
    ),
    "tuned_eigh": (
        "tuned_eigh: tuned + root_method='eigh'",
        lambda: OneSidedShampoo(
            1e-3,
            precondition_frequency=10,
            statistics_frequency=10,
            root_method="eigh",
        ),
    ),
    "f100": (
        "f100: defaults + precondition_frequency=statistics_frequency=100",
        lambda: OneSidedShampoo(
            1e-3, precondition_frequency=100, statistics_frequency=100
        ),
    ),
    "f100_newton": (
        "f100_newton: f100 + root_method='newton'",
        lambda: OneSidedShampoo(
            1e-3,
            precondition_frequency=100,
            statistics_frequency=100,
            root_method="newton",
        ),
    ),
    "f100_eigh": (
        "f100_eigh: f100 + root_method='eigh'",
        lambda: OneSidedShampoo(
            1e-3,
            precondition_frequency=100,
            statistics_frequency=100,
            root_method="eigh",
        ),
    ),
    # Blocks of 256: a quarter of the root work per kernel (m b^2), half
    # the statistics and root application (2 m b n), and under JAX on CPU
    # Newton roots (no OpenBLAS threads left spinning). A block-diagonal
    # factor is coarser than a 512 one; this part measures speed only.
    "tuned256": (
        "tuned256: tuned + max_preconditioner_dim=256",
        lambda: OneSidedShampoo(
            1e-3,
            precondition_frequency=10,
            statistics_frequency=10,
            max_preconditioner_dim=256,
        ),
    ),
    "tuned512": (
        "tuned512: tuned + max_preconditioner_dim=512",
        lambda: OneSidedShampoo(
            1e-3,
            precondition_frequency=10,
            statistics_frequency=10,
            max_preconditioner_dim=512,
        ),
    ),
}


def part_scale(args):
    """Width 1024-4096 MLP and the width-512 MLP of the issue: mean, median
    and worst step of OneSidedShampoo vs Adam and Muon, preconditioned
    fraction, before (no blocking, no stagger) and after."""
    wide = [int(w) for w in args.scale_widths.split(",")]
    cases = {
        "wide": dict(widths=wide, batch=args.scale_batch),
        "wide128": dict(widths=wide, batch=128),
        "mlp512": dict(widths=[512] * 5, batch=512),
    }
    rows_of = {
        "wide": args.scale_rows,
        "wide128": args.scale_rows_wide128,
        "mlp512": args.scale_rows_mlp512,
    }
    cases = {k: v for k, v in cases.items() if k in args.scale_cases.split(",")}
    rng = np.random.default_rng(0)
    tables, meta = {}, {}
    for case, spec in cases.items():
        widths, batch = spec["widths"], spec["batch"]
        models, opts = {}, {}
        for key in rows_of[case].split(","):
            name, make = SCALE_OPTIMIZERS[key]
            models[name] = scale_model(widths)
            opts[name] = make()
            models[name].compile(
                optimizer=opts[name], loss="mse", jit_compile=True
            )
        steps = round_steps(args.scale_steps, opts)
        n = batch * steps
        x = rng.normal(size=(n, widths[0])).astype("float32")
        y = rng.normal(size=(n, widths[-1])).astype("float32")
        entries = {name: (m, x, y, batch) for name, m in models.items()}
        times = harness.time_fit_interleaved(
            entries, rounds=args.scale_rounds, steps_per_round=steps
        )
        rows = []
        for name, t in times.items():
            opt = opts[name]
            fraction = 0.0
            if hasattr(opt, "preconditioning_summary"):
                fraction = opt.preconditioning_summary()[
                    "preconditioned_fraction"
                ]
            row = speed_row(name, t, {"Adam": times["Adam"]})
            row.update(
                preconditioned_fraction=fraction,
                state_bytes=state_bytes(opt),
            )
            rows.append(row)
            print(case, row, flush=True)
        params = int(
            sum(np.prod(w.shape) for w in models["Adam"].trainable_weights)
        )
        tables[f"{case}: widths {widths}, batch {batch}"] = rows
        meta[case] = {
            "widths": widths,
            "batch": batch,
            "params": params,
            "steps_per_round": steps,
        }
    meta.update(
        rounds=args.scale_rounds,
        # OpenBLAS (scipy's, which runs JAX's CPU `eigh`) keeps its idle
        # worker threads spinning for a while after a call unless told
        # otherwise; on a small CPU they then slow the next steps.
        openblas_env={
            k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")
        },
    )
    md = harness.write_results(
        f"shampoo_scale{suffix(args, args.scale_tag)}",
        tables,
        meta=meta,
        notes=(
            "Every model is compiled (jit_compile=True) and warmed up "
            "first (3 steps, including the first step, where every root "
            "is computed); then `rounds` rounds in which every model "
            "runs `steps_per_round` steps (one `fit`, a whole number of "
            "root periods of every row) in an order rotated every round. "
            "mean_s: total `fit` wall time / steps (what a user pays, "
            "root steps included); median_s / worst_s: median / maximum "
            "of the per-step times (a callback around each step); "
            "mean_vs_Adam and median_vs_Adam: ratios to Adam's in the "
            "same rounds; worst_vs_Adam_mean: worst step / Adam's mean "
            "step (the spike); round_means_vs_Adam: the mean-step ratio "
            "of each round. `before` = the behaviour before issue 15 (a "
            "factor only on sides <= 2048, eigh, all roots on the same "
            "step). Cost model per preconditioned m x n kernel in blocks "
            "of b: statistics 2 m b n per statistics update, root "
            "application 2 m b n per step, roots N b^3-ish per period "
            "(spread over it); Adam's "
            "forward + backward 6 m n B for B rows per step: the "
            "per-step ratio is about 1 + b (1 + 1/statistics_frequency) "
            "/ (3 B). CPU only (2 cores): ratios, not absolute times, are "
            "the result. `root_method='auto'` is eigh under JAX on CPU "
            "for blocks of 257 and larger, Newton for smaller blocks and "
            "elsewhere (so `tuned256` computes no eigh). JAX's CPU eigh "
            "runs in scipy's "
            "OpenBLAS, whose idle threads spin after each call and slow "
            "the following steps unless OPENBLAS_THREAD_TIMEOUT (or "
            "OPENBLAS_NUM_THREADS=1) is set: `openblas_env` records "
            "which was set for the run."
        ),
    )
    print(md)
