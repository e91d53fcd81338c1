"""Shampoo (one- and two-sided) as Keras 3 optimizers.

One implementation, `_StructuredPreconditioner`, serves `OneSidedShampoo`,
`Shampoo` and the comparison family in `adagrad_family.py`
(`FullMatrixAdagrad`, `AdagradNorm`): each optimizer only decides, in
`build`, how a variable is viewed as a matrix and which of its sides are
preconditioned.
"""

import re

import keras
from keras import ops

from keras_gr.optimizers import grafting as grafting_lib
from keras_gr.optimizers import matrix_functions

# Per-variable routing kinds, decided in `build` (under TensorFlow
# `update_step` receives raw `tf.Variable`s without a `.path`).
_FALLBACK = "fallback"
_MATRIX = "matrix"


def _check_positive(name, value, integer=False):
    kind = "a positive integer" if integer else "a positive number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer:
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value <= 0:
        raise ValueError(f"`{name}` must be {kind}. Received: {name}={value}")


def _check_unit_interval(name, value, closed_right=True):
    allowed = "[0, 1]" if closed_right else "[0, 1)"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = 0.0 <= value <= 1.0 if closed_right else 0.0 <= value < 1.0
    if not ok:
        raise ValueError(
            f"`{name}` must be a number in {allowed}. Received: {name}={value}"
        )


