"""Knowledge-distillation losses for language models, as pure `keras.ops`.

The maths of SALT ("A Little Help Goes a Long Way: Efficient LLM Training by
Leveraging Small LMs", Rawat et al., arXiv 2410.18779): a small teacher LM
supplies soft labels for the early steps of a larger student's pretraining,

    L_t = (1 - w_t) * CE(y, p_S) + w_t * KD(p_T, p_S; tau),

with `w_t = w` for `t < n_kd` and `0` after (or a linear decay to 0 at
`n_kd`). The functions here are per-token and unreduced; `masked_mean`
reduces them with the one padding mask that both terms share.

Choices the paper leaves open, made here:

- The KD term is a KL divergence (cross-entropy to the teacher distribution
  equals the forward KL up to the teacher's entropy, a constant for the
  student, so gradients agree). Forward `KL(p_T || p_S)` (the paper's, and
  the usual "soft label" loss) or reverse `KL(p_S || p_T)`.
- Temperature: both distributions are softened, `p = softmax(z / tau)`, and
  the KL is multiplied by `tau^2` (Hinton et al. 2015) so that its gradient
  scale does not shrink as `tau` grows; at `tau = 1` it is the plain KL.
- Offline top-k targets keep the teacher's `k` largest log-probabilities
  (at temperature `tau`) per position. The missing mass is not dropped or
  renormalised away: it is kept as one extra "rest" bucket, and the KL is
  taken between the `k + 1`-bucket coarsenings of the two distributions.
  The student's rest bucket is a log-sum-exp over its non-top-k
  log-probabilities (never `1 - sum_k p_S`, which float32 rounds to 0 once
  the tail is below ~1e-7); the teacher's, known only through its stored
  top-k, is `log(1 - sum_k p_T)` computed stably (`log1mexp`). This is a
  true KL (>= 0, zero when the student matches the teacher on the
  buckets), it never rewards the student for putting mass it should not,
  and at `k = V` the rest bucket is empty so it equals the full KL exactly.
- Zero probabilities: `0 * log 0` is taken as 0, so teacher logits of
  `-inf` (a masked vocabulary) give a finite forward KL with finite
  gradients. In the reverse KL a token the teacher gives probability 0 and
  the student does not would cost `+inf`; the teacher's log-probabilities
  (and its rest bucket) are floored at `log(1e-30)` there, a finite penalty
  that still pushes the student's mass off those tokens.
"""

from typing import Any

from keras import ops

from keras_gr._validation import check_choice
from keras_gr._validation import check_fraction
from keras_gr._validation import check_integer
from keras_gr._validation import check_positive

DIVERGENCES = ("forward", "reverse")
SCHEDULES = ("constant", "step", "linear")

_TINY = 1e-30
_LOG_TINY = -69.07755278982137  # log(1e-30)
_FILL = -1.0e30  # stands in for a -inf logit, keeping gradients finite


def _shape(value):
    """The static shape as a tuple, or `None` when even the rank is unknown
    (a TensorFlow tensor from a `py_function`): then nothing is checked."""
    try:
        return tuple(value.shape)
    except (TypeError, ValueError):
        return None


def _check_logits(name, logits):
    shape = _shape(logits)
    if shape is None:
        return None
    if len(shape) < 1 or shape[-1] == 0:
        raise ValueError(
            f"`{name}` must have a non-empty vocabulary axis (..., V). "
            f"Received: {name} with shape {shape}"
        )
    return shape


def _check_same_shape(name_a, shape_a, name_b, shape_b):
    if shape_a is None or shape_b is None:
        return
    differ = len(shape_a) != len(shape_b) or any(
        a is not None and b is not None and a != b
        for a, b in zip(shape_a, shape_b)
    )
    if differ:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape. Received: "
            f"{name_a} with shape {shape_a}, {name_b} with shape {shape_b}"
        )


def _log_softmax(logits, temperature):
    logits = ops.cast(logits, "float32") / temperature
    return ops.log_softmax(logits, axis=-1)


