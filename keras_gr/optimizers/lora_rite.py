"""LoRA-RITE: a transformation-invariant optimizer for LoRA factor pairs."""

import keras
import numpy as np
from keras import ops

from keras_gr import _backend
from keras_gr import _validation
from keras_gr.optimizers import _deprecation
from keras_gr.optimizers import grafting as grafting_lib
from keras_gr.optimizers.matrix_functions import DEFAULT_PINV_RCOND
from keras_gr.optimizers.matrix_functions import DEFAULT_RELATIVE_FLOOR
from keras_gr.optimizers.matrix_functions import safe_eigh
from keras_gr.optimizers.matrix_functions import safe_pinv
from keras_gr.optimizers.matrix_functions import symmetrize
from keras_gr.optimizers.matrix_functions import thin_qr

LORA_FACTOR_NAMES = (
    ("lora_kernel_a", "lora_kernel_b"),
    ("lora_embeddings_a", "lora_embeddings_b"),
)
"""The `(a, b)` variable names that Keras's `enable_lora` creates (`Dense`,
`EinsumDense`: `lora_kernel_*`; `Embedding`: `lora_embeddings_*`)."""

FALLBACKS = ("adam", "sgd")
"""Accepted `fallback` values (the update of non-LoRA variables)."""

RENAMED_ARGUMENTS = {"relative_floor": "relative_matrix_epsilon"}
"""Old argument names of `LoraRite` (deprecated, still accepted with a
`DeprecationWarning` until keras_gr 0.2.0) and their new names."""


# --------------------------------------------------------------------------
# Pure maths (float32 `keras.ops`; unit-tested on their own).
# --------------------------------------------------------------------------


def bias_corrected_decay(beta, step):
    """Adafactor-style decay `beta (1 - beta^(t-1)) / (1 - beta^t)`.

    It is `0` at `t = 1` (the first statistic is the first observation) and
    tends to `beta`; an EMA with these decays is the bias-corrected EMA.
    """
    step = ops.cast(step, "float32")
    beta = ops.cast(beta, "float32")
    return (
        beta
        * (1.0 - ops.power(beta, step - 1.0))
        / (1.0 - ops.power(beta, step))
    )


def escaped_mass(previous, transported):
    """Second-moment mass lost by the basis change (paper's `rho` term).

    `d = min(max_i (lambda_i(V) - lambda_i(V~))_+, (tr V - tr V~)_+)` with
    eigenvalues sorted ascending, `V` the previous second moment and `V~`
    the one transported into the new basis. Leading axes are a batch (one
    scalar per matrix).
    """
    lam_prev, _ = safe_eigh(previous)
    lam_new, _ = safe_eigh(transported)
    top = ops.max(ops.maximum(lam_prev - lam_new, 0.0), axis=-1)
    trace = ops.maximum(_trace(previous) - _trace(transported), 0.0)
    return ops.minimum(top, trace)


def _trace(x):
    return ops.trace(ops.cast(x, "float32"), axis1=-2, axis2=-1)


def precondition(
    unmagnified,
    second_moment,
    rho,
    epsilon,
    relative_matrix_epsilon=DEFAULT_RELATIVE_FLOOR,
):
    """`S = G U diag(1 / (sqrt(lambda' + rho) + epsilon)) U^T`.

    `U diag(lambda) U^T = eigh(second_moment)` and
    `lambda' = max(lambda, relative_matrix_epsilon * max(lambda), 0)`: the
    floor
    relative to the largest eigenvalue stops float rounding in the null
    space of a rank-deficient second moment (fewer rows than the rank,
    early steps) from being amplified by `1 / epsilon`. `epsilon` sits
    outside the square root, as in Adam. Leading axes are a batch (`rho`
    then has the batch shape).
    """
    lam, vec = safe_eigh(second_moment)
    lam_max = ops.maximum(ops.max(lam, axis=-1, keepdims=True), 0.0)
    lam = ops.maximum(lam, relative_matrix_epsilon * lam_max)
    rho = ops.expand_dims(ops.cast(rho, "float32"), -1)
    scale = 1.0 / (ops.sqrt(ops.maximum(lam, 0.0) + rho) + epsilon)
    inv_root = ops.matmul(
        vec * ops.expand_dims(scale, -2), ops.swapaxes(vec, -1, -2)
    )
    return ops.matmul(unmagnified, inv_root)


