"""Pure `keras.ops` matrix functions shared by the matrix optimizers.

Everything here computes in float32 whatever the input dtype (bfloat16 and
float16 are far too imprecise for eigendecompositions), and works on any
backend. The functions are pure: they take tensors and return tensors, so
they can run inside `jit`, `tf.function` and `ops.cond` branches.

Used by `OneSidedShampoo`, `Shampoo`, `FullMatrixAdagrad` (inverse p-th
roots of symmetric PSD statistics) and by `LoraRite`.

Reference: "Structured Preconditioners in Adaptive Optimization: A Unified
Analysis", Xie et al., arXiv:2503.10537.
"""

from keras import ops

DEFAULT_RELATIVE_FLOOR = 1e-6
"""Default eigenvalue floor, relative to the largest eigenvalue."""


def symmetrize(m):
    """Returns `(m + m^T) / 2` in float32 (last two axes transposed)."""
    m = ops.cast(m, "float32")
    return 0.5 * (m + ops.swapaxes(m, -1, -2))


def safe_eigh(mat):
    """Eigendecomposition of a symmetric matrix, in float32.

    The input is symmetrised first (accumulated statistics drift away from
    exact symmetry in floating point, and `eigh` only reads one triangle).
    Non-finite entries are replaced by zero *before* the decomposition so
    the backend kernel never sees NaN/Inf (some LAPACK paths loop or raise
    on them); callers that must detect a poisoned input check
    `ops.all(ops.isfinite(mat))` themselves, as `matrix_inverse_pth_root`
    does.

    Args:
        mat: a `(..., n, n)` tensor.

    Returns:
        `(eigenvalues, eigenvectors)`: float32 tensors of shapes `(..., n)`
        (ascending) and `(..., n, n)` (columns are eigenvectors).
    """
    mat = symmetrize(mat)
    mat = ops.where(ops.isfinite(mat), mat, ops.zeros_like(mat))
    return ops.eigh(mat)


def matrix_inverse_pth_root(
    mat,
    p,
    epsilon=1e-6,
    relative_floor=DEFAULT_RELATIVE_FLOOR,
):
    """Floored inverse p-th root `mat^(-1/p)` of a symmetric PSD matrix.

    Method: symmetrise, eigendecompose (`safe_eigh`), clip the eigenvalues
    from below at

        floor = relative_floor * max(lambda_max, 0) + epsilon

    i.e. each eigenvalue becomes `max(lambda_i, floor)` (a clip, not the
    shift `lambda_i + eps` of the paper's `(L + eps I)`; both agree on the
    eigenvalues well above the floor). The floor is relative to the largest
    eigenvalue, so rank-deficient statistics (a 4 x 3 gradient
    preconditioned on its 4-side, early steps) do not amplify float rounding
    noise in the null space by `epsilon^(-1/p)`: two runs differing only in
    rounding stay together (see the tests). The absolute `epsilon` keeps the
    all-zero matrix well defined (its root is `epsilon^(-1/p) I`). The
    root is `U diag(max(lambda, floor)^(-1/p)) U^T`.

    Args:
        mat: `(..., n, n)` symmetric positive semi-definite matrix (any float
            dtype; computed in float32).
        p: the root, a positive Python number (2 for one-sided Shampoo and
            full-matrix AdaGrad, 4 for two-sided Shampoo).
        epsilon: absolute eigenvalue floor. Defaults to `1e-6`.
        relative_floor: eigenvalue floor relative to the largest eigenvalue.
            Defaults to `1e-6`. `0` gives the plain `max(lambda, epsilon)`.

    Returns:
        `(root, is_finite)`: the float32 root, and a boolean scalar that is
        False when the input or the result contains NaN/Inf (callers then
        keep their previous root).
    """
    mat = ops.cast(mat, "float32")
    input_finite = ops.all(ops.isfinite(mat))
    eigenvalues, eigenvectors = safe_eigh(mat)
    lam_max = ops.maximum(ops.max(eigenvalues, axis=-1, keepdims=True), 0.0)
    floor = relative_floor * lam_max + epsilon
    eigenvalues = ops.maximum(eigenvalues, floor)
    scale = ops.power(eigenvalues, -1.0 / float(p))
    root = ops.matmul(
        eigenvectors * ops.expand_dims(scale, -2),
        ops.swapaxes(eigenvectors, -1, -2),
    )
    root = symmetrize(root)
    is_finite = ops.logical_and(input_finite, ops.all(ops.isfinite(root)))
    return root, is_finite


