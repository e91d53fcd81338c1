"""Independent NumPy references of the DDIM maths and of a host-side DDIM
sampler, against which the tests check the Keras path
(`keras_gr.models.DiffusionSampler`, `ddim_update`, the digits pipeline).

They were the library's own `ddim_step` and `DDIMSampler` before the
diffusion family moved onto one Keras implementation (issue 30): here they
are references only, written from the DDIM formulas (Song et al., arXiv
2010.02502) in float64, with no `keras_gr` import.
"""

import math

import numpy as np


def scaled_linear_alpha_bars(num_train_steps=1000, start=0.00085, end=0.012):
    """`abar_t` of Stable Diffusion's schedule: betas linear in sqrt space."""
    betas = np.linspace(math.sqrt(start), math.sqrt(end), num_train_steps)
    return np.cumprod(1.0 - betas**2)


def trailing_timesteps(num_steps, num_train_steps=1000):
    """`t_k = round(N - k N / T) - 1`, descending (arXiv 2305.08891)."""
    k = np.arange(num_steps)
    return np.round(num_train_steps - k * num_train_steps / num_steps) - 1


def ddim_sigma(alpha_bar, alpha_bar_next, eta):
    """DDIM's `sigma` for `eta` (0 when `abar' = 1`)."""
    if alpha_bar_next >= 1.0:
        return 0.0
    return eta * math.sqrt(
        (1 - alpha_bar_next)
        / (1 - alpha_bar)
        * (1 - alpha_bar / alpha_bar_next)
    )


def ddim_step(z, eps, alpha_bar, alpha_bar_next, clip=None, sigma=0.0, xi=None):
    """One DDIM update; returns `(z_next, x0)`."""
    x0 = (z - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    if clip is not None:
        x0 = np.clip(x0, -clip, clip)
    scale = math.sqrt(max(1.0 - alpha_bar_next - sigma**2, 0.0))
    z_next = math.sqrt(alpha_bar_next) * x0 + scale * eps
    if sigma > 0:
        z_next = z_next + sigma * xi
    return z_next, x0


class HostDDIMSampler:
    """DDIM on the host, one `denoiser.predict_on_batch([z, t, labels])`
    per step (counted in `calls`), float64 state.

    `run(noise, labels, start, stop, eta, rng)` runs steps `start, ...,
    stop - 1` of the `num_steps`-step trailing timeline from the state
    `noise`, drawing the `eta > 0` noise from the NumPy `rng`; it returns
    `(z, x0)` after the last step.
    """

    def __init__(self, denoiser, alpha_bars, num_steps, clip=None):
        self.denoiser = denoiser
        self.alpha_bars = np.asarray(alpha_bars, "float64")
        self.num_steps = num_steps
        self.timesteps = trailing_timesteps(num_steps, len(self.alpha_bars))
        self.clip = clip
        self.calls = 0

    def _alpha_bar(self, k):
        if k >= self.num_steps:
            return 1.0
        return float(self.alpha_bars[int(self.timesteps[k])])

    def run(self, noise, labels, start=0, stop=None, eta=0.0, rng=None):
        stop = self.num_steps if stop is None else stop
        labels = np.asarray(labels, "int32")
        z = np.asarray(noise, "float64")
        x0 = z
        for k in range(start, stop):
            t = np.full((len(z), 1), self.timesteps[k], "float32")
            self.calls += 1
            eps = self.denoiser.predict_on_batch(
                [z.astype("float32"), t, labels]
            )
            eps = np.asarray(eps, "float64")
            ab, ab_next = self._alpha_bar(k), self._alpha_bar(k + 1)
            sigma = ddim_sigma(ab, ab_next, eta)
            xi = rng.normal(size=z.shape) if sigma > 0 else None
            z, x0 = ddim_step(z, eps, ab, ab_next, self.clip, sigma, xi)
        return z, x0