def lora_rite_side(
    unmagnified,
    basis,
    previous_basis,
    second_moment,
    momentum,
    rho,
    beta1_t,
    beta2_t,
    epsilon,
    use_escaped_mass,
    relative_matrix_epsilon=DEFAULT_RELATIVE_FLOOR,
):
    """One LoRA-RITE step of one factor, in the other factor's basis.

    Paper convention, shown for `A` (`m x r`) with the other factor
    `B = U_B R_B` (`n x r`): `unmagnified = dL/dA R_B^-1`, `basis = U_B(t)`,
    `previous_basis = U_B(t-1)` (zeros before the first step). Leading
    axes are a batch of same-shaped pairs (`rho` has the batch shape).

    Returns:
        `(second_moment, momentum, rho)`: the new state; the factor's update
        is `A -= lr * M(t) R_B^-T` with `M(t)` the new momentum.
    """
    rows = unmagnified.shape[-2]
    p = ops.matmul(ops.swapaxes(basis, -1, -2), previous_basis)
    transported = symmetrize(
        ops.matmul(ops.matmul(p, second_moment), ops.swapaxes(p, -1, -2))
    )
    if use_escaped_mass:
        rho = beta2_t * (rho + escaped_mass(second_moment, transported))
    else:
        rho = ops.zeros_like(rho)
    gram = ops.matmul(ops.swapaxes(unmagnified, -1, -2), unmagnified)
    gram = gram / float(rows)
    second_moment = beta2_t * transported + (1.0 - beta2_t) * gram
    s = precondition(
        unmagnified, second_moment, rho, epsilon, relative_matrix_epsilon
    )
    momentum = (
        beta1_t * ops.matmul(momentum, ops.swapaxes(p, -1, -2))
        + (1.0 - beta1_t) * s
    )
    return second_moment, momentum, rho


