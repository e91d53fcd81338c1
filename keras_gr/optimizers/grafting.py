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


def momentum_direction(momentum, gradient, beta1, step, nesterov):
    """Bias-corrected (optionally Nesterov) direction of an EMA momentum.

    `momentum` is the *updated* buffer `beta1 * m + (1 - beta1) * g`. Returns
    `m / (1 - beta1^t)`, or with Nesterov
    `(beta1 * m + (1 - beta1) * g) / (1 - beta1^(t + 1))` (a normalised
    weighted average of the gradients, equal to `g` at `t = 1`).
    """
    raw, scale = momentum_direction_parts(
        momentum, gradient, beta1, step, nesterov
    )
    return raw if scale is None else raw * scale


def momentum_direction_parts(momentum, gradient, beta1, step, nesterov):
    """`(raw, scale)` with `momentum_direction(...) == raw * scale`.

    `raw` is the momentum buffer (or the Nesterov blend) and `scale` the
    scalar bias correction (`None` for `beta1 == 0`). A linear
    preconditioner can be applied to `raw` and the scalar afterwards
    (skipped entirely under grafting, which is scale invariant): one
    elementwise pass less than preconditioning the corrected direction.
    """
    if beta1 == 0.0:
        return gradient, None
    step = ops.cast(step, "float32")
    if nesterov:
        blended = beta1 * momentum + (1.0 - beta1) * gradient
        return blended, 1.0 / (1.0 - ops.power(beta1, step + 1.0))
    return momentum, 1.0 / (1.0 - ops.power(beta1, step))


def adam_direction(direction, velocity, beta2, epsilon, step):
    """Keras `Adam`'s update for a bias-corrected first moment `direction`.

    `velocity` is the updated `beta2 * v + (1 - beta2) * g^2`. Returns
    `direction * sqrt(1 - beta2^t) / (sqrt(v) + epsilon)`, which is exactly
    Keras Adam's `m * alpha / (sqrt(v) + epsilon) / lr` (epsilon outside the
    bias correction, as in Keras).
    """
    step = ops.cast(step, "float32")
    correction = ops.sqrt(1.0 - ops.power(beta2, step))
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
