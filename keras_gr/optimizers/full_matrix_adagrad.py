"""Full-matrix AdaGrad as a Keras 3 optimizer."""

import math

import keras

from keras_gr import _validation
from keras_gr.optimizers import _deprecation
from keras_gr.optimizers._structured import PAPER_SETTINGS
from keras_gr.optimizers._structured import StructuredPreconditioner

RENAMED_ARGUMENTS = {
    "epsilon": "matrix_epsilon",
    "relative_epsilon": "relative_matrix_epsilon",
}
"""Old argument names of `FullMatrixAdagrad` (deprecated, still accepted
with a `DeprecationWarning` until keras_gr 0.2.0) and their new names."""


@keras.saving.register_keras_serializable(package="keras_gr")
class FullMatrixAdagrad(StructuredPreconditioner):
    r"""Full-matrix AdaGrad: one `(mn) x (mn)` preconditioner per variable.

    The structured-preconditioner meta-algorithm of "Structured
    Preconditioners in Adaptive Optimization: A Unified Analysis" (Xie et
    al., arXiv:2503.10537) with the full-matrix structure, run on the same
    machinery as `OneSidedShampoo`: the flattened gradient $g$ of a
    variable with $k$ entries is viewed as a $k \times 1$ matrix with one
    left factor. Per step:

    1. $F \leftarrow F + g g^\top$ ($k \times k$);
    2. $w \leftarrow w - \eta\, F^{-1/2} g$,

    with $F^{-1/2}$ computed every step in float32 by eigendecomposition
    with eigenvalues floored at
    `relative_matrix_epsilon * lambda_max + matrix_epsilon` (the paper
    writes $(F + \epsilon I)^{-1/2}$; the floor is the same for the large
    eigenvalues and keeps the rank-deficient early statistics
    reproducible). A non-finite root keeps the previous one; a non-finite
    gradient anywhere in the step leaves every variable and all state
    unchanged. State: two $k \times k$ float32 matrices (statistics and
    the cached root) per variable, which is why variables larger than
    `max_size` entries are refused at `build`.

    Args:
        learning_rate: float or schedule. Defaults to `0.1`.
        matrix_epsilon: absolute eigenvalue floor. Defaults to `1e-6`.
        relative_matrix_epsilon: eigenvalue floor relative to the largest
            eigenvalue, in `[0, 1)`. Defaults to `1e-6`.
        max_size: largest variable (number of entries) accepted. Defaults to
            `1024`.
        name: the optimizer's name. Defaults to `"full_matrix_adagrad"`.
        **kwargs: base `keras.optimizers.Optimizer` arguments. The names
            before keras_gr 0.2.0, `epsilon` and `relative_epsilon`, are
            still accepted with a `DeprecationWarning`.

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
        matrix_epsilon: float = 1e-6,
        relative_matrix_epsilon: float = 1e-6,
        max_size: int = 1024,
        name: str = "full_matrix_adagrad",
        **kwargs,
    ) -> None:
        renamed = _deprecation.pop_renamed(
            type(self).__name__,
            FullMatrixAdagrad.__init__,
            kwargs,
            RENAMED_ARGUMENTS,
            matrix_epsilon=matrix_epsilon,
            relative_matrix_epsilon=relative_matrix_epsilon,
        )
        max_size = _validation.check_integer("max_size", max_size)
        super().__init__(
            learning_rate,
            name=name,
            **PAPER_SETTINGS,
            **renamed,
            **kwargs,
        )
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
                "matrix_epsilon": self.matrix_epsilon,
                "relative_matrix_epsilon": self.relative_matrix_epsilon,
                "max_size": self.max_size,
            }
        )
        return config
