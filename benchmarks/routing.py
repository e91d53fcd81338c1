"""Benchmark: routing among LLMs unseen at training time (UniRoute).

"Universal Model Routing for Efficient LLM Inference" (Jitkrittum et al.,
arXiv 2502.08773) on a correctness matrix built here
(`keras_gr.presets.build_llm_pool`): 14 small looped transformers (width
16-64, 1-4 loops, 300-1500 training steps) answering 3000 exact-answer
prompts (n-ary addition, multiplication by a digit, p-hop induction, 12
difficulty levels); cost = FLOPs per answer. 9 models form the training
pool, 5 are unseen.

Per seed of the prompt split (train / validation / test = 50 / 20 / 30%):
k-means and the learned map are fitted on the training prompts with the
*training* pool; the 5 unseen models are then added with `add_model` from
their validation answers only, the training models are removed, and every
router routes the test prompts among the unseen pool. Reported: area
under the deferral curve (normalised to the unseen pool's cost range),
QNC (relative to the most accurate unseen model's cost), RouteLLM's APGR
and CPT(50%) (weak = cheapest, strong = most accurate unseen model),
RouterBench's AIQ, for the cluster router, learned map, K-NN, zero router
and oracle. Also the routing overhead per prompt (embedding + routing)
vs the cheapest unseen model's greedy answer generation.

Prompt embedding: `keras_gr.curation.HashedNgramEmbedder` (256 buckets,
1- to 3-grams) of the prompt's characters separated by spaces: prompts are
symbol strings (`12+07=`), and character n-grams see the operator, the
number of operands and digits, which set the task and its difficulty;
a word-level hash or an LM trained on prose would see unrelated tokens.

    KERAS_BACKEND=jax .venv/bin/python -m benchmarks.routing [--quick]
"""

import argparse
import inspect
import time

import numpy as np

from benchmarks import harness
from keras_gr import metrics
from keras_gr.curation import HashedNgramEmbedder
from keras_gr.models import ClusterRouter
from keras_gr.models import KNNRouter
from keras_gr.models import LearnedMapRouter
from keras_gr.models import OracleRouter
from keras_gr.models import ZeroRouter
from keras_gr.presets import llm_pool

PAPER = {
    # EmbedLLM, Table / Figure of arXiv 2502.08773 (as cited in the issue).
    "cluster": {"area": 0.307, "qnc": 0.339},
    "knn": {"area": 0.298, "qnc": 0.461},
    "zero": {"area": 0.285, "qnc": 0.875},
}


def char_embedder(output_dim=256):
    hashed = HashedNgramEmbedder(output_dim=output_dim, ngram_range=(1, 3))

    class _Chars:
        def embed(self, texts, batch_size=64, verbose=0):
            return hashed.embed([" ".join(t) for t in texts])

    return _Chars()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    harness.add_seeds_argument(parser)
    parser.add_argument("--num-clusters", type=int, default=12)
    parser.add_argument("--num-neighbors", type=int, default=20)
    parser.add_argument("--map-epochs", type=int, default=30)
    parser.add_argument("--cache-dir", type=str, default=None)
    parser.add_argument(
        "--note",
        default="",
        help="text added to the results notes (e.g. how the seeds were chosen)",
    )
    return parser.parse_args()


def split(n, seed):
    order = np.random.default_rng(seed).permutation(n)
    a, b = int(0.5 * n), int(0.7 * n)
    return order[:a], order[a:b], order[b:]


def make_routers(args, seed):
    return {
        "cluster": ClusterRouter(num_clusters=args.num_clusters, seed=seed),
        "learned_map": LearnedMapRouter(
            num_clusters=args.num_clusters, epochs=args.map_epochs, seed=seed
        ),
        "knn": KNNRouter(num_neighbors=args.num_neighbors),
        "zero": ZeroRouter(),
    }


