"""Embeddings for pretraining data curation (arXiv 2502.02494), measured.

The paper's three measures for four embedders side by side on the offline
labelled corpus (`keras_gr.data.multi_source_corpus`: prose / code /
docstrings), and the k-means against scikit-learn:

- `--part measures`: a reference LM (a local Gemma preset pretrained on the
  corpus's training split) gives every pool document a loss; the embedders
  are the mean input-token embedding and the mean final hidden state of that
  LM, a hashed 1-2-gram bag of words, and random vectors (the floor). For
  each: loss correlation (same-cluster / random-pair loss gap ratio and the
  Spearman correlation of distance vs loss gap), source separation (purity,
  NMI, 5-NN accuracy), and curation quality: a small LM pretrained from
  scratch on a cluster-balanced selection vs a random selection of the same
  size, same steps and seeds (validation loss on the natural validation
  split and on a source-balanced one).
- `--part kmeans`: `keras_gr.curation.KMeans` vs `sklearn.cluster.KMeans`
  at 20k x 64, k = 64 (n_init = 1 each), wall time in interleaved rounds
  after one warm-up fit on other data, fresh data of the same shape for
  every round (a warm refit of one array would hide compile costs).
- `--part stream`: the streamed k-means at corpus scale, in
  `benchmarks.curation_stream` (peak memory, against scikit-learn and faiss
  at the same number of passes, 8 devices against 1).

Run: `KERAS_BACKEND=jax python -m benchmarks.curation [--part ...]`.
"""

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks import curation_stream
from benchmarks import harness


def _intrinsic_summary(rows):
    """What the intrinsic measures show, in words without a verdict: they
    are one k-means fit per embedder (no seeds), so the one rule does not
    judge them; the pretraining comparison carries the verdicts."""
    by = {r["embedder"]: r for r in rows}
    lm, floor = by["mean token embedding"], by["random (floor)"]
    real = [r for r in rows if r is not floor]
    signal = [
        r["embedder"]
        for r in real
        if r["loss_gap_ratio"] < floor["loss_gap_ratio"]
        and r["purity"] > floor["purity"]
    ]
    others = [r for r in real if r is not lm]
    checks = [
        ("loss-gap ratio", "loss_gap_ratio", min),
        ("purity", "purity", max),
        ("5-NN accuracy", "knn_acc", max),
    ]
    detail = "; ".join(
        f"{label} {lm[key]:.3f} vs best other "
        f"{pick(r[key] for r in others):.3f}"
        for label, key, pick in checks
    )
    return (
        "## Intrinsic measures (descriptive: one fit each, not judged)\n\n"
        f"- {len(signal)} of {len(real)} embedders ({', '.join(signal)}) "
        "have a loss-gap ratio below the random floor's "
        f"({floor['loss_gap_ratio']:.3f}) and a purity above it "
        f"({floor['purity']:.3f}).\n"
        f"- Mean token embedding against the best other embedder: {detail}.\n"
    )


