"""Looped transformers on n-ary addition, with the looping regulariser.

"Reasoning with Latent Thoughts: On the Power of Looped Transformers"
(Saunshi et al., ICLR 2025, arXiv 2502.17416). Trains `1 (x) 1`,
`1 (x) 4` (LoopedBlock) and a 4-layer model with the looping-inspired
regulariser (which pulls its layers towards a looped model) on sums of
2-digit numbers, and prints their exact-match test accuracies side by side
(`1 (x) 1` is the baseline: same parameters as `1 (x) 4`, a quarter of the
compute).

    KERAS_BACKEND=jax python examples/looped_addition.py [--quick]

`--help` lists the options; outputs: none besides the printed table.
Measured wall time on the loaded 2-core development machine (JAX): --quick
11.2 min, measured while other jobs shared the 2 cores (load average near
12); the full run was not timed in this change.
"""

import keras
import keras_hub
import numpy as np
from _example import done
from _example import example_arguments

import keras_gr


def options(parser):
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--digits", type=int, default=2)


args = example_arguments(__doc__, options, "200 training steps, not 3000")
if args.quick:
    args.steps = 200

# 1. Data: '12+07+93=112'-style problems, the answer tokens marked.
train = keras_gr.data.addition_examples(10000, [2, 3], args.digits, seed=0)
test = keras_gr.data.addition_examples(1000, [2, 3], args.digits, seed=1)
x, y, w = keras_gr.data.lm_arrays(train["tokens"], train["answer_mask"])
tx, ty, tw = keras_gr.data.lm_arrays(test["tokens"], test["answer_mask"])
vocab = keras_gr.data.ADDITION_VOCAB_SIZE
print("one example:", keras_gr.data.addition.decode_tokens(train["tokens"][0]))


def make_model(num_layers, loops):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((x.shape[1],), dtype="int32")
    h = keras_hub.layers.TokenAndPositionEmbedding(vocab, x.shape[1], 64)(
        inputs
    )
    layers = [
        keras_hub.layers.TransformerDecoder(256, 4, normalize_first=True)
        for _ in range(num_layers)
    ]
    block = keras_gr.layers.LoopedBlock(layers, num_loops=loops)
    h = keras.layers.LayerNormalization()(block(h))
    return keras.Model(inputs, keras.layers.Dense(vocab)(h)), block


# 2. Train the three models and compare.
for name, num_layers, loops, regularise in [
    ("1 (x) 1", 1, 1, False),
    ("1 (x) 4", 1, 4, False),
    ("4 (x) 1 + looping regulariser", 4, 1, True),
]:
    model, block = make_model(num_layers, loops)
    reg = None
    if regularise:
        reg = keras_gr.regularizers.LoopingRegularizer(
            block.block_layers, block_size=1, strength=10.0
        ).attach()
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
    extra = f", layer cosine {reg.similarity():.3f}" if reg else ""
    print(
        f"{name}: params {model.count_params()}, "
        f"test accuracy {100 * acc:.1f}%{extra}"
    )
if args.quick:
    print(
        "(--quick: 200 steps are too few to learn addition, so the accuracies "
        "above say nothing about looping; compare them in the full run, 3000 "
        "steps.)"
    )
done(args)
