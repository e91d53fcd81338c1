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

import keras
from keras import ops

from keras_gr import _backend

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


ROOT_METHODS = ("auto", "eigh", "newton")
"""Accepted inverse-root methods (`matrix_inverse_pth_root(method=...)`)."""


AUTO_EIGH_MIN_SIZE = 257
"""`"auto"` uses `eigh` (under JAX on CPU) only for matrices at least
this large; smaller ones get Newton (`resolve_root_method`)."""


def resolve_root_method(method, size=None):
    """The concrete root method of `method` on the running backend.

    `"auto"` is `"eigh"` under JAX on CPU for `size x size` matrices with
    `size >= AUTO_EIGH_MIN_SIZE` (257), and `"newton"` everywhere else.
    Measured per root of a `512 x 512` float32 block on a 2-core CPU
    (`jit`, condition number 1e6): JAX's LAPACK `eigh` 19 ms against 105 ms
    for Newton's ~20 iterations; TensorFlow's XLA-compiled `eigh` 2.4 s
    against 89 ms for Newton. On TPU and GPU Newton is batched matrix
    products, what those chips do best, while their `eigh` is iterative
    and slow.

    Small matrices get Newton on JAX CPU too. There both roots cost about
    the same (at 128: 1.1 ms each), but JAX's CPU `eigh` runs in scipy's
    OpenBLAS, whose worker threads keep spinning for a while after every
    call and take cores from the next XLA step: on 2 cores, two 24 ms
    steps after one 128 x 128 `eigh` took 26 ms longer than the same steps
    without a root, and after a Newton root no longer (-0.2 ms, noise).
    On the Shampoo benchmark LM (every factor at most 128,
    `benchmarks/results/shampoo_quality_jax`) the mean step of
    `OneSidedShampoo` fell from 1.33x Adam's to 1.03x. For
    `size` 512 the LAPACK root is still the cheaper one, spin included
    (`benchmarks/results/shampoo_scale_*`). With `size=None` (not known)
    `"auto"` under JAX on CPU is `"eigh"`.

    Read when the root is traced (so a config saved with `"auto"` picks
    the right method on the machine it is loaded on). `"eigh"` and
    `"newton"` are returned unchanged.
    """
    if method != "auto":
        return method
    if keras.backend.backend() == "jax":
        import jax

        if jax.default_backend() == "cpu":
            if size is None or int(size) >= AUTO_EIGH_MIN_SIZE:
                return "eigh"
    return "newton"


NEWTON_ITERATIONS = 40
"""Default iteration cap of the coupled Newton inverse root."""

NEWTON_TOLERANCE = 1e-5
"""Default stopping tolerance of the coupled Newton inverse root
(`max |M_k - I|`)."""


