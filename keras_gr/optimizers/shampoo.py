"""Shampoo (one- and two-sided) as Keras 3 optimizers.

One implementation, `_StructuredPreconditioner`, serves `OneSidedShampoo`,
`Shampoo` and the comparison family in `adagrad_family.py`
(`FullMatrixAdagrad`, `AdagradNorm`): each optimizer only decides, in
`build`, how a variable is viewed as a tensor and which of its axes get a
Kronecker factor; the shared machinery blocks long axes, keeps the
statistics, recomputes (staggered) batched inverse roots and grafts.
"""

import math
import re
import warnings

import keras
from keras import ops

from keras_gr import _backend
from keras_gr import _validation
from keras_gr.optimizers import grafting as grafting_lib
from keras_gr.optimizers import matrix_functions

FALLBACK_WARNING_FRACTION = 0.5
"""`build` warns when less than this fraction of the trainable parameters
is preconditioned (the rest gets the grafting optimizer's update)."""


class _Plan:
    """How one variable is preconditioned (Python metadata from `build`).

    `view` is the tensor the variable is reshaped to; `factored[a]` says
    whether view axis `a` gets a Kronecker factor; a factored axis of
    length `d` is split into `blocks[a]` balanced blocks of length
    `block[a] = ceil(d / blocks[a])` (the last one zero-padded); unfactored
    axes are never split. Every block gets one `(block[a], block[a])`
    factor per factored axis; the blocks of a variable are stacked, so each
    axis's factors form one `(num_blocks, b, b)` tensor (one batched root).
    """

    def __init__(self, shape, view, factored, block_size):
        self.shape = tuple(shape)
        self.view = tuple(view)
        self.factored = tuple(bool(f) for f in factored)
        blocks, block = [], []
        for d, f in zip(self.view, self.factored):
            n = 1
            if f and block_size is not None and d > block_size:
                n = -(-d // block_size)
            blocks.append(n)
            block.append(-(-d // n))
        self.blocks = tuple(blocks)
        self.block = tuple(block)
        self.num_blocks = math.prod(self.blocks)
        self.axes = tuple(a for a, f in enumerate(self.factored) if f)
        self.p = 2.0 * len(self.axes)

    @property
    def padded(self):
        return tuple(n * b for n, b in zip(self.blocks, self.block))

    def factor_shapes(self):
        n = self.num_blocks
        return [(n, self.block[a], self.block[a]) for a in self.axes]

    def root_cost(self):
        """Relative cost of recomputing all roots (sum of N b^3)."""
        return sum(n * b**3 for n, b, _ in self.factor_shapes())


def _to_blocks(x, plan):
    """`x` (the variable's shape) as `(num_blocks, *plan.block)`."""
    x = ops.reshape(x, plan.view)
    pads = [(0, p - d) for p, d in zip(plan.padded, plan.view)]
    if any(hi for _, hi in pads):
        x = ops.pad(x, pads)
    k = len(plan.view)
    if plan.num_blocks == 1:
        return ops.reshape(x, (1, *plan.block))
    interleaved = []
    for n, b in zip(plan.blocks, plan.block):
        interleaved += [n, b]
    x = ops.reshape(x, interleaved)
    perm = [2 * a for a in range(k)] + [2 * a + 1 for a in range(k)]
    x = ops.transpose(x, perm)
    return ops.reshape(x, (plan.num_blocks, *plan.block))


def _from_blocks(x, plan):
    """Inverse of `_to_blocks`: back to the variable's shape."""
    k = len(plan.view)
    if plan.num_blocks == 1:
        x = ops.reshape(x, plan.padded)
    else:
        x = ops.reshape(x, (*plan.blocks, *plan.block))
        perm = []
        for a in range(k):
            perm += [a, k + a]
        x = ops.transpose(x, perm)
        x = ops.reshape(x, plan.padded)
    if plan.padded != plan.view:
        x = ops.slice(x, [0] * k, plan.view)
    return ops.reshape(x, plan.shape)


def _axis_gram(x, axis):
    """Per-block `X_(axis) X_(axis)^T` of blocked `x`: `(N, b, b)`, the
    contraction of every other axis (the tensor-Shampoo statistic)."""
    x = ops.moveaxis(x, axis + 1, 1)
    n, b = x.shape[0], x.shape[1]
    x = ops.reshape(x, (n, b, -1))
    return ops.matmul(x, ops.swapaxes(x, -1, -2))


def _apply_on_axis(x, root, axis):
    """Multiplies every block of `x` along `axis` by its `(b, b)` root."""
    x = ops.moveaxis(x, axis + 1, 1)
    moved = x.shape
    x = ops.reshape(x, (moved[0], moved[1], -1))
    x = ops.reshape(ops.matmul(root, x), moved)
    return ops.moveaxis(x, 1, axis + 1)


class _StructuredPreconditioner(keras.optimizers.Optimizer):
    """Shared machinery of the matrix-preconditioned optimizers.

    Subclasses implement `_route(variable)`, returning a string (why the
    variable gets the fallback update) or `(view, factored)`: the tensor
    view of the variable and which of its axes get a Kronecker factor. The
    exponent of each factor's inverse root is `2 * number_of_factors`.
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
        block_size=None,
        stagger_roots=False,
        root_method="eigh",
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
        if not callable(learning_rate) and not isinstance(
            learning_rate, keras.optimizers.schedules.LearningRateSchedule
        ):
            learning_rate = _validation.check_positive(
                "learning_rate", learning_rate
            )
        beta1 = _validation.check_number(
            "beta1", beta1, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        beta2 = _validation.check_fraction("beta2", beta2, allow_zero=True)
        grafting_beta2 = _validation.check_fraction(
            "grafting_beta2", grafting_beta2, allow_zero=True
        )
        epsilon = _validation.check_positive("epsilon", epsilon)
        matrix_epsilon = _validation.check_positive(
            "matrix_epsilon", matrix_epsilon
        )
        relative_matrix_epsilon = _validation.check_number(
            "relative_matrix_epsilon",
            relative_matrix_epsilon,
            minimum=0.0,
            maximum=1.0,
            max_inclusive=False,
        )
        precondition_frequency = _validation.check_integer(
            "precondition_frequency", precondition_frequency
        )
        start_preconditioning_step = _validation.check_integer(
            "start_preconditioning_step", start_preconditioning_step
        )
        if block_size is not None:
            block_size = _validation.check_integer("block_size", block_size)
        root_method = _validation.check_choice(
            "root_method", root_method, matrix_functions.ROOT_METHODS
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
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.nesterov = bool(nesterov)
        self.grafting = grafting_lib.validate_grafting(grafting)
        self.grafting_beta2 = grafting_beta2
        self.precondition_frequency = precondition_frequency
        self.start_preconditioning_step = start_preconditioning_step
        self.matrix_epsilon = matrix_epsilon
        self.relative_matrix_epsilon = relative_matrix_epsilon
        self.block_size = block_size
        self.stagger_roots = bool(stagger_roots)
        self.root_method = root_method
        self._step_finite = None

    def _route(self, variable):
        raise NotImplementedError

    def _state_layout(self, shape):
        """Layout of a `(N, b, b)` factor under a `keras.distribution`:
        the block axis `N` is sharded over the largest mesh axis whose size
        divides `N` (so each device holds, and under SPMD decomposes, its
        share of the blocks); a factor with no such axis (e.g. a single
        block) is replicated. `None` without a distribution."""
        distribution = keras.distribution.distribution()
        if distribution is None:
            return None
        mesh = getattr(distribution, "device_mesh", None)
        if mesh is None:
            return None
        best, best_size = None, 1
        for axis, size in zip(mesh.axis_names, mesh.shape):
            if size > best_size and shape[0] % size == 0:
                best, best_size = axis, size
        return keras.distribution.TensorLayout(
            [best] + [None] * (len(shape) - 1), mesh
        )

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        n = len(var_list)
        self._plans = [None] * n
        self._reasons = [None] * n
        self._paths = [None] * n
        self._graft_kinds = [None] * n
        self._momentums = [None] * n
        self._graft_moments = [None] * n
        self._statistics = [None] * n
        self._roots = [None] * n
        self._root_offsets = [0] * n
        for var in var_list:
            if self._overwrite_variable_with_gradient(var):
                continue
            i = self._get_variable_index(var)
            self._paths[i] = self._variable_path(var)
            route = self._route(var)
            plan = None
            if isinstance(route, str):
                self._reasons[i] = route
            else:
                view, factored = route
                plan = _Plan(var.shape, view, factored, self.block_size)
            self._plans[i] = plan
            kind = self.grafting
            if plan is None and kind == "none":
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
            if plan is None:
                continue
            prefix = self._variable_path(var).replace("/", "_")
            prefix = prefix.replace(":", "_")
            stats, roots = [], []
            for axis, shape in zip(plan.axes, plan.factor_shapes()):
                layout = self._state_layout(shape)
                stats.append(
                    self.add_variable(
                        shape=shape,
                        initializer="zeros",
                        dtype="float32",
                        layout=layout,
                        name=f"{prefix}_axis{axis}_statistics",
                    )
                )
                roots.append(
                    self.add_variable(
                        shape=shape,
                        initializer=_batched_identity,
                        dtype="float32",
                        layout=layout,
                        name=f"{prefix}_axis{axis}_root",
                    )
                )
            self._statistics[i] = stats
            self._roots[i] = roots
        self._assign_root_offsets()
        self._warn_if_mostly_fallback()

    def _assign_root_offsets(self):
        """Staggering: variable `i` recomputes its roots on the steps with
        `(t - start) % frequency == offset[i]` (and all at `t = start`).
        Offsets are chosen greedily, largest root cost first, onto the
        least-loaded offset, so no step pays for all the roots."""
        freq = self.precondition_frequency
        if not self.stagger_roots or freq == 1:
            return
        load = [0] * freq
        order = sorted(
            (i for i, plan in enumerate(self._plans) if plan is not None),
            key=lambda i: -self._plans[i].root_cost(),
        )
        for i in order:
            offset = min(range(freq), key=lambda k: (load[k], k))
            self._root_offsets[i] = offset
            load[offset] += self._plans[i].root_cost()

    @staticmethod
    def _variable_path(var):
        return str(getattr(var, "path", None) or var.name)

    def preconditioning_summary(self) -> dict:
        """What is preconditioned, per variable and in total.

        Returns a dict with `"variables"`: one entry per trainable variable
        (`path`, `shape`, `parameters`, `preconditioned`, `reason` of the
        fallback or `None`, `blocks` (number of blocks), `factors` (the
        `(blocks, b, b)` factor shapes), `root_exponent`, `root_offset`),
        and the totals `"parameters"`, `"preconditioned_parameters"`,
        `"preconditioned_fraction"`, `"fallback_parameters"` and
        `"factor_floats"` (statistics + roots, float32 entries). Call it
        after `build` (after the first training step, or
        `optimizer.build(model.trainable_variables)`).
        """
        if not self.built:
            raise ValueError(
                "`preconditioning_summary()` needs a built optimizer: call "
                "`optimizer.build(model.trainable_variables)` or train one "
                "step first. Received: an optimizer that is not built"
            )
        rows = []
        total = pre = floats = 0
        for i, var in enumerate(self._trainable_variables):
            if self._paths[i] is None:
                continue
            plan = self._plans[i]
            size = math.prod(int(d) for d in var.shape)
            total += size
            entry = {
                "path": self._paths[i],
                "shape": tuple(int(d) for d in var.shape),
                "parameters": size,
                "preconditioned": plan is not None,
                "reason": self._reasons[i],
                "blocks": 0,
                "factors": [],
                "root_exponent": None,
                "root_offset": None,
            }
            if plan is not None:
                pre += size
                shapes = plan.factor_shapes()
                floats += 2 * sum(math.prod(s) for s in shapes)
                entry.update(
                    blocks=plan.num_blocks,
                    factors=shapes,
                    root_exponent=-1.0 / plan.p,
                    root_offset=self._root_offsets[i],
                )
            rows.append(entry)
        return {
            "variables": rows,
            "parameters": total,
            "preconditioned_parameters": pre,
            "fallback_parameters": total - pre,
            "preconditioned_fraction": pre / total if total else 0.0,
            "factor_floats": floats,
        }

    def _warn_if_mostly_fallback(self):
        summary = self.preconditioning_summary()
        fraction = summary["preconditioned_fraction"]
        if summary["parameters"] and fraction < FALLBACK_WARNING_FRACTION:
            reasons = sorted(
                {
                    v["reason"]
                    for v in summary["variables"]
                    if v["reason"] is not None
                }
            )
            warnings.warn(
                f"{type(self).__name__}: only {100 * fraction:.1f}% of the "
                f"{summary['parameters']} trainable parameters are "
                f"preconditioned; the rest get the `{self.grafting}` "
                f"grafting/fallback update (reasons: {reasons}). See "
                "`preconditioning_summary()`.",
                stacklevel=3,
            )

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # One finite flag for the whole step: a NaN/Inf anywhere leaves
        # every variable and all optimizer state unchanged.
        # (Under a multi-replica `tf.distribute` strategy the update runs
        # in a cross-replica context: each variable checks its own.)
        flags = [ops.all(ops.isfinite(g)) for g in grads if g is not None]
        self._step_finite = None
        if flags and _backend.distributed_replicas(self) == 1:
            self._step_finite = ops.all(ops.stack(flags))
        try:
            super()._backend_update_step(
                grads, trainable_variables, learning_rate
            )
        finally:
            self._step_finite = None

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        plan = self._plans[i]
        kind = self._graft_kinds[i]
        step = ops.cast(self.iterations + 1, "float32")
        lr = ops.cast(learning_rate, "float32")
        g = ops.cast(gradient, "float32")
        finite = self._step_finite
        if finite is None:
            finite = ops.all(ops.isfinite(g))
        g = ops.where(ops.isfinite(g), g, ops.zeros_like(g))
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

        if plan is None:
            update = reference
        else:
            update = self._preconditioned_update(
                i, plan, g, direction, reference, step, new_state
            )

        w = ops.cast(variable, "float32")
        w_new = w - lr * ops.reshape(update, ops.shape(w))
        new_state.append((variable, w_new))
        for target, value in new_state:
            old = ops.cast(target, "float32")
            value = ops.where(finite, value, old)
            self.assign(target, ops.cast(value, target.dtype))

    def _recompute_flag(self, i, step):
        start = float(self.start_preconditioning_step)
        active = step >= start
        offset = float(self._root_offsets[i])
        due = ops.equal(
            ops.mod(step - start, float(self.precondition_frequency)), offset
        )
        recompute = ops.logical_and(
            active, ops.logical_or(due, ops.equal(step, start))
        )
        if self.gradient_accumulation_steps:
            # Keras's JAX optimizer runs `update_step` on every micro-step
            # and keeps the result of the last one only: do not pay for the
            # roots on the discarded micro-steps.
            acc = self.gradient_accumulation_steps
            last_micro = ops.equal(ops.mod(self._iterations + 1, acc), 0)
            recompute = ops.logical_and(recompute, last_micro)
        return active, recompute

    def _preconditioned_update(
        self, i, plan, g, direction, reference, step, new_state
    ):
        active, recompute = self._recompute_flag(i, step)
        with _backend.highest_matmul_precision():
            g_blocks = _to_blocks(g, plan)
            s = _to_blocks(direction, plan)
            # Bias correction of the EMA statistics (`beta2 < 1`): the
            # root is taken of `stat / (1 - beta2^t)`, so the first steps
            # are not `(1 - beta2)^(-1/p)` too large.
            correction = None
            if self.beta2 < 1.0:
                correction = 1.0 - ops.power(self.beta2, step)
            for axis, stat_var, root_var in zip(
                plan.axes, self._statistics[i], self._roots[i]
            ):
                stat_new = matrix_functions.ema_statistics(
                    ops.cast(stat_var, "float32"),
                    _axis_gram(g_blocks, axis),
                    self.beta2,
                )
                corrected = stat_new
                if correction is not None:
                    corrected = stat_new / correction
                root_old = ops.cast(root_var, "float32")
                root_new = self._maybe_recompute(
                    recompute, corrected, root_old, plan.p
                )
                new_state.append((stat_var, stat_new))
                new_state.append((root_var, root_new))
                s = _apply_on_axis(s, root_new, axis)
            s = _from_blocks(s, plan)
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
                method=self.root_method,
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


def _batched_identity(shape, dtype=None):
    """Initializer: a stack of identity matrices of shape `(N, b, b)`."""
    n, b = shape[0], shape[-1]
    eye = ops.eye(b, dtype=dtype or "float32")
    return ops.broadcast_to(eye, (n, b, b))


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
    """Two-sided (tensor) Shampoo with blocking, grafting and momentum.

    For every matrix variable `W` (m x n, gradient `G`) the optimizer keeps
    Kronecker-factor statistics on both sides

        L = beta2 * L + (1 - beta2) * G G^T      (m x m)
        R = beta2 * R + (1 - beta2) * G^T G      (n x n)

    (`beta2 = 1` keeps the AdaGrad sums of the paper), recomputes the inverse
    roots of the bias-corrected statistics `L / (1 - beta2^t)` every
    `precondition_frequency` steps (cached in between; the statistics are
    updated every step) and steps with

        D = momentum direction of G          (bias-corrected EMA, Nesterov opt.)
        S = L^(-1/4) D R^(-1/4)
        W = W - lr * graft(S)

    A tensor of rank k gets one factor per axis (`G_(a) G_(a)^T`, the
    contraction of every other axis) and roots `-1/(2k)` (Gupta et al.'s
    tensor Shampoo). `OneSidedShampoo` is the same optimizer with the
    largest axis left unpreconditioned (for a matrix: one factor, on the
    smaller side, root `-1/2`).

    The knobs that matter at scale:

    - `max_preconditioner_dim` (block size, default 1024): a factored axis
      longer than this is split into balanced blocks of at most this
      length (`ceil(d / ceil(d / max_preconditioner_dim))`, the last block
      zero-padded, which is exact), each with its own factors, as the
      public Shampoo implementations do. A 4096 x 4096 kernel gets 16
      blocks of 1024 x 1024 (two-sided: 2 x 16 factors of 1024 x 1024,
      128 MiB of float32 statistics + roots; one-sided: half). Root cost
      per parameter grows linearly with the block size.
    - `precondition_frequency` and `stagger_roots`: roots are recomputed
      every `precondition_frequency` steps, with the variables spread over
      the steps of the period (greedy on the `N b^3` cost) so no step pays
      for all of them; all roots are computed once at
      `start_preconditioning_step`.
    - `root_method`: `"eigh"` (default) or `"newton"` (coupled Newton, only
      matrix products: the fast choice on TPU and under TensorFlow, whose
      compiled `eigh` is slow); see `matrix_functions`.
    - `preconditioning_summary()` reports per variable and in total what is
      preconditioned; `build` warns when less than half of the parameters
      are.

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
    - *Statistics* are EMAs with `beta2` and the roots are taken of the
      bias-corrected `stat / (1 - beta2^t)` (with `grafting="none"` the
      first steps are otherwise `(1 - beta2)^(-1/p)` too large); with
      `beta1 = 0`, `beta2 = 1`, `grafting="none"`, frequency 1 this is
      the paper's AdaGrad-sum update.
    - *Grafting* rescales `S` per variable to the Frobenius norm of the
      grafting optimizer's update: `"adam"` (Keras Adam, above),
      `"adagrad"` (Keras `Adagrad` with a zero initial accumulator on the
      momentum direction), `"sgd"` (the momentum direction itself) or
      `"none"` (`S` unscaled).
    - *Fallback*: 1-D variables (biases, norms), scalars, embeddings
      (variables whose path contains "embedding", if `exclude_embeddings`),
      variables whose path matches a regex of `exclude_layers`, and (only
      with `blocking=False`) variables with no axis within
      `max_preconditioner_dim` get the grafting optimizer's update (Adam
      when `grafting="none"`).
    - *Axes*: axes of length 1 get no factor. With `blocking=False` an axis
      longer than `max_preconditioner_dim` gets no factor (identity).
      Rank > 2 kernels are preconditioned per axis (not flattened), so an
      attention kernel `(hidden, heads, head_dim)` or a convolution kernel
      `(kh, kw, in, out)` gets a factor on each of its axes, input axis
      included (two-sided); one-sided leaves out only its largest axis,
      the tensor analogue of "the smaller side" of a matrix (and never
      more expensive than two-sided).
    - *Inverse roots*: float32 always, symmetrised, at the highest matmul
      precision, of all blocks of a factor in one batched call, with the
      spectrum floored at `relative_matrix_epsilon * lambda_max +
      matrix_epsilon`
      (`keras_gr.optimizers.matrix_functions.matrix_inverse_pth_root`).
      The relative floor keeps rank-deficient statistics reproducible. A
      root with NaN/Inf keeps the previous root; roots start at identity.
    - *Non-finite gradients*: if any gradient of the step has a NaN/Inf,
      the whole step is skipped: no variable and no state changes (the
      same for every variable; Keras's decoupled `weight_decay`, applied
      before the update, is the one exception).
    - *Gradient accumulation*: under JAX, Keras runs `update_step` on every
      micro-step and discards all but the last; roots are only recomputed
      on that last micro-step (no wasted eigendecompositions).
    - *Distribution* (`keras.distribution`): momentum and grafting state
      inherit the variable's layout (`add_variable_from_reference`); the
      `(N, b, b)` statistics and roots of a blocked variable are sharded
      along the block axis `N` over the largest mesh axis whose size
      divides `N` (memory per device: `2 * 4 * N * b^2 / axis_size`
      bytes per factor; with the Newton root, which is only batched
      matmuls, the root work is split the same way), else replicated.
      Under `DataParallel` and `ModelParallel` the trajectory equals the
      single-device one (tested on 8 virtual devices to 1e-4).

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
        max_preconditioner_dim: the block size: longest factor. Defaults to
            `1024`.
        blocking: split axes longer than `max_preconditioner_dim` into
            blocks (`True`) or give them no factor (`False`). Defaults to
            `True`.
        stagger_roots: spread the root recomputations of the variables
            over the `precondition_frequency` steps. Defaults to `True`.
        root_method: `"eigh"` or `"newton"`. Defaults to `"eigh"`.
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

    >>> import keras, numpy as np
    >>> from keras_gr.optimizers import Shampoo
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> opt = Shampoo(learning_rate=1e-2, max_preconditioner_dim=4)
    >>> model.compile(optimizer=opt, loss="mse")
    >>> _ = model.fit(np.ones((4, 8)), np.ones((4, 4)), verbose=0)
    >>> opt.preconditioning_summary()["variables"][0]["factors"]
    [(2, 4, 4), (2, 4, 4)]

    References:
        - Gupta, Koren, Singer, "Shampoo: Preconditioned Stochastic Tensor
          Optimization", arXiv:1802.09568.
        - Xie, Wang, Reddi, Kumar, Li, "Structured Preconditioners in
          Adaptive Optimization: A Unified Analysis", arXiv:2503.10537.
    """

    _one_sided = False

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-7,
        nesterov: bool = False,
        grafting: str = "adam",
        grafting_beta2: float = 0.999,
        precondition_frequency: int = 10,
        start_preconditioning_step: int = 1,
        max_preconditioner_dim: int = 1024,
        blocking: bool = True,
        stagger_roots: bool = True,
        root_method: str = "eigh",
        matrix_epsilon: float = 1e-12,
        relative_matrix_epsilon: float = 1e-6,
        exclude_embeddings: bool = True,
        exclude_layers: list | None = None,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str | None = None,
        **kwargs,
    ) -> None:
        if name is None:
            name = "one_sided_shampoo" if self._one_sided else "shampoo"
        max_preconditioner_dim = _validation.check_integer(
            "max_preconditioner_dim", max_preconditioner_dim
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
            block_size=max_preconditioner_dim if blocking else None,
            stagger_roots=stagger_roots,
            root_method=root_method,
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
        self.blocking = bool(blocking)
        self.exclude_embeddings = bool(exclude_embeddings)
        self.exclude_layers = list(exclude_layers or [])

    def _route(self, variable):
        shape = tuple(int(d) for d in variable.shape)
        if len(shape) < 2:
            return "rank < 2"
        path = self._variable_path(variable)
        if self.exclude_embeddings and "embedding" in path.lower():
            return "embedding (exclude_embeddings)"
        for pattern in self.exclude_layers:
            if re.search(pattern, path):
                return f"exclude_layers {pattern!r}"
        factored = [d > 1 for d in shape]
        if self._one_sided:
            # Leave out the largest axis (the last one among equals, so a
            # square matrix is preconditioned on its left side).
            largest = max(range(len(shape)), key=lambda a: (shape[a], a))
            factored[largest] = False
        if not self.blocking:
            limit = self.max_preconditioner_dim
            factored = [f and d <= limit for f, d in zip(factored, shape)]
        if not any(factored):
            if not self.blocking and any(d > 1 for d in shape):
                return "no axis within max_preconditioner_dim (blocking off)"
            return "no axis to precondition"
        return shape, factored

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
                "blocking": self.blocking,
                "stagger_roots": self.stagger_roots,
                "root_method": self.root_method,
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
    eigenvalue floor (and the bias correction of the statistics when
    `beta2 < 1`). State: m^2 statistics + m^2 cached root per matrix,
    plus the momentum and grafting moments.

    At scale: a smaller side longer than `max_preconditioner_dim` (1024)
    is split into blocks (a 4096 x 11008 kernel: 4 blocks of 1024 x 11008,
    each with a 1024 x 1024 factor); a kernel of rank > 2 gets a factor on
    every axis but its largest, with root `-1/(2k)` for `k` factors (see
    `Shampoo`); `preconditioning_summary()` says what is preconditioned.

    Every other choice (momentum, grafting, fallback, floors, blocking,
    staggered roots, layouts, non-finite handling, accumulation) is shared
    with and documented in `keras_gr.optimizers.Shampoo`; the arguments
    are the same.

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
