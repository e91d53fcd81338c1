"""LinearAttention: the in-context-regression linear attention layer."""

import keras
from keras import ops

from keras_gr._validation import check_integer
from keras_gr._validation import check_number


def linear_attention_update(z, p, q):
    """One residual linear-attention step on token-major prompts.

    The paper's update on a `(d + 1, n + 1)` prompt `Z` (one column per
    token, the last column the query) is
    `Z <- Z + (1/n) P Z M (Z^T Q Z)` with `M = diag(I_n, 0)`. Written on the
    transpose `X = Z^T` (`(batch, n + 1, d + 1)`, one row per token) it is

    ```
    K = X[:n]^T X[:n]                 (= Z M Z^T, the query is not a key)
    X <- X + (1/n) X Q^T K P^T
    ```

    Args:
        z: `(batch, n + 1, d + 1)` tensor.
        p, q: `(d + 1, d + 1)` tensors.

    Returns:
        The updated `(batch, n + 1, d + 1)` tensor.
    """
    num_keys = ops.shape(z)[1] - 1
    keys = z[:, :-1, :]
    k = ops.einsum("bti,btj->bij", keys, keys)
    kp = ops.einsum("bij,kj->bik", k, p)
    zq = ops.einsum("bti,ji->btj", z, q)
    update = ops.einsum("btj,bjk->btk", zq, kp)
    scale = ops.cast(1.0 / ops.cast(num_keys, "float32"), z.dtype)
    return z + update * scale


def restricted_matrices(a, u):
    """`(P, Q)` of the restricted layer from its trainable `A` and `u`.

    ```
    P = [[0_{d x d}, 0], [u^T, 1]]      Q = [[-A, 0], [0, 0]]
    ```

    Only the `y` row of the prompt is updated (the first `d` rows of `P` are
    zero) and the attention scores use `x_i^T (-A) x_j`: with `u = 0` and a
    positive definite `A`, one layer is one step of gradient descent
    preconditioned by `A` (see `LinearAttention`).
    """
    dim = ops.shape(a)[0]
    dtype = a.dtype
    top = ops.zeros((dim, dim + 1), dtype=dtype)
    bottom = ops.concatenate([u, ops.ones((1,), dtype=dtype)], axis=0)
    p = ops.concatenate([top, ops.expand_dims(bottom, 0)], axis=0)
    q = ops.pad(-a, [[0, 1], [0, 1]])
    return p, q


