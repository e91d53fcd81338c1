"""The paper's comparison family: AdaGrad-Norm and full-matrix AdaGrad.

Both are the structured-preconditioner meta-algorithm of "Structured
Preconditioners in Adaptive Optimization: A Unified Analysis" (Xie et al.,
arXiv:2503.10537) for a particular structure, and run on the same machinery
as `OneSidedShampoo` (`keras_gr.optimizers.shampoo`): a variable is viewed
as a matrix and given one Kronecker factor.

- full-matrix AdaGrad: `g = vec(G)` viewed as an `(mn) x 1` matrix, left
  factor `F = sum g g^T` ((mn) x (mn)), step `F^(-1/2) g`;
- AdaGrad-Norm: `vec(G)` viewed as a `1 x (mn)` matrix, left factor
  `s = sum ||G||_F^2` (1 x 1), step `G / sqrt(s)`.

Diagonal AdaGrad is Keras's own `keras.optimizers.Adagrad` with
`initial_accumulator_value=0`.
"""

import math

import keras

from keras_gr import _validation
from keras_gr.optimizers.shampoo import _StructuredPreconditioner

_THEORY = dict(
    beta1=0.0,
    beta2=1.0,
    epsilon=1e-7,
    nesterov=False,
    grafting="none",
    grafting_beta2=0.999,
    precondition_frequency=1,
    start_preconditioning_step=1,
    statistics_frequency=1,
)


@keras.saving.register_keras_serializable(package="keras_gr")
class FullMatrixAdagrad(_StructuredPreconditioner):
    """Full-matrix AdaGrad: one `(mn) x (mn)` preconditioner per variable.

    For every variable with `k = size` entries and flattened gradient `g`:

        F = F + g g^T
        w = w - lr * (F)^(-1/2) g

    the `F^(-1/2)` computed every step in float32 by eigendecomposition with
    eigenvalues floored at `relative_epsilon * lambda_max + epsilon` (the
    paper writes `(F + eps I)^(-1/2)`; the floor is the same for the large
    eigenvalues and keeps the rank-deficient early statistics
    reproducible). A non-finite root keeps the previous one; a non-finite
    gradient anywhere in the step leaves every variable and all state
    unchanged. State: two `k x k`
    float32 matrices (statistics and the cached root) per variable, which is
    why variables larger than `max_size` entries are refused at `build`.

    Args:
        learning_rate: float or schedule. Defaults to `0.1`.
        epsilon: absolute eigenvalue floor. Defaults to `1e-6`.
        relative_epsilon: eigenvalue floor relative to the largest
            eigenvalue. Defaults to `1e-6`.
        max_size: largest variable (number of entries) accepted. Defaults to
            `1024`.
        **kwargs: base `keras.optimizers.Optimizer` arguments.

    Example:

    >>> import numpy as np, keras
    >>> from keras_gr.optimizers import FullMatrixAdagrad
    >>> w = keras.Variable(np.zeros((2, 2), "float32"))
    >>> opt = FullMatrixAdagrad(learning_rate=0.5)
    >>> _ = opt.apply_gradients([(np.ones((2, 2), "float32"), w)])
    >>> np.round(np.asarray(w), 3)  # F = g g^T (rank 1): F^(-1/2) g = g / 2
    array([[-0.25, -0.25],
           [-0.25, -0.25]], dtype=float32)

    References:
        - Duchi, Hazan, Singer, "Adaptive Subgradient Methods for Online
          Learning and Stochastic Optimization", JMLR 2011.
        - Xie et al., "Structured Preconditioners in Adaptive Optimization:
          A Unified Analysis", arXiv:2503.10537.
    """

    def __init__(
        self,
        learning_rate: float = 0.1,
        epsilon: float = 1e-6,
        relative_epsilon: float = 1e-6,
        max_size: int = 1024,
        name: str = "full_matrix_adagrad",
        **kwargs,
    ):
        epsilon = _validation.check_positive("epsilon", epsilon)
        max_size = _validation.check_integer("max_size", max_size)
        settings = dict(_THEORY)
        super().__init__(
            learning_rate,
            matrix_epsilon=epsilon,
            relative_matrix_epsilon=relative_epsilon,
            name=name,
            **settings,
            **kwargs,
        )
        self.relative_epsilon = self.relative_matrix_epsilon
        self.max_size = max_size

    def _route(self, variable):
        size = math.prod(int(d) for d in variable.shape)
        if size > self.max_size:
            path = getattr(variable, "path", None) or str(variable.name)
            raise ValueError(
                f"FullMatrixAdagrad keeps a (size x size) preconditioner per "
                f"variable; variable '{path}' with shape "
                f"{tuple(variable.shape)} has size={size}, above "
                f"`max_size`={self.max_size}. Raise `max_size` (memory "
                f"{2 * 4 * size * size} bytes) or use OneSidedShampoo."
            )
        return (size, 1), (True, False)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "epsilon": self.matrix_epsilon,
                "relative_epsilon": self.relative_epsilon,
                "max_size": self.max_size,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_gr")
class AdagradNorm(_StructuredPreconditioner):
    """AdaGrad-Norm: one scalar step size per variable.

    For every variable with gradient `G`:

        s = s + ||G||_F^2
        W = W - lr * G / sqrt(max(s, epsilon))

    (the paper's layerwise-scalar structure; `max(s, eps)` rather than
    `s + eps`, the same eigenvalue floor as the other members of the
    family). State: one scalar statistic and its cached root per variable.

    Args:
        learning_rate: float or schedule. Defaults to `0.1`.
        epsilon: floor of the accumulated squared norm. Defaults to `1e-10`.
        **kwargs: base `keras.optimizers.Optimizer` arguments.

    Example:

    >>> import numpy as np, keras
    >>> from keras_gr.optimizers import AdagradNorm
    >>> w = keras.Variable(np.zeros((3,), "float32"))
    >>> opt = AdagradNorm(learning_rate=1.0)
    >>> _ = opt.apply_gradients([(np.array([3.0, 0.0, 4.0], "float32"), w)])
    >>> np.asarray(w)  # G / ||G|| on the first step
    array([-0.6,  0. , -0.8], dtype=float32)

    References:
        - Ward, Wu, Bottou, "AdaGrad stepsizes: sharp convergence over
          nonconvex landscapes", arXiv:1806.01811.
        - Xie et al., "Structured Preconditioners in Adaptive Optimization:
          A Unified Analysis", arXiv:2503.10537.
    """

    def __init__(
        self,
        learning_rate: float = 0.1,
        epsilon: float = 1e-10,
        name: str = "adagrad_norm",
        **kwargs,
    ):
        epsilon = _validation.check_positive("epsilon", epsilon)
        super().__init__(
            learning_rate,
            matrix_epsilon=epsilon,
            relative_matrix_epsilon=0.0,
            name=name,
            **dict(_THEORY),
            **kwargs,
        )

    def _route(self, variable):
        size = math.prod(int(d) for d in variable.shape)
        return (1, size), (True, False)

    def get_config(self):
        config = super().get_config()
        config["epsilon"] = self.matrix_epsilon
        return config
