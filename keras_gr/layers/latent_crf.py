"""LatentCRF: a continuous CRF over a latent grid, as unrolled inference."""

import collections
import json
import math

import keras
from keras import ops

from keras_gr import _backend
from keras_gr._validation import check_integer
from keras_gr._validation import check_number

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


def pairwise_offsets(neighborhood_size, dilations=()):
    """The dense local window plus a dilated "star" for long-range links.

    For each dilation `d` the four half-directions `(d, 0), (0, d),
    (d, d), (d, -d)` are added (the other four are the same unordered
    pairs), unless the local window already holds them. A range `R`
    reached with dilations `1, 2, 4, ..., R` costs `O(log R)` offsets,
    against `O(R^2)` for a dense `(2R + 1) x (2R + 1)` window.

    Returns:
        A list of distinct `(dy, dx)` pairs, each unordered pair once.
    """
    offsets = neighborhood_offsets(neighborhood_size)
    r = neighborhood_size // 2
    for d in dilations:
        for off in ((d, 0), (0, d), (d, d), (d, -d)):
            if max(abs(off[0]), abs(off[1])) > r and off not in offsets:
                offsets.append(off)
    return offsets


def shift2d(x, dy, dx):
    """`out[:, i, j] = x[:, i + dy, j + dx]`, zero outside the grid.

    `x` is `(batch, height, width, channels)`; height and width may be
    dynamic: the shift pads one side and crops the other with static
    slice bounds only.
    """
    if dy == 0 and dx == 0:
        return x

    def pad_and_crop(d):
        if d > 0:
            return [0, d], slice(d, None)
        if d < 0:
            return [-d, 0], slice(None, d)
        return [0, 0], slice(None)

    (pad_y, crop_y), (pad_x, crop_x) = pad_and_crop(dy), pad_and_crop(dx)
    x = ops.pad(x, [[0, 0], pad_y, pad_x, [0, 0]])
    return x[:, crop_y, crop_x]


def robust_penalty(r):
    """Student-t (Lorentzian) expert penalty `log(1 + r**2 / 2)`.

    The field-of-experts penalty of Roth and Black; its second derivative
    lies in `[-1/8, 1]`, which the step-size bound of `LatentCRF` uses.
    """
    return ops.log1p(0.5 * ops.square(r))


def robust_penalty_grad(r):
    """Derivative of `robust_penalty`: `r / (1 + r**2 / 2)`."""
    return r / (1.0 + 0.5 * ops.square(r))


def timestep_embedding(timesteps, dim):
    """Sinusoidal embedding `[sin(t w_k), cos(t w_k)]`, `w_k =
    10000^(-k / (dim / 2))` (the Transformer / DDPM embedding).

    Args:
        timesteps: `(batch,)` or `(batch, 1)` float timesteps.
        dim: even embedding size.
    Returns:
        `(batch, dim)` float32.
    """
    half = dim // 2
    freqs = ops.exp(
        -math.log(10000.0) * ops.arange(half, dtype="float32") / half
    )
    t = ops.reshape(ops.cast(timesteps, "float32"), (-1, 1))
    args = t * freqs[None, :]
    return ops.concatenate([ops.sin(args), ops.cos(args)], axis=-1)


def pairwise_affinities(features, offsets, strengths):
    """Content-conditioned pairwise weights `w[b, i, d]`.

    `w = strength[b, d] * exp(-||f_i - f_{i+d}||^2 / 2) * [i + d inside]`:
    a Gaussian (bilateral-style) kernel on learned features, scaled by a
    non-negative per-offset strength; zero where the neighbour falls
    outside the grid (no padding interactions).

    Args:
        features: `(batch, height, width, feature_dim)`.
        offsets: the `(dy, dx)` pairs, e.g. from `pairwise_offsets`.
        strengths: `(batch, num_offsets)`, non-negative.
    Returns:
        `(batch, height, width, num_offsets)`.
    """
    ones = ops.ones_like(features[..., :1])
    kernels = []
    for dy, dx in offsets:
        diff = features - shift2d(features, dy, dx)
        inside = shift2d(ones, dy, dx)[..., 0]
        kernels.append(
            ops.exp(-0.5 * ops.sum(ops.square(diff), axis=-1)) * inside
        )
    kernel = ops.stack(kernels, axis=-1)
    return kernel * strengths[:, None, None, :]


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