def matrix_inverse_pth_root(
    mat,
    p,
    matrix_epsilon=1e-6,
    relative_matrix_epsilon=DEFAULT_RELATIVE_FLOOR,
    method="eigh",
    newton_iterations=NEWTON_ITERATIONS,
    newton_tolerance=NEWTON_TOLERANCE,
):
    """Floored inverse p-th root `mat^(-1/p)` of a symmetric PSD matrix.

    Both methods floor the spectrum at

        floor = relative_matrix_epsilon * max(lambda_max, 0) + matrix_epsilon

    The floor is relative to the largest eigenvalue, so rank-deficient
    statistics (a 4 x 3 gradient preconditioned on its 4-side, early steps)
    do not amplify float rounding noise in the null space by
    `matrix_epsilon^(-1/p)`: two runs differing only in rounding stay
    together (see the tests). The absolute `matrix_epsilon` keeps the
    all-zero matrix well defined.

    - `method="eigh"` (default): symmetrise, eigendecompose (`safe_eigh`),
      clip each eigenvalue to `max(lambda_i, floor)` (a clip, not the shift
      `lambda_i + eps` of the paper's `(L + eps I)`; both agree on the
      eigenvalues well above the floor) and return
      `U diag(max(lambda, floor)^(-1/p)) U^T`.
    - `method="newton"`: matmul-only coupled Newton iteration (Guo and
      Higham 2006, as in google-research scalable_shampoo) on the shifted
      matrix `A = mat + floor I` (`lambda_max` from a few power-iteration
      steps): with `z = (1 + p) / (2 ||A||_F)`, `M_0 = z A`,
      `H_0 = z^(1/p) I`,

          T_k = ((1 + p) I - M_k) / p,   M_{k+1} = T_k^p M_k,
          H_{k+1} = H_k T_k

      until `max |M_k - I| < newton_tolerance` (or the error grows by
      more than 20%, then the previous iterate is kept, or
      `newton_iterations`), decided per matrix of a batch (a batched
      call gives each matrix the iterate it would get alone);
      `H_k -> A^(-1/p)`. Only matrix
      products, which is what TPUs (and TensorFlow's slow compiled `eigh`)
      want. It returns `(mat + floor I)^(-1/p)` (shift) where `eigh`
      clips; they agree to about `1e-3` relative for eigenvalues above
      `1e3 * floor` (tested), and are both the paper's `(L + eps I)`
      up to that choice. Condition numbers up to
      `1 / relative_matrix_epsilon = 1e6` converge within the default 40
      iterations in float32.

    All matrix products run at the highest matmul precision
    (`keras_gr._backend.highest_matmul_precision`).

    Accuracy: for float32 `mat`, the residual `max |X^p A_f - I|` of the
    returned root `X` against the floored matrix `A_f` it is defined for
    (`mat + floor I` for Newton, the clipped spectrum for eigh) is at most
    `2e-5 + 1e-7 * kappa(A_f)`: the float32 backward error (any float32
    algorithm perturbs `mat` by about `eps32 ||mat||`, which moves
    `X^p A_f` by about `eps32 kappa`), tested at condition numbers 1e2,
    1e4 and 1e6 for `p = 2, 4` and both methods
    (`tests/optimizers/test_root_accuracy.py`). Statistics rounded to
    bfloat16 miss it by orders of magnitude (their residual is `O(1)`
    beyond `kappa = 1e4`), which is why the optimizers keep statistics and
    roots as float32 variables under every dtype policy and form
    `G G^T` from float32-cast gradients.

    Args:
        mat: `(..., n, n)` symmetric positive semi-definite matrix (any float
            dtype; computed in float32). Leading axes are a batch: every
            matrix is decomposed in one batched call.
        p: the root, a positive Python number (2 for one-sided Shampoo and
            full-matrix AdaGrad, 4 for two-sided Shampoo).
        matrix_epsilon: absolute eigenvalue floor. Defaults to `1e-6`.
        relative_matrix_epsilon: eigenvalue floor relative to the largest
            eigenvalue. Defaults to `1e-6`. `0` gives the plain
            `max(lambda, matrix_epsilon)`.
        method: `"eigh"`, `"newton"` or `"auto"` (`resolve_root_method`:
            `"eigh"` under JAX on CPU for matrices of 257 x 257 and
            larger, else `"newton"`). Defaults to
            `"eigh"`.
        newton_iterations: iteration cap of `"newton"`. Defaults to `40`.
        newton_tolerance: stopping tolerance of `"newton"`. Defaults to
            `1e-5`.

    Returns:
        `(root, is_finite)`: the float32 root, and a boolean scalar that is
        False when the input or the result contains NaN/Inf (callers then
        keep their previous root).
    """
    if method not in ROOT_METHODS:
        raise ValueError(
            f"`method` must be one of {ROOT_METHODS}. Received: "
            f"method={method!r}"
        )
    method = resolve_root_method(method, size=mat.shape[-1])
    with _backend.highest_matmul_precision():
        mat = ops.cast(mat, "float32")
        input_finite = ops.all(ops.isfinite(mat))
        if method == "eigh":
            root = _eigh_inverse_root(
                mat, p, matrix_epsilon, relative_matrix_epsilon
            )
        else:
            root = _newton_inverse_root(
                mat,
                p,
                matrix_epsilon,
                relative_matrix_epsilon,
                newton_iterations,
                newton_tolerance,
            )
        root = symmetrize(root)
    is_finite = ops.logical_and(input_finite, ops.all(ops.isfinite(root)))
    return root, is_finite


def _eigh_inverse_root(mat, p, matrix_epsilon, relative_matrix_epsilon):
    eigenvalues, eigenvectors = safe_eigh(mat)
    lam_max = ops.maximum(ops.max(eigenvalues, axis=-1, keepdims=True), 0.0)
    floor = relative_matrix_epsilon * lam_max + matrix_epsilon
    eigenvalues = ops.maximum(eigenvalues, floor)
    scale = ops.power(eigenvalues, -1.0 / float(p))
    return ops.matmul(
        eigenvectors * ops.expand_dims(scale, -2),
        ops.swapaxes(eigenvectors, -1, -2),
    )


