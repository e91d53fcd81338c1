"""The streamed k-means at corpus scale, measured (issue 27;
`python -m benchmarks.curation --part stream` or
`python -m benchmarks.curation_stream`).

- peak resident memory of a streamed fit at 200k / 1M / 2M rows x 64
  (k = 256, batches of 65,536; each size in a fresh process, rows
  generated batch by batch so nothing but the fit holds them);
- wall time and objective against scikit-learn
  `MiniBatchKMeans.partial_fit` over the same stream and `faiss.Kmeans`
  at the same number of passes over the data (ours: 1 seeding pass,
  `passes - 2` Lloyd passes, 1 pass that measures the final objective;
  scikit-learn: `passes` passes of `partial_fit`; faiss: `passes`
  iterations over the array in memory), fresh data every round,
  interleaved rounds; the table gives the mean step (total wall time over
  all steps: one step is one batch of one pass) with the median and the
  worst round's step beside it. Each round's batches are generated
  before the round, untimed, and every method reads the same batches from
  memory: the timings are the algorithms' (faiss's time includes
  concatenating them into the array it needs), not the synthetic
  generator's (earlier results timed the generator inside every pass of
  the streamed methods, about half of their step);
- 8 virtual JAX devices against 1 (equality, time ratio).
"""

import argparse
import os
import time

import numpy as np

from benchmarks import freshness
from benchmarks import harness

STREAM_DIM = 64
STREAM_K = 256
STREAM_BATCH = 65536


def stream_batches(rows, seed, batch=STREAM_BATCH, dim=STREAM_DIM):
    """A callable giving a fresh iterator over `rows` rows of a mixture of
    `STREAM_K` Gaussians in `dim` dimensions, generated batch by batch
    (the same rows on every pass; nothing holds the whole set)."""
    centres = np.random.default_rng([seed, 0]).normal(
        scale=3.0, size=(STREAM_K, dim)
    )

    def batches():
        for i, start in enumerate(range(0, rows, batch)):
            rng = np.random.default_rng([seed, 1, i])
            n = min(batch, rows - start)
            which = rng.integers(0, STREAM_K, n)
            x = centres[which] + rng.normal(size=(n, dim))
            yield x.astype("float32")

    return batches


def inertia_of(centroids, batches):
    """Sum of squared distances to the nearest centroid (NumPy, float64
    accumulation), the one objective every method is scored by."""
    c = np.asarray(centroids, "float32")
    c2 = (c * c).sum(1)
    total = 0.0
    for x in batches():
        d = (x * x).sum(1)[:, None] - 2 * x @ c.T + c2[None]
        total += float(np.maximum(d.min(1), 0).sum(dtype="float64"))
    return total


