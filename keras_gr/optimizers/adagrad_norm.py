"""AdaGrad-Norm as a Keras 3 optimizer."""

import math

import keras

from keras_gr.optimizers import _deprecation
from keras_gr.optimizers._structured import PAPER_SETTINGS
from keras_gr.optimizers._structured import StructuredPreconditioner

RENAMED_ARGUMENTS = {"epsilon": "matrix_epsilon"}
"""Old argument names of `AdagradNorm` (deprecated, still accepted with a
`DeprecationWarning` until keras_gr 0.2.0) and their new names."""


@keras.saving.register_keras_serializable(package="keras_gr")
class AdagradNorm(StructuredPreconditioner):
    r"""AdaGrad-Norm: one scalar step size per variable.

    The structured-preconditioner meta-algorithm of "Structured
    Preconditioners in Adaptive Optimization: A Unified Analysis" (Xie et
    al., arXiv:2503.10537) with the layerwise-scalar structure, run on the
    same machinery as `OneSidedShampoo`: the flattened gradient is viewed
    as a $1 \times k$ matrix whose left factor is the scalar
    $s = \sum \|G\|_F^2$. Per step, for every variable with gradient $G$:

    1. $s \leftarrow s + \|G\|_F^2$;
    2. $W \leftarrow W - \eta\, G / \sqrt{\max(s, \epsilon_m)}$,

    with $\epsilon_m$ = `matrix_epsilon`, the eigenvalue floor of the
    other members of the family (a floor, `max(s, eps)`, rather than the
    `s + eps` of Keras's `Adagrad`). Diagonal AdaGrad is Keras's own
    `keras.optimizers.Adagrad` with `initial_accumulator_value=0`. State:
    one scalar statistic and its cached root per variable.

    Args:
        learning_rate: float or schedule. Defaults to `0.1`.
        matrix_epsilon: floor of the accumulated squared norm. Defaults to
            `1e-10`.
        name: the optimizer's name. Defaults to `"adagrad_norm"`.
        **kwargs: base `keras.optimizers.Optimizer` arguments. The name
            before keras_gr 0.2.0, `epsilon`, is still accepted with a
            `DeprecationWarning`.

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
        matrix_epsilon: float = 1e-10,
        name: str = "adagrad_norm",
        **kwargs,
    ) -> None:
        renamed = _deprecation.pop_renamed(
            type(self).__name__,
            AdagradNorm.__init__,
            kwargs,
            RENAMED_ARGUMENTS,
            matrix_epsilon=matrix_epsilon,
        )
        super().__init__(
            learning_rate,
            relative_matrix_epsilon=0.0,
            name=name,
            **PAPER_SETTINGS,
            **renamed,
            **kwargs,
        )

    def _route(self, variable):
        size = math.prod(int(d) for d in variable.shape)
        return (1, size), (True, False)

    def get_config(self):
        config = super().get_config()
        config["matrix_epsilon"] = self.matrix_epsilon
        return config
