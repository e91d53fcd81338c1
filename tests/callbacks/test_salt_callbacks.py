import os

import keras
import numpy as np
import pytest

from keras_gr.callbacks import KDSchedule
from keras_gr.callbacks import PhasedDataSync
from keras_gr.data import PhasedDataset
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


def _run(backup_dir, extra=(), interrupt_at=None):
    x, y, mask = lm_data(24, seed=1)
    distiller = make(n_kd=N_KD, seed=2)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
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


def test_resume_in_kd_phase_equals_uninterrupted_run(tmp_path):
    ckpt = str(tmp_path / "ckpt.weights.h5")
    extra = [keras.callbacks.ModelCheckpoint(ckpt, save_weights_only=True)]
    try:
        import tensorboard  # noqa: F401

        log_dir = str(tmp_path / "tb")
        extra.append(keras.callbacks.TensorBoard(log_dir, update_freq="batch"))
    except ImportError:  # TensorBoard is optional
        log_dir = None
    full, schedule = _run(str(tmp_path / "a"), extra=extra)
    assert schedule.switch_step == N_KD
    assert [w for _, w in schedule.history] == [0.5] * N_KD + [0.0] * 4
    assert os.path.isfile(ckpt)
    assert log_dir is None or os.listdir(log_dir)
    # Preempted at the start of epoch 2 (global step 6 < n_kd = 8), then
    # resumed by a new process-like run from the BackupAndRestore folder.
    backup = str(tmp_path / "b")
    with pytest.raises(RuntimeError, match="simulated preemption"):
        _run(backup, interrupt_at=2)
    resumed, schedule = _run(backup)
    assert [s for s, _ in schedule.history] == list(range(6, 12))
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
