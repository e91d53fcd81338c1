"""`DDIMSampler`: deprecated host-side DDIM loop, kept for one release.

It was the digits pipeline's NumPy sampler; the pipeline now samples only
through the compiled `keras_gr.models.DiffusionSampler` (whose `stop_step`
gives the truncated sampler and whose `step` the state between steps).
This thin alias warns on construction and runs every update through
`diffusion_sampler.ddim_update`, the one DDIM implementation.

DDIM: Song et al., "Denoising Diffusion Implicit Models", arXiv
2010.02502.
"""

import warnings
from typing import Any

import numpy as np
from keras import ops

from keras_gr._validation import check_integer
from keras_gr.models.diffusion.diffusion_sampler import NoiseSchedule
from keras_gr.models.diffusion.diffusion_sampler import ddim_update


class DDIMSampler:
    """Deprecated: use `keras_gr.models.DiffusionSampler`.

    Deterministic DDIM (`eta = 0`) on the host that counts denoiser calls:
    `denoiser.predict_on_batch([z_t, t, labels])` once per step, the
    update by `ddim_update`. Constructing one emits a `DeprecationWarning`;
    it will be removed in the next release.

    Args:
        denoiser: any object with `predict_on_batch([z_t, t, labels])`
            returning the predicted noise.
        alpha_bars: the training schedule `abar_t` (e.g.
            `NoiseSchedule().alpha_bars`).
        num_steps: `T`, the steps of the full sampler, trailing spacing.
        clip: clip of the clean estimates (None: no clipping). Defaults to
            `None`.

    Example (the replacement, `DiffusionSampler(denoiser, schedule,
    num_steps, stop_step=2)`, compiles the same two steps into one call):

    >>> class Zero:  # predicts no noise: x0 = z / sqrt(abar)
    ...     def predict_on_batch(self, inputs):
    ...         return np.zeros_like(inputs[0])
    >>> sampler = DDIMSampler(Zero(), NoiseSchedule().alpha_bars, 4)
    >>> out = sampler.sample(np.ones((2, 4, 4, 1)), [0, 1], stop_after=2)
    >>> sampler.denoiser_calls, out["x0"].shape
    (2, (2, 4, 4, 1))
    """

    def __init__(
        self,
        denoiser: Any,
        alpha_bars: Any,
        num_steps: int,
        clip: float | None = None,
    ):
        warnings.warn(
            "`DDIMSampler` is deprecated and will be removed in the next "
            "release. Use `keras_gr.models.DiffusionSampler` (its "
            "`stop_step` argument truncates the timeline, `step` runs one "
            "step).",
            DeprecationWarning,
            stacklevel=2,
        )
        self.denoiser = denoiser
        self.alpha_bars = np.asarray(alpha_bars, "float64")
        self.num_steps = check_integer("num_steps", num_steps)
        # Trailing spacing; the spacing depends only on the number of
        # training steps, not on the betas.
        self.timesteps = NoiseSchedule(len(self.alpha_bars)).timesteps(
            self.num_steps
        )
        self.clip = clip
        self.denoiser_calls = 0

    def reset_count(self):
        """Sets `denoiser_calls` to 0."""
        self.denoiser_calls = 0

    def sample(self, noise, labels, stop_after=None, timesteps=None):
        """Runs DDIM from `noise` (`(batch, h, w, c)`) for the integer
        `labels`, the first `stop_after` steps only when given (None: all),
        on the descending `timesteps` when given (None: the sampler's).

        Returns:
            A dict of float32 arrays: `latents` (the final latents, or the
            clean estimate when stopped early), `x0` and `zt` (the state
            after the last executed step).
        """
        timesteps = self.timesteps if timesteps is None else timesteps
        n = len(timesteps)
        stop_after = n if stop_after is None else stop_after
        stop_after = check_integer("stop_after", stop_after, 1, n)
        labels = np.asarray(labels, "int32")
        z = np.asarray(noise, "float32")
        x0 = z
        for k in range(stop_after):
            t = int(timesteps[k])
            ab = float(self.alpha_bars[t])
            ab_next = 1.0 if k + 1 == n else self.alpha_bars[timesteps[k + 1]]
            self.denoiser_calls += 1
            eps = self.denoiser.predict_on_batch(
                [z, np.full((len(z), 1), float(t), "float32"), labels]
            )
            eps = np.asarray(eps, "float32")
            z, x0 = ddim_update(z, eps, ab, float(ab_next), clip=self.clip)
            z = np.asarray(ops.convert_to_numpy(z), "float32")
            x0 = np.asarray(ops.convert_to_numpy(x0), "float32")
        final = z if stop_after == n else x0
        return {"latents": final, "x0": x0, "zt": z}
