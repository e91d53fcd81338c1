"""LatentCRF: a continuous CRF over a latent grid, as unrolled inference."""

import math

import keras
import numpy as np
from keras import ops

# --------------------------------------------------------------------------
# Pure maths (each piece has its own unit test).
# --------------------------------------------------------------------------


def neighborhood_offsets(neighborhood_size):
    """Half of the `size x size` window around a position, centre excluded.

    Every unordered pair of neighbours is listed once: the offsets
    `(dy, dx)` with `dy > 0`, or `dy == 0 and dx > 0`.

    Returns:
        A list of `(neighborhood_size**2 - 1) // 2` integer pairs.
    """
    r = neighborhood_size // 2
    return [
        (dy, dx)
        for dy in range(-r, r + 1)
        for dx in range(-r, r + 1)
        if dy > 0 or (dy == 0 and dx > 0)
    ]


def shift2d(x, dy, dx):
    """`out[:, i, j] = x[:, i + dy, j + dx]`, zero outside the grid.

    `x` is `(batch, height, width, channels)` with static height and width.
    """
    height, width = x.shape[1], x.shape[2]
    r = max(abs(dy), abs(dx))
    if r == 0:
        return x
    padded = ops.pad(x, [[0, 0], [r, r], [r, r], [0, 0]])
    return padded[:, r + dy : r + dy + height, r + dx : r + dx + width, :]


def offset_masks(height, width, offsets):
    """`(height, width, len(offsets))` float mask: 1 where `i + d` is inside."""
    masks = np.zeros((height, width, len(offsets)), "float32")
    for k, (dy, dx) in enumerate(offsets):
        masks[
            max(0, -dy) : min(height, height - dy),
            max(0, -dx) : min(width, width - dx),
            k,
        ] = 1.0
    return masks


def robust_penalty(r):
    """Student-t (Lorentzian) expert penalty `log(1 + r**2 / 2)`.

    The field-of-experts penalty of Roth and Black; its second derivative
    lies in `[-1/8, 1]`, which the step-size bound of `LatentCRF` uses.
    """
    return ops.log1p(0.5 * ops.square(r))


def robust_penalty_grad(r):
    """Derivative of `robust_penalty`: `r / (1 + r**2 / 2)`."""
    return r / (1.0 + 0.5 * ops.square(r))


def pairwise_affinities(features, masks, offsets, strengths):
    """Content-conditioned pairwise weights `w[b, i, d]`.

    `w = strength[b, d] * exp(-||f_i - f_{i+d}||^2 / 2) * mask[i, d]`: a
    Gaussian (bilateral-style) kernel on learned features, scaled by a
    non-negative per-offset strength.

    Args:
        features: `(batch, height, width, feature_dim)`.
        masks: `(height, width, num_offsets)` from `offset_masks`.
        offsets: the list from `neighborhood_offsets`.
        strengths: `(batch, num_offsets)`, non-negative.
    Returns:
        `(batch, height, width, num_offsets)`.
    """
    kernels = []
    for dy, dx in offsets:
        diff = features - shift2d(features, dy, dx)
        kernels.append(ops.exp(-0.5 * ops.sum(ops.square(diff), axis=-1)))
    kernel = ops.stack(kernels, axis=-1)
    masks = ops.cast(masks, kernel.dtype)
    return kernel * masks[None] * strengths[:, None, None, :]


def _expert_transpose_kernel(filters):
    # Adjoint of a stride-1 "same" correlation: flip spatially, swap in/out.
    return ops.transpose(ops.flip(ops.flip(filters, 0), 1), (0, 1, 3, 2))


def crf_energy(y, unary, affinities, offsets, filters, expert_weights):
    """The Gibbs energy `E(y | x)` of `LatentCRF`, one value per example.

    `E = 1/2 sum_i ||y_i - u_i||^2
       + 1/2 sum_i sum_d w[i, d] ||y_i - y_{i+d}||^2
       + sum_k a_k sum_i rho((J_k * y)_i)`.

    Args:
        y: `(batch, height, width, channels)` current latents.
        unary: `u`, same shape (the unary solution).
        affinities: `w`, `(batch, height, width, num_offsets)`.
        offsets: the `(dy, dx)` pairs of `affinities`' last axis.
        filters: expert filters `J`, `(size, size, channels, num_experts)`.
        expert_weights: `a`, `(batch, num_experts)`, non-negative.
    Returns:
        `(batch,)`.
    """
    energy = 0.5 * ops.sum(ops.square(y - unary), axis=(1, 2, 3))
    for k, (dy, dx) in enumerate(offsets):
        diff2 = ops.sum(ops.square(y - shift2d(y, dy, dx)), axis=-1)
        energy += 0.5 * ops.sum(affinities[..., k] * diff2, axis=(1, 2))
    if filters is not None:
        responses = ops.conv(y, filters, padding="same")
        penalty = robust_penalty(responses) * expert_weights[:, None, None, :]
        energy += ops.sum(penalty, axis=(1, 2, 3))
    return energy