@keras.saving.register_keras_serializable(package="keras_gr")
class LinearAttention(keras.layers.Layer):
    """Linear self-attention with residual for in-context linear regression.

    The layer of "On the Role of Depth and Looping for In-Context Learning
    with Task Diversity" (Gatmiry, Saunshi, Reddi, Jegelka, Kumar; arXiv
    2410.21698) and its companion (arXiv 2410.08292, after Ahn et al.,
    "Transformers learn to implement preconditioned gradient descent for
    in-context learning", arXiv 2306.00297):

    ```
    Z <- Z + (1/n) P Z M (Z^T Q Z),   M = diag(I_n, 0)
    ```

    on a prompt `Z0 = [[x_1 .. x_n, x_q], [y_1 .. y_n, 0]]` (see
    `keras_gr.data.icl_regression_problems`). Inputs here are *token-major*,
    the transpose of the paper's `Z`: `(batch, n + 1, d + 1)`, one row per
    token, the last row the query; `n` is read from the input's length.

    Forms:

    - `restricted=True` (default): trainable `A` (`d x d`) and `u` (`d`),
      `P = [[0, 0], [u^T, 1]]`, `Q = [[-A, 0], [0, 0]]`. Sign convention
      (the paper fixes it only up to sign): `Q`'s top-left block is stored as
      `-A` so that the gradient-descent construction has a *positive*
      preconditioner. With `u = 0` and `A = eta Sigma^-1`, `L` layers run
      `L` steps of preconditioned gradient descent
      `w <- w + A^T (1/n) sum_i (y_i - <w, x_i>) x_i` from `w = 0` on the
      in-context least squares (`A^T = A` for a symmetric preconditioner;
      any `A` with `u = 0` is such a GD step): the context `y` slots hold
      the residuals `y_i - <w_L, x_i>` and the query's `y` slot holds
      `-<w_L, x_q>`, so the prediction is `-Z_L[query, y]`
      (`keras_gr.models.query_prediction`).
    - `restricted=False`: full trainable `(d + 1) x (d + 1)` `P` and `Q`.

    Initialisation (not given by the paper): both forms start at the
    identity map plus small Gaussian noise of standard deviation
    `init_stddev`: restricted `A = 0 + noise`, `u = 0 + noise`; unrestricted
    `P = e e^T + noise` (`e` the last basis vector, i.e. the restricted `P`
    with `u = 0`) and `Q = 0 + noise`. The loss gradient with respect to `A`
    (or `Q`) is non-zero at this point, so training starts moving at once.

    Args:
        restricted: whether to use the restricted `(A, u)` form. Defaults to
            `True`.
        init_stddev: standard deviation of the initial noise. Defaults to
            `0.01`.
        seed: optional seed of the initial noise.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, n + 1, d + 1)` prompts, `n >= 1`, `d >= 1`.

    Returns:
        The updated prompts, same shape.

    Example:

    >>> from keras_gr.data import icl_regression_problems
    >>> data = icl_regression_problems(16, dim=5, num_context=20)
    >>> layer = LinearAttention()
    >>> tuple(layer(data["prompts"]).shape)
    (16, 21, 6)

    References:
        - Gatmiry et al., "On the Role of Depth and Looping for In-Context
          Learning with Task Diversity", arXiv 2410.21698.
        - Gatmiry et al., "Can Looped Transformers Learn to Implement
          Multi-step Gradient Descent for In-context Learning?", ICML 2024,
          arXiv 2410.08292.
    """

    def __init__(
        self,
        restricted: bool = True,
        init_stddev: float = 0.01,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(restricted, bool):
            raise ValueError(
                "`restricted` must be a bool. "
                f"Received: restricted={restricted!r}"
            )
        self.restricted = restricted
        self.init_stddev = check_number("init_stddev", init_stddev, minimum=0.0)
        self.seed = (
            None if seed is None else check_integer("seed", seed, minimum=None)
        )

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                "`inputs` must have shape (batch, n + 1, d + 1). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        tokens, features = input_shape[1], input_shape[2]
        if features is None or features < 2:
            raise ValueError(
                "The last axis of `inputs` must be d + 1 >= 2 (x then y). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        if tokens is not None and tokens < 2:
            raise ValueError(
                "`inputs` needs at least one context token and the query "
                f"(n + 1 >= 2). Received: input_shape={tuple(input_shape)}"
            )
        dim = features - 1
        self.dim = dim
        if self.restricted:
            self.a = self.add_weight(
                shape=(dim, dim),
                initializer=self._noise(0),
                name="a",
            )
            self.u = self.add_weight(
                shape=(dim,),
                initializer=self._noise(1),
                name="u",
            )
        else:
            self.p = self.add_weight(
                shape=(dim + 1, dim + 1),
                initializer=self._noise(0, corner=1.0),
                name="p",
            )
            self.q = self.add_weight(
                shape=(dim + 1, dim + 1),
                initializer=self._noise(1),
                name="q",
            )

    def call(self, inputs):
        p, q = self.matrices()
        p = ops.cast(p, inputs.dtype)
        q = ops.cast(q, inputs.dtype)
        return linear_attention_update(inputs, p, q)

    def matrices(self):
        """The full `(P, Q)`, each `(d + 1, d + 1)` (variables' dtype)."""
        if self.restricted:
            return restricted_matrices(
                ops.convert_to_tensor(self.a), ops.convert_to_tensor(self.u)
            )
        return ops.convert_to_tensor(self.p), ops.convert_to_tensor(self.q)

    def _noise(self, offset, corner=0.0):
        seed = None if self.seed is None else int(self.seed) + offset
        normal = keras.initializers.RandomNormal(
            stddev=self.init_stddev, seed=seed
        )

        def initializer(shape, dtype=None):
            value = normal(shape, dtype=dtype)
            if corner:
                value = value + ops.pad(
                    ops.full((1, 1), corner, dtype=dtype),
                    [[shape[0] - 1, 0], [shape[1] - 1, 0]],
                )
            return value

        return initializer

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "restricted": self.restricted,
                "init_stddev": self.init_stddev,
                "seed": self.seed,
            }
        )
        return config
