"""A generic noise schedule and a compiled DDIM / DDPM sampler of Keras
models, with a LatentCRF placeable anywhere in the timeline.

References: Song et al., "Denoising Diffusion Implicit Models", arXiv
2010.02502 (DDIM, and its `eta` interpolation to DDPM); Ho et al.,
"Denoising Diffusion Probabilistic Models", arXiv 2006.11239; Ranasinghe et
al., "LatentCRF: Continuous CRF for Efficient Latent Diffusion", arXiv
2412.18596 (a LatentCRF bypasses a block of the denoising timeline, the
diffusion model unchanged).
"""

import math

import keras
import numpy as np
from keras import ops

from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr._validation import check_number

# --------------------------------------------------------------------------
# Noise schedule.
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_gr")
class NoiseSchedule:
    """The forward-process schedule `abar_t = prod_{s<=t} (1 - beta_s)`.

    - `"scaled_linear"`: betas linear in `sqrt` space between `beta_start`
      and `beta_end` (Stable Diffusion's schedule).
    - `"linear"`: betas linear between `beta_start` and `beta_end` (DDPM).
    - `"cosine"`: `abar_t = f(t + 1) / f(0)`, `f(t) = cos^2((t / N + s) /
      (1 + s) pi / 2)`, `s = 0.008`, betas clipped to 0.999 (Nichol and
      Dhariwal, arXiv 2102.09672).

    A plain serializable object (`get_config` / `from_config`): a sampler
    stores it in its own config, so it travels in the `.keras` file.

    Args:
        num_train_steps: `N`, the number of training timesteps. Defaults to
            `1000`.
        kind: one of `"scaled_linear"`, `"linear"`, `"cosine"`. Defaults to
            `"scaled_linear"`.
        beta_start: first beta (linear kinds). Defaults to `0.00085`.
        beta_end: last beta (linear kinds). Defaults to `0.012`.

    Example:

    >>> schedule = NoiseSchedule(num_train_steps=1000)
    >>> schedule.timesteps(4).tolist()
    [999, 749, 499, 249]
    >>> bool(schedule.alpha_bars[0] > schedule.alpha_bars[-1])
    True
    """

    KINDS = ("scaled_linear", "linear", "cosine")

    def __init__(
        self,
        num_train_steps: int = 1000,
        kind: str = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
    ):
        self.num_train_steps = check_integer(
            "num_train_steps", num_train_steps, 2
        )
        self.kind = check_choice("kind", kind, self.KINDS)
        self.beta_start = check_number(
            "beta_start", beta_start, minimum=0, maximum=1, min_inclusive=False
        )
        self.beta_end = check_number(
            "beta_end", beta_end, minimum=0, maximum=1, max_inclusive=False
        )
        n = self.num_train_steps
        if kind == "scaled_linear":
            betas = (
                np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), n) ** 2
            )
        elif kind == "linear":
            betas = np.linspace(beta_start, beta_end, n)
        else:
            steps = np.arange(n + 1, dtype="float64") / n
            f = np.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
        self.alpha_bars = np.cumprod(1.0 - betas)

    SPACINGS = ("trailing", "leading", "linspace", "quadratic")

    def timesteps(
        self, num_steps: int, spacing: str = "trailing"
    ) -> np.ndarray:
        """The `num_steps` sampling timesteps, descending.

        Spacings (`N` training steps, `T = num_steps`, `k = 0, ..., T-1`):

        - `"trailing"`: `t_k = round(N - k N / T) - 1`, so the first step
          starts at the last training step (Lin et al., arXiv 2305.08891);
        - `"leading"`: `t_k = (T - 1 - k) floor(N / T)` (the DDIM / Stable
          Diffusion default, which never visits `t = N - 1`);
        - `"linspace"`: `T` points evenly from `N - 1` down to `0` (`N - 1`
          alone when `T = 1`);
        - `"quadratic"`: `t_k = round((N - 1) ((T - 1 - k) / (T - 1))^2)`,
          dense near `t = 0` (DDIM's "quad" spacing, here reaching
          `N - 1`).

        Raises a `ValueError` when the spacing repeats a timestep.
        """
        num_steps = check_integer(
            "num_steps", num_steps, 1, self.num_train_steps
        )
        spacing = check_choice("spacing", spacing, self.SPACINGS)
        n, k = self.num_train_steps, np.arange(num_steps)
        if spacing == "trailing":
            steps = np.round(np.arange(n, 0, -n / num_steps))
            steps = steps[:num_steps] - 1
        elif spacing == "leading":
            steps = (num_steps - 1 - k) * (n // num_steps)
        else:
            frac = (num_steps - 1 - k) / max(num_steps - 1, 1)
            frac = frac if num_steps > 1 else np.ones(1)
            if spacing == "quadratic":
                frac = frac**2
            steps = np.round((n - 1) * frac)
        steps = steps.astype("int64")
        if len(np.unique(steps)) != num_steps:
            raise ValueError(
                f"`spacing` {spacing!r} repeats a timestep at "
                f"num_steps={num_steps}, num_train_steps={n}. Received: "
                f"spacing={spacing!r}"
            )
        return steps

    def get_config(self):
        return {
            "num_train_steps": self.num_train_steps,
            "kind": self.kind,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def ddim_update(
    z, eps, alpha_bar, alpha_bar_next, sigma=0.0, noise=None, clip=None
):
    """One DDIM update from `abar` to `abar_next`, in `keras.ops`.

    `x0 = (z - sqrt(1 - abar) eps) / sqrt(abar)` (clipped to `[-clip,
    clip]` when `clip` is set) and
    `z' = sqrt(abar') x0 + sqrt(1 - abar' - sigma^2) eps + sigma xi`
    with `xi = noise` (`sigma = 0`: deterministic DDIM; `sigma` from
    `ddim_sigma` with `eta = 1`: DDPM's ancestral step). `alpha_bar*` and
    `sigma` are Python floats (the timeline is static); `abar' = 1` gives
    `z' = x0`.

    Returns:
        `(z_next, x0)`.
    """
    x0 = (z - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    if clip is not None:
        x0 = ops.clip(x0, -clip, clip)
    z_next = math.sqrt(alpha_bar_next) * x0
    scale = math.sqrt(max(1.0 - alpha_bar_next - sigma**2, 0.0))
    if scale > 0:
        z_next = z_next + scale * eps
    if sigma > 0:
        z_next = z_next + sigma * noise
    return z_next, x0


def ddim_sigma(alpha_bar, alpha_bar_next, eta):
    """`eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar')`."""
    if eta == 0 or alpha_bar_next >= 1.0:
        return 0.0
    return eta * math.sqrt(
        (1.0 - alpha_bar_next)
        / (1.0 - alpha_bar)
        * (1.0 - alpha_bar / alpha_bar_next)
    )


# --------------------------------------------------------------------------
# The sampler.
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_gr")
class DiffusionSampler(keras.Model):
    """DDIM / DDPM sampling of any denoiser as one compiled Keras model.

    `call` unrolls the whole (static) timeline in `keras.ops`, so
    `predict` / `predict_on_batch` compile the complete sampler into one
    jitted function: no host round trip per step (the TPU path). The
    denoiser is any `keras.Model` (or layer) `[z_t, t] -> eps` or
    `[z_t, t, conditioning] -> eps`, `t` of shape `(batch, 1)` float.

    LatentCRF placement: with `crf` given, the steps `crf_start, ...,
    crf_stop - 1` of the `num_steps`-step timeline are bypassed. At step
    `crf_start` the CRF maps `crf_input` (`"x0"`: the clean estimate the
    previous step produced, the noisy state itself when `crf_start = 0`;
    `"zt"`: the noisy state `z_t`) to a clean-latent estimate `x0'`. With
    `crf_stop = num_steps` that is the output (the CRF replaces the tail).
    Otherwise the sampler re-enters the timeline at `t_{crf_stop}` with the
    DDIM-consistent state `sqrt(abar) x0' + sqrt(1 - abar) eps'`, `eps'`
    the noise direction implied by `z_t` and `x0'`, and the LDM runs the
    remaining steps. The CRF is called as `crf([x, conditioning,
    timestep])`, the conditioning one-hot encoded when `crf_num_classes` is
    set (integer labels for the denoiser, one-hot for the CRF), and left
    out when the sampler is unconditioned; the timestep `t_{crf_start}`
    only when the CRF has `use_timestep=True`.

    Truncation: with `stop_step` set, only the first `stop_step` steps run
    and the output is the clean estimate `x0` the last of them produced
    (the "truncated" sampler a LatentCRF is compared against, and the
    CRF's `x0` input). `step(z, k, conditioning, noise)` runs one step of
    the timeline on its own, for host-side loops that need the state
    between steps (the CRF's training pairs).

    Building and saving: the sampler has no weights of its own; it is
    built as soon as its denoiser (and CRF) are, so a sampler made from
    built models saves to `.keras` before its first call. It is never
    compiled for training (`predict` / `predict_on_batch` need no
    `compile()`), so its `.keras` file carries no compile config.

    Call arguments:
        inputs: the starting noise `(batch, h, w, c)`, or `[noise,
            conditioning]`.

    Returns:
        The final latents, shape of the noise, float32.

    Args:
        denoiser: the noise predictor, a `keras.Model` or layer.
        schedule: a `NoiseSchedule` (or its config dict).
        num_steps: `T`, the steps of the full timeline. Defaults to `12`.
        eta: 0 for deterministic DDIM, 1 for DDPM-like ancestral steps (the
            per-step noise drawn with `keras.random.normal` from `seed`).
            Defaults to `0.0`.
        clip: clip of every clean estimate to `[-clip, clip]` (None: no
            clipping). Defaults to `None`.
        crf: the bypass layer (e.g. `keras_gr.layers.LatentCRF`), or None.
            Defaults to `None`.
        crf_start: first bypassed step. Defaults to `None` (no bypass).
        crf_stop: the step the LDM resumes at (`num_steps`: none).
            Defaults to `None` (`num_steps`).
        crf_input: `"x0"` or `"zt"`. Defaults to `"x0"`.
        crf_num_classes: one-hot size for the CRF's conditioning (None:
            pass the conditioning unchanged). Defaults to `None`.
        spacing: the timestep spacing (`NoiseSchedule.timesteps`), one of
            `"trailing"`, `"leading"`, `"linspace"`, `"quadratic"`.
            Defaults to `"trailing"`.
        seed: seed of the `eta > 0` noise. Defaults to `0`.
        stop_step: run only the first `stop_step` steps (an integer in
            `[1, num_steps]`, not combined with a `crf`) and return the
            clean estimate `x0` after the last one. Defaults to `None`
            (the whole timeline).
        **kwargs: base `keras.Model` arguments.

    Example:

    >>> z = keras.Input((4, 4, 2))
    >>> t = keras.Input((1,))
    >>> eps = keras.layers.Conv2D(2, 1)(z)
    >>> denoiser = keras.Model([z, t], eps)
    >>> sampler = DiffusionSampler(denoiser, NoiseSchedule(), num_steps=4)
    >>> noise = np.random.default_rng(0).normal(size=(3, 4, 4, 2))
    >>> sampler.predict_on_batch(noise).shape
    (3, 4, 4, 2)
    >>> sampler.denoiser_calls
    4
    """

    def __init__(
        self,
        denoiser: keras.layers.Layer | dict,
        schedule: NoiseSchedule | dict,
        num_steps: int = 12,
        eta: float = 0.0,
        clip: float | None = None,
        crf: keras.layers.Layer | dict | None = None,
        crf_start: int | None = None,
        crf_stop: int | None = None,
        crf_input: str = "x0",
        crf_num_classes: int | None = None,
        spacing: str = "trailing",
        seed: int = 0,
        stop_step: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(
                "`schedule` must be a NoiseSchedule. "
                f"Received: schedule={schedule!r}"
            )
        if isinstance(denoiser, dict):
            denoiser = keras.saving.deserialize_keras_object(denoiser)
        if isinstance(crf, dict):
            crf = keras.saving.deserialize_keras_object(crf)
        self.denoiser = denoiser
        self.schedule = schedule
        self.num_steps = check_integer(
            "num_steps", num_steps, 1, schedule.num_train_steps
        )
        self.eta = check_number("eta", eta, minimum=0.0, maximum=1.0)
        self.clip = (
            None
            if clip is None
            else check_number("clip", clip, minimum=0.0, min_inclusive=False)
        )
        self.crf = crf
        if crf is None and (crf_start is not None or crf_stop is not None):
            raise ValueError(
                "`crf_start` / `crf_stop` need a `crf`. Received: crf=None, "
                f"crf_start={crf_start!r}, crf_stop={crf_stop!r}"
            )
        if crf is not None:
            if crf_start is None:
                raise ValueError(
                    "`crf_start` must be given with a `crf`: an integer in "
                    f"[0, {self.num_steps - 1}]. Received: crf_start=None"
                )
            crf_start = check_integer(
                "crf_start", crf_start, 0, self.num_steps - 1
            )
            crf_stop = self.num_steps if crf_stop is None else crf_stop
            crf_stop = check_integer(
                "crf_stop", crf_stop, crf_start + 1, self.num_steps
            )
        self.crf_start = crf_start
        self.crf_stop = crf_stop
        self.crf_input = check_choice("crf_input", crf_input, ("x0", "zt"))
        self.crf_num_classes = (
            None
            if crf_num_classes is None
            else check_integer("crf_num_classes", crf_num_classes)
        )
        self.seed = check_integer("seed", seed, 0)
        if stop_step is not None:
            if crf is not None:
                raise ValueError(
                    "`stop_step` cannot be combined with a `crf` (a "
                    "truncated sampler has no bypass). Received: "
                    f"stop_step={stop_step!r} with a crf"
                )
            stop_step = check_integer("stop_step", stop_step, 1, self.num_steps)
        self.stop_step = stop_step
        self.spacing = spacing
        self.timesteps = schedule.timesteps(self.num_steps, spacing)
        # No weights of its own: built exactly when its parts are, so a
        # sampler of built parts saves before its first call.
        self.built = all(
            layer.built for layer in (denoiser, crf) if layer is not None
        )

    @property
    def denoiser_calls(self) -> int:
        """Denoiser evaluations per sample batch (static)."""
        if self.stop_step is not None:
            return self.stop_step
        if self.crf is None:
            return self.num_steps
        return self.num_steps - (self.crf_stop - self.crf_start)

    def _alpha_bar(self, k):
        if k >= self.num_steps:
            return 1.0
        return float(self.schedule.alpha_bars[self.timesteps[k]])

    def _eps(self, z, k, cond):
        t = ops.full((ops.shape(z)[0], 1), float(self.timesteps[k]))
        inputs = [z, t] if cond is None else [z, t, cond]
        return ops.cast(self.denoiser(inputs), "float32")

    def _crf(self, x, k, cond):
        inputs = [x]
        if cond is not None:
            if self.crf_num_classes is not None:
                cond = ops.one_hot(
                    ops.reshape(ops.cast(cond, "int32"), (-1,)),
                    self.crf_num_classes,
                )
            inputs.append(cond)
        if getattr(self.crf, "use_timestep", False):
            inputs.append(
                ops.full((ops.shape(x)[0], 1), float(self.timesteps[k]))
            )
        out = self.crf(inputs if len(inputs) > 1 else x)
        return ops.cast(out, "float32")

    def sigma(self, k: int) -> float:
        """The noise scale `sigma_k` of step `k` (`ddim_sigma` with this
        sampler's `eta`; 0 for deterministic DDIM and at the last step)."""
        return ddim_sigma(self._alpha_bar(k), self._alpha_bar(k + 1), self.eta)

    def step(self, z, k: int, conditioning=None, noise=None):
        """Step `k` of the timeline from the state `z` (no CRF).

        One denoiser call at `t_k`, then `ddim_update` to `t_{k+1}`. With
        `sigma(k) > 0` the step adds `sigma(k) * noise`; `noise=None` draws
        it from `keras.random.normal` with the sampler's seed (as `call`
        does). Runs eagerly or inside a traced function.

        Returns:
            `(z_next, x0)`, float32.
        """
        ab, ab_next = self._alpha_bar(k), self._alpha_bar(k + 1)
        z = ops.cast(z, "float32")
        if conditioning is not None:  # Keras refuses mixed nested inputs
            conditioning = ops.convert_to_tensor(conditioning)
        eps = self._eps(z, k, conditioning)
        sigma = ddim_sigma(ab, ab_next, self.eta)
        if sigma > 0:
            if noise is None:
                noise = keras.random.normal(
                    ops.shape(z), seed=self.seed * 100003 + k
                )
            noise = ops.cast(noise, "float32")
        return ddim_update(z, eps, ab, ab_next, sigma, noise, self.clip)

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):
            z, cond = inputs
        else:
            z, cond = inputs, None
        z = ops.cast(z, "float32")
        x0 = z
        k = 0
        stop = self.num_steps if self.stop_step is None else self.stop_step
        while k < stop:
            if self.crf is not None and k == self.crf_start:
                ab = self._alpha_bar(k)
                x_in = z if (self.crf_input == "zt" or k == 0) else x0
                x0 = self._crf(x_in, k, cond)
                if self.clip is not None:
                    x0 = ops.clip(x0, -self.clip, self.clip)
                k = self.crf_stop
                if k == self.num_steps:
                    return x0
                # Re-enter at t_{crf_stop} along the implied noise.
                eps = (z - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
                ab_resume = self._alpha_bar(k)
                z = math.sqrt(ab_resume) * x0 + math.sqrt(1 - ab_resume) * eps
                continue
            z, x0 = self.step(z, k, cond)
            k += 1
        return x0

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(
            input_shape[0], (list, tuple)
        ):
            return tuple(input_shape[0])
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "denoiser": keras.saving.serialize_keras_object(self.denoiser),
                "schedule": keras.saving.serialize_keras_object(self.schedule),
                "num_steps": self.num_steps,
                "eta": self.eta,
                "clip": self.clip,
                "crf": None
                if self.crf is None
                else keras.saving.serialize_keras_object(self.crf),
                "crf_start": self.crf_start,
                "crf_stop": self.crf_stop,
                "crf_input": self.crf_input,
                "crf_num_classes": self.crf_num_classes,
                "spacing": self.spacing,
                "seed": self.seed,
                "stop_step": self.stop_step,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
