"""`DigitsLatentDiffusion`: the digits reference pipeline of the LatentCRF
family, training a small class-conditional latent diffusion model and a
LatentCRF that bypasses its last DDIM steps.

Every sampler it runs is a compiled `keras_gr.models.DiffusionSampler`
(one jitted function per method); the CRF's training pairs come from the
same sampler's `step`. Its parts live beside it, one file each:
`autoencoder.py`, `class_conditional_unet.py` (with
`conditional_res_block.py`), `latent_discriminator.py` and
`adversarial_crf_trainer.py` (the optional adversarial loss).

Nothing here loads or scores digits: the images, their `tf.data` streams
and the digit classifier live in `keras_gr.data.digits`, the evaluation in
`benchmarks/latent_crf.py` and `examples/latent_crf_digits.py`.

Reference: Ranasinghe et al., "LatentCRF: Continuous CRF for Efficient
Latent Diffusion", arXiv 2412.18596 (the LDM stays frozen; a LatentCRF
replaces a block of its DDIM steps). DDIM: Song et al., "Denoising
Diffusion Implicit Models", arXiv 2010.02502.
"""

import json
import os
import time

import keras
import numpy as np

from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr._validation import check_number
from keras_gr.data.digits import array_dataset
from keras_gr.data.digits import noised_latent_dataset
from keras_gr.layers.latent_crf import LatentCRF
from keras_gr.models.diffusion.adversarial_crf_trainer import (
    AdversarialCRFTrainer,
)
from keras_gr.models.diffusion.autoencoder import build_autoencoder
from keras_gr.models.diffusion.class_conditional_unet import (
    ClassConditionalUNet,
)
from keras_gr.models.diffusion.diffusion_sampler import DiffusionSampler
from keras_gr.models.diffusion.diffusion_sampler import NoiseSchedule
from keras_gr.models.diffusion.latent_discriminator import (
    build_latent_discriminator,
)


def _fit_stream(model, dataset, steps, verbose, callbacks):
    """One epoch of `steps` batches of `dataset`, a `tf.data` stream that
    is shuffled (seeded) already, so `shuffle=False`: Keras ignores and
    warns about `shuffle=True` for a dataset. Returns the history dict."""
    return model.fit(
        dataset,
        steps_per_epoch=steps,
        epochs=1,
        shuffle=False,
        verbose=verbose,
        callbacks=callbacks,
    ).history


