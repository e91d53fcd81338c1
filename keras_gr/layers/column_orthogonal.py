"""The column-orthogonal initializer of LAuReL's low-rank factor."""

import math

import keras
from keras import ops


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


@keras.saving.register_keras_serializable(package="keras_gr")
class ColumnOrthogonal(keras.initializers.Initializer):
    """Initializer of the LAuReL low-rank factor `A` (last two axes D x r).

    `A[..., i, j] = 1 / sqrt(r D)` if `i mod r == j`, else 0
    (Menghani et al., arXiv 2411.07501, the init used for LLMs). Leading
    axes (one matrix per previous activation in PA) repeat the same matrix.

    Example:

    >>> import numpy as np
    >>> a = np.asarray(ColumnOrthogonal()((4, 2)))
    >>> np.round(a * np.sqrt(2 * 4), 4).tolist()  # 1 / sqrt(r D) entries
    [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    """

    def __call__(self, shape, dtype=None):
        rows, rank = shape[-2], shape[-1]
        matrix = ops.convert_to_tensor(
            column_orthogonal_matrix(rows, rank), dtype=dtype or "float32"
        )
        return ops.broadcast_to(matrix, shape)

    def get_config(self):
        return {}