def ema_statistics(stat, update, beta2):
    """Returns `beta2 * stat + (1 - beta2) * update` (`beta2 = 1`: the sum).

    With `beta2 == 1.0` (a Python float) the AdaGrad sum `stat + update` is
    returned, as in the paper's analysis.
    """
    if isinstance(beta2, (int, float)) and beta2 == 1.0:
        return stat + update
    return beta2 * stat + (1.0 - beta2) * update


def left_gram(g):
    """`G G^T` in float32 for a `(m, n)` matrix."""
    g = ops.cast(g, "float32")
    return ops.matmul(g, ops.transpose(g))


def right_gram(g):
    """`G^T G` in float32 for a `(m, n)` matrix."""
    g = ops.cast(g, "float32")
    return ops.matmul(ops.transpose(g), g)


# --- LoRA-RITE helpers ---
# Thin QR and a safe pseudo-inverse, used by `keras_gr.optimizers.LoraRite`
# ("LoRA Done RITE: Robust Invariant Transformation Equilibration for LoRA
# Optimization", Yen et al., arXiv:2410.20625). Both compute in float32.

DEFAULT_PINV_RCOND = 1e-6
"""Default cut-off of `safe_pinv`, relative to the largest singular value."""


def thin_qr(x):
    """Thin QR `x = Q R` of a `(n, r)` matrix, in float32.

    When `n < r` the matrix is padded with `r - n` zero rows first, so `Q` is
    always `(max(n, r), r)` with orthonormal columns and `R` is `(r, r)`
    upper triangular (the padded rows of `x` are exactly zero, so `Q R`
    restricted to the first `n` rows reproduces `x`). A rank-deficient `x`
    (e.g. an all-zero factor) gives zeros on the diagonal of `R`; pair it
    with `safe_pinv`, never with a plain inverse.

    Args:
        x: a `(n, r)` tensor (any float dtype). Non-finite entries are
            replaced by zero before the decomposition.

    Returns:
        `(q, r)`: float32 tensors of shapes `(max(n, r), r)` and `(r, r)`.
    """
    x = ops.cast(x, "float32")
    x = ops.where(ops.isfinite(x), x, ops.zeros_like(x))
    n, r = x.shape[-2], x.shape[-1]
    if n < r:
        x = ops.concatenate([x, ops.zeros((r - n, r), dtype="float32")], 0)
    return ops.qr(x, mode="reduced")


def safe_pinv(x, rcond=DEFAULT_PINV_RCOND):
    """Moore-Penrose pseudo-inverse of a small square matrix, in float32.

    Computed from the SVD `x = U diag(s) V^T` as `V diag(s+) U^T`, where
    `s+ = 1 / s` for `s > rcond * max(s)` and `0` otherwise, so the all-zero
    matrix maps to the all-zero matrix (no NaN, no Inf) and a singular
    matrix is inverted on its range only.

    Args:
        x: a `(..., k, k)` tensor (any float dtype). Non-finite entries are
            replaced by zero before the decomposition.
        rcond: cut-off relative to the largest singular value. Defaults to
            `1e-6` (about `8 * float32 epsilon`).

    Returns:
        The float32 `(..., k, k)` pseudo-inverse.
    """
    x = ops.cast(x, "float32")
    x = ops.where(ops.isfinite(x), x, ops.zeros_like(x))
    u, s, vh = ops.svd(x, full_matrices=False)
    cutoff = rcond * ops.max(s, axis=-1, keepdims=True)
    keep = ops.logical_and(s > cutoff, s > 0.0)
    s_inv = ops.where(keep, 1.0 / ops.where(keep, s, 1.0), 0.0)
    return ops.matmul(
        ops.swapaxes(vh, -1, -2) * ops.expand_dims(s_inv, -2),
        ops.swapaxes(u, -1, -2),
    )