class _StructuredPreconditioner(keras.optimizers.Optimizer):
    """Shared machinery of the matrix-preconditioned optimizers.

    Subclasses implement `_route(variable)`, returning `None` for a fallback
    variable or `(rows, cols, left, right)`: the 2-D view of the variable and
    which sides get a Kronecker factor. The exponent of each factor's inverse
    root is `2 * number_of_preconditioned_sides`.
    """

    def __init__(
        self,
        learning_rate,
        *,
        beta1,
        beta2,
        epsilon,
        nesterov,
        grafting,
        grafting_beta2,
        precondition_frequency,
        start_preconditioning_step,
        matrix_epsilon,
        relative_matrix_epsilon,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        if isinstance(learning_rate, (int, float)):
            _check_positive("learning_rate", learning_rate)
        _check_unit_interval("beta1", beta1, closed_right=False)
        _check_unit_interval("beta2", beta2)
        _check_unit_interval("grafting_beta2", grafting_beta2)
        _check_positive("epsilon", epsilon)
        _check_positive("matrix_epsilon", matrix_epsilon)
        if not isinstance(relative_matrix_epsilon, (int, float)) or not (
            0.0 <= relative_matrix_epsilon < 1.0
        ):
            raise ValueError(
                "`relative_matrix_epsilon` must be a number in [0, 1). "
                f"Received: relative_matrix_epsilon={relative_matrix_epsilon}"
            )
        _check_positive(
            "precondition_frequency", precondition_frequency, integer=True
        )
        _check_positive(
            "start_preconditioning_step",
            start_preconditioning_step,
            integer=True,
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
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.epsilon = float(epsilon)
        self.nesterov = bool(nesterov)
        self.grafting = grafting_lib.validate_grafting(grafting)
        self.grafting_beta2 = float(grafting_beta2)
        self.precondition_frequency = precondition_frequency
        self.start_preconditioning_step = start_preconditioning_step
        self.matrix_epsilon = float(matrix_epsilon)
        self.relative_matrix_epsilon = float(relative_matrix_epsilon)

    def _route(self, variable):
        raise NotImplementedError

    def _state_layout(self, size):
        """Explicit replicated layout for an m x m factor under a
        distribution (statistics and roots are small and every device runs
        the eigendecomposition); `None` without a distribution."""
        distribution = keras.distribution.distribution()
        if distribution is None:
            return None
        mesh = getattr(distribution, "device_mesh", None)
        if mesh is None:
            return None
        return keras.distribution.TensorLayout([None, None], mesh)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        n = len(var_list)
        self._routes = [None] * n
        self._graft_kinds = [None] * n
        self._momentums = [None] * n
        self._graft_moments = [None] * n
        self._left_stats = [None] * n
        self._left_roots = [None] * n
        self._right_stats = [None] * n
        self._right_roots = [None] * n
        for var in var_list:
            if self._overwrite_variable_with_gradient(var):
                continue
            i = self._get_variable_index(var)
            route = self._route(var)
            self._routes[i] = route
            kind = self.grafting
            if route is None and kind == "none":
                kind = "adam"
            self._graft_kinds[i] = kind
            if self.beta1 > 0.0:
                self._momentums[i] = self.add_variable_from_reference(
                    var, name="momentum"
                )
            if kind in ("adam", "adagrad"):
                self._graft_moments[i] = self.add_variable_from_reference(
                    var, name="graft_velocity"
                )
            if route is None:
                continue
            rows, cols, left, right = route
            prefix = self._variable_prefix(var)
            for side, size, stats, roots in (
                ("left", rows, self._left_stats, self._left_roots),
                ("right", cols, self._right_stats, self._right_roots),
            ):
                if not (left if side == "left" else right):
                    continue
                layout = self._state_layout(size)
                stats[i] = self.add_variable(
                    shape=(size, size),
                    initializer="zeros",
                    dtype="float32",
                    layout=layout,
                    name=f"{prefix}_{side}_statistics",
                )
                roots[i] = self.add_variable(
                    shape=(size, size),
                    initializer="identity",
                    dtype="float32",
                    layout=layout,
                    name=f"{prefix}_{side}_root",
                )

    @staticmethod
    def _variable_prefix(var):
        name = getattr(var, "path", None) or str(var.name)
        return name.replace("/", "_").replace(":", "_")

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        route = self._routes[i]
        kind = self._graft_kinds[i]
        step = ops.cast(self.iterations + 1, "float32")
        lr = ops.cast(learning_rate, "float32")
        g = ops.cast(gradient, "float32")
        finite = ops.all(ops.isfinite(g))
        g = ops.where(finite, g, ops.zeros_like(g))
        new_state = []  # (variable, new value) pairs, kept only if finite.

        # Momentum on the raw gradient (shared with the Adam graft).
        direction = g
        if self._momentums[i] is not None:
            m = self._momentums[i]
            m_new = self.beta1 * ops.cast(m, "float32") + (1.0 - self.beta1) * g
            new_state.append((m, m_new))
            direction = grafting_lib.momentum_direction(
                m_new, g, self.beta1, step, self.nesterov
            )

        # Grafting (or fallback) update.
        reference = direction if kind == "sgd" else None
        if kind == "adam":
            v = self._graft_moments[i]
            b2 = self.grafting_beta2
            v_new = b2 * ops.cast(v, "float32") + (1.0 - b2) * ops.square(g)
            new_state.append((v, v_new))
            reference = grafting_lib.adam_direction(
                direction, v_new, b2, self.epsilon, step
            )
        elif kind == "adagrad":
            acc = self._graft_moments[i]
            acc_new = ops.cast(acc, "float32") + ops.square(g)
            new_state.append((acc, acc_new))
            reference = grafting_lib.adagrad_direction(
                direction, acc_new, self.epsilon
            )

        if route is None:
            update = reference
        else:
            update = self._preconditioned_update(
                i, route, g, direction, reference, step, new_state
            )

        w = ops.cast(variable, "float32")
        w_new = w - lr * ops.reshape(update, ops.shape(w))
        new_state.append((variable, w_new))
        for target, value in new_state:
            old = ops.cast(target, "float32")
            value = ops.where(finite, value, old)
            self.assign(target, ops.cast(value, target.dtype))

    def _preconditioned_update(
        self, i, route, g, direction, reference, step, new_state
    ):
        rows, cols, left, right = route
        p = 2.0 * (int(left) + int(right))
        g2 = ops.reshape(g, (rows, cols))
        d2 = ops.reshape(direction, (rows, cols))
        start = float(self.start_preconditioning_step)
        active = step >= start
        recompute = ops.logical_and(
            active,
            ops.equal(
                ops.mod(step - start, float(self.precondition_frequency)), 0.0
            ),
        )
        if self.gradient_accumulation_steps:
            # Keras's JAX optimizer runs `update_step` on every micro-step
            # and keeps the result of the last one only: do not pay for the
            # roots on the discarded micro-steps.
            acc = self.gradient_accumulation_steps
            last_micro = ops.equal(ops.mod(self._iterations + 1, acc), 0)
            recompute = ops.logical_and(recompute, last_micro)

        roots = []
        for use, stats, root_vars, gram in (
            (
                left,
                self._left_stats,
                self._left_roots,
                matrix_functions.left_gram,
            ),
            (
                right,
                self._right_stats,
                self._right_roots,
                matrix_functions.right_gram,
            ),
        ):
            if not use:
                roots.append(None)
                continue
            stat_var, root_var = stats[i], root_vars[i]
            stat_new = matrix_functions.ema_statistics(
                ops.cast(stat_var, "float32"), gram(g2), self.beta2
            )
            root_old = ops.cast(root_var, "float32")
            root_new = self._maybe_recompute(recompute, stat_new, root_old, p)
            new_state.append((stat_var, stat_new))
            new_state.append((root_var, root_new))
            roots.append(root_new)

        s = d2
        if roots[0] is not None:
            s = ops.matmul(roots[0], s)
        if roots[1] is not None:
            s = ops.matmul(s, roots[1])
        s = ops.reshape(s, ops.shape(direction))
        if reference is None:
            return ops.where(active, s, direction)
        s = grafting_lib.graft(s, reference)
        return ops.where(active, s, reference)

    def _maybe_recompute(self, recompute, stat, root_old, p):
        def compute():
            root, ok = matrix_functions.matrix_inverse_pth_root(
                stat,
                p,
                epsilon=self.matrix_epsilon,
                relative_floor=self.relative_matrix_epsilon,
            )
            return ops.where(ok, root, root_old)

        always = (
            self.precondition_frequency == 1
            and self.start_preconditioning_step == 1
            and not self.gradient_accumulation_steps
        )
        if always:
            return compute()
        concrete = _concrete_bool(recompute)
        if concrete is not None:
            return compute() if concrete else root_old
        return ops.cond(recompute, compute, lambda: root_old)


def _concrete_bool(value):
    """`bool(value)` in eager execution, `None` while tracing.

    Eager `ops.cond` on JAX traces and compiles both branches (here an
    eigendecomposition) at every call; when the predicate is a concrete
    value a Python branch computes the same result at a fraction of the
    cost. Tracers (JAX `jit`) and symbolic tensors (`tf.function`) refuse
    `bool()`, and then `ops.cond` is used.
    """
    try:
        return bool(value)
    except Exception:
        return None


@keras.saving.register_keras_serializable(package="keras_gr")
class Shampoo(_StructuredPreconditioner):
    """Two-sided Shampoo with grafting, momentum and an Adam fallback.

    For every matrix variable `W` (m x n, gradient `G`) the optimizer keeps
    Kronecker-factor statistics on both sides

        L = beta2 * L + (1 - beta2) * G G^T      (m x m)
        R = beta2 * R + (1 - beta2) * G^T G      (n x n)

    (`beta2 = 1` keeps the AdaGrad sums of the paper), recomputes the inverse
    roots `L^(-1/4)`, `R^(-1/4)` every `precondition_frequency` steps (cached
    in between; the statistics are updated every step) and steps with

        D = momentum direction of G          (bias-corrected EMA, Nesterov opt.)
        S = L^(-1/4) D R^(-1/4)
        W = W - lr * graft(S)

    `OneSidedShampoo` is the same optimizer with one factor only, on the
    smaller side, and root exponent 1/2.

    Choices the paper leaves open (reconstructed from the public
    implementations, google-research scalable_shampoo and
    facebookresearch distributed_shampoo, documented and tested here):

    - *Momentum* is one EMA buffer on the raw gradient,
      `m = beta1 m + (1 - beta1) g`, bias-corrected (`m / (1 - beta1^t)`);
      Nesterov uses `(beta1 m + (1 - beta1) g) / (1 - beta1^(t+1))`. The
      preconditioner is applied to this direction. The same buffer is the
      Adam graft's first moment, so that before
      `start_preconditioning_step` (or for fallback variables) the update
      is exactly Keras `Adam(beta_1=beta1, beta_2=grafting_beta2,
      epsilon=epsilon)`.
    - *Grafting* rescales `S` per variable to the Frobenius norm of the
      grafting optimizer's update: `"adam"` (Keras Adam, above),
      `"adagrad"` (Keras `Adagrad` with a zero initial accumulator on the
      momentum direction), `"sgd"` (the momentum direction itself) or
      `"none"` (`S` unscaled: the paper's update when `beta1 = 0`).
    - *Fallback*: 1-D variables (biases, norms), scalars, embeddings
      (variables whose path contains "embedding", if `exclude_embeddings`),
      variables whose path matches a regex of `exclude_layers`, and
      variables with no side within `max_preconditioner_dim` get the
      grafting optimizer's update (Adam when `grafting="none"`).
    - *Tensors of rank > 2* (convolution kernels `(..., in, out)`) are
      viewed as `(prod(shape[:-1]), shape[-1])`.
    - *Sides*: a side longer than `max_preconditioner_dim` gets no factor
      (identity); the root exponent is `1 / (2 k)` with `k` the number of
      factors a variable has.
    - *Inverse roots*: float32 always, symmetrised, by eigendecomposition
      with eigenvalues floored at
      `relative_matrix_epsilon * lambda_max + matrix_epsilon`
      (`keras_gr.optimizers.matrix_functions.matrix_inverse_pth_root`).
      The relative floor keeps rank-deficient statistics reproducible. A
      root with NaN/Inf keeps the previous root; roots start at identity.
    - *Non-finite gradients*: a step whose gradient for a variable has a
      NaN/Inf leaves that variable and all its state unchanged.
    - *Gradient accumulation*: under JAX, Keras runs `update_step` on every
      micro-step and discards all but the last; roots are only recomputed
      on that last micro-step (no wasted eigendecompositions).
    - *Distribution*: momentum and grafting state inherit the variable's
      layout (`add_variable_from_reference`); the statistics and roots get
      an explicit replicated layout `TensorLayout([None, None])` on the
      distribution's mesh. They are at most `max_preconditioner_dim`
      square, and the eigendecomposition runs redundantly on every device.
      Under `DataParallel` the trajectory equals the single-device one.

    Args:
        learning_rate: float or schedule. Defaults to `0.001` (an Adam
            learning rate, thanks to grafting).
        beta1: momentum decay in `[0, 1)`; `0` disables momentum (no buffer
            is created). Defaults to `0.9`.
        beta2: decay of the statistics in `[0, 1]`; `1` keeps the plain sum
            (AdaGrad). Defaults to `0.999`.
        epsilon: denominator term of the Adam / Adagrad graft and fallback.
            Defaults to `1e-7`.
        nesterov: Nesterov momentum. Defaults to `False`.
        grafting: `"adam"`, `"adagrad"`, `"sgd"` or `"none"`. Defaults to
            `"adam"`.
        grafting_beta2: second-moment decay of the Adam graft. Defaults to
            `0.999`.
        precondition_frequency: recompute the inverse roots every this many
            steps. Defaults to `10`.
        start_preconditioning_step: first (1-based) step that uses the
            preconditioner; earlier steps use the grafting update (plain
            momentum SGD with `grafting="none"`). Statistics accumulate
            from step 1. Defaults to `1`.
        max_preconditioner_dim: longest side that gets a factor. Defaults to
            `2048`.
        matrix_epsilon: absolute eigenvalue floor of the roots. Defaults to
            `1e-12`.
        relative_matrix_epsilon: eigenvalue floor relative to the largest
            eigenvalue. Defaults to `1e-6`.
        exclude_embeddings: give embeddings the fallback update. Defaults
            to `True`.
        exclude_layers: list of regexes on variable paths that get the
            fallback update. Defaults to `None`.
        **kwargs: the base `keras.optimizers.Optimizer` arguments
            (`weight_decay` (decoupled, AdamW-style), `clipnorm`,
            `clipvalue`, `global_clipnorm`, `use_ema`, `ema_momentum`,
            `ema_overwrite_frequency`, `loss_scale_factor`,
            `gradient_accumulation_steps`, `name`).

    Example:

    ```python
    model.compile(
        optimizer=keras_gr.optimizers.Shampoo(learning_rate=1e-3),
        loss="mse",
    )
    ```

    References:
        - Gupta, Koren, Singer, "Shampoo: Preconditioned Stochastic Tensor
          Optimization", arXiv:1802.09568.
        - Xie, Wang, Reddi, Kumar, Li, "Structured Preconditioners in
          Adaptive Optimization: A Unified Analysis", arXiv:2503.10537.
    """

    _one_sided = False

    def __init__(
        self,
        learning_rate=0.001,
        beta1=0.9,
        beta2=0.999,
        epsilon=1e-7,
        nesterov=False,
        grafting="adam",
        grafting_beta2=0.999,
        precondition_frequency=10,
        start_preconditioning_step=1,
        max_preconditioner_dim=2048,
        matrix_epsilon=1e-12,
        relative_matrix_epsilon=1e-6,
        exclude_embeddings=True,
        exclude_layers=None,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        if name is None:
            name = "one_sided_shampoo" if self._one_sided else "shampoo"
        _check_positive(
            "max_preconditioner_dim", max_preconditioner_dim, integer=True
        )
        super().__init__(
            learning_rate,
            beta1=beta1,
            beta2=beta2,
            epsilon=epsilon,
            nesterov=nesterov,
            grafting=grafting,
            grafting_beta2=grafting_beta2,
            precondition_frequency=precondition_frequency,
            start_preconditioning_step=start_preconditioning_step,
            matrix_epsilon=matrix_epsilon,
            relative_matrix_epsilon=relative_matrix_epsilon,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self.max_preconditioner_dim = max_preconditioner_dim
        self.exclude_embeddings = bool(exclude_embeddings)
        self.exclude_layers = list(exclude_layers or [])

    def _route(self, variable):
        shape = tuple(int(d) for d in variable.shape)
        if len(shape) < 2:
            return None
        path = getattr(variable, "path", None) or str(variable.name)
        if self.exclude_embeddings and "embedding" in path.lower():
            return None
        for pattern in self.exclude_layers:
            if re.search(pattern, path):
                return None
        cols = shape[-1]
        rows = 1
        for d in shape[:-1]:
            rows *= d
        limit = self.max_preconditioner_dim
        if self._one_sided:
            if min(rows, cols) > limit:
                return None
            left = rows <= cols
            return (rows, cols, left, not left)
        left, right = rows <= limit, cols <= limit
        if not (left or right):
            return None
        return (rows, cols, left, right)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta1": self.beta1,
                "beta2": self.beta2,
                "epsilon": self.epsilon,
                "nesterov": self.nesterov,
                "grafting": self.grafting,
                "grafting_beta2": self.grafting_beta2,
                "precondition_frequency": self.precondition_frequency,
                "start_preconditioning_step": (self.start_preconditioning_step),
                "max_preconditioner_dim": self.max_preconditioner_dim,
                "matrix_epsilon": self.matrix_epsilon,
                "relative_matrix_epsilon": self.relative_matrix_epsilon,
                "exclude_embeddings": self.exclude_embeddings,
                "exclude_layers": self.exclude_layers,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_gr")
class OneSidedShampoo(Shampoo):
    """One-sided Shampoo: one Kronecker factor, on the smaller side.

    The practical optimizer of "Structured Preconditioners in Adaptive
    Optimization: A Unified Analysis" (Xie et al., arXiv:2503.10537): for an
    m x n matrix variable with m <= n (otherwise the transposed roles),

        L = beta2 * L + (1 - beta2) * G G^T          (m x m)
        W = W - lr * graft(L^(-1/2) D)

    with `D` the (bias-corrected) momentum of the gradient and the root
    recomputed every `precondition_frequency` steps. For m > n the factor is
    `R = ... G^T G` and the step `D R^(-1/2)`. With `beta1=0`, `beta2=1`,
    `grafting="none"`, `precondition_frequency=1` this is exactly the
    paper's one-sided Shampoo `W -= lr (sum_s G_s G_s^T)^(-1/2) G`, up to the
    eigenvalue floor. State: m^2 statistics + m^2 cached root per matrix,
    plus the momentum and grafting moments.

    Every other choice (momentum, grafting, fallback, floors, layouts,
    non-finite handling, accumulation) is shared with and documented in
    `keras_gr.optimizers.Shampoo`; the arguments are the same.

    Example:

    ```python
    model.compile(
        optimizer=keras_gr.optimizers.OneSidedShampoo(
            learning_rate=1e-3, precondition_frequency=10
        ),
        loss="sparse_categorical_crossentropy",
    )
    ```

    References:
        - Xie, Wang, Reddi, Kumar, Li, "Structured Preconditioners in
          Adaptive Optimization: A Unified Analysis", arXiv:2503.10537.
    """

    _one_sided = True
