"""Benchmarks of OneSidedShampoo and the structured-preconditioner family.

Paper: "Structured Preconditioners in Adaptive Optimization: A Unified
Analysis" (Xie et al., arXiv:2503.10537).

Three parts (`--part regression|speed|quality|all`):

1. regression: the paper's problem `f(X) = 0.5 <H, (X - X*)(X - X*)^T>`,
   H = Q diag(i^-2) Q^T, every method run through the Keras optimizers with
   its learning rate tuned on a shared log grid; final loss, curves (PNG),
   optimizer-state bytes. (JAX: the steps run under `jax.jit`.)
2. speed: amortised step time of the local DEFAULT_CONFIG Gemma LM (jit
   `fit`) with OneSidedShampoo at precondition_frequency 1/10/100, as a
   ratio to keras Adam and keras Muon measured in the same run, plus state
   bytes.
3. quality: the same LM trained from a fresh initialisation for the same
   number of steps with each optimizer (learning rate tuned on seed 0 over
   a small grid), validation loss averaged over seeds.
4. scale (`--part scale`, not in `all`): an MLP 1024-3072-3072-1024
   (`--scale-widths`; the 3072 x 3072 kernel is above the old 2048 limit)
   at `--scale-batch` rows per step (default 2048: an LM step carries
   thousands of tokens) and at batch 128, and the 4-layer width-512 MLP
   (batch 512): mean step (wall time over whole root periods), median
   and worst step of OneSidedShampoo (before issue 15, the defaults, the
   statistics interval, root frequency 100, eigh, ...:
   `SCALE_OPTIMIZERS`) vs Keras Adam and Muon, interleaved, with the
   preconditioned fraction of the parameters. Issue 29's runs:
   `--scale-cases mlp512 --scale-rows-mlp512 Adam,tuned,... --scale-steps
   20 --scale-tag _mlp512` and `--scale-rows-mlp512 Adam,f100
   --scale-steps 100 --scale-tag _mlp512_f100`.

Run: `KERAS_BACKEND=jax .venv/bin/python -m benchmarks.shampoo [--quick]`.
"""

import argparse
import json
import math
import os
import time

import matplotlib
import numpy as np

matplotlib.use("Agg")

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

import keras_gr  # noqa: E402, F401
from benchmarks import harness  # noqa: E402
from keras_gr.optimizers import AdagradNorm  # noqa: E402
from keras_gr.optimizers import FullMatrixAdagrad  # noqa: E402
from keras_gr.optimizers import OneSidedShampoo  # noqa: E402
from keras_gr.optimizers import Shampoo  # noqa: E402

# ---------------------------------------------------------------------------
# 1. regression
# ---------------------------------------------------------------------------

THEORY = dict(beta1=0.0, beta2=1.0, grafting="none", precondition_frequency=1)

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
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    h = (q * np.arange(1, dim + 1, dtype="float64") ** -2.0) @ q.T
    x_star = rng.normal(size=(dim, dim))
    return h.astype("float32"), x_star.astype("float32")


def _state_bytes(opt):
    skip = {id(opt._iterations)}
    lr = getattr(opt, "_learning_rate", None)
    if isinstance(lr, keras.Variable):
        skip.add(id(lr))
    return harness.variables_bytes(
        [v for v in opt.variables if id(v) not in skip]
    )


def run_regression(opt, h, x_star, steps):
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
    losses = [float(v) for v in losses[:1]] + [float(v) for v in losses[1:]]
    return losses, _state_bytes(opt)


