"""Targeted synthetic data with SoftSRV: steer a frozen LM with a learned
contextual soft prompt, compare with few-shot hard prompting.

"SoftSRV: Learn to Generate Targeted Synthetic Data" (arXiv 2410.16534).
The frozen LM is the local `SMALL_CONFIG` Gemma preset (283k parameters,
pretrained on pydoc topics; `DEFAULT_CONFIG` gives a stronger LM); the
target is math word problems whose answers can be
checked exactly (`keras_gr.data.math_word_problems`). We train an MC soft
prompt (an MLP from the LM's own mean token embedding of a sample to 8
prompt vectors) on 64 targets with `fit`, generate 32 problems from
perturbed contexts, and score both generators with MAUVE against held-out
problems and by the share of generated problems whose stated answer is
right. The baseline is few-shot hard prompting of the same frozen LM,
printed beside SoftSRV.

The `SMALL_CONFIG` LM (283k parameters, pretrained on prose) is too weak to
write correct arithmetic with either method: both scored 0% correct answers
and similar MAUVE when this was written; the script says so in its output
when neither reaches 5%.
The comparison shows the mechanics (a frozen LM steered by a trained soft
prompt, one `generate` call per method), not the paper's gains.

Run: `KERAS_BACKEND=jax python examples/softsrv_synthetic_data.py [--quick]`
(the preset is built once, about a minute, and cached). `--help` lists the
options; the generated problems are written to `--out`.
Measured wall time on the loaded 2-core development machine (JAX, preset
cached): --quick 7.2 min, measured while other jobs shared the 2 cores
(load average near 12); the full run was not timed in this change.
"""

import json
import os

import keras
import keras_hub
import numpy as np
from _example import done
from _example import example_arguments

from keras_gr.data import math_answer_correct
from keras_gr.data import math_word_problems
from keras_gr.metrics import mauve
from keras_gr.models import HardPromptGenerator
from keras_gr.models import SoftSRV
from keras_gr.presets import SMALL_CONFIG
from keras_gr.presets import build_local_preset


def options(parser):
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--num-samples", type=int, default=32)


args = example_arguments(
    __doc__, options, "3 epochs and 8 generated problems (not 15 and 32)"
)
if args.quick:
    args.epochs, args.num_samples = 3, 8
keras.utils.set_random_seed(0)
lm = keras_hub.models.CausalLM.from_preset(build_local_preset(**SMALL_CONFIG))
problems = math_word_problems(96, num_operands=(2, 3), digits=2, seed=0)
train, heldout = problems["texts"][:64], problems["texts"][64:]

# 1. Train the contextual soft prompt; the LM stays frozen.
softsrv = SoftSRV(lm, prompt_length=8, parametrization="mc", sequence_length=64)
x, y, w = softsrv.preprocess(train)
softsrv.compile(optimizer=keras.optimizers.Adam(3e-2))
history = softsrv.fit(x, y, sample_weight=w, batch_size=16, epochs=args.epochs)
print(
    f"prompt loss {history.history['loss'][0]:.3f} -> "
    f"{history.history['loss'][-1]:.3f}"
)

# 2. Generate with each method: one call each.
sampler = keras_hub.samplers.TopKSampler(10)
generated = {
    "softsrv_mc": softsrv.generate(
        train,
        num_samples=args.num_samples,
        max_length=64,
        context_noise=0.1,
        sampler=sampler,
    ),
    "hard_prompt": HardPromptGenerator(
        lm, num_shots=3, sampler=sampler
    ).generate(train, num_samples=args.num_samples, max_length=64),
}

# 3. Score: MAUVE against held-out problems, exact answers.
# Features: the frozen LM's mean token embeddings (SoftSRV's contexts).
target = softsrv.embed(heldout)
correct_share = {}
for name, texts in generated.items():
    texts = [t if t.strip() else "." for t in texts]
    score = mauve(softsrv.embed(texts), target)
    right = np.mean([math_answer_correct(t) for t in texts])
    correct_share[name] = right
    print(f"\n{name}: MAUVE {score:.3f}, answers correct {right:.0%}")
    for text in texts[:3]:
        print("  ", text[:160])
if max(correct_share.values()) < 0.05:
    print(
        "\n(Neither method reaches 5% correct answers: the SMALL_CONFIG LM is "
        "too weak to write correct arithmetic, so similar scores here say "
        "nothing about SoftSRV's gains; see the module docstring.)"
    )
with open(os.path.join(args.out, "generated.json"), "w") as f:
    json.dump(generated, f, indent=1)
done(args)
