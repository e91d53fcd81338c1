"""LatentCRF on a small latent diffusion model of handwritten digits.

Trains a class-conditional latent diffusion model on scikit-learn's digits
(upsampled to 16x16, an 8x8x4 latent grid), then a LatentCRF, with the
diffusion model frozen, that jumps over the last `s` of the `T` DDIM steps
(arXiv 2412.18596). Every sampler is one compiled `DiffusionSampler` (a
Keras model: it saves to `.keras` with its denoiser, CRF and schedule).
Scores the samples with the accumulating Keras metrics `FrechetDistance`
and `ClassAccuracy` in a digit classifier's feature space. The baselines
are the full `T`-step DDIM sampler and the plain `T - s`-step one, printed
beside the CRF sampler. It writes the sampler (`.keras`), a grid of samples
and the table to `--out`.

    KERAS_BACKEND=jax .venv/bin/python examples/latent_crf_digits.py
    KERAS_BACKEND=jax .venv/bin/python examples/latent_crf_digits.py \
        --denoiser_steps 300 --width 16     # faster, rougher
    ... --quick     # a short run through every step (no quality)

Measured wall time on the loaded 2-core development machine (JAX): --quick
8.2 min, measured while other jobs shared the 2 cores (load average near
12); the full run was not timed in this change.
"""

import os

import keras
import matplotlib
import numpy as np
from _example import done
from _example import example_arguments

from keras_gr.data.digits import load_digit_images
from keras_gr.data.digits import split_digits
from keras_gr.data.digits import train_digit_classifier
from keras_gr.metrics import ClassAccuracy
from keras_gr.metrics import FrechetDistance
from keras_gr.metrics import vendi_score
from keras_gr.models import DigitsLatentDiffusion

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def options(parser):
    parser.add_argument("--denoiser_steps", type=int, default=1000)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="T")
    parser.add_argument("--skip", type=int, default=4, help="s")


args = example_arguments(
    __doc__,
    options,
    "20 training steps per part and width 8: runs every step, no quality",
)
train_steps = 20 if args.quick else 300
if args.quick:
    args.denoiser_steps, args.width = 20, 8

# 1. Data: 1797 real digits, upsampled, split.
images, labels = load_digit_images(16)
x_train, y_train, x_test, y_test = split_digits(images, labels)

# 2. The latent diffusion model: autoencoder, then the noise predictor.
pipe = DigitsLatentDiffusion(
    width=args.width,
    num_sampling_steps=args.steps,
    skip_steps=args.skip,
    crf_kwargs={"num_steps": 3, "dilations": (2, 4)},
)
print("autoencoder loss", pipe.fit_autoencoder(x_train, steps=train_steps))
print("denoiser loss", pipe.fit_denoiser(x_train, y_train, args.denoiser_steps))

# 3. The LatentCRF, trained on (latents at step T - s -> final latents).
before, after = pipe.fit_crf(
    num_pairs=128 if args.quick else 1024, steps=train_steps
)
print(
    f"CRF latent MSE to the full sampler: {before:.4f} -> {after:.4f} "
    f"(truncation alone: {pipe.history['crf_input_mse']:.4f})"
)

# 4. The CRF sampler is a Keras model: save it, reload it, same samples.
path = os.path.join(args.out, "latent_crf_sampler.keras")
pipe.sampler_for("crf").save(path)
reloaded = keras.models.load_model(path)
noise = np.random.default_rng(0).normal(size=(200,) + pipe.latent_shape)
noise = noise.astype("float32")
eval_labels = (np.arange(200) % 10).astype("int32")
same = np.allclose(
    reloaded.predict_on_batch([noise[:10], eval_labels[:10]]),
    pipe.sampler_for("crf").predict_on_batch([noise[:10], eval_labels[:10]]),
    atol=1e-5,
)
print("reloaded .keras sampler gives the same samples:", same)

# 5. Sample the same noise several ways and score them with a classifier.
classifier, features = train_digit_classifier(
    x_train, y_train, steps=train_steps
)
reference = np.asarray(features.predict(x_train, verbose=0))
lines = ["| method | denoiser calls | FID-style | accuracy | Vendi |"]
lines.append("|---|---|---|---|---|")
methods = ["full", "short", "crf"]
fig, axes = plt.subplots(len(methods), 10, figsize=(6, 2))
for row, method in enumerate(methods):
    out, calls = pipe.generate(eval_labels, noise, method)
    fd, acc = FrechetDistance(reference.shape[1]), ClassAccuracy()
    fd.update_state(reference, None)  # the real images' statistics
    for i in range(0, len(out), 50):  # the metrics accumulate over batches
        batch = out[i : i + 50]
        fd.update_state(None, features.predict(batch, verbose=0))
        logits = classifier.predict(batch, verbose=0)
        acc.update_state(eval_labels[i : i + 50], logits)
    feats = np.asarray(features.predict(out, verbose=0))
    vendi = np.mean(
        [vendi_score(feats[eval_labels == c][:16]) for c in range(10)]
    )
    lines.append(
        f"| {method} | {calls} | {float(fd.result()):.3f} | "
        f"{float(acc.result()):.3f} | {vendi:.3f} |"
    )
    for c in range(10):
        axes[row, c].imshow(out[c, ..., 0], cmap="gray", vmin=-1, vmax=1)
        axes[row, c].axis("off")
    axes[row, 0].set_title(method, fontsize=6, loc="left")
fig.savefig(os.path.join(args.out, "latent_crf_digits.png"), dpi=120)
table = "\n".join(lines)
with open(os.path.join(args.out, "latent_crf_digits.md"), "w") as f:
    f.write(table + "\n")
print(table)
if args.quick:
    print(
        "(--quick: 20 training steps per part, so the samples are noise and "
        "the table compares untrained samplers; compare the samplers in the "
        "full run.)"
    )
done(args)
