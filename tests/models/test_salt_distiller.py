import keras
import keras_hub
import numpy as np
import pytest

from keras_gr.callbacks import KDSchedule
from keras_gr.losses import teacher_topk
from keras_gr.models import SaltDistiller
from keras_gr.models import teacher_topk_targets

VOCAB, SEQ, BATCH = 32, 8, 4
JAX = keras.backend.backend() == "jax"


def tiny_lm(layers, dim, seed, vocab=VOCAB):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.GemmaCausalLM(
        backbone=keras_hub.models.GemmaBackbone(
            vocabulary_size=vocab,
            num_layers=layers,
            num_query_heads=2,
            num_key_value_heads=2,
            hidden_dim=dim,
            intermediate_dim=2 * dim,
            head_dim=dim // 2,
            dropout=0.0,
        ),
        preprocessor=None,
    )


def lm_data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, VOCAB, size=(n, SEQ + 1)).astype("int32")
    x = {
        "token_ids": tokens[:, :-1],
        "padding_mask": np.ones((n, SEQ), bool),
    }
    mask = np.ones((n, SEQ), "float32")
    lengths = rng.integers(3, SEQ + 1, size=n)
    for i, length in enumerate(lengths):
        mask[i, length:] = 0
        x["padding_mask"][i, length:] = False
        x["token_ids"][i, length:] = 0
    return x, tokens[:, 1:], mask


def make(n_kd=3, seed=0, **kwargs):
    student = tiny_lm(1, 16, seed)
    teacher = tiny_lm(1, 8, seed + 100)
    return SaltDistiller(student, teacher, n_kd_steps=n_kd, **kwargs)


def _np_log_softmax(z, tau=1.0):
    z = np.asarray(z, "float64") / tau
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def train_loss(distiller, x, y, logits, sample_weight=None):
    """The training loss of one step at step 0 (the counter is reset)."""
    loss = distiller.compute_loss(x, y, logits, sample_weight, training=True)
    distiller.kd_step.assign(0)
    return float(loss)


def test_loss_matches_numpy_reference_with_padding():
    distiller = make(n_kd=5, kd_weight=0.3, temperature=2.0)
    x, y, mask = lm_data(4)
    s_logits = keras.ops.convert_to_numpy(distiller.student(x))
    t_logits = keras.ops.convert_to_numpy(distiller.teacher(x))
    loss = train_loss(distiller, x, y, s_logits, mask)
    ls = _np_log_softmax(s_logits)
    ce = -np.take_along_axis(ls, y[..., None], -1)[..., 0]
    ls2, lt2 = _np_log_softmax(s_logits, 2.0), _np_log_softmax(t_logits, 2.0)
    kl = 4.0 * (np.exp(lt2) * (lt2 - ls2)).sum(-1)
    want = (
        0.7 * (ce * mask).sum() / mask.sum()
        + 0.3 * (kl * mask).sum() / mask.sum()
    )
    np.testing.assert_allclose(loss, want, rtol=1e-4)
    # Evaluation reports the CE alone and does not advance the schedule.
    loss = float(distiller.compute_loss(x, y, s_logits, mask, training=False))
    np.testing.assert_allclose(loss, (ce * mask).sum() / mask.sum(), rtol=1e-4)
    assert int(keras.ops.convert_to_numpy(distiller.kd_step)) == 0


def _fit(distiller, callbacks=(), epochs=2, **compile_kwargs):
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), **compile_kwargs)
    x, y, mask = lm_data(16)
    return distiller.fit(
        x,
        y,
        sample_weight=mask,
        batch_size=BATCH,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=list(callbacks),
    )


