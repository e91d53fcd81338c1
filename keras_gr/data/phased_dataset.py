"""Two-phase training data: a selected subset for the first `n_kd` steps,
the full data after, inside one `fit` call (SALT_DS, arXiv 2410.18779).

Keras callbacks cannot change a batch's data, so the phase is a property of
the data itself: batch `g` (the global training step) is a pure function of
`g`. Steps `g < n_kd` draw from the selected rows, later steps from all
rows; each phase walks through seeded permutations of its pool (a new
permutation each time the pool is used up), so the run is reproducible and
can resume at any step (`start_step`, set by
`keras_gr.callbacks.PhasedDataSync` after `BackupAndRestore`).
"""

from typing import Any

import keras
import numpy as np

from keras_gr._validation import check_array
from keras_gr._validation import check_integer


def _phase_rows(pool_size, positions, seed, tag):
    """Rows at stream `positions` of an endless sequence of seeded
    permutations of `range(pool_size)` (permutation `e` for epoch `e`)."""
    epochs = positions // pool_size
    offsets = positions % pool_size
    out = np.empty(len(positions), "int64")
    for epoch in np.unique(epochs):
        perm = np.random.default_rng([seed, tag, int(epoch)]).permutation(
            pool_size
        )
        picked = epochs == epoch
        out[picked] = perm[offsets[picked]]
    return out


class PhasedBatches:
    """The step -> rows schedule of a two-phase run.

    Step `g < n_kd_steps` takes rows `selected[...]` (positions `g * B` to
    `g * B + B - 1` of the selected stream); step `g >= n_kd_steps` takes
    positions `(g - n_kd) * B ...` of the full stream.

    Args:
        num_rows: rows of the full data (`N >= 1`).
        selected: indices of the KD-phase subset (non-empty, in `[0, N)`).
        n_kd_steps: `n_kd >= 0`.
        batch_size: `B >= 1`.
        seed: permutation seed. Defaults to `0`.

    Example:

    >>> batches = PhasedBatches(10, [2, 5], n_kd_steps=1, batch_size=2)
    >>> sorted(batches.rows(0).tolist())
    [2, 5]
    >>> batches.phase(1)
    'full'
    """

    def __init__(
        self,
        num_rows: int,
        selected: Any,
        n_kd_steps: int,
        batch_size: int,
        seed: int = 0,
    ) -> None:
        self.num_rows = check_integer("num_rows", num_rows)
        selected = check_array("selected", selected, ndim=1).astype("int64")
        if selected.min() < 0 or selected.max() >= self.num_rows:
            raise ValueError(
                f"`selected` must hold row indices in [0, {self.num_rows}). "
                f"Received: selected with min {selected.min()} and max "
                f"{selected.max()}"
            )
        self.selected = selected
        self.n_kd_steps = check_integer("n_kd_steps", n_kd_steps, minimum=0)
        self.batch_size = check_integer("batch_size", batch_size)
        self.seed = check_integer("seed", seed, minimum=0)

    def phase(self, step):
        """`"selected"` or `"full"`."""
        return "selected" if step < self.n_kd_steps else "full"

    def positions(self, step):
        """Positions in `selected` of the KD-phase batch at global `step`
        (`rows(step) == selected[positions(step)]`)."""
        step = check_integer("step", step, minimum=0)
        if step >= self.n_kd_steps:
            raise ValueError(
                f"`step` must be in the KD phase, < {self.n_kd_steps}. "
                f"Received: step={step}"
            )
        pos = step * self.batch_size + np.arange(self.batch_size)
        return _phase_rows(len(self.selected), pos, self.seed, 0)

    def rows(self, step):
        """Row indices (into the full data) of the batch at global `step`."""
        step = check_integer("step", step, minimum=0)
        if step < self.n_kd_steps:
            return self.selected[self.positions(step)]
        pos = (step - self.n_kd_steps) * self.batch_size + np.arange(
            self.batch_size
        )
        return _phase_rows(self.num_rows, pos, self.seed, 1)


def _take(data, rows):
    if data is None:
        return None
    if isinstance(data, dict):
        return {key: np.asarray(value)[rows] for key, value in data.items()}
    return np.asarray(data)[rows]


def _num_rows(data):
    if isinstance(data, dict):
        lengths = {len(v) for v in data.values()}
        if len(lengths) != 1:
            raise ValueError(
                "Every array of `x` must have the same number of rows. "
                f"Received: lengths {sorted(lengths)}"
            )
        return lengths.pop()
    return len(data)