def _child(spec):
    """Runs in a fresh process: `rss:<rows>` or `devices:<rows>`."""
    import json

    from keras_gr.curation import KMeans

    kind, rows = spec.split(":")
    rows = int(rows)
    if kind == "rss":
        base = harness.peak_rss_mib()
        km = KMeans(
            STREAM_K, max_iter=2, tolerance=0.0, stream_batch_size=STREAM_BATCH
        )
        t0 = time.perf_counter()
        km.fit(stream_batches(rows, seed=7))
        result = {
            "rows": rows,
            "peak_rss_mib": harness.peak_rss_mib(),
            "rss_before_fit_mib": base,
            "fit_s": time.perf_counter() - t0,
            "array_mib": rows * STREAM_DIM * 4 / 2**20,
        }
    else:
        import keras

        def fit(seed):
            km = KMeans(
                STREAM_K,
                max_iter=3,
                tolerance=0.0,
                stream_batch_size=STREAM_BATCH // 4,
                seed=0,
            )
            t0 = time.perf_counter()
            km.fit(stream_batches(rows, seed, batch=STREAM_BATCH // 4))
            return km, time.perf_counter() - t0

        fit(100)  # compile (one device)
        devices = keras.distribution.list_devices()
        dp = keras.distribution.DataParallel(devices=devices)
        keras.distribution.set_distribution(dp)
        fit(100)  # compile (eight devices)
        keras.distribution.set_distribution(None)
        times = {"1 device": [], f"{len(devices)} devices": []}
        diffs, objective, labels = [], [], []
        for r in range(3):
            keras.distribution.set_distribution(None)
            one, t_one = fit(r)
            keras.distribution.set_distribution(dp)
            many, t_many = fit(r)
            keras.distribution.set_distribution(None)
            times["1 device"].append(t_one)
            times[f"{len(devices)} devices"].append(t_many)
            diffs.append(float(np.abs(one.centroids - many.centroids).max()))
            objective.append(abs(many.inertia / one.inertia - 1.0))
            batches = stream_batches(rows, r, batch=STREAM_BATCH // 4)
            keras.distribution.set_distribution(None)
            one_labels = one.predict(batches)
            keras.distribution.set_distribution(dp)
            many_labels = many.predict(batches)
            keras.distribution.set_distribution(None)
            labels.append(bool(np.array_equal(one_labels, many_labels)))
        result = {
            "rows": rows,
            "devices": len(devices),
            "max_centroid_diff": max(diffs),
            "centroid_diff_per_round": diffs,
            "relative_objective_diff_per_round": objective,
            "labels_equal_per_round": labels,
            "median_s": {k: float(np.median(v)) for k, v in times.items()},
        }
    print("RESULT " + json.dumps(result))


def _run_child(spec, devices=1):
    import json
    import subprocess
    import sys

    env = dict(os.environ)
    if devices > 1:
        env["KERAS_BACKEND"] = "jax"
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.curation_stream", "--child", spec],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def _time_stream_methods(args):
    """Each method reads the stream `args.passes` times (see the module
    docstring); returns one row per method: the mean step (total wall
    time / steps, a step being one batch of one pass), the median and the
    worst round's step, and the mean objective (`inertia_of`)."""
    import faiss
    from sklearn.cluster import MiniBatchKMeans

    from keras_gr.curation import KMeans

    rows, passes = args.stream_rows, args.passes
    if passes < 3:
        raise ValueError(f"--passes must be at least 3. Received: {passes}")

    def ours(batches, seed):
        km = KMeans(
            STREAM_K,
            max_iter=passes - 2,  # + 1 seeding pass + 1 objective pass
            tolerance=0.0,
            stream_batch_size=STREAM_BATCH,
            seed=seed,
        ).fit(batches)
        return km.centroids

    def sklearn(batches, seed):
        mb = MiniBatchKMeans(STREAM_K, random_state=seed, n_init=1)
        for _ in range(passes):
            for x in batches():
                mb.partial_fit(x)
        return mb.cluster_centers_

    def faiss_kmeans(batches, seed):
        x = np.concatenate(list(batches()))  # faiss needs the array
        km = faiss.Kmeans(
            STREAM_DIM,
            STREAM_K,
            niter=passes,
            seed=seed + 1,
            max_points_per_centroid=rows,
        )
        km.train(x)
        return km.centroids

    methods = {
        "keras_gr KMeans (streamed full Lloyd)": ours,
        "sklearn MiniBatchKMeans.partial_fit": sklearn,
        "faiss.Kmeans (in memory)": faiss_kmeans,
    }
    ours(stream_batches(rows, seed=999), 0)  # compile once per shape
    steps = passes * -(-rows // STREAM_BATCH)
    times = {k: [] for k in methods}
    objective = {k: [] for k in methods}
    for r in range(args.stream_rounds):
        # Fresh data every round, generated before it (untimed).
        data = list(stream_batches(rows, seed=r)())

        def batches(data=data):
            return iter(data)

        names = list(methods) if r % 2 == 0 else list(methods)[::-1]
        for name in names:
            t0 = time.perf_counter()
            centroids = methods[name](batches, r)
            times[name].append(time.perf_counter() - t0)
            objective[name].append(inertia_of(centroids, batches))
    rows_out = []
    for name in methods:
        step = harness.step_summary(
            [t / steps for t in times[name]],
            wall_seconds=sum(times[name]),
            steps=steps * len(times[name]),
        )
        rows_out.append(
            {
                "method": name,
                "passes": passes,
                "mean_step_s": step["mean"],
                "median_step_s": step["median"],
                "worst_step_s": step["worst"],
                "mean_objective": float(np.mean(objective[name])),
            }
        )
    peer = "sklearn MiniBatchKMeans.partial_fit"
    harness.ratio_table(rows_out, key="method", value="mean_step_s", peer=peer)
    harness.ratio_table(
        rows_out, key="method", value="mean_objective", peer=peer
    )
    return rows_out


MULTI_HOST_NOTE = """## Multi-host TPU slices and a 1B-document pool (on paper)

**What runs today.** The streamed fit runs on one process on JAX and
TensorFlow; under `keras.distribution.DataParallel` on JAX each padded batch
is laid out along the devices of the mesh and XLA all-reduces the
per-centroid sums, counts and inertia (tested on 8 virtual CPU devices:
equal to one device within 1e-5). Across processes (tested: two CPU
processes with gloo collectives, each streaming its own shard of unequal
length, equal to the one-process fit within 1e-5, identical labels on
non-tied points: `tests/curation/test_multiprocess.py`), each process
passes its own padded batch and `jax.make_array_from_process_local_data`
(`keras_gr._backend.global_batch`) assembles the global batch; the
seeding samples (bottom-s by a hash of each row, so they merge exactly:
keys all-gathered, then only the chosen rows), row counts and float64
sums are all-gathered.

**How the same script runs on a multi-host TPU slice.** Every host runs
the same script; it calls `keras.distribution.initialize()` (which calls
`jax.distributed.initialize`, from the TPU environment) before anything
else, sets `DataParallel(devices=keras.distribution.list_devices())` over
all chips of the slice, and passes `KMeans.fit` only its own shard of the
pool (file `i` of `N` by `jax.process_index()`). The Lloyd statistics are
all-reduced over the slice by the same compiled program, and every host
takes the same stopping decision from the same reduced shift; `predict`
then labels each host's own shard on its own chips. Not measured here (no
TPU slice): only the two-process CPU test above.

**Cost of a 1B-document pool** (d = 768 float32, k = 10,000, H hosts):
- passes over the embeddings: 1 (seeding: sample, row count, variance) +
  L Lloyd passes (L = `max_iter`, typically 10-20; or `max_iter` mini-batch
  steps) + 1 (final inertia) + 1 (`predict` to the labels file) = L + 3;
  the dedup reads each embedding once more (gathered by cluster), the
  balanced selection reads only the labels (4 bytes per row) twice;
- data per host: 3.07 TB / H of embeddings on disk (768 x 4 bytes x 1B),
  streamed, never resident;
- memory per host: one batch (b x d floats: 65,536 x 768 x 4 = 201 MB) and
  its distance matrix (b x k floats: 2.6 GB at k = 10,000; lower b to fit),
  the statistics (k x d float64: 61 MB), the seeding sample
  (`sample_size` x d: the default `max(40 k, 10000)` = 400,000 rows =
  1.2 GB, could be lowered; the seeding all-gathers the sample's keys,
  H x 3.2 MB, then only the merged sample's rows), and for the dedup the
  largest cluster's rows (about n / k x d x 4 bytes: 0.3 GB for balanced
  clusters) plus 2048 x 2048 similarity tiles;
  the dedup's scratch file holds 8 bytes per row (8 GB / H on disk).
None of these grows with the pool except the disk files.
"""


def run_stream(args):
    import keras

    backend = keras.backend.backend()
    rss = [_run_child(f"rss:{rows}") for rows in args.rss_rows]
    timing = _time_stream_methods(args)
    devices = None
    if backend == "jax":
        devices = _run_child(f"devices:{args.device_rows}", devices=8)
    rss_rows = [
        {
            "rows": r["rows"],
            "peak_rss_mib": r["peak_rss_mib"],
            "in_memory_array_mib": r["array_mib"],
            "fit_s (2 Lloyd passes + 2)": r["fit_s"],
        }
        for r in rss
    ]
    flat = rss[-1]["peak_rss_mib"] / rss[0]["peak_rss_mib"]
    by = {r["method"]: r for r in timing}
    ours = by["keras_gr KMeans (streamed full Lloyd)"]
    sk = by["sklearn MiniBatchKMeans.partial_fit"]
    fa = by["faiss.Kmeans (in memory)"]
    lines = [
        "## Verdicts\n",
        "Measured on this project's 2-core CPU machine; ratios come from "
        "interleaved rounds in one process. " + args.note + "\n",
        f"- *Peak memory flat* ({rss[-1]['rows']:,} rows within 1.2x of "
        f"{rss[0]['rows']:,}): "
        + ("**yes**" if flat <= 1.2 else "**no**")
        + f" ({flat:.2f}x; the in-memory {rss[-1]['rows']:,} x 64 array "
        "alone would be "
        f"{rss[-1]['array_mib']:.0f} MiB).",
        "- *Faster than scikit-learn at an objective no worse*: "
        + (
            "**yes**"
            if ours["mean_step_s"] < sk["mean_step_s"]
            and ours["mean_objective"] <= sk["mean_objective"]
            else "**no**"
        )
        + f" (mean step {ours['mean_step_s'] / sk['mean_step_s']:.2f}x, "
        "objective "
        f"{ours['mean_objective'] / sk['mean_objective']:.4f}x).",
        "- *Within 2x of faiss, objective within 1%*: "
        + (
            "**yes**"
            if ours["mean_step_s"] <= 2 * fa["mean_step_s"]
            and ours["mean_objective"] <= 1.01 * fa["mean_objective"]
            else "**no**"
        )
        + f" (mean step {ours['mean_step_s'] / fa['mean_step_s']:.2f}x "
        "faiss, objective "
        f"{ours['mean_objective'] / fa['mean_objective']:.4f}x).",
    ]
    tables = {
        "Peak RSS of a streamed fit (k = 256, d = 64, batches of 65,536)": (
            rss_rows
        ),
        f"{args.stream_rows:,} x 64, k = 256, {args.passes} passes": timing,
    }
    if devices is not None:
        names = list(devices["median_s"])
        ratio = devices["median_s"][names[1]] / devices["median_s"][names[0]]
        tables[
            f"8 virtual CPU devices vs 1 ({args.device_rows:,} x 64, k = 256)"
        ] = [
            {"devices": name, "median_s": value}
            for name, value in devices["median_s"].items()
        ]
        diffs = devices["centroid_diff_per_round"]
        equal = sum(d < 1e-5 for d in diffs)
        exact = sum(d == 0.0 for d in diffs) + sum(
            x == 0.0 for x in devices["relative_objective_diff_per_round"]
        )
        labels = devices["labels_equal_per_round"]
        objective = max(devices["relative_objective_diff_per_round"])
        lines.append(
            "- *8 virtual devices equal 1* (centroids within 1e-5): "
            + (
                "**yes**"
                if equal == len(diffs)
                else "**partly**"
                if equal
                else "**no**"
            )
            + f" ({equal} of {len(diffs)} rounds; centroid differences "
            + ", ".join(f"{d:.2g}" for d in diffs)
            + f"; objectives within {objective:.1g} relative; labels of "
            f"every point identical in {sum(labels)} of {len(labels)} "
            "rounds"
            + (
                "; bit for bit: centroids and inertia exactly equal in "
                "every round"
                if exact == 2 * len(diffs)
                else ""
            )
            + "). Per-centroid sums are float32 within blocks of "
            "`streaming.SUM_BLOCK` rows that never straddle two devices "
            "and float64 across blocks on the host, in order, so the "
            "device count does not change the summation order. Time "
            f"ratio {ratio:.2f}x (8 devices / 1): the 8 virtual devices "
            "share the same 2 cores, so this ratio shows overhead and "
            "predicts nothing about real devices."
        )
    meta = {
        "dim": STREAM_DIM,
        "k": STREAM_K,
        "batch": STREAM_BATCH,
        "passes": args.passes,
        "rounds": args.stream_rounds,
        "rss_rows": args.rss_rows,
        "stream_rows": args.stream_rows,
        "passes_note": "every method reads the data `passes` times: ours "
        "1 seeding pass + (passes - 2) Lloyd passes + 1 objective pass; "
        "sklearn: passes x partial_fit over the stream; faiss: niter = "
        "passes on the whole array",
    }
    name = f"curation_stream_{backend}" + ("_quick" if args.quick else "")
    notes = "\n".join(lines) + "\n\n" + MULTI_HOST_NOTE
    print(
        harness.write_results(
            name,
            tables,
            meta=meta,
            notes=notes,
            sources=sources("curation_stream"),
        )
    )


def sources(part="curation"):
    """The files a curation result depends on: `part`'s component in
    `benchmarks.freshness` ("curation" for the in-memory parts,
    "curation_stream" for this one)."""
    return freshness.component_sources(part)


def add_arguments(parser):
    """The stream part's command-line options."""
    parser.add_argument("--stream-rows", type=int, default=500_000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument(
        "--rss-rows",
        type=int,
        nargs="*",
        default=[200_000, 1_000_000, 2_000_000],
    )
    parser.add_argument("--stream-rounds", type=int, default=3)
    parser.add_argument("--device-rows", type=int, default=200_000)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run, results to /tmp"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--note", default="", help="text added to the results notes"
    )
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    run_stream(args)


if __name__ == "__main__":
    main()