# --------------------------------------------------------------------------
# The optimizer.
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_gr")
class LoraRite(keras.optimizers.Optimizer):
    """LoRA-RITE: transformation-invariant updates of LoRA factor pairs.

    For every LoRA pair made by Keras's `enable_lora` (`lora_kernel_a` /
    `lora_kernel_b` of `Dense` and `EinsumDense`, `lora_embeddings_a` /
    `lora_embeddings_b` of `Embedding`) the two factors are updated jointly
    so that the change of the merged matrix `Z = A B^T` does not depend on
    how the factors are scaled or rotated: starting from `(A S, B S^-T)`
    gives the same `Z` trajectory as `(A, B)` for any invertible `S`. Every
    other trainable variable gets a fallback update (Adam by default).

    Paper convention: `A` is `m x r` (Keras `lora_kernel_a`, reshaped to
    `(prod(shape[:-1]), r)`) and `B` is `n x r` (the transpose of Keras
    `lora_kernel_b` reshaped to `(r, prod(shape[1:]))`), so kernels of any
    rank (e.g. `EinsumDense` attention kernels) are handled. Per step, for
    `A` (and symmetrically for `B`), all in float32:

    1. `B = U_B R_B` (thin QR), `R_B^+ = pinv(R_B)`.
    2. Unmagnified gradient `gA = dL/dA R_B^+` (= `dL/dZ U_B`).
    3. Basis change `P = U_B(t)^T U_B(t-1)` (`U_B(0) = 0`).
    4. `V~ = P V(t-1) P^T`; escaped mass
       `rho = beta2_t (rho + min(max_i (lambda_i(V) - lambda_i(V~))_+,
       (tr V - tr V~)_+))`.
    5. `V(t) = beta2_t V~ + (1 - beta2_t) gA^T gA / m`.
    6. `S = gA (V(t) + rho I)^(-1/2)` through `eigh`, with `epsilon` added
       outside the square root of each eigenvalue.
    7. `M(t) = beta1_t M(t-1) P^T + (1 - beta1_t) S`.
    8. `A -= learning_rate * M(t) R_B^+^T`.

    `beta_t = beta (1 - beta^(t-1)) / (1 - beta^t)` (Adafactor-style decays,
    which make the EMAs bias-corrected). Both factors are updated from the
    values they had before the step.

    Choices the paper leaves open (reconstructed; see the tests):

    - Pairing is decided in `build` from the variables' paths: `<p>/<name>_a`
      goes with `<p>/<name>_b` (in order of appearance when a parent path
      repeats). An `a` without its `b` (or the reverse) or mismatched ranks
      raise `ValueError` at `build`.
    - `pinv` is the SVD pseudo-inverse with a relative cut-off `pinv_rcond`,
      so an all-zero factor (Keras initialises `lora_kernel_b` to zeros)
      gives a zero unmagnified gradient and a zero update instead of NaN.
    - The eigenvalues of `V(t)` are floored at `relative_matrix_epsilon`
      times the
      largest (invariant, since eigenvalues are): with a rank-deficient
      `V(t)` (a factor with fewer rows than the rank, the first steps) the
      plain `1 / (sqrt(lambda) + epsilon)` amplifies float32 rounding in the
      null space by `1 / epsilon`, so two runs that differ only in rounding
      would drift apart.
    - If a factor has fewer rows than the rank, the other side's QR is
      taken on the factor padded with zero rows (an exact embedding of the
      problem into a larger space).
    - Safety steps (both keep invariance): `unmagnified_clipnorm` clips the
      unmagnified gradients of all LoRA factors by their global norm;
      `update_skip_threshold` skips a factor's step (weights and state) when
      the RMS of its unmagnified gradient exceeds it. A factor whose
      unmagnified gradient is not finite is always skipped. Both are off by
      default (`None`).
    - Keras's generic features act as for any Keras optimizer: `clipnorm`,
      `clipvalue` and `global_clipnorm` clip the raw gradients before the
      LoRA-RITE step, and `weight_decay` is Keras's decoupled decay on every
      variable (it, like the clipping, breaks exact invariance).
    - `fallback="adam"` is Keras's `Adam` (`beta_1`, `beta_2`,
      `fallback_epsilon`, same learning rate); `"sgd"` is plain SGD.
    - Multi-replica `tf.distribute` strategies (e.g. `MirroredStrategy`
      with 2+ replicas) are refused at `build` with a `ValueError` when
      the model has LoRA pairs (the joint update runs on each replica's
      local gradients, outside the all-reduce, and the replicas would
      drift apart silently); a model without pairs trains as with Keras
      Adam. JAX distribution (SPMD, `keras.distribution`) is unaffected.
    - *Non-finite steps*: the whole step (every LoRA factor, every
      fallback variable and all state) is skipped when any gradient, or
      any factor's new second moment, momentum, escaped mass or update, is
      NaN/Inf (e.g. gradients so large that their squares overflow).
      `epsilon` must be positive: it is the only thing that keeps
      `1 / (sqrt(lambda) + epsilon)` finite on the null space of a
      rank-deficient second moment (Keras's zero-initialised `B`).
    - All matrix products of the step run at the highest matmul precision
      (`jax.default_matmul_precision("highest")` under JAX).
    - *Cost at scale*: the QR, pseudo-inverse and eigendecompositions of
      all pairs of the same shape (e.g. the query/value projections of
      every layer of a transformer) are done in one batched call each;
      under JAX gradient accumulation (where Keras runs the update on every
      micro-step and keeps the last) they sit in a `cond` taken once per
      optimizer step.

    State per pair: the momentum of each factor (`m r + n r`), the previous
    basis of each side (`max(m, r) r + max(n, r) r`), two `r x r` second
    moments and two scalars: about twice the LoRA parameters, like Adam.

    Args:
        learning_rate: float, a schedule, or a callable. Defaults to `1e-3`.
        beta_1: momentum decay. Defaults to `0.9`.
        beta_2: second-moment decay. Defaults to `0.999`.
        epsilon: added outside the square root of the second moment's
            eigenvalues; must be positive. Defaults to `1e-6`.
        escaped_mass: whether to track the second-moment mass lost by basis
            changes (the paper's `rho`). Defaults to `True`.
        unmagnified_clipnorm: global-norm clip of the unmagnified gradients
            of all LoRA factors, or `None`. Defaults to `None`.
        update_skip_threshold: skip a factor's update when the RMS of its
            unmagnified gradient exceeds this, or `None`. Defaults to `None`.
        pinv_rcond: relative singular-value cut-off of the pseudo-inverse
            of `R`. Defaults to `1e-6`.
        relative_matrix_epsilon: the second moment's eigenvalues are floored
            at this fraction of the largest one before the inverse square
            root (the name of this floor in every keras_gr optimizer).
            Defaults to `1e-6`.
        fallback: update of the non-LoRA trainable variables, `"adam"` or
            `"sgd"`. Defaults to `"adam"`.
        fallback_epsilon: Adam's epsilon for the fallback. Defaults to
            `1e-7`.
        **kwargs: the base optimizer arguments (`weight_decay`, `clipnorm`,
            `clipvalue`, `global_clipnorm`, `use_ema`, `ema_momentum`,
            `ema_overwrite_frequency`, `loss_scale_factor`,
            `gradient_accumulation_steps`, `name`).

    *Resuming training*: Keras folds LoRA into the kernel whenever it
    writes a model file (`model.save` to `.keras`, `save_weights` to
    `.weights.h5`, and so `keras.callbacks.BackupAndRestore` and
    `ModelCheckpoint`): a model loaded from one has both factors at zero,
    which LoRA-RITE (like any optimizer) can never move again, and the
    optimizer state no longer matches the factors. Those files are for
    deployment. To pause and resume LoRA-RITE training, write the factors
    and the optimizer state with `save_training_state(model, path)` and
    restore them into a freshly built and compiled model of the same
    architecture with `load_training_state(model, path)` (both exported
    from `keras_gr.optimizers`); then call `fit(...,
    initial_epoch=...)`. The resumed run equals the uninterrupted one (to
    float32 rounding; the data order is the caller's to reproduce).

    Example (a keras-hub model works the same way:
    `lm.backbone.enable_lora(rank=8)`, then compile with `LoraRite`):

    >>> import keras, numpy as np
    >>> from keras_gr.optimizers import LoraRite
    >>> dense = keras.layers.Dense(4)
    >>> model = keras.Sequential([keras.Input((8,)), dense])
    >>> dense.enable_lora(2)
    >>> opt = LoraRite(learning_rate=1e-2)
    >>> model.compile(optimizer=opt, loss="mse")
    >>> _ = model.fit(np.ones((4, 8)), np.ones((4, 4)), verbose=0)
    >>> [tuple(v.shape) for v in opt.lora_pairs[0]]
    [(8, 2), (2, 4)]

    References:
        - Yen et al., "LoRA Done RITE: Robust Invariant Transformation
          Equilibration for LoRA Optimization", ICLR 2025,
          arXiv:2410.20625.
    """

    def __init__(
        self,
        learning_rate: float = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-6,
        escaped_mass: bool = True,
        unmagnified_clipnorm: float | None = None,
        update_skip_threshold: float | None = None,
        pinv_rcond: float = DEFAULT_PINV_RCOND,
        relative_matrix_epsilon: float = DEFAULT_RELATIVE_FLOOR,
        fallback: str = "adam",
        fallback_epsilon: float = 1e-7,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str = "lora_rite",
        **kwargs,
    ) -> None:
        relative_matrix_epsilon = _deprecation.pop_renamed(
            type(self).__name__,
            LoraRite.__init__,
            kwargs,
            RENAMED_ARGUMENTS,
            relative_matrix_epsilon=relative_matrix_epsilon,
        )["relative_matrix_epsilon"]
        if not callable(learning_rate) and not isinstance(
            learning_rate, keras.optimizers.schedules.LearningRateSchedule
        ):
            learning_rate = _validation.check_positive(
                "learning_rate", learning_rate
            )
        super().__init__(
            learning_rate=learning_rate,
            name=name,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            **kwargs,
        )
        for arg, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            _validation.check_number(
                arg, value, minimum=0.0, maximum=1.0, max_inclusive=False
            )
        # `epsilon = 0` makes `1 / (sqrt(lambda) + epsilon)` infinite on the
        # null space of the second moment (a zero `B`, the first step).
        _validation.check_positive("epsilon", epsilon)
        _validation.check_positive("fallback_epsilon", fallback_epsilon)
        for arg, value in (
            ("unmagnified_clipnorm", unmagnified_clipnorm),
            ("update_skip_threshold", update_skip_threshold),
        ):
            if value is not None:
                _validation.check_positive(arg, value)
        for arg, value in (
            ("pinv_rcond", pinv_rcond),
            ("relative_matrix_epsilon", relative_matrix_epsilon),
        ):
            _validation.check_number(
                arg, value, minimum=0.0, maximum=1.0, max_inclusive=False
            )
        _validation.check_choice("fallback", fallback, FALLBACKS)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.escaped_mass = bool(escaped_mass)
        if unmagnified_clipnorm is not None:
            unmagnified_clipnorm = float(unmagnified_clipnorm)
        self.unmagnified_clipnorm = unmagnified_clipnorm
        self.update_skip_threshold = (
            None
            if update_skip_threshold is None
            else float(update_skip_threshold)
        )
        self.pinv_rcond = float(pinv_rcond)
        self.relative_matrix_epsilon = float(relative_matrix_epsilon)
        self.fallback = fallback
        self.fallback_epsilon = float(fallback_epsilon)
        self._step_finite = None

    def build(self, var_list):
        if self.built:
            return
        replicas = _backend.distributed_replicas(self)
        if replicas > 1 and find_lora_pairs(var_list):
            raise ValueError(
                "LoraRite does not support multi-replica `tf.distribute` "
                "strategies for LoRA pairs: the joint pair update would run "
                "on each replica's local gradients, and the replicas would "
                "drift apart silently. Use one replica, or the JAX backend "
                "with `keras.distribution` (SPMD). Received: a strategy "
                f"with num_replicas_in_sync={replicas}"
            )
        super().build(var_list)
        pairs = find_lora_pairs(var_list)
        pair_of_a = {a: (a, b) for a, b in pairs}
        in_pair = {i for pair in pairs for i in pair}
        # Python metadata per pair: (index_a, index_b, m, n, r).
        self._lora_pairs = []
        self._lora_state = []
        self._fallback_momentums = [None] * len(var_list)
        self._fallback_velocities = [None] * len(var_list)
        for i, var in enumerate(var_list):
            if i in pair_of_a:
                a_index, b_index = pair_of_a[i]
                self._build_pair(var, var_list[b_index], a_index, b_index)
            elif i in in_pair or self._overwrite_variable_with_gradient(var):
                continue
            elif self.fallback == "adam":
                index = self._get_variable_index(var)
                self._fallback_momentums[index] = (
                    self.add_variable_from_reference(var, name="momentum")
                )
                self._fallback_velocities[index] = (
                    self.add_variable_from_reference(var, name="velocity")
                )

    def _build_pair(self, var_a, var_b, a_index, b_index):
        r = int(var_a.shape[-1])
        m = _prod(var_a.shape[:-1])
        n = _prod(var_b.shape[1:])
        parent = str(getattr(var_a, "path", "")).rpartition("/")[0]
        prefix = (parent.replace("/", "_") + "_lora").lstrip("_")
        state = []
        # A side: state of A, expressed in the basis of B; then the B side.
        for side, other_rows, ref in (("a", n, var_a), ("b", m, var_b)):
            state.append(
                self.add_variable(
                    (r, r), dtype="float32", name=f"{prefix}_{side}_moment2"
                )
            )
            state.append(
                self.add_variable_from_reference(ref, name=f"{side}_momentum")
            )
            state.append(
                self.add_variable(
                    (max(other_rows, r), r),
                    dtype="float32",
                    name=f"{prefix}_{side}_basis",
                )
            )
            state.append(
                self.add_variable(
                    (), dtype="float32", name=f"{prefix}_{side}_rho"
                )
            )
        self._lora_pairs.append((a_index, b_index, m, n, r))
        self._lora_state.append(state)

    def update_step(self, gradient, variable, learning_rate):
        # The fallback update of one non-LoRA variable: Keras's Adam
        # (`grafting.adam_direction`, shared with Shampoo's Adam graft) or
        # plain SGD, computed in float32.
        finite = self._step_finite
        if finite is None:
            finite = ops.all(ops.isfinite(gradient))
        lr = ops.cast(learning_rate, "float32")
        gradient = ops.cast(gradient, "float32")
        gradient = ops.where(
            ops.isfinite(gradient), gradient, ops.zeros_like(gradient)
        )
        if self.fallback == "sgd":
            w = _read(variable)
            w_new = ops.where(finite, w - gradient * lr, w)
            self.assign(variable, ops.cast(w_new, variable.dtype))
            return
        index = self._get_variable_index(variable)
        m_var = self._fallback_momentums[index]
        v_var = self._fallback_velocities[index]
        m, v, w = _read(m_var), _read(v_var), _read(variable)
        step = ops.cast(self.iterations + 1, "float32")
        m_new = m + (gradient - m) * (1 - self.beta_1)
        v_new = v + (ops.square(gradient) - v) * (1 - self.beta_2)
        direction = grafting_lib.momentum_direction(
            m_new, gradient, self.beta_1, step, nesterov=False
        )
        var_new = w - lr * grafting_lib.adam_direction(
            direction, v_new, self.beta_2, self.fallback_epsilon, step
        )
        # The guard checks the results too (squares of huge gradients
        # overflow); such a variable keeps its value and state.
        for x in (m_new, v_new, var_new):
            finite = ops.logical_and(finite, ops.all(ops.isfinite(x)))
        for target, new, old in (
            (m_var, m_new, m),
            (v_var, v_new, v),
            (variable, var_new, w),
        ):
            value = ops.where(finite, new, old)
            self.assign(target, ops.cast(value, target.dtype))

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # The single place where LoRA pairs are updated jointly; everything
        # else goes through the backend's own per-variable path. One finite
        # flag for the whole step: a NaN/Inf gradient anywhere leaves every
        # variable and all state unchanged.
        flags = [ops.all(ops.isfinite(g)) for g in grads if g is not None]
        self._step_finite = None
        if flags and _backend.distributed_replicas(self) == 1:
            self._step_finite = ops.all(ops.stack(flags))
        try:
            self._update_all(grads, trainable_variables, learning_rate)
        finally:
            self._step_finite = None

    def _update_all(self, grads, trainable_variables, learning_rate):
        position = {
            self._get_variable_index(v): k
            for k, v in enumerate(trainable_variables)
        }
        in_pair = set()
        pair_grads = []
        for a_index, b_index, m, n, r in self._lora_pairs:
            in_pair.update((a_index, b_index))
            pair_grads.append(
                (
                    _dense_grad(grads, position.get(a_index), (m, r)),
                    _dense_grad(grads, position.get(b_index), (r, n)),
                )
            )
        if self._lora_pairs:
            # A non-finite LoRA result skips the fallback variables too.
            self._step_finite = self._update_lora_pairs(
                pair_grads, learning_rate
            )
        other = [
            (g, v)
            for g, v in zip(grads, trainable_variables)
            if self._get_variable_index(v) not in in_pair
        ]
        if other:
            other_grads, other_vars = zip(*other)
            super()._backend_update_step(
                list(other_grads), list(other_vars), learning_rate
            )

    def _update_lora_pairs(self, pair_grads, learning_rate):
        # The variables the pair step writes, in a fixed order: per pair,
        # per factor (A then B): momentum, second moment, basis, rho and
        # the factor itself.
        variables = self._trainable_variables
        targets = []
        for (a_index, b_index, *_), state in zip(
            self._lora_pairs, self._lora_state
        ):
            for k, index in enumerate((a_index, b_index)):
                v_var, m_var, basis_var, rho_var = state[4 * k : 4 * k + 4]
                targets += [m_var, v_var, basis_var, rho_var]
                targets.append(variables[index])

        def compute():
            return self._pair_values(pair_grads, learning_rate)

        def keep():
            flag = self._step_finite
            if flag is None:
                flag = ops.convert_to_tensor(True)
            return [_read(t) for t in targets] + [flag]

        acc = self.gradient_accumulation_steps
        if acc and keras.backend.backend() == "jax":
            # Keras's JAX optimizer runs this on every micro-step and keeps
            # the last one only: decompose once per optimizer step.
            last_micro = ops.equal(ops.mod(self._iterations + 1, acc), 0)
            values = ops.cond(last_micro, compute, keep)
        else:
            values = compute()
        for target, value in zip(targets, values[:-1]):
            self.assign(target, ops.cast(value, target.dtype))
        return values[-1]

    def _pair_values(self, pair_grads, learning_rate):
        """New values of the pair step's targets (see `_update_lora_pairs`)
        and, last, the step's finite flag; the decompositions are batched
        over pairs of the same shape."""
        lr = ops.cast(learning_rate, "float32")
        step = ops.cast(self.iterations + 1, "float32")
        beta1_t = bias_corrected_decay(self.beta_1, step)
        beta2_t = bias_corrected_decay(self.beta_2, step)
        variables = self._trainable_variables
        groups = {}
        for k, (_, _, m, n, r) in enumerate(self._lora_pairs):
            groups.setdefault((m, n, r), []).append(k)

        # Pass 1: batched factorisations and unmagnified gradients.
        prepared = {}
        with _backend.highest_matmul_precision():
            for (m, n, r), members in groups.items():
                a = ops.stack(
                    [
                        ops.reshape(
                            _read(variables[self._lora_pairs[k][0]]), (m, r)
                        )
                        for k in members
                    ]
                )
                b = ops.stack(
                    [
                        ops.transpose(
                            ops.reshape(
                                _read(variables[self._lora_pairs[k][1]]),
                                (r, n),
                            )
                        )
                        for k in members
                    ]
                )
                grad_a = ops.stack([pair_grads[k][0] for k in members])
                grad_b = ops.stack([pair_grads[k][1] for k in members])
                q_a, r_a = thin_qr(a)
                q_b, r_b = thin_qr(b)
                r_a_pinv = safe_pinv(r_a, self.pinv_rcond)
                r_b_pinv = safe_pinv(r_b, self.pinv_rcond)
                unmag_a = ops.matmul(grad_a, r_b_pinv)
                unmag_b = ops.matmul(ops.swapaxes(grad_b, -1, -2), r_a_pinv)
                prepared[(m, n, r)] = [
                    [unmag_a, q_b, r_b_pinv],
                    [unmag_b, q_a, r_a_pinv],
                ]

        if self.unmagnified_clipnorm is not None:
            squares = [
                ops.sum(ops.square(side[0]))
                for sides in prepared.values()
                for side in sides
            ]
            norm = ops.sqrt(ops.sum(ops.stack(squares)))
            scale = ops.minimum(
                1.0, self.unmagnified_clipnorm / ops.maximum(norm, 1e-30)
            )
            for sides in prepared.values():
                for side in sides:
                    side[0] = side[0] * scale

        # Pass 2: the batched LoRA-RITE step of each side.
        threshold = (
            float("inf")
            if self.update_skip_threshold is None
            else float(self.update_skip_threshold)
        )
        finite = [] if self._step_finite is None else [self._step_finite]
        results = {}
        for (m, n, r), members in groups.items():
            for k, (shape_2d, transpose) in enumerate(
                (((m, r), False), ((r, n), True))
            ):
                unmag, basis, other_r_pinv = prepared[(m, n, r)][k]
                states = [
                    self._lora_state[j][4 * k : 4 * k + 4] for j in members
                ]
                old_v = ops.stack([_read(st[0]) for st in states])
                old_m = ops.stack(
                    [
                        _to_rows(_read(st[1]), shape_2d, transpose)
                        for st in states
                    ]
                )
                old_basis = ops.stack([_read(st[2]) for st in states])
                old_rho = ops.stack([_read(st[3]) for st in states])
                with _backend.highest_matmul_precision():
                    new_v, new_m, new_rho = lora_rite_side(
                        unmag,
                        basis,
                        old_basis,
                        old_v,
                        old_m,
                        old_rho,
                        beta1_t,
                        beta2_t,
                        self.epsilon,
                        self.escaped_mass,
                        self.relative_matrix_epsilon,
                    )
                    delta = lr * ops.matmul(
                        new_m, ops.swapaxes(other_r_pinv, -1, -2)
                    )
                # The guard checks the inputs *and* the results.
                for x in (unmag, new_v, new_m, new_rho, delta):
                    finite.append(ops.all(ops.isfinite(x)))
                rms = ops.sqrt(ops.mean(ops.square(unmag), axis=(-2, -1)))
                results[(m, n, r, k)] = (
                    (old_m, old_v, old_basis, old_rho),
                    (new_m, new_v, basis, new_rho),
                    delta,
                    rms <= threshold,
                )

        # The whole step is skipped if anything (any gradient, any factor's
        # new state or update) is not finite; `update_skip_threshold` skips
        # single factors.
        all_finite = ops.all(ops.stack(finite))
        per_pair = {}
        for (m, n, r), members in groups.items():
            for k, transpose in enumerate((False, True)):
                old, new, delta, small = results[(m, n, r, k)]
                for slot, j in enumerate(members):
                    ok = ops.logical_and(all_finite, small[slot])
                    index = self._lora_pairs[j][k]
                    var = variables[index]
                    m_var = self._lora_state[j][4 * k + 1]
                    out = [
                        ops.where(ok, nw[slot], od[slot])
                        for nw, od in zip(new, old)
                    ]
                    out[0] = _from_rows(out[0], m_var.shape, transpose)
                    step_delta = ops.where(
                        ok, delta[slot], ops.zeros_like(delta[slot])
                    )
                    step_delta = _from_rows(step_delta, var.shape, transpose)
                    per_pair[(j, k)] = out + [_read(var) - step_delta]
        values = []
        for j in range(len(self._lora_pairs)):
            for k in (0, 1):
                values += per_pair[(j, k)]
        return values + [all_finite]

    @property
    def lora_pairs(self):
        """The `(a, b)` variable pairs found at `build` (after building)."""
        variables = self._trainable_variables
        return [(variables[a], variables[b]) for a, b, *_ in self._lora_pairs]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "escaped_mass": self.escaped_mass,
                "unmagnified_clipnorm": self.unmagnified_clipnorm,
                "update_skip_threshold": self.update_skip_threshold,
                "pinv_rcond": self.pinv_rcond,
                "relative_matrix_epsilon": self.relative_matrix_epsilon,
                "fallback": self.fallback,
                "fallback_epsilon": self.fallback_epsilon,
            }
        )
        return config


