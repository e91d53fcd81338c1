"""LAuReL: the learned augmented residual join as a Keras layer."""

from typing import Any

import keras
from keras import ops

from keras_gr._validation import check_bool
from keras_gr._validation import check_choice
from keras_gr._validation import check_integer
from keras_gr._validation import check_positive
from keras_gr.layers.column_orthogonal import ColumnOrthogonal

VARIANTS = ("rw", "lr", "pa", "rw_lr", "rw_lr_pa")
RW_PARAMETRIZATIONS = ("additive", "softmax", "scaled_softmax", "sigmoid")


def rw_weights(a, b, parametrization):
    """Maps the raw RW parameters to `(alpha, beta)`.

    * `"additive"`: `alpha = 1 + a`, `beta = 1 + b` (exactly `f(x) + x` at
      `a = b = 0`: the form that can be inserted into a pretrained network).
    * `"softmax"`: `(alpha, beta) = softmax((a, b))` (the paper's bounded
      form; starts at 0.5 / 0.5).
    * `"scaled_softmax"`: `(alpha, beta) = 2 softmax((a, b))`; not the
      paper's form but an init ablation of it: the same bound
      (`alpha + beta = 2`, both in `(0, 2)`), yet it starts at exactly
      `f(x) + x` (`alpha = beta = 1` at `a = b = 0`) instead of halving
      the identity path.
    * `"sigmoid"`: one parameter, `alpha = sigmoid(a)`, `beta = 1 - alpha`
      (`b` is ignored and may be `None`).
    """
    if parametrization == "additive":
        return 1.0 + a, 1.0 + b
    if parametrization in ("softmax", "scaled_softmax"):
        m = ops.maximum(a, b)
        ea, eb = ops.exp(a - m), ops.exp(b - m)
        alpha, beta = ea / (ea + eb), eb / (ea + eb)
        if parametrization == "scaled_softmax":
            # 2 * 0.5 is exactly 1: the join starts at exactly f(x) + x.
            return 2.0 * alpha, 2.0 * beta
        return alpha, beta
    alpha = ops.sigmoid(a)
    return alpha, 1.0 - alpha


