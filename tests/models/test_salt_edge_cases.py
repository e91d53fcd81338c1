"""SALT edge cases in one place (issue 26, "Beyond the list"): bad shapes,
dtypes, NaN and empty inputs to every public SALT function get a clear
`ValueError` naming the argument; raw text runs through `SaltDistiller`
as through a keras-hub `CausalLM`, also after a `.keras` round trip.

The callbacks' `steps_per_execution > 1`, two-`fit` and `BackupAndRestore`
cases live in tests/callbacks/test_salt_callbacks.py."""

import warnings

import keras
import keras_hub
import numpy as np
import pytest

from keras_gr.losses import distillation_divergence
from keras_gr.losses import masked_mean
from keras_gr.losses import teacher_topk
from keras_gr.losses import topk_distillation_divergence
from keras_gr.models import SaltDistiller
from keras_gr.models import salt_selection_scores
from keras_gr.models import select_top_fraction
from keras_gr.models import teacher_topk_targets
from tests.models.test_salt_distiller import lm_data
from tests.models.test_salt_distiller import tiny_lm

Z = np.zeros((2, 3, 5), "float32")
IDS = np.zeros((2, 3, 2), "int32")


def _call(fn, *args, **kwargs):
    return lambda: fn(*args, **kwargs)


CASES = {
    "kd_vocab_mismatch": (
        _call(distillation_divergence, Z, np.zeros((2, 3, 6))),
        "`teacher_logits` and `student_logits` must have the same shape",
    ),
    "kd_empty_vocab": (
        _call(distillation_divergence, Z[..., :0], Z[..., :0]),
        "`teacher_logits` must have a non-empty vocabulary axis",
    ),
    "kd_nan_temperature": (
        _call(distillation_divergence, Z, Z, float("nan")),
        "Received: temperature=nan",
    ),
    "topk_k_above_vocab": (
        _call(teacher_topk, Z, 6),
        "`k` must be an integer >= 1 and <= 5. Received: k=6",
    ),
    "topk_ids_log_probs_mismatch": (
        _call(topk_distillation_divergence, IDS, IDS[..., :1], Z),
        "`topk_ids` and `topk_log_probs` must have the same shape",
    ),
    "topk_positions_mismatch": (
        _call(topk_distillation_divergence, IDS[:, :2], IDS[:, :2], Z),
        "must have the same shape",
    ),
    "topk_k_above_student_vocab": (
        _call(
            topk_distillation_divergence,
            np.zeros((2, 3, 6), "int32"),
            np.zeros((2, 3, 6)),
            Z,
        ),
        "1 <= k <= V",
    ),
    "masked_mean_shape": (
        _call(masked_mean, np.ones((2, 3)), np.ones((2, 4))),
        "`values` and `mask` must have the same shape",
    ),
    "select_nan": (
        _call(select_top_fraction, [np.nan, 1.0], 0.5),
        "`scores` must not hold NaN",
    ),
    "select_empty": (
        _call(select_top_fraction, [], 0.5),
        "`scores` must not be empty",
    ),
    "select_rank": (
        _call(select_top_fraction, [[1.0, 2.0]], 0.5),
        "`scores` must have rank 1",
    ),
    "select_strings": (
        _call(select_top_fraction, ["a", "b"], 0.5),
        "`scores` must be real numbers",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pure_functions_reject_bad_input(case):
    fn, match = CASES[case]
    with pytest.raises(ValueError, match=match):
        fn()


@pytest.mark.parametrize("fn", ["scores", "targets"])
@pytest.mark.parametrize(
    "case, match",
    [
        ("no_dict", "`x` must be a dict with 'token_ids'"),
        ("rank_1", "must have rank 2"),
        ("empty", "must not be empty"),
        ("float_ids", "must hold integer token ids"),
        ("ids_too_big", "must hold ids in \\[0, 32\\)"),
        ("mask_shape", "`x\\['padding_mask'\\]` must have the shape"),
    ],
)
def test_teacher_passes_reject_bad_input(fn, case, match):
    teacher = tiny_lm(1, 8, 5)
    x, y, mask = lm_data(4)
    if case == "no_dict":
        x = x["token_ids"]
    elif case == "rank_1":
        x = dict(x, token_ids=x["token_ids"][0])
    elif case == "empty":
        x = {key: value[:0] for key, value in x.items()}
    elif case == "float_ids":
        x = dict(x, token_ids=x["token_ids"] + 0.5)
    elif case == "ids_too_big":
        x = dict(x, token_ids=x["token_ids"] * 100)
    elif case == "mask_shape":
        x = dict(x, padding_mask=x["padding_mask"][:2])
    with pytest.raises(ValueError, match=match):
        if fn == "scores":
            salt_selection_scores(teacher, x, y, verbose=0)
        else:
            teacher_topk_targets(teacher, x, k=2, verbose=0)


def test_distiller_rejects_bad_labels():
    distiller = SaltDistiller(tiny_lm(1, 8, 0), tiny_lm(1, 8, 1))
    x, y, mask = lm_data(2)
    logits = distiller.student(x)
    with pytest.raises(ValueError, match="`y` must be \\(batch, sequence\\)"):
        distiller.compute_loss(x, y[..., None], logits, mask, training=False)


TEXTS = [
    "the cat sat on the mat",
    "a b c",
    "one two three four five six seven",
    "hello world",
]


def test_raw_text_fit_and_keras_round_trip(tiny_preset, tmp_path):
    # Issue 26 items 8 and 16: fit on raw strings failed ("Unrecognized
    # data type"), and loading a saved distiller warned "compile() was not
    # called as part of model loading".
    keras.utils.set_random_seed(0)
    student = keras_hub.models.GemmaCausalLM.from_preset(tiny_preset)
    student.preprocessor.sequence_length = 12
    teacher = tiny_lm(1, 8, 3, vocab=student.backbone.vocabulary_size)
    distiller = SaltDistiller(student, teacher, n_kd_steps=2)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = distiller.fit(
        TEXTS, batch_size=2, epochs=1, verbose=0, validation_data=(TEXTS,)
    ).history
    assert history["kd_loss"][0] > 0.0 and np.isfinite(history["val_loss"])
    # Raw text evaluates exactly as the student's own preprocessing.
    x, y, sw = keras.utils.unpack_x_y_sample_weight(student.preprocessor(TEXTS))
    x = keras.tree.map_structure(keras.ops.convert_to_numpy, x)
    y, sw = keras.ops.convert_to_numpy(y), keras.ops.convert_to_numpy(sw)
    before = distiller.evaluate(TEXTS, verbose=0, return_dict=True)
    arrays = distiller.evaluate(x, y, sw, verbose=0, return_dict=True)
    np.testing.assert_allclose(before["loss"], arrays["loss"], rtol=1e-6)
    logits = distiller.predict(TEXTS, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.saving.load_model(path)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "compile()" in m], messages
    assert loaded.compiled
    # The loaded model preprocesses raw text itself and agrees.
    after = loaded.evaluate(TEXTS, verbose=0, return_dict=True)
    for key in ("loss", "ce_loss", "kd_loss"):
        np.testing.assert_allclose(after[key], before[key], rtol=1e-5)
    np.testing.assert_allclose(
        loaded.predict(TEXTS, verbose=0), logits, rtol=1e-5, atol=1e-5
    )
    assert int(keras.ops.convert_to_numpy(loaded.kd_step)) == 2


def test_label_mask_from_padding_is_exported_and_shifts_by_one():
    """`keras_gr.models.label_mask_from_padding` is the distiller's own
    function and equals a NumPy shift of the padding mask by one."""
    from keras_gr import models
    from keras_gr.models.salt import salt_distiller

    assert models.label_mask_from_padding is (
        salt_distiller.label_mask_from_padding
    )
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, size=6)
    padding = np.arange(8)[None, :] < lengths[:, None]
    expected = np.empty_like(padding)
    expected[:, :-1] = padding[:, 1:]
    expected[:, -1] = padding[:, -1]
    got = keras.ops.convert_to_numpy(models.label_mask_from_padding(padding))
    np.testing.assert_array_equal(got, expected)
