"""LoRA fine-tuning of a local keras-hub Gemma preset with LoRA-RITE.

The preset (`keras_gr.presets.DEFAULT_CONFIG`, pretrained on Python's own
documentation topics) is adapted to a text domain it did not see: the
docstrings of standard-library modules (`keras_gr.data.
stdlib_docstrings_corpus`). Only the rank-`r` LoRA factors of the attention
query/value projections train; LoRA-RITE updates each factor pair jointly,
so the result does not depend on how the factors are scaled.

Run:

    KERAS_BACKEND=jax python examples/lora_rite_finetune.py [--steps 150]

It prints held-out next-token loss/accuracy before and after, and saves the
LoRA weights with `backbone.save_lora_weights` next to this file.
Paper: "LoRA Done RITE: Robust Invariant Transformation Equilibration for
LoRA Optimization", Yen et al., arXiv:2410.20625.
"""

import argparse
import os

import keras
import keras_hub
import numpy as np

import keras_gr
from keras_gr.data import stdlib_docstrings_corpus
from keras_gr.presets import DEFAULT_CONFIG
from keras_gr.presets import build_local_preset

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=150)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--sequence-length", type=int, default=64)
parser.add_argument("--rank", type=int, default=8)
parser.add_argument("--learning-rate", type=float, default=2e-3)
args = parser.parse_args()
keras.utils.set_random_seed(0)

# 1. The local preset (built once, then cached) and its tokenizer.
folder = build_local_preset(**DEFAULT_CONFIG)
lm = keras_hub.models.CausalLM.from_preset(folder, preprocessor=None)
tokenizer = keras_hub.models.CausalLMPreprocessor.from_preset(folder).tokenizer


# 2. The new domain as `<bos> doc <eos>` token streams; random training
# windows, non-overlapping held-out windows.
def token_stream(docs):
    ids = []
    for doc in docs:
        ids += [2] + list(np.asarray(tokenizer.tokenize(doc))) + [1]
    return np.array(ids, dtype="int32")


train_docs, val_docs = stdlib_docstrings_corpus()
train_stream, val_stream = token_stream(train_docs), token_stream(val_docs)
seq = args.sequence_length
rng = np.random.default_rng(0)
starts = rng.integers(0, len(train_stream) - seq - 1, args.steps * 8)
windows = np.stack([train_stream[s : s + seq + 1] for s in starts])
n_val = (len(val_stream) - 1) // seq
val_windows = np.stack(
    [val_stream[i * seq : i * seq + seq + 1] for i in range(n_val)]
)


def features(w):
    x = {"token_ids": w[:, :-1], "padding_mask": np.ones_like(w[:, :-1])}
    return x, w[:, 1:]


# 3. LoRA on the attention query/value projections, LoRA-RITE optimizer.
lm.backbone.enable_lora(rank=args.rank)
lm.compile(
    optimizer=keras_gr.optimizers.LoraRite(learning_rate=args.learning_rate),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    weighted_metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
    jit_compile=True,
)
val_x, val_y = features(val_windows)
before = lm.evaluate(val_x, val_y, batch_size=16, verbose=0, return_dict=True)
x, y = features(windows[: args.steps * args.batch_size])
lm.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=1)
after = lm.evaluate(val_x, val_y, batch_size=16, verbose=0, return_dict=True)
print(
    f"held-out loss {before['loss']:.3f} -> {after['loss']:.3f}, "
    f"next-token accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}"
)

# 4. Save only the LoRA factors (a few KB); `load_lora_weights` restores them
# into a preset loaded the same way.
out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
os.makedirs(out_dir, exist_ok=True)
path = os.path.join(out_dir, "lora_rite_finetune.lora.h5")
lm.backbone.save_lora_weights(path)
print("LoRA weights saved to", path)
