"""LAuReL benchmark (arXiv 2411.07501) at CPU scale.

Two experiments, every row trained with the same data and token budget:

1. The shape of the paper's LM table: a small pre-norm decoder LM (char
   level, on Python's pydoc topics), rows baseline-N, baseline-(N+1), RW,
   LR, PA, RW+LR, RW+LR+PA; validation loss mean +- std over seeds,
   parameters added (%), median step time ratio to baseline-N, train-state
   memory (parameters + Adam state) and the process peak RSS.
2. A ResNet-style conv net on scikit-learn's digits: baseline / +1 block /
   RW / RW+LR; test accuracy mean +- std, parameters added, step time ratio.

Run: `KERAS_BACKEND=jax python -m benchmarks.laurel [--quick]`.
"""

import argparse
import time

import keras
import numpy as np

from benchmarks import harness
from keras_gr.data.corpora import pydoc_corpus
from keras_gr.layers import LaurelStack

LM_ROWS = [
    ("baseline-N", None, 0),
    ("baseline-(N+1)", None, 1),
    ("RW", "rw", 0),
    ("LR", "lr", 0),
    ("PA", "pa", 0),
    ("RW+LR", "rw_lr", 0),
    ("RW+LR+PA", "rw_lr_pa", 0),
]
DIGITS_ROWS = [
    ("baseline", None, 0),
    ("+1 block", None, 1),
    ("RW", "rw", 0),
    ("RW+LR", "rw_lr", 0),
]


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def char_data(seq_len):
    train, val = pydoc_corpus()
    train_text, val_text = "\n\n".join(train), "\n\n".join(val)
    chars = sorted(set(train_text))
    index = {c: i + 1 for i, c in enumerate(chars)}  # 0 = unknown

    def encode(text):
        ids = np.array([index.get(c, 0) for c in text], "int32")
        n = (len(ids) - 1) // seq_len
        x = ids[: n * seq_len].reshape(n, seq_len)
        y = ids[1 : n * seq_len + 1].reshape(n, seq_len)
        return x, y

    return encode(train_text), encode(val_text), len(chars) + 1


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------


def decoder_lm(vocab, seq_len, dim, layers, heads, variant, rank, k):
    """Pre-norm decoder; each block has two residual joins (attention, MLP),
    both `Add` (baseline) or `Laurel` joins from one `LaurelStack` (so PA
    mixes the inputs of the previous joins of the stack)."""
    stack = None
    if variant is not None:
        stack = LaurelStack(variant=variant, rank=rank, num_activations=k)

    def join(x, fx):
        if stack is None:
            return keras.layers.Add()([x, fx])
        return stack.join(x, fx)

    tokens = keras.Input((seq_len,), dtype="int32")
    x = keras.layers.Embedding(vocab, dim)(tokens)
    positions = keras.ops.arange(seq_len)
    x = x + keras.layers.Embedding(seq_len, dim)(positions)
    for _ in range(layers):
        h = keras.layers.LayerNormalization()(x)
        h = keras.layers.MultiHeadAttention(heads, dim // heads)(
            h, h, use_causal_mask=True
        )
        x = join(x, h)
        h = keras.layers.LayerNormalization()(x)
        h = keras.layers.Dense(4 * dim, activation="gelu")(h)
        h = keras.layers.Dense(dim)(h)
        x = join(x, h)
    x = keras.layers.LayerNormalization()(x)
    logits = keras.layers.Dense(vocab)(x)
    return keras.Model(tokens, logits)


