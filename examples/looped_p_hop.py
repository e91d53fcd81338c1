"""Looped transformers on p-hop induction (keras_gr.layers.LoopedBlock).

"Reasoning with Latent Thoughts: On the Power of Looped Transformers"
(Saunshi et al., ICLR 2025, arXiv 2502.17416). Trains a 1-layer model
`1 (x) 1` and the same layer looped four times `1 (x) 4` (same parameters,
4x the compute) on p-hop induction, and prints the test accuracy.

Training supervises the p-hop answer of every prefix of each sequence
(`keras_gr.data.p_hop_prefix_targets`: a causal model at position `i` sees
exactly the prefix problem `v[1..i]`), which learns in a few CPU minutes;
`--sparse` uses the paper's one-answer-per-sequence format instead. The
test accuracy is always on each sequence's own problem (its last position).

    KERAS_BACKEND=jax python examples/looped_p_hop.py [--quick]

`1 (x) 1` is the baseline (same parameters, a quarter of the compute).
`--help` lists the options; outputs: none besides the printed table.
Measured wall time on the loaded 2-core development machine (JAX): --quick
9.8 min, measured while other jobs shared the 2 cores (load average near
12); the full run was not timed in this change.
"""

import keras
import keras_hub
import numpy as np
from _example import done
from _example import example_arguments

import keras_gr


def options(parser):
    parser.add_argument("--p", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--loops", type=int, default=4)
    parser.add_argument("--sparse", action="store_true")


args = example_arguments(__doc__, options, "200 training steps, not 1500")
if args.quick:
    args.steps = 200

# 1. Data: every instance is built so that its p hops exist.
train = keras_gr.data.p_hop_examples(10000, args.p, args.seq_len, seed=0)
test = keras_gr.data.p_hop_examples(1000, args.p, args.seq_len, seed=1)
if args.sparse:
    x, y, w = keras_gr.data.lm_arrays(train["tokens"], train["answer_mask"])
    tx, ty, tw = keras_gr.data.lm_arrays(test["tokens"], test["answer_mask"])
else:
    targets, valid = keras_gr.data.p_hop_prefix_targets(
        train["sequences"], args.p
    )
    x, y, w = train["sequences"] + 1, targets + 1, valid.astype("float32")
    test_targets, _ = keras_gr.data.p_hop_prefix_targets(
        test["sequences"], args.p
    )
    tx, ty = test["sequences"] + 1, test_targets + 1
    tw = np.zeros(tx.shape, "float32")
    tw[:, -1] = 1.0  # the sequence's own problem
vocab = keras_gr.data.p_hop_vocab_size(4)
print("one example:", train["tokens"][0], "hops:", train["hops"][0])


# 2. A small decoder whose one transformer layer is looped `loops` times.
def make_model(loops):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((x.shape[1],), dtype="int32")
    h = keras_hub.layers.TokenAndPositionEmbedding(vocab, x.shape[1], 64)(
        inputs
    )
    layer = keras_hub.layers.TransformerDecoder(256, 4, normalize_first=True)
    h = keras_gr.layers.LoopedBlock([layer], num_loops=loops)(h)
    h = keras.layers.LayerNormalization()(h)
    return keras.Model(inputs, keras.layers.Dense(vocab)(h))


# 3. Train both and compare (loss and accuracy on the answer token only).
for loops in (1, args.loops):
    model = make_model(loops)
    # Linear warm-up (10% of the steps) then cosine decay, as in
    # benchmarks/looped_reasoning.py.
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=args.steps,
        warmup_target=2e-3,
        warmup_steps=max(1, args.steps // 10),
    )
    model.compile(
        keras.optimizers.AdamW(schedule, weight_decay=0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    epochs = int(np.ceil(args.steps * 64 / len(x)))
    model.fit(x, y, sample_weight=w, batch_size=64, epochs=epochs, verbose=0)
    pred = np.argmax(model.predict(tx, verbose=0), -1)
    acc = keras_gr.data.exact_match(pred, ty, tw)
    print(
        f"1 (x) {loops}: params {model.count_params()}, "
        f"test accuracy {100 * acc:.1f}% (chance 25%)"
    )
if args.quick:
    print(
        "(--quick: after 200 steps both models are only partly trained, so "
        "the accuracies above say nothing about looping; compare them in the "
        "full run, 1500 steps.)"
    )
done(args)