def save_training_state(model: keras.Model, filepath: str) -> None:
    """Writes every variable of `model` and of its optimizer, unmerged.

    Unlike Keras's `.keras` and `.weights.h5` files, which fold LoRA into
    the kernel and store no factors, this keeps `lora_*_a` / `lora_*_b`
    and the base kernel apart, so `load_training_state` resumes LoRA
    training exactly (see `LoraRite`). The file is a NumPy `.npz` holding
    the values in `model.weights` order, then `model.optimizer.variables`
    (step counter included), with their paths.

    Args:
        model: a compiled `keras.Model` (its optimizer built or not; an
            unbuilt optimizer is saved without state).
        filepath: the `.npz` file to write.

    Example (the round trip is in `load_training_state`):

    >>> import os, tempfile, keras, numpy as np
    >>> from keras_gr.optimizers import LoraRite
    >>> from keras_gr.optimizers import save_training_state
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.layers[0].enable_lora(2)
    >>> model.compile(optimizer=LoraRite(), loss="mse")
    >>> path = os.path.join(tempfile.mkdtemp(), "state.npz")
    >>> save_training_state(model, path)
    >>> [str(p).split("/")[-1] for p in np.load(path)["model_paths"]]
    ['kernel', 'bias', 'lora_kernel_a', 'lora_kernel_b']
    """
    optimizer = _compiled_optimizer(model)
    arrays = {}
    for prefix, variables in (
        ("model", model.weights),
        ("optimizer", optimizer.variables),
    ):
        for i, v in enumerate(variables):
            arrays[f"{prefix}_{i}"] = np.asarray(ops.convert_to_numpy(v))
        arrays[f"{prefix}_paths"] = np.array([v.path for v in variables])
    with open(filepath, "wb") as f:
        np.savez(f, **arrays)


