"""In-context linear regression prompts with diverse, ill-conditioned tasks.

The task of "On the Role of Depth and Looping for In-Context Learning with
Task Diversity" (Gatmiry, Saunshi, Reddi, Jegelka, Kumar; arXiv 2410.21698)
and of its companion "Can Looped Transformers Learn to Implement Multi-step
Gradient Descent for In-context Learning?" (arXiv 2410.08292). Every prompt
has its own data covariance `Sigma` whose condition number lies in
`[1, kappa]`:

```
Sigma = U diag(lambda) U^T,  U Haar-random orthogonal,
lambda_i i.i.d. log-uniform in [lo, hi]   (default lo = 1 / kappa, hi = 1)
x_1 .. x_n, x_q ~ N(0, Sigma)
w ~ N(0, Sigma^-1)  (task_prior="inverse_covariance", default) or N(0, I)
y_i = <w, x_i>,  y_q = <w, x_q>   (noiseless)
```

The paper's prompt is `Z0 = [[x_1 .. x_n, x_q], [y_1 .. y_n, 0]]` of shape
`(d + 1, n + 1)` (one column per token). Keras layers are batch- and
token-major, so the arrays here default to its *transpose*
(`layout="tokens"`): `prompts[b]` has shape `(n + 1, d + 1)`, row `i` is
the token `(x_i, y_i)` and the last row is the query `(x_q, 0)`. Use
`layout="paper"` for the `(d + 1, n + 1)` form. The answer is read at the
query's `y` slot, entry `(n, d)` (tokens layout) / `(d, n)` (paper layout),
marked by `answer_mask`.

Choices the paper leaves open (documented, tested in
`tests/data/test_icl_regression.py`):

- Covariance sampling: eigenvalues i.i.d. log-uniform on `[1 / kappa, 1]`
  with a Haar-random rotation (so `cond(Sigma) <= kappa` exactly, and the
  spectrum covers the whole range); `spectrum="uniform"` draws them
  uniformly instead.
- Task prior: `w ~ N(0, Sigma^-1)`, the companion paper's and public
  linear-transformer code's convention, which makes `y` have variance `d`
  whatever `Sigma`, and makes every eigen-direction contribute equally to
  the error of gradient descent; `task_prior="identity"` gives `N(0, I)`.
- Distribution shift (for robustness tests): `shift = s >= 0` widens the
  spectrum by the factor `1 + s` at both ends, i.e. eigenvalues on
  `[1 / (kappa (1 + s)), 1 + s]`; `shift=0` is the training distribution.
  `spectrum_range=(lo, hi)` sets the range directly.
- Exactness: `x` and `w` are drawn in float64, rounded to `dtype`, and `y` is
  computed from the *rounded* values in float64 and rounded once, so
  `y == float32(float64(x) . float64(w))` holds bit for bit.
- Seeding: one `numpy.random.default_rng(seed)` stream, drawn in the fixed
  order eigenvalues, rotations, tasks, context and query inputs.
"""

from typing import Any

import numpy as np

from keras_gr._validation import check_integer
from keras_gr.data._tf_data import batched_dataset

_SPECTRA = ("log_uniform", "uniform")
_TASK_PRIORS = ("inverse_covariance", "identity")
_LAYOUTS = ("tokens", "paper")


def eigenvalue_range(kappa, shift=0.0):
    """The eigenvalue interval `[lo, hi]` of the covariances.

    `shift=0` gives the training range `[1 / kappa, 1]`; `shift = s > 0`
    widens it by `1 + s` at both ends: `[1 / (kappa (1 + s)), 1 + s]`.
    """
    kappa = float(kappa)
    shift = float(shift)
    if not np.isfinite(kappa) or kappa < 1.0:
        raise ValueError(
            f"`kappa` must be a finite number >= 1. Received: kappa={kappa!r}"
        )
    if not np.isfinite(shift) or shift < 0.0:
        raise ValueError(
            f"`shift` must be a finite number >= 0. Received: shift={shift!r}"
        )
    return 1.0 / (kappa * (1.0 + shift)), 1.0 + shift


def sample_eigenvalues(rng, num, dim, low, high, spectrum="log_uniform"):
    """`(num, dim)` eigenvalues i.i.d. on `[low, high]` (float64)."""
    if not (0.0 < low <= high) or not np.isfinite(high):
        raise ValueError(
            "`spectrum_range` must satisfy 0 < lo <= hi < inf. "
            f"Received: spectrum_range={(low, high)!r}"
        )
    if spectrum not in _SPECTRA:
        raise ValueError(
            f"`spectrum` must be one of {_SPECTRA}. "
            f"Received: spectrum={spectrum!r}"
        )
    u = rng.uniform(size=(num, dim))
    if spectrum == "log_uniform":
        return np.exp(np.log(low) + u * (np.log(high) - np.log(low)))
    return low + u * (high - low)


def random_rotations(rng, num, dim):
    """`(num, dim, dim)` Haar-distributed orthogonal matrices (QR of a
    Gaussian matrix with the signs of `R`'s diagonal folded into `Q`)."""
    g = rng.normal(size=(num, dim, dim))
    q, r = np.linalg.qr(g)
    signs = np.sign(np.diagonal(r, axis1=-2, axis2=-1))
    signs[signs == 0] = 1.0
    return q * signs[:, None, :]