def evaluate(curve, costs, test_correct):
    """The metrics of one deferral curve on the unseen pool."""
    quality = test_correct.mean(0)
    best = int(np.argmax(quality))
    cheap = int(np.argmin(costs))
    weak, strong = (costs[cheap], quality[cheap]), (costs[best], quality[best])
    c, q = curve["costs"], curve["qualities"]
    span = (float(costs.min()), float(costs.max()))
    qnc = metrics.quality_neutral_cost(c, q, quality[best], costs[best])
    # APGR and CPT need a strong model dearer than the weak one; on a
    # split where the cheapest model is also the most accurate (a tiny
    # quick pool) they are undefined.
    gap = costs[best] > costs[cheap]
    return {
        "area": metrics.deferral_area(c, q, span),
        "qnc": qnc,
        # Never reaching the best model's quality counts as the dearest
        # cost on the curve's range (the priciest unseen model's).
        "qnc_capped": min(qnc, float(costs.max() / costs[best])),
        "apgr": metrics.apgr(c, q, weak, strong) if gap else np.nan,
        "cpt50": metrics.cpt(c, q, weak, strong, 0.5) if gap else np.nan,
        "aiq": metrics.aiq(c, q, span),
    }


def greedy_exact_match(model, tokens, answer_mask):
    """Greedy decoding of every answer (no KV cache: one full forward
    pass per answer token, the same number of passes for every row);
    returns the per-row exact match."""
    x = np.where(answer_mask, 0, tokens)[:, :-1].astype("int32")
    predicted = np.zeros_like(tokens)
    start = np.argmax(answer_mask, axis=1)
    rows = np.arange(len(x))
    last = tokens.shape[1] - 1
    for step in range(int(answer_mask.sum(1).max())):
        logits = np.asarray(model.predict_on_batch(x))
        pos = np.minimum(start + step, last)
        valid = answer_mask[rows, pos] & (start + step <= last)
        token = np.argmax(logits[rows, pos - 1], axis=-1)
        predicted[rows[valid], pos[valid]] = token[valid]
        write = valid & (pos < x.shape[1])
        x[rows[write], pos[write]] = token[write]
    return np.all((predicted == tokens) | ~answer_mask, axis=1)