def crf_energy_gradient(y, unary, affinities, offsets, filters, expert_weights):
    """Gradient of `crf_energy` with respect to `y` (closed form)."""
    grad = y - unary
    for k, (dy, dx) in enumerate(offsets):
        m = affinities[..., k : k + 1] * (y - shift2d(y, dy, dx))
        grad += m - shift2d(m, -dy, -dx)
    if filters is not None:
        responses = ops.conv(y, filters, padding="same")
        psi = robust_penalty_grad(responses) * expert_weights[:, None, None, :]
        grad += ops.conv(psi, _expert_transpose_kernel(filters), padding="same")
    return grad


def crf_lipschitz_bound(pair_strengths, filters, expert_weights):
    """Upper bound `L` of the curvature of `crf_energy`, per example.

    `L = 1 + 4 sum_d s_d + sum_k a_k sum_c (sum_xy |J_k[x, y, c]|)^2`:
    1 from the unary term; the pairwise Hessian is a graph Laplacian whose
    largest eigenvalue is at most twice the largest weighted degree, and a
    degree is at most `2 sum_d s_d` (kernel <= 1, each offset counted in
    both directions); each expert contributes `a_k |rho''| ||J_k||^2` with
    `|rho''| <= 1` and the operator norm of a multi-channel convolution
    bounded by Young's inequality.

    Args:
        pair_strengths: `(batch, num_offsets)` or None (no pairwise term).
        filters: `(size, size, channels, num_experts)` or None (no
            experts).
        expert_weights: `(batch, num_experts)`.
    Returns:
        `(batch,)` (or the scalar 1.0 when both terms are absent).
    """
    bound = 1.0
    if pair_strengths is not None:
        bound = bound + 4.0 * ops.sum(pair_strengths, axis=-1)
    if filters is not None:
        norms = ops.sum(ops.square(ops.sum(ops.abs(filters), (0, 1))), 0)
        bound += ops.sum(expert_weights * norms[None, :], axis=-1)
    return bound


# --------------------------------------------------------------------------
# The layer.
# --------------------------------------------------------------------------


