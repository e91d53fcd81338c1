"""Looped transformers on reasoning tasks (p-hop induction, n-ary addition).

Tests, scaled down to a CPU budget, the claim of "Reasoning with Latent
Thoughts: On the Power of Looped Transformers" (Saunshi et al., ICLR 2025,
arXiv 2502.17416): a looped model `k (x) L` nearly matches the iso-FLOP
deep model `kL (x) 1` and clearly beats the iso-parameter `k (x) 1`. Also
trains the looping-regularised `kL (x) 1` (its block cosine is reported),
tests addition at operand counts beyond the training ones, runs the
keras_gr looped RoPE Gemma (`keras_gr.hub.LoopedGemmaBackbone`, tiny config,
no download) beside the benchmark's own model, and records step time and
parameters of every model in the same run. Every accuracy is the mean +-
standard deviation over seeds (initialisation and batch order; the data
sets are fixed); the verdicts are the one rule's (`benchmarks/claims.py`,
paired over seeds), the paired differences behind them end each results
file.

    KERAS_BACKEND=jax .venv/bin/python -m benchmarks.looped_reasoning [--quick]
    KERAS_BACKEND=jax .venv/bin/python -m benchmarks.looped_reasoning \
        --tasks compile      # program size / compile time vs loops

Models: "own" is token + learned position embedding, pre-norm keras-hub
`TransformerDecoder` layers (causal, no cross-attention) wrapped in
`keras_gr.layers.LoopedBlock`, final LayerNorm, untied output projection.
"gemma" is `LoopedGemmaBackbone` (RoPE, RMS norm, gated FFN, tied
embeddings; no prelude / coda layers, so `k x L` is the plain looped block)
with the tied embedding as output projection. The loss and the exact-match
accuracy count only the answer tokens. For p-hop, training supervises the
answer of every prefix of each sequence by default
(`keras_gr.data.p_hop_prefix_targets`; `--sparse` for the paper's
one-answer format, which did not learn at all in 400 CPU steps); test
accuracy is on each sequence's own problem. Addition trains on a mixture of
operand counts and tests every count separately, including counts longer
than any training sequence (the own model's learned positions past the
training length are then untrained; RoPE has no such positions).
(The paper uses RoPE and Adafactor for 200k steps; here Adam with warmup +
cosine decay and a few thousand steps.)
"""

import argparse
import time

import keras
import keras_hub
import numpy as np

from benchmarks import harness
from benchmarks import stats
from keras_gr.data import ADDITION_VOCAB_SIZE
from keras_gr.data import addition_examples
from keras_gr.data import exact_match
from keras_gr.data import lm_arrays
from keras_gr.data import p_hop_examples
from keras_gr.data import p_hop_prefix_targets
from keras_gr.data import p_hop_vocab_size
from keras_gr.hub import LoopedGemmaBackbone
from keras_gr.layers import LoopedBlock
from keras_gr.regularizers import LoopingRegularizer

COMPILE_REPEATS = 3  # full compiles timed per program (a claim needs >= 3)
PAPER_P_HOP = {  # accuracy (%) at p = 16 / 32, n = 256, alphabet 4
    "1x1": "48.9 / 49.0",
    "1x6": "99.9 / 99.5",
    "6x1": "99.9 / 99.6",
    "2x1": "68.8 / 59.4",
    "2x3": "99.9 / 99.8",
}
PAPER_ADDITION = {  # accuracy (%) at n = 8 / 16 / 24 / 32
    "1x1": "~0",
    "1x12": "99.9 / 100 / 99.9 / 99.6",
    "12x1": "100 / 100 / 100 / 100",
    "2x1": "85.8 / 71.5 / 49.3 / 38.8",
    "2x6": "100 / 99.8 / 99.7 / 99.5",
    "3x1": "97.2 / 78.5 / 69.2 / 60.7",
}


# Default settings of the full run (calibrated to a shared 2-core CPU).
WIDTH = 64
BATCH_SIZE = 32
P_HOP_P = 4
P_HOP_N = 32
P_HOP_STEPS = 1200
ADDITION_TRAIN_N = "2,3"
ADDITION_TEST_N = "2,3,4,5"
ADDITION_STEPS = 2000
GEMMA_TASKS = "addition"
REG_TASKS = "p_hop"


