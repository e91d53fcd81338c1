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


class KDSchedule(keras.callbacks.Callback):
    """Logs the SALT KD weight `w_t` per step and acts at the switch.

    Adds `kd_phase` (1 while `w_t > 0`, else 0) to the batch and epoch logs
    next to the distiller's `kd_weight`, keeps `history` (a list of
    `(global_step, w_t)`), and records `switch_step`, the first step whose
    `w_t` was 0. With `release_teacher=True` (default) it calls the
    distiller's `release_teacher()` once `w_t` has reached 0 for good (not
    for `schedule="constant"`), so that the rest of the run compiles a step
    with no teacher at all; the `ops.cond` in the step already skips the
    teacher's forward pass, this also drops it from the compiled program.

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
        self._step = 0
        self._epoch_w = []

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, "kd_step"):
            raise ValueError(
                "`KDSchedule` must be used with a "
                "keras_gr.models.SaltDistiller. Received: model="
                f"{type(self.model).__name__}"
            )
        self._step = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._step is None:
            steps = (self.params or {}).get("steps") or 0
            self._step = epoch * steps

    def on_train_batch_end(self, batch, logs=None):
        if logs is None or "kd_weight" not in logs:
            return
        w = float(logs["kd_weight"])
        self.history.append((self._step, w))
        logs["kd_phase"] = 1.0 if w > 0 else 0.0
        model = self.model
        if w == 0.0 and self.switch_step is None:
            self.switch_step = self._step
            if self.verbose:
                print(f"\nKDSchedule: w_t = 0 from step {self._step}")
            off_for_good = (
                model.schedule != "constant" and self._step >= model.n_kd_steps
            )
            if self.release_teacher and off_for_good:
                model.release_teacher()
        self._step += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.history:
            logs["kd_phase"] = 1.0 if self.history[-1][1] > 0 else 0.0


class PhasedDataSync(keras.callbacks.Callback):
    """Keeps a `keras_gr.data.PhasedDataset` on the run's global step.

    At the first epoch of a `fit` call it sets the dataset's `start_step` to
    `initial_epoch * steps_per_epoch`, before Keras opens the data
    iterator, so a run resumed by `BackupAndRestore` (or with
    `initial_epoch`) serves the batches the uninterrupted run would have
    served, including the selected-subset / full-data switch at `n_kd`.
    Needs `steps_per_epoch` in `fit` (the stream spans the whole run).

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
        self.dataset.start_step = epoch * steps
        self._synced = True
