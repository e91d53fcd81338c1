"""keras_gr quickstart: a local keras-hub preset, fine-tuned on a new domain.

Runs offline on a laptop CPU in a few minutes the first time (the preset
build), under a minute once the preset is cached:

1. builds (or loads from the cache) a small local Gemma preset, trained on
   Python's own documentation (`keras_gr.presets.build_local_preset` with
   `SMALL_CONFIG`; `--preset default` for the larger `DEFAULT_CONFIG` the
   other examples use, `--preset tiny` for a seconds-long smoke run);
2. loads it with `keras_hub.models.CausalLM.from_preset(folder)`;
3. measures held-out loss / next-token accuracy on a domain the preset did
   not see (docstrings of standard-library modules);
4. fine-tunes with `model.compile` / `fit` (progress bar);
5. measures again and prints before / after.

Usage:
    KERAS_BACKEND=jax python examples/quickstart.py [--preset small|default]
        [--epochs 2] [--quick]

`--quick` is `--preset tiny --epochs 1` (a smoke run: the tiny preset is too
small to write text, and the script says so). The script writes nothing
besides the preset cache (`--out` is accepted for uniformity with the
other examples). Measured wall time: see the README (full); --quick 6.9
min, measured while other jobs shared the 2 cores (load average near 12),
on the 2-core development machine (JAX).
"""

import math
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import keras_hub  # noqa: E402
from _example import done  # noqa: E402
from _example import example_arguments  # noqa: E402

from keras_gr.data import stdlib_docstrings_corpus  # noqa: E402
from keras_gr.presets import DEFAULT_CONFIG  # noqa: E402
from keras_gr.presets import SMALL_CONFIG  # noqa: E402
from keras_gr.presets import TINY_CONFIG  # noqa: E402
from keras_gr.presets import build_local_preset  # noqa: E402
from keras_gr.presets import read_preset_metadata  # noqa: E402

PRESETS = {
    "tiny": TINY_CONFIG,
    "small": SMALL_CONFIG,
    "default": DEFAULT_CONFIG,
}


def main():

    def options(parser):
        parser.add_argument("--epochs", type=int, default=2)
        parser.add_argument("--batch-size", type=int, default=16)
        parser.add_argument("--learning-rate", type=float, default=5e-4)
        parser.add_argument(
            "--preset",
            choices=sorted(PRESETS),
            default="small",
            help="small (default, ~1 min to build), default (the larger "
            "preset of the other examples, ~8 min), tiny (seconds; smoke run)",
        )

    args = example_arguments(
        __doc__, options, "--preset tiny --epochs 1: a smoke run"
    )
    if args.quick:
        args.preset, args.epochs = "tiny", 1
    keras.utils.set_random_seed(0)

    # 1. The local preset (cached after the first run).
    folder = build_local_preset(**PRESETS[args.preset])
    meta = read_preset_metadata(folder)
    print(
        f"preset {folder}\n  {meta['parameters']:,} parameters; pydoc "
        f"validation loss {meta['validation_loss']:.3f} vs unigram "
        f"baseline {meta['unigram_loss']:.3f}"
    )

    # 2. Load it as any keras-hub preset.
    lm = keras_hub.models.CausalLM.from_preset(folder)
    lm.compile(
        optimizer=keras.optimizers.AdamW(args.learning_rate, weight_decay=0.0),
        sampler="greedy",
    )

    # 3. A domain the preset did not see.
    train_docs, val_docs = stdlib_docstrings_corpus()
    before_loss, before_acc = lm.evaluate(val_docs, batch_size=32, verbose=0)
    prompt = "Return a new"
    before_text = lm.generate(prompt, max_length=24)

    # 4. Fine-tune with compile / fit.
    # keras-hub feeds raw strings through grain in list order, without
    # shuffling: Keras would only warn that its default `shuffle=True` is
    # ignored. `shuffle=False` says what happens (the README's figures).
    lm.fit(
        train_docs,
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=False,
    )

    # 5. Before / after.
    after_loss, after_acc = lm.evaluate(val_docs, batch_size=32, verbose=0)
    print("\nheld-out stdlib docstrings (next-token, masked padding):")
    print(f"  {'':8s} {'loss':>8s} {'perplexity':>11s} {'accuracy':>9s}")
    for name, loss, acc in (
        ("before", before_loss, before_acc),
        ("after", after_loss, after_acc),
    ):
        print(f"  {name:8s} {loss:8.3f} {math.exp(loss):11.1f} {acc:9.3f}")
    print(f"\ngreedy before: {before_text!r}")
    print(f"greedy after:  {lm.generate(prompt, max_length=24)!r}")
    if args.preset == "tiny":
        print(
            "(The tiny preset is too small to write text: its greedy output "
            "is repeated characters. Use the default run for real figures.)"
        )
    done(args)


if __name__ == "__main__":
    main()
