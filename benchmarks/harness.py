"""The one benchmark harness: timing, memory, environment header, and the
JSON + markdown writer every `benchmarks/<paper>.py` script uses.

Speed figures are always ratios against a named peer measured in the same
process run (`ratio_table`). Results go to `benchmarks/results/<name>.json`
and `benchmarks/results/<name>.md` (plus any plots the script saves with
`result_path`). Smoke runs (a name ending in `_quick`) go to a temporary
folder instead (`QUICK_DIR`): they are never evidence. Every results JSON
records its provenance (git commit, component sources and their hash, see
`benchmarks/freshness.py`).
"""

import json
import os
import platform
import resource
import statistics
import tempfile
import time

import keras
import numpy as np

from benchmarks import freshness

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
QUICK_DIR = os.path.join(tempfile.gettempdir(), "keras_gr_benchmarks")


def environment():
    """Device, backend and versions, for the header of every result."""
    import keras_hub

    info = {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if info["backend"] == "jax":
        import jax

        info["jax"] = jax.__version__
        info["device"] = str(jax.devices()[0].device_kind)
    elif info["backend"] == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        gpus = tf.config.list_physical_devices("GPU")
        info["device"] = "GPU" if gpus else "CPU"
    return info


def block(x):
    """Waits for (possibly asynchronous) device work producing `x`: a
    tensor, or a dict / list / tuple of them (anything else, e.g. the
    strings `generate` returns, is already on the host)."""
    if isinstance(x, dict):
        for v in x.values():
            block(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            block(v)
    elif hasattr(x, "block_until_ready"):
        x.block_until_ready()
    elif keras.ops.is_tensor(x):
        keras.ops.convert_to_numpy(x)
    return x


class StepTimer(keras.callbacks.Callback):
    """Appends the wall seconds of every `fit` step to `out` (the step's
    loss is read at the step's end, which waits for the device)."""

    def __init__(self, out):
        super().__init__()
        self.out = out
        self._start = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs:
            float(logs["loss"])
        self.out.append(time.perf_counter() - self._start)


def step_summary(step_seconds, *, wall_seconds=None, steps=None):
    """`{"mean", "median", "worst"}` seconds per step: what a user pays.

    `mean` is total wall time over steps (`wall_seconds / steps` when
    given: the whole `fit` calls, every expensive step included; else the
    mean of `step_seconds`); `median` and `worst` are the median and the
    maximum of the per-step times, reported beside the mean (a median
    alone hides periodic expensive steps such as matrix roots).
    """
    step_seconds = [float(t) for t in step_seconds]
    if wall_seconds is None:
        mean = statistics.mean(step_seconds)
    else:
        mean = float(wall_seconds) / steps
    return {
        "mean": mean,
        "median": statistics.median(step_seconds),
        "worst": max(step_seconds),
    }


def time_fit_interleaved(entries, *, rounds=5, steps_per_round=10, warmup=3):
    """Seconds per `fit` step of several compiled models, measured in turns.

    `entries` maps a name to `(model, x, y, batch_size)`. Every model is
    warmed up first (`warmup` steps, at most `steps_per_round`:
    compilation and any all-at-once first step); then each round fits
    every model for `steps_per_round` steps (one `fit`, data in order), in
    an order rotated every round, so that slow drifts of the machine
    (other processes, a noisy virtual machine) fall on all entries alike
    instead of on whichever ran during the slow spell. Choose
    `steps_per_round` as a whole number of any periodic expensive step's
    periods.

    Returns `{name: {"mean", "median", "worst", "rounds"}}`: `mean` = total
    wall time of the timed `fit` calls / timed steps, `median` / `worst`
    of the per-step times (`StepTimer`), `rounds` the mean step of each
    round (paired by round across names).
    """
    names = list(entries)
    data = {}
    for name in names:
        model, x, y, batch = entries[name]
        n = batch * steps_per_round
        reps = int(np.ceil(n / len(np.asarray(_first(x)))))
        data[name] = (_tile(x, reps, n), _tile(y, reps, n))
        warm = batch * min(warmup, steps_per_round)
        model.fit(
            _slice(data[name][0], warm),
            _slice(data[name][1], warm),
            batch_size=batch,
            epochs=1,
            verbose=0,
            shuffle=False,
        )
    steps = {name: [] for name in names}
    walls = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            model, _, _, batch = entries[name]
            xs, ys = data[name]
            start = time.perf_counter()
            model.fit(
                xs,
                ys,
                batch_size=batch,
                epochs=1,
                verbose=0,
                shuffle=False,
                callbacks=[StepTimer(steps[name])],
            )
            walls[name].append(time.perf_counter() - start)
    out = {}
    for name in names:
        out[name] = step_summary(
            steps[name],
            wall_seconds=sum(walls[name]),
            steps=rounds * steps_per_round,
        )
        out[name]["rounds"] = [w / steps_per_round for w in walls[name]]
    return out


def time_calls_interleaved(fns, *, rounds=5, warmup=1):
    """Seconds per call of several compiled functions, measured in turns.

    `fns` maps a name to a function of no arguments (its result is waited
    for with `block`). Every function is called `warmup` times first
    (compilation; 0 when the caller already did); then each round calls
    every function once, in an order rotated every round. Returns
    `{name: {"mean", "median", "worst", "rounds"}}` of the per-call
    seconds (`rounds`: the call of each round, in order).
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            block(fns[name]())
    calls = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            block(fns[name]())
            calls[name].append(time.perf_counter() - start)
    out = {}
    for name, seconds in calls.items():
        out[name] = step_summary(seconds)
        out[name]["rounds"] = seconds
    return out


def _slice(x, n):
    if isinstance(x, dict):
        return {k: v[:n] for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [v[:n] for v in x]
    return x[:n]


def _first(x):
    if isinstance(x, dict):
        return next(iter(x.values()))
    if isinstance(x, (list, tuple)):
        return x[0]
    return x


def _tile(x, reps, n):
    if isinstance(x, dict):
        return {k: _tile(v, reps, n) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_tile(v, reps, n) for v in x]
    x = np.asarray(x)
    return np.concatenate([x] * reps, axis=0)[:n]


def peak_rss_mib():
    """Peak resident memory of this process so far (MiB, Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def variables_bytes(variables):
    """Total bytes of a list of Keras variables (e.g. optimizer state)."""
    total = 0
    for v in variables:
        dtype = np.dtype(keras.backend.standardize_dtype(v.dtype))
        total += int(np.prod(v.shape)) * dtype.itemsize
    return total


def mean_std(values):
    values = [float(v) for v in values]
    if len(values) == 1:
        return values[0], 0.0
    return statistics.mean(values), statistics.stdev(values)


def fmt(value, digits=4):
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows, columns=None):
    """Renders a list of dicts as a GitHub markdown table.

    Without `columns`, the table has every column that any row has, in
    order of first appearance (rows lacking one show an empty cell).
    """
    if not rows:
        return "(no rows)\n"
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(c for c in row if c not in columns)
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append(
            "| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |"
        )
    return "\n".join(lines) + "\n"


def ratio_table(rows, *, key, value, peer):
    """Adds `<value>_ratio` to every row: `row[value] / peer_row[value]`,
    where `peer_row` is the row whose `key` equals `peer`."""
    peer_rows = [r for r in rows if r[key] == peer]
    if not peer_rows:
        raise ValueError(f"peer {peer!r} not found in column {key!r}")
    base = peer_rows[0][value]
    for r in rows:
        r[f"{value}_ratio"] = r[value] / base if base else float("nan")
    return rows


def result_path(name, suffix):
    """Where result `name` + `suffix` is written: `RESULTS_DIR`, or
    `QUICK_DIR` for a smoke run (`name` ending in `_quick`)."""
    folder = QUICK_DIR if name.endswith("_quick") else RESULTS_DIR
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{name}{suffix}")


def repo_relative(path):
    """`path` relative to the repository root, for result files (they must
    not name the machine's folders)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.relpath(os.path.abspath(path), root)


def write_results(name, tables, *, meta=None, notes="", sources=None):
    """Writes `results/<name>.json` and `results/<name>.md`.

    Args:
        name: file stem, e.g. "shampoo_regression_jax".
        tables: dict of table title -> list of row dicts.
        meta: extra JSON-serialisable settings (steps, seeds, sizes...).
        notes: free markdown appended after the tables.
        sources: repo-relative source files of the measured component;
            `None` takes them from `freshness.COMPONENTS` by name prefix.
    Returns:
        The markdown text (also printed by the caller if wanted).
    """
    env = environment()
    record = freshness.provenance(name, sources)
    payload = {
        "environment": env,
        "provenance": record,
        "meta": meta or {},
        "tables": tables,
    }
    text = _write(name, payload, notes)
    # The verdicts are the one rule's (benchmarks/claims.py): written first
    # in the markdown; a script's own verdict words are marked superseded.
    from benchmarks import claims

    if claims.reverdict(name):
        with open(result_path(name, ".md")) as f:
            text = f.read()
    return text


def _write(name, payload, notes):
    with open(result_path(name, ".json"), "w") as f:
        json.dump(payload, f, indent=2, default=float)
    env, meta = payload["environment"], payload.get("meta")
    header = ", ".join(f"{k} {v}" for k, v in env.items())
    record = payload.get("provenance") or {}
    if record.get("git_commit"):
        header += f", commit {record['git_commit'][:12]}"
        if record.get("sources_uncommitted"):
            header += " (component sources had uncommitted changes)"
    md = [f"# {name}\n", f"_{header}_\n"]
    if meta:
        md.append(
            "Settings: " + ", ".join(f"{k}={v}" for k, v in meta.items()) + "\n"
        )
    for title, rows in payload["tables"].items():
        md.append(f"\n## {title}\n\n")
        md.append(markdown_table(rows))
    if notes:
        md.append("\n" + notes + "\n")
    text = "".join(md)
    with open(result_path(name, ".md"), "w") as f:
        f.write(text)
    return text


# === Shared by the benchmark scripts ===


def _seed_items(text):
    items = [s for s in str(text).replace(",", " ").split() if s]
    try:
        return [int(s) for s in items]
    except ValueError:
        raise ValueError(
            f"`--seeds` takes integers, e.g. `--seeds 0 1 2 3 4`. "
            f"Received: {text!r}"
        ) from None


def add_seeds_argument(parser, default=(0, 1, 2, 3, 4)):
    """`--seeds`: the list of seeds, the same meaning in every script.

    Accepts `--seeds 0 1 2` and `--seeds 0,1,2`; `args.seeds` is a list of
    ints. Every arm of a comparison runs on every listed seed (verdicts
    need at least five, see `benchmarks/stats.py`).
    """
    parser.add_argument(
        "--seeds",
        nargs="+",
        default=list(default),
        type=_seed_items,
        help="seeds, e.g. --seeds 0 1 2 3 4 (default: %(default)s)",
    )


def seeds_of(args):
    """`args.seeds` flattened to a list of ints (after `add_seeds_argument`,
    each command-line item parses to a list)."""
    out = []
    for item in args.seeds:
        out.extend(item if isinstance(item, list) else [int(item)])
    return out


def warmup_cosine(peak, steps, *, warmup_fraction=0.1, floor=0.0):
    """Linear warm-up from 0 to `peak` over `warmup_fraction` of `steps`
    (at least one step), then cosine decay to `floor * peak` at `steps`:
    a Keras `CosineDecay` whose warm-up plus decay last exactly `steps`."""
    warmup = max(1, int(steps * warmup_fraction))
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        steps - warmup,
        alpha=floor,
        warmup_target=peak,
        warmup_steps=warmup,
    )


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def at_grid_edge(grid, best):
    """Whether `best` is the smallest or largest value of `grid` (a best
    value there may lie outside the grid: extend it or flag it). A one-point
    grid is always at its edge."""
    grid = sorted(grid)
    return best in (grid[0], grid[-1])


def lr_grid(center, points=3):
    """`points` learning rates on the 1-3-10 ladder (1e-3, 3e-3, 1e-2, ...)
    centred on `center` (itself on the ladder): the same grid shape and
    size for every method of a comparison, each around its own default
    (fair tuning). `lr_grid(3e-3)` is `[1e-3, 3e-3, 1e-2]`."""
    first = _ladder_index(center) - (points - 1) // 2
    return [_ladder(i) for i in range(first, first + points)]


def _ladder_index(value, name="center"):
    """The index of `value` on the 1-3-10 ladder (`_ladder`'s inverse);
    `name` is the argument named in the error."""
    k = int(np.floor(np.log10(value) + 1e-9))
    mantissa = value / 10.0**k
    if not np.isclose(mantissa, 1.0) and not np.isclose(mantissa, 3.0):
        raise ValueError(
            f"`{name}` must be on the 1-3-10 ladder (e.g. 1e-3, 3e-3). "
            f"Received: {name}={value}"
        )
    return 2 * k + int(np.isclose(mantissa, 3.0))


def _ladder(index):
    """The 1-3-10 ladder: index 2k is 10^k, index 2k + 1 is 3 * 10^k."""
    return float(f"{(3.0 if index % 2 else 1.0) * 10.0 ** (index // 2):.1g}")


def extend_grid(grid, best):
    """`grid` (on the 1-3-10 ladder) with one more ladder point beyond
    `best`, which sits at its lower or upper edge."""
    grid = sorted(grid)
    step = -1 if best == grid[0] else 1
    return sorted(set(grid) | {_ladder(_ladder_index(best, "best") + step)})


def tune_then_seeds(grid, run, seeds, *, score, tune_seed=None):
    """Tune on one seed, rerun the best on every seed, flag the grid edge.

    Every value of `grid` runs once on `tune_seed` (default `seeds[0]`):
    `run(value, seed)` returns a result, `score(result)` a number, lower
    is better (a diverged run should score `inf`). The best value (the
    first of equal scores) then runs on every seed of `seeds`; the tuning
    run is reused for `tune_seed`. A best value at the grid's edge may lie
    outside it: `at_edge` says so, to extend the grid or flag the verdict.

    Returns a dict: `best` (the chosen value), `at_edge`, `tuning` (a list
    of `(value, result)` on the tuning seed) and `results` (one result per
    seed of `seeds`, in order).
    """
    tune_seed = seeds[0] if tune_seed is None else tune_seed
    tuning = [(value, run(value, tune_seed)) for value in grid]
    best, best_result = min(tuning, key=lambda vr: score(vr[1]))
    results = [
        best_result if seed == tune_seed else run(best, seed) for seed in seeds
    ]
    return {
        "best": best,
        "at_edge": at_grid_edge(grid, best),
        "tuning": tuning,
        "results": results,
    }


def timing_columns(summary, mean, median=None, worst=None):
    """The columns of a timing summary (`step_summary`, or an entry of
    `time_calls_interleaved` / `time_fit_interleaved`) for a results row:
    its mean under `mean`, its median and worst beside it under `median`
    and `worst` (by default `<mean>_median` and `<mean>_worst`)."""
    return {
        mean: summary["mean"],
        median or f"{mean}_median": summary["median"],
        worst or f"{mean}_worst": summary["worst"],
    }


def write_partial(name, record):
    """Writes `record` to `<name>_partial.json` beside the results, so that
    an interrupted long run leaves what it has measured; `record=None`
    removes that file (once the complete record is written)."""
    path = result_path(name + "_partial", ".json")
    if record is None:
        if os.path.exists(path):
            os.remove(path)
        return
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=float)