@keras.saving.register_keras_serializable(package="keras_gr")
class Laurel(keras.layers.Layer):
    """Learned Augmented Residual Layer: a drop-in for `Add()([x, f(x)])`.

    Implements LAuReL from "LAuReL: Learned Augmented Residual Layer"
    (Menghani, Kumar, Kumar; ICML 2025; arXiv 2411.07501). With `x = x_i`
    the block input, `fx = f(x_i)` the block output and `x_{i-j}` the inputs
    of earlier blocks, the variants compute

    * `"rw"`: `alpha * fx + beta * x`.
    * `"lr"`: `fx + x + (x A) B`, `A: D x r`, `B: r x D`, `B = 0` at init.
    * `"pa"`: `fx + x + sum_{j=0}^{k-1} gamma_j x_{i-j}` (`h` = identity).
    * `"rw_lr"`: `alpha * fx + beta * (x + (x A) B)`.
    * `"rw_lr_pa"`: `alpha * fx + beta * (x + sum_{j=0}^{k-1}
      gamma_j (x_{i-j} A_j) B_j)`.

    `D` is the last axis (features of a sequence, channels of an image: `A`
    and `B` act like 1x1 convolutions). Extra parameters per join: RW 2
    (1 with `rw_parametrization="sigmoid"`, `2 D` / `D` with
    `per_channel=True`, the relaxed RW), LR `2 r D`, PA `k`, RW+LR
    `2 r D + 2`, RW+LR+PA `2 r k D + k + 2`.

    Choices the paper leaves open (reconstructed, documented here):

    * RW is parametrised by default as `alpha = 1 + a`, `beta = 1 + b` with
      `a = b = 0` at init, so the layer starts as *exactly* `f(x) + x` (needed
      to retrofit a pretrained network). The paper's bounded forms are
      available as `"softmax"` (`softmax(a, b)`, starts at 0.5 / 0.5) and
      `"sigmoid"` (one parameter, `alpha = sigmoid(a)`, `beta = 1 - alpha`).
    * `"scaled_softmax"` (`2 softmax(a, b)`) is *not* the paper's form: an
      init ablation that keeps the softmax's bound (`alpha + beta = 2`)
      but starts at exactly `f(x) + x` like `"additive"`. It exists to
      test whether the paper's softmax loses to the additive form because
      it halves the identity path (`beta = 0.5`) at every join at init.
    * The PA sum runs over `j = 0..k-1`, so its first term is the current
      input `x_i` itself and the layer takes `k - 1` *earlier* activations
      (most recent first). In `"rw_lr_pa"` the `j = 0` term is the LR term on
      `x_i`, which makes the parameter count `2 r k D + k + 2`.
    * `gamma` starts at 0 in `"pa"` (identity `h`: starts as the plain
      residual) and at 1 in `"rw_lr_pa"` (there `B_j = 0` already makes the
      term vanish; `gamma = 0` would freeze `B_j` at zero).
    * Dtypes follow keras-hub's conventions: every weight is created in the
      policy's variable dtype and the join runs in its compute dtype (no
      float32 copies of the activations under bf16 / mixed policies). The
      mixing scalars are read unrounded (`autocast=False`: float32 under a
      mixed policy) and mapped to `(alpha, beta)` in float32 (the softmax /
      sigmoid) before being cast to the compute dtype.

    Args:
        variant: one of `"rw"`, `"lr"`, `"pa"`, `"rw_lr"`, `"rw_lr_pa"`.
            Defaults to `"rw_lr"`.
        rank: int, the rank `r` of the low-rank terms (`1 <= r <= D`).
            Defaults to 16.
        num_activations: int, `k` of PA: the number of activations
            `x_i, ..., x_{i-k+1}` mixed in. Defaults to 3.
        rw_parametrization: `"additive"`, `"softmax"`, `"scaled_softmax"`
            or `"sigmoid"` (see `rw_weights`). Defaults to `"additive"`.
        pa_projection: how PA mixes in an earlier activation whose shape
            differs from `x`'s (a stage transition of a ResNet): `None`
            (every activation must have `x`'s shape) or `"pool_project"`
            (average-pool its middle axes by the integer size ratios, e.g.
            stride 2 in H and W, then, when its channel count `C_j` differs
            from `D`, multiply by a learned `P_j: C_j x D`, a 1x1
            convolution, glorot-uniform init; the paper projects / pools
            earlier activations across shape changes without fixing the
            form). Defaults to `None`.
        lr_norm: bool, LR with a norm: the low-rank term becomes
            `RMSNorm(x A B) * s` (mean of squares over `D`, computed in
            float32, `s: D` initialised to ones), the form keras-hub ships
            in Gemma 3n (see `from_keras_hub_laurel_block`). With `B = 0`
            at init the term is still 0. Only for `"lr"` / `"rw_lr"`.
            Defaults to `False`.
        lr_norm_epsilon: float, the `eps` of that RMS norm. Defaults to
            `1e-6` (Gemma 3n's).
        per_channel: bool, relaxed RW with one `alpha`, `beta` per channel.
            Defaults to `False`.
        low_rank_initializer: initializer of `A`: `"column_orthogonal"` (the
            paper's LLM choice) or any Keras initializer, e.g.
            `"glorot_uniform"` (the paper's vision choice). Defaults to
            `"column_orthogonal"`.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a list `[x, fx]`, or `[x, fx, x_{i-1}, ..., x_{i-k+1}]` for
            the PA variants; all of the same shape `(..., D)`.

    Returns:
        A tensor of the shape of `x`. Keras masks propagate as through
        `keras.layers.Add`: the output mask is the logical and of the masks
        of the inputs of `x`'s shape (`None` when none has one); masks of
        earlier activations of another shape (PA with `pool_project`) are
        not used.

    Example:

    >>> import keras
    >>> inputs = keras.Input((32,))
    >>> fx = keras.layers.Dense(32, activation="relu")(inputs)
    >>> tuple(Laurel(variant="rw_lr", rank=4)([inputs, fx]).shape)
    (None, 32)

    PA across a stage transition (stride 2, 16 -> 32 channels):

    >>> earlier = keras.Input((8, 8, 16))
    >>> x = keras.Input((4, 4, 32))
    >>> fx = keras.layers.Conv2D(32, 3, padding="same")(x)
    >>> join = Laurel(
    ...     variant="pa", num_activations=2, pa_projection="pool_project"
    ... )
    >>> tuple(join([x, fx, earlier]).shape)
    (None, 4, 4, 32)

    References:
        Menghani, Kumar, Kumar. "LAuReL: Learned Augmented Residual Layer".
        ICML 2025, arXiv 2411.07501.
    """

    def __init__(
        self,
        variant: str = "rw_lr",
        rank: int = 16,
        num_activations: int = 3,
        rw_parametrization: str = "additive",
        per_channel: bool = False,
        pa_projection: str | None = None,
        lr_norm: bool = False,
        lr_norm_epsilon: float = 1e-6,
        low_rank_initializer: (
            str | dict[str, Any] | keras.initializers.Initializer
        ) = "column_orthogonal",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("variant", variant, VARIANTS)
        rank = check_integer("rank", rank, 1)
        num_activations = check_integer("num_activations", num_activations, 1)
        check_choice(
            "rw_parametrization", rw_parametrization, RW_PARAMETRIZATIONS
        )
        self.variant = variant
        self.rank = rank
        self.num_activations = num_activations
        self.rw_parametrization = rw_parametrization
        self.per_channel = check_bool("per_channel", per_channel)
        self.pa_projection = check_choice(
            "pa_projection", pa_projection, (None, "pool_project")
        )
        if low_rank_initializer == "column_orthogonal":
            self.low_rank_initializer = "column_orthogonal"
            self._a_initializer = ColumnOrthogonal()
        else:
            self.low_rank_initializer = keras.initializers.get(
                low_rank_initializer
            )
            self._a_initializer = self.low_rank_initializer
        self.use_rw = variant.startswith("rw")
        self.use_lr = variant in ("lr", "rw_lr")
        self.lr_norm = check_bool("lr_norm", lr_norm)
        self.lr_norm_epsilon = check_positive(
            "lr_norm_epsilon", lr_norm_epsilon
        )
        if self.lr_norm and not self.use_lr:
            raise ValueError(
                "`lr_norm=True` needs an LR variant ('lr' or 'rw_lr'). "
                f"Received: variant={variant!r}, lr_norm={lr_norm!r}"
            )
        self.use_pa = variant.endswith("pa")

    @property
    def num_inputs(self):
        """Length of the input list `call` expects."""
        return 2 + (self.num_activations - 1 if self.use_pa else 0)

    def _check_inputs(self, shapes, what):
        if not isinstance(shapes, (list, tuple)) or (
            len(shapes) and isinstance(shapes[0], (int, type(None)))
        ):
            raise ValueError(
                f"Laurel expects a list of inputs `[x, fx, ...]`. Received: "
                f"{what}={shapes}"
            )
        if len(shapes) != self.num_inputs:
            extra = ""
            if self.use_pa:
                extra = (
                    f" (variant={self.variant!r} with num_activations="
                    f"{self.num_activations} needs the "
                    f"{self.num_activations - 1} previous activations "
                    "`[x, fx, x_{i-1}, ..., x_{i-k+1}]`)"
                )
            raise ValueError(
                f"`inputs` must be a list of {self.num_inputs} tensors{extra}."
                f" Received: {len(shapes)} inputs"
            )
        first = tuple(shapes[0])
        for i, s in enumerate(shapes[1:], start=1):
            s = tuple(s)
            if i >= 2 and self.pa_projection is not None:
                self._pool_factors(first, s)  # raises if not poolable
                continue
            same = len(s) == len(first) and all(
                a is None or b is None or a == b for a, b in zip(s, first)
            )
            if not same:
                name = "fx" if i == 1 else f"inputs[{i}]"
                raise ValueError(
                    f"All Laurel inputs must have the shape of `x`: x has "
                    f"shape {first}, {name} has shape {s}."
                )

    def _pool_factors(self, x_shape, shape):
        """Integer pooling factors of the middle axes mapping an earlier
        activation of `shape` onto `x_shape` (1 where the sizes agree)."""
        ok = len(shape) == len(x_shape) and len(shape) >= 2
        factors = []
        if ok:
            for a, b in zip(shape[1:-1], x_shape[1:-1]):
                if a == b:
                    factors.append(1)
                elif a is None or b is None or a % b != 0:
                    ok = False
                else:
                    factors.append(a // b)
        if not ok:
            raise ValueError(
                "With `pa_projection='pool_project'` every earlier activation "
                "must have the rank of `x` and middle axes that are integer "
                f"multiples of x's. Received: x shape {tuple(x_shape)}, "
                f"activation shape {tuple(shape)}"
            )
        return factors

    def build(self, input_shape):
        self._check_inputs(input_shape, "input_shape")
        dim = input_shape[0][-1]
        if dim is None:
            raise ValueError(
                "The last axis of `x` must be known. Received: input_shape="
                f"{input_shape}"
            )
        if (self.use_lr or self.variant == "rw_lr_pa") and self.rank > dim:
            raise ValueError(
                f"`rank` must be at most the feature size D={dim}. "
                f"Received: rank={self.rank}"
            )
        self.dim = dim
        if self.use_rw:
            shape = (dim,) if self.per_channel else ()
            init = "zeros"
            self.alpha = self.add_weight(
                shape=shape,
                initializer=init,
                name="alpha",
                autocast=False,
            )
            if self.rw_parametrization != "sigmoid":
                self.beta = self.add_weight(
                    shape=shape,
                    initializer=init,
                    name="beta",
                    autocast=False,
                )
        if self.use_lr:
            self.lr_a = self.add_weight(
                shape=(dim, self.rank),
                initializer=self._a_initializer,
                name="lr_a",
            )
            self.lr_b = self.add_weight(
                shape=(self.rank, dim), initializer="zeros", name="lr_b"
            )
            if self.lr_norm:
                self.lr_norm_scale = self.add_weight(
                    shape=(dim,), initializer="ones", name="lr_norm_scale"
                )
        if self.use_pa:
            k = self.num_activations
            self.gamma = self.add_weight(
                shape=(k,),
                initializer="ones" if self.use_rw else "zeros",
                name="gamma",
                autocast=False,
            )
            # Per earlier activation j >= 1: pooling factors and, when its
            # channels differ, the 1x1 projection P_j (C_j x D).
            self._pa_factors = [None]
            self.pa_projections = [None]
            for j, shape in enumerate(input_shape[2:], start=1):
                shape = tuple(shape)
                factors, projection = None, None
                if self.pa_projection is not None:
                    factors = self._pool_factors(input_shape[0], shape)
                    if shape[-1] != dim:
                        projection = self.add_weight(
                            shape=(shape[-1], dim),
                            initializer="glorot_uniform",
                            name=f"pa_projection_{j}",
                        )
                self._pa_factors.append(factors)
                self.pa_projections.append(projection)
            if self.variant == "rw_lr_pa":
                self.pa_a = self.add_weight(
                    shape=(k, dim, self.rank),
                    initializer=self._a_initializer,
                    name="pa_a",
                )
                self.pa_b = self.add_weight(
                    shape=(k, self.rank, dim),
                    initializer="zeros",
                    name="pa_b",
                )

    def call(self, inputs):
        self._check_inputs([tuple(t.shape) for t in inputs], "inputs")
        # keras-hub's conventions: activations stay in the compute dtype
        # (no float32 copies to save for the backward pass); the mixing
        # scalars are read at their variable dtype (`autocast=False`) and
        # mapped to (alpha, beta) in float32 (the softmax / sigmoid is the
        # numerically sensitive part), then cast to the compute dtype.
        dtype = self.compute_dtype
        x, fx = ops.cast(inputs[0], dtype), ops.cast(inputs[1], dtype)
        residual = x
        if self.use_lr:
            residual = residual + self._low_rank(x)
        if self.use_pa:
            gamma = ops.cast(self.gamma, dtype)
            for j, act in enumerate([x] + list(inputs[2:])):
                act = self._match_shape(ops.cast(act, dtype), j)
                if self.variant == "rw_lr_pa":
                    term = ops.matmul(
                        ops.matmul(act, self.pa_a[j]), self.pa_b[j]
                    )
                else:
                    term = act
                residual = residual + gamma[j] * term
        if self.use_rw:
            a = ops.cast(self.alpha, "float32")
            b = None
            if self.rw_parametrization != "sigmoid":
                b = ops.cast(self.beta, "float32")
            alpha, beta = rw_weights(a, b, self.rw_parametrization)
            return (
                ops.cast(alpha, dtype) * fx + ops.cast(beta, dtype) * residual
            )
        return fx + residual

    def residual_increment(self, branch, residual):
        """The join minus its residual: `join([residual, branch]) - residual`.

        A block that ends in `residual + branch` computes this layer's join
        when its branch returns this increment in place of `branch`: that
        is how `keras_gr.hub.laurel_retrofit` puts LAuReL into keras-hub
        blocks without rewriting their `call`. The increment is written so
        that it is exactly `branch` at initialisation (bit for bit):

        * `"rw"` (additive): `fx + a fx + b x`;
        * `"lr"`: `fx + (x A) B` (or its normed form with `lr_norm`);
        * `"rw_lr"` (additive): `fx + a fx + b x + (1 + b) (x A) B`;
        * softmax / scaled softmax / sigmoid RW: `alpha fx + (beta - 1) x
          (+ beta (x A) B)` (exactly `fx` at init for `"scaled_softmax"`,
          where `alpha = beta = 1`; not `fx` for `"softmax"` / `"sigmoid"`).

        with `x = residual`, `fx = branch`, `alpha = 1 + a`, `beta = 1 + b`.
        `residual + increment` equals `self([residual, branch])` up to float
        rounding. It can be called outside `__call__` (inside another
        layer's call): every weight is cast to this layer's compute dtype.
        The PA variants need earlier activations and raise.

        Args:
            branch: the branch output `f(x)`, shape `(..., D)`.
            residual: the residual stream `x`, same shape.

        Returns:
            The increment, in the compute dtype.

        Example:

        >>> import numpy as np
        >>> join = Laurel(variant="rw_lr", rank=2)
        >>> join.build([(None, 4), (None, 4)])
        >>> x = np.ones((1, 4), "float32")
        >>> fx = np.full((1, 4), 0.5, "float32")
        >>> np.asarray(join.residual_increment(fx, x)).tolist()
        [[0.5, 0.5, 0.5, 0.5]]
        """
        if self.use_pa:
            raise ValueError(
                "`residual_increment` needs an RW / LR variant; the PA "
                "variants also need the earlier activations. Received: "
                f"variant={self.variant!r}"
            )
        dtype = self.compute_dtype
        x, fx = ops.cast(residual, dtype), ops.cast(branch, dtype)
        low = self._low_rank(x) if self.use_lr else None
        if not self.use_rw:
            return fx + low
        if self.rw_parametrization == "additive":
            a, b = ops.cast(self.alpha, dtype), ops.cast(self.beta, dtype)
            increment = fx + a * fx + b * x
            if low is not None:
                increment = increment + (1 + b) * low
            return increment
        a = ops.cast(self.alpha, "float32")
        b = None
        if self.rw_parametrization != "sigmoid":
            b = ops.cast(self.beta, "float32")
        alpha, beta = rw_weights(a, b, self.rw_parametrization)
        alpha, beta = ops.cast(alpha, dtype), ops.cast(beta, dtype)
        increment = alpha * fx + (beta - 1) * x
        if low is not None:
            increment = increment + beta * low
        return increment

    def _low_rank(self, x):
        """The LR term `(x A) B` (normed with `lr_norm`), in the compute
        dtype; weights cast explicitly so it also runs outside `__call__`."""
        dtype = self.compute_dtype
        low = ops.matmul(
            ops.matmul(x, ops.cast(self.lr_a, dtype)),
            ops.cast(self.lr_b, dtype),
        )
        if self.lr_norm:
            low32 = ops.cast(low, "float32")
            low32 = low32 * ops.rsqrt(
                ops.mean(ops.square(low32), axis=-1, keepdims=True)
                + self.lr_norm_epsilon
            )
            low = ops.cast(low32, dtype) * ops.cast(self.lr_norm_scale, dtype)
        return low

    @classmethod
    def from_keras_hub_laurel_block(cls, block, name=None):
        """A `Laurel` equal to keras-hub's Gemma 3n LAuReL block.

        keras-hub's `Gemma3nTextLaurelBlock(hidden_size, laurel_rank,
        rms_norm_eps)` computes `y = x + RMSNorm(x W_l W_r) * s` (no `f(x)`
        term: Gemma 3n adds the block's attention output separately and
        averages, `(x + attn + y) / sqrt(2)`). That is this layer's LR with
        a norm, `variant="lr", lr_norm=True`, called as `[x, 0]`:

        | keras-hub                          | `Laurel`            |
        |------------------------------------|---------------------|
        | `linear_left.kernel` (D x r)       | `lr_a`              |
        | `linear_right.kernel` (r x D)      | `lr_b`              |
        | `post_laurel_norm.scale` (D)       | `lr_norm_scale`     |
        | `rms_norm_eps`                     | `lr_norm_epsilon`   |
        | `laurel_rank`                      | `rank`              |

        Args:
            block: a built keras-hub Gemma 3n LAuReL block (any layer with
                `linear_left`, `linear_right`, `post_laurel_norm`,
                `laurel_rank` and `rms_norm_eps`).
            name: name of the new layer. Defaults to `None`.

        Returns:
            A built `Laurel` with the block's weights and dtype policy.
        """
        for attribute in ("linear_left", "linear_right", "post_laurel_norm"):
            if not hasattr(block, attribute):
                raise ValueError(
                    "`block` must be a keras-hub Gemma 3n LAuReL block with "
                    f"`{attribute}`. Received: block={block!r}"
                )
        if not block.built:
            raise ValueError(
                f"`block` must be built. Received: block={block.name!r}, "
                "built=False"
            )
        dim = block.linear_right.kernel.shape[-1]
        layer = cls(
            variant="lr",
            rank=int(block.laurel_rank),
            lr_norm=True,
            lr_norm_epsilon=float(block.rms_norm_eps),
            dtype=block.dtype_policy,
            name=name,
        )
        layer.build([(None, dim), (None, dim)])
        layer.lr_a.assign(block.linear_left.kernel)
        layer.lr_b.assign(block.linear_right.kernel)
        layer.lr_norm_scale.assign(block.post_laurel_norm.scale)
        return layer

    def _match_shape(self, act, j):
        """PA across a shape change: pools then projects activation `j`."""
        factors = self._pa_factors[j]
        if factors and any(f > 1 for f in factors):
            split = [-1]
            for size, f in zip(act.shape[1:-1], factors):
                split += [size // f, f]
            act = ops.reshape(act, split + [act.shape[-1]])
            act = ops.mean(act, axis=tuple(range(2, 2 * len(factors) + 1, 2)))
        if self.pa_projections[j] is not None:
            act = ops.matmul(act, self.pa_projections[j])
        return act

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def compute_mask(self, inputs, mask=None):
        if mask is None or not isinstance(mask, (list, tuple)):
            return None
        # As `keras.layers.Add`: the logical and of the inputs' masks; masks
        # of pooled earlier activations (another shape) do not apply.
        shape = tuple(inputs[0].shape)
        masks = [
            ops.cast(m, "bool")
            for t, m in zip(inputs, mask)
            if m is not None and tuple(t.shape) == shape
        ]
        if not masks:
            return None
        merged = masks[0]
        for m in masks[1:]:
            merged = ops.logical_and(merged, m)
        return merged

    def get_config(self):
        config = super().get_config()
        init = self.low_rank_initializer
        if not isinstance(init, str):
            init = keras.initializers.serialize(init)
        config.update(
            {
                "variant": self.variant,
                "rank": self.rank,
                "num_activations": self.num_activations,
                "rw_parametrization": self.rw_parametrization,
                "per_channel": self.per_channel,
                "pa_projection": self.pa_projection,
                "lr_norm": self.lr_norm,
                "lr_norm_epsilon": self.lr_norm_epsilon,
                "low_rank_initializer": init,
            }
        )
        return config
