"""Blocking: how a variable is cut into the blocks that get Kronecker factors.

The first step of every structured-preconditioner optimizer
(`keras_gr.optimizers.Shampoo` and its family), as the block partitioner
of optax's first Shampoo: a variable is viewed as a tensor (`view`), each
factored axis longer than the block size is split into balanced blocks
(the last one zero-padded, which is exact: zero rows add nothing to the
statistics and get a zero update), and the blocks are stacked along a new
leading axis so that every factor of a variable is one `(N, b, b)` tensor
and its inverse root is one batched call.

Pure `keras.ops` functions of a `BlockPlan` (Python metadata decided at
`build`).
"""

import math

from keras import ops


class BlockPlan:
    """How one variable is preconditioned (Python metadata from `build`).

    `view` is the tensor the variable is reshaped to; `factored[a]` says
    whether view axis `a` gets a Kronecker factor; a factored axis of
    length `d` is split into `blocks[a]` balanced blocks of length
    `block[a] = ceil(d / blocks[a])` (the last one zero-padded); unfactored
    axes are never split. Every block gets one `(block[a], block[a])`
    factor per factored axis; the blocks of a variable are stacked, so each
    axis's factors form one `(num_blocks, b, b)` tensor (one batched root).
    The exponent of each factor's inverse root is `-1 / p` with
    `p = 2 * number_of_factors`.

    Args:
        shape: the variable's shape.
        view: the tensor shape the variable is viewed as.
        factored: per axis of `view`, whether it gets a factor.
        block_size: the longest block, or `None` (no axis is split).
    """

    def __init__(self, shape, view, factored, block_size):
        self.shape = tuple(shape)
        self.view = tuple(view)
        self.factored = tuple(bool(f) for f in factored)
        blocks, block = [], []
        for d, f in zip(self.view, self.factored):
            n = 1
            if f and block_size is not None and d > block_size:
                n = -(-d // block_size)
            blocks.append(n)
            block.append(-(-d // n))
        self.blocks = tuple(blocks)
        self.block = tuple(block)
        self.num_blocks = math.prod(self.blocks)
        self.axes = tuple(a for a, f in enumerate(self.factored) if f)
        self.p = 2.0 * len(self.axes)

    @property
    def padded(self):
        """The view's shape padded to whole blocks."""
        return tuple(n * b for n, b in zip(self.blocks, self.block))

    def factor_shapes(self):
        """`(num_blocks, b, b)` per factored axis."""
        n = self.num_blocks
        return [(n, self.block[a], self.block[a]) for a in self.axes]

    def root_cost(self):
        """Relative cost of recomputing all roots (sum of N b^3)."""
        return sum(n * b**3 for n, b, _ in self.factor_shapes())


def to_blocks(x, plan):
    """`x` (the variable's shape) as `(num_blocks, *plan.block)`."""
    x = ops.reshape(x, plan.view)
    pads = [(0, p - d) for p, d in zip(plan.padded, plan.view)]
    if any(hi for _, hi in pads):
        x = ops.pad(x, pads)
    k = len(plan.view)
    if plan.num_blocks == 1:
        return ops.reshape(x, (1, *plan.block))
    interleaved = []
    for n, b in zip(plan.blocks, plan.block):
        interleaved += [n, b]
    x = ops.reshape(x, interleaved)
    perm = [2 * a for a in range(k)] + [2 * a + 1 for a in range(k)]
    x = ops.transpose(x, perm)
    return ops.reshape(x, (plan.num_blocks, *plan.block))


def from_blocks(x, plan):
    """Inverse of `to_blocks`: back to the variable's shape."""
    k = len(plan.view)
    if plan.num_blocks == 1:
        x = ops.reshape(x, plan.padded)
    else:
        x = ops.reshape(x, (*plan.blocks, *plan.block))
        perm = []
        for a in range(k):
            perm += [a, k + a]
        x = ops.transpose(x, perm)
        x = ops.reshape(x, plan.padded)
    if plan.padded != plan.view:
        x = ops.slice(x, [0] * k, plan.view)
    return ops.reshape(x, plan.shape)


def axis_gram(x, axis):
    """Per-block `X_(axis) X_(axis)^T` of blocked `x`: `(N, b, b)`, the
    contraction of every other axis (the tensor-Shampoo statistic)."""
    x = ops.moveaxis(x, axis + 1, 1)
    n, b = x.shape[0], x.shape[1]
    x = ops.reshape(x, (n, b, -1))
    return ops.matmul(x, ops.swapaxes(x, -1, -2))


def apply_on_axis(x, root, axis):
    """Multiplies every block of `x` along `axis` by its `(b, b)` root."""
    x = ops.moveaxis(x, axis + 1, 1)
    moved = x.shape
    x = ops.reshape(x, (moved[0], moved[1], -1))
    x = ops.reshape(ops.matmul(root, x), moved)
    return ops.moveaxis(x, 1, axis + 1)


def batched_identity(shape, dtype=None):
    """Initializer: a stack of identity matrices of shape `(N, b, b)`."""
    n, b = shape[0], shape[-1]
    eye = ops.eye(b, dtype=dtype or "float32")
    return ops.broadcast_to(eye, (n, b, b))