class PhasedDataset(keras.utils.PyDataset):
    """A `keras.utils.PyDataset` serving the selected rows for exactly the
    first `n_kd_steps` steps of a run and all rows after (SALT_DS).

    Batch `i` of the stream is the batch of global step `start_step + i`
    (see `PhasedBatches`). Fit it as one run of `total_steps` steps:
    `fit(ds, epochs=E, steps_per_epoch=total_steps // E)`, with
    `keras_gr.callbacks.PhasedDataSync(ds)` so that a second `fit` or a run
    resumed by `BackupAndRestore` continues at the right step.
    `as_tf_dataset()` gives the same stream as a `tf.data.Dataset`.

    To Keras the dataset is an endless stream (`num_batches` is `None`):
    `fit` reads it in order and never reorders its batches, so `fit`'s
    default `shuffle=True` is harmless (the batches are already shuffled
    within each phase; a reordering would mix full-data batches into the
    KD phase). `steps_per_epoch` is therefore required (`PhasedDataSync`
    checks it; without it `fit` would not end an epoch). Steps past
    `total_steps` continue the full-data stream (Keras may read one batch
    ahead); `len(ds)` is `total_steps`.

    Offline top-k targets for the KD phase only: pass `kd_inputs`, a dict
    of arrays with one row per entry of `selected` (in that order), e.g.
    `teacher_topk_targets(teacher, x_selected)`; KD-phase batches carry the
    rows matching their selected rows, full-data batches carry zeros of the
    same shape and dtype (a constant batch structure, so one compiled
    step), which `SaltDistiller` never reads once `w_t = 0` (its
    `n_kd_steps` must equal this one's). The teacher is then run on the
    selected rows only.

    Args:
        x: an array or a dict of arrays with `N` rows.
        y: targets (array or dict with `N` rows) or `None`. Defaults to
            `None`.
        sample_weight: `(N, ...)` weights or `None`. Defaults to `None`.
        selected: indices of the KD-phase rows (e.g.
            `keras_gr.models.select_top_fraction(scores, 0.5)`).
        n_kd_steps: steps served from `selected`.
        batch_size: rows per batch.
        total_steps: length of the run in steps (`>= 1`).
        seed: permutation seed. Defaults to `0`.
        start_step: global step of batch 0. Defaults to `0`.
        kd_inputs: dict of arrays with `len(selected)` rows, merged into
            `x` (a dict) for the KD phase and zero-filled after, or `None`.
            Defaults to `None`.
        **kwargs: `keras.utils.PyDataset` arguments (`workers`, ...).

    Example:

    >>> import numpy as np
    >>> ds = PhasedDataset(np.arange(8), np.arange(8), selected=[0, 1],
    ...                    n_kd_steps=2, batch_size=2, total_steps=4)
    >>> sorted(ds[0][0].tolist()), len(ds)
    ([0, 1], 4)
    """

    def __init__(
        self,
        x: Any,
        y: Any | None = None,
        sample_weight: Any | None = None,
        *,
        selected: Any,
        n_kd_steps: int,
        batch_size: int,
        total_steps: int,
        seed: int = 0,
        start_step: int = 0,
        kd_inputs: dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        num_rows = _num_rows(x)
        if num_rows == 0:
            raise ValueError(
                "`x` must not be empty: the dataset has no rows. Received: "
                "x with 0 rows"
            )
        for name, data in (("y", y), ("sample_weight", sample_weight)):
            if data is not None and _num_rows(data) != num_rows:
                raise ValueError(
                    f"`{name}` must have as many rows as `x` ({num_rows}). "
                    f"Received: {name} with {_num_rows(data)} rows"
                )
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.batches = PhasedBatches(
            num_rows, selected, n_kd_steps, batch_size, seed
        )
        self.total_steps = check_integer("total_steps", total_steps)
        self.start_step = check_integer("start_step", start_step, minimum=0)
        self.kd_inputs = self._check_kd_inputs(kd_inputs)

    def _check_kd_inputs(self, kd_inputs):
        if kd_inputs is None:
            return None
        if not isinstance(kd_inputs, dict) or not isinstance(self.x, dict):
            raise ValueError(
                "`kd_inputs` must be a dict of arrays, and `x` a dict, to "
                "merge them into. Received: kd_inputs of type "
                f"{type(kd_inputs).__name__} and x of type "
                f"{type(self.x).__name__}"
            )
        selected = len(self.batches.selected)
        out = {}
        for key, value in kd_inputs.items():
            value = np.asarray(value)
            if key in self.x:
                raise ValueError(
                    f"`kd_inputs` must not repeat a key of `x`. Received: "
                    f"key {key!r} in both"
                )
            if value.ndim == 0 or len(value) != selected:
                raise ValueError(
                    f"`kd_inputs[{key!r}]` must have one row per entry of "
                    f"`selected` ({selected}). Received: shape {value.shape}"
                )
            out[key] = value
        return out

    def __len__(self):
        return self.total_steps

    @property
    def num_batches(self):
        """`None`: an endless stream to Keras, so `fit` never reorders it."""
        return None

    def batch_at(self, step):
        """The `(x, y, sample_weight)` batch of global `step` (without
        trailing `None`s)."""
        rows = self.batches.rows(step)
        x = _take(self.x, rows)
        if self.kd_inputs is not None:
            x = dict(x)
            if self.batches.phase(step) == "selected":
                position = self.batches.positions(step)
                x.update(_take(self.kd_inputs, position))
            else:
                x.update(
                    {
                        key: np.zeros(
                            (len(rows),) + value.shape[1:], value.dtype
                        )
                        for key, value in self.kd_inputs.items()
                    }
                )
        out = (
            x,
            _take(self.y, rows),
            _take(self.sample_weight, rows),
        )
        while out and out[-1] is None:
            out = out[:-1]
        return out

    def __getitem__(self, index):
        return self.batch_at(self.start_step + int(index))

    def as_tf_dataset(self):
        """The same stream as a `tf.data.Dataset` (`from_generator`; the
        generator reads `start_step` each time iteration starts)."""
        import tensorflow as tf

        first = self.batch_at(0)
        signature = keras.tree.map_structure(
            lambda a: tf.TensorSpec((None,) + a.shape[1:], a.dtype), first
        )

        def generator():
            for step in range(self.start_step, self.total_steps):
                yield self.batch_at(step)

        return tf.data.Dataset.from_generator(
            generator, output_signature=signature
        )
