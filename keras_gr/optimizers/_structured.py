"""The structured-preconditioner base of the Shampoo family.

One implementation, `StructuredPreconditioner`, serves `Shampoo`,
`OneSidedShampoo`, `FullMatrixAdagrad` and `AdagradNorm` ("Structured
Preconditioners in Adaptive Optimization: A Unified Analysis", Xie et al.,
arXiv:2503.10537): each optimizer only decides, in `_route`, how a
variable is viewed as a tensor and which of its axes get a Kronecker
factor. The rest is shared and composed of named steps, as optax's first
Shampoo composes its preconditioner's pure methods:

1. momentum of the gradient (`_momentum`),
2. the grafting optimizer's update, the whole update of a variable that
   is not preconditioned (`_graft_update`),
3. the statistics `L = beta_2 L + (1 - beta_2) G G^T` per block
   (`_new_statistics`, blocks from `_blocking`),
4. their inverse roots, staggered over the period and batched across
   variables (`_new_roots`, schedule from `_staggering`),
5. the roots applied to the momentum and grafted (`_preconditioned_update`),
6. `W -= learning_rate * update`, every write kept only on a finite step.

The class is private: the public optimizers document its behaviour
(`keras_gr.optimizers.Shampoo` holds the full description).
"""

import math
import warnings

import keras
from keras import ops

from keras_gr import _backend
from keras_gr import _validation
from keras_gr.optimizers import _blocking
from keras_gr.optimizers import _staggering
from keras_gr.optimizers import grafting as grafting_lib
from keras_gr.optimizers import matrix_functions

FALLBACK_WARNING_FRACTION = 0.5
"""`build` warns when less than this fraction of the trainable parameters
is preconditioned (the rest gets the grafting optimizer's update)."""

PAPER_SETTINGS = dict(
    beta_1=0.0,
    beta_2=1.0,
    epsilon=1e-7,
    nesterov=False,
    grafting="none",
    grafting_beta_2=0.999,
    precondition_frequency=1,
    start_preconditioning_step=1,
    statistics_frequency=1,
)
"""The paper's meta-algorithm: no momentum, summed statistics, no
grafting, a root every step (`AdagradNorm`, `FullMatrixAdagrad`; `epsilon`
and `grafting_beta_2` are unused: every variable is preconditioned)."""