def main():
    args = parse_args()
    config = dict(llm_pool.POOL_CONFIG)
    if args.quick:
        config.update(
            num_prompts=600,
            num_train_examples=4000,
            models=[
                [n, w, lp, max(50, s // 10)] for n, w, lp, s in config["models"]
            ],
        )
    folder = llm_pool.build_llm_pool(config, cache_dir=args.cache_dir)
    pool = llm_pool.load_llm_pool(folder)
    correct, costs = pool["correctness"], pool["costs"]
    names = np.array(pool["names"])
    unseen = pool["unseen"]
    embedder = char_embedder()
    embeddings = embedder.embed(pool["texts"])
    rows, curves0 = [], {}
    seeds = harness.seeds_of(args)
    for seed in seeds:
        tr, va, te = split(len(correct), seed)
        test_correct = correct[te][:, unseen]
        for kind, router in make_routers(args, seed).items():
            start = time.perf_counter()
            fit_args = {
                "train_embeddings": embeddings[tr],
                "train_correctness": correct[tr][:, ~unseen],
                "validation_embeddings": embeddings[va],
                "validation_correctness": correct[va][:, ~unseen],
                "costs": costs[~unseen],
                "model_names": list(names[~unseen]),
            }
            # Each router takes the part of the pool it uses.
            used = inspect.signature(router.fit_pool).parameters
            router.fit_pool(**{k: v for k, v in fit_args.items() if k in used})
            for j in np.flatnonzero(unseen):
                router.add_model(names[j], correct[va][:, j], costs[j])
            for name in names[~unseen]:
                router.remove_model(name)
            seconds = time.perf_counter() - start
            assert list(router.model_names) == list(names[unseen])
            curve = router.deferral_curve(embeddings[te], test_correct)
            rows.append(
                {
                    "seed": seed,
                    "router": kind,
                    **evaluate(curve, costs[unseen], test_correct),
                    "fit_s": seconds,
                    "curve_points": len(curve["costs"]),
                }
            )
            if seed == seeds[0]:
                curves0[kind] = (curve["costs"], curve["qualities"])
        oracle = OracleRouter().fit_pool(
            costs=costs[unseen], model_names=list(names[unseen])
        )
        curve = oracle.deferral_curve(None, test_correct)
        rows.append(
            {
                "seed": seed,
                "router": "oracle",
                **evaluate(curve, costs[unseen], test_correct),
                "curve_points": len(curve["costs"]),
            }
        )
        if seed == seeds[0]:
            curves0["oracle"] = (curve["costs"], curve["qualities"])
            points = (costs[unseen], test_correct.mean(0), names[unseen])
        print(f"seed {seed} done", flush=True)

    summary = []
    for kind in ["cluster", "learned_map", "knn", "zero", "oracle"]:
        mine = [r for r in rows if r["router"] == kind]
        row = {"router": kind}
        for key in ["area", "qnc", "qnc_capped", "apgr", "cpt50", "aiq"]:
            row[key] = summarise([r[key] for r in mine])
        paper = PAPER.get(kind, {})
        row["paper_area_embedllm"] = paper.get("area", "")
        row["paper_qnc_embedllm"] = paper.get("qnc", "")
        summary.append(row)

    # Routing overhead vs the cheapest unseen model's generation.
    cheap = names[unseen][int(np.argmin(costs[unseen]))]
    model = llm_pool.load_pool_model(folder, cheap)
    te = split(len(correct), 0)[2][:512]
    texts = [pool["texts"][i] for i in te]
    tr, va, _ = split(len(correct), 0)
    router = make_routers(args, 0)["cluster"].fit_pool(
        train_embeddings=embeddings[tr],
        validation_embeddings=embeddings[va],
        validation_correctness=correct[va][:, unseen],
        costs=costs[unseen],
        model_names=list(names[unseen]),
    )
    tokens, mask = pool["tokens"][te], pool["answer_mask"][te]
    exact = greedy_exact_match(model, tokens, mask)

    # Interleaved rounds (both compiled first), medians per prompt.
    def routing_fn():
        return router.route(embedder.embed(texts), 1e-7)

    def generate_fn():
        return greedy_exact_match(model, tokens, mask)

    times = {"route": [], "generate": []}
    for fn in (routing_fn, generate_fn):
        fn()
    for _ in range(7):
        for key, fn in (("route", routing_fn), ("generate", generate_fn)):
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    route_s = float(np.median(times["route"]))
    gen_s = float(np.median(times["generate"]))
    timing = [
        {
            "what": f"embed + route ({len(texts)} prompts, cluster router)",
            "us_per_prompt": 1e6 * route_s / len(texts),
        },
        {
            "what": f"greedy answer generation, cheapest model {cheap}",
            "us_per_prompt": 1e6 * gen_s / len(texts),
        },
    ]
    harness.ratio_table(
        timing, key="what", value="us_per_prompt", peer=timing[1]["what"]
    )
    models_table = [
        {
            "model": r["name"],
            "pool": "unseen" if r["name"] in set(names[unseen]) else "train",
            "width": r["width"],
            "loops": r["loops"],
            "steps": r["steps"],
            "params": r["params"],
            "flops_per_answer": r["flops_per_answer"],
            "accuracy_all_prompts": r["accuracy"],
        }
        for r in pool["models"]
    ]
    levels = sorted(set(pool["level"]))
    level_table = []
    for level in levels:
        sel = pool["level"] == level
        row = {"level": level, "prompts": int(sel.sum())}
        for j in np.flatnonzero(unseen):
            row[names[j]] = float(correct[sel, j].mean())
        level_table.append(row)

    suffix = "_quick" if args.quick else ""
    name = f"routing_{harness.environment()['backend']}{suffix}"
    plot = harness.result_path(name, ".png")
    metrics.plot_deferral_curves(
        curves0,
        plot,
        model_points=points,
        title="Routing among 5 unseen looped LMs (test prompts, seed "
        f"{seeds[0]})",
        xlabel="average FLOPs per answer",
    )
    mean = {
        kind: np.mean([r["area"] for r in rows if r["router"] == kind])
        for kind in ["cluster", "learned_map", "knn", "zero", "oracle"]
    }
    qnc = {
        kind: np.mean([r["qnc"] for r in rows if r["router"] == kind])
        for kind in ["cluster", "learned_map", "knn", "zero", "oracle"]
    }
    notes = claim_figures(mean, qnc)
    if args.note:
        notes = args.note + "\n\n" + notes
    notes += (
        f"\n\nTimed on the same machine: exact match of the greedy decoder "
        f"on those {len(texts)} prompts = {exact.mean():.3f} (vs stored "
        f"teacher-forced correctness "
        f"{correct[te][:, list(names).index(cheap)].mean():.3f}).\n"
        f"\n![deferral curves]({name}.png)\n"
    )
    md = harness.write_results(
        name,
        {
            "Routing among the unseen pool (mean +- std over seeds)": summary,
            "Per seed": rows,
            "Routing overhead vs generation (same run)": timing,
            "Pool (cost = FLOPs per answer)": models_table,
            "Unseen models' accuracy per difficulty level": level_table,
        },
        meta={
            "seeds": harness.seeds_of(args),
            "num_prompts": len(correct),
            "split": "train/val/test = 50/20/30% of prompts",
            "num_clusters": args.num_clusters,
            "num_neighbors": args.num_neighbors,
            "map_epochs": args.map_epochs,
            "embedder": "HashedNgramEmbedder(256, (1, 3)) on characters",
            "pool_folder": "cache: llm_pool/" + folder.rsplit("/", 1)[-1],
        },
        notes=notes,
    )
    print(md)


def summarise(values):
    """`mean +- std` over seeds; infinite values (a quality never
    reached) are counted, not averaged."""
    values = np.asarray(values, dtype="float64")
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return f"inf / undefined ({values.size}/{values.size} seeds)"
    m, sd = harness.mean_std(finite.tolist())
    text = f"{m:.4f} +- {sd:.4f}"
    if finite.size < values.size:
        text += (
            f" (inf / undefined on {values.size - finite.size}/"
            f"{values.size} seeds)"
        )
    return text


def claim_figures(area, qnc):
    """The claims' figures; the verdicts are the one rule's
    (`benchmarks/claims.py`, paired over the per-seed rows), written first
    in the results file. (A heading naming verdicts would be dropped as
    the old rule's by `claims.reverdict`.)"""
    return (
        "## Paper claims on this pool (judged in the table at the top)"
        "\n\n"
        f"- Cluster vs zero router, area {area['cluster']:.4f} vs "
        f"{area['zero']:.4f}; cluster vs K-NN (paper 0.307 vs 0.298) "
        f"{area['cluster']:.4f} vs {area['knn']:.4f}; learned map vs plain "
        f"cluster map {area['learned_map']:.4f} vs {area['cluster']:.4f}.\n"
        "- QNC, the cost share reaching the best unseen model's quality "
        "(paper 33.9% cluster, 46.1% K-NN, 87.5% zero): here cluster "
        f"{100 * qnc['cluster']:.1f}%, K-NN {100 * qnc['knn']:.1f}%, zero "
        f"{100 * qnc['zero']:.1f}%, learned map "
        f"{100 * qnc['learned_map']:.1f}% (mean over seeds; inf = some seed "
        "never reaches it; `qnc_capped` in the per-seed table counts such "
        "a seed as the priciest unseen model's cost relative to the best "
        "one's, the dearest point of the curve's range).\n"
        "- Absolute numbers are not comparable with EmbedLLM's: a different "
        "pool (5 unseen tiny looped LMs on synthetic exact-answer tasks, "
        "FLOPs cost) and area normalised to this pool's cost range."
    )


if __name__ == "__main__":
    main()