def distillation_divergence(
    teacher_logits: Any,
    student_logits: Any,
    temperature: float = 1.0,
    divergence: str = "forward",
) -> Any:
    """Per-token KL between teacher and student next-token distributions.

    `forward`: `tau^2 * sum_v p_T(v) (log p_T(v) - log p_S(v))`;
    `reverse`: `tau^2 * sum_v p_S(v) (log p_S(v) - log p_T(v))`, where
    `p = softmax(logits / tau)`. Computed in float32 from log-softmax (no
    clipping), so it is exact for any logits and exactly 0 when the two
    distributions agree.

    Args:
        teacher_logits: `(..., V)` teacher logits (treated as constants:
            wrapped in `stop_gradient`).
        student_logits: `(..., V)` student logits.
        temperature: `tau > 0`. Defaults to `1.0`.
        divergence: `"forward"` or `"reverse"`. Defaults to `"forward"`.

    Returns:
        A float32 tensor of shape `(...)`.

    Example:

    >>> import numpy as np
    >>> z = np.array([[0.0, 1.0, 2.0]])
    >>> float(distillation_divergence(z, z)[0])
    0.0
    """
    temperature = check_positive("temperature", temperature)
    check_choice("divergence", divergence, DIVERGENCES)
    teacher_logits = ops.convert_to_tensor(teacher_logits)
    student_logits = ops.convert_to_tensor(student_logits)
    _check_same_shape(
        "teacher_logits",
        _check_logits("teacher_logits", teacher_logits),
        "student_logits",
        _check_logits("student_logits", student_logits),
    )
    log_t = ops.stop_gradient(_log_softmax(teacher_logits, temperature))
    log_s = _log_softmax(student_logits, temperature)
    if divergence == "forward":
        p_t = ops.exp(log_t)
        # 0 * log 0 = 0: where p_T is 0 both logs are replaced by 0.
        safe_t = ops.where(p_t > 0.0, log_t, 0.0)
        safe_s = ops.where(p_t > 0.0, log_s, 0.0)
        kl = ops.sum(p_t * (safe_t - safe_s), axis=-1)
    else:
        p_s = ops.exp(log_s)
        safe_s = ops.where(p_s > 0.0, log_s, 0.0)
        safe_t = ops.where(p_s > 0.0, ops.maximum(log_t, _LOG_TINY), 0.0)
        kl = ops.sum(p_s * (safe_s - safe_t), axis=-1)
    return kl * (temperature**2)


def teacher_topk(
    teacher_logits: Any, k: int, temperature: float = 1.0
) -> tuple[Any, Any]:
    """The teacher's `k` most likely tokens and their log-probabilities at
    temperature `tau`: `(ids int32 (..., k), log_probs float32 (..., k))`.

    Example:

    >>> import keras, numpy as np
    >>> ids, logp = teacher_topk(np.array([[0.0, 3.0, 1.0]]), k=2)
    >>> keras.ops.convert_to_numpy(ids).tolist()
    [[1, 2]]
    """
    teacher_logits = ops.convert_to_tensor(teacher_logits)
    shape = _check_logits("teacher_logits", teacher_logits)
    k = check_integer("k", k, maximum=None if shape is None else shape[-1])
    temperature = check_positive("temperature", temperature)
    log_p = _log_softmax(teacher_logits, temperature)
    values, ids = ops.top_k(log_p, k, sorted=True)
    return ops.cast(ids, "int32"), values


def _log1mexp(log_mass):
    """`log(1 - exp(a))` for `a <= 0`, stable at both ends (`-inf` at
    `a = 0`)."""
    log_mass = ops.minimum(log_mass, 0.0)
    near_one = log_mass > -0.6931471805599453
    a_near = ops.where(near_one, log_mass, -1.0)
    a_far = ops.where(near_one, -1.0, log_mass)
    return ops.where(
        near_one,
        ops.log(-ops.expm1(a_near)),
        ops.log1p(-ops.exp(a_far)),
    )


