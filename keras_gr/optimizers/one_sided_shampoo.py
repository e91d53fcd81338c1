"""One-sided Shampoo as a Keras 3 optimizer."""

import keras

from keras_gr.optimizers.shampoo import Shampoo


@keras.saving.register_keras_serializable(package="keras_gr")
class OneSidedShampoo(Shampoo):
    r"""One-sided Shampoo: one Kronecker factor, on the smaller side.

    The practical optimizer of "Structured Preconditioners in Adaptive
    Optimization: A Unified Analysis" (Xie et al., arXiv:2503.10537). For
    an $m \times n$ matrix variable with $m \le n$ (otherwise the
    transposed roles), gradient $G$, at step $t$:

    1. momentum $M = \beta_1 M + (1 - \beta_1) G$, direction
       $D = M / (1 - \beta_1^t)$;
    2. statistics $L = \beta_2 L + (1 - \beta_2)\, G G^\top$
       ($m \times m$, every `statistics_frequency` steps);
    3. the inverse square root of the bias-corrected
       $\hat L = L / (1 - \beta_2^k)$, recomputed every
       `precondition_frequency` steps;
    4. $W \leftarrow W - \eta\, \mathrm{graft}\big(\hat L^{-1/2} D\big)$,
       the step rescaled to the norm of Adam's (`grafting="adam"`).

    For $m > n$ the factor is $R = \ldots G^\top G$ and the step
    $D \hat R^{-1/2}$. With `beta_1=0`, `beta_2=1`, `grafting="none"`,
    `precondition_frequency=1` this is exactly the paper's one-sided
    Shampoo $W \leftarrow W - \eta\, (\sum_s G_s G_s^\top)^{-1/2} G$, up to
    the eigenvalue floor. State: $m^2$ statistics + $m^2$ cached root per
    matrix, plus the momentum and grafting moments.

    At scale: a smaller side longer than `max_preconditioner_dim` (1024)
    is split into blocks (a 4096 x 11008 kernel: 4 blocks of 1024 x 11008,
    each with a 1024 x 1024 factor); a kernel of rank > 2 is viewed as the
    matrix `(prod(shape[:-1]), shape[-1])` (with `flatten_tensors=False`:
    a factor on every axis but its largest, with root `-1/(2k)` for `k`
    factors); `preconditioning_summary()` says what is preconditioned.

    The arguments, every other choice (momentum, grafting, fallback,
    floors, blocking, staggered and batched roots, statistics interval,
    layouts, non-finite handling, accumulation) and the cost per step are
    those of `keras_gr.optimizers.Shampoo`, documented there. In short,
    per step it adds about `b (1 + 1 / statistics_frequency) / (3 B)` of
    Adam's step for blocks of `b` and `B` rows (tokens) per step, plus
    the roots, `c b^2 / (6 n B precondition_frequency)` on average over a
    period (`c` ~120 for Newton's ~20 iterations), so long periods pay
    least.

    Args:
        learning_rate: float or schedule. Defaults to `0.001`.
        **kwargs: every other argument of `keras_gr.optimizers.Shampoo`,
            with the same meaning and default.

    Example:

    >>> import keras, numpy as np
    >>> from keras_gr.optimizers import OneSidedShampoo
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> opt = OneSidedShampoo(learning_rate=1e-2, precondition_frequency=2)
    >>> model.compile(optimizer=opt, loss="mse")
    >>> _ = model.fit(np.ones((4, 8)), np.ones((4, 4)), verbose=0)
    >>> summary = opt.preconditioning_summary()
    >>> summary["variables"][0]["factors"], summary["preconditioned_fraction"]
    ([(1, 4, 4)], 0.8888888888888888)

    References:
        - Xie, Wang, Reddi, Kumar, Li, "Structured Preconditioners in
          Adaptive Optimization: A Unified Analysis", arXiv:2503.10537.
    """

    _one_sided = True