def _reference_preset(corpus, args):
    from keras_gr.presets import build_local_preset

    folder = tempfile.mkdtemp(prefix="curation_corpus_")
    path = os.path.join(folder, "corpus.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(t.replace("\n\n", "\n") for t in corpus))
    return build_local_preset(
        path,
        vocabulary_size=args.vocabulary_size,
        num_layers=2,
        hidden_dim=64,
        num_heads=2,
        head_dim=32,
        intermediate_dim=256,
        sequence_length=128,
        train_steps=args.reference_steps,
        batch_size=16,
        learning_rate=3e-3,
        verbose=0,
    )


def run_measures(args):
    import keras_hub

    from keras_gr.curation import BackboneEmbedder
    from keras_gr.curation import HashedNgramEmbedder
    from keras_gr.curation import KMeans
    from keras_gr.curation import RandomEmbedder
    from keras_gr.curation import balanced_selection
    from keras_gr.curation import loss_correlation
    from keras_gr.curation import pretraining_loss
    from keras_gr.curation import sequence_losses
    from keras_gr.curation import source_separation
    from keras_gr.data import multi_source_corpus

    full = multi_source_corpus()
    t0 = time.perf_counter()
    preset = _reference_preset(full.train_texts, args)
    preset_seconds = time.perf_counter() - t0
    corpus = multi_source_corpus(max_documents_per_source=args.per_source)
    texts, sources = corpus.train_texts, corpus.train_sources
    lm = keras_hub.models.CausalLM.from_preset(preset)
    tokenizer = lm.preprocessor.tokenizer
    t0 = time.perf_counter()
    losses = sequence_losses(lm, texts, sequence_length=128)
    loss_seconds = time.perf_counter() - t0
    first = BackboneEmbedder(lm.backbone, tokenizer, sequence_length=128)
    embedders = {
        "mean token embedding": first,
        "mean last hidden state": BackboneEmbedder(
            lm.backbone, tokenizer, pooling="hidden_state", sequence_length=128
        ),
        "hashed n-grams": HashedNgramEmbedder(output_dim=1024),
        "random (floor)": RandomEmbedder(output_dim=64),
    }
    rows, labels_by = [], {}
    for name, embedder in embedders.items():
        t0 = time.perf_counter()
        x = embedder.embed(texts, batch_size=64)
        seconds = time.perf_counter() - t0
        labels = (
            KMeans(args.clusters, metric="cosine", seed=0, num_init=3)
            .fit(x)
            .labels
        )
        labels_by[name] = labels
        lc = loss_correlation(x, losses, cluster_labels=labels, seed=0)
        sep = source_separation(x, sources, seed=0)
        rows.append(
            {
                "embedder": name,
                "dim": x.shape[1],
                "embed_s": seconds,
                "loss_gap_ratio": lc["ratio"],
                "rank_corr": lc["rank_correlation"],
                "purity": sep["purity"],
                "nmi": sep["nmi"],
                "knn_acc": sep["knn_accuracy"],
            }
        )
        print(rows[-1], flush=True)
    quality, per_seed = [], []
    if args.seeds:
        val_natural = corpus.validation_texts
        per = np.bincount(corpus.validation_sources).min()
        balanced_val = [
            t
            for s in range(len(corpus.source_names))
            for t in [
                v
                for v, src in zip(
                    corpus.validation_texts, corpus.validation_sources
                )
                if src == s
            ][:per]
        ]
        validation = {"natural": val_natural, "balanced": balanced_val}
        budget = int(args.budget_fraction * len(texts))
        kwargs = dict(
            num_layers=2,
            hidden_dim=64,
            num_heads=2,
            intermediate_dim=256,
            sequence_length=64,
            steps=args.steps,
            batch_size=16,
            learning_rate=3e-3,
        )
        runs = {name: [] for name in ["random", *embedders]}
        for seed in args.seeds:
            rng = np.random.default_rng(1000 + seed)
            picks = {"random": rng.choice(len(texts), budget, replace=False)}
            for name in embedders:
                picks[name] = balanced_selection(
                    labels_by[name], budget, seed=seed
                )
            for name, idx in picks.items():
                result = pretraining_loss(
                    [texts[i] for i in idx],
                    validation,
                    tokenizer,
                    seed=seed,
                    **kwargs,
                )
                runs[name].append(result)
                print(name, seed, result, flush=True)
        for name, results in runs.items():
            for seed, r in zip(args.seeds, results):
                per_seed.append(
                    {"embedder": name, "seed": seed}
                    | {f"val_{k}": r[k] for k in validation}
                )
        base = {k: np.mean([r[k] for r in runs["random"]]) for k in validation}
        for name, results in runs.items():
            row = {"embedder": name}
            for k in validation:
                m, s = harness.mean_std([r[k] for r in results])
                row[f"val_{k}"] = m
                row[f"val_{k}_std"] = s
                row[f"improvement_{k}"] = base[k] - m
            quality.append(row)
    meta = {
        "pool_documents": len(texts),
        "per_source": args.per_source,
        "clusters": args.clusters,
        "budget_fraction": args.budget_fraction,
        "pretraining_steps": args.steps,
        "seeds": list(args.seeds),
        "reference_lm": "Gemma 2 x 64, vocab "
        f"{args.vocabulary_size}, {args.reference_steps} steps on the "
        "corpus's training split",
        "reference_build_s": round(preset_seconds, 1),
        "loss_pass_s": round(loss_seconds, 1),
    }
    tables = {"Intrinsic measures (loss correlation, source separation)": rows}
    if quality:
        tables["Curation quality (validation loss, mean over seeds)"] = quality
        tables["Curation quality per seed"] = per_seed
    notes = _intrinsic_summary(rows) + (
        "\n## Pretraining comparison\n\nEvery arm (random selection, and "
        "balanced selection over each embedder's clusters) trains the same "
        "small LM with the same seed, steps and validation sets, so the "
        "arms pair by seed. The verdicts (`python -m benchmarks.claims`, "
        "the section at the top) compare each embedder's balanced "
        "selection with random selection and with balanced selection over "
        "clusters of random vectors (the same quotas without any "
        "embedding signal), on the natural validation loss (the pool's "
        "own mix; the balanced split beside it). " + args.note
    )
    name = f"curation_{harness.environment()['backend']}"
    name += "_quick" if args.quick else ""
    text = harness.write_results(
        name, tables, meta=meta, notes=notes, sources=curation_stream.sources()
    )
    _plot(rows, quality, harness.result_path(name, ".png"))
    print(text)


def _plot(rows, quality, path):
    plt = harness.pyplot()
    names = [r["embedder"] for r in rows]
    panels = [
        ("loss_gap_ratio", "loss-gap ratio (lower better)"),
        ("purity", "cluster purity"),
        ("knn_acc", "5-NN source acc."),
    ]
    fig, axes = plt.subplots(1, len(panels) + bool(quality), figsize=(15, 3.6))
    for ax, (key, title) in zip(axes, panels):
        ax.bar(range(len(rows)), [r[key] for r in rows], color="C0")
        ax.set_xticks(
            range(len(rows)), names, rotation=30, ha="right", fontsize=8
        )
        ax.set_title(title)
    if quality:
        ax = axes[-1]
        qn = [r["embedder"] for r in quality]
        ax.bar(
            range(len(quality)),
            [r["val_natural"] for r in quality],
            yerr=[r["val_natural_std"] for r in quality],
            color="C1",
        )
        low = min(r["val_natural"] for r in quality)
        ax.set_ylim(low - 0.1, None)
        ax.set_xticks(
            range(len(quality)), qn, rotation=30, ha="right", fontsize=8
        )
        ax.set_title("pretraining val loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_kmeans(args):
    from sklearn.cluster import KMeans as SklearnKMeans
    from sklearn.datasets import make_blobs

    from keras_gr.curation import KMeans

    def data(seed):
        x, _ = make_blobs(
            20000, 64, centers=64, cluster_std=4.0, random_state=seed
        )
        return x.astype("float32")

    KMeans(64, seed=0).fit(data(10_000))  # compile once per shape
    times = {"keras_gr KMeans": [], "sklearn KMeans": []}
    inertia = {k: [] for k in times}
    for r in range(args.rounds):
        x = data(r)  # fresh data for every fit (issue 26.11)
        order = list(times) if r % 2 == 0 else list(times)[::-1]
        for name in order:
            t0 = time.perf_counter()
            if name == "sklearn KMeans":
                model = SklearnKMeans(64, n_init=1, random_state=r).fit(x)
                value = model.inertia_
            else:
                value = KMeans(64, seed=r).fit(x).inertia
            times[name].append(time.perf_counter() - t0)
            inertia[name].append(value)
    rows = []
    for name in times:
        fit = harness.step_summary(times[name])
        rows.append(
            {
                "method": name,
                "mean_s": fit["mean"],
                "median_s": fit["median"],
                "worst_s": fit["worst"],
                "mean_inertia": float(np.mean(inertia[name])),
            }
        )
    harness.ratio_table(
        rows, key="method", value="mean_s", peer="sklearn KMeans"
    )
    harness.ratio_table(
        rows, key="method", value="mean_inertia", peer="sklearn KMeans"
    )
    ours = rows[0]
    notes = (
        "## Verdicts\n\n- *k-means faster than scikit-learn at 20k x 64, "
        "k = 64*: "
        + ("**yes**" if ours["mean_s_ratio"] < 1 else "**no**")
        + f" (mean fit {ours['mean_s_ratio']:.2f}x sklearn's, over "
        f"{args.rounds} interleaved rounds on fresh data; median and "
        "worst fit in the table).\n"
        "- *objective within 1% of scikit-learn's*: "
        + ("**yes**" if ours["mean_inertia_ratio"] <= 1.01 else "**no**")
        + f" (mean inertia {ours['mean_inertia_ratio']:.4f}x over "
        f"{args.rounds} seeds each; single runs differ by local optimum).\n"
    )
    name = f"curation_kmeans_{harness.environment()['backend']}"
    name += "_quick" if args.quick else ""
    meta = {
        "points": 20000,
        "dim": 64,
        "k": 64,
        "rounds": args.rounds,
        "n_init": 1,
        "sklearn_threads": os.cpu_count(),
    }
    print(
        harness.write_results(
            name,
            {"k-means, 20k x 64, k = 64": rows},
            meta=meta,
            notes=notes,
            sources=curation_stream.sources(),
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--part",
        choices=["measures", "kmeans", "stream", "all"],
        default="all",
    )
    parser.add_argument("--per-source", type=int, default=600)
    parser.add_argument("--clusters", type=int, default=24)
    parser.add_argument("--budget-fraction", type=float, default=0.4)
    parser.add_argument("--steps", type=int, default=200)
    harness.add_seeds_argument(parser)
    parser.add_argument(
        "--note",
        default="",
        help="text added to the results notes (e.g. how the setting and "
        "the seeds were chosen)",
    )
    parser.add_argument("--vocabulary-size", type=int, default=2048)
    parser.add_argument("--reference-steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=6)
    curation_stream.add_arguments(parser)
    args = parser.parse_args()
    args.seeds = harness.seeds_of(args)
    if args.quick:
        args.per_source, args.clusters, args.steps = 40, 4, 4
        args.reference_steps, args.vocabulary_size = 4, 512
        args.seeds, args.rounds = args.seeds[:2], 2
    if args.part == "stream":
        curation_stream.run_stream(args)
        return
    if args.part in ("kmeans", "all"):
        run_kmeans(args)
    if args.part in ("measures", "all"):
        run_measures(args)


if __name__ == "__main__":
    main()