def build_own_model(vocab_size, seq_len, width, heads, k, loops):
    inputs = keras.Input((seq_len,), dtype="int32")
    x = keras_hub.layers.TokenAndPositionEmbedding(vocab_size, seq_len, width)(
        inputs
    )
    block = [
        keras_hub.layers.TransformerDecoder(
            intermediate_dim=4 * width,
            num_heads=heads,
            normalize_first=True,
        )
        for _ in range(k)
    ]
    looped = LoopedBlock(block, num_loops=loops, name="looped")
    x = looped(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    logits = keras.layers.Dense(vocab_size)(x)
    return keras.Model(inputs, logits), looped.block_layers


def build_gemma_model(vocab_size, seq_len, width, heads, k, loops):
    """`LoopedGemmaBackbone` (`k` looped layers, `loops` loops, no prelude
    or coda) with its tied embedding as the output projection. The gated
    FFN's hidden width is 8 * width / 3, so a layer has about the
    parameters of the own model's layer (FFN 4 * width, not gated)."""
    backbone = LoopedGemmaBackbone(
        vocabulary_size=vocab_size,
        num_query_heads=heads,
        num_key_value_heads=heads,
        hidden_dim=width,
        intermediate_dim=2 * (8 * width // 3),
        head_dim=width // heads,
        num_prelude_layers=0,
        num_looped_layers=k,
        num_loops=loops,
        num_coda_layers=0,
    )
    token_ids = keras.Input((seq_len,), dtype="int32")
    padding_mask = keras.ops.ones_like(token_ids)
    hidden = backbone({"token_ids": token_ids, "padding_mask": padding_mask})
    logits = backbone.token_embedding(hidden, reverse=True)
    return keras.Model(token_ids, logits), backbone.transformer_layers


def build_model(arch, vocab_size, seq_len, width, heads, k, loops, seed):
    """The model of one row and its distinct layers (for the regulariser).
    `arch` is `"own"` or `"gemma"`."""
    keras.utils.set_random_seed(seed)
    build = build_gemma_model if arch == "gemma" else build_own_model
    return build(vocab_size, seq_len, width, heads, k, loops)


def pad_to(array, length):
    out = np.zeros((array.shape[0], length), dtype=array.dtype)
    out[:, : array.shape[1]] = array
    return out


def addition_label(n, train_n):
    return f"n={n}" + ("" if n in train_n else " (longer)")


def task_data(task, cfg):
    if task == "p_hop":
        vocab = p_hop_vocab_size(4)
        train = p_hop_examples(
            cfg["train_examples"], cfg["p"], cfg["n"], seed=0
        )
        test = p_hop_examples(cfg["test_examples"], cfg["p"], cfg["n"], seed=1)
        if not cfg["dense"]:
            tests = {
                f"p={cfg['p']}": lm_arrays(test["tokens"], test["answer_mask"])
            }
            return (
                vocab,
                lm_arrays(train["tokens"], train["answer_mask"]),
                tests,
            )

        def dense(data, last_only):
            targets, valid = p_hop_prefix_targets(data["sequences"], cfg["p"])
            weight = valid.astype("float32")
            if last_only:  # the sequence's own problem only
                weight[:, :-1] = 0.0
            return data["sequences"] + 1, targets + 1, weight

        tests = {
            f"p={cfg['p']}": dense(test, True),
            "all prefixes": dense(test, False),
        }
        return vocab, dense(train, False), tests
    train = addition_examples(
        cfg["train_examples"], cfg["train_n"], cfg["digits"], seed=0
    )
    # One sequence length for training and every test length: the longest
    # test problem's (training rows are right-padded with token 0).
    tests = {}
    for n in cfg["test_n"]:
        t = addition_examples(cfg["test_examples"], n, cfg["digits"], 100 + n)
        tests[addition_label(n, cfg["train_n"])] = t
    length = max(
        [train["tokens"].shape[1]]
        + [t["tokens"].shape[1] for t in tests.values()]
    )
    tests = {
        label: lm_arrays(
            pad_to(t["tokens"], length), pad_to(t["answer_mask"], length)
        )
        for label, t in tests.items()
    }
    return (
        ADDITION_VOCAB_SIZE,
        lm_arrays(
            pad_to(train["tokens"], length),
            pad_to(train["answer_mask"], length),
        ),
        tests,
    )


def compiled_model(arch, k, loops, regularized, vocab, seq_len, cfg, seed):
    """The model of one row, compiled with the benchmark's optimizer (and
    the looping regulariser attached when `regularized`)."""
    model, layers = build_model(
        arch, vocab, seq_len, cfg["width"], cfg["heads"], k, loops, seed
    )
    reg = None
    if regularized:
        reg = LoopingRegularizer(
            layers,
            block_size=cfg["reg_block"],
            strength=cfg["reg_strength"],
        ).attach()
    # Keras' schedule lasts warmup_steps + decay_steps: together `steps`,
    # the number of optimizer steps `train_and_eval` takes.
    schedule = harness.warmup_cosine(cfg["lr"], cfg["steps"])
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    return model, reg


def batch_order(rows, steps, batch, seed):
    """Row indices of exactly `steps` batches of `batch` rows: the training
    set in a fresh seed-determined random order per pass, passes
    concatenated and cut at `steps * batch` rows (fed to one `fit` epoch
    without shuffling, so the optimizer takes exactly `steps` steps, the
    length of the learning-rate schedule)."""
    rng = np.random.default_rng(seed)
    need = steps * batch
    passes = -(-need // rows)
    return np.concatenate([rng.permutation(rows) for _ in range(passes)])[:need]


def train_and_eval(spec, vocab, train, tests, cfg, seed):
    name, arch, k, loops, regularized = spec
    x, y, w = train
    model, reg = compiled_model(
        arch, k, loops, regularized, vocab, x.shape[1], cfg, seed
    )
    steps = cfg["steps"]
    batch = cfg["batch_size"]
    order = batch_order(len(x), steps, batch, seed)
    start = time.perf_counter()
    model.fit(
        x[order],
        y[order],
        sample_weight=w[order],
        batch_size=batch,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    train_seconds = time.perf_counter() - start
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    assert iterations == steps, (name, seed, iterations, steps)
    row = {"model": name, "seed": seed, "params": model.count_params()}
    for label, (tx, ty, tw) in tests.items():
        logits = model.predict(tx, batch_size=256, verbose=0)
        predicted = np.argmax(logits, -1)
        if label == "all prefixes":  # token accuracy over every prefix
            hit = (predicted == ty) * tw
            row[f"acc {label}"] = 100.0 * float(hit.sum() / tw.sum())
        else:
            row[f"acc {label}"] = 100.0 * exact_match(predicted, ty, tw)
    if reg is not None:
        row["block cosine"] = reg.similarity()
    row["train s"] = train_seconds
    return row, (model, x[: 4 * batch], y[: 4 * batch], batch)


def model_rows(cfg):
    """`(name, arch, k, loops, regularized)` of every model of a task: the
    paper's three (`k x 1`, `k x L`, `kL x 1`) for the own model, the
    regularised `kL x 1` when `cfg["regularized"]`, and the three again on
    the looped RoPE Gemma when `cfg["gemma"]`."""
    k, loops = cfg["k"], cfg["loops"]
    triple = [(k, 1), (k, loops), (k * loops, 1)]
    rows = [(f"{a}x{b}", "own", a, b, False) for a, b in triple]
    if cfg["regularized"]:
        rows.append((f"{k * loops}x1 + reg", "own", k * loops, 1, True))
    if cfg["gemma"]:
        rows += [(f"gemma {a}x{b}", "gemma", a, b, False) for a, b in triple]
    return rows


def timing_only(task, cfg):
    """Step time and parameters of the untrained models of a task (same
    computation as trained ones), interleaved rounds, without training."""
    vocab, (x, y, _), _ = task_data(task, cfg)
    batch = cfg["batch_size"]
    entries, rows = {}, []
    for name, arch, kk, ll, reg in model_rows(cfg):
        model, _ = compiled_model(
            arch, kk, ll, reg, vocab, x.shape[1], cfg, cfg["seeds"][0]
        )
        entries[name] = (model, x[: 4 * batch], y[: 4 * batch], batch)
        rows.append({"model": name, "params": model.count_params()})
    times = step_times(entries, rounds=7, steps=20)
    for row in rows:
        row.update(times[row["model"]])
    first = rows[0]["model"]
    harness.ratio_table(rows, key="model", value="step ms", peer=first)
    harness.ratio_table(rows, key="model", value="params", peer=first)
    return rows


def summarize(per_seed, names):
    """One row per model: every accuracy and the block cosine as `mean +-
    std` over the seeds (sample std), the mean training time; and the
    `{(model, column): (mean, std)}` statistics behind them."""
    rows, stats = [], {}
    for name in names:
        runs = [r for r in per_seed if r["model"] == name]
        row = {"model": name, "params": runs[0]["params"], "seeds": len(runs)}
        for column in runs[0]:
            if not (column.startswith("acc") or column == "block cosine"):
                continue
            mean, std = harness.mean_std([r[column] for r in runs])
            stats[(name, column)] = (mean, std)
            digits = 4 if column == "block cosine" else 1
            row[column] = f"{mean:.{digits}f} ± {std:.{digits}f}"
        row["train s"] = harness.mean_std([r["train s"] for r in runs])[0]
        rows.append(row)
    return rows, stats


def _paired(per_seed, column, method, baseline):
    """`stats.paired_difference` of `column` between two models, paired by
    seed (the seeds both models ran), or `None` when either has none."""
    values = {}
    for name in (method, baseline):
        values[name] = {
            r["seed"]: r[column]
            for r in per_seed
            if r["model"] == name and column in r
        }
    seeds = sorted(set(values[method]) & set(values[baseline]))
    if not seeds:
        return None
    return stats.paired_difference(
        [values[method][s] for s in seeds],
        [values[baseline][s] for s in seeds],
    )


def _diff_text(diff):
    if diff is None:
        return "not run"
    if diff["n"] < 2:
        return f"{diff['mean']:+.1f} points (n={diff['n']})"
    return (
        f"{diff['mean']:+.1f} points, 95% CI [{diff['low']:.1f}, "
        f"{diff['high']:.1f}], n={diff['n']}"
    )


def task_claims(task, cfg, per_seed, columns):
    """Markdown bullet lines: the paired differences (over seeds) behind
    each claim; the verdicts are the one rule's (`benchmarks/claims.py`),
    written at the top of the results file."""
    k, loops = cfg["k"], cfg["loops"]
    lines = []
    prefixes = [""] + (["gemma "] if cfg["gemma"] else [])
    for prefix in prefixes:
        shallow, looped, deep = (
            f"{prefix}{k}x1",
            f"{prefix}{k}x{loops}",
            f"{prefix}{k * loops}x1",
        )
        for column in columns:
            beat = _paired(per_seed, column, looped, shallow)
            match = _paired(per_seed, column, looped, deep)
            longer = " (operand counts longer than training)" * (
                "(longer)" in column
            )
            lines.append(
                f"- {task} `{column}`{longer}: {looped} - {shallow} (paper: "
                f"looping beats the iso-parameter model) "
                f"{_diff_text(beat)}; {looped} - {deep} (paper: nearly "
                f"equal, an equivalence the one rule does not judge) "
                f"{_diff_text(match)}."
            )
    if cfg["regularized"]:
        deep = f"{k * loops}x1"
        reg = f"{deep} + reg"
        cosines = [r["block cosine"] for r in per_seed if r["model"] == reg]
        cos, cos_std = harness.mean_std(cosines)
        diff = _paired(per_seed, columns[0], reg, deep)
        lines.append(
            f"- {task}, looping regulariser (lambda = {cfg['reg_strength']}, "
            f"blocks of {cfg['reg_block']} layer(s)): block cosine "
            f"{cos:.4f} ± {cos_std:.4f} (paper: >= 0.98 at lambda = 10); "
            f"`{columns[0]}` {reg} - {deep} (paper: the regularised model "
            f"reasons better) {_diff_text(diff)}."
        )
    return lines


def run_seed(task, cfg, data, seed):
    """Trains every model of the task with one seed. Returns the per-seed
    rows and the trained models as `time_fit_interleaved` entries."""
    vocab, train, tests = data
    rows, entries = [], {}
    for spec in model_rows(cfg):
        row, entries[spec[0]] = train_and_eval(
            spec, vocab, train, tests, cfg, seed
        )
        print(task, row, flush=True)
        rows.append(row)
    return rows, entries


def step_times(entries, rounds=5, steps=10):
    """`step ms` (the mean step: wall time / steps), `median ms` and
    `worst ms` of every compiled model, in interleaved rounds (the shared
    machine's drift hits all models alike; training wall times are not
    comparable when other jobs ran meanwhile)."""
    times = harness.time_fit_interleaved(
        entries, rounds=rounds, steps_per_round=steps
    )
    return {
        name: {
            "step ms": 1000.0 * t["mean"],
            "median ms": 1000.0 * t["median"],
            "worst ms": 1000.0 * t["worst"],
        }
        for name, t in times.items()
    }


def task_summary(task, cfg, tests, per_seed, step_ms):
    """The summary table (mean +- std over the seeds run so far, step
    times and ratios) and the verdict lines of one task."""
    names = [spec[0] for spec in model_rows(cfg)]
    rows, _ = summarize(per_seed, names)
    for row in rows:
        row.update(step_ms[row["model"]])
    peer = names[0]
    harness.ratio_table(rows, key="model", value="step ms", peer=peer)
    harness.ratio_table(rows, key="model", value="params", peer=peer)
    columns = [f"acc {label}" for label in tests if label != "all prefixes"]
    if task == "addition":  # the training lengths first, as one claim each
        columns.sort(key=lambda c: "(longer)" in c)
    return rows, task_claims(task, cfg, per_seed, columns)


def compile_scaling(
    loop_counts=(1, 8, 64), dim=32, seq_len=16, batch=4, train=False
):
    """StableHLO size and compile time of a `LoopedBlock` over one tiny
    keras-hub `TransformerEncoder`, unrolled vs scanned (vs scanned with
    rematerialisation), at several loop counts: the forward pass, or with
    `train=True` one training step (loss and gradients). JAX only
    (StableHLO). `loop_counts` may be a dict mode -> counts.

    Compile time is lower + compile of a fresh `jax.jit`,
    `COMPILE_REPEATS` times (no compilation cache: each is a full
    compile); the row gives the mean, the fastest and the slowest."""
    import jax

    rows = []
    x = np.random.default_rng(0).normal(size=(batch, seq_len, dim))
    x = x.astype("float32")
    for mode, remat in (("scan", False), ("scan", True), ("unroll", False)):
        label = mode + (" + remat" if remat else "")
        counts = loop_counts
        if isinstance(loop_counts, dict):
            counts = loop_counts[label]
        for loops in counts:
            keras.utils.set_random_seed(0)
            block = LoopedBlock(
                [keras_hub.layers.TransformerEncoder(2 * dim, 2)],
                num_loops=loops,
                loop_mode=mode,
                rematerialize=remat,
            )
            block.build(x.shape)
            values = [v.value for v in block.trainable_variables]
            others = [v.value for v in block.non_trainable_variables]

            def forward(values, x, block=block, others=others):
                out, _ = block.stateless_call(values, others, x)
                return keras.ops.mean(keras.ops.square(out))

            fn = jax.value_and_grad(forward) if train else forward
            seconds = []
            for _ in range(COMPILE_REPEATS):
                start = time.perf_counter()
                # A new function each time: jit's caches miss (a full compile).
                lowered = jax.jit(lambda *a, f=fn: f(*a)).lower(values, x)
                compiled = lowered.compile()
                seconds.append(time.perf_counter() - start)
            jax.block_until_ready(compiled(values, x))
            rows.append(
                {
                    "mode": label,
                    "loops L": loops,
                    "StableHLO lines": len(lowered.as_text().splitlines()),
                    "lower + compile s": float(np.mean(seconds)),
                    "fastest s": min(seconds),
                    "slowest s": max(seconds),
                    "repeats": COMPILE_REPEATS,
                }
            )
            print(rows[-1], flush=True)
    return rows


def compile_verdict(tables):
    """The verdict line of the compile benchmark, from its tables: whether
    the scanned programs have one size at every loop count while the
    unrolled one grows."""
    parts, flat = [], True
    for title, rows in tables.items():
        sizes = {}
        for row in rows:
            sizes.setdefault(row["mode"], []).append(row["StableHLO lines"])
        scan_flat = all(
            len(set(v)) == 1 for k, v in sizes.items() if k != "unroll"
        )
        grows = sizes["unroll"] == sorted(sizes["unroll"]) and (
            sizes["unroll"][-1] > sizes["unroll"][0]
        )
        flat = flat and scan_flat and grows
        summary = "; ".join(
            f"{k}: {' -> '.join(str(n) for n in v)}" for k, v in sizes.items()
        )
        parts.append(f"{title.split(':')[0]} lines ({summary})")
    verdict = "reproduced" if flat else "NOT reproduced"
    return (
        f"Verdict: {verdict}. `loop_mode='scan'` program size "
        + ("is" if flat else "is not")
        + " flat in L while the unrolled one grows: "
        + "; ".join(parts)
        + ". Compile times: see the tables (noisy on a loaded machine)."
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", default="p_hop,addition")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps of every model (default: per task, see code)",
    )
    parser.add_argument(
        "--p-hop-steps", type=int, default=None, help="overrides --steps"
    )
    parser.add_argument(
        "--addition-steps", type=int, default=None, help="overrides --steps"
    )
    harness.add_seeds_argument(parser)
    parser.add_argument(
        "--timing-only",
        action="store_true",
        help="only the step time / parameter table (untrained models, "
        "interleaved timing rounds); writes looped_reasoning_<backend>_timing",
    )
    parser.add_argument("--p", type=int, default=P_HOP_P)
    parser.add_argument("--n", type=int, default=P_HOP_N)
    parser.add_argument("--train-n", default=ADDITION_TRAIN_N)
    parser.add_argument("--test-n", default=ADDITION_TEST_N)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument(
        "--gemma-tasks",
        default=GEMMA_TASKS,
        help="tasks that also train the looped RoPE Gemma models",
    )
    parser.add_argument(
        "--reg-tasks",
        default=REG_TASKS,
        help="tasks that also train the looping-regularised deep model",
    )
    parser.add_argument(
        "--sparse",
        action="store_true",
        help="p-hop: supervise only each sequence's own answer (the "
        "paper's format) instead of every prefix",
    )
    parser.add_argument(
        "--note",
        default="",
        help="text added to the results notes (e.g. how the setting and "
        "the seeds were chosen)",
    )
    args = parser.parse_args()
    quick = args.quick

    def ints(text):
        return [int(v) for v in text.split(",") if v]

    seeds = harness.seeds_of(args) if not quick else [0, 1]
    gemma_tasks = args.gemma_tasks.split(",")
    reg_tasks = args.reg_tasks.split(",")
    common = {
        "width": args.width,
        "heads": 4,
        "k": 1,
        "loops": 4,
        "reg_block": 1,
        "reg_strength": 10.0,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seeds": seeds,
    }
    configs = {
        "p_hop": {
            **common,
            "steps": args.p_hop_steps or args.steps or P_HOP_STEPS,
            "p": args.p,
            "n": args.n,
            "dense": not args.sparse,
            "train_examples": 20000,
            "test_examples": 1000,
        },
        "addition": {
            **common,
            "steps": args.addition_steps or args.steps or ADDITION_STEPS,
            "digits": 2,
            "train_n": ints(args.train_n),
            "test_n": ints(args.test_n),
            "train_examples": 20000,
            "test_examples": 1000,
        },
    }
    for task, cfg in configs.items():
        cfg["gemma"] = task in gemma_tasks
        cfg["regularized"] = task in reg_tasks
        if quick:
            cfg.update(steps=60, train_examples=2000, test_examples=200)
    if quick:
        configs["p_hop"].update(p=2, n=12)
        configs["addition"].update(train_n=[2], test_n=[2, 3])
    backend = keras.backend.backend()
    # Seeds > 0 reuse the first seed's executables; the compile benchmark
    # times full compiles, so it runs without the cache.
    if backend == "jax" and args.tasks != "compile":
        import tempfile

        import jax

        jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp())
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    name = f"looped_reasoning_{backend}" + ("_quick" if quick else "")
    if args.tasks != "p_hop,addition":
        name += "_" + args.tasks.replace(",", "_")
    tables = {}
    if args.tasks == "compile":
        tables["forward pass: program size vs loops"] = compile_scaling()
        tables["training step (loss + gradients): program size vs loops"] = (
            compile_scaling(
                {
                    "scan": (1, 8, 64),
                    "scan + remat": (1, 8, 64),
                    "unroll": (1, 8),
                },
                train=True,
            )
        )
        md = harness.write_results(
            f"looped_compile_{backend}",
            tables,
            meta={"encoder": "TransformerEncoder(64, 2), d 32, seq 16, b 4"},
            notes="`LoopedBlock` over one keras-hub TransformerEncoder, "
            "jitted forward (mean square of the output) and training step "
            "(its value and gradients); lines of `jax.jit(...).lower()."
            "as_text()` and wall time of lower + compile (mean, fastest and "
            "slowest of 3 full compiles each, no compilation cache, on a "
            "2-core CPU machine shared with other jobs: times are inflated "
            "and noisy; line counts are exact). The unrolled "
            "training step at L = 64 is left out: it did not compile within "
            "10 minutes on this loaded machine. Claim tested: "
            "`loop_mode='scan'` keeps program size and compile time flat in "
            "L.\n\n" + compile_verdict(tables),
        )
        print(md)
        return
    if args.timing_only:
        for task in args.tasks.split(","):
            tables[f"{task}: parameters and fit step time"] = timing_only(
                task, configs[task]
            )
        md = harness.write_results(
            name + "_timing",
            tables,
            meta={"configs": configs},
            notes="Untrained models (a step costs the same trained or not); "
            "7 interleaved rounds of 20 compiled fit steps; step ms = total "
            "wall time / steps (mean step), median and worst step beside it; "
            "ratios to the iso-parameter `k x 1` model of the same run.",
        )
        print(md)
        return
    tasks = args.tasks.split(",")
    data = {task: task_data(task, configs[task]) for task in tasks}
    per_seed = {task: [] for task in tasks}
    step_ms = {}
    # Seeds outermost, results rewritten after each: an interrupted run
    # leaves complete tables for the seeds it finished.
    for done, seed in enumerate(seeds, start=1):
        for task in tasks:
            rows, entries = run_seed(task, configs[task], data[task], seed)
            per_seed[task] += rows
            if task not in step_ms:  # the first seed's trained models
                step_ms[task] = step_times(entries)
        md = write_reasoning_results(
            name, configs, data, per_seed, step_ms, done, args.note
        )
    print(md)


def write_reasoning_results(
    name, configs, data, per_seed, step_ms, done, note=""
):
    paper = {"p_hop": PAPER_P_HOP, "addition": PAPER_ADDITION}
    tables, claims = {}, []
    for task in per_seed:
        cfg = configs[task]
        rows, lines = task_summary(
            task, cfg, data[task][2], per_seed[task], step_ms[task]
        )
        if task == "p_hop":
            setting = f"p = {cfg['p']}, n = {cfg['n']}"
        else:
            setting = (
                f"{cfg['digits']}-digit operands, train n in "
                f"{cfg['train_n']}, test n in {cfg['test_n']}"
            )
        tables[
            f"{task} ({setting}): test exact-match accuracy (%), "
            f"mean ± std over {done} seeds"
        ] = rows
        tables[f"{task}: the paper's accuracy (%)"] = [
            {"model": m, "accuracy": a} for m, a in paper[task].items()
        ]
        tables[f"{task}: every seed"] = per_seed[task]
        claims += lines
    notes = " ".join(
        [
            "Scaled-down settings (see meta). Every model trains exactly",
            "`steps` AdamW steps (checked against the optimizer's",
            "iteration count), the length of its learning-rate schedule",
            "(linear warmup over the first tenth, then cosine decay to 0),",
            "on batches in a seed-determined order (a fresh shuffle of the",
            "training set per pass). Accuracies are mean ± sample",
            "std over the seeds (model initialisation and batch order; the",
            "training and test sets are fixed); `train s` is the mean",
            "training wall time (not comparable across rows: other jobs",
            "shared the machine). `step ms` is the mean step (total wall",
            "time / steps; `median ms` and `worst ms` beside it) over 5",
            "interleaved rounds of 10 compiled fit steps of the first",
            "seed's trained models; its ratio is to the iso-parameter",
            "`k x 1` model of the same run. `block cosine` is mean_G",
            "R_G(k) of the regularised model after training. `gemma` rows:",
            "`keras_gr.hub.LoopedGemmaBackbone` (RoPE) from a tiny config,",
            "no prelude / coda, tied output embedding. Addition columns",
            "marked `(longer)` test operand counts longer than every",
            "training problem (the own model's learned positions there are",
            "untrained). Paper: d 128-256, 200k steps, p in {16, 32} with",
            "n = 256, and 3-digit operands with n up to 32. p-hop here",
            "supervises the answer of every prefix (`p_hop_prefix_targets`)",
            "unless run with `--sparse`; `acc p=...` is always on each test",
            "sequence's own problem (its last position), `acc all prefixes`",
            "the token accuracy over every prefix whose hops exist.",
            "Verdicts: the one-rule table at the top (`benchmarks/claims.py`",
            "pairs every model with the iso-parameter `k x 1` by seed).",
        ]
    )
    if note:
        notes += "\n\n" + note
    notes += "\n\n## Claims: paired differences over seeds\n\n" + "\n".join(
        claims
    )
    return harness.write_results(
        name,
        tables,
        meta={"configs": {t: configs[t] for t in per_seed}, "seeds run": done},
        notes=notes,
    )


if __name__ == "__main__":
    main()
