"""LoRA-RITE: a transformation-invariant optimizer for LoRA factor pairs."""

import keras
from keras import ops

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
    the one transported into the new basis.
    """
    lam_prev, _ = safe_eigh(previous)
    lam_new, _ = safe_eigh(transported)
    top = ops.max(ops.maximum(lam_prev - lam_new, 0.0))
    trace = ops.maximum(ops.trace(previous) - ops.trace(transported), 0.0)
    return ops.minimum(top, trace)


def precondition(
    unmagnified,
    second_moment,
    rho,
    epsilon,
    relative_floor=DEFAULT_RELATIVE_FLOOR,
):
    """`S = G U diag(1 / (sqrt(lambda' + rho) + epsilon)) U^T`.

    `U diag(lambda) U^T = eigh(second_moment)` and
    `lambda' = max(lambda, relative_floor * max(lambda), 0)`: the floor
    relative to the largest eigenvalue stops float rounding in the null
    space of a rank-deficient second moment (fewer rows than the rank,
    early steps) from being amplified by `1 / epsilon`. `epsilon` sits
    outside the square root, as in Adam.
    """
    lam, vec = safe_eigh(second_moment)
    lam_max = ops.maximum(ops.max(lam), 0.0)
    lam = ops.maximum(lam, relative_floor * lam_max)
    scale = 1.0 / (ops.sqrt(ops.maximum(lam, 0.0) + rho) + epsilon)
    inv_root = ops.matmul(vec * ops.expand_dims(scale, 0), ops.transpose(vec))
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
    relative_floor=DEFAULT_RELATIVE_FLOOR,
):
    """One LoRA-RITE step of one factor, in the other factor's basis.

    Paper convention, shown for `A` (`m x r`) with the other factor
    `B = U_B R_B` (`n x r`): `unmagnified = dL/dA R_B^-1`, `basis = U_B(t)`,
    `previous_basis = U_B(t-1)` (zeros before the first step).

    Returns:
        `(second_moment, momentum, rho)`: the new state; the factor's update
        is `A -= lr * M(t) R_B^-T` with `M(t)` the new momentum.
    """
    rows = unmagnified.shape[0]
    p = ops.matmul(ops.transpose(basis), previous_basis)
    transported = symmetrize(
        ops.matmul(ops.matmul(p, second_moment), ops.transpose(p))
    )
    if use_escaped_mass:
        rho = beta2_t * (rho + escaped_mass(second_moment, transported))
    else:
        rho = ops.zeros_like(rho)
    gram = ops.matmul(ops.transpose(unmagnified), unmagnified) / float(rows)
    second_moment = beta2_t * transported + (1.0 - beta2_t) * gram
    s = precondition(unmagnified, second_moment, rho, epsilon, relative_floor)
    momentum = (
        beta1_t * ops.matmul(momentum, ops.transpose(p)) + (1.0 - beta1_t) * s
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
    - The eigenvalues of `V(t)` are floored at `relative_floor` times the
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
    - Multi-replica `tf.distribute` strategies are not supported for the
      LoRA pairs (the joint update runs outside `merge_call`); JAX
      distribution (SPMD) is unaffected.

    State per pair: the momentum of each factor (`m r + n r`), the previous
    basis of each side (`max(m, r) r + max(n, r) r`), two `r x r` second
    moments and two scalars: about twice the LoRA parameters, like Adam.

    Args:
        learning_rate: float, a schedule, or a callable. Defaults to `1e-3`.
        beta_1: momentum decay. Defaults to `0.9`.
        beta_2: second-moment decay. Defaults to `0.999`.
        epsilon: added outside the square root of the second moment's
            eigenvalues. Defaults to `1e-6`.
        escaped_mass: whether to track the second-moment mass lost by basis
            changes (the paper's `rho`). Defaults to `True`.
        unmagnified_clipnorm: global-norm clip of the unmagnified gradients
            of all LoRA factors, or `None`. Defaults to `None`.
        update_skip_threshold: skip a factor's update when the RMS of its
            unmagnified gradient exceeds this, or `None`. Defaults to `None`.
        pinv_rcond: relative singular-value cut-off of the pseudo-inverse
            of `R`. Defaults to `1e-6`.
        relative_floor: the second moment's eigenvalues are floored at this
            fraction of the largest one before the inverse square root.
            Defaults to `1e-6`.
        fallback: update of the non-LoRA trainable variables, `"adam"` or
            `"sgd"`. Defaults to `"adam"`.
        fallback_epsilon: Adam's epsilon for the fallback. Defaults to
            `1e-7`.
        **kwargs: the base optimizer arguments (`weight_decay`, `clipnorm`,
            `clipvalue`, `global_clipnorm`, `use_ema`, `ema_momentum`,
            `ema_overwrite_frequency`, `loss_scale_factor`,
            `gradient_accumulation_steps`, `name`).

    Example:

    ```python
    lm = keras_hub.models.CausalLM.from_preset(folder)
    lm.backbone.enable_lora(rank=8)
    lm.compile(
        optimizer=keras_gr.optimizers.LoraRite(learning_rate=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    lm.fit(x, y)
    ```

    References:
        - Yen et al., "LoRA Done RITE: Robust Invariant Transformation
          Equilibration for LoRA Optimization", ICLR 2025,
          arXiv:2410.20625.
    """

    def __init__(
        self,
        learning_rate=1e-3,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-6,
        escaped_mass=True,
        unmagnified_clipnorm=None,
        update_skip_threshold=None,
        pinv_rcond=DEFAULT_PINV_RCOND,
        relative_floor=DEFAULT_RELATIVE_FLOOR,
        fallback="adam",
        fallback_epsilon=1e-7,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name="lora_rite",
        **kwargs,
    ):
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
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(
                    f"`{arg}` must be a float in [0, 1). "
                    f"Received: {arg}={value!r}"
                )
        for arg, value in (
            ("epsilon", epsilon),
            ("fallback_epsilon", fallback_epsilon),
        ):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(
                    f"`{arg}` must be a non-negative float. "
                    f"Received: {arg}={value!r}"
                )
        for arg, value in (
            ("unmagnified_clipnorm", unmagnified_clipnorm),
            ("update_skip_threshold", update_skip_threshold),
        ):
            if value is not None and (
                not isinstance(value, (int, float)) or value <= 0
            ):
                raise ValueError(
                    f"`{arg}` must be a positive float or None. "
                    f"Received: {arg}={value!r}"
                )
        if not isinstance(pinv_rcond, (int, float)) or not (
            0 <= pinv_rcond < 1
        ):
            raise ValueError(
                "`pinv_rcond` must be a float in [0, 1). "
                f"Received: pinv_rcond={pinv_rcond!r}"
            )
        if not isinstance(relative_floor, (int, float)) or not (
            0 <= relative_floor < 1
        ):
            raise ValueError(
                "`relative_floor` must be a float in [0, 1). "
                f"Received: relative_floor={relative_floor!r}"
            )
        if fallback not in FALLBACKS:
            raise ValueError(
                f"`fallback` must be one of {FALLBACKS}. "
                f"Received: fallback={fallback!r}"
            )
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.escaped_mass = bool(escaped_mass)
        self.unmagnified_clipnorm = unmagnified_clipnorm
        self.update_skip_threshold = update_skip_threshold
        self.pinv_rcond = float(pinv_rcond)
        self.relative_floor = float(relative_floor)
        self.fallback = fallback
        self.fallback_epsilon = float(fallback_epsilon)

    def build(self, var_list):
        if self.built:
            return
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
        """The fallback update of one non-LoRA variable (Adam or SGD)."""
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.fallback == "sgd":
            self.assign_sub(variable, ops.multiply(gradient, lr))
            return
        index = self._get_variable_index(variable)
        m = self._fallback_momentums[index]
        v = self._fallback_velocities[index]
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        beta_1_power = ops.power(
            ops.cast(self.beta_1, variable.dtype), local_step
        )
        beta_2_power = ops.power(
            ops.cast(self.beta_2, variable.dtype), local_step
        )
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        self.assign_add(
            m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1)
        )
        self.assign_add(
            v,
            ops.multiply(
                ops.subtract(ops.square(gradient), v), 1 - self.beta_2
            ),
        )
        self.assign_sub(
            variable,
            ops.divide(
                ops.multiply(m, alpha),
                ops.add(ops.sqrt(v), self.fallback_epsilon),
            ),
        )

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # The single place where LoRA pairs are updated jointly; everything
        # else goes through the backend's own per-variable path.
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
            self._update_lora_pairs(pair_grads, learning_rate)
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
        lr = ops.cast(learning_rate, "float32")
        step = ops.cast(self.iterations + 1, "float32")
        beta1_t = bias_corrected_decay(self.beta_1, step)
        beta2_t = bias_corrected_decay(self.beta_2, step)
        variables = self._trainable_variables

        # Pass 1: factorisations and unmagnified gradients of every factor.
        prepared = []
        for (a_index, b_index, m, n, r), (grad_a, grad_b) in zip(
            self._lora_pairs, pair_grads
        ):
            var_a, var_b = variables[a_index], variables[b_index]
            a = ops.reshape(ops.cast(_read(var_a), "float32"), (m, r))
            b = ops.transpose(
                ops.reshape(ops.cast(_read(var_b), "float32"), (r, n))
            )
            q_a, r_a = thin_qr(a)
            q_b, r_b = thin_qr(b)
            r_a_pinv = safe_pinv(r_a, self.pinv_rcond)
            r_b_pinv = safe_pinv(r_b, self.pinv_rcond)
            unmag_a = ops.matmul(grad_a, r_b_pinv)
            unmag_b = ops.matmul(ops.transpose(grad_b), r_a_pinv)
            prepared.append(
                [[unmag_a, q_b, r_b_pinv], [unmag_b, q_a, r_a_pinv]]
            )

        if self.unmagnified_clipnorm is not None:
            squares = [
                ops.sum(ops.square(side[0]))
                for sides in prepared
                for side in sides
            ]
            norm = ops.sqrt(ops.sum(ops.stack(squares)))
            scale = ops.minimum(
                1.0, self.unmagnified_clipnorm / ops.maximum(norm, 1e-30)
            )
            for sides in prepared:
                for side in sides:
                    side[0] = side[0] * scale

        # Pass 2: the LoRA-RITE step of each factor, then the assignments.
        threshold = (
            float("inf")
            if self.update_skip_threshold is None
            else float(self.update_skip_threshold)
        )
        for (a_index, b_index, m, n, r), sides, state in zip(
            self._lora_pairs, prepared, self._lora_state
        ):
            factors = (
                (variables[a_index], (m, r), False),
                (variables[b_index], (r, n), True),
            )
            for k, (var, shape_2d, transpose) in enumerate(factors):
                unmag, basis, other_r_pinv = sides[k]
                v_var, m_var, basis_var, rho_var = state[4 * k : 4 * k + 4]
                old_v = _read(v_var)
                old_m = _to_rows(_read(m_var), shape_2d, transpose)
                old_basis = _read(basis_var)
                old_rho = _read(rho_var)
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
                    self.relative_floor,
                )
                rms = ops.sqrt(ops.mean(ops.square(unmag)))
                ok = ops.logical_and(
                    ops.all(ops.isfinite(unmag)), rms <= threshold
                )
                delta = ops.matmul(new_m, ops.transpose(other_r_pinv))
                delta = ops.where(ok, lr * delta, ops.zeros_like(delta))
                new_m = ops.where(ok, new_m, old_m)
                self.assign(m_var, _from_rows(new_m, m_var.shape, transpose))
                self.assign(v_var, ops.where(ok, new_v, old_v))
                self.assign(basis_var, ops.where(ok, basis, old_basis))
                self.assign(rho_var, ops.where(ok, new_rho, old_rho))
                delta = _from_rows(delta, var.shape, transpose)
                self.assign_sub(var, ops.cast(delta, var.dtype))

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
                "relative_floor": self.relative_floor,
                "fallback": self.fallback,
                "fallback_epsilon": self.fallback_epsilon,
            }
        )
        return config


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
