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
right.

Run: `KERAS_BACKEND=jax python examples/softsrv_synthetic_data.py`
(a few minutes on a laptop CPU; the preset is built once and cached).
"""

import keras
import keras_hub
import numpy as np

from keras_gr.data import math_answer_correct
from keras_gr.data import math_word_problems
from keras_gr.metrics import mauve
from keras_gr.models import HardPromptGenerator
from keras_gr.models import SoftSRV
from keras_gr.presets import SMALL_CONFIG
from keras_gr.presets import build_local_preset

keras.utils.set_random_seed(0)
lm = keras_hub.models.CausalLM.from_preset(build_local_preset(**SMALL_CONFIG))
problems = math_word_problems(96, num_operands=(2, 3), digits=2, seed=0)
train, heldout = problems["texts"][:64], problems["texts"][64:]

# 1. Train the contextual soft prompt; the LM stays frozen.
softsrv = SoftSRV(lm, prompt_length=8, parametrization="mc", sequence_length=64)
x, y, w = softsrv.preprocess(train)
softsrv.compile(optimizer=keras.optimizers.Adam(3e-2))
history = softsrv.fit(x, y, sample_weight=w, batch_size=16, epochs=15)
print(
    f"prompt loss {history.history['loss'][0]:.3f} -> "
    f"{history.history['loss'][-1]:.3f}"
)

# 2. Generate with each method: one call each.
sampler = keras_hub.samplers.TopKSampler(10)
generated = {
    "softsrv_mc": softsrv.generate(
        train,
        num_samples=32,
        max_length=64,
        context_noise=0.1,
        sampler=sampler,
    ),
    "hard_prompt": HardPromptGenerator(
        lm, num_shots=3, sampler=sampler
    ).generate(train, num_samples=32, max_length=64),
}

# 3. Score: MAUVE against held-out problems, exact answers.
# Features: the frozen LM's mean token embeddings (SoftSRV's contexts).
target = softsrv.embed(heldout)
for name, texts in generated.items():
    texts = [t if t.strip() else "." for t in texts]
    score = mauve(softsrv.embed(texts), target)
    right = np.mean([math_answer_correct(t) for t in texts])
    print(f"\n{name}: MAUVE {score:.3f}, answers correct {right:.0%}")
    for text in texts[:3]:
        print("  ", text[:160])