class DigitsLatentDiffusion:
    """The digits reference pipeline: a class-conditional latent diffusion
    model of small grayscale images with a LatentCRF shortcut for the last
    `skip_steps` DDIM steps.

    It trains on any `(n, image_size, image_size, 1)` images in `[-1, 1]`
    with integer labels; its name and defaults (16 x 16 grayscale, 10
    classes, the widths) are the digits set-up of `benchmarks/latent_crf.py`
    and `examples/latent_crf_digits.py` (data and classifier:
    `keras_gr.data.digits`). It is kept in the library as the one tested
    recipe that wires the generic parts together (`build_autoencoder`,
    `ClassConditionalUNet`, `NoiseSchedule`, `DiffusionSampler`,
    `LatentCRF`), trains the CRF's pairs with the LDM frozen, and saves and
    loads as a whole; a model of other images uses those parts directly.

    Usage: `fit_autoencoder`, `fit_denoiser`, `fit_crf` (base frozen),
    then `generate(labels, noise, method)` with method `"full"` (T denoiser
    steps), `"truncated"` (the first T - s steps, returning the DDIM clean
    estimate), `"crf"` (the first T - s steps + one LatentCRF call) or
    `"short"` (a DDIM schedule of T - s steps over the whole timeline).
    Each method runs as one compiled `DiffusionSampler`
    (`sampler_for(method)`; `sampler` is the full one). `save(dir)` writes
    every model as a `.keras` file plus the latent statistics;
    `DigitsLatentDiffusion.load(dir)` restores the pipeline. The `fit_*`
    methods train on `tf.data` streams that are already shuffled (seeded
    by `seed`), so they pass `shuffle=False` to `fit`. The CRF's training
    pairs come from the full sampler's `step` (eager, one denoiser call per
    step): the pipeline has no DDIM code of its own.

    Choices (the paper is about Stable Diffusion; these are ours): 16x16
    images, an 8x8 latent grid (one stride-2 level) normalised to zero mean
    and unit variance per channel, the Stable-Diffusion "scaled linear"
    schedule with 1000 training steps, trailing DDIM timesteps, clean
    latents clipped to 1.2 x the largest training latent, a one-hot class as
    the CRF's conditioning vector, and the CRF fed the DDIM clean-latent
    estimate `x0` after step T - s by default (`crf_input="x0"`; `"zt"`
    feeds the noisy DDIM state instead). Both are functions of the latents
    at step T - s that the sampler already holds: no extra denoiser call.
    With `crf_kwargs={"use_timestep": True}` the CRF also receives the
    timestep it starts at.

    CRF training: latent MSE to the full sampler's final latents (the
    paper's latent denoising / distillation loss) "plus optionally a
    latent-space adversarial loss" (arXiv 2412.18596, summary only). With
    `adversarial_weight=w > 0`, `fit_crf` adds `w` times a non-saturating
    GAN loss `softplus(-D(crf(x), y))` against a fresh class-conditional
    latent discriminator `D` (`build_latent_discriminator`: three
    spectrally normalised 3x3 convolutions, global pooling, projection
    head), trained at the same
    time with `softplus(-D(real)) + softplus(D(crf(x)))`, the real latents
    being the full sampler's final latents. The discriminator architecture,
    the loss and the simultaneous (not alternating) updates with one Adam
    of the CRF's learning rate are reconstructed choices; the discriminator
    is training-only and not saved. `w = 0` (the default) is the MSE-only
    training, unchanged.

    Reference: Ranasinghe et al., "LatentCRF: Continuous CRF for Efficient
    Latent Diffusion", arXiv 2412.18596.

    Args:
        image_size: side of the (square, one-channel) images. Defaults to
            `16`.
        latent_channels: channels of the latent grid. Defaults to `4`.
        width: U-Net top width. Defaults to `32`.
        autoencoder_width: autoencoder width. Defaults to `16`.
        num_train_steps: diffusion training timesteps. Defaults to `1000`.
        num_sampling_steps: `T`. Defaults to `12`.
        skip_steps: `s`, the steps the CRF replaces. Defaults to `4`.
        crf_kwargs: `LatentCRF` arguments. Defaults to `{}`.
        crf_input: `"x0"` or `"zt"`. Defaults to `"x0"`.
        num_classes: number of classes. Defaults to `10`.
        adversarial_weight: weight `w >= 0` of the CRF's latent adversarial
            loss (see above). Defaults to `0.0` (MSE only).
        seed: seed of every initialisation and data stream. Defaults to
            `0`.

    Example:

    >>> pipe = DigitsLatentDiffusion(
    ...     image_size=8, latent_channels=2, width=8, autoencoder_width=4,
    ...     num_sampling_steps=3, skip_steps=1,
    ... )
    >>> pipe.latent_shape
    (4, 4, 2)
    >>> [pipe.sampler_for(m).denoiser_calls for m in ("full", "crf", "short")]
    [3, 2, 2]
    """

    def __init__(
        self,
        image_size: int = 16,
        latent_channels: int = 4,
        width: int = 32,
        autoencoder_width: int = 16,
        num_train_steps: int = 1000,
        num_sampling_steps: int = 12,
        skip_steps: int = 4,
        crf_kwargs: dict | None = None,
        crf_input: str = "x0",
        num_classes: int = 10,
        seed: int = 0,
        adversarial_weight: float = 0.0,
    ):
        num_sampling_steps = check_integer(
            "num_sampling_steps", num_sampling_steps, 2
        )
        self.skip_steps = check_integer(
            "skip_steps", skip_steps, 1, num_sampling_steps - 1
        )
        self.crf_input = check_choice("crf_input", crf_input, ("x0", "zt"))
        self.image_size = check_integer("image_size", image_size, 2)
        self.latent_channels = check_integer("latent_channels", latent_channels)
        self.num_train_steps = check_integer(
            "num_train_steps", num_train_steps, num_sampling_steps
        )
        self.num_sampling_steps = num_sampling_steps
        self.num_classes = check_integer("num_classes", num_classes, 2)
        self.seed = check_integer("seed", seed, 0)
        self.adversarial_weight = check_number(
            "adversarial_weight", adversarial_weight, minimum=0.0
        )
        self._config = {
            "image_size": image_size,
            "latent_channels": latent_channels,
            "width": width,
            "autoencoder_width": autoencoder_width,
            "num_train_steps": num_train_steps,
            "num_sampling_steps": num_sampling_steps,
            "skip_steps": skip_steps,
            "crf_kwargs": dict(crf_kwargs or {}),
            "crf_input": crf_input,
            "num_classes": num_classes,
            "seed": seed,
            "adversarial_weight": self.adversarial_weight,
        }
        size = image_size // 2
        self.latent_shape = (size, size, latent_channels)
        self.schedule = NoiseSchedule(num_train_steps)
        self.alpha_bars = self.schedule.alpha_bars

        keras.utils.set_random_seed(seed)
        self.encoder, self.decoder = build_autoencoder(
            image_size, latent_channels, autoencoder_width
        )
        self.denoiser = ClassConditionalUNet(
            self.latent_shape, self.num_classes, width
        )
        self.denoiser(  # symbolic call: builds every sublayer, no compute
            [
                keras.Input(self.latent_shape),
                keras.Input((1,)),
                keras.Input((), dtype="int32"),
            ]
        )
        self.crf_kwargs = dict(crf_kwargs or {})
        self._samplers = {}
        self.reset_crf()
        self.latent_mean = np.zeros(latent_channels, "float32")
        self.latent_std = np.ones(latent_channels, "float32")
        self._clip = None
        self.history = {}

    @property
    def clip(self) -> float | None:
        """The clip of every clean estimate, `[-clip, clip]` (None: no
        clipping): 1.2 x the largest training latent once
        `fit_autoencoder` ran. Setting it rebuilds the samplers."""
        return self._clip

    @clip.setter
    def clip(self, value):
        self._clip = None if value is None else float(value)
        self._samplers = {}

    @property
    def sampler(self) -> DiffusionSampler:
        """The full `T`-step sampler, `sampler_for("full")`."""
        return self.sampler_for("full")

    def reset_crf(
        self,
        seed=None,
        crf_kwargs=None,
        crf_input=None,
        skip_steps=None,
        adversarial_weight=None,
    ):
        """A fresh, untrained LatentCRF (and its training model), e.g. to
        repeat the CRF training with another seed, or (for ablations) with
        other `crf_kwargs`, `crf_input`, `skip_steps` or
        `adversarial_weight` (None: unchanged; the config follows). The LDM
        is untouched."""
        if adversarial_weight is not None:
            self.adversarial_weight = check_number(
                "adversarial_weight", adversarial_weight, minimum=0.0
            )
            self._config["adversarial_weight"] = self.adversarial_weight
        if seed is not None:
            keras.utils.set_random_seed(seed)
        if crf_kwargs is not None:
            self.crf_kwargs = dict(crf_kwargs)
            self._config["crf_kwargs"] = dict(crf_kwargs)
        if crf_input is not None:
            self.crf_input = check_choice("crf_input", crf_input, ("x0", "zt"))
            self._config["crf_input"] = crf_input
        new_skip = skip_steps is not None and skip_steps != self.skip_steps
        if new_skip:
            self.skip_steps = check_integer(
                "skip_steps", skip_steps, 1, self.num_sampling_steps - 1
            )
            self._config["skip_steps"] = skip_steps
            self._samplers = {}  # the short sampler changes too
        self.crf = LatentCRF(**self.crf_kwargs, name="latent_crf")
        inputs = [
            keras.Input((None, None, self.latent_channels)),
            keras.Input((self.num_classes,)),
        ]
        if self.crf.use_timestep:
            inputs.append(keras.Input((1,)))
        self.crf_model = keras.Model(inputs, self.crf(inputs), name="crf")
        self.discriminator = None  # made by fit_crf when adversarial
        self._samplers.pop("crf", None)

    # --- saving -------------------------------------------------------------

    def get_config(self):
        """The constructor arguments (JSON-serializable)."""
        return json.loads(json.dumps(self._config))

    def save(self, directory):
        """Writes the whole pipeline to `directory` (created if needed).

        Files: `encoder.keras`, `decoder.keras`, `denoiser.keras`,
        `crf.keras` (the CRF's training model, holding the `LatentCRF`), and
        `pipeline.json` with the constructor config, the noise schedule,
        the latent normalisation, the clip and the training history.
        `DigitsLatentDiffusion.load(directory)` restores it: the same
        samples for the same noise, and training can resume.
        """
        os.makedirs(directory, exist_ok=True)
        for name, model in (
            ("encoder", self.encoder),
            ("decoder", self.decoder),
            ("denoiser", self.denoiser),
            ("crf", self.crf_model),
        ):
            model.save(os.path.join(directory, f"{name}.keras"))
        state = {
            "config": self.get_config(),
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "latent_mean": self.latent_mean.tolist(),
            "latent_std": self.latent_std.tolist(),
            "clip": self.clip,
            "history": self.history,
        }
        with open(os.path.join(directory, "pipeline.json"), "w") as f:
            json.dump(state, f, indent=1)

    @classmethod
    def load(cls, directory):
        """The pipeline `save(directory)` wrote."""
        with open(os.path.join(directory, "pipeline.json")) as f:
            state = json.load(f)
        pipe = cls(**state["config"])

        def load(name):
            return keras.models.load_model(
                os.path.join(directory, f"{name}.keras")
            )

        pipe.encoder, pipe.decoder = load("encoder"), load("decoder")
        pipe.denoiser = load("denoiser")
        pipe.crf_model = load("crf")
        pipe.crf = pipe.crf_model.get_layer("latent_crf")
        pipe.schedule = keras.saving.deserialize_keras_object(state["schedule"])
        pipe.alpha_bars = pipe.schedule.alpha_bars
        pipe.latent_mean = np.asarray(state["latent_mean"], "float32")
        pipe.latent_std = np.asarray(state["latent_std"], "float32")
        pipe.clip = state["clip"]  # also drops samplers of the old models
        pipe.history = dict(state["history"])
        return pipe

    # --- autoencoder ------------------------------------------------------

    def fit_autoencoder(
        self,
        images,
        steps=400,
        batch_size=64,
        lr=2e-3,
        verbose=0,
        callbacks=None,
    ):
        """Trains the autoencoder (MSE) and fixes the latent normalisation."""
        inputs = keras.Input(self.encoder.input_shape[1:])
        ae = keras.Model(inputs, self.decoder(self.encoder(inputs)))
        ae.compile(keras.optimizers.Adam(lr), loss="mse")
        ds = array_dataset(images, images, batch_size, seed=self.seed)
        h = _fit_stream(ae, ds, steps, verbose, callbacks)
        self.history["autoencoder_loss"] = float(h["loss"][-1])
        raw = np.asarray(self.encoder.predict(images, verbose=0))
        self.latent_mean = raw.mean(axis=(0, 1, 2)).astype("float32")
        self.latent_std = raw.std(axis=(0, 1, 2)).astype("float32") + 1e-6
        latents = self.encode(images)
        self.clip = 1.2 * np.max(np.abs(latents))
        return self.history["autoencoder_loss"]

    def encode(self, images):
        raw = np.asarray(self.encoder.predict(images, verbose=0))
        return (raw - self.latent_mean) / self.latent_std

    def decode(self, latents):
        raw = np.asarray(latents) * self.latent_std + self.latent_mean
        return np.asarray(self.decoder.predict(raw, verbose=0))

    # --- denoiser -----------------------------------------------------------

    def fit_denoiser(
        self,
        images,
        labels,
        steps=2000,
        batch_size=64,
        lr=2e-3,
        verbose=0,
        callbacks=None,
    ):
        """Noise-prediction training (MSE on eps), cosine-decayed Adam."""
        latents = self.encode(images).astype("float32")
        ds = noised_latent_dataset(
            latents, labels, self.alpha_bars, batch_size, seed=self.seed
        )
        schedule = keras.optimizers.schedules.CosineDecay(
            lr, decay_steps=steps, alpha=0.05, warmup_target=None
        )
        self.denoiser.trainable = True
        self.denoiser.compile(keras.optimizers.Adam(schedule), loss="mse")
        h = _fit_stream(self.denoiser, ds, steps, verbose, callbacks)
        self.history["denoiser_loss"] = float(h["loss"][-1])
        return self.history["denoiser_loss"]

    # --- LatentCRF ----------------------------------------------------------

    def _crf_inputs(self, x, labels):
        inputs = [x, np.eye(self.num_classes, dtype="float32")[labels]]
        if self.crf.use_timestep:
            keep = self.num_sampling_steps - self.skip_steps
            t = float(self.sampler.timesteps[keep])
            inputs.append(np.full((len(x), 1), t, "float32"))
        return inputs

    def crf_training_pairs(
        self, num_pairs=1024, batch_size=512, seed=1, target_eta=0.0
    ):
        """Inputs at step T - s and the latents the last s steps produce.

        Both come from one run of the full sampler's `step` per batch: the
        first T - s steps give the CRF's input (`crf_input`: the clean
        estimate `x0` or the state `z_t`), the last s steps continue from
        that state to the target. Eager steps, one denoiser call each.

        Args:
            num_pairs: number of pairs (fresh noise and random labels).
            batch_size: denoiser batch.
            seed: seed of the noise and labels (`default_rng(seed)`) and of
                the tail noise (`default_rng([seed, 1])`, so the inputs do
                not depend on `target_eta`).
            target_eta: `eta` of the last s steps that make the target: 0
                (deterministic DDIM, the full sampler's own output) or up
                to 1 (DDPM-like ancestral steps: a random target with the
                detail the deterministic tail does not add).

        Returns:
            `(crf_inputs, labels, targets)`, NumPy arrays.
        """
        target_eta = check_number(
            "target_eta", target_eta, minimum=0.0, maximum=1.0
        )
        rng = np.random.default_rng(seed)
        tail_rng = np.random.default_rng([seed, 1])
        head = self.sampler_for("full")
        tail = head
        if target_eta > 0:
            tail = DiffusionSampler(
                self.denoiser,
                self.schedule,
                num_steps=self.num_sampling_steps,
                eta=target_eta,
                clip=self.clip,
            )
        inputs, labels_out, targets = [], [], []
        keep = self.num_sampling_steps - self.skip_steps
        for start in range(0, num_pairs, batch_size):
            n = min(batch_size, num_pairs - start)
            noise = rng.normal(size=(n,) + self.latent_shape).astype("float32")
            labels = rng.integers(0, self.num_classes, n).astype("int32")
            z = noise
            for k in range(keep):
                z, x0 = head.step(z, k, labels)
            inputs.append(
                keras.ops.convert_to_numpy(x0 if self.crf_input == "x0" else z)
            )
            for k in range(keep, self.num_sampling_steps):
                step_noise = None
                if tail.sigma(k) > 0:
                    step_noise = tail_rng.normal(size=z.shape)
                z, x0 = tail.step(z, k, labels, step_noise)
            labels_out.append(labels)
            targets.append(keras.ops.convert_to_numpy(x0))
        return (
            np.concatenate(inputs).astype("float32"),
            np.concatenate(labels_out),
            np.concatenate(targets).astype("float32"),
        )

    def fit_crf(
        self,
        num_pairs=1024,
        steps=400,
        batch_size=128,
        lr=1e-2,
        seed=1,
        verbose=0,
        callbacks=None,
        target_eta=0.0,
    ):
        """Trains the LatentCRF with the diffusion model frozen (latent MSE
        to the full sampler's final latents; with `target_eta > 0` to
        those of a stochastic tail, see `crf_training_pairs`), plus, when
        `adversarial_weight > 0`, the latent adversarial term against a
        fresh discriminator (class docstring; its last losses go to
        `history`). Returns (before, after) MSE on the training pairs."""
        self.denoiser.trainable = False
        x, labels, y = self.crf_training_pairs(
            num_pairs, seed=seed, target_eta=target_eta
        )
        inputs = self._crf_inputs(x, labels)
        self.crf_model.compile(keras.optimizers.Adam(lr), loss="mse")
        before = float(self.crf_model.evaluate(inputs, y, verbose=0))
        ds = array_dataset(tuple(inputs), y, batch_size, seed=seed)
        trainer = self.crf_model
        if self.adversarial_weight > 0:
            trainer = AdversarialCRFTrainer(
                self.crf_model,
                build_latent_discriminator(
                    self.latent_channels, self.num_classes
                ),
                self.adversarial_weight,
            )
            trainer.compile(keras.optimizers.Adam(lr))
        self.history.pop("crf_adversarial_loss", None)
        self.history.pop("crf_discriminator_loss", None)
        h = _fit_stream(trainer, ds, steps, verbose, callbacks)
        if trainer is not self.crf_model:
            self.discriminator = trainer.discriminator
            for key in ("adversarial", "discriminator"):
                self.history[f"crf_{key}_loss"] = float(h[key][-1])
        after = float(self.crf_model.evaluate(inputs, y, verbose=0))
        truncation = float(np.mean(np.square(x - y)))
        self.history.update(
            crf_mse_before=before,
            crf_mse_after=after,
            crf_input_mse=truncation,
        )
        return before, after

    # --- generation ---------------------------------------------------------

    def sampler_for(self, method):
        """The compiled `DiffusionSampler` of `"full"`, `"truncated"`,
        `"crf"` or `"short"` (see the class docstring; built once per
        method, rebuilt when the clip, the CRF or `skip_steps` change)."""
        method = check_choice(
            "method", method, ("full", "truncated", "crf", "short")
        )
        if method not in self._samplers:
            keep = self.num_sampling_steps - self.skip_steps
            kwargs = {}
            if method == "crf":
                kwargs = {
                    "crf": self.crf,
                    "crf_start": keep,
                    "crf_input": self.crf_input,
                    "crf_num_classes": self.num_classes,
                }
            elif method == "truncated":
                kwargs = {"stop_step": keep}
            steps = keep if method == "short" else self.num_sampling_steps
            self._samplers[method] = DiffusionSampler(
                self.denoiser,
                self.schedule,
                num_steps=steps,
                clip=self.clip,
                **kwargs,
            )
        return self._samplers[method]

    def generate(self, labels, noise, method="crf", decode=True):
        """Samples with one of the methods; returns `(images or latents,
        denoiser_calls)` (calls per batch)."""
        method = check_choice(
            "method", method, ("full", "truncated", "crf", "short")
        )
        labels = np.asarray(labels, "int32")
        noise = np.asarray(noise, "float32")
        sampler = self.sampler_for(method)
        latents = np.asarray(sampler.predict_on_batch([noise, labels]))
        calls = sampler.denoiser_calls
        return (self.decode(latents) if decode else latents), calls

    def time_generation(self, labels, noise, method, repeats=3):
        """Median wall seconds of `generate(..., decode=False)` (after one
        warm-up call that compiles)."""
        self.generate(labels, noise, method, decode=False)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.generate(labels, noise, method, decode=False)
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    def cost_table(self):
        """FLOPs / params of LatentCRF vs one denoiser call."""
        crf = self.crf.cost(self.latent_shape, self.num_classes)
        return {
            "denoiser_flops": self.denoiser.flops(),
            "denoiser_params": int(self.denoiser.count_params()),
            "crf_flops": crf["flops"],
            "crf_params": crf["params"],
        }
