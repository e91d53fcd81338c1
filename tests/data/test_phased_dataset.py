import keras
import numpy as np
import pytest
from keras import ops

from keras_gr.callbacks import PhasedDataSync
from keras_gr.data import PhasedBatches
from keras_gr.data import PhasedDataset


def test_switches_subsets_at_exactly_n_kd():
    selected = np.array([3, 7, 11, 12])
    batches = PhasedBatches(20, selected, n_kd_steps=5, batch_size=2, seed=3)
    for step in range(5):
        assert set(batches.rows(step)) <= set(selected)
        assert batches.phase(step) == "selected"
    # every pass over the selected pool covers it exactly once
    for start in (0, 2):
        rows = np.concatenate([batches.rows(start), batches.rows(start + 1)])
        assert sorted(rows) == sorted(selected)
    assert batches.phase(5) == "full"
    full = np.concatenate([batches.rows(s) for s in range(5, 15)])
    assert sorted(full) == list(range(20))  # one pass over all rows
    # deterministic and a pure function of the step
    again = PhasedBatches(20, selected, n_kd_steps=5, batch_size=2, seed=3)
    for step in (0, 4, 5, 17):
        np.testing.assert_array_equal(batches.rows(step), again.rows(step))


def test_py_dataset_and_tf_dataset_serve_the_same_stream():
    x = {"a": np.arange(12), "b": np.arange(12) * 10}
    y = np.arange(12) + 100
    ds = PhasedDataset(
        x, y, selected=[0, 1, 2], n_kd_steps=3, batch_size=3, total_steps=6
    )
    assert len(ds) == 6
    stream = [ds[i] for i in range(6)]
    for (bx, by), rows in zip(stream, map(ds.batches.rows, range(6))):
        np.testing.assert_array_equal(bx["a"], rows)
        np.testing.assert_array_equal(by, rows + 100)
    tf_stream = list(ds.as_tf_dataset().as_numpy_iterator())
    assert len(tf_stream) == 6
    for (bx, by), (tx, ty) in zip(stream, tf_stream):
        np.testing.assert_array_equal(bx["b"], tx["b"])
        np.testing.assert_array_equal(by, ty)
    ds.start_step = 4
    np.testing.assert_array_equal(ds[0][1], stream[4][1])
    assert len(list(ds.as_tf_dataset())) == 2


class _BatchSum(keras.metrics.Metric):
    def __init__(self, name="row_sum"):
        super().__init__(name=name)
        self.value = self.add_variable(shape=(), initializer="zeros")

    def update_state(self, value):
        self.value.assign(ops.cast(value, "float32"))

    def result(self):
        return ops.convert_to_tensor(self.value)


class _Probe(keras.Model):
    """Reports the sum of the row ids of each training batch."""

    def __init__(self):
        super().__init__(name="probe")
        self.dense = keras.layers.Dense(1)
        self.row_sum = _BatchSum()

    def call(self, x):
        return self.dense(x)

    def compute_loss(self, x, y, y_pred, sample_weight=None, training=True):
        self.row_sum.update_state(ops.sum(y))
        return ops.mean(ops.square(y_pred[:, 0]))


class _Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.sums = []

    def on_train_batch_end(self, batch, logs=None):
        self.sums.append(float(logs["row_sum"]))


def _probe_stream():
    """A 12-step stream of 16 rows and each step's row-id sum."""
    rows = np.arange(16)
    ds = PhasedDataset(
        rows[:, None].astype("float32"),
        rows.astype("float32"),
        selected=[0, 1, 2, 3],
        n_kd_steps=5,
        batch_size=2,
        total_steps=12,
    )
    return ds, [float(ds.batches.rows(s).sum()) for s in range(12)]


@pytest.mark.parametrize("as_tf", [False, True])
def test_one_fit_switches_at_n_kd_and_resumes(as_tf):
    ds, want = _probe_stream()
    model = _Probe()
    model.compile(optimizer="sgd", jit_compile=True)
    record = _Record()
    data = ds.as_tf_dataset() if as_tf else ds
    model.fit(
        data,
        epochs=4,
        steps_per_epoch=3,
        shuffle=False,
        verbose=0,
        callbacks=[PhasedDataSync(ds), record],
    )
    assert record.sums == want
    assert max(want[:5]) <= 5.0 and max(want[5:]) > 5.0
    # A run resumed from a checkpoint taken after epoch 2 (its step counter
    # restored to 6) continues at global step 6: the position comes from
    # the model's counter, not from `initial_epoch`.
    model.optimizer.iterations.assign(6)
    record = _Record()
    data = ds.as_tf_dataset() if as_tf else ds
    model.fit(
        data,
        epochs=4,
        initial_epoch=2,
        steps_per_epoch=3,
        shuffle=False,
        verbose=0,
        callbacks=[PhasedDataSync(ds), record],
    )
    assert record.sums == want[6:]


@pytest.mark.parametrize("as_tf", [False, True])
def test_second_fit_continues_in_order_with_default_shuffle(as_tf):
    # Issue 26 item 4: a second fit() without initial_epoch restarted the
    # stream, and fit's default shuffle=True reordered the batches (mixing
    # full-data batches into the KD phase).
    ds, want = _probe_stream()
    model = _Probe()
    model.compile(optimizer="sgd")
    record = _Record()
    for _ in range(2):
        model.fit(
            ds.as_tf_dataset() if as_tf else ds,
            epochs=2,
            steps_per_epoch=3,
            verbose=0,
            callbacks=[PhasedDataSync(ds), record],
        )
    assert record.sums == want


def test_bad_input():
    with pytest.raises(ValueError, match="`x` must not be empty"):
        PhasedDataset(
            np.zeros((0, 3)),
            selected=[0],
            n_kd_steps=1,
            batch_size=1,
            total_steps=2,
        )
    with pytest.raises(ValueError, match="`selected` must not be empty"):
        PhasedBatches(4, [], n_kd_steps=1, batch_size=1)
    with pytest.raises(ValueError, match=r"indices in \[0, 4\)"):
        PhasedBatches(4, [4], n_kd_steps=1, batch_size=1)
    with pytest.raises(ValueError, match="Received: n_kd_steps=-2"):
        PhasedBatches(4, [0], n_kd_steps=-2, batch_size=1)
    with pytest.raises(ValueError, match="`y` must have as many rows"):
        PhasedDataset(
            np.zeros((4, 3)),
            np.zeros(3),
            selected=[0],
            n_kd_steps=1,
            batch_size=1,
            total_steps=2,
        )
    with pytest.raises(ValueError, match="needs `steps_per_epoch`"):
        ds = PhasedDataset(
            np.zeros((4, 1)),
            np.zeros(4),
            selected=[0],
            n_kd_steps=1,
            batch_size=2,
            total_steps=2,
        )
        sync = PhasedDataSync(ds)
        sync.set_params({"steps": None})
        sync.on_epoch_begin(0)
