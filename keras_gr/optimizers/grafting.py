"""Grafting and fallback updates shared by the matrix optimizers.

"Grafting" rescales a preconditioned direction, per variable, to the
Frobenius norm of a simple optimizer's update, so that a learning rate tuned
for that simple optimizer (usually Adam) transfers. Variables that are not
preconditioned (biases, norms, embeddings, dimensions above the limit) get
the simple optimizer's update itself (the "fallback").

Reconstructed from the public Shampoo implementations (google-research
scalable_shampoo, facebookresearch distributed_shampoo); the paper
"Structured Preconditioners in Adaptive Optimization: A Unified Analysis"
(Xie et al., arXiv:2503.10537) analyses the un-grafted updates.

All functions are pure `keras.ops` and compute in float32.
"""

from keras import ops

GRAFTING_TYPES = ("adam", "adagrad", "sgd", "none")
"""Accepted `grafting` values."""


def validate_grafting(grafting):
    """Returns the lower-cased grafting type or raises `ValueError`."""
    value = grafting.lower() if isinstance(grafting, str) else grafting
    if value not in GRAFTING_TYPES:
        raise ValueError(
            f"`grafting` must be one of {GRAFTING_TYPES}. "
            f"Received: grafting={grafting!r}"
        )
    return value


def momentum_direction(momentum, gradient, beta_1, step, nesterov):
    """Bias-corrected (optionally Nesterov) direction of an EMA momentum.

    `momentum` is the *updated* buffer `beta_1 * m + (1 - beta_1) * g`. Returns
    `m / (1 - beta_1^t)`, or with Nesterov
    `(beta_1 * m + (1 - beta_1) * g) / (1 - beta_1^(t + 1))` (a normalised
    weighted average of the gradients, equal to `g` at `t = 1`).
    """
    raw, scale = momentum_direction_parts(
        momentum, gradient, beta_1, step, nesterov
    )
    return raw if scale is None else raw * scale


def momentum_direction_parts(momentum, gradient, beta_1, step, nesterov):
    """`(raw, scale)` with `momentum_direction(...) == raw * scale`.

    `raw` is the momentum buffer (or the Nesterov blend) and `scale` the
    scalar bias correction (`None` for `beta_1 == 0`). A linear
    preconditioner can be applied to `raw` and the scalar afterwards
    (skipped entirely under grafting, which is scale invariant): one
    elementwise pass less than preconditioning the corrected direction.
    """
    if beta_1 == 0.0:
        return gradient, None
    step = ops.cast(step, "float32")
    if nesterov:
        blended = beta_1 * momentum + (1.0 - beta_1) * gradient
        return blended, 1.0 / (1.0 - ops.power(beta_1, step + 1.0))
    return momentum, 1.0 / (1.0 - ops.power(beta_1, step))


def adam_direction(direction, velocity, beta_2, epsilon, step):
    """Keras `Adam`'s update per unit learning rate: the one Adam of keras_gr.

    Keras's `Adam(beta_1, beta_2, epsilon)` steps
    `w -= lr * m_t / (1 - beta_1^t) * sqrt(1 - beta_2^t) / (sqrt(v_t) +
    epsilon)` with `m_t = beta_1 m + (1 - beta_1) g` and
    `v_t = beta_2 v + (1 - beta_2) g^2` (epsilon outside the bias
    correction). This returns that update divided by `lr` from
    `direction = m_t / (1 - beta_1^t)` (`momentum_direction`) and
    `velocity = v_t`, so `w - lr * adam_direction(...)` is Keras's step,
    equal up to float32 rounding (Keras folds `lr` into the scalar factor
    first; tested over several steps against `keras.optimizers.Adam`).

    Used by `Shampoo`'s Adam graft and fallback (whose `direction` may
    also be the Nesterov blend) and by `LoraRite`'s fallback.

    Args:
        direction: the bias-corrected first moment.
        velocity: the updated second moment `v_t`.
        beta_2: the second moment's decay.
        epsilon: added to `sqrt(v_t)`.
        step: the 1-based step `t`.

    Returns:
        `direction * sqrt(1 - beta_2^t) / (sqrt(velocity) + epsilon)`.
    """
    step = ops.cast(step, "float32")
    correction = ops.sqrt(1.0 - ops.power(beta_2, step))
    return direction * correction / (ops.sqrt(velocity) + epsilon)


def adagrad_direction(direction, accumulator, epsilon):
    """Keras `Adagrad`'s update: `direction / sqrt(accumulator + epsilon)`."""
    return direction / ops.sqrt(accumulator + epsilon)


def graft(direction, reference):
    """Rescales `direction` to the Frobenius norm of `reference`.

    A zero `direction` stays zero (no division by zero).
    """
    d_norm = ops.sqrt(ops.sum(ops.square(direction)))
    r_norm = ops.sqrt(ops.sum(ops.square(reference)))
    safe = ops.where(d_norm > 0.0, d_norm, ops.ones_like(d_norm))
    scale = ops.where(d_norm > 0.0, r_norm / safe, ops.zeros_like(d_norm))
    return direction * scale