def _log_tail(log_probs, ids):
    """`log sum_{v not in ids} exp(log_probs[..., v])` and whether that tail
    is empty (every id of the vocabulary is in `ids`)."""
    vocab = ops.shape(log_probs)[-1]
    k = ops.shape(ids)[-1]
    flat = ops.reshape(log_probs, (-1, vocab))
    flat_ids = ops.reshape(ids, (-1,))
    rows = ops.repeat(ops.arange(ops.shape(flat)[0], dtype="int32"), k)
    coords = ops.stack([rows, flat_ids], axis=-1)
    fill = ops.full(ops.shape(flat_ids), _FILL, dtype=flat.dtype)
    tail = ops.scatter_update(flat, coords, fill)
    kept = ops.scatter_update(
        ops.ones(ops.shape(flat), "float32"),
        coords,
        ops.zeros(ops.shape(flat_ids), "float32"),
    )
    empty = ops.sum(kept, axis=-1) < 0.5
    log_tail = ops.logsumexp(tail, axis=-1)
    out_shape = ops.shape(log_probs)[:-1]
    return ops.reshape(log_tail, out_shape), ops.reshape(empty, out_shape)


def topk_distillation_divergence(
    topk_ids: Any,
    topk_log_probs: Any,
    student_logits: Any,
    temperature: float = 1.0,
    divergence: str = "forward",
) -> Any:
    """Per-token KL from stored top-k teacher targets ("rest" bucket kept).

    With teacher top-k log-probabilities `l_1..l_k` (at temperature `tau`)
    for tokens `i_1..i_k`, rest mass `r_T = 1 - sum_j exp(l_j)`, and the
    student's tempered log-probabilities `s` with rest mass
    `r_S = sum_{v not in i} exp(s_v)` (a log-sum-exp over the student's
    non-top-k log-probabilities, exact however small), the forward loss is

        tau^2 * [ sum_j e^{l_j} (l_j - s_{i_j}) + r_T (log r_T - log r_S) ]

    and the reverse one swaps the roles (`log r_T` and the `l_j` floored at
    `log(1e-30)` there). At `k = V` it equals `distillation_divergence`
    exactly (both rest masses are 0, and the rest term is dropped). `0 *
    log 0` is 0. Memory: one `(..., V)` copy of the student's
    log-probabilities for the tail.

    Args:
        topk_ids: `(..., k)` integer token ids.
        topk_log_probs: `(..., k)` teacher log-probabilities at `tau`.
        student_logits: `(..., V)` student logits.
        temperature: `tau > 0`; must be the one the targets were made at.
            Defaults to `1.0`.
        divergence: `"forward"` or `"reverse"`. Defaults to `"forward"`.

    Returns:
        A float32 tensor of shape `(...)`.

    Example:

    >>> import numpy as np
    >>> z = np.array([[0.0, 3.0, 1.0]])
    >>> ids, logp = teacher_topk(z, k=3)
    >>> round(float(topk_distillation_divergence(ids, logp, z)[0]), 6)
    0.0
    """
    temperature = check_positive("temperature", temperature)
    check_choice("divergence", divergence, DIVERGENCES)
    topk_ids = ops.convert_to_tensor(topk_ids)
    topk_log_probs = ops.convert_to_tensor(topk_log_probs)
    student_logits = ops.convert_to_tensor(student_logits)
    ids_shape = _shape(topk_ids)
    _check_same_shape(
        "topk_ids", ids_shape, "topk_log_probs", _shape(topk_log_probs)
    )
    s_shape = _check_logits("student_logits", student_logits)
    if ids_shape is not None and s_shape is not None:
        _check_same_shape(
            "topk_ids[..., 0]",
            ids_shape[:-1],
            "student_logits[..., 0]",
            s_shape[:-1],
        )
    if (
        ids_shape is not None
        and s_shape is not None
        and ids_shape[-1] is not None
        and s_shape[-1] is not None
    ):
        if not 1 <= ids_shape[-1] <= s_shape[-1]:
            raise ValueError(
                "`topk_ids` must hold 1 <= k <= V ids per position (V = "
                f"{s_shape[-1]}, the student's vocabulary). Received: "
                f"k={ids_shape[-1]}"
            )
    log_t = ops.stop_gradient(ops.cast(topk_log_probs, "float32"))
    ids = ops.cast(topk_ids, "int32")
    log_s_all = _log_softmax(student_logits, temperature)
    log_s = ops.take_along_axis(log_s_all, ids, axis=-1)
    # Student's rest bucket: a log-sum-exp over its own non-top-k tail.
    log_rest_s, empty = _log_tail(log_s_all, ids)
    # Teacher's rest bucket: log(1 - sum_k p_T) from its stored top-k.
    log_rest_t = _log1mexp(ops.logsumexp(log_t, axis=-1))
    has_rest_t = ops.logical_and(log_rest_t > _LOG_TINY, ~empty)
    log_rest_t = ops.where(has_rest_t, log_rest_t, _LOG_TINY)
    if divergence == "forward":
        p_t = ops.exp(log_t)
        safe_t = ops.where(p_t > 0.0, log_t, 0.0)
        safe_s = ops.where(p_t > 0.0, log_s, 0.0)
        kl = ops.sum(p_t * (safe_t - safe_s), axis=-1)
        rest = ops.exp(log_rest_t) * (log_rest_t - log_rest_s)
        kl = kl + ops.where(has_rest_t, rest, 0.0)
    else:
        floor_t = ops.maximum(log_t, _LOG_TINY)
        kl = ops.sum(ops.exp(log_s) * (log_s - floor_t), axis=-1)
        rest = ops.exp(log_rest_s) * (log_rest_s - log_rest_t)
        kl = kl + ops.where(empty, 0.0, rest)
    return kl * (temperature**2)