def load_training_state(model: keras.Model, filepath: str) -> None:
    """Restores what `save_training_state` wrote into a compiled `model`.

    `model` must be built like the saved one (same layers in the same
    order, LoRA enabled with the same ranks) and compiled with an optimizer
    of the same kind and options; its optimizer is built first if needed.
    Variables are matched by position; a count or shape mismatch raises a
    `ValueError` before anything is assigned.

    Args:
        model: the compiled `keras.Model` to restore into.
        filepath: a file written by `save_training_state`.

    Example (pause LoRA training and resume it in a new model):

    >>> import os, tempfile, keras, numpy as np
    >>> from keras_gr.optimizers import LoraRite
    >>> from keras_gr.optimizers import load_training_state
    >>> from keras_gr.optimizers import save_training_state
    >>> def make_model():
    ...     dense = keras.layers.Dense(4)
    ...     model = keras.Sequential([keras.Input((8,)), dense])
    ...     dense.enable_lora(2)
    ...     model.compile(optimizer=LoraRite(learning_rate=1e-2), loss="mse")
    ...     return model
    >>> x, y = np.ones((4, 8)), np.ones((4, 4))
    >>> model = make_model()
    >>> _ = model.fit(x, y, verbose=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "state.npz")
    >>> save_training_state(model, path)
    >>> resumed = make_model()
    >>> load_training_state(resumed, path)
    >>> int(resumed.optimizer.iterations)
    1
    >>> b = [m.layers[0].lora_kernel_b for m in (model, resumed)]
    >>> b = [keras.ops.convert_to_numpy(v) for v in b]
    >>> bool(np.array_equal(*b)), bool(np.any(b[0] != 0))
    (True, True)
    """
    optimizer = _compiled_optimizer(model)
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    with np.load(filepath, allow_pickle=False) as data:
        stored = {key: data[key] for key in data.files}
    pending = []
    for prefix, variables in (
        ("model", model.weights),
        ("optimizer", optimizer.variables),
    ):
        paths = stored[f"{prefix}_paths"]
        if len(paths) != len(variables):
            raise ValueError(
                f"`model` must have the {prefix} variables of the saved "
                f"state ({len(paths)}). Received: a model with "
                f"{len(variables)} {prefix} variables"
            )
        for i, v in enumerate(variables):
            value = stored[f"{prefix}_{i}"]
            if tuple(value.shape) != tuple(v.shape):
                raise ValueError(
                    f"`model` must match the saved state: {prefix} variable "
                    f"{i} ({paths[i]}) has shape {tuple(value.shape)} in "
                    f"the file. Received: a model whose {v.path} has shape "
                    f"{tuple(v.shape)}"
                )
            pending.append((v, value))
    for v, value in pending:
        v.assign(value)