def _positive_int(name, value, minimum=1):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        kind = (
            "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        )
        raise ValueError(f"`{name}` must be {kind}. Received: {name}={value!r}")
    return int(value)


def _odd_int(name, value):
    _positive_int(name, value)
    if value % 2 == 0:
        raise ValueError(
            f"`{name}` must be an odd positive integer. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _non_negative(name, value):
    if not isinstance(value, (int, float)) or value < 0:
        raise ValueError(
            f"`{name}` must be a non-negative number. "
            f"Received: {name}={value!r}"
        )
    return float(value)


@keras.saving.register_keras_serializable(package="keras_gr")
class LatentCRF(keras.layers.Layer):
    """Continuous CRF over a latent grid, solved by unrolled inference.

    Implements the layer of "LatentCRF: Continuous CRF for Efficient Latent
    Diffusion" (Ranasinghe et al., 2024, arXiv 2412.18596): a continuous
    conditional random field over the latent vectors of a latent diffusion
    model, written as a trainable layer, meant to replace a block of
    denoiser steps by one cheap inference. No official module was released;
    the energy and inference below are this library's reconstruction.

    The output is `y_K`, `K = num_steps` steps of gradient descent on

    ```
    E(y | x, c) = 1/2 sum_i ||y_i - u_i||^2                      (unary)
                + 1/2 sum_i sum_{d in N} w_id(x, c) ||y_i - y_{i+d}||^2
                + sum_k a_k(c) sum_i rho((J_k * y)_i)        (higher order)
    ```

    started at the unary solution `y_0 = u`:

    - Unary: `u = x W_u + b_u`, a per-position linear map of the input
      latents (a 1x1 convolution, initialised to the identity) so the CRF
      can also re-scale latents; with zero pairwise and expert weights the
      output is exactly `u` (the input itself at initialisation).
    - Pairwise: `N` is the `neighborhood_size x neighborhood_size` window,
      every unordered pair counted once. The weights are content
      conditioned: `w_id = s_d(c) exp(-||f_i - f_{i+d}||^2 / 2)` with
      learned features `f = u W_f` (a bilateral-style Gaussian kernel) and
      a learned non-negative strength per offset `s_d = p_d^2`. Positions
      outside the grid have no neighbours (no padding interactions). The
      paper draws long-range pairwise links: choose a `neighborhood_size`
      as large as the grid for fully connected small grids.
    - Higher order: a field of experts over `expert_size x expert_size`
      cliques across all channels (paper: 3x3 cliques), `num_experts`
      learned filters `J_k` with weights `a_k = q_k^2 >= 0` and the
      Student-t robust penalty `rho(r) = log(1 + r^2 / 2)`.
    - Conditioning: with a second input `c` (e.g. a one-hot class or a
      class / text embedding), every strength and expert weight is scaled
      by `2 sigmoid(c W_c + b_c)`, with `W_c = 0, b_c = 0` at
      initialisation (gain 1): bounded in `(0, 2)` so the energy stays
      well posed.
    - Inference: `y_{t+1} = y_t - (tau_t / L) grad E(y_t)` with learned
      `tau_t = 2 sigmoid(theta_t)` in `(0, 2)` (1 at initialisation) and
      `L` a per-example upper bound of the curvature of `E`
      (`crf_lipschitz_bound`). By the descent lemma the energy therefore
      decreases at every unrolled step for any weights, which is what
      makes the iterations an inference rather than an arbitrary network.
      The gradient is written in closed form (no autodiff inside `call`),
      so the whole inference is differentiable with plain `keras.ops`. The
      paper keeps iterations "under 5"; the default is 3.
    - Training objective (not part of the layer): the pipeline in
      `keras_gr.models.latent_diffusion` fits it with a latent MSE to the
      latents the frozen diffusion model reaches after the bypassed steps;
      the paper's optional latent adversarial loss is not implemented.

    Call arguments:
        inputs: latents `(batch, height, width, channels)` (static height,
            width and channels), or a list `[latents, conditioning]` with
            `conditioning` of shape `(batch, conditioning_dim)`.

    Returns:
        The refined latents, same shape as the latents.

    Args:
        num_steps: number of unrolled inference steps. Defaults to `3`.
        neighborhood_size: odd side of the pairwise window; 1 disables the
            pairwise term. Defaults to `3`.
        num_experts: number of field-of-experts filters; 0 disables the
            higher-order term. Defaults to `8`.
        expert_size: odd side of the expert filters. Defaults to `3`.
        feature_dim: dimension of the learned features of the pairwise
            kernel. Defaults to `8`.
        initial_pairwise_strength: initial `s_d`. Defaults to `0.05`.
        initial_expert_weight: initial `a_k`. Defaults to `0.05`.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    >>> crf = LatentCRF(num_steps=2, neighborhood_size=3, num_experts=4)
    >>> y = crf(np.zeros((2, 8, 8, 4), "float32"))
    >>> tuple(y.shape)
    (2, 8, 8, 4)

    References:
        - Ranasinghe et al., "LatentCRF: Continuous CRF for Efficient Latent
          Diffusion", arXiv 2412.18596.
        - Roth and Black, "Fields of Experts", CVPR 2005 (the higher-order
          prior and its Student-t penalty).
    """

    def __init__(
        self,
        num_steps: int = 3,
        neighborhood_size: int = 3,
        num_experts: int = 8,
        expert_size: int = 3,
        feature_dim: int = 8,
        initial_pairwise_strength: float = 0.05,
        initial_expert_weight: float = 0.05,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_steps = _positive_int("num_steps", num_steps)
        self.neighborhood_size = _odd_int(
            "neighborhood_size", neighborhood_size
        )
        self.num_experts = _positive_int("num_experts", num_experts, 0)
        self.expert_size = _odd_int("expert_size", expert_size)
        self.feature_dim = _positive_int("feature_dim", feature_dim)
        self.initial_pairwise_strength = _non_negative(
            "initial_pairwise_strength", initial_pairwise_strength
        )
        self.initial_expert_weight = _non_negative(
            "initial_expert_weight", initial_expert_weight
        )
        self.offsets = neighborhood_offsets(self.neighborhood_size)
        self._conditioned = None
        self._latent_shape = None

    def build(self, input_shape):
        latent_shape, cond_shape = _split_shapes(input_shape)
        if len(latent_shape) != 4:
            raise ValueError(
                "`inputs` must be 4-D latents (batch, height, width, "
                f"channels). Received: inputs.shape={tuple(latent_shape)}"
            )
        if any(d is None for d in latent_shape[1:]):
            raise ValueError(
                "`inputs` must have static height, width and channels. "
                f"Received: inputs.shape={tuple(latent_shape)}"
            )
        if cond_shape is not None and (
            len(cond_shape) != 2 or cond_shape[-1] is None
        ):
            raise ValueError(
                "`conditioning` must be 2-D (batch, conditioning_dim). "
                f"Received: conditioning.shape={tuple(cond_shape)}"
            )
        self._latent_shape = tuple(latent_shape[1:])
        self._conditioned = cond_shape is not None
        channels = latent_shape[-1]
        num_pairs = len(self.offsets)

        self.unary_kernel = self.add_weight(
            name="unary_kernel",
            shape=(channels, channels),
            initializer="identity",
        )
        self.unary_bias = self.add_weight(
            name="unary_bias", shape=(channels,), initializer="zeros"
        )
        self.feature_kernel = self.add_weight(
            name="feature_kernel",
            shape=(channels, self.feature_dim),
            initializer="glorot_uniform",
        )
        self.pairwise_weights = None
        if num_pairs:
            self.pairwise_weights = self.add_weight(
                name="pairwise_weights",
                shape=(num_pairs,),
                initializer=keras.initializers.Constant(
                    math.sqrt(self.initial_pairwise_strength)
                ),
            )
        self.expert_filters = self.expert_weights = None
        if self.num_experts:
            size = self.expert_size
            fan_in = size * size * channels
            self.expert_filters = self.add_weight(
                name="expert_filters",
                shape=(size, size, channels, self.num_experts),
                initializer=keras.initializers.RandomNormal(
                    stddev=1.0 / math.sqrt(fan_in)
                ),
            )
            self.expert_weights = self.add_weight(
                name="expert_weights",
                shape=(self.num_experts,),
                initializer=keras.initializers.Constant(
                    math.sqrt(self.initial_expert_weight)
                ),
            )
        if self._conditioned:
            self.conditioning_kernel = self.add_weight(
                name="conditioning_kernel",
                shape=(cond_shape[-1], num_pairs + self.num_experts),
                initializer="zeros",
            )
            self.conditioning_bias = self.add_weight(
                name="conditioning_bias",
                shape=(num_pairs + self.num_experts,),
                initializer="zeros",
            )
        self.step_logits = self.add_weight(
            name="step_logits", shape=(self.num_steps,), initializer="zeros"
        )
        self._masks = offset_masks(
            latent_shape[1], latent_shape[2], self.offsets
        )

    def call(self, inputs):
        return self._inference(inputs, trajectory=False)

    def compute_output_shape(self, input_shape):
        latent_shape, _ = _split_shapes(input_shape)
        return tuple(latent_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_steps": self.num_steps,
                "neighborhood_size": self.neighborhood_size,
                "num_experts": self.num_experts,
                "expert_size": self.expert_size,
                "feature_dim": self.feature_dim,
                "initial_pairwise_strength": self.initial_pairwise_strength,
                "initial_expert_weight": self.initial_expert_weight,
            }
        )
        return config

    # --- Inference ----------------------------------------------------------

    def _potentials(self, x, cond):
        """Unary solution, affinities, expert filters and weights, bound."""
        dtype = x.dtype
        num_pairs = len(self.offsets)
        unary = ops.matmul(x, ops.cast(self.unary_kernel, dtype))
        unary = unary + ops.cast(self.unary_bias, dtype)
        batch = ops.shape(x)[0]
        strengths = experts = filters = affinities = None
        if num_pairs:
            strengths = ops.square(ops.cast(self.pairwise_weights, dtype))
            strengths = ops.broadcast_to(strengths[None], (batch, num_pairs))
        if self.num_experts:
            filters = ops.cast(self.expert_filters, dtype)
            experts = ops.square(ops.cast(self.expert_weights, dtype))
            experts = ops.broadcast_to(experts[None], (batch, self.num_experts))
        if self._conditioned:
            gain = ops.matmul(
                ops.cast(cond, dtype), ops.cast(self.conditioning_kernel, dtype)
            )
            gain = 2.0 * ops.sigmoid(
                gain + ops.cast(self.conditioning_bias, dtype)
            )
            if num_pairs:
                strengths = strengths * gain[:, :num_pairs]
            if self.num_experts:
                experts = experts * gain[:, num_pairs:]
        if num_pairs:
            features = ops.matmul(unary, ops.cast(self.feature_kernel, dtype))
            affinities = pairwise_affinities(
                features, self._masks, self.offsets, strengths
            )
        bound = crf_lipschitz_bound(strengths, filters, experts)
        return unary, affinities, filters, experts, bound

    def _inference(self, inputs, trajectory):
        x, cond = self._split_and_check(inputs)
        unary, affinities, filters, experts, bound = self._potentials(x, cond)
        taus = 2.0 * ops.sigmoid(ops.cast(self.step_logits, x.dtype))
        if isinstance(bound, float):
            inv_bound = 1.0 / bound
        else:
            inv_bound = (1.0 / bound)[:, None, None, None]
        y = unary
        energies = []
        for t in range(self.num_steps):
            if trajectory:
                energies.append(
                    crf_energy(
                        y, unary, affinities, self.offsets, filters, experts
                    )
                )
            grad = crf_energy_gradient(
                y, unary, affinities, self.offsets, filters, experts
            )
            y = y - (taus[t] * inv_bound) * grad
        if trajectory:
            energies.append(
                crf_energy(y, unary, affinities, self.offsets, filters, experts)
            )
            return y, ops.stack(energies, axis=-1)
        return y

    def energy_trajectory(self, inputs):
        """Energies `E(y_0 | x), ..., E(y_K | x)`, shape `(batch, K + 1)`,
        and the output `y_K`: returns `(y_K, energies)`."""
        if not self.built:
            self.build(_shapes_of(inputs))
        return self._inference(inputs, trajectory=True)

    def _split_and_check(self, inputs):
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != 2:
                raise ValueError(
                    "`inputs` must be latents or [latents, conditioning]. "
                    f"Received: a list of {len(inputs)} tensors"
                )
            x, cond = inputs
        else:
            x, cond = inputs, None
        if len(x.shape) != 4:
            raise ValueError(
                "`inputs` must be 4-D latents (batch, height, width, "
                f"channels). Received: inputs.shape={tuple(x.shape)}"
            )
        if tuple(x.shape[1:]) != self._latent_shape:
            raise ValueError(
                "`inputs` must have (height, width, channels) = "
                f"{self._latent_shape}, the shape the layer was built with. "
                f"Received: inputs.shape={tuple(x.shape)}"
            )
        if (cond is not None) != self._conditioned:
            raise ValueError(
                "`conditioning` must be given exactly when the layer was "
                f"built with it (built with conditioning: {self._conditioned})"
                f". Received: conditioning="
                f"{'None' if cond is None else 'a tensor'}"
            )
        return x, cond

    # --- Cost ---------------------------------------------------------------

    def cost(self, latent_shape=None, conditioning_dim=None):
        """Analytic FLOPs per example and parameter count.

        A multiply-add counts 2 FLOPs, any other elementwise operation 1.

        Args:
            latent_shape: `(height, width, channels)`; defaults to the built
                shape.
            conditioning_dim: size of the conditioning vector (None: none);
                defaults to the built configuration.
        Returns:
            A dict with `flops` and `params`.
        """
        if latent_shape is None:
            latent_shape = self._latent_shape
        if conditioning_dim is None and self._conditioned:
            conditioning_dim = int(self.conditioning_kernel.shape[0])
        h, w, c = latent_shape
        n = h * w
        p, k, e, f = (
            len(self.offsets),
            self.num_experts,
            self.expert_size,
            self.feature_dim,
        )
        flops = 2 * n * c * c + n * c  # unary 1x1 map
        if p:
            flops += 2 * n * c * f  # features
            flops += p * n * (3 * f + 3)  # Gaussian kernels and strengths
        if conditioning_dim:
            flops += 2 * conditioning_dim * (p + k) + 3 * (p + k)
        flops += 4 * p + 3 * e * e * c * k + 2 * k  # curvature bound
        per_step = 2 * n * c  # unary gradient
        per_step += p * 5 * n * c  # pairwise gradient
        if k:
            per_step += 2 * 2 * n * e * e * c * k  # expert conv + adjoint
            per_step += 6 * n * k  # robust penalty derivative and weights
        per_step += 3 * n * c  # the update
        flops += self.num_steps * per_step
        params = c * c + c + c * f + p + e * e * c * k + k + self.num_steps
        if conditioning_dim:
            params += (conditioning_dim + 1) * (p + k)
        return {"flops": int(flops), "params": int(params)}


def _split_shapes(input_shape):
    if (
        isinstance(input_shape, (list, tuple))
        and len(input_shape) > 0
        and isinstance(input_shape[0], (list, tuple))
    ):
        if len(input_shape) != 2:
            raise ValueError(
                "`inputs` must be latents or [latents, conditioning]. "
                f"Received: {len(input_shape)} inputs"
            )
        return tuple(input_shape[0]), tuple(input_shape[1])
    return tuple(input_shape), None


def _shapes_of(inputs):
    if isinstance(inputs, (list, tuple)):
        return [tuple(t.shape) for t in inputs]
    return tuple(inputs.shape)
