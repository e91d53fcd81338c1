"""LAuReL: the learned augmented residual join as a Keras layer."""

import math

import keras
from keras import ops

VARIANTS = ("rw", "lr", "pa", "rw_lr", "rw_lr_pa")
RW_PARAMETRIZATIONS = ("additive", "softmax", "sigmoid")


def column_orthogonal_matrix(rows, rank):
    """The paper's column-orthogonal init of the LR factor `A` (rows x rank).

    `A[i, j] = 1 / sqrt(rank * rows)` if `i mod rank == j`, else 0, so the
    columns of `A` have disjoint supports (they are mutually orthogonal).
    Returns a nested list of Python floats (backend free).
    """
    value = 1.0 / math.sqrt(rank * rows)
    return [
        [value if i % rank == j else 0.0 for j in range(rank)]
        for i in range(rows)
    ]


def rw_weights(a, b, parametrization):
    """Maps the raw RW parameters to `(alpha, beta)`.

    * `"additive"`: `alpha = 1 + a`, `beta = 1 + b` (exactly `f(x) + x` at
      `a = b = 0`: the form that can be inserted into a pretrained network).
    * `"softmax"`: `(alpha, beta) = softmax((a, b))` (the paper's bounded
      form; starts at 0.5 / 0.5).
    * `"sigmoid"`: one parameter, `alpha = sigmoid(a)`, `beta = 1 - alpha`
      (`b` is ignored and may be `None`).
    """
    if parametrization == "additive":
        return 1.0 + a, 1.0 + b
    if parametrization == "softmax":
        m = ops.maximum(a, b)
        ea, eb = ops.exp(a - m), ops.exp(b - m)
        return ea / (ea + eb), eb / (ea + eb)
    alpha = ops.sigmoid(a)
    return alpha, 1.0 - alpha


@keras.saving.register_keras_serializable(package="keras_gr")
class ColumnOrthogonal(keras.initializers.Initializer):
    """Initializer of the LAuReL low-rank factor `A` (last two axes D x r).

    `A[..., i, j] = 1 / sqrt(r D)` if `i mod r == j`, else 0
    (Menghani et al., arXiv 2411.07501, the init used for LLMs). Leading
    axes (one matrix per previous activation in PA) repeat the same matrix.
    """

    def __call__(self, shape, dtype=None):
        rows, rank = shape[-2], shape[-1]
        matrix = ops.convert_to_tensor(
            column_orthogonal_matrix(rows, rank), dtype=dtype or "float32"
        )
        return ops.broadcast_to(matrix, shape)

    def get_config(self):
        return {}


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
    * The PA sum runs over `j = 0..k-1`, so its first term is the current
      input `x_i` itself and the layer takes `k - 1` *earlier* activations
      (most recent first). In `"rw_lr_pa"` the `j = 0` term is the LR term on
      `x_i`, which makes the parameter count `2 r k D + k + 2`.
    * `gamma` starts at 0 in `"pa"` (identity `h`: starts as the plain
      residual) and at 1 in `"rw_lr_pa"` (there `B_j = 0` already makes the
      term vanish; `gamma = 0` would freeze `B_j` at zero).
    * The mixing scalars `alpha`, `beta`, `gamma` are float32 variables with
      `autocast=False`; the mixing is computed in float32 and cast to the
      compute dtype at the end. `A`, `B` follow the layer's dtype policy.

    Args:
        variant: one of `"rw"`, `"lr"`, `"pa"`, `"rw_lr"`, `"rw_lr_pa"`.
            Defaults to `"rw_lr"`.
        rank: int, the rank `r` of the low-rank terms (`1 <= r <= D`).
            Defaults to 16.
        num_activations: int, `k` of PA: the number of activations
            `x_i, ..., x_{i-k+1}` mixed in. Defaults to 3.
        rw_parametrization: `"additive"`, `"softmax"` or `"sigmoid"`.
            Defaults to `"additive"`.
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
        A tensor of the shape of `x`.

    Example:

    ```python
    inputs = keras.Input((32,))
    fx = keras.layers.Dense(32, activation="relu")(inputs)
    outputs = Laurel(variant="rw_lr", rank=4)([inputs, fx])
    ```

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
        low_rank_initializer="column_orthogonal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if variant not in VARIANTS:
            raise ValueError(
                f"`variant` must be one of {VARIANTS}. Received: "
                f"variant={variant!r}"
            )
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(
                f"`rank` must be a positive integer. Received: rank={rank!r}"
            )
        if (
            isinstance(num_activations, bool)
            or not isinstance(num_activations, int)
            or num_activations < 1
        ):
            raise ValueError(
                "`num_activations` must be a positive integer. Received: "
                f"num_activations={num_activations!r}"
            )
        if rw_parametrization not in RW_PARAMETRIZATIONS:
            raise ValueError(
                f"`rw_parametrization` must be one of {RW_PARAMETRIZATIONS}. "
                f"Received: rw_parametrization={rw_parametrization!r}"
            )
        self.variant = variant
        self.rank = rank
        self.num_activations = num_activations
        self.rw_parametrization = rw_parametrization
        self.per_channel = bool(per_channel)
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
            same = len(s) == len(first) and all(
                a is None or b is None or a == b for a, b in zip(s, first)
            )
            if not same:
                name = "fx" if i == 1 else f"inputs[{i}]"
                raise ValueError(
                    f"All Laurel inputs must have the shape of `x`: x has "
                    f"shape {first}, {name} has shape {s}."
                )

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
                dtype="float32",
                autocast=False,
            )
            if self.rw_parametrization != "sigmoid":
                self.beta = self.add_weight(
                    shape=shape,
                    initializer=init,
                    name="beta",
                    dtype="float32",
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
        if self.use_pa:
            k = self.num_activations
            self.gamma = self.add_weight(
                shape=(k,),
                initializer="ones" if self.use_rw else "zeros",
                name="gamma",
                dtype="float32",
                autocast=False,
            )
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
        x, fx = inputs[0], inputs[1]
        out_dtype = self.compute_dtype
        x32 = ops.cast(x, "float32")
        fx32 = ops.cast(fx, "float32")
        residual = x32
        if self.use_lr:
            low = ops.matmul(ops.matmul(x, self.lr_a), self.lr_b)
            residual = residual + ops.cast(low, "float32")
        if self.use_pa:
            for j, act in enumerate([x] + list(inputs[2:])):
                if self.variant == "rw_lr_pa":
                    term = ops.matmul(
                        ops.matmul(act, self.pa_a[j]), self.pa_b[j]
                    )
                else:
                    term = act
                residual = residual + self.gamma[j] * ops.cast(term, "float32")
        if self.use_rw:
            beta = None if self.rw_parametrization == "sigmoid" else self.beta
            alpha, beta = rw_weights(self.alpha, beta, self.rw_parametrization)
            out = alpha * fx32 + beta * residual
        else:
            out = fx32 + residual
        return ops.cast(out, out_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

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
                "low_rank_initializer": init,
            }
        )
        return config
