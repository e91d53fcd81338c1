import os

import keras
import numpy as np
import pytest

from keras_gr.callbacks import KDSchedule
from keras_gr.callbacks import PhasedDataSync
from keras_gr.data import PhasedDataset
from tests.models.test_salt_distiller import _fit
from tests.models.test_salt_distiller import lm_data
from tests.models.test_salt_distiller import make

N_KD, STEPS_PER_EPOCH, EPOCHS, BATCH = 8, 3, 4, 4


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated preemption")


def _run(backup_dir, extra=(), interrupt_at=None, steps_per_execution=1):
    x, y, mask = lm_data(24, seed=1)
    distiller = make(n_kd=N_KD, seed=2)
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        steps_per_execution=steps_per_execution,
    )
    distiller(x)  # BackupAndRestore needs a built model
    ds = PhasedDataset(
        x,
        y,
        mask,
        selected=np.arange(0, 24, 3),
        n_kd_steps=N_KD,
        batch_size=BATCH,
        total_steps=STEPS_PER_EPOCH * EPOCHS,
    )
    schedule = KDSchedule()
    callbacks = [
        keras.callbacks.BackupAndRestore(backup_dir),
        PhasedDataSync(ds),
        schedule,
        *extra,
    ]
    if interrupt_at is not None:
        callbacks.append(_Interrupt(interrupt_at))
    distiller.fit(
        ds,
        epochs=EPOCHS,
        steps_per_epoch=STEPS_PER_EPOCH,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    return distiller, schedule


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_resume_in_kd_phase_equals_uninterrupted_run(
    tmp_path, steps_per_execution
):
    # KDSchedule, PhasedDataSync and BackupAndRestore together, with one
    # step or a whole epoch (3 steps) per execution.
    spe = steps_per_execution
    ckpt = str(tmp_path / "ckpt.weights.h5")
    extra = [keras.callbacks.ModelCheckpoint(ckpt, save_weights_only=True)]
    try:
        import tensorboard  # noqa: F401

        log_dir = str(tmp_path / "tb")
        extra.append(keras.callbacks.TensorBoard(log_dir, update_freq="batch"))
    except ImportError:  # TensorBoard is optional
        log_dir = None
    full, schedule = _run(
        str(tmp_path / "a"), extra=extra, steps_per_execution=spe
    )
    assert schedule.switch_step == N_KD
    # One record per execution, at the step that ends it.
    steps = list(range(spe - 1, STEPS_PER_EPOCH * EPOCHS, spe))
    assert [s for s, _ in schedule.history] == steps
    assert [w for _, w in schedule.history] == [
        0.5 if s < N_KD else 0.0 for s in steps
    ]
    assert os.path.isfile(ckpt)
    assert log_dir is None or os.listdir(log_dir)
    # Preempted at the start of epoch 2 (global step 6 < n_kd = 8), then
    # resumed by a new process-like run from the BackupAndRestore folder.
    backup = str(tmp_path / "b")
    with pytest.raises(RuntimeError, match="simulated preemption"):
        _run(backup, interrupt_at=2, steps_per_execution=spe)
    resumed, schedule = _run(backup, steps_per_execution=spe)
    assert [s for s, _ in schedule.history] == [s for s in steps if s >= 6]
    assert schedule.switch_step == N_KD
    assert int(keras.ops.convert_to_numpy(resumed.kd_step)) == 12
    for a, b in zip(full.student.get_weights(), resumed.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_callbacks_reject_wrong_objects():
    cb = KDSchedule()
    cb.set_model(keras.Sequential([keras.layers.Dense(1)]))
    with pytest.raises(ValueError, match="SaltDistiller"):
        cb.on_train_begin()
    with pytest.raises(ValueError, match="`dataset` must be a keras_gr"):
        PhasedDataSync([1, 2, 3])


def test_kd_schedule_with_steps_per_execution():
    # Issue 26 item 5: with steps_per_execution=2 the switch was reported
    # at step 2 instead of 4 and release_teacher never fired.
    distiller = make(n_kd=4)
    schedule = KDSchedule()
    _fit(distiller, [schedule], epochs=2, steps_per_execution=2)  # 8 steps
    assert schedule.history == [(1, 0.5), (3, 0.5), (5, 0.0), (7, 0.0)]
    assert schedule.switch_step == 4
    assert distiller._teacher_released


def test_kd_schedule_across_two_fit_calls():
    # Issue 26 item 5: a second fit() restarted the count (switch at 2
    # instead of 6).
    distiller = make(n_kd=6)
    first = KDSchedule()
    _fit(distiller, [first], epochs=1)  # steps 0-3
    assert first.switch_step is None and not distiller._teacher_released
    second = KDSchedule()
    _fit(distiller, [second], epochs=1)  # steps 4-7 (compiled anew)
    assert [s for s, _ in second.history] == [4, 5, 6, 7]
    assert [w for _, w in second.history] == [0.5, 0.5, 0.0, 0.0]
    assert second.switch_step == 6
    assert distiller._teacher_released
    # A third fit, wholly after the switch, releases before its first step.
    third = KDSchedule()
    _fit(make(n_kd=0), [third], epochs=1)
    assert third.switch_step == 0


def test_phased_data_sync_continues_on_a_second_fit():
    # Issue 26 item 4: a second fit() without initial_epoch restarted the
    # stream (selected rows again) while kd_step kept counting.
    x, y, mask = lm_data(24, seed=1)
    distiller = make(n_kd=N_KD, seed=2)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    ds = PhasedDataset(
        x,
        y,
        mask,
        selected=np.arange(0, 24, 3),
        n_kd_steps=N_KD,
        batch_size=BATCH,
        total_steps=STEPS_PER_EPOCH * EPOCHS,
    )

    for _ in range(2):
        distiller.fit(
            ds,
            epochs=2,
            steps_per_epoch=STEPS_PER_EPOCH,
            verbose=0,
            callbacks=[PhasedDataSync(ds)],
        )  # fit's default shuffle=True
    # The second fit started at global step 6 (the batches it served are
    # checked in tests/data/test_phased_dataset.py).
    assert ds.start_step == 6
    assert int(keras.ops.convert_to_numpy(distiller.kd_step)) == 12
