"""LatentCRF (arXiv 2412.18596): does one CRF call replace the last third of
the DDIM steps?

Trains, once and with fixed seeds, the small class-conditional latent
diffusion pipeline on scikit-learn digits (`keras_gr.models`), a digit
classifier (the metric space), and a LatentCRF with the diffusion model
frozen. Then, from the same starting noise, samples with

- `full`: T DDIM steps (the peer of every ratio),
- `truncated`: the first T - s steps, returning DDIM's clean estimate,
- `crf`: the first T - s steps + one LatentCRF call,
- `short`: a DDIM schedule of T - s steps over the whole timeline,

and reports denoiser evaluations, wall time per sample (ratio to `full`),
the FID-style distance in classifier-feature space, class accuracy and Vendi
diversity, plus LatentCRF's FLOPs and parameters relative to the denoiser
and a PNG grid of samples.

    KERAS_BACKEND=jax .venv/bin/python -m benchmarks.latent_crf [--quick]
"""

import argparse
import time

import keras
import matplotlib
import numpy as np

from benchmarks import harness
from keras_gr.models import latent_diffusion as ld

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SIZES = {
    "default": {
        "ae_steps": 400,
        "classifier_steps": 400,
        "denoiser_steps": 1600,
        "crf_pairs": 2048,
        "crf_steps": 400,
        "per_class": 50,
        "timing_batch": 100,
        "width": 32,
    },
    "quick": {
        "ae_steps": 150,
        "classifier_steps": 150,
        "denoiser_steps": 300,
        "crf_pairs": 512,
        "crf_steps": 150,
        "per_class": 20,
        "timing_batch": 50,
        "width": 16,
    },
}
METHODS = ("full", "truncated", "crf", "short")


def save_grid(samples, path, per_class=2):
    """Rows = methods, columns = `per_class` samples of each class."""
    names = list(samples)
    cols = 10 * per_class
    fig, axes = plt.subplots(
        len(names), cols, figsize=(cols * 0.5, len(names) * 0.6)
    )
    for r, name in enumerate(names):
        images, labels = samples[name]
        picks = [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
        for j, idx in enumerate(np.concatenate(picks)):
            ax = axes[r, j]
            ax.imshow(images[idx, ..., 0], cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", fontsize=7)
    fig.tight_layout(pad=0.1)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=12, help="T")
    parser.add_argument("--skip", type=int, default=4, help="s")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "default"]
    start = time.perf_counter()
    backend = keras.backend.backend()
    log = {}

    images, labels = ld.load_digit_images(16)
    x_train, y_train, x_test, y_test = ld.split_digits(
        images, labels, seed=args.seed
    )
    pipe = ld.DigitsLatentDiffusion(
        width=size["width"],
        num_sampling_steps=args.steps,
        skip_steps=args.skip,
        crf_kwargs={"num_steps": 3, "neighborhood_size": 3, "num_experts": 8},
        seed=args.seed,
    )
    t = time.perf_counter()
    pipe.fit_autoencoder(x_train, steps=size["ae_steps"])
    pipe.fit_denoiser(x_train, y_train, steps=size["denoiser_steps"])
    log["train_diffusion_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pipe.fit_crf(num_pairs=size["crf_pairs"], steps=size["crf_steps"])
    log["train_crf_s"] = time.perf_counter() - t
    classifier, features = ld.train_digit_classifier(
        x_train, y_train, steps=size["classifier_steps"], seed=args.seed
    )
    reference = np.asarray(features.predict(x_train, verbose=0))

    # Same starting noise and labels for every method.
    n = 10 * size["per_class"]
    rng = np.random.default_rng(args.seed + 100)
    eval_labels = np.arange(n) % 10
    noise = rng.normal(size=(n,) + pipe.latent_shape).astype("float32")

    real = ld.evaluate_samples(x_test, y_test, classifier, features, reference)
    rows = [
        {
            "method": "real test images",
            "denoiser_calls": 0,
            "crf_calls": 0,
            "s_per_sample": float("nan"),
            **real,
        }
    ]
    samples = {}
    tb = size["timing_batch"]
    for method in METHODS:
        out, calls = pipe.generate(eval_labels, noise, method)
        samples[method] = (out, eval_labels)
        rows.append(
            {
                "method": method,
                "denoiser_calls": calls,
                "crf_calls": int(method == "crf"),
                **ld.evaluate_samples(
                    out, eval_labels, classifier, features, reference
                ),
            }
        )
    # Wall time: round-robin over the methods (so that load from other
    # processes hits all of them alike), best of `repeats` runs each.
    times = {m: [] for m in METHODS}
    for method in METHODS:  # warm-up: compiles the batch shape
        pipe.generate(eval_labels[:tb], noise[:tb], method, decode=False)
    for _ in range(7):
        for method in METHODS:
            t = time.perf_counter()
            pipe.generate(eval_labels[:tb], noise[:tb], method, decode=False)
            times[method].append(time.perf_counter() - t)
    for row in rows[1:]:
        row["s_per_sample"] = min(times[row["method"]]) / tb
    harness.ratio_table(
        rows[1:], key="method", value="s_per_sample", peer="full"
    )
    rows[0]["s_per_sample_ratio"] = float("nan")
    columns = [
        "method",
        "denoiser_calls",
        "crf_calls",
        "s_per_sample",
        "s_per_sample_ratio",
        "frechet_distance",
        "class_accuracy",
        "vendi",
    ]
    rows = [{c: r[c] for c in columns} for r in rows]

    costs = pipe.cost_table()
    keep = args.steps - args.skip
    cost_rows = [
        {
            "model": "denoiser (1 call)",
            "params": costs["denoiser_params"],
            "flops_per_sample": costs["denoiser_flops"],
        },
        {
            "model": "LatentCRF (1 call)",
            "params": costs["crf_params"],
            "flops_per_sample": costs["crf_flops"],
        },
        {
            "model": "LatentCRF / denoiser",
            "params": costs["crf_params"] / costs["denoiser_params"],
            "flops_per_sample": costs["crf_flops"] / costs["denoiser_flops"],
        },
        {
            "model": f"sampler T-s+CRF / T (T={args.steps}, s={args.skip})",
            "params": float("nan"),
            "flops_per_sample": (
                keep * costs["denoiser_flops"] + costs["crf_flops"]
            )
            / (args.steps * costs["denoiser_flops"]),
        },
    ]
    name = f"latent_crf_{backend}" + ("_quick" if args.quick else "")
    grid_path = harness.result_path(name, ".png")
    save_grid(samples, grid_path)
    log["total_s"] = time.perf_counter() - start
    meta = {
        "T": args.steps,
        "s": args.skip,
        "seed": args.seed,
        "samples_per_method": n,
        **size,
        **{k: round(v, 4) for k, v in pipe.history.items()},
        **{k: round(v, 1) for k, v in log.items()},
    }
    notes = (
        "Denoiser calls are counted by the sampler (one per batch step). "
        "Wall time: best of 7 round-robin runs of each sampler on a batch of "
        f"{tb} (latents only, compiled denoiser and CRF), divided by the "
        "batch. FID-style distance: Frechet distance of classifier features "
        "to the training images (lower is better); the 'real test images' "
        "row is the floor. Vendi (q=1, cosine) over 16 samples per class, "
        f"averaged over classes. Sample grid: `{grid_path}`."
    )
    md = harness.write_results(
        name,
        {"Samplers (same noise, same models)": rows, "Cost": cost_rows},
        meta=meta,
        notes=notes,
    )
    print(md)
    return md


if __name__ == "__main__":
    main()