def test_step_schedule_teacher_frozen_and_skipped_after_switch():
    # On JAX the step is jit-compiled; TensorFlow runs a tf.function graph
    # (XLA cannot call the host-side execution counter).
    n_kd = 5
    distiller = make(n_kd=n_kd, kd_weight=0.5, count_teacher_calls=True)
    teacher_before = [w.copy() for w in distiller.teacher.get_weights()]
    schedule_cb = KDSchedule(release_teacher=False)
    history = _fit(distiller, [schedule_cb], jit_compile=JAX or False)
    ws = [w for _, w in schedule_cb.history]
    assert [s for s, _ in schedule_cb.history] == list(range(8))
    assert ws == [0.5] * n_kd + [0.0] * (8 - n_kd)
    assert schedule_cb.switch_step == n_kd
    assert history.history["kd_weight"] == [0.5, 0.0]
    assert int(keras.ops.convert_to_numpy(distiller.kd_step)) == 8
    assert float(keras.ops.convert_to_numpy(distiller.kd_weight)) == 0.0
    for before, after in zip(teacher_before, distiller.teacher.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert not distiller.teacher.trainable_weights
    # 8 compiled steps ran; the teacher's forward pass executed in the
    # first n_kd only (counted on the host from inside the branch).
    assert distiller.teacher_calls == n_kd


def test_linear_schedule_under_jit_compile():
    n_kd = 3
    distiller = make(n_kd=n_kd, kd_weight=0.5, schedule="linear")
    schedule_cb = KDSchedule()
    _fit(distiller, [schedule_cb], jit_compile=True)
    ws = [w for _, w in schedule_cb.history]
    np.testing.assert_allclose(ws[:n_kd], [0.5, 1 / 3, 1 / 6], rtol=1e-6)
    assert ws[n_kd:] == [0.0] * (8 - n_kd)
    assert schedule_cb.switch_step == n_kd


@pytest.mark.slow
def test_release_teacher_gives_the_same_run():
    x, y, mask = lm_data(16)
    weights = []
    for release in (False, True):
        distiller = make(n_kd=3, seed=1)
        distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
        cb = KDSchedule(release_teacher=release)
        history = distiller.fit(
            x,
            y,
            sample_weight=mask,
            batch_size=BATCH,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[cb],
        )
        assert history.history["kd_phase"] == [0.0, 0.0]
        assert distiller._teacher_released == release
        weights.append(distiller.student.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_offline_topk_loss_equals_live_loss_at_full_vocabulary():
    distiller = make(n_kd=5, kd_weight=0.4, temperature=1.5)
    x, y, mask = lm_data(8)
    targets = teacher_topk_targets(
        distiller.teacher, x, k=VOCAB, temperature=1.5, verbose=0
    )
    assert targets["teacher_topk_ids"].shape == (8, SEQ, VOCAB)
    offline = SaltDistiller(
        distiller.student, None, n_kd_steps=5, kd_weight=0.4, temperature=1.5
    )
    s_logits = keras.ops.convert_to_numpy(distiller.student(x))
    t_logits = keras.ops.convert_to_numpy(distiller.teacher(x))
    live = train_loss(distiller, x, y, s_logits, mask)
    cached = train_loss(offline, {**x, **targets}, y, s_logits, mask)
    np.testing.assert_allclose(cached, live, rtol=1e-5)
    # With k < V the cached loss is a different (coarser) KL.
    ids, log_probs = teacher_topk(t_logits, 4, temperature=1.5)
    small = {"teacher_topk_ids": ids, "teacher_topk_log_probs": log_probs}
    coarse = train_loss(offline, {**x, **small}, y, s_logits, mask)
    assert coarse < live


def test_offline_targets_train_and_log_metrics():
    teacher = tiny_lm(1, 8, 7)
    x, y, mask = lm_data(16)
    targets = teacher_topk_targets(teacher, x, k=8, verbose=0)
    distiller = SaltDistiller(tiny_lm(1, 16, 3), None, n_kd_steps=4)
    distiller.compile(optimizer=keras.optimizers.Adam(3e-2))
    history = distiller.fit(
        {**x, **targets},
        y,
        sample_weight=mask,
        batch_size=BATCH,
        epochs=6,
        shuffle=False,
        verbose=0,
    )
    h = history.history
    assert {"loss", "ce_loss", "kd_loss", "kd_weight"} <= set(h)
    assert h["kd_weight"][0] == 0.5 and h["kd_weight"][-1] == 0.0
    assert h["ce_loss"][-1] < h["ce_loss"][0] - 0.1
    # Uneven batches (5, 5, 5, 1): the logged terms still combine into the
    # logged loss (w_t = 0 now, so loss == ce_loss).
    logs = distiller.evaluate(
        {**x, **targets},
        y,
        sample_weight=mask,
        batch_size=5,
        verbose=0,
        return_dict=True,
    )
    np.testing.assert_allclose(logs["loss"], logs["ce_loss"], rtol=1e-5)


def test_mixed_precision_and_student_save_load(tmp_path):
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        distiller = make(n_kd=2)
        distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
        x, y, mask = lm_data(8)
        history = distiller.fit(
            x, y, sample_weight=mask, batch_size=BATCH, epochs=1, verbose=0
        )
    finally:
        keras.config.set_dtype_policy("float32")
    assert distiller.student.compute_dtype == "bfloat16"
    assert np.isfinite(history.history["loss"][0])
    path = str(tmp_path / "student.keras")
    distiller.student.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)).astype("float32"),
        keras.ops.convert_to_numpy(distiller.student(x)).astype("float32"),
        rtol=1e-3,
        atol=1e-3,
    )


