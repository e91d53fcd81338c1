"""Route prompts among LLMs the router never saw in training (UniRoute).

"Universal Model Routing for Efficient LLM Inference" (Jitkrittum et al.,
arXiv 2502.08773). A pool of 14 small looped transformers answers
arithmetic and p-hop prompts (`keras_gr.presets.build_llm_pool`: built on
the first run, a few minutes on a laptop CPU, then cached). A cluster
router is fitted with 9 "training" models; 5 new models join it from their
answers on 600 validation prompts only (`add_model`, no retraining); the
router then serves test prompts among the new models, trading accuracy for
FLOPs with `cost_weight`. The baseline is the best single new model,
printed above the router's accuracy / FLOPs trade-off.

    KERAS_BACKEND=jax python examples/route_prompts.py [--quick]

`--quick` uses a pool of 6 briefly trained models (3 unseen) and 600 prompts
(built and cached on its first run). `--help` lists the options; the saved
router goes to `--out`.
Measured wall time on the loaded 2-core development machine (JAX, including
the build of the pool): --quick 7.1 min, measured while other jobs shared
the 2 cores (load average near 12); the full run was not timed in this
change.
"""

import os

import keras
import numpy as np
from _example import done
from _example import example_arguments

from keras_gr.curation import HashedNgramEmbedder
from keras_gr.data.addition import answer_width
from keras_gr.models import ClusterRouter
from keras_gr.models import RoutedGenerator
from keras_gr.presets import llm_pool

args = example_arguments(
    __doc__,
    quick_help="a pool of 6 small models and 600 prompts (not 14, 3000)",
)
# A pool of 6 small models, 150 training steps each: [name, width, loops,
# steps].
QUICK_POOL = dict(
    llm_pool.POOL_CONFIG,
    models=[
        ["q-w16-l1", 16, 1, 150],
        ["q-w16-l2", 16, 2, 150],
        ["q-w32-l1", 32, 1, 150],
        ["q-w32-l2", 32, 2, 150],
        ["q-w16-l4", 16, 4, 150],
        ["q-w32-l4", 32, 4, 150],
    ],
    unseen=["q-w16-l2", "q-w32-l1", "q-w32-l4"],
    num_prompts=600,
    num_train_examples=4000,
)

# 1. The pool and its correctness matrix (exact match), cost = FLOPs.
folder = llm_pool.build_llm_pool(QUICK_POOL if args.quick else None)
pool = llm_pool.load_llm_pool(folder)
names, costs = np.array(pool["names"]), pool["costs"]
correct, unseen = pool["correctness"], pool["unseen"]
print(f"{len(names)} models, {len(correct)} prompts, e.g. {pool['texts'][:3]}")

# 2. Prompt embeddings: hashed character n-grams (operators, operand and
# digit counts are what makes a prompt easy or hard here).
hashed = HashedNgramEmbedder(output_dim=256, ngram_range=(1, 3))


class CharEmbedder:
    def embed(self, texts, batch_size=64, verbose=0):
        return hashed.embed([" ".join(t) for t in texts])


embedder = CharEmbedder()
x = embedder.embed(pool["texts"])
order = np.random.default_rng(0).permutation(len(x))
# 50% to fit the clusters, 20% validation (the new models' answers), 30% test.
n_train, n_val = len(x) // 2, len(x) // 5
train, val = order[:n_train], order[n_train : n_train + n_val]
test = order[n_train + n_val :]

# 3. Fit on the training pool, then add the unseen models from their
# validation answers only and drop the training ones.
router = ClusterRouter(num_clusters=6 if args.quick else 12).fit_pool(
    train_embeddings=x[train],
    validation_embeddings=x[val],
    validation_correctness=correct[val][:, ~unseen],
    costs=costs[~unseen],
    model_names=list(names[~unseen]),
)
for j in np.flatnonzero(unseen):
    router.add_model(names[j], correct[val][:, j], cost=costs[j])
for name in names[~unseen]:
    router.remove_model(name)
print("serving pool:", list(router.model_names))

# 4. Accuracy and cost on the test prompts for a few cost weights.
test_correct = correct[test][:, unseen]
best = int(np.argmax(test_correct.mean(0)))
print(
    f"best single new model {router.model_names[best]}: accuracy "
    f"{test_correct[:, best].mean():.3f} at {costs[unseen][best]:.3g} FLOPs"
)
for lam in [0.0, 1e-7, 3e-7, 1e-6]:
    chosen = router.route(x[test], cost_weight=lam)
    acc = test_correct[np.arange(len(test)), chosen].mean()
    print(
        f"cost_weight {lam:.0e}: accuracy {acc:.3f}, mean FLOPs "
        f"{router.costs[chosen].mean():.3g}"
    )

# 5. Save and reload the router (the model features travel with it).
path = os.path.join(args.out, "router.keras")
router.save(path)
router = keras.saving.load_model(path)


# 6. Serve: every chosen model generates for its own sub-batch.
def width(prompt):
    if "+" in prompt:
        ops = prompt[:-1].split("+")
        return answer_width(len(ops), len(ops[0]))
    if "*" in prompt:
        return len(prompt.split("*")[0]) + 1
    return 1


class PoolLM:
    """`generate(prompts)` for a pool model: greedy answer decoding."""

    def __init__(self, name):
        self.model = llm_pool.load_pool_model(folder, name)

    def generate(self, prompts):
        length = llm_pool.POOL_SEQUENCE_LENGTH - 1
        x = np.zeros((len(prompts), length), "int32")
        for i, p in enumerate(prompts):
            x[i, : len(p)] = llm_pool.encode_pool_text(p)
        out = [""] * len(prompts)
        for step in range(max(width(p) for p in prompts)):
            logits = np.asarray(self.model.predict_on_batch(x))
            for i, p in enumerate(prompts):
                pos = len(p) + step
                if step < width(p):
                    token = int(np.argmax(logits[i, pos - 1]))
                    out[i] += llm_pool.decode_pool_tokens([token]) or "?"
                    if pos < length:
                        x[i, pos] = token
        return [p + a for p, a in zip(prompts, out)]


served = RoutedGenerator(
    {n: PoolLM(n) for n in router.model_names}, router, embedder
)
prompts = [pool["texts"][i] for i in test[:8]]
result = served.generate(prompts, cost_weight=3e-7)
for text, model in zip(result["outputs"], result["models"]):
    print(f"{model:>14s}: {text}")
print(f"FLOPs spent: {result['cost']:.3g}")
if args.quick:
    print(
        "(--quick: the pool's models are barely trained and about equally "
        "weak, so the router has little to choose between and can trail the "
        "best single model; compare them in the full run.)"
    )
done(args)