def masked_mean(values: Any, mask: Any = None) -> Any:
    """`sum(values * mask) / max(sum(mask), 1)` in float32 (plain mean when
    `mask` is `None`).

    Example:

    >>> import numpy as np
    >>> float(masked_mean(np.array([1.0, 2.0, 9.0]), np.array([1, 1, 0])))
    1.5
    """
    values = ops.cast(values, "float32")
    if mask is None:
        return ops.mean(values)
    mask = ops.cast(mask, "float32")
    _check_same_shape("values", _shape(values), "mask", _shape(mask))
    return ops.sum(values * mask) / ops.maximum(ops.sum(mask), 1.0)


def kd_weight_schedule(
    step: Any, kd_weight: float, n_kd_steps: int, schedule: str = "step"
) -> Any:
    """The SALT KD weight `w_t` at (0-based) training step `step`.

    `"constant"`: `w` at every step (KD never switched off);
    `"step"` (the paper): `w` for `t < n_kd`, then exactly `0`;
    `"linear"`: `w * max(0, 1 - t / n_kd)`, reaching `0` at `t = n_kd`.

    Works on Python numbers and on tensors (then it returns a float32
    tensor and can run inside a compiled train step).

    Example:

    >>> [float(kd_weight_schedule(t, 0.5, 2)) for t in range(3)]
    [0.5, 0.5, 0.0]
    """
    kd_weight = check_fraction("kd_weight", kd_weight, allow_zero=True)
    n_kd_steps = check_integer("n_kd_steps", n_kd_steps, minimum=0)
    check_choice("schedule", schedule, SCHEDULES)
    step = ops.cast(step, "float32")
    w = ops.convert_to_tensor(kd_weight, "float32")
    if schedule == "constant":
        return w + 0.0 * step
    if schedule == "step":
        return ops.where(step < n_kd_steps, w, 0.0)
    frac = 1.0 - step / max(n_kd_steps, 1)
    return ops.where(step < n_kd_steps, w * ops.maximum(frac, 0.0), 0.0)
