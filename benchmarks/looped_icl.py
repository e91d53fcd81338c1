"""Benchmark: depth and looping for in-context linear regression.

"On the Role of Depth and Looping for In-Context Learning with Task
Diversity" (Gatmiry, Saunshi, Reddi, Jegelka, Kumar; arXiv 2410.21698),
scaled down to a CPU. Four `keras_gr.models.LoopedICLRegressor` forms:
looped / deep (non-looped) x restricted `(A, u)` / unrestricted `(P, Q)`,
on prompts whose covariance has condition number in `[1, kappa]`
(`keras_gr.data.icl_regression_problems`, d = 5, n = 160, noiseless,
`w ~ N(0, Sigma^-1)`).

What is measured (losses are normalised, `E[(y_hat - y_q)^2] / E[y_q^2]`,
1.0 = predicting 0, means over 8192 fresh test prompts):

1. kappa sweep: for every kappa, form and depth `L` (the number of loops
   of a looped model, of layers of a deep one) models are trained with
   their own learning rate (a 3-point grid, 3 seeds each, picked on the
   median validation loss); the least `L` whose mean test loss (3 seeds)
   reaches `--target` is compared with `log kappa`, `sqrt kappa` and
   `kappa` (the paper: `log kappa` layers unrestricted, `sqrt kappa`
   restricted).
2. Loss vs loops far past the training depth for the looped models, with
   the ablation that explains the explosion: the share of prompts on
   which the learned restricted loop `I - A S` is expansive, the loss on
   the other prompts, the loop with its step rescaled to be contractive
   on the training distribution, and looped models trained with a random
   number of loops (per prompt) or more loops.
3. Shift robustness: the same trained models on prompts whose spectrum is
   widened by `1 + s` at both ends, as a function of depth.

Training is done in JAX on an exact reduction of the prompts: a linear
attention layer maps every token row `z` to `z T`, `T = I + Q^T (K / n)
P^T` with `K` the keys' Gram matrix, so the layer acts on `(K / n, z_q)`
alone (`K <- T^T K T`, `z_q <- z_q T`); for the restricted form only the
`x^T y / n` column and the query's `y` change. The trained weights are
copied into `LoopedICLRegressor`s and run on the full prompts; the
largest difference to the reduced forward is reported (`library_check`).

    KERAS_BACKEND=jax .venv/bin/python -m benchmarks.looped_icl [--quick]
"""

import argparse
import math
import time

import keras
import numpy as np

from benchmarks import harness
from keras_gr.data.icl_regression import icl_regression_problems
from keras_gr.models.looped_icl import LoopedICLRegressor