def _power_iteration_max(mat, steps=20):
    """Largest eigenvalue of symmetric PSD `(..., n, n)` matrices, by power
    iteration from the all-ones vector (plus the row norms as a safe upper
    bound when the start is orthogonal to the top eigenvector)."""
    n = mat.shape[-1]
    v = ops.ones(ops.shape(mat)[:-1], dtype="float32") / float(n) ** 0.5
    for _ in range(steps):
        w = ops.squeeze(ops.matmul(mat, ops.expand_dims(v, -1)), -1)
        norm = ops.sqrt(ops.sum(ops.square(w), axis=-1, keepdims=True))
        v = w / ops.maximum(norm, 1e-30)
    w = ops.squeeze(ops.matmul(mat, ops.expand_dims(v, -1)), -1)
    return ops.maximum(ops.sum(v * w, axis=-1), 0.0)


def _newton_inverse_root(
    mat, p, matrix_epsilon, relative_matrix_epsilon, iterations, tol
):
    mat = symmetrize(mat)
    mat = ops.where(ops.isfinite(mat), mat, ops.zeros_like(mat))
    n = mat.shape[-1]
    eye = ops.eye(n, dtype="float32")
    lam_max = _power_iteration_max(mat)
    floor = relative_matrix_epsilon * lam_max + matrix_epsilon
    a = mat + floor[..., None, None] * eye
    norm = ops.sqrt(ops.sum(ops.square(a), axis=(-2, -1), keepdims=True))
    z = (1.0 + p) / (2.0 * norm)
    m0 = a * z
    h0 = ops.power(z, 1.0 / float(p)) * eye + ops.zeros_like(a)
    alpha = -1.0 / float(p)

    def error_of(m):
        # Per matrix of the batch: each one stops on its own.
        return ops.max(ops.abs(m - eye), axis=(-2, -1))

    def body(k, m, h, err, stalled):
        t = (1.0 - alpha) * eye + alpha * m
        t_p = t
        for _ in range(int(p) - 1):
            t_p = ops.matmul(t_p, t)
        m_new = ops.matmul(t_p, m)
        h_new = ops.matmul(h, t)
        err_new = error_of(m_new)
        # A matrix stops (keeping its previous iterate) once its error
        # grows by more than 20% (float32 rounding; scalable_shampoo's
        # rule) or falls below the tolerance.
        running = ops.logical_and(err > tol, ops.logical_not(stalled))
        better = err_new < 1.2 * err
        take = ops.logical_and(running, better)
        m_out = ops.where(take[..., None, None], m_new, m)
        h_out = ops.where(take[..., None, None], h_new, h)
        return [
            k + 1,
            m_out,
            h_out,
            ops.where(take, err_new, err),
            ops.logical_or(
                stalled, ops.logical_and(running, ops.logical_not(better))
            ),
        ]

    def cond(k, m, h, err, stalled):
        running = ops.logical_and(err > tol, ops.logical_not(stalled))
        return ops.logical_and(k < iterations, ops.any(running))

    err0 = error_of(m0)
    state = [
        ops.convert_to_tensor(0, dtype="int32"),
        m0,
        h0,
        err0,
        ops.zeros_like(err0, dtype="bool"),
    ]
    if _backend.concrete_bool(cond(*state)) is None:
        _, _, h, _, _ = ops.while_loop(cond, body, state)
        return h
    # Eager: a Python loop over the same body. `ops.while_loop` would get
    # new Python closures at every call (ours and Keras's wrappers), so
    # eager JAX would trace and compile a new XLA program at every root
    # (issue 29); the loop's operations alone hit the op cache.
    while _backend.concrete_bool(cond(*state)):
        state = body(*state)
    return state[2]


def ema_statistics(stat, update, beta_2):
    """Returns `beta_2 * stat + (1 - beta_2) * update` (`beta_2 = 1`: the sum).

    With `beta_2 == 1.0` (a Python float) the AdaGrad sum `stat + update` is
    returned, as in the paper's analysis.
    """
    if isinstance(beta_2, (int, float)) and beta_2 == 1.0:
        return stat + update
    return beta_2 * stat + (1.0 - beta_2) * update


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
    """Thin QR `x = Q R` of a `(..., n, r)` matrix, in float32.

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
        pad = ops.zeros((*x.shape[:-2], r - n, r), dtype="float32")
        x = ops.concatenate([x, pad], -2)
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