def part_regression(args):
    dim, steps = (6, 60) if args.quick else (args.dim, args.steps)
    h, x_star = regression_problem(dim)
    grid = np.logspace(-3, 1.5, 10 if args.quick else 19)
    rows, curves = [], {}
    for name, make in REGRESSION_METHODS.items():
        start = time.time()
        best = None
        for lr in grid:
            losses, nbytes = run_regression(make(float(lr)), h, x_star, steps)
            final = losses[-1] if np.isfinite(losses[-1]) else np.inf
            # Diverged runs (non-finite or above the start) lose.
            if not np.all(np.isfinite(losses)) or max(losses) > 1e3 * losses[0]:
                final = np.inf
            if best is None or final < best[0]:
                best = (final, lr, losses, nbytes)
        final, lr, losses, nbytes = best
        curves[name] = losses
        rows.append(
            {
                "method": name,
                "best_lr": float(lr),
                "final_loss": float(final),
                "loss_at_25%": float(losses[steps // 4]),
                "state_bytes": int(nbytes),
                "tuning_seconds": round(time.time() - start, 1),
            }
        )
        print(rows[-1], flush=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, losses in curves.items():
        ax.semilogy(np.maximum(np.asarray(losses), 1e-30), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("f(X) (best learning rate)")
    ax.set_title(f"{dim}x{dim} regression, H eigenvalues i^-2")
    ax.legend(fontsize=7)
    fig.tight_layout()
    suffix = f"_{keras.backend.backend()}" + ("_quick" if args.quick else "")
    fig.savefig(harness.result_path(f"shampoo_regression{suffix}", ".png"))
    meta = {
        "dim": dim,
        "steps": steps,
        "lr_grid": [float(v) for v in grid],
        "f0": curves["SGD"][0],
    }
    md = harness.write_results(
        f"shampoo_regression{suffix}",
        {"regression": rows},
        meta=meta,
        notes=(
            "Every method is the Keras optimizer itself (theory settings "
            "for the Shampoo family: no momentum, no grafting, beta2=1, "
            "roots every step). Loss floor for the plot: 1e-30."
        ),
    )
    print(md)


# ---------------------------------------------------------------------------
# 2 / 3. the local Gemma LM
# ---------------------------------------------------------------------------


def lm_data(causal_lm, seq_len, n_train, seed=0):
    from keras_gr.data.corpora import pydoc_corpus

    train_docs, val_docs = pydoc_corpus()
    tok = causal_lm.tokenizer

    def stream(docs):
        out = []
        for ids in tok(docs):
            ids = keras.ops.convert_to_numpy(ids).tolist()
            out.extend([2] + list(ids) + [1])
        return np.asarray(out, dtype="int32")

    train, val = stream(train_docs), stream(val_docs)
    rng = np.random.default_rng(seed)
    span = seq_len + 1
    starts = rng.integers(0, len(train) - span, size=n_train)
    win = np.stack([train[s : s + span] for s in starts])
    n_val = min(32, (len(val) - 1) // seq_len)
    idx = np.arange(n_val)[:, None] * seq_len + np.arange(span)[None, :]
    vwin = val[idx]

    def pack(w):
        x = {
            "token_ids": w[:, :-1],
            "padding_mask": np.ones_like(w[:, :-1], dtype="bool"),
        }
        return x, w[:, 1:]

    return pack(win), pack(vwin)


def load_lm(fresh_seed=None):
    import keras_hub

    from keras_gr.presets import DEFAULT_CONFIG
    from keras_gr.presets import build_local_preset

    folder = build_local_preset(**DEFAULT_CONFIG, verbose=0)
    lm = keras_hub.models.CausalLM.from_preset(folder)
    tokenizer = lm.preprocessor.tokenizer
    backbone = lm.backbone
    if fresh_seed is not None:
        keras.utils.set_random_seed(fresh_seed)
        backbone = backbone.__class__.from_config(backbone.get_config())
    # Token ids are fed directly (no preprocessor inside `fit`).
    lm = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    lm.tokenizer = tokenizer
    return lm, DEFAULT_CONFIG


SPEED_OPTIMIZERS = {
    "Adam": lambda: keras.optimizers.Adam(1e-3),
    "Muon": lambda: keras.optimizers.Muon(1e-3),
    "OneSidedShampoo f=1": lambda: OneSidedShampoo(
        1e-3, precondition_frequency=1
    ),
    "OneSidedShampoo f=10": lambda: OneSidedShampoo(
        1e-3, precondition_frequency=10
    ),
    "OneSidedShampoo f=100": lambda: OneSidedShampoo(
        1e-3, precondition_frequency=100
    ),
}


def _compile(lm, opt):
    lm.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )


def part_speed(args):
    config = None
    entries, optimizers = {}, {}
    for name, make in SPEED_OPTIMIZERS.items():
        # One model per optimizer (same preset weights), all compiled and
        # warmed up before any timing; then interleaved timed rounds.
        lm, config = load_lm()
        batch = config["batch_size"]
        if not entries:
            (x, y), _ = lm_data(
                lm, config["sequence_length"], batch * args.speed_steps
            )
        opt = make()
        _compile(lm, opt)
        entries[name] = (lm, x, y, batch)
        optimizers[name] = opt
    rounds = 3 if args.quick else args.speed_rounds
    times = harness.time_fit_interleaved(
        entries, rounds=rounds, steps_per_round=args.speed_steps
    )
    rows = []
    for name in entries:
        rows.append(
            {
                "optimizer": name,
                "step_seconds": times[name]["median"],
                "step_seconds_min": times[name]["min"],
                "state_bytes": _state_bytes(optimizers[name]),
            }
        )
        print(rows[-1], flush=True)
    for peer in ("Adam", "Muon"):
        ref = [r for r in rows if r["optimizer"] == peer][0]
        for r in rows:
            r[f"vs_{peer}"] = r["step_seconds"] / ref["step_seconds"]
            r[f"vs_{peer}_min"] = (
                r["step_seconds_min"] / ref["step_seconds_min"]
            )
    lm = entries["Adam"][0]
    n_params = int(sum(np.prod(w.shape) for w in lm.trainable_weights))
    suffix = f"_{keras.backend.backend()}" + ("_quick" if args.quick else "")
    md = harness.write_results(
        f"shampoo_speed{suffix}",
        {"step time": rows},
        meta={
            "params": n_params,
            "batch": config["batch_size"],
            "sequence_length": config["sequence_length"],
            "steps_per_round": args.speed_steps,
            "rounds": rounds,
        },
        notes=(
            "One model per optimizer, all compiled and warmed up (3 steps: "
            "compilation and the first root) before timing. Then `rounds` "
            "rounds; in each, every model runs one `fit` of "
            "`steps_per_round` steps, in an order rotated every round, so "
            "that drifts of this shared virtual machine hit all rows alike. "
            "step_seconds = median over rounds of (round wall time / "
            "steps); *_min = fastest round. With f=10 each round of "
            f"{args.speed_steps} steps includes its share of root "
            "recomputations; with f=100 and rounds shorter than 100 steps, "
            "some rounds contain none (amortised cost < 1/100 of f=1's)."
        ),
    )
    print(md)


# ---------------------------------------------------------------------------
# 4. scale: step time (median and worst step) at widths 1024-4096
# ---------------------------------------------------------------------------


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
        "defaults: blocks 1024, newton, block-staggered, stats every step",
        lambda: OneSidedShampoo(1e-3, precondition_frequency=10),
    ),
    "tuned": (
        "tuned: defaults + statistics_frequency=10",
        lambda: OneSidedShampoo(
            1e-3, precondition_frequency=10, statistics_frequency=10
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
    "f100_eigh": (
        "f100_eigh: f100 + root_method='eigh'",
        lambda: OneSidedShampoo(
            1e-3,
            precondition_frequency=100,
            statistics_frequency=100,
            root_method="eigh",
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


def _interleaved_step_times(entries, rounds, steps):
    """Per-step wall times of several compiled models, in rotated rounds.

    `entries`: name -> (model, x, y, batch). Every model is warmed up first
    (compilation, the all-roots first step and a few more steps); then in
    each round every model runs `steps` steps (one `fit`), timed step by
    step with a callback and as a whole. Returns `(steps, fits)`: name ->
    list of step seconds, and name -> list of the rounds' `fit` wall
    seconds.
    """

    class Timer(keras.callbacks.Callback):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.out.append(time.perf_counter() - self._t)

    names = list(entries)
    for name in names:
        model, x, y, batch = entries[name]
        model.fit(x[: 3 * batch], y[: 3 * batch], batch_size=batch, verbose=0)
    times = {name: [] for name in names}
    fits = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            model, x, y, batch = entries[name]
            start = time.perf_counter()
            model.fit(
                x[: steps * batch],
                y[: steps * batch],
                batch_size=batch,
                verbose=0,
                shuffle=False,
                callbacks=[Timer(times[name])],
            )
            fits[name].append(time.perf_counter() - start)
    return times, fits


def _round_steps(steps, opts):
    """The smallest multiple of `steps` that is a whole number of root
    periods of every optimizer (each round then covers whole periods)."""
    periods = [
        getattr(opt, "precondition_frequency", 1) for opt in opts.values()
    ]
    return math.lcm(steps, *periods)


def scale_row(name, steps, fits, n_steps, adam):
    """One table row: mean step (fit wall time / steps, over whole root
    periods), median and worst step (per-step callback), and ratios to
    Adam's mean step of the same interleaved rounds (`adam`: Adam's
    `(steps, fits)`)."""
    mean = float(np.sum(fits) / (len(fits) * n_steps))
    adam_mean = float(np.sum(adam[1]) / (len(adam[1]) * n_steps))
    return {
        "optimizer": name,
        "mean_s": mean,
        "median_s": float(np.median(steps)),
        "worst_s": float(np.max(steps)),
        "mean_vs_Adam": mean / adam_mean,
        "median_vs_Adam": float(np.median(steps) / np.median(adam[0])),
        "worst_vs_Adam_mean": float(np.max(steps)) / adam_mean,
        "round_means_vs_Adam": [float(f / a) for f, a in zip(fits, adam[1])],
    }


def part_scale(args):
    """Width 1024-4096 MLP and the width-512 MLP of the issue: mean, median
    and worst step of OneSidedShampoo vs Adam and Muon, preconditioned
    fraction, before (no blocking, no stagger) and after."""
    backend = keras.backend.backend()
    suffix = f"_{backend}" + ("_quick" if args.quick else "") + args.scale_tag
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
        entries, opts = {}, {}
        for key in rows_of[case].split(","):
            name, make = SCALE_OPTIMIZERS[key]
            model = scale_model(widths)
            opt = make()
            model.compile(optimizer=opt, loss="mse", jit_compile=True)
            entries[name] = (model, None, None, batch)
            opts[name] = opt
        steps = _round_steps(args.scale_steps, opts)
        n = batch * steps
        x = rng.normal(size=(n, widths[0])).astype("float32")
        y = rng.normal(size=(n, widths[-1])).astype("float32")
        entries = {name: (e[0], x, y, batch) for name, e in entries.items()}
        times, fits = _interleaved_step_times(entries, args.scale_rounds, steps)
        adam = (times["Adam"], fits["Adam"])
        rows = []
        for name, t in times.items():
            opt = opts[name]
            fraction = 0.0
            if hasattr(opt, "preconditioning_summary"):
                fraction = opt.preconditioning_summary()[
                    "preconditioned_fraction"
                ]
            row = scale_row(name, t, fits[name], steps, adam)
            row.update(
                preconditioned_fraction=fraction,
                state_bytes=_state_bytes(opt),
            )
            rows.append(row)
            print(case, row, flush=True)
        params = int(
            sum(np.prod(w.shape) for w in entries["Adam"][0].trainable_weights)
        )
        tables[f"{case}: widths {widths}, batch {batch}"] = rows
        meta[case] = {
            "widths": widths,
            "batch": batch,
            "params": params,
            "steps_per_round": steps,
        }
    meta.update(rounds=args.scale_rounds)
    md = harness.write_results(
        f"shampoo_scale{suffix}",
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
            "/ (3 B). CPU only, on a 2-core machine shared with other "
            "jobs: ratios, not absolute times, are the result."
        ),
    )
    print(md)


QUALITY_GRID = {
    "Adam": (lambda lr: keras.optimizers.Adam(lr), [1e-3, 3e-3, 1e-2]),
    "Muon": (
        lambda lr: keras.optimizers.Muon(lr),
        [1e-3, 3e-3, 1e-2, 3e-2],
    ),
    # Since issue 15: bias-corrected statistics, blocks of 1024,
    # block-staggered Newton roots. The runs cached under the name
    # "OneSidedShampoo" in `shampoo_quality_runs_jax.json` are from
    # before issue 15 (no bias correction, eigh, roots on one step).
    # Grid: only 1e-2, the best peak lr of the pre-issue-15
    # OneSidedShampoo over 1e-3 ... 3e-2 (a run takes ~10 minutes on the
    # shared 2-core CPU; `--lrs` widens every row's grid).
    # The defaults: rank > 2 kernels (the Gemma attention kernels) viewed
    # as one matrix (`flatten_tensors=True`).
    "OneSidedShampoo (defaults)": (
        lambda lr: OneSidedShampoo(lr, precondition_frequency=10),
        [1e-2],
    ),
    # Rank > 2 kernels preconditioned per axis; this and the rows below
    # were measured per axis.
    "OneSidedShampoo per-axis": (
        lambda lr: OneSidedShampoo(
            lr, precondition_frequency=10, flatten_tensors=False
        ),
        [1e-2],
    ),
    "OneSidedShampoo eigh": (
        lambda lr: OneSidedShampoo(
            lr,
            precondition_frequency=10,
            root_method="eigh",
            flatten_tensors=False,
        ),
        [1e-2],
    ),
    "OneSidedShampoo statistics_frequency=10": (
        lambda lr: OneSidedShampoo(
            lr,
            precondition_frequency=10,
            statistics_frequency=10,
            flatten_tensors=False,
        ),
        [1e-2],
    ),
}


def schedule(peak, steps):
    """The same schedule for every optimizer: linear warm-up over the first
    10% of the steps to `peak`, then cosine decay to `0.1 * peak`."""
    warmup = max(1, steps // 10)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=steps - warmup,
        alpha=0.1,
        warmup_target=peak,
        warmup_steps=warmup,
    )


def cached_train_eval(name, make, lr, seed, steps, batch, seq_len, checkpoints):
    """`train_eval`, memoised in `results/shampoo_quality_runs_<backend>.json`
    (every finished run's validation curve), so that widening a learning-rate
    grid or adding seeds re-runs only what is new."""
    path = harness.result_path(
        f"shampoo_quality_runs_{keras.backend.backend()}", ".json"
    )
    runs = {}
    if os.path.exists(path):
        with open(path) as f:
            runs = json.load(f)
    key = f"{name}|lr={lr:g}|seed={seed}|steps={steps}|batch={batch}|"
    key += f"seq={seq_len}|checkpoints={','.join(map(str, checkpoints))}"
    if key not in runs:
        curve = train_eval(make, lr, seed, steps, batch, seq_len, checkpoints)
        if os.path.exists(path):  # another process may have added runs
            with open(path) as f:
                runs = json.load(f)
        runs[key] = curve
        with open(path, "w") as f:
            json.dump(runs, f, indent=1)
    return runs[key]


def train_eval(make, lr, seed, steps, batch, seq_len, checkpoints):
    lm, _ = load_lm(fresh_seed=seed)
    (x, y), (vx, vy) = lm_data(lm, seq_len, batch * steps, seed=seed)
    _compile(lm, make(schedule(lr, steps)))
    curve = []
    done = 0
    for c in checkpoints:
        sl = slice(done * batch, c * batch)
        lm.fit(
            {k: v[sl] for k, v in x.items()}, y[sl], batch_size=batch, verbose=0
        )
        done = c
        res = lm.evaluate(vx, vy, batch_size=batch, verbose=0, return_dict=True)
        curve.append(float(res["loss"]))
    return curve


def part_quality(args):
    from keras_gr.presets import DEFAULT_CONFIG

    steps = 30 if args.quick else args.quality_steps
    seeds = [0, 1] if args.quick else list(range(args.seeds))
    batch = DEFAULT_CONFIG["batch_size"]
    seq_len = args.quality_sequence_length
    n_points = args.checkpoints
    checkpoints = sorted(
        {max(1, steps * k // n_points) for k in range(1, n_points + 1)}
    )
    rows, curves, tuning = [], {}, []
    for name in args.quality_optimizers.split(","):
        make, grid = QUALITY_GRID[name]
        if args.lrs:
            grid = [float(v) for v in args.lrs.split(",")]
        tuned = {}
        for lr in grid:
            tuned[lr] = cached_train_eval(
                name, make, lr, seeds[0], steps, batch, seq_len, checkpoints
            )
            print(name, lr, tuned[lr][-1], flush=True)
            tuning.append(
                {"optimizer": name, "peak_lr": lr, "val_loss": tuned[lr][-1]}
            )
        best_lr = min(grid, key=lambda lr: tuned[lr][-1])
        runs = [tuned[best_lr]] + [
            cached_train_eval(
                name, make, best_lr, s, steps, batch, seq_len, checkpoints
            )
            for s in seeds[1:]
        ]
        mean_curve = np.mean(np.asarray(runs), axis=0)
        curves[name] = mean_curve
        mean, std = harness.mean_std([r[-1] for r in runs])
        rows.append(
            {
                "optimizer": name,
                "best_lr": best_lr,
                "lr_at_grid_edge": best_lr in (min(grid), max(grid)),
                "val_loss_mean": mean,
                "val_loss_std": std,
                "seeds": len(runs),
            }
        )
        print(rows[-1], flush=True)
    adam_final = curves["Adam"][-1]
    for r in rows:
        c = curves[r["optimizer"]]
        hit = [k for k, v in zip(checkpoints, c) if v <= adam_final]
        r["steps_to_Adam_final"] = hit[0] if hit else "not reached"
        r["fraction_of_steps"] = hit[0] / steps if hit else "-"
    suffix = f"_{keras.backend.backend()}" + ("_quick" if args.quick else "")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves.items():
        ax.plot(checkpoints, c, marker="o", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (mean over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(
        harness.result_path(
            f"shampoo_quality{suffix}{args.quality_tag}", ".png"
        )
    )
    md = harness.write_results(
        f"shampoo_quality{suffix}{args.quality_tag}",
        {
            "validation loss (mean over seeds, best peak lr)": rows,
            "peak learning-rate tuning (seed 0)": tuning,
        },
        meta={
            "steps": steps,
            "seeds": seeds,
            "batch": batch,
            "sequence_length": seq_len,
            "checkpoints": checkpoints,
            "lr_grid": args.lrs
            or {
                k: v[1]
                for k, v in QUALITY_GRID.items()
                if k in args.quality_optimizers.split(",")
            },
        },
        notes=(
            "The DEFAULT_CONFIG Gemma re-initialised from its config (not "
            "the pretrained preset weights), trained from scratch. "
            "Every optimizer uses the same schedule (linear warm-up over "
            "10% of the steps to the peak lr, cosine decay to 0.1x). "
            "Peak learning rate tuned on seed 0; steps_to_Adam_final is the "
            "first validation checkpoint at or below Adam's final mean "
            "validation loss."
        ),
    )
    print(md)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--part",
        default="all",
        choices=["all", "regression", "speed", "quality", "scale"],
    )
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--speed-steps", type=int, default=20)
    parser.add_argument("--speed-rounds", type=int, default=6)
    parser.add_argument("--quality-steps", type=int, default=200)
    parser.add_argument(
        "--quality-sequence-length",
        type=int,
        default=64,
        help="training windows of the quality part (the preset's own "
        "sequence length is 128; 64 halves the cost on a 2-core CPU)",
    )
    parser.add_argument("--scale-steps", type=int, default=10)
    parser.add_argument("--scale-rounds", type=int, default=3)
    parser.add_argument(
        "--scale-batch",
        type=int,
        default=2048,
        help="rows per step of the wide case (an LM step carries thousands "
        "of tokens; the wide128 case keeps batch 128)",
    )
    parser.add_argument("--scale-widths", default="1024,3072,3072,1024")
    parser.add_argument(
        "--scale-cases",
        default="wide,wide128,mlp512",
        help="comma-separated cases of the scale part: wide (batch "
        "--scale-batch), wide128, mlp512",
    )
    parser.add_argument(
        "--scale-rows",
        default="Adam,before,defaults,tuned",
        help="rows of the wide case (keys of SCALE_OPTIMIZERS; Muon is "
        "~1 TFLOP per step there, too slow for a 2-core CPU)",
    )
    parser.add_argument("--scale-rows-wide128", default="Adam,defaults,tuned")
    parser.add_argument(
        "--scale-rows-mlp512",
        default="Adam,Muon,before,eigh,defaults,tuned",
    )
    parser.add_argument(
        "--scale-tag",
        default="",
        help="suffix of the scale result files (e.g. _mlp512)",
    )
    parser.add_argument(
        "--quality-tag",
        default="",
        help="suffix of the quality result files (e.g. _issue15)",
    )
    parser.add_argument(
        "--quality-optimizers",
        default=",".join(QUALITY_GRID),
        help="comma-separated rows of the quality part",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument(
        "--lrs", default="", help="comma-separated grid for every optimizer"
    )
    args = parser.parse_args()
    parts = (
        ["regression", "speed", "quality"]
        if args.part == "all"
        else [args.part]
    )
    if "regression" in parts and keras.backend.backend() != "jax":
        print("regression part runs on JAX only; skipped")
        parts.remove("regression")
    for part in parts:
        globals()[f"part_{part}"](args)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
