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
        self._block_offsets = [None] * n
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
        """Staggering at block granularity: every block of every factor
        (a `(b, b)` matrix of a `(N, b, b)` factor) gets an offset in
        `[0, precondition_frequency)` and is recomputed on the steps with
        `(t - start) % frequency == offset` (and all at `t = start`).
        Offsets are chosen greedily (largest `b^3` first, onto the
        least-loaded offset; longest-processing-time bin packing), so every
        step recomputes at most `total / frequency + max b^3` of root work
        and the blocks of one large kernel land on different steps. With
        `stagger_roots=False` every offset is 0.

        A factor whose blocks are sharded over `S > 1` devices (a
        `keras.distribution`, `_state_layout`) is one unit instead: all its
        blocks share one offset and form their own group (cost
        `N b^3 / S` per device), so its batched root stays sharded and each
        device decomposes only its own blocks (slicing single blocks out of
        a sharded factor, or concatenating sharded factors, makes XLA
        reshard them with collectives inside the root iterations).

        The blocks due on the same step that share `(b, p)` are grouped
        (across variables) into one batched decomposition:
        `self._root_groups[(b, p, offset)]` lists their `(i, j, n)`
        (variable, factor, block), and `self._block_slots[(i, j)][n]` says
        where block `n` of factor `j` of variable `i` sits in its group.
        """
        freq = self.precondition_frequency
        stagger = self.stagger_roots and freq > 1
        items = []  # (cost, i, j, blocks): one unit of staggering
        for i, plan in enumerate(self._plans):
            if plan is None:
                continue
            self._block_offsets[i] = []
            for j, (n, b, _) in enumerate(plan.factor_shapes()):
                self._block_offsets[i].append([0] * n)
                shards = self._shards.get((i, j), 1)
                if shards > 1:
                    items.append((n * b**3 // shards, i, j, tuple(range(n))))
                else:
                    items += [(b**3, i, j, (k,)) for k in range(n)]
        load = [0] * freq
        for cost, i, j, ks in sorted(items, key=lambda x: (-x[0], x[1:])):
            offset = 0
            if stagger:
                offset = min(range(freq), key=lambda o: (load[o], o))
            for k in ks:
                self._block_offsets[i][j][k] = offset
            load[offset] += cost
        self._root_load = load
        groups = {}
        for _, i, j, ks in sorted(items, key=lambda x: x[1:]):
            plan = self._plans[i]
            b = plan.block[plan.axes[j]]
            for k in ks:
                key = (b, plan.p, self._block_offsets[i][j][k])
                if self._shards.get((i, j), 1) > 1:
                    key += ((i, j),)
                groups.setdefault(key, []).append((i, j, k))
        self._root_groups = groups
        self._block_slots = {}
        for key, members in groups.items():
            for pos, (i, j, k) in enumerate(members):
                slots = self._block_slots.setdefault((i, j), {})
                slots[k] = (key, pos)

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
                    root_offsets=[tuple(o) for o in self._block_offsets[i]],
                )
            rows.append(entry)
        return {
            "variables": rows,
            "parameters": total,
            "preconditioned_parameters": pre,
            "fallback_parameters": total - pre,
            "preconditioned_fraction": pre / total if total else 0.0,
            "factor_floats": floats,
            "root_cost_per_offset": list(self._root_load),
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
        flags = [_all_finite(g) for g in grads if g is not None]
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
        i = self._get_variable_index(variable)
        plan = self._plans[i]
        kind = self._graft_kinds[i]
        step = ops.cast(self.iterations + 1, "float32")
        lr = ops.cast(learning_rate, "float32")
        g = ops.cast(gradient, "float32")
        finite = self._step_finite
        if finite is None:
            finite = _all_finite(g)
        # `(variable, new value, guarded)`: a value is kept only if the step
        # is finite; `guarded` values were computed under an `ops.cond`
        # that already required it (no `where` pass over them). A NaN/Inf
        # in `g` reaches only values that are then discarded, so `g` is not
        # sanitised (one pass less per variable and step).
        # The moments are masked with `finite` where they are made and the
        # masked value is what the update reads: the stored value is then
        # the only reader of the old buffer (XLA would otherwise fuse the
        # moment into both the store and the update, and copy the donated
        # old buffer to keep it alive: two extra passes per variable).
        new_state = []

        def kept(old, new):
            return ops.where(finite, new, ops.cast(old, "float32"))

        # Momentum on the raw gradient (shared with the Adam graft). The
        # preconditioner gets the uncorrected `raw` and the scalar bias
        # correction `scale` separately (`direction == raw * scale`).
        direction, raw, scale = g, g, None
        if self._momentums[i] is not None:
            m = self._momentums[i]
            m_new = kept(
                m, self.beta1 * ops.cast(m, "float32") + (1.0 - self.beta1) * g
            )
            new_state.append((m, m_new, True))
            raw, scale = grafting_lib.momentum_direction_parts(
                m_new, g, self.beta1, step, self.nesterov
            )
            direction = raw if scale is None else raw * scale

        # Grafting (or fallback) update.
        reference = direction if kind == "sgd" else None
        if kind == "adam":
            v = self._graft_moments[i]
            b2 = self.grafting_beta2
            v_new = kept(
                v, b2 * ops.cast(v, "float32") + (1.0 - b2) * ops.square(g)
            )
            new_state.append((v, v_new, True))
            reference = grafting_lib.adam_direction(
                direction, v_new, b2, self.epsilon, step
            )
        elif kind == "adagrad":
            acc = self._graft_moments[i]
            acc_new = kept(acc, ops.cast(acc, "float32") + ops.square(g))
            new_state.append((acc, acc_new, True))
            reference = grafting_lib.adagrad_direction(
                direction, acc_new, self.epsilon
            )

        if plan is None:
            update = reference
        else:
            update = self._preconditioned_update(
                i, plan, g, raw, scale, reference, step, finite, new_state
            )

        w = ops.cast(variable, "float32")
        w_new = w - lr * ops.reshape(update, ops.shape(w))
        new_state.append((variable, w_new, False))
        for target, value, guarded in new_state:
            if not guarded:
                value = ops.where(finite, value, ops.cast(target, "float32"))
            self.assign(target, ops.cast(value, target.dtype))

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
                g_blocks = _to_blocks(g, plan)
                return [
                    matrix_functions.ema_statistics(
                        old, _axis_gram(g_blocks, axis), self.beta2
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
        """`1 - beta2^n` (`n` the number of statistics updates made by step
        `t`: `floor((t - 1) / statistics_frequency) + 1`), or `None` for
        `beta2 == 1`. The roots are taken of `stat / (1 - beta2^n)`, so the
        first steps are not `(1 - beta2)^(-1/p)` too large; the division
        happens inside the root computation (not a pass over every
        statistic on every step)."""
        if self.beta2 >= 1.0:
            return None
        freq = float(self.statistics_frequency)
        updates = ops.floor((step - 1.0) / freq) + 1.0
        return 1.0 - ops.power(self.beta2, updates)

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
        and their step offset (`_assign_root_offsets`), under an
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
        for key, members in self._root_groups.items():
            members = [m for m in members if (m[0], m[1]) in stats]
            if not members:
                continue
            b, p, offset = key[:3]
            runs = _runs(members)

            def gather(source, runs=runs):
                parts = [source[(i, j)][k0:k1] for i, j, k0, k1 in runs]
                return parts[0] if len(parts) == 1 else ops.concatenate(parts)

            def compute(gather=gather, p=p):
                stat = gather(stats)
                if correction is not None:
                    stat = stat / correction
                old = gather(olds)
                root, _ = matrix_functions.matrix_inverse_pth_root(
                    stat,
                    p,
                    epsilon=self.matrix_epsilon,
                    relative_floor=self.relative_matrix_epsilon,
                    method=self.root_method,
                )
                ok = ops.logical_and(
                    ops.all(ops.isfinite(root), axis=(-2, -1)),
                    ops.all(ops.isfinite(stat), axis=(-2, -1)),
                )
                return ops.where(ok[:, None, None], root, old)

            if always:
                result = compute()
            else:
                due = self._root_due(offset, step)
                concrete = _backend.concrete_bool(due)
                if concrete is not None:
                    guarded = False
                    result = compute() if concrete else gather(olds)
                else:
                    if finite is not None:
                        due = ops.logical_and(due, finite)
                    result = ops.cond(due, compute, lambda g=gather: g(olds))
            results[key] = result
        roots = {}
        for i, j in stats:
            slots = self._block_slots[(i, j)]
            parts, run = [], None
            for k in range(len(slots)):
                key, pos = slots[k]
                if run is not None and run[0] == key and run[2] == pos:
                    run[2] = pos + 1
                else:
                    run = [key, pos, pos + 1]
                    parts.append(run)
            pieces = [results[key][a:z] for key, a, z in parts]
            roots[(i, j)] = (
                pieces[0] if len(pieces) == 1 else ops.concatenate(pieces)
            )
        return roots, guarded

    def _preconditioned_update(
        self, i, plan, g, raw, scale, reference, step, finite, new_state
    ):
        """The preconditioned update of variable `i` (grafted onto
        `reference` unless that is `None`) from the direction
        `raw * scale` (`scale` a scalar or `None`): the roots are applied
        to `raw` and `scale` after them, or not at all when grafting
        rescales the result anyway."""
        pending = self._pending
        if pending is not None and i in pending:
            stats_new, stats_guarded, roots_new, roots_guarded = pending[i]
        else:
            # Per-variable path (multi-replica `tf.distribute`): this
            # variable's statistics and roots alone.
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
            s = _to_blocks(raw, plan)
            for axis, stat_var, root_var, stat_new, root_new in zip(
                plan.axes,
                self._statistics[i],
                self._roots[i],
                stats_new,
                roots_new,
            ):
                new_state.append((stat_var, stat_new, stats_guarded))
                new_state.append((root_var, root_new, roots_guarded))
                s = _apply_on_axis(s, root_new, axis)
            s = _from_blocks(s, plan)
        if reference is None:
            if scale is not None:
                s, raw = s * scale, raw * scale
            return ops.where(active, s, raw)
        s = grafting_lib.graft(s, reference)
        return ops.where(active, s, reference)


def _all_finite(x):
    """Whether every entry of `x` is finite, as one reduction pass.

    `sum(x * 0)` is exactly 0 when every entry is finite and NaN as soon as
    one is NaN or +-Inf (`Inf * 0` is NaN). Unlike `all(isfinite(x))`,
    which XLA on CPU lowers to a boolean array and a tree of reductions,
    this fuses into a single reduction (IEEE semantics: no backend folds
    `x * 0` to 0 for floats; `test_all_finite_flags_every_non_finite`).
    """
    return ops.isfinite(ops.sum(x * ops.cast(0.0, x.dtype)))


def _runs(members):
    """`(i, j, k0, k1)` runs of consecutive blocks in a sorted list of
    `(i, j, k)` (variable, factor, block) members of a root group."""
    runs = []
    for i, j, k in members:
        if runs and runs[-1][:2] == [i, j] and runs[-1][3] == k:
            runs[-1][3] = k + 1
        else:
            runs.append([i, j, k, k + 1])
    return [tuple(r) for r in runs]


def _batched_identity(shape, dtype=None):
    """Initializer: a stack of identity matrices of shape `(N, b, b)`."""
    n, b = shape[0], shape[-1]
    eye = ops.eye(b, dtype=dtype or "float32")
    return ops.broadcast_to(eye, (n, b, b))


@keras.saving.register_keras_serializable(package="keras_gr")
class Shampoo(_StructuredPreconditioner):
    """Two-sided (tensor) Shampoo with blocking, grafting and momentum.

    For every matrix variable `W` (m x n, gradient `G`) the optimizer keeps
    Kronecker-factor statistics on both sides

        L = beta2 * L + (1 - beta2) * G G^T      (m x m)
        R = beta2 * R + (1 - beta2) * G^T G      (n x n)

    (`beta2 = 1` keeps the AdaGrad sums of the paper; updated every
    `statistics_frequency` steps, default every step), recomputes the
    inverse roots of the bias-corrected statistics `L / (1 - beta2^n)`
    (`n` statistics updates so far) every `precondition_frequency` steps
    (cached in between) and steps with

        D = momentum direction of G          (bias-corrected EMA, Nesterov opt.)
        S = L^(-1/4) D R^(-1/4)
        W = W - lr * graft(S)

    A tensor of rank k gets one factor per axis (`G_(a) G_(a)^T`, the
    contraction of every other axis) and roots `-1/(2k)` (Gupta et al.'s
    tensor Shampoo). `OneSidedShampoo` is the same optimizer with the
    largest axis left unpreconditioned (for a matrix: one factor, on the
    smaller side, root `-1/2`).

    The knobs that matter at scale. For an m x n kernel preconditioned on
    its m side in blocks of `b` rows, trained on `B` rows (tokens) per
    step, the optimizer adds per step about

        2 m b n / statistics_frequency      (statistics, G G^T per block)
      + 2 m b n                             (applying the roots)
      + (m / b) c b^3 / precondition_frequency      (roots, staggered)

    to Adam's `6 m n B` (forward + backward) and elementwise update
    (`c`: ~10 for `eigh`, `6 k` matmul FLOPs for `"newton"` with `k`
    iterations, 11-21 from condition number 1e2 to 1e6 for `p = 2`);
    two-sided pays it once per side. Over a whole root period the mean
    step is then about

        1 + b (1 + 1 / statistics_frequency) / (3 B)
          + c b^2 / (6 n B precondition_frequency)

    times Adam's: the first two terms are the median (non-root) step, the
    last is the roots, paid on a few steps of each period (the spikes).
    For the width-512 MLP (512 x 512 kernels, `b = n = B = 512`, Newton
    with ~20 iterations) the root term is ~2 at `precondition_frequency=10`
    and ~0.2 at 100: what a user pays is dominated by the roots unless
    the period is long. In order of effect on the mean step
    (`benchmarks/shampoo.py --part scale`, results in
    `benchmarks/results/shampoo_scale_*`): `precondition_frequency`,
    then `max_preconditioner_dim` (the root term grows as `b^2`, the
    others as `b`), then `statistics_frequency`; `root_method="eigh"` was
    not cheaper on CPU under either backend's compiled train step.

    - `max_preconditioner_dim` (block size `b`, default 1024): a factored
      axis longer than this is split into balanced blocks of at most this
      length (`ceil(d / ceil(d / max_preconditioner_dim))`, the last block
      zero-padded, which is exact), each with its own factors, as the
      public Shampoo implementations do. A 4096 x 4096 kernel gets 16
      blocks of 1024 x 1024 (two-sided: 2 x 16 factors of 1024 x 1024,
      128 MiB of float32 statistics + roots; one-sided: half). The
      per-step cost above and the root cost per parameter grow linearly
      with `b`; with few rows per step (`B` below ~`b`) prefer 512 or 256.
    - `statistics_frequency` (default 1): update the statistics (and count
      one more update in their bias correction) only every this many
      steps, under an `ops.cond`, so the other steps skip the `G G^T`
      products; the step itself (the current roots applied to the
      momentum) is taken every step (Google's scalable_shampoo's
      `statistics_compute_steps`). The statistic term then drops out of
      the cost, leaving `b / (3 B)`. It samples one gradient in `k` for
      the statistics (their EMA horizon becomes `k / (1 - beta2)` steps).
    - `precondition_frequency` and `stagger_roots`: roots are recomputed
      every `precondition_frequency` steps. Staggering works per block:
      every `(b, b)` block of every factor gets its own step in the
      period, packed greedily on `b^3` (largest first onto the least
      loaded step), so no step recomputes more than
      `total / precondition_frequency + largest block` of root work and
      the blocks of one large kernel land on different steps (the spike
      of unstaggered roots is `precondition_frequency` times that). All
      roots are computed once at `start_preconditioning_step`.
    - Blocks due on the same step that share `(b, p)` are decomposed in one
      batched call, across variables (with `stagger_roots=False`: one
      call per distinct `(b, p)`).
    - `root_method`: `"newton"` (default; coupled Newton, only matrix
      products) or `"eigh"`. Newton is the default on every backend: on
      TPU and GPU it is batched matmuls, and on CPU both TensorFlow's
      compiled `eigh` and JAX's were slower than Newton in the scale
      benchmark. The two agree to about 1e-3 on training trajectories
      (tested); `eigh` clips the spectrum at the floor where Newton
      shifts it (see `matrix_functions`). Every root is solved from a
      scaled identity, not warm-started from the previous root: the
      coupled iteration is exact only from a start that commutes with
      the statistics, and to first order the error of a root
      warm-started from a non-commuting previous root grows with the
      ratio of the root's eigenvalues (`sqrt(condition number)`, ~1e3 at
      the default floor), so a warm start would need a correction as
      costly as the solve. In eager execution the iteration runs as a
      Python loop, so warm eager steps compile nothing.
    - `preconditioning_summary()` reports per variable and in total what is
      preconditioned, each block's step offset and the root work per
      step; `build` warns when less than half of the parameters are.

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
      bias-corrected `stat / (1 - beta2^n)`, `n` the number of statistics
      updates so far (`t` with `statistics_frequency=1`; with
      `grafting="none"` the first steps are otherwise `(1 - beta2)^(-1/p)`
      too large); with
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
      By default (`flatten_tensors=True`) a rank > 2 kernel is viewed as
      the matrix `(prod(shape[:-1]), shape[-1])`, so an attention kernel
      `(hidden, heads, head_dim)` gets one factor over `hidden * heads`
      (blocked like any long side) and one over `head_dim` (two-sided).
      With `flatten_tensors=False` it is preconditioned per axis: a
      factor on each of its axes, input axis included (two-sided);
      one-sided leaves out only its largest axis, the tensor analogue of
      "the smaller side" of a matrix. Flattening is the default because
      it trained the benchmark LM better (see Args).
    - *Inverse roots*: float32 always, symmetrised, at the highest matmul
      precision, of all same-shaped blocks due on a step in one batched
      call (across variables; Newton's stopping rule is per matrix, so a
      batch gives each block the root it gets alone), with the
      spectrum floored at `relative_matrix_epsilon * lambda_max +
      matrix_epsilon`
      (`keras_gr.optimizers.matrix_functions.matrix_inverse_pth_root`).
      The relative floor keeps rank-deficient statistics reproducible. A
      block whose root has NaN/Inf keeps its previous root; roots start at
      identity.
    - *Non-finite gradients*: if any gradient of the step has a NaN/Inf,
      the whole step is skipped: no variable and no state changes (the
      same for every variable; Keras's decoupled `weight_decay`, applied
      before the update, is the one exception).
    - *Gradient accumulation*: under JAX, Keras runs `update_step` on every
      micro-step and discards all but the last; statistics and roots are
      only computed on that last micro-step (no wasted decompositions).
    - *Distribution* (`keras.distribution`): momentum and grafting state
      inherit the variable's layout (`add_variable_from_reference`); the
      `(N, b, b)` statistics and roots of a blocked variable are sharded
      along the block axis `N` over the largest mesh axis whose size
      divides `N` (memory per device: `2 * 4 * N * b^2 / axis_size`
      bytes per factor), else replicated. Each device decomposes only its
      own blocks: a sharded factor is one staggering unit (all its blocks
      recomputed on the same step, in their own batched root), so the
      compiled root iterations run on `(N / S, b, b)` per device with no
      collective inside (tested on the partitioned HLO). Under
      `DataParallel` and `ModelParallel` the trajectory equals the
      single-device one (tested on 8 virtual devices to 1e-4) when the
      root schedule is the same, i.e. with `stagger_roots=False` (or
      `precondition_frequency=1`); staggered, the sharded factors are
      refreshed per factor instead of per block.

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
        stagger_roots: spread the root recomputations, block by block,
            over the `precondition_frequency` steps. Defaults to `True`.
        root_method: `"newton"` or `"eigh"`. Defaults to `"newton"`.
        statistics_frequency: update the statistics every this many
            steps (steps 1, 1 + k, 1 + 2k, ...); the step itself is taken
            every step. Defaults to `1`.
        matrix_epsilon: absolute eigenvalue floor of the roots. Defaults to
            `1e-12`.
        relative_matrix_epsilon: eigenvalue floor relative to the largest
            eigenvalue. Defaults to `1e-6`.
        exclude_embeddings: give embeddings the fallback update. Defaults
            to `True`.
        exclude_layers: list of regexes on variable paths that get the
            fallback update. Defaults to `None`.
        flatten_tensors: view a kernel of rank > 2 as the matrix
            `(prod(shape[:-1]), shape[-1])` (one-sided: one factor, on
            its smaller side) instead of one factor per axis (`False`).
            Flattening trained the benchmark's Gemma LM (rank-3
            attention kernels) better (`benchmarks/shampoo.py --part
            quality`, `benchmarks/results/shampoo_quality_jax_issue15.md`).
            Defaults to `True`.
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
        root_method: str = "newton",
        statistics_frequency: int = 1,
        matrix_epsilon: float = 1e-12,
        relative_matrix_epsilon: float = 1e-6,
        exclude_embeddings: bool = True,
        exclude_layers: list | None = None,
        flatten_tensors: bool = True,
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
            statistics_frequency=statistics_frequency,
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
        self.flatten_tensors = bool(flatten_tensors)

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
        if self.flatten_tensors and len(shape) > 2:
            shape = (math.prod(shape[:-1]), shape[-1])
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
                "statistics_frequency": self.statistics_frequency,
                "matrix_epsilon": self.matrix_epsilon,
                "relative_matrix_epsilon": self.relative_matrix_epsilon,
                "exclude_embeddings": self.exclude_embeddings,
                "exclude_layers": self.exclude_layers,
                "flatten_tensors": self.flatten_tensors,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_gr")
class OneSidedShampoo(Shampoo):
    r"""One-sided Shampoo: one Kronecker factor, on the smaller side.

    The practical optimizer of "Structured Preconditioners in Adaptive
    Optimization: A Unified Analysis" (Xie et al., arXiv:2503.10537): for an
    $m \times n$ matrix variable with $m \le n$ (otherwise the transposed
    roles),

    $$L \leftarrow \beta_2 L + (1 - \beta_2)\, G G^\top \quad (m \times m),
    \qquad W \leftarrow W - \eta\, \mathrm{graft}\big(L^{-1/2} D\big)$$

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
    each with a 1024 x 1024 factor); a kernel of rank > 2 is viewed as the
    matrix `(prod(shape[:-1]), shape[-1])` (with `flatten_tensors=False`:
    a factor on every axis but its largest, with root `-1/(2k)` for `k`
    factors; see `Shampoo`); `preconditioning_summary()` says what is
    preconditioned.

    Every other choice (momentum, grafting, fallback, floors, blocking,
    staggered and batched roots, statistics interval, layouts, non-finite
    handling, accumulation) and the knobs that matter at scale (block
    size, `statistics_frequency`, `precondition_frequency`,
    `stagger_roots`, `root_method`, with the cost formula) are shared with
    and documented in `keras_gr.optimizers.Shampoo`; the arguments are the
    same. In short, per step it adds about
    `b (1 + 1 / statistics_frequency) / (3 B)` of Adam's step for blocks of
    `b` and `B` rows (tokens) per step, plus the roots,
    `c b^2 / (6 n B precondition_frequency)` on average over a period (`c`
    ~120 for Newton's ~20 iterations): ~2x Adam's step for 512 x 512 kernels at
    `precondition_frequency=10`, so long periods pay most.

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