def icl_regression_problems(
    num_prompts: int,
    dim: int = 10,
    num_context: int = 40,
    kappa: float = 10.0,
    *,
    shift: float = 0.0,
    spectrum_range: tuple[float, float] | None = None,
    spectrum: str = "log_uniform",
    task_prior: str = "inverse_covariance",
    layout: str = "tokens",
    seed: int = 0,
    dtype: str = "float32",
) -> dict[str, np.ndarray]:
    """Exact, seeded in-context linear regression prompts.

    Args:
        num_prompts: number of prompts `N`.
        dim: input dimension `d`. Defaults to `10` (the companion paper's).
        num_context: number of in-context examples `n`. Defaults to `40`.
        kappa: bound on the condition number of every prompt's covariance.
            Defaults to `10.0`.
        shift: widening of the spectrum for shifted (robustness) variants,
            see `eigenvalue_range`. Defaults to `0.0` (training distribution).
        spectrum_range: optional `(lo, hi)` replacing the range
            given by `kappa` and `shift`.
        spectrum: `"log_uniform"` (default) or `"uniform"` eigenvalues.
        task_prior: `"inverse_covariance"` (`w ~ N(0, Sigma^-1)`, default) or
            `"identity"` (`w ~ N(0, I)`).
        layout: `"tokens"` (default; prompts `(N, n + 1, d + 1)`, one row per
            token) or `"paper"` (prompts `(N, d + 1, n + 1)`, the paper's
            `Z0`, one column per token).
        seed: seed of the NumPy generator. Defaults to `0`.
        dtype: floating dtype of the arrays. Defaults to `"float32"`.

    Returns:
        A dict of NumPy arrays:
        `prompts` (the `Z0`s, query `y` slot zero), `targets` (`(N,)`, the
        query answers `y_q`), `answer_mask` (boolean, the prompts' shape,
        `True` only at the query's `y` slot), `weights` (`(N, d)`, the tasks
        `w`), `covariances` (`(N, d, d)`), `eigenvalues` (`(N, d)`),
        `inputs` (`(N, n + 1, d)`, context then query `x`) and `outputs`
        (`(N, n + 1)`, the exact `<w, x>` for every token, query included).

    Example:

    >>> data = icl_regression_problems(4, dim=3, num_context=5, kappa=10)
    >>> data["prompts"].shape, data["targets"].shape
    ((4, 6, 4), (4,))
    >>> bool(np.allclose(data["targets"], data["outputs"][:, -1]))
    True
    >>> eig = data["eigenvalues"]
    >>> bool((eig.max(axis=1) / eig.min(axis=1) <= 10.0 + 1e-4).all())
    True
    """
    num_prompts = check_integer("num_prompts", num_prompts)
    dim = check_integer("dim", dim)
    num_context = check_integer("num_context", num_context)
    if task_prior not in _TASK_PRIORS:
        raise ValueError(
            f"`task_prior` must be one of {_TASK_PRIORS}. "
            f"Received: task_prior={task_prior!r}"
        )
    if layout not in _LAYOUTS:
        raise ValueError(
            f"`layout` must be one of {_LAYOUTS}. Received: layout={layout!r}"
        )
    if spectrum_range is None:
        low, high = eigenvalue_range(kappa, shift)
    else:
        low, high = (float(v) for v in spectrum_range)
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(
            f"`dtype` must be a floating dtype. Received: dtype={dtype!r}"
        )

    rng = np.random.default_rng(seed)
    eig = sample_eigenvalues(rng, num_prompts, dim, low, high, spectrum)
    rot = random_rotations(rng, num_prompts, dim)
    covariances = np.einsum("bij,bj,bkj->bik", rot, eig, rot)
    g_w = rng.normal(size=(num_prompts, dim))
    if task_prior == "inverse_covariance":
        w = np.einsum("bij,bj->bi", rot, g_w / np.sqrt(eig))
    else:
        w = g_w
    g_x = rng.normal(size=(num_prompts, num_context + 1, dim))
    x = np.einsum("bij,btj->bti", rot, g_x * np.sqrt(eig)[:, None, :])

    x = x.astype(dtype)
    w = w.astype(dtype)
    y = np.einsum(
        "bti,bi->bt", x.astype(np.float64), w.astype(np.float64)
    ).astype(dtype)

    prompts = np.concatenate([x, y[..., None]], axis=-1)
    prompts[:, -1, -1] = 0.0
    mask = np.zeros(prompts.shape, dtype=bool)
    mask[:, -1, -1] = True
    if layout == "paper":
        prompts = np.swapaxes(prompts, 1, 2)
        mask = np.swapaxes(mask, 1, 2)
    return {
        "prompts": np.ascontiguousarray(prompts),
        "targets": y[:, -1].copy(),
        "answer_mask": np.ascontiguousarray(mask),
        "weights": w,
        "covariances": covariances.astype(dtype),
        "eigenvalues": eig.astype(dtype),
        "inputs": x,
        "outputs": y,
    }


def icl_regression_dataset(
    num_prompts: int,
    batch_size: int = 64,
    *,
    shuffle: bool = False,
    **problem_kwargs: Any,
) -> Any:
    """A `tf.data.Dataset` of `(prompts, targets)` batches.

    `problem_kwargs` are those of `icl_regression_problems` (same seed, same
    arrays). `shuffle=True` reshuffles every epoch with the same `seed`.

    Example:

    >>> ds = icl_regression_dataset(8, batch_size=4, dim=3, num_context=5)
    >>> prompts, targets = next(iter(ds))
    >>> tuple(prompts.shape), tuple(targets.shape)
    ((4, 6, 4), (4,))
    """
    batch_size = check_integer("batch_size", batch_size)
    data = icl_regression_problems(num_prompts, **problem_kwargs)
    return batched_dataset(
        (data["prompts"], data["targets"]),
        batch_size,
        shuffle=shuffle,
        seed=problem_kwargs.get("seed", 0),
    )