def test_config_round_trip():
    distiller = make(n_kd=7, kd_weight=0.2, schedule="linear")
    config = distiller.get_config()
    clone = SaltDistiller.from_config(config)
    assert clone.n_kd_steps == 7 and clone.schedule == "linear"
    assert clone.kd_weight_max == 0.2 and clone.teacher is not None
    assert clone.weight_at(3) == pytest.approx(0.2 * (1 - 3 / 7))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_kd_steps=-1), "Received: n_kd_steps=-1"),
        (dict(temperature=0.0), "Received: temperature=0.0"),
        (dict(kd_weight=1.2), "Received: kd_weight=1.2"),
        (dict(kd_weight=-0.1), "`kd_weight` must be a finite number in"),
        (dict(schedule="cosine"), "`schedule` must be one of"),
        (dict(divergence="jsd"), "Received: divergence='jsd'"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(n_kd_steps=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SaltDistiller(tiny_lm(1, 8, 0), tiny_lm(1, 8, 1), **args)


def test_vocabulary_mismatch_is_rejected():
    with pytest.raises(ValueError, match="`teacher` must share the student"):
        SaltDistiller(tiny_lm(1, 8, 0), tiny_lm(1, 8, 1, vocab=40))


class SubclassedLM(keras.Model):
    """Unbuilt until first called (unlike keras-hub models)."""

    def __init__(self, dim):
        super().__init__()
        self.embed = keras.layers.Embedding(VOCAB, dim)
        self.head = keras.layers.Dense(VOCAB)

    def call(self, x):
        return self.head(self.embed(x["token_ids"]))


def test_unbuilt_subclassed_teacher_is_built_before_the_compiled_step():
    # Building the teacher inside the train step's `cond` fails under JAX.
    teacher = SubclassedLM(4)
    distiller = SaltDistiller(SubclassedLM(8), teacher, n_kd_steps=2)
    assert not teacher.built
    history = _fit(distiller, epochs=1)
    assert teacher.built and np.isfinite(history.history["kd_loss"][0])
    assert history.history["kd_loss"][0] > 0.0


def _np_ce(logits, labels):
    log_p = _np_log_softmax(logits)
    return -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]


def packed_data(n=4, seed=0):
    """Rows packed as keras-hub's CausalLMPreprocessor packs them: a window
    of SEQ + 1 tokens, x = window[:-1], y = window[1:], label mask =
    padding[1:]. Every row is shorter than the window."""
    rng = np.random.default_rng(seed)
    window = rng.integers(4, VOCAB, size=(n, SEQ + 1)).astype("int32")
    padding = np.zeros((n, SEQ + 1), bool)
    for i, length in enumerate(rng.integers(3, SEQ, size=n)):
        padding[i, :length] = True
    window[~padding] = 0
    x = {"token_ids": window[:, :-1], "padding_mask": padding[:, :-1]}
    return x, window[:, 1:], padding[:, 1:].astype("float32")


def test_default_mask_is_the_shifted_label_mask():
    # Issue 26 item 9: without a label mask the padding mask was used,
    # which also counts each row's last real token (label: padding).
    distiller = make(n_kd=5)
    x, y, label_mask = packed_data()
    logits = keras.ops.convert_to_numpy(distiller.student(x))
    with_mask = train_loss(distiller, x, y, logits, label_mask)
    without = train_loss(distiller, x, y, logits)
    np.testing.assert_allclose(without, with_mask, rtol=1e-6)
    ce = _np_ce(logits, y)
    want = (ce * label_mask).sum() / label_mask.sum()
    got = float(distiller.compute_loss(x, y, logits, None, training=False))
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("n", [4, SEQ])
def test_per_sequence_sample_weight(n):
    # Issue 26 item 3: a (B,) sample_weight was broadcast along time when
    # B == T and failed with a backend error otherwise.
    distiller = make(n_kd=5)
    x, y, label_mask = packed_data(n)
    weights = np.linspace(0.5, 2.0, n).astype("float32")
    logits = keras.ops.convert_to_numpy(distiller.student(x))
    got = float(distiller.compute_loss(x, y, logits, weights, training=False))
    m = weights[:, None] * label_mask
    want = (_np_ce(logits, y) * m).sum() / m.sum()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_per_sequence_sample_weight_in_fit():
    distiller = make(n_kd=2)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y, _ = packed_data(6)
    history = distiller.fit(
        x, y, sample_weight=np.ones(6, "float32"), batch_size=3, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize(
    "shape", [(4, SEQ + 1), (4, SEQ, 1), (3,), (SEQ,)], ids=str
)
def test_bad_sample_weight_shape(shape):
    distiller = make(n_kd=5)
    x, y, _ = packed_data(4)
    logits = keras.ops.convert_to_numpy(distiller.student(x))
    with pytest.raises(ValueError, match="`sample_weight` must have shape"):
        distiller.compute_loss(x, y, logits, np.ones(shape), training=False)


def test_validation_loss_is_the_next_token_ce():
    # Issue 26 item 7: val_loss mixed KD and CE and jumped at the switch.
    distiller = make(n_kd=100)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y, mask = lm_data(8)
    history = distiller.fit(
        x,
        y,
        sample_weight=mask,
        batch_size=BATCH,
        validation_data=(x, y, mask),
        verbose=0,
    ).history
    assert history["val_kd_loss"][0] > 0.01
    np.testing.assert_allclose(
        history["val_loss"], history["val_ce_loss"], rtol=1e-6
    )


def test_offline_topk_after_switch_costs_and_needs_nothing():
    # Issue 26 item 6: the top-k path kept computing and logging kd_loss
    # after n_kd, and needed targets for the full-data rows.
    from keras_gr.callbacks import PhasedDataSync
    from keras_gr.data import PhasedDataset

    teacher = tiny_lm(1, 8, 7)
    x, y, mask = lm_data(16)
    selected = np.arange(0, 16, 2)
    x_sel = {key: value[selected] for key, value in x.items()}
    targets = teacher_topk_targets(teacher, x_sel, k=4, verbose=0)
    ds = PhasedDataset(
        x,
        y,
        mask,
        selected=selected,
        n_kd_steps=2,
        batch_size=BATCH,
        total_steps=4,
        kd_inputs=targets,
    )
    # KD-phase batches carry the targets of their own rows.
    bx = ds.batch_at(0)[0]
    pos = ds.batches.positions(0)
    np.testing.assert_array_equal(
        bx["teacher_topk_ids"], targets["teacher_topk_ids"][pos]
    )
    assert not np.any(ds.batch_at(2)[0]["teacher_topk_log_probs"])
    distiller = SaltDistiller(tiny_lm(1, 16, 3), None, n_kd_steps=2)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = distiller.fit(
        ds,
        epochs=2,
        steps_per_epoch=2,
        verbose=0,
        callbacks=[PhasedDataSync(ds)],
    ).history
    assert history["kd_loss"][0] > 0.0
    assert history["kd_loss"][1] == 0.0
    np.testing.assert_allclose(
        history["loss"][1], history["ce_loss"][1], rtol=1e-6
    )
    # A later fit without targets at all.
    history = distiller.fit(x, y, sample_weight=mask, verbose=0).history
    assert history["kd_loss"] == [0.0]


@pytest.mark.parametrize(
    "case, match",
    [
        ("ids_rank", "must have shape \\(batch, sequence, k\\)"),
        ("ids_length", "must have shape \\(batch, sequence, k\\)"),
        ("log_probs_shape", "must have the shape of"),
        ("k_too_big", "k <= vocabulary_size"),
        ("missing_log_probs", "missing 'teacher_topk_log_probs'"),
        ("missing_ids", "missing 'teacher_topk_ids'"),
    ],
)
def test_bad_topk_targets(case, match):
    # Issue 26 item 10: wrong-shape targets and missing log-probs (a bare
    # KeyError) get a clear error.
    distiller = SaltDistiller(tiny_lm(1, 8, 3), None, n_kd_steps=2)
    x, y, mask = lm_data(4)
    k = 3
    ids = np.zeros((4, SEQ, k), "int32")
    log_probs = np.full((4, SEQ, k), -2.0, "float32")
    if case == "ids_rank":
        ids = ids[..., 0]
    elif case == "ids_length":
        ids, log_probs = ids[:, :-1], log_probs[:, :-1]
    elif case == "log_probs_shape":
        log_probs = log_probs[..., :2]
    elif case == "k_too_big":
        ids = np.zeros((4, SEQ, VOCAB + 1), "int32")
        log_probs = np.full((4, SEQ, VOCAB + 1), -9.0, "float32")
    inputs = dict(x, teacher_topk_ids=ids, teacher_topk_log_probs=log_probs)
    if case == "missing_log_probs":
        del inputs["teacher_topk_log_probs"]
    elif case == "missing_ids":
        del inputs["teacher_topk_ids"]
    logits = keras.ops.convert_to_numpy(distiller.student(x))
    with pytest.raises(ValueError, match=match):
        distiller.compute_loss(inputs, y, logits, mask, training=True)