class StructuredPreconditioner(keras.optimizers.Optimizer):
    """Shared machinery of the matrix-preconditioned optimizers.

    Subclasses implement `_route(variable)`, returning a string (why the
    variable gets the fallback update) or `(view, factored)`: the tensor
    view of the variable and which of its axes get a Kronecker factor. The
    exponent of each factor's inverse root is `2 * number_of_factors`.
    Every argument is keyword-only and has the meaning documented in
    `keras_gr.optimizers.Shampoo`; `block_size` is its
    `max_preconditioner_dim` (`None`: no blocking).
    """

    def __init__(
        self,
        learning_rate,
        *,
        beta_1,
        beta_2,
        epsilon,
        nesterov,
        grafting,
        grafting_beta_2,
        precondition_frequency,
        start_preconditioning_step,
        matrix_epsilon,
        relative_matrix_epsilon,
        block_size=None,
        stagger_roots=False,
        root_method="eigh",
        statistics_frequency=1,
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
        beta_1 = _validation.check_number(
            "beta_1", beta_1, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        beta_2 = _validation.check_fraction("beta_2", beta_2, allow_zero=True)
        grafting_beta_2 = _validation.check_fraction(
            "grafting_beta_2", grafting_beta_2, allow_zero=True
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
        statistics_frequency = _validation.check_integer(
            "statistics_frequency", statistics_frequency
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
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.nesterov = bool(nesterov)
        self.grafting = grafting_lib.validate_grafting(grafting)
        self.grafting_beta_2 = grafting_beta_2
        self.precondition_frequency = precondition_frequency
        self.start_preconditioning_step = start_preconditioning_step
        self.matrix_epsilon = matrix_epsilon
        self.relative_matrix_epsilon = relative_matrix_epsilon
        self.block_size = block_size
        self.stagger_roots = bool(stagger_roots)
        self.root_method = root_method
        self.statistics_frequency = statistics_frequency
        self._step_finite = None
        self._pending = None

    def _route(self, variable):
        raise NotImplementedError

    def _state_layout(self, shape):
        """`(layout, shards)` of a `(N, b, b)` factor under a
        `keras.distribution`: the block axis `N` is sharded over the
        largest mesh axis whose size divides `N` (so each device holds,
        and under SPMD decomposes, its share of the blocks); a factor with
        no such axis (e.g. a single block) is replicated (`shards` 1).
        `(None, 1)` without a distribution."""
        distribution = keras.distribution.distribution()
        mesh = getattr(distribution, "device_mesh", None)
        if mesh is None:
            return None, 1
        best, best_size = None, 1
        for axis, size in zip(mesh.axis_names, mesh.shape):
            if size > best_size and shape[0] % size == 0:
                best, best_size = axis, size
        layout = keras.distribution.TensorLayout(
            [best] + [None] * (len(shape) - 1), mesh
        )
        return layout, best_size

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
        self._shards = {}  # (i, j) -> devices the factor's blocks span
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
                plan = _blocking.BlockPlan(
                    var.shape, view, factored, self.block_size
                )
            self._plans[i] = plan
            kind = self.grafting
            if plan is None and kind == "none":
                kind = "adam"
            self._graft_kinds[i] = kind
            if self.beta_1 > 0.0:
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
            for j, shape in enumerate(plan.factor_shapes()):
                axis = plan.axes[j]
                layout, self._shards[(i, j)] = self._state_layout(shape)
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
                        initializer=_blocking.batched_identity,
                        dtype="float32",
                        layout=layout,
                        name=f"{prefix}_axis{axis}_root",
                    )
                )
            self._statistics[i] = stats
            self._roots[i] = roots
        self._schedule = _staggering.schedule(
            self._plans,
            self._shards,
            self.precondition_frequency,
            self.stagger_roots,
            busy=_staggering.busy_offsets(
                self.precondition_frequency,
                self.statistics_frequency,
                self.start_preconditioning_step,
            ),
        )
        self._warn_if_mostly_fallback()

    @staticmethod
    def _variable_path(var):
        return str(getattr(var, "path", None) or var.name)

    def preconditioning_summary(self) -> dict:
        """What is preconditioned, per variable and in total.

        Returns a dict with `"variables"`: one entry per trainable variable
        (`path`, `shape`, `parameters`, `preconditioned`, `reason` of the
        fallback or `None`, `blocks` (number of blocks), `factors` (the
        `(blocks, b, b)` factor shapes), `root_exponent`, `root_offsets`
        (per factor, the step offset in the root period at which each
        block is recomputed)), and the totals `"parameters"`,
        `"preconditioned_parameters"`, `"preconditioned_fraction"`,
        `"fallback_parameters"`, `"factor_floats"` (statistics + roots,
        float32 entries) and `"root_cost_per_offset"` (sum of `b^3` of the
        blocks recomputed at each offset, per device for a sharded factor:
        the staggered root work). Call it
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
                "root_offsets": [],
            }
            if plan is not None:
                pre += size
                shapes = plan.factor_shapes()
                floats += 2 * sum(math.prod(s) for s in shapes)
                entry.update(
                    blocks=plan.num_blocks,
                    factors=shapes,
                    root_exponent=-1.0 / plan.p,
                    root_offsets=[tuple(o) for o in self._schedule.offsets[i]],
                )
            rows.append(entry)
        return {
            "variables": rows,
            "parameters": total,
            "preconditioned_parameters": pre,
            "fallback_parameters": total - pre,
            "preconditioned_fraction": pre / total if total else 0.0,
            "factor_floats": floats,
            "root_cost_per_offset": list(self._schedule.load),
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
        # in a cross-replica context: each variable checks its own, and
        # computes its own statistics and roots in `update_step`.)
        flags = [all_finite(g) for g in grads if g is not None]
        self._step_finite = None
        self._pending = None
        try:
            if _backend.distributed_replicas(self) == 1:
                if flags:
                    self._step_finite = ops.all(ops.stack(flags))
                # Statistics and roots of every variable first, so that
                # same-shaped blocks due on this step (across variables)
                # share one batched decomposition.
                self._pending = self._step_statistics_and_roots(
                    grads, trainable_variables
                )
            super()._backend_update_step(
                grads, trainable_variables, learning_rate
            )
        finally:
            self._step_finite = None
            self._pending = None

    def update_step(self, gradient, variable, learning_rate):
        # The paper's step for one variable (the statistics and roots of
        # the whole step were computed together in `_backend_update_step`
        # when possible). A variable with no factor (`plan is None`) gets
        # the grafting optimizer's update.
        i = self._get_variable_index(variable)
        step = ops.cast(self.iterations + 1, "float32")
        g = ops.cast(gradient, "float32")
        finite = self._step_finite
        if finite is None:
            finite = all_finite(g)
        writes = _Writes(finite)
        raw, scale = self._momentum(i, g, step, writes)
        reference = self._graft_update(i, g, raw, scale, step, writes)
        if self._plans[i] is None:
            update = reference
        else:
            update = self._preconditioned_update(
                i, g, raw, scale, reference, step, writes
            )
        w = ops.cast(variable, "float32")
        lr = ops.cast(learning_rate, "float32")
        w_new = w - lr * ops.reshape(update, ops.shape(w))
        writes.add(variable, w_new, guarded=False)
        writes.commit(self)

    def _momentum(self, i, g, step, writes):
        """Step 1: `m = beta_1 m + (1 - beta_1) g`, returned as `(raw,
        scale)` with the bias-corrected (optionally Nesterov) direction
        `D = raw * scale` (`scale` a scalar, `None` without momentum): a
        linear preconditioner is applied to `raw` and `scale` after it."""
        m = self._momentums[i]
        if m is None:
            return g, None
        m_new = writes.kept(
            m, self.beta_1 * ops.cast(m, "float32") + (1.0 - self.beta_1) * g
        )
        writes.add(m, m_new)
        return grafting_lib.momentum_direction_parts(
            m_new, g, self.beta_1, step, self.nesterov
        )

    def _graft_update(self, i, g, raw, scale, step, writes):
        """Step 2: the grafting optimizer's update of variable `i` (Adam,
        Adagrad or SGD on the momentum direction `D`), or `None` for
        `grafting="none"` on a preconditioned variable."""
        kind = self._graft_kinds[i]
        direction = raw if scale is None else raw * scale
        if kind == "sgd":
            return direction
        if kind == "adam":
            v = self._graft_moments[i]
            b2 = self.grafting_beta_2
            v_new = writes.kept(
                v, b2 * ops.cast(v, "float32") + (1.0 - b2) * ops.square(g)
            )
            writes.add(v, v_new)
            return grafting_lib.adam_direction(
                direction, v_new, b2, self.epsilon, step
            )
        if kind == "adagrad":
            acc = self._graft_moments[i]
            acc_new = writes.kept(acc, ops.cast(acc, "float32") + ops.square(g))
            writes.add(acc, acc_new)
            return grafting_lib.adagrad_direction(
                direction, acc_new, self.epsilon
            )
        return None

    def _preconditioned_update(self, i, g, raw, scale, reference, step, writes):
        """Steps 3-5: the preconditioned update of variable `i`, grafted
        onto `reference` unless that is `None`, from the direction
        `raw * scale`: the roots are applied to `raw` and `scale` after
        them, or not at all when grafting rescales the result anyway.
        Before `start_preconditioning_step` the update is `reference` (or
        the momentum direction without grafting)."""
        plan = self._plans[i]
        pending = self._pending
        if pending is not None and i in pending:
            stats_new, stats_guarded, roots_new, roots_guarded = pending[i]
        else:
            # Per-variable path (multi-replica `tf.distribute`): this
            # variable's statistics and roots alone.
            finite = writes.finite
            stats_new, stats_guarded = self._new_statistics(i, g, step, finite)
            olds = {
                (i, j): ops.cast(r, "float32")
                for j, r in enumerate(self._roots[i])
            }
            roots, roots_guarded = self._new_roots(
                {(i, j): s for j, s in enumerate(stats_new)}, olds, step, finite
            )
            roots_new = [roots[(i, j)] for j in range(len(stats_new))]
        start = float(self.start_preconditioning_step)
        active = step >= start
        with _backend.highest_matmul_precision():
            s = _blocking.to_blocks(raw, plan)
            for axis, stat_var, root_var, stat_new, root_new in zip(
                plan.axes,
                self._statistics[i],
                self._roots[i],
                stats_new,
                roots_new,
            ):
                writes.add(stat_var, stat_new, guarded=stats_guarded)
                writes.add(root_var, root_new, guarded=roots_guarded)
                s = _blocking.apply_on_axis(s, root_new, axis)
            s = _blocking.from_blocks(s, plan)
        if reference is None:
            if scale is not None:
                s, raw = s * scale, raw * scale
            return ops.where(active, s, raw)
        s = grafting_lib.graft(s, reference)
        return ops.where(active, s, reference)

    def _last_micro_step(self):
        """`None`, or under gradient accumulation whether this is the last
        micro-step (Keras's JAX optimizer runs `update_step` on every
        micro-step and keeps the last one's result only: statistics and
        roots are not paid for on the discarded ones)."""
        if not self.gradient_accumulation_steps:
            return None
        acc = self.gradient_accumulation_steps
        return ops.equal(ops.mod(self._iterations + 1, acc), 0)

    def _and_last_micro(self, flag):
        last = self._last_micro_step()
        return flag if last is None else ops.logical_and(flag, last)

    def _step_statistics_and_roots(self, grads, trainable_variables):
        """`{i: (new statistics, new roots)}` for every preconditioned
        variable of the step (roots batched across variables)."""
        step = ops.cast(self.iterations + 1, "float32")
        finite = self._step_finite
        stats, news, olds = {}, {}, {}
        for grad, var in zip(grads, trainable_variables):
            if grad is None:
                continue
            i = self._get_variable_index(var)
            if self._plans[i] is None:
                continue
            g = ops.cast(grad, "float32")
            stats[i] = self._new_statistics(i, g, step, finite)
            for j, s in enumerate(stats[i][0]):
                news[(i, j)] = s
                olds[(i, j)] = ops.cast(self._roots[i][j], "float32")
        roots, guarded = self._new_roots(news, olds, step, finite)
        return {
            i: (
                *stats[i],
                [roots[(i, j)] for j in range(len(stats[i][0]))],
                guarded,
            )
            for i in stats
        }

    def _new_statistics(self, i, g, step, finite=None):
        """`(new statistics of variable i, guarded)`.

        The statistics are updated on the steps `t` with
        `(t - 1) % statistics_frequency == 0`, under an `ops.cond` (the
        other steps do not pay for the `G G^T` products) whose predicate
        also requires the step's `finite` flag: such values are `guarded`
        (already kept unchanged on a non-finite step). With statistics on
        every step there is no cond and the caller masks them.
        """
        plan = self._plans[i]
        freq = self.statistics_frequency
        olds = [ops.cast(v, "float32") for v in self._statistics[i]]

        def update():
            with _backend.highest_matmul_precision():
                g_blocks = _blocking.to_blocks(g, plan)
                return [
                    matrix_functions.ema_statistics(
                        old, _blocking.axis_gram(g_blocks, axis), self.beta_2
                    )
                    for old, axis in zip(olds, plan.axes)
                ]

        if freq == 1 and not self.gradient_accumulation_steps:
            return update(), False
        due = self._and_last_micro(
            ops.equal(ops.mod(step - 1.0, float(freq)), 0.0)
        )
        concrete = _backend.concrete_bool(due)
        if concrete is not None:
            return (update() if concrete else olds), False
        if finite is not None:
            due = ops.logical_and(due, finite)
        guarded = finite is not None
        return list(ops.cond(due, update, lambda: list(olds))), guarded

    def _bias_correction(self, step):
        """`1 - beta_2^n` (`n` the number of statistics updates made by step
        `t`: `floor((t - 1) / statistics_frequency) + 1`), or `None` for
        `beta_2 == 1`. The roots are taken of `stat / (1 - beta_2^n)`, so the
        first steps are not `(1 - beta_2)^(-1/p)` too large; the division
        happens inside the root computation (not a pass over every
        statistic on every step)."""
        if self.beta_2 >= 1.0:
            return None
        freq = float(self.statistics_frequency)
        updates = ops.floor((step - 1.0) / freq) + 1.0
        return 1.0 - ops.power(self.beta_2, updates)

    def _root_due(self, offset, step):
        start = float(self.start_preconditioning_step)
        active = step >= start
        due = ops.equal(
            ops.mod(step - start, float(self.precondition_frequency)),
            float(offset),
        )
        recompute = ops.logical_and(
            active, ops.logical_or(due, ops.equal(step, start))
        )
        return self._and_last_micro(recompute)

    def _new_roots(self, stats, olds, step, finite=None):
        """`(roots, guarded)`: new roots `{(i, j): (N, b, b)}` of the
        (bias-corrected) factors `stats`, and whether they were computed
        under a cond that already required the step's `finite` flag.

        One batched decomposition per group of blocks that share `(b, p)`
        and their step offset (`_staggering.schedule`), under an
        `ops.cond` on whether that offset is due (and the step finite); a
        block whose root is not finite keeps its previous root.
        """
        always = (
            self.precondition_frequency == 1
            and self.start_preconditioning_step == 1
            and not self.gradient_accumulation_steps
        )
        correction = self._bias_correction(step)
        guarded = not always and finite is not None
        results = {}
        for key, members in self._schedule.groups.items():
            members = [m for m in members if (m[0], m[1]) in stats]
            if not members:
                continue
            b, p, offset = key[:3]
            runs = _staggering.runs(members)

            def compute(runs=runs, p=p):
                stat = _staggering.gather(stats, runs)
                if correction is not None:
                    stat = stat / correction
                old = _staggering.gather(olds, runs)
                root, _ = matrix_functions.matrix_inverse_pth_root(
                    stat,
                    p,
                    matrix_epsilon=self.matrix_epsilon,
                    relative_matrix_epsilon=self.relative_matrix_epsilon,
                    method=self.root_method,
                )
                ok = ops.logical_and(
                    ops.all(ops.isfinite(root), axis=(-2, -1)),
                    ops.all(ops.isfinite(stat), axis=(-2, -1)),
                )
                return ops.where(ok[:, None, None], root, old)

            def keep(runs=runs):
                return _staggering.gather(olds, runs)

            if always:
                result = compute()
            else:
                due = self._root_due(offset, step)
                concrete = _backend.concrete_bool(due)
                if concrete is not None:
                    guarded = False
                    result = compute() if concrete else keep()
                else:
                    if finite is not None:
                        due = ops.logical_and(due, finite)
                    result = ops.cond(due, compute, keep)
            results[key] = result
        roots = _staggering.scatter(results, self._schedule.slots, stats)
        return roots, guarded


class _Writes:
    """The new values of one variable's step: `(target, value, guarded)`.

    A value is kept only if the step is `finite`; `guarded` values were
    computed under an `ops.cond` that already required it (no `where`
    pass over them). A NaN/Inf in the gradient reaches only values that
    are then discarded, so the gradient is not sanitised (one pass less
    per variable and step). The moments are masked with `finite` where
    they are made (`kept`) and the masked value is what the update reads:
    the stored value is then the only reader of the old buffer (XLA would
    otherwise fuse the moment into both the store and the update, and
    copy the donated old buffer to keep it alive: two extra passes per
    variable).
    """

    def __init__(self, finite):
        self.finite = finite
        self._values = []

    def kept(self, old, new):
        """`new` on a finite step, else the old value (float32)."""
        return ops.where(self.finite, new, ops.cast(old, "float32"))

    def add(self, target, value, guarded=True):
        self._values.append((target, value, guarded))

    def commit(self, optimizer):
        """Assigns every value (the unguarded ones masked first)."""
        for target, value, guarded in self._values:
            if not guarded:
                value = ops.where(
                    self.finite, value, ops.cast(target, "float32")
                )
            optimizer.assign(target, ops.cast(value, target.dtype))


def all_finite(x):
    """Whether every entry of `x` is finite, as one reduction pass.

    `sum(x * 0)` is exactly 0 when every entry is finite and NaN as soon as
    one is NaN or +-Inf (`Inf * 0` is NaN). Unlike `all(isfinite(x))`,
    which XLA on CPU lowers to a boolean array and a tree of reductions,
    this fuses into a single reduction (IEEE semantics: no backend folds
    `x * 0` to 0 for floats; `test_all_finite_flags_every_non_finite`).
    """
    return ops.isfinite(ops.sum(x * ops.cast(0.0, x.dtype)))