FORMS = (
    ("looped_restricted", True, True),
    ("looped_unrestricted", True, False),
    ("deep_restricted", False, True),
    ("deep_unrestricted", False, False),
)
RESTRICTED_DEPTHS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
UNRESTRICTED_DEPTHS = (1, 2, 3, 4, 5, 6, 8)
LEARNING_RATES = {True: (1e-2, 3e-2, 1e-1), False: (3e-3, 1e-2, 3e-2)}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--num-context", type=int, default=160)
    parser.add_argument("--kappas", type=str, default="4,16,64,256")
    parser.add_argument("--main-kappa", type=float, default=64.0)
    parser.add_argument("--target", type=float, default=0.15)
    parser.add_argument("--train-depth", type=int, default=4)
    parser.add_argument("--max-loops", type=int, default=100)
    parser.add_argument("--train-prompts", type=int, default=32768)
    parser.add_argument("--val-prompts", type=int, default=2048)
    parser.add_argument("--test-prompts", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-restricted-depth", type=int, default=64)
    parser.add_argument("--max-unrestricted-depth", type=int, default=6)
    parser.add_argument("--forms", type=str, default="")
    parser.add_argument("--shifts", type=str, default="0,0.1,0.25,0.5,1.0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.kappas = "4,64"
        args.train_prompts = 8192
        args.test_prompts = 2048
        args.steps = 300
        args.seeds = 2
        args.max_restricted_depth = 8
        args.max_unrestricted_depth = 3
        args.max_loops = 30
    args.kappas = [float(k) for k in args.kappas.split(",")]
    if args.main_kappa not in args.kappas:
        args.main_kappa = args.kappas[-1]
    args.shifts = [float(s) for s in args.shifts.split(",")]
    args.forms = [f for f in args.forms.split(",") if f] or [
        f[0] for f in FORMS
    ]
    return args


# === Data: prompts reduced to (K / n, query token) ===


def reduce_prompts(prompts, num_context):
    """`(K / n, z_q)` of token-major prompts: the keys' Gram matrix over
    `n` and the query row (float32)."""
    z = np.asarray(prompts, dtype=np.float64)
    keys = z[:, :num_context]
    gram = np.einsum("bti,btj->bij", keys, keys) / num_context
    return gram.astype("float32"), z[:, num_context].astype("float32")


def problems(args, num, kappa, seed, shift=0.0, keep_full=0):
    """Reduced prompts in chunks (the full `(n + 1, d + 1)` prompts of a
    large pool do not fit comfortably in memory)."""
    grams, queries, targets, full = [], [], [], None
    chunk = 8192
    for i, start in enumerate(range(0, num, chunk)):
        data = icl_regression_problems(
            min(chunk, num - start),
            dim=args.dim,
            num_context=args.num_context,
            kappa=kappa,
            shift=shift,
            seed=seed * 1000 + i,
        )
        g, q = reduce_prompts(data["prompts"], args.num_context)
        grams.append(g)
        queries.append(q)
        targets.append(data["targets"])
        if i == 0 and keep_full:
            full = data["prompts"][:keep_full]
    return {
        "gram": np.concatenate(grams),
        "query": np.concatenate(queries),
        "target": np.concatenate(targets),
        "full": full,
    }


# === Reduced forward passes (JAX) ===


def _jax():
    import jax
    import jax.numpy as jnp

    return jax, jnp


def init_params(restricted, num_layers, dim, seed, stddev=0.01):
    """The `LinearAttention` initialisation: restricted `A = u = 0 +
    noise`; unrestricted `P = e e^T + noise`, `Q = 0 + noise`."""
    rng = np.random.default_rng(seed)
    if restricted:
        return {
            "a": rng.normal(size=(num_layers, dim, dim)) * stddev,
            "u": rng.normal(size=(num_layers, dim)) * stddev,
        }
    p = rng.normal(size=(num_layers, dim + 1, dim + 1)) * stddev
    p[:, -1, -1] += 1.0
    q = rng.normal(size=(num_layers, dim + 1, dim + 1)) * stddev
    return {"p": p, "q": q}


def forward(params, gram, query, loops, looped, collect):
    """Predictions `-z_q[y]` after `loops` layers (looped: layer 0 every
    time; deep: layer `i` at step `i`), `(B,)` or `(B, loops)`."""
    jax, jnp = _jax()
    index = jnp.zeros(loops, "int32") if looped else jnp.arange(loops)
    if "a" in params:
        d = params["a"].shape[-1]
        s, xq = gram[:, :d, :d], query[:, :d]

        def step(state, i):
            h, yq = state
            a, u = params["a"][i], params["u"][i]
            g = jnp.einsum("bij,j->bi", s, u) + h
            ag = g @ a
            h = h - jnp.einsum("bij,bj->bi", s, ag)
            yq = yq - jnp.sum(xq * ag, axis=-1)
            return (h, yq), -yq

        init = (gram[:, :d, d], query[:, d])
    else:
        eye = jnp.eye(gram.shape[-1], dtype=gram.dtype)

        def step(state, i):
            k, zq = state
            p, q = params["p"][i], params["q"][i]
            t = eye + jnp.einsum("ji,bjk,lk->bil", q, k, p)
            k = jnp.einsum("bji,bjk,bkl->bil", t, k, t)
            zq = jnp.einsum("bi,bij->bj", zq, t)
            return (k, zq), -zq[:, -1]

        init = (gram, query)
    last, preds = jax.lax.scan(step, init, index)
    if collect:
        return preds.T
    return preds[-1]


def normalised(preds, targets):
    """Normalised MSE per column of `preds` (`(B, L)` or `(B,)`)."""
    preds = np.asarray(preds, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if preds.ndim == 2:
        targets = targets[:, None]
    with np.errstate(over="ignore", invalid="ignore"):
        err = np.mean((preds - targets) ** 2, axis=0) / np.mean(targets**2)
    return np.where(np.isfinite(err), err, np.inf)


_EVAL_CACHE = {}


def predict(params, data, loops, looped, collect=True, chunk=4096):
    """`(M, B, loops)` predictions of a stack of `M` models."""
    jax, jnp = _jax()
    key = (tuple(params), loops, looped, collect)
    if key not in _EVAL_CACHE:
        _EVAL_CACHE[key] = jax.jit(
            jax.vmap(
                lambda p, g, q: forward(p, g, q, loops, looped, collect),
                in_axes=(0, None, None),
            )
        )
    fn = _EVAL_CACHE[key]
    out = []
    for start in range(0, len(data["target"]), chunk):
        out.append(
            np.asarray(
                fn(
                    params,
                    jnp.asarray(data["gram"][start : start + chunk]),
                    jnp.asarray(data["query"][start : start + chunk]),
                )
            )
        )
    return np.concatenate(out, axis=1)


# === Training (JAX, M models at once: learning rates x seeds) ===


def train(form, depth, pool, val, args, lrs, seeds, mode="final", loops=None):
    """Adam (5% linear warm-up, cosine decay to 1%, global-norm clip 1 per
    model) on the squared error of the final prediction (`mode="final"`)
    or of the prediction after a random number of loops in `1 .. loops`,
    drawn per prompt (`mode="random"`). Every `steps / 12` steps the
    validation loss is measured and each model's best weights are kept.

    Returns `(best_params, best_val, val_history, seconds)` stacked over
    `len(lrs) * len(seeds)` models (learning-rate major).
    """
    jax, jnp = _jax()
    _, looped, restricted = form
    num_layers = 1 if looped else depth
    runs = [(lr, s) for lr in lrs for s in seeds]
    stacked = [
        init_params(restricted, num_layers, args.dim, s) for _, s in runs
    ]
    params = {
        k: jnp.asarray(np.stack([p[k] for p in stacked]), jnp.float32)
        for k in stacked[0]
    }
    peak = jnp.asarray([lr for lr, _ in runs], jnp.float32)
    steps = args.steps
    warmup = max(1, steps // 20)
    loops = loops or depth

    def schedule(t):
        t = t.astype(jnp.float32)
        warm = t / warmup
        frac = jnp.clip((t - warmup) / (steps - warmup), 0.0, 1.0)
        cos = 0.01 + 0.99 * 0.5 * (1.0 + jnp.cos(math.pi * frac))
        return jnp.where(t < warmup, warm, cos)

    def loss_fn(p, gram, query, target, pick):
        if mode == "final":
            pred = forward(p, gram, query, depth, looped, collect=False)
        else:
            preds = forward(p, gram, query, loops, looped, collect=True)
            pred = jnp.take_along_axis(preds, pick[:, None], axis=1)[:, 0]
        return jnp.mean((pred - target) ** 2)

    grad_fn = jax.vmap(
        jax.value_and_grad(loss_fn), in_axes=(0, None, None, None, None)
    )

    def adam(p, g, m, v, t, lr):
        norm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(g)))
        scale = jnp.minimum(1.0, 1.0 / (norm + 1e-12))
        g = jax.tree.map(lambda x: x * scale, g)
        m = jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree.map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        c1 = 1.0 - 0.9 ** (t + 1.0)
        c2 = 1.0 - 0.999 ** (t + 1.0)
        p = jax.tree.map(
            lambda w, a, b: w - lr * (a / c1) / (jnp.sqrt(b / c2) + 1e-8),
            p,
            m,
            v,
        )
        return p, m, v

    pool_g = jnp.asarray(pool["gram"])
    pool_q = jnp.asarray(pool["query"])
    pool_t = jnp.asarray(pool["target"])

    def step(carry, xs):
        p, m, v, t = carry
        idx, pick = xs
        _, g = grad_fn(p, pool_g[idx], pool_q[idx], pool_t[idx], pick)
        lr = peak * schedule(t)
        p, m, v = jax.vmap(adam, in_axes=(0, 0, 0, 0, None, 0))(
            p, g, m, v, t.astype(jnp.float32), lr
        )
        return (p, m, v, t + 1), None

    @jax.jit
    def run_chunk(carry, idx, pick):
        return jax.lax.scan(step, carry, (idx, pick))[0]

    val_fn = jax.jit(
        jax.vmap(
            lambda p, g, q: forward(p, g, q, depth, looped, collect=False),
            in_axes=(0, None, None),
        )
    )
    val_g, val_q = jnp.asarray(val["gram"]), jnp.asarray(val["query"])
    zeros = jax.tree.map(jnp.zeros_like, params)
    carry = (params, zeros, zeros, jnp.asarray(0, jnp.int32))
    rng = np.random.default_rng(hash((depth, mode, loops, seeds)) % 2**32)
    chunks = 12
    per_chunk = steps // chunks
    best = jax.tree.map(np.asarray, params)
    best_val = np.full(len(runs), np.inf)
    history = []
    start = time.perf_counter()
    for _ in range(chunks):
        idx = rng.integers(0, len(pool["target"]), (per_chunk, args.batch_size))
        pick = rng.integers(0, loops, (per_chunk, args.batch_size))
        carry = run_chunk(carry, jnp.asarray(idx), jnp.asarray(pick))
        preds = np.asarray(val_fn(carry[0], val_g, val_q))
        losses = np.array([normalised(p, val["target"]) for p in preds])
        history.append(losses)
        better = losses < best_val
        best_val = np.where(better, losses, best_val)
        now = jax.tree.map(np.asarray, carry[0])
        best = {
            k: np.where(
                better.reshape((-1,) + (1,) * (best[k].ndim - 1)),
                now[k],
                best[k],
            )
            for k in best
        }
    seconds = time.perf_counter() - start
    return best, best_val, np.stack(history, axis=1), seconds


def pick_learning_rate(best_val, lrs, num_seeds):
    """Index of the learning rate with the lowest median best validation
    loss over seeds (the median ignores one diverged seed)."""
    per_lr = np.asarray(best_val).reshape(len(lrs), num_seeds)
    medians = np.median(per_lr, axis=1)
    return int(np.argmin(medians)), medians


def select(params, start, stop):
    return {k: v[start:stop] for k, v in params.items()}


# === Library check ===


def library_model(form, depth, params, index):
    """A `LoopedICLRegressor` holding model `index` of a stack."""
    _, looped, restricted = form
    model = LoopedICLRegressor(
        depth=depth, looped=looped, restricted=restricted
    )
    dim = params["a" if restricted else "p"].shape[-1]
    dim = dim if restricted else dim - 1
    model(np.zeros((1, 3, dim + 1), "float32"))
    for i, layer in enumerate(model.attention_layers):
        if restricted:
            layer.a.assign(params["a"][index, i])
            layer.u.assign(params["u"][index, i])
        else:
            layer.p.assign(params["p"][index, i])
            layer.q.assign(params["q"][index, i])
    return model


def library_check(form, depth, params, index, test):
    """Largest `|library - reduced|` prediction difference on the full
    prompts kept with the test set, relative to `std(y)`."""
    model = library_model(form, depth, params, index)
    full = keras.ops.convert_to_numpy(model(test["full"]))[:, 0]
    n = len(test["full"])
    reduced = predict(
        select(params, index, index + 1),
        {k: v[:n] for k, v in test.items() if k != "full"},
        depth,
        form[1],
        collect=False,
    )[0]
    ok = np.isfinite(full) & np.isfinite(reduced)
    if not ok.any():
        return float("nan")
    diff = np.abs(full[ok] - reduced[ok]).max()
    return float(diff / np.std(test["target"][:n]))


# === Analyses ===


def expansive_share(params, index, data, dim):
    """Per prompt, the spectral radius of the restricted loop's GD map
    `I - A^T S` (exact iteration matrix of the `x^T y` state when
    `u = 0`): share above 1, and the largest eigenvalue of `A^T S`."""
    a = np.asarray(params["a"][index, 0], np.float64)
    s = np.asarray(data["gram"][:, :dim, :dim], np.float64)
    eig = np.linalg.eigvals(np.einsum("ji,bjk->bik", a, s))
    radius = np.abs(1.0 - eig).max(axis=-1)
    return radius > 1.0, eig.real.max(axis=-1)


def fit_growth(kappas, depths):
    """Least-squares fit `depth = c * f(kappa)` for f in log, sqrt, linear;
    returns {name: (c, relative rms error)} over finite depths."""
    kappas = np.asarray(kappas, np.float64)
    depths = np.asarray(depths, np.float64)
    ok = np.isfinite(depths)
    out = {}
    for name, f in (
        ("log", np.log),
        ("sqrt", np.sqrt),
        ("linear", lambda k: k),
    ):
        x, y = f(kappas[ok]), depths[ok]
        if len(y) < 2:
            out[name] = (float("nan"), float("nan"))
            continue
        c = float(np.sum(x * y) / np.sum(x * x))
        rel = float(np.sqrt(np.mean(((c * x - y) / y) ** 2)))
        out[name] = (c, rel)
    return out


def main():
    args = parse_args()
    if keras.backend.backend() != "jax":
        raise SystemExit("This benchmark trains in JAX: KERAS_BACKEND=jax.")
    print(f"settings: {vars(args)}", flush=True)
    t0 = time.perf_counter()
    seeds = tuple(range(args.seed, args.seed + args.seeds))
    forms = [f for f in FORMS if f[0] in args.forms]
    data = {}
    for kappa in args.kappas:
        data[kappa] = {
            "train": problems(args, args.train_prompts, kappa, 1 + args.seed),
            "val": problems(args, args.val_prompts, kappa, 2 + args.seed),
            "test": {
                s: problems(
                    args,
                    args.test_prompts,
                    kappa,
                    3 + args.seed,
                    shift=s,
                    keep_full=256 if s == 0 else 0,
                )
                for s in args.shifts
            },
        }
    print(f"data: {time.perf_counter() - t0:.1f}s", flush=True)

    # 1. kappa sweep.
    trained = {}  # (form, kappa, depth) -> dict
    sweep_rows = []
    for form in forms:
        name, looped, restricted = form
        grid = RESTRICTED_DEPTHS if restricted else UNRESTRICTED_DEPTHS
        cap = (
            args.max_restricted_depth
            if restricted
            else args.max_unrestricted_depth
        )
        lrs = LEARNING_RATES[restricted]
        for kappa in args.kappas:
            d = data[kappa]
            reached = None
            for depth in [L for L in grid if L <= cap]:
                must = kappa == args.main_kappa and depth <= 2 * max(
                    args.train_depth, 4
                )
                if reached is not None and not must:
                    break
                best, best_val, history, seconds = train(
                    form, depth, d["train"], d["val"], args, lrs, seeds
                )
                li, medians = pick_learning_rate(best_val, lrs, len(seeds))
                chosen = select(best, li * len(seeds), (li + 1) * len(seeds))
                test = normalised_stack(chosen, d["test"][0.0], depth, looped)
                hist = history[li * len(seeds) : (li + 1) * len(seeds)]
                best_so_far = np.minimum.accumulate(hist, axis=1)
                quarter, final = best_so_far[:, -4], best_so_far[:, -1]
                with np.errstate(invalid="ignore"):
                    gain = float(np.median((quarter - final) / quarter))
                check = library_check(form, depth, chosen, 0, d["test"][0.0])
                mean = float(np.mean(test))
                row = {
                    "form": name,
                    "kappa": kappa,
                    "depth": depth,
                    "lr": lrs[li],
                    "test_mean": mean,
                    "test_std": float(np.std(test)),
                    "val_median_per_lr": " / ".join(
                        f"{m:.3g}" for m in medians
                    ),
                    "last_quarter_gain": gain,
                    "library_check": check,
                    "train_s": seconds,
                }
                sweep_rows.append(row)
                trained[name, kappa, depth] = {"params": chosen, "row": row}
                print(
                    " ".join(f"{k}={harness.fmt(v)}" for k, v in row.items()),
                    flush=True,
                )
                if reached is None and mean <= args.target:
                    reached = depth
    print(f"sweep: {time.perf_counter() - t0:.1f}s", flush=True)

    # Least depth per (form, kappa) and growth fits.
    least_rows, least = [], {}
    for name, _, _ in forms:
        row = {"form": name}
        depths = []
        for kappa in args.kappas:
            ok = [
                r["depth"]
                for r in sweep_rows
                if r["form"] == name
                and r["kappa"] == kappa
                and r["test_mean"] <= args.target
            ]
            depth = min(ok) if ok else float("inf")
            tried = max(
                r["depth"]
                for r in sweep_rows
                if r["form"] == name and r["kappa"] == kappa
            )
            row[f"kappa={kappa:g}"] = depth if ok else f">{tried}"
            depths.append(depth)
        least[name] = depths
        fits = fit_growth(args.kappas, depths)
        for fname, (c, rel) in fits.items():
            row[f"fit {fname}: c"] = c
            row[f"fit {fname}: rel_err"] = rel
        finite = [d for d in depths if np.isfinite(d)]
        row["best_fit"] = (
            min(fits, key=lambda k: fits[k][1]) if len(finite) >= 2 else ""
        )
        least_rows.append(row)

    # 2. Loops past the training depth (main kappa).
    km = args.main_kappa
    d = data[km]
    loop_rows, ablation_rows, curves = [], [], {}
    looped_forms = [f for f in forms if f[1]]
    for form in looped_forms:
        name, looped, restricted = form
        key = (name, km, args.train_depth)
        if key not in trained:
            continue
        variants = {f"{name} (final loss, L={args.train_depth})": trained[key]}
        lrs = LEARNING_RATES[restricted]
        extra = [("random", 2 * args.train_depth, "random loops 1..{}")]
        if restricted:
            extra.append(("random", 4 * args.train_depth, "random loops 1..{}"))
        for mode, loops, label in extra:
            best, best_val, _, seconds = train(
                form,
                args.train_depth,
                d["train"],
                d["val"],
                args,
                lrs,
                seeds,
                mode=mode,
                loops=loops,
            )
            li, _ = pick_learning_rate(best_val, lrs, len(seeds))
            variants[f"{name} ({label.format(loops)})"] = {
                "params": select(best, li * len(seeds), (li + 1) * len(seeds)),
                "row": {"lr": lrs[li], "train_s": seconds},
            }
        for vname, entry in variants.items():
            for s in (0.0, args.shifts[1] if len(args.shifts) > 1 else 0.0):
                preds = predict(
                    entry["params"], d["test"][s], args.max_loops, True
                )
                per_seed = np.array(
                    [normalised(p, d["test"][s]["target"]) for p in preds]
                )
                curve = np.mean(per_seed, axis=0)
                median = np.median(
                    [
                        np.median(
                            (p - d["test"][s]["target"][:, None]) ** 2, axis=0
                        )
                        / np.mean(d["test"][s]["target"] ** 2)
                        for p in preds
                    ],
                    axis=0,
                )
                curves[vname, s] = curve
                best_loop = int(np.argmin(curve)) + 1
                row = {
                    "model": vname,
                    "shift": s,
                    "lr": entry["row"]["lr"],
                    f"loss@{args.train_depth}": float(
                        curve[args.train_depth - 1]
                    ),
                    f"loss@{2 * args.train_depth}": float(
                        curve[2 * args.train_depth - 1]
                    ),
                    "loss@30": float(curve[min(30, args.max_loops) - 1]),
                    f"loss@{args.max_loops}": float(curve[-1]),
                    "best_loop": best_loop,
                    "monotone": bool(np.all(np.diff(curve) <= 0)),
                    f"median@{args.max_loops}": float(median[-1]),
                }
                if restricted:
                    shares, contractive, lam = [], [], []
                    for i in range(len(preds)):
                        mask, top = expansive_share(
                            entry["params"], i, d["test"][s], args.dim
                        )
                        shares.append(mask.mean())
                        lam.append(np.quantile(top, 0.999))
                        keep = ~mask
                        contractive.append(
                            normalised(
                                preds[i][keep], d["test"][s]["target"][keep]
                            )[-1]
                        )
                        a = np.asarray(entry["params"]["a"][i, 0])
                    row["expansive_share"] = float(np.mean(shares))
                    row["q99.9 lambda_max(A^T S)"] = float(np.mean(lam))
                    row[f"contractive_loss@{args.max_loops}"] = float(
                        np.mean(contractive)
                    )
                    sym = np.linalg.eigvalsh((a + a.T) / 2)
                    row["eig sym(A) (seed -1)"] = (
                        f"{sym.min():.3g}..{sym.max():.3g}"
                    )
                    row["|u|"] = float(
                        np.linalg.norm(entry["params"]["u"][-1, 0])
                    )
                ablation_rows.append(row)
            if restricted and "final" in vname:
                # Post-hoc step normalisation: A scaled so that the loop is
                # contractive on 99.9% of *training* prompts.
                scaled = {k: np.array(v) for k, v in entry["params"].items()}
                for i in range(len(preds)):
                    _, top = expansive_share(
                        entry["params"], i, d["train"], args.dim
                    )
                    factor = min(1.0, 1.9 / np.quantile(top, 0.999))
                    scaled["a"][i] *= factor
                for s in (0.0,):
                    preds = predict(scaled, d["test"][s], args.max_loops, True)
                    curve = np.mean(
                        [normalised(p, d["test"][s]["target"]) for p in preds],
                        axis=0,
                    )
                    sname = f"{name} (final loss, A rescaled post hoc)"
                    curves[sname, s] = curve
                    ablation_rows.append(
                        {
                            "model": sname,
                            "shift": s,
                            f"loss@{args.train_depth}": float(
                                curve[args.train_depth - 1]
                            ),
                            f"loss@{2 * args.train_depth}": float(
                                curve[2 * args.train_depth - 1]
                            ),
                            "loss@30": float(
                                curve[min(30, args.max_loops) - 1]
                            ),
                            f"loss@{args.max_loops}": float(curve[-1]),
                            "best_loop": int(np.argmin(curve)) + 1,
                            "monotone": bool(np.all(np.diff(curve) <= 0)),
                        }
                    )
    shown = [
        L
        for L in (1, 2, 4, 6, 8, 12, 16, 20, 30, 50, 75, 100)
        if L <= args.max_loops
    ]
    for L in shown:
        row = {"loops": L}
        for (vname, s), curve in curves.items():
            if s == 0.0:
                row[vname] = float(curve[L - 1])
        loop_rows.append(row)

    # 3. Shift robustness vs depth (main kappa, sweep models).
    shift_rows = []
    for name, looped, _ in forms:
        for (n2, kappa, depth), entry in sorted(trained.items()):
            if n2 != name or kappa != km:
                continue
            row = {"form": name, "depth": depth}
            base = None
            for s in args.shifts:
                loss = float(
                    np.mean(
                        normalised_stack(
                            entry["params"], d["test"][s], depth, looped
                        )
                    )
                )
                row[f"s={s:g}"] = loss
                if s == 0:
                    base = loss
                else:
                    row[f"ratio s={s:g}"] = loss / base
            shift_rows.append(row)

    plot = _plot(args, sweep_rows, least, curves, shift_rows, forms)
    tables = {
        f"Least depth reaching mean test loss <= {args.target} (3 seeds), "
        "and fits depth = c f(kappa)": least_rows,
        "kappa sweep: mean test loss of each trained depth (chosen lr)": (
            sweep_rows
        ),
        f"Loss vs loops past the training depth (kappa={km:g}, mean of "
        "seeds)": loop_rows,
        "Looped models past the training depth: ablation": ablation_rows,
        f"Shift robustness (kappa={km:g}): mean test loss, spectrum "
        "widened by 1+s": shift_rows,
    }
    name = f"looped_icl_{keras.backend.backend()}" + (
        "_quick" if args.quick else ""
    )
    notes = (
        f"Plot: `{harness.repo_relative(plot)}`. Wall time "
        f"{time.perf_counter() - t0:.0f}s."
    )
    text = harness.write_results(
        name,
        tables,
        meta={k: v for k, v in vars(args).items() if k not in ("quick",)}
        | {"quick": args.quick, "seeds_used": list(seeds)},
        notes=notes,
    )
    print(text)


def normalised_stack(params, data, depth, looped):
    preds = predict(params, data, depth, looped, collect=False)
    return np.array([normalised(p, data["target"]) for p in preds])


def _plot(args, sweep_rows, least, curves, shift_rows, forms):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(22, 4.8))
    colors = {f[0]: f"C{i}" for i, f in enumerate(FORMS)}
    ax = axes[0]
    for name, _, _ in forms:
        for kappa, style in zip(args.kappas, ("-", "--", "-.", ":", "-")):
            rows = [
                r
                for r in sweep_rows
                if r["form"] == name and r["kappa"] == kappa
            ]
            ax.loglog(
                [r["depth"] for r in rows],
                [r["test_mean"] for r in rows],
                style,
                marker="o",
                ms=3,
                color=colors[name],
                label=f"{name} k={kappa:g}",
            )
    ax.axhline(args.target, color="gray", lw=0.8)
    ax.set_xlabel("depth L (loops / layers)")
    ax.set_ylabel("normalised test MSE")
    ax.set_title("kappa sweep")
    ax.legend(fontsize=5, ncol=2)
    ax = axes[1]
    k = np.asarray(args.kappas)
    for name, _, _ in forms:
        depths = np.asarray(least[name], np.float64)
        ok = np.isfinite(depths)
        ax.loglog(k[ok], depths[ok], "o-", color=colors[name], label=name)
    ref = np.geomspace(k.min(), k.max(), 50)
    for f, label in (
        (np.log, "log k"),
        (np.sqrt, "sqrt k"),
        (lambda x: x, "k"),
    ):
        ax.loglog(ref, f(ref) / f(k.min()), ":", color="gray")
        ax.text(ref[-1], f(ref[-1]) / f(k.min()), label, fontsize=7)
    ax.set_xlabel("kappa")
    ax.set_ylabel(f"least depth with loss <= {args.target}")
    ax.set_title("depth needed vs kappa (gray: shapes, scaled to 1)")
    ax.legend(fontsize=7)
    ax = axes[2]
    for (vname, s), curve in curves.items():
        if s != 0.0:
            continue
        ax.semilogy(np.arange(1, len(curve) + 1), curve, label=vname)
    ax.axvline(args.train_depth, color="gray", lw=0.8, ls=":")
    ax.set_ylim(1e-4, 1e3)
    ax.set_xlabel("loops at test time")
    ax.set_ylabel("normalised test MSE")
    ax.set_title(f"past the training depth (kappa={args.main_kappa:g})")
    ax.legend(fontsize=5)
    ax = axes[3]
    for name, _, _ in forms:
        rows = [r for r in shift_rows if r["form"] == name]
        big = max(args.shifts)
        ax.loglog(
            [r["depth"] for r in rows],
            [r[f"s={big:g}"] for r in rows],
            "o-",
            color=colors[name],
            label=f"{name}, shift {big:g}",
        )
        ax.loglog(
            [r["depth"] for r in rows],
            [r["s=0"] for r in rows],
            "o:",
            color=colors[name],
            ms=3,
        )
    ax.set_xlabel("depth L")
    ax.set_ylabel("normalised test MSE")
    ax.set_title("shifted (solid) vs in-distribution (dotted)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    quick = "_quick" if args.quick else ""
    path = harness.result_path(
        f"looped_icl_{keras.backend.backend()}{quick}", ".png"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
