"""Callbacks that run SALT's two phases as one `fit` (arXiv 2410.18779).

"A Little Help Goes a Long Way: Efficient LLM Training by Leveraging Small
LMs" (Rawat et al., arXiv 2410.18779). The schedule `w_t` itself lives in
`keras_gr.models.SaltDistiller` (a non-trainable step counter inside the
compiled step): a callback that assigned it during `fit` would have no
effect under JAX, whose train step carries its own copy of the state. These
callbacks observe, log and act around it: they compose with
`ModelCheckpoint`, `BackupAndRestore` (list `BackupAndRestore` first) and
`TensorBoard` (the values they add to `logs` are written as scalars).
"""

from typing import TYPE_CHECKING

import keras

if TYPE_CHECKING:
    from keras_gr.data.phased_dataset import PhasedDataset


def _model_step(model) -> int:
    """Training steps the model has run: a `SaltDistiller`'s `kd_step`,
    else its optimizer's `iterations`."""
    counter = getattr(model, "kd_step", None)
    if counter is None:
        optimizer = getattr(model, "optimizer", None)
        counter = getattr(optimizer, "iterations", None)
    if counter is None:
        return 0
    return int(keras.ops.convert_to_numpy(counter))


def _first_zero_step(model):
    """The first step whose `w_t` is 0 and stays 0, or `None` if `w_t`
    never reaches 0 for good (`schedule="constant"` with `w > 0`)."""
    if model.kd_weight_max == 0.0:
        return 0
    if model.schedule == "constant":
        return None
    return model.n_kd_steps


class KDSchedule(keras.callbacks.Callback):
    """Logs the SALT KD weight `w_t` per step and acts at the switch.

    Adds `kd_phase` (1 while `w_t > 0`, else 0) to the batch and epoch logs
    next to the distiller's `kd_weight`, keeps `history` (a list of
    `(global_step, w_t)`, one entry per batch callback: with
    `steps_per_execution = s > 1` Keras calls it once per `s` steps, and the
    entry is the last of those steps), and records `switch_step`, the first
    step whose `w_t` was 0.

    The global step is read from the distiller's own step counter
    (`kd_step`, which checkpoints and `BackupAndRestore` restore), never
    counted here, so it stays right under `steps_per_execution > 1`, across
    several `fit` calls and after a resume. `switch_step` is the schedule's
    first zero step (`n_kd` for `"step"` and `"linear"`, 0 when
    `kd_weight=0`), reported once a batch with `w_t = 0` has been seen.

    With `release_teacher=True` (default) it calls the distiller's
    `release_teacher()` once `w_t` has reached 0 for good (not for
    `schedule="constant"`), at the batch where that is seen or, for a `fit`
    starting past the switch, before its first step; the rest of the run
    then compiles a step with no teacher at all (the `ops.cond` in the step
    already skips the teacher's forward pass, this also drops it from the
    compiled program). Measured in `benchmarks/salt.py` (JAX, CPU): after
    the switch, a step with the teacher kept costs 1.07-1.14x the
    student-only step; released, 1.00-1.03x, for one recompilation at the
    switch (the two switch steps took 2.6-2.9 s there).

    Args:
        release_teacher: drop the teacher after the switch. Defaults to
            `True`.
        verbose: print a line at the switch. Defaults to `0`.

    Example:

    >>> cb = KDSchedule(release_teacher=False)
    >>> cb.switch_step is None
    True
    """

    def __init__(self, release_teacher: bool = True, verbose: int = 0):
        super().__init__()
        self.release_teacher = bool(release_teacher)
        self.verbose = verbose
        self.history = []
        self.switch_step = None

    def on_train_begin(self, logs=None):
        model = self.model
        if not hasattr(model, "kd_step"):
            raise ValueError(
                "`KDSchedule` must be used with a "
                "keras_gr.models.SaltDistiller. Received: model="
                f"{type(model).__name__}"
            )
        first_zero = _first_zero_step(model)
        if first_zero is not None and _model_step(model) >= first_zero:
            self._switch(model, first_zero)

    def _switch(self, model, step):
        if self.switch_step is None:
            self.switch_step = step
            if self.verbose:
                print(f"\nKDSchedule: w_t = 0 from step {step}")
        if self.release_teacher and not model._teacher_released:
            model.release_teacher()

    def on_train_batch_end(self, batch, logs=None):
        if logs is None or "kd_weight" not in logs:
            return
        w = float(logs["kd_weight"])
        logs["kd_phase"] = 1.0 if w > 0 else 0.0
        model = self.model
        step = _model_step(model) - 1  # the last step of this execution
        self.history.append((step, w))
        if w == 0.0 and self.switch_step is None:
            first_zero = _first_zero_step(model)
            if first_zero is None:  # "constant" with w = 0 reached here
                self.switch_step = step
            else:
                self._switch(model, first_zero)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.history:
            logs["kd_phase"] = 1.0 if self.history[-1][1] > 0 else 0.0


class PhasedDataSync(keras.callbacks.Callback):
    """Keeps a `keras_gr.data.PhasedDataset` on the run's global step.

    At the first epoch of every `fit` call it sets the dataset's
    `start_step` to the model's own step counter (a `SaltDistiller`'s
    `kd_step`, else `optimizer.iterations`), before Keras draws the first
    batch. So a second `fit` continues the stream where the first stopped
    (no `initial_epoch` needed), and a run restored by `BackupAndRestore`
    (list it first) or from a checkpoint serves the batches the
    uninterrupted run would have served, including the selected-subset /
    full-data switch at `n_kd`. `initial_epoch` does not move the stream:
    the restored counter is the position. Needs `steps_per_epoch` in `fit`
    (the stream spans the whole run).

    Args:
        dataset: the `PhasedDataset` given to `fit` (also the source of
            its `as_tf_dataset()`).

    Example:

    >>> import numpy as np
    >>> from keras_gr.data import PhasedDataset
    >>> ds = PhasedDataset(np.arange(4), selected=[0], n_kd_steps=1,
    ...                    batch_size=1, total_steps=4)
    >>> PhasedDataSync(ds).dataset is ds
    True
    """

    def __init__(self, dataset: "PhasedDataset") -> None:
        super().__init__()
        if not hasattr(dataset, "start_step"):
            raise ValueError(
                "`dataset` must be a keras_gr.data.PhasedDataset. Received: "
                f"dataset={type(dataset).__name__}"
            )
        self.dataset = dataset
        self._synced = False

    def on_train_begin(self, logs=None):
        self._synced = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._synced:
            return
        steps = (self.params or {}).get("steps")
        if not steps:
            raise ValueError(
                "`PhasedDataSync` needs `steps_per_epoch` in `fit`. "
                f"Received: steps_per_epoch={steps!r}"
            )
        self.dataset.start_step = _model_step(self.model)
        self._synced = True