def _compiled_optimizer(model):
    optimizer = getattr(model, "optimizer", None)
    if not isinstance(model, keras.Model) or optimizer is None:
        raise ValueError(
            "`model` must be a keras.Model compiled with an optimizer. "
            f"Received: model={model!r}"
        )
    return optimizer


def find_lora_pairs(variables):
    """Indices `(a, b)` of the LoRA factor pairs in a list of variables.

    A pair is `<parent>/<name>_a` and `<parent>/<name>_b` for a name in
    `LORA_FACTOR_NAMES`; when one parent path holds several, they are
    paired in order of appearance.

    Raises:
        ValueError: a factor without its partner in `variables`, or a pair
            whose ranks differ (`a.shape[-1] != b.shape[0]`).
    """
    groups = {}
    for i, var in enumerate(variables):
        path = getattr(var, "path", None) or getattr(var, "name", "")
        parent, _, leaf = str(path).rpartition("/")
        leaf = leaf.split(":")[0]
        for kind, (name_a, name_b) in enumerate(LORA_FACTOR_NAMES):
            if leaf in (name_a, name_b):
                side = 0 if leaf == name_a else 1
                groups.setdefault((parent, kind), ([], []))[side].append(i)
    pairs = []
    for (parent, kind), (a_list, b_list) in groups.items():
        name_a, name_b = LORA_FACTOR_NAMES[kind]
        if len(a_list) != len(b_list):
            lonely, missing = (
                (name_a, name_b)
                if len(a_list) > len(b_list)
                else (name_b, name_a)
            )
            raise ValueError(
                f"LoraRite found `{lonely}` without its partner `{missing}` "
                f"among the trainable variables under "
                f"'{parent or '<root>'}': LoRA factors must be trained in "
                f"pairs. Received: {len(a_list)} `{name_a}` and "
                f"{len(b_list)} `{name_b}` variables."
            )
        for a_index, b_index in zip(a_list, b_list):
            var_a, var_b = variables[a_index], variables[b_index]
            if len(var_a.shape) < 2 or len(var_b.shape) < 2:
                raise ValueError(
                    "LoRA factors must have at least 2 dimensions. Received: "
                    f"{name_a}.shape={tuple(var_a.shape)}, "
                    f"{name_b}.shape={tuple(var_b.shape)} under "
                    f"'{parent or '<root>'}'"
                )
            if var_a.shape[-1] != var_b.shape[0]:
                raise ValueError(
                    "LoRA factor ranks differ: the last axis of "
                    f"`{name_a}` must equal the first axis of `{name_b}`. "
                    f"Received: {name_a}.shape={tuple(var_a.shape)}, "
                    f"{name_b}.shape={tuple(var_b.shape)} under "
                    f"'{parent or '<root>'}'"
                )
            pairs.append((a_index, b_index))
    return sorted(pairs)


def _prod(shape):
    out = 1
    for d in shape:
        out *= int(d)
    return out


def _dense_grad(grads, position, shape_2d):
    """The gradient at `position` as a float32 `shape_2d` matrix (zeros
    when the gradient was filtered out, e.g. a `None` gradient)."""
    if position is None:
        return ops.zeros(shape_2d, dtype="float32")
    g = ops.convert_to_tensor(grads[position])
    return ops.reshape(ops.cast(g, "float32"), shape_2d)


def _to_rows(value, shape_2d, transpose):
    """A factor-shaped tensor as its `(rows, r)` paper-orientation matrix."""
    x = ops.reshape(value, shape_2d)
    return ops.transpose(x) if transpose else x


def _from_rows(x, shape, transpose):
    """Inverse of `_to_rows`: a `(rows, r)` matrix back to `shape`."""
    x = ops.transpose(x) if transpose else x
    return ops.reshape(x, shape)


def _read(variable):
    """The current value of a variable as a float32 tensor (a plain tensor
    on TensorFlow, the stateless-scope value on JAX)."""
    return ops.cast(ops.convert_to_tensor(variable), "float32")