def _check_odd(name, value):
    check_integer(name, value)
    if value % 2 == 0:
        raise ValueError(
            f"`{name}` must be an odd positive integer. "
            f"Received: {name}={value!r}"
        )
    return int(value)


# Compiled JAX inference programs, shared by the LatentCRF layers with the
# same configuration and weight shapes (least recently used dropped first).
_PROGRAMS = collections.OrderedDict()
_MAX_PROGRAMS = 32


def _shared_program(layer, trajectory):
    """The jitted `(weight values, inputs) -> _inference(inputs)` of
    `layer`, built once per configuration, weight shapes and `trajectory`.

    The traced function is the first such layer's `_inference` with its
    variables mapped to the values passed in, so any layer with the same
    key computes exactly its own result through it.
    """
    config = {k: v for k, v in layer.get_config().items() if k != "name"}
    key = (
        json.dumps(config, sort_keys=True, default=str),
        tuple((tuple(v.shape), str(v.dtype)) for v in layer.weights),
        layer._channels,
        layer._conditioning_dim,
        trajectory,
    )
    if key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key]
    variables = list(layer.weights)

    def pure(values, inputs):
        mapping = list(zip(variables, values, strict=True))
        with keras.StatelessScope(state_mapping=mapping):
            return layer._inference(inputs, trajectory)

    _PROGRAMS[key] = _backend.jit(pure)
    while len(_PROGRAMS) > _MAX_PROGRAMS:
        _PROGRAMS.popitem(last=False)
    return _PROGRAMS[key]


