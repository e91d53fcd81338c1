"""Root staggering: which block's inverse root is recomputed on which step.

Roots are recomputed every `precondition_frequency` steps. Staggering
spreads that work over the period, block by block, so that no step pays
for all the roots at once (the spike), and groups the blocks due on one
step that share their shape and exponent into one batched decomposition,
across variables. Pure Python bookkeeping decided at `build` (`schedule`)
and two small `keras.ops` helpers that cut a group's inputs out of the
per-factor tensors (`gather`) and put its results back (`scatter`).
"""

import math

from keras import ops


class RootSchedule:
    """The result of `schedule`.

    Attributes:
        offsets: `offsets[i][j][k]`, the step offset in the period of block
            `k` of factor `j` of variable `i` (`None` for a variable with
            no factor).
        load: per offset, the root work recomputed on it (sum of `b^3`,
            per device for a sharded factor).
        groups: `{(b, p, offset[, (i, j)]): [(i, j, k), ...]}`, the blocks
            decomposed together in one batched call (the key gets the
            factor `(i, j)` for a sharded factor, its own group).
        slots: `slots[(i, j)][k] = (group key, position in the group)`.
    """

    def __init__(self, offsets, load, groups, slots):
        self.offsets = offsets
        self.load = load
        self.groups = groups
        self.slots = slots


def schedule(plans, shards, frequency, stagger, busy=()):
    """Assigns every block of every factor a step offset and a group.

    Every block (a `(b, b)` matrix of a `(N, b, b)` factor) gets an offset
    in `[0, frequency)` and is recomputed on the steps with
    `(t - start) % frequency == offset` (and all at `t = start`). Offsets
    are chosen greedily (largest `b^3` first, onto the least-loaded
    offset; longest-processing-time bin packing), so every step
    recomputes at most `total / frequency + max b^3` of root work and the
    blocks of one large kernel land on different steps. Among equally
    loaded offsets, those not in `busy` (the offsets that fall on a
    statistics update, `busy_offsets`) are taken first, so that a root
    and the `G G^T` products do not add up on one step (the worst step).
    With `stagger=False` (or `frequency == 1`) every offset is 0.

    A factor whose blocks are sharded over `S > 1` devices (`shards`) is
    one unit instead: all its blocks share one offset and form their own
    group (cost `N b^3 / S` per device), so its batched root stays sharded
    and each device decomposes only its own blocks (slicing single blocks
    out of a sharded factor, or concatenating sharded factors, makes XLA
    reshard them with collectives inside the root iterations).

    Args:
        plans: per variable, its `BlockPlan` or `None` (not
            preconditioned).
        shards: `{(i, j): devices}` for the factors sharded over more than
            one device (missing: 1).
        frequency: `precondition_frequency`.
        stagger: whether to spread the offsets.
        busy: offsets to use last among equally loaded ones (ignored if
            every offset is busy).

    Returns:
        A `RootSchedule`.
    """
    stagger = stagger and frequency > 1
    offsets = [None] * len(plans)
    items = []  # (cost, i, j, blocks): one unit of staggering
    for i, plan in enumerate(plans):
        if plan is None:
            continue
        offsets[i] = []
        for j, (n, b, _) in enumerate(plan.factor_shapes()):
            offsets[i].append([0] * n)
            devices = shards.get((i, j), 1)
            if devices > 1:
                items.append((n * b**3 // devices, i, j, tuple(range(n))))
            else:
                items += [(b**3, i, j, (k,)) for k in range(n)]
    load = [0] * frequency
    busy = set(busy) if len(set(busy)) < frequency else set()
    for cost, i, j, ks in sorted(items, key=lambda x: (-x[0], x[1:])):
        offset = 0
        if stagger:
            offset = min(
                range(frequency), key=lambda o: (load[o], o in busy, o)
            )
        for k in ks:
            offsets[i][j][k] = offset
        load[offset] += cost
    groups = {}
    for _, i, j, ks in sorted(items, key=lambda x: x[1:]):
        plan = plans[i]
        b = plan.block[plan.axes[j]]
        for k in ks:
            key = (b, plan.p, offsets[i][j][k])
            if shards.get((i, j), 1) > 1:
                key += ((i, j),)
            groups.setdefault(key, []).append((i, j, k))
    slots = {}
    for key, members in groups.items():
        for pos, (i, j, k) in enumerate(members):
            slots.setdefault((i, j), {})[k] = (key, pos)
    return RootSchedule(offsets, load, groups, slots)


def busy_offsets(frequency, statistics_frequency, start):
    """The root offsets in `[0, frequency)` that share a step with a
    statistics update in some period: statistics are updated on the steps
    `t` with `(t - 1) % statistics_frequency == 0`, the blocks of offset
    `o` on `t = start + o + k frequency`, so they meet for some `k`
    exactly when `(start - 1 + o) % gcd(frequency, statistics_frequency)
    == 0`."""
    g = math.gcd(frequency, statistics_frequency)
    return tuple(o for o in range(frequency) if (start - 1 + o) % g == 0)


def runs(members):
    """`(i, j, k0, k1)` runs of consecutive blocks in a sorted list of
    `(i, j, k)` (variable, factor, block) members of a root group."""
    out = []
    for i, j, k in members:
        if out and out[-1][:2] == [i, j] and out[-1][3] == k:
            out[-1][3] = k + 1
        else:
            out.append([i, j, k, k + 1])
    return [tuple(r) for r in out]


def gather(source, group_runs):
    """The blocks of one group, `(members, b, b)`, cut out of
    `source[(i, j)]` (per factor `(N, b, b)` tensors) run by run."""
    parts = [source[(i, j)][k0:k1] for i, j, k0, k1 in group_runs]
    return parts[0] if len(parts) == 1 else ops.concatenate(parts)


def scatter(results, slots, factors):
    """Inverse of `gather` over all groups: `{(i, j): (N, b, b)}` for
    every factor of `factors`, from `results[group key]`."""
    out = {}
    for i, j in factors:
        factor_slots = slots[(i, j)]
        parts, run = [], None
        for k in range(len(factor_slots)):
            key, pos = factor_slots[k]
            if run is not None and run[0] == key and run[2] == pos:
                run[2] = pos + 1
            else:
                run = [key, pos, pos + 1]
                parts.append(run)
        pieces = [results[key][a:z] for key, a, z in parts]
        out[(i, j)] = pieces[0] if len(pieces) == 1 else ops.concatenate(pieces)
    return out
