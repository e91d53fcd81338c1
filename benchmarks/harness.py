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
    """Waits for (possibly asynchronous) device work producing `x`."""
    if hasattr(x, "block_until_ready"):
        x.block_until_ready()
    else:
        keras.ops.convert_to_numpy(x)
    return x


def time_fn(fn, *, warmup=2, repeats=10):
    """Median wall time (seconds) of `fn()` after `warmup` calls.

    `fn` must return something `block` can wait for (or None).
    """
    for _ in range(warmup):
        out = fn()
        if out is not None:
            block(out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if out is not None:
            block(out)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_fit_steps(model, x, y, *, batch_size, steps=20, warmup_steps=3):
    """Median seconds per `fit` step (compiled), measured with a callback."""
    times = []

    class _Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self._t)

    n = batch_size * (steps + warmup_steps)
    reps = int(np.ceil(n / len(np.asarray(_first(x)))))
    xs = _tile(x, reps, n)
    ys = _tile(y, reps, n)
    model.fit(
        xs,
        ys,
        batch_size=batch_size,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[_Timer()],
    )
    return statistics.median(times[warmup_steps:])


def time_fit_interleaved(entries, *, rounds=5, steps_per_round=10):
    """Seconds per `fit` step of several compiled models, measured in turns.

    `entries` maps a name to `(model, x, y, batch_size)`. Every model is
    warmed up (compilation) first; then each round fits every model for
    `steps_per_round` steps, in an order rotated every round, so that slow
    drifts of the machine (other processes, a noisy virtual machine) fall
    on all entries alike instead of on whichever ran during the slow spell.

    Returns `{name: {"median": s, "min": s, "rounds": [s, ...]}}` with the
    per-step time of each round (wall time of the round's `fit` / steps).
    """
    names = list(entries)
    data = {}
    for name in names:
        model, x, y, batch = entries[name]
        n = batch * steps_per_round
        reps = int(np.ceil(n / len(np.asarray(_first(x)))))
        data[name] = (_tile(x, reps, n), _tile(y, reps, n))
        warm = batch * min(3, steps_per_round)
        model.fit(
            _slice(data[name][0], warm),
            _slice(data[name][1], warm),
            batch_size=batch,
            epochs=1,
            verbose=0,
            shuffle=False,
        )
    per_round = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            model, _, _, batch = entries[name]
            xs, ys = data[name]
            start = time.perf_counter()
            model.fit(
                xs, ys, batch_size=batch, epochs=1, verbose=0, shuffle=False
            )
            per_round[name].append(
                (time.perf_counter() - start) / steps_per_round
            )
    return {
        name: {
            "median": statistics.median(t),
            "min": min(t),
            "rounds": t,
        }
        for name, t in per_round.items()
    }


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


def rewrite_results(name, payload, *, notes=""):
    """Rewrites `results/<name>.{json,md}` from a loaded `payload` (a
    recomputed verdict on recorded numbers): the environment and the
    provenance stay the recorded run's (a missing provenance is first
    taken from git history, see `freshness.backfill`)."""
    path = result_path(name, ".json")
    if not payload.get("provenance") and freshness.backfill(path):
        with open(path) as f:
            payload["provenance"] = json.load(f)["provenance"]
    return _write(name, payload, notes)


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