@keras.saving.register_keras_serializable(package="keras_gr")
class LatentCRF(keras.layers.Layer):
    """Continuous CRF over a latent grid of any size, by unrolled inference.

    Implements the layer of "LatentCRF: Continuous CRF for Efficient Latent
    Diffusion" (Ranasinghe et al., 2024, arXiv 2412.18596): a continuous
    conditional random field over the latent vectors of a latent diffusion
    model, written as a trainable layer, meant to replace a block of
    denoiser steps by one cheap inference. No official module was released;
    the energy and inference below are this library's reconstruction.

    The output is `y_K`, `K = num_steps` steps of gradient descent on

    ```
    E(y | x, h) = 1/2 sum_i ||y_i - u_i||^2                      (unary)
                + 1/2 sum_i sum_{d in N} w_id(x, h) ||y_i - y_{i+d}||^2
                + sum_k a_k(h) sum_i rho((J_k * y)_i)        (higher order)
    ```

    started at the unary solution `y_0 = u`, with `h` the conditioning
    context (class / text vector and timestep embedding, if given):

    - Unary: `u = (x W_u + b_u) (1 + h G) + h B`, a per-position linear
      map of the input latents (a 1x1 convolution, identity at
      initialisation) with a FiLM-style scale and shift from the context
      (`G = B = 0` at initialisation). With zero pairwise and expert
      weights the output is exactly `u`.
    - Pairwise: `N` holds the dense `neighborhood_size x neighborhood_size`
      window plus, for every `d` in `dilations`, the dilated star
      `(d, 0), (0, d), (d, d), (d, -d)`; every unordered pair counted once
      (`pairwise_offsets`). This is the long-range term: a range `R`
      reached with the 3x3 window and dilations `2, 4, ..., R` costs
      `4 + 4 log2(R)` offsets, where a dense window costs `2 R (R + 1)`;
      the number of compiled operations and the run time grow with the
      number of offsets, not with the area covered (measured:
      `python -m benchmarks.latent_crf --range_curve`). The star leaves
      gaps between its rays; positions off the rays interact through
      chains of links over the unrolled steps. The weights are content
      conditioned: `w_id = s_d(h) exp(-||f_i - f_{i+d}||^2 / 2)` with
      learned features `f = u W_f` (a bilateral-style Gaussian kernel) and
      a learned non-negative strength per offset `s_d = p_d^2`. Positions
      whose neighbour falls outside the grid have no link to it.
    - Higher order: a field of experts over `expert_size x expert_size`
      cliques across all channels (paper: 3x3 cliques), `num_experts`
      learned filters `J_k` with weights `a_k = q_k^2 >= 0` and the
      Student-t robust penalty `rho(r) = log(1 + r^2 / 2)`.
    - Conditioning: the context `h = [c, emb(t)]` concatenates the
      optional conditioning vector `c` (a one-hot class or a class / text
      embedding) and, with `use_timestep=True`, the sinusoidal embedding
      of the diffusion timestep `t` (`timestep_embedding`). Every strength
      and expert weight is scaled by `2 sigmoid(h W_c)` and every step
      size by `2 sigmoid(theta_t + (h W_s)_t)`, both `W = 0` at
      initialisation (gain 1): bounded, so the energy stays well posed and
      the descent guarantee below holds for any context.
    - Inference: `y_{t+1} = y_t - (tau_t / L) grad E(y_t)` with learned
      `tau_t` in `(0, 2)` (1 at initialisation) and `L` a per-example upper
      bound of the curvature of `E` (`crf_lipschitz_bound`). By the descent
      lemma the energy therefore decreases at every unrolled step for any
      weights, which is what makes the iterations an inference rather than
      an arbitrary network. The gradient is written in closed form (no
      autodiff inside `call`), so the whole inference is differentiable
      with plain `keras.ops`. The paper keeps iterations "under 5"; the
      default is 3.
    - Any latent size: only the channels are fixed at `build`; height and
      width may differ from call to call (`keras.Input((None, None, C))`
      works), and a layer trained at one size runs unchanged at another.
    - Precision: the layer does not autocast (`autocast=False` by
      default): the weights stay float32, the inputs are not rounded to the
      compute dtype, and the whole refinement runs in float32 whatever the
      dtype policy; under a mixed policy only the output is cast to the
      compute dtype (so the energy descent holds in `mixed_bfloat16` too,
      and the output is the float32 result rounded once).
    - Training objective (not part of the layer): fit it with a latent MSE
      to the latents the frozen diffusion model reaches after the bypassed
      steps; the paper's optional latent adversarial loss is not
      implemented.

    Call arguments:
        inputs: latents `(batch, height, width, channels)`, or a list
            `[latents, conditioning]`, `[latents, timestep]` (with
            `use_timestep=True`) or `[latents, conditioning, timestep]`,
            with `conditioning` `(batch, conditioning_dim)` and `timestep`
            `(batch,)` or `(batch, 1)` float diffusion timesteps.

    Returns:
        The refined latents, same shape as the latents, in the layer's
        compute dtype.

    Args:
        num_steps: number of unrolled inference steps. Defaults to `3`.
        neighborhood_size: odd side of the dense pairwise window; 1 leaves
            only the dilated links. Defaults to `3`.
        dilations: dilations of the long-range star links (integers >= 1;
            an empty tuple disables them). Defaults to `(2, 4)`.
        num_experts: number of field-of-experts filters; 0 disables the
            higher-order term. Defaults to `8`.
        expert_size: odd side of the expert filters. Defaults to `3`.
        feature_dim: dimension of the learned features of the pairwise
            kernel. Defaults to `8`.
        use_timestep: whether the last input is the diffusion timestep.
            Defaults to `False`.
        timestep_embedding_dim: even size of the sinusoidal timestep
            embedding. Defaults to `16`.
        initial_pairwise_strength: initial `s_d`. Defaults to `0.05`.
        initial_expert_weight: initial `a_k`. Defaults to `0.05`.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    >>> import numpy as np
    >>> crf = LatentCRF(
    ...     num_steps=1, dilations=(2,), num_experts=2, use_timestep=True
    ... )
    >>> z = keras.Input((None, None, 4))  # any latent height and width
    >>> label, t = keras.Input((10,)), keras.Input((1,))
    >>> model = keras.Model([z, label, t], crf([z, label, t]))
    >>> model.output.shape
    (None, None, None, 4)
    >>> z, label, t = np.ones((2, 6, 5, 4)), np.eye(10)[[3, 7]], [[999], [0]]
    >>> tuple(crf([z, label, np.array(t, "float32")]).shape)
    (2, 6, 5, 4)

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
        dilations: tuple[int, ...] | list[int] = (2, 4),
        num_experts: int = 8,
        expert_size: int = 3,
        feature_dim: int = 8,
        use_timestep: bool = False,
        timestep_embedding_dim: int = 16,
        initial_pairwise_strength: float = 0.05,
        initial_expert_weight: float = 0.05,
        **kwargs,
    ):
        # No autocasting: the inputs reach `call` in their own (float32)
        # precision and the variables stay float32 under a mixed policy.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.num_steps = check_integer("num_steps", num_steps)
        self.neighborhood_size = _check_odd(
            "neighborhood_size", neighborhood_size
        )
        if not isinstance(dilations, (list, tuple)):
            raise ValueError(
                "`dilations` must be a list or tuple of integers >= 1. "
                f"Received: dilations={dilations!r}"
            )
        for d in dilations:
            check_integer("dilations", d)
        self.dilations = tuple(int(d) for d in dilations)
        self.num_experts = check_integer("num_experts", num_experts, 0)
        self.expert_size = _check_odd("expert_size", expert_size)
        self.feature_dim = check_integer("feature_dim", feature_dim)
        if not isinstance(use_timestep, bool):
            raise ValueError(
                "`use_timestep` must be True or False. "
                f"Received: use_timestep={use_timestep!r}"
            )
        self.use_timestep = use_timestep
        self.timestep_embedding_dim = check_integer(
            "timestep_embedding_dim", timestep_embedding_dim, 2
        )
        if self.timestep_embedding_dim % 2:
            raise ValueError(
                "`timestep_embedding_dim` must be an even integer >= 2. "
                f"Received: timestep_embedding_dim={timestep_embedding_dim!r}"
            )
        self.initial_pairwise_strength = check_number(
            "initial_pairwise_strength", initial_pairwise_strength, minimum=0
        )
        self.initial_expert_weight = check_number(
            "initial_expert_weight", initial_expert_weight, minimum=0
        )
        self.offsets = pairwise_offsets(self.neighborhood_size, self.dilations)
        self._channels = None
        self._conditioning_dim = None
        self._jitted = {}

    def build(self, input_shape):
        latent_shape, cond_shape, t_shape = self._split(input_shape, True)
        if len(latent_shape) != 4:
            raise ValueError(
                "`inputs` must be 4-D latents (batch, height, width, "
                f"channels). Received: inputs.shape={tuple(latent_shape)}"
            )
        if latent_shape[-1] is None:
            raise ValueError(
                "`inputs` must have a static number of channels (height and "
                f"width may be None). Received: inputs.shape="
                f"{tuple(latent_shape)}"
            )
        if cond_shape is not None and (
            len(cond_shape) != 2 or cond_shape[-1] is None
        ):
            raise ValueError(
                "`conditioning` must be 2-D (batch, conditioning_dim). "
                f"Received: conditioning.shape={tuple(cond_shape)}"
            )
        if t_shape is not None and not (
            len(t_shape) == 1 or (len(t_shape) == 2 and t_shape[-1] == 1)
        ):
            raise ValueError(
                "`timestep` must have shape (batch,) or (batch, 1). "
                f"Received: timestep.shape={tuple(t_shape)}"
            )
        self._channels = channels = int(latent_shape[-1])
        self._conditioning_dim = (
            0 if cond_shape is None else int(cond_shape[-1])
        )
        num_pairs = len(self.offsets)

        def weight(name, shape, initializer):
            return self.add_weight(
                name=name,
                shape=shape,
                initializer=initializer,
                autocast=False,
            )

        self.unary_kernel = weight(
            "unary_kernel", (channels, channels), "identity"
        )
        self.unary_bias = weight("unary_bias", (channels,), "zeros")
        self.feature_kernel = weight(
            "feature_kernel", (channels, self.feature_dim), "glorot_uniform"
        )
        self.pairwise_weights = None
        if num_pairs:
            self.pairwise_weights = weight(
                "pairwise_weights",
                (num_pairs,),
                keras.initializers.Constant(
                    math.sqrt(self.initial_pairwise_strength)
                ),
            )
        self.expert_filters = self.expert_weights = None
        if self.num_experts:
            size = self.expert_size
            fan_in = size * size * channels
            self.expert_filters = weight(
                "expert_filters",
                (size, size, channels, self.num_experts),
                keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(fan_in)),
            )
            self.expert_weights = weight(
                "expert_weights",
                (self.num_experts,),
                keras.initializers.Constant(
                    math.sqrt(self.initial_expert_weight)
                ),
            )
        self.step_logits = weight("step_logits", (self.num_steps,), "zeros")
        self.conditioning_kernel = None
        self.unary_scale_kernel = self.unary_shift_kernel = None
        context = self._context_dim()
        if context:
            self.conditioning_kernel = weight(
                "conditioning_kernel",
                (context, num_pairs + self.num_experts + self.num_steps),
                "zeros",
            )
            self.unary_scale_kernel = weight(
                "unary_scale_kernel", (context, channels), "zeros"
            )
            self.unary_shift_kernel = weight(
                "unary_shift_kernel", (context, channels), "zeros"
            )

    def call(self, inputs):
        y = self._compiled_inference(inputs, trajectory=False)
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        latent_shape, _, _ = self._split(input_shape, True)
        return tuple(latent_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_steps": self.num_steps,
                "neighborhood_size": self.neighborhood_size,
                "dilations": list(self.dilations),
                "num_experts": self.num_experts,
                "expert_size": self.expert_size,
                "feature_dim": self.feature_dim,
                "use_timestep": self.use_timestep,
                "timestep_embedding_dim": self.timestep_embedding_dim,
                "initial_pairwise_strength": self.initial_pairwise_strength,
                "initial_expert_weight": self.initial_expert_weight,
            }
        )
        return config

    # --- Inference ----------------------------------------------------------

    def _context_dim(self):
        extra = self.timestep_embedding_dim if self.use_timestep else 0
        return self._conditioning_dim + extra

    def _potentials(self, x, cond, timestep):
        """Unary solution, affinities, expert filters and weights, step
        sizes and curvature bound, all float32."""
        num_pairs, num_experts = len(self.offsets), self.num_experts
        x = ops.cast(x, "float32")
        batch = ops.shape(x)[0]
        unary = ops.matmul(x, self.unary_kernel) + self.unary_bias
        parts = []
        if cond is not None:
            parts.append(ops.cast(cond, "float32"))
        if timestep is not None:
            parts.append(
                timestep_embedding(timestep, self.timestep_embedding_dim)
            )
        step_logits = ops.broadcast_to(
            self.step_logits[None], (batch, self.num_steps)
        )
        gain = None
        if parts:
            context = (
                ops.concatenate(parts, axis=-1)
                if len(parts) > 1
                else (parts[0])
            )
            scale = 1.0 + ops.matmul(context, self.unary_scale_kernel)
            shift = ops.matmul(context, self.unary_shift_kernel)
            unary = unary * scale[:, None, None, :] + shift[:, None, None, :]
            logits = ops.matmul(context, self.conditioning_kernel)
            gain = 2.0 * ops.sigmoid(logits[:, : num_pairs + num_experts])
            step_logits = step_logits + logits[:, num_pairs + num_experts :]
        strengths = experts = filters = affinities = None
        if num_pairs:
            strengths = ops.square(self.pairwise_weights)
            strengths = ops.broadcast_to(strengths[None], (batch, num_pairs))
            if gain is not None:
                strengths = strengths * gain[:, :num_pairs]
            features = ops.matmul(unary, self.feature_kernel)
            affinities = pairwise_affinities(features, self.offsets, strengths)
        if num_experts:
            filters = ops.convert_to_tensor(self.expert_filters)
            experts = ops.square(self.expert_weights)
            experts = ops.broadcast_to(experts[None], (batch, num_experts))
            if gain is not None:
                experts = experts * gain[:, num_pairs:]
        bound = crf_lipschitz_bound(strengths, filters, experts)
        taus = 2.0 * ops.sigmoid(step_logits)
        return unary, affinities, filters, experts, taus, bound

    def _inference(self, inputs, trajectory):
        x, cond, timestep = self._split_and_check(inputs)
        unary, affinities, filters, experts, taus, bound = self._potentials(
            x, cond, timestep
        )
        if isinstance(bound, float):
            inv_bound = ops.ones_like(taus[:, 0]) / bound
        else:
            inv_bound = 1.0 / bound
        args = (unary, affinities, self.offsets, filters, experts)
        y = unary
        energies = []
        for t in range(self.num_steps):
            if trajectory:
                energies.append(crf_energy(y, *args))
            grad = crf_energy_gradient(y, *args)
            rate = (taus[:, t] * inv_bound)[:, None, None, None]
            y = y - rate * grad
        if trajectory:
            energies.append(crf_energy(y, *args))
            return y, ops.stack(energies, axis=-1)
        return y

    def _compiled_inference(self, inputs, trajectory):
        """`_inference` as one XLA program on JAX, the variables passed
        as arguments (so new weights never recompile it).

        Eager JAX dispatches and compiles every small op on its own: the
        unrolled inference is a few hundred of them, seconds per new latent
        size. Under an outer trace (`fit`, `predict`, `jax.grad`) the jitted
        function is inlined into the caller's program. The program depends
        only on the configuration and the weight shapes, so layers that
        share both (a clone, a reloaded model, a CRF retrained with another
        seed) share one compiled program (`_shared_program`). Other
        backends run `_inference` directly (TensorFlow's eager ops are
        cheap, and its models compile the whole step anyway).
        """
        if keras.backend.backend() != "jax":
            return self._inference(inputs, trajectory)
        if trajectory not in self._jitted:
            self._jitted[trajectory] = _shared_program(self, trajectory)
        values = [v.value for v in self.weights]
        return self._jitted[trajectory](values, inputs)

    def energy_trajectory(self, inputs):
        """Energies `E(y_0 | x), ..., E(y_K | x)` in float32, shape
        `(batch, K + 1)`, and the float32 output `y_K`: returns
        `(y_K, energies)`."""
        if not self.built:
            self.build(_shapes_of(inputs))
        if isinstance(inputs, (list, tuple)):
            inputs = [ops.convert_to_tensor(t) for t in inputs]
        else:
            inputs = ops.convert_to_tensor(inputs)
        return self._compiled_inference(inputs, trajectory=True)

    def _split(self, inputs, shapes=False):
        """`(latents, conditioning, timestep)` from the accepted input
        forms (tensors, or shapes with `shapes=True`)."""
        is_list = isinstance(inputs, (list, tuple)) and (
            not shapes
            or (len(inputs) > 0 and isinstance(inputs[0], (list, tuple)))
        )
        if not is_list:
            items = [inputs]
        else:
            items = list(inputs)
        allowed = (
            "latents, [latents, timestep] or [latents, conditioning, "
            "timestep] (use_timestep=True)"
            if self.use_timestep
            else "latents or [latents, conditioning]"
        )
        n = len(items)
        if n == 1 and not self.use_timestep:
            return items[0], None, None
        if self.use_timestep and n in (2, 3):
            cond = items[1] if n == 3 else None
            return items[0], cond, items[-1]
        if not self.use_timestep and n == 2:
            return items[0], items[1], None
        raise ValueError(
            f"`inputs` must be {allowed}. Received: a list of {n} inputs"
        )

    def _split_and_check(self, inputs):
        x, cond, timestep = self._split(inputs)
        if len(x.shape) != 4:
            raise ValueError(
                "`inputs` must be 4-D latents (batch, height, width, "
                f"channels). Received: inputs.shape={tuple(x.shape)}"
            )
        if x.shape[-1] != self._channels:
            raise ValueError(
                f"`inputs` must have {self._channels} channels, the number "
                "the layer was built with (height and width may change). "
                f"Received: inputs.shape={tuple(x.shape)}"
            )
        has_cond = self._conditioning_dim > 0
        if (cond is not None) != has_cond or (
            cond is not None and cond.shape[-1] != self._conditioning_dim
        ):
            raise ValueError(
                "`conditioning` must be given exactly when the layer was "
                "built with it, with the same size (built with "
                f"conditioning_dim={self._conditioning_dim}). Received: "
                "conditioning="
                f"{'None' if cond is None else tuple(cond.shape)}"
            )
        return x, cond, timestep

    # --- Cost ---------------------------------------------------------------

    def cost(self, latent_shape, conditioning_dim=None):
        """Analytic FLOPs per example and parameter count.

        A multiply-add counts 2 FLOPs, any other elementwise operation 1.

        Args:
            latent_shape: `(height, width)` or `(height, width, channels)`;
                the channels default to the built ones.
            conditioning_dim: size of the conditioning vector (0: none);
                defaults to the built configuration.
        Returns:
            A dict with `flops` and `params`.
        """
        if len(latent_shape) == 2:
            if self._channels is None:
                raise ValueError(
                    "`latent_shape` must include the channels before the "
                    f"layer is built. Received: latent_shape={latent_shape}"
                )
            latent_shape = tuple(latent_shape) + (self._channels,)
        if conditioning_dim is None:
            conditioning_dim = self._conditioning_dim or 0
        h, w, c = latent_shape
        n = h * w
        p, k, e, f, s = (
            len(self.offsets),
            self.num_experts,
            self.expert_size,
            self.feature_dim,
            self.num_steps,
        )
        ctx = conditioning_dim + (
            self.timestep_embedding_dim if self.use_timestep else 0
        )
        flops = 2 * n * c * c + n * c  # unary 1x1 map
        if ctx:
            flops += 2 * ctx * (p + k + s + 2 * c) + 3 * n * c  # context
        if p:
            flops += 2 * n * c * f  # features
            flops += p * n * (3 * f + 4)  # Gaussian kernels and strengths
        flops += 4 * p + 3 * e * e * c * k + 2 * k + 3 * s  # bound, steps
        per_step = 2 * n * c  # unary gradient
        per_step += p * 5 * n * c  # pairwise gradient
        if k:
            per_step += 2 * 2 * n * e * e * c * k  # expert conv + adjoint
            per_step += 6 * n * k  # robust penalty derivative and weights
        per_step += 3 * n * c  # the update
        flops += s * per_step
        params = c * c + c + c * f + p + e * e * c * k + k + s
        if ctx:
            params += ctx * (p + k + s) + 2 * ctx * c
        return {"flops": int(flops), "params": int(params)}


def _shapes_of(inputs):
    if isinstance(inputs, (list, tuple)):
        return [tuple(t.shape) for t in inputs]
    return tuple(inputs.shape)