def digits_resnet(blocks, channels, variant, rank):
    stack = None
    if variant is not None:
        stack = LaurelStack(
            variant=variant, rank=rank, low_rank_initializer="glorot_uniform"
        )
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu")(
        inputs
    )
    for _ in range(blocks):
        h = keras.layers.Conv2D(channels, 3, padding="same")(x)
        h = keras.layers.BatchNormalization(momentum=0.9)(h)
        h = keras.layers.Activation("relu")(h)
        h = keras.layers.Conv2D(channels, 3, padding="same")(h)
        h = keras.layers.BatchNormalization(momentum=0.9)(h)
        if stack is None:
            x = keras.layers.Add()([x, h])
        else:
            x = stack.join(x, h)
        x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def train(model, x, y, xv, yv, *, steps, batch, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=steps * batch)
    timer = StepTimer()
    model.fit(
        x[idx],
        y[idx],
        batch_size=batch,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[timer],
    )
    result = model.evaluate(xv, yv, batch_size=256, verbose=0)
    return result, float(np.median(timer.times[3:]))


def run_rows(rows, build, data, seeds, train_kwargs, lr, metric=None):
    """Trains every row for every seed. Each row's model is compiled once;
    a new seed re-initialises its weights (from a fresh build under that
    seed) and the optimizer state, so the jit-compiled step is reused."""
    x, y, xv, yv = data
    out = []
    base_params = None
    for name, variant, extra in rows:
        keras.utils.set_random_seed(seeds[0])
        model = build(variant, extra)
        model.compile(
            optimizer=keras.optimizers.AdamW(lr, weight_decay=0.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[metric] if metric else None,
            jit_compile=True,
        )
        model.optimizer.build(model.trainable_variables)
        opt_init = [np.array(v) for v in model.optimizer.variables]
        params = model.count_params()
        state = harness.variables_bytes(
            model.trainable_weights + model.optimizer.variables
        )
        values, steps = [], []
        for seed in seeds:
            keras.utils.set_random_seed(seed)
            model.set_weights(build(variant, extra).get_weights())
            for v, init in zip(model.optimizer.variables, opt_init):
                v.assign(init)
            result, step = train(model, x, y, xv, yv, seed=seed, **train_kwargs)
            values.append(result)
            steps.append(step)
            print(f"  {name} seed {seed}: {result} ({step * 1e3:.1f} ms/step)")
        if base_params is None:
            base_params = params
        out.append(
            {
                "row": name,
                "values": values,
                "params": params,
                "params_added_pct": 100.0
                * (params - base_params)
                / base_params,
                "step_ms": 1e3 * float(np.median(steps)),
                "train_state_mib": state / 2**20,
                "peak_rss_mib": harness.peak_rss_mib(),
            }
        )
    harness.ratio_table(out, key="row", value="step_ms", peer=rows[0][0])
    return out


def lm_experiment(args):
    (x, y), (xv, yv), vocab = char_data(args.seq_len)
    print(f"LM: vocab {vocab}, {len(x)} train / {len(xv)} val sequences")

    def build(variant, extra):
        return decoder_lm(
            vocab,
            args.seq_len,
            args.dim,
            args.layers + extra,
            args.heads,
            variant,
            args.rank,
            args.k,
        )

    rows = run_rows(
        LM_ROWS,
        build,
        (x, y, xv, yv),
        args.seeds,
        dict(steps=args.steps, batch=args.batch),
        args.lr,
    )
    table = []
    for r in rows:
        mean, std = harness.mean_std(r["values"])
        table.append(
            {
                "model": r["row"],
                "val loss": f"{mean:.4f} +- {std:.4f}",
                "params": r["params"],
                "params added %": f"{r['params_added_pct']:.2f}",
                "step ms": f"{r['step_ms']:.1f}",
                "step time ratio": f"{r['step_ms_ratio']:.3f}",
                "train state MiB": f"{r['train_state_mib']:.2f}",
                "peak RSS MiB": f"{r['peak_rss_mib']:.0f}",
            }
        )
    return rows, table


def digits_experiment(args):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    labels = digits.target.astype("int32")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    test, tr = order[:360], order[360:]
    data = (images[tr], labels[tr], images[test], labels[test])

    def build(variant, extra):
        return digits_resnet(
            args.digit_blocks + extra, args.channels, variant, args.digit_rank
        )

    rows = run_rows(
        DIGITS_ROWS,
        build,
        data,
        args.seeds,
        dict(steps=args.digit_steps, batch=32),
        3e-3,
        metric="accuracy",
    )
    table = []
    for r in rows:
        losses = [v[0] for v in r["values"]]
        accs = [100.0 * v[1] for v in r["values"]]
        (lm, ls), (am, as_) = harness.mean_std(losses), harness.mean_std(accs)
        table.append(
            {
                "model": r["row"],
                "test acc %": f"{am:.2f} +- {as_:.2f}",
                "test loss": f"{lm:.4f} +- {ls:.4f}",
                "params": r["params"],
                "params added %": f"{r['params_added_pct']:.3f}",
                "step time ratio": f"{r['step_ms_ratio']:.3f}",
            }
        )
    return rows, table


def plot(lm_rows, digit_rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if lm_rows:
        _bars_lm(axes[0], lm_rows)
    if digit_rows:
        _bars_digits(axes[1], digit_rows)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _bars_lm(ax, lm_rows):
    names = [r["row"] for r in lm_rows]
    stats = [harness.mean_std(r["values"]) for r in lm_rows]
    ax.bar(
        names,
        [s[0] for s in stats],
        yerr=[s[1] for s in stats],
        capsize=4,
        color=["gray", "gray"] + ["tab:blue"] * (len(names) - 2),
    )
    low = min(s[0] - s[1] for s in stats)
    high = max(s[0] + s[1] for s in stats)
    ax.set_ylim(low - 0.2 * (high - low), high + 0.2 * (high - low))
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("decoder LM, pydoc text")
    ax.tick_params(axis="x", rotation=30)


def _bars_digits(ax, digit_rows):
    names = [r["row"] for r in digit_rows]
    accs = [
        harness.mean_std([100 * v[1] for v in r["values"]]) for r in digit_rows
    ]
    ax.bar(
        names,
        [a[0] for a in accs],
        yerr=[a[1] for a in accs],
        capsize=4,
        color=["gray", "gray"] + ["tab:blue"] * (len(names) - 2),
    )
    low = min(a[0] - a[1] for a in accs)
    ax.set_ylim(max(0.0, low - 3), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("ResNet-style conv net, digits")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only", choices=["lm", "digits"], default=None, help="one part"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--digit-blocks", type=int, default=3)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--digit-rank", type=int, default=4)
    parser.add_argument("--digit-steps", type=int, default=300)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:2]
        args.steps, args.dim, args.layers = 20, 64, 2
        args.digit_steps, args.digit_blocks, args.channels = 40, 2, 16
    start = time.time()
    tables, lm_rows, digit_rows = {}, [], []
    if args.only != "digits":
        lm_rows, tables["LM (pydoc, char level)"] = lm_experiment(args)
    if args.only != "lm":
        digit_rows, tables["digits ResNet"] = digits_experiment(args)
    backend = keras.backend.backend()
    name = f"laurel_{backend}" + ("_quick" if args.quick else "")
    name += f"_{args.only}" if args.only else ""
    plot(lm_rows, digit_rows, harness.result_path(name, ".png"))
    tokens = args.steps * args.batch * args.seq_len
    notes = (
        f"Same token budget for every LM row: {args.steps} steps x "
        f"{args.batch} x {args.seq_len} = {tokens} tokens (far below the "
        "paper's scale; differences of a few 0.01 nats are within seed "
        "noise here). Step time: median fit step (jit) of each row's runs, "
        "ratio to the first row, same process. Train state = parameters + "
        "AdamW state. Peak RSS is the process high-water mark after each row "
        "(monotone; not a per-row measure). "
        f"Total wall time {time.time() - start:.0f} s."
    )
    md = harness.write_results(
        name,
        tables,
        meta={
            "seeds": args.seeds,
            "lm_steps": args.steps,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "dim": args.dim,
            "N": args.layers,
            "rank": args.rank,
            "k": args.k,
            "digit_steps": args.digit_steps,
            "digit_blocks": args.digit_blocks,
            "channels": args.channels,
        },
        notes=notes,
    )
    print(md)


if __name__ == "__main__":
    main()
