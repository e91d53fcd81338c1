"""SaltDistiller: a student CausalLM trained with a small teacher's soft
labels for its first `n_kd` steps (SALT, arXiv 2410.18779)."""

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_gr import _backend
from keras_gr._validation import check_choice
from keras_gr._validation import check_fraction
from keras_gr._validation import check_integer
from keras_gr._validation import check_positive
from keras_gr.losses.distillation import DIVERGENCES
from keras_gr.losses.distillation import SCHEDULES
from keras_gr.losses.distillation import distillation_divergence
from keras_gr.losses.distillation import kd_weight_schedule
from keras_gr.losses.distillation import masked_mean
from keras_gr.losses.distillation import topk_distillation_divergence

TOPK_IDS = "teacher_topk_ids"
TOPK_LOG_PROBS = "teacher_topk_log_probs"


def _vocabulary_size(model):
    backbone = getattr(model, "backbone", None)
    size = getattr(backbone, "vocabulary_size", None)
    if size is None:
        tokenizer = getattr(
            getattr(model, "preprocessor", None), "tokenizer", None
        )
        if tokenizer is not None:
            size = tokenizer.vocabulary_size()
    return size


def _static_shape(value):
    """The static shape as a tuple, or `None` when the rank is unknown."""
    try:
        return tuple(getattr(value, "shape", np.shape(value)))
    except (TypeError, ValueError):
        return None


def _dims_differ(a, b):
    if a is None or b is None:
        return False
    return len(a) != len(b) or any(
        x is not None and y is not None and x != y for x, y in zip(a, b)
    )


def label_mask_from_padding(padding_mask: Any) -> Any:
    """The next-token label mask of `x["padding_mask"]` (right padding), as
    keras-hub's `CausalLMPreprocessor` returns it in `sample_weight`.

    The label of position `i` is token `i + 1`, so it is real when token
    `i + 1` is: `mask[:, i] = padding_mask[:, i + 1]`. The last position's
    label lies outside `x`; it keeps `padding_mask[:, -1]` (real for a
    sequence cut at the window, the usual case for a full row). Unlike the
    padding mask itself, this drops each padded row's last real token,
    whose label is padding.

    Example:

    >>> import keras, numpy as np
    >>> mask = label_mask_from_padding(np.array([[1, 1, 1, 0, 0]], bool))
    >>> keras.ops.convert_to_numpy(mask).astype(int).tolist()
    [[1, 1, 0, 0, 0]]
    """
    padding_mask = ops.cast(padding_mask, "bool")
    return ops.concatenate([padding_mask[:, 1:], padding_mask[:, -1:]], 1)


def _contains_strings(data):
    for leaf in keras.tree.flatten(data):
        if isinstance(leaf, (str, bytes)):
            return True
        dtype = getattr(leaf, "dtype", None)
        if dtype is None and isinstance(leaf, (list, tuple)):
            dtype = np.asarray(leaf).dtype
        if dtype is None:
            continue
        if getattr(dtype, "kind", None) in ("U", "S", "O"):
            return True
        if "string" in str(dtype):
            return True
    return False


def _is_dataset(data):
    return hasattr(data, "element_spec") and hasattr(data, "map")


class _HostCounter:
    def __init__(self):
        self.count = 0

    def increment(self):
        self.count += 1


class _LastValue(keras.metrics.Metric):
    """Reports the most recent value it was given (not a running mean)."""

    def __init__(self, name="last_value", dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        self.value = self.add_variable(
            shape=(), initializer="zeros", dtype=dtype, name="value"
        )

    def update_state(self, value):
        self.value.assign(ops.cast(value, self.dtype))

    def result(self):
        return ops.convert_to_tensor(self.value)


@keras.saving.register_keras_serializable(package="keras_gr")
class SaltDistiller(keras.Model):
    """Trains a student CausalLM with a frozen small teacher's soft labels
    for the first `n_kd_steps` steps, then with plain next-token loss (SALT).

    From "A Little Help Goes a Long Way: Efficient LLM Training by
    Leveraging Small LMs" (Rawat et al., arXiv 2410.18779). At training step
    `t` (counted in a non-trainable variable of this model, so the schedule
    is part of the compiled step, survives checkpoints and never reads
    `optimizer.iterations`):

        L_t = (1 - w_t) * CE(y, p_S) + w_t * KD(p_T, p_S; tau),

        w_t = w                         schedule="step" (the paper), t < n_kd
            = w * max(0, 1 - t / n_kd)  schedule="linear", t < n_kd
            = 0                         t >= n_kd (both)
            = w                         schedule="constant" (never off).

    `CE` is the token cross-entropy; `KD` is `tau^2 * KL` between the
    tempered teacher and student next-token distributions, forward
    `KL(p_T || p_S)` (default) or reverse (`keras_gr.losses`). Both terms are
    averaged over the same tokens, weighted by a mask: a `(B, T)`
    `sample_weight` (keras-hub's `CausalLMPreprocessor` returns the label
    mask there); else the label mask made from `x["padding_mask"]` as that
    preprocessor makes it (shifted by one, see `label_mask_from_padding`);
    a per-sequence `(B,)` `sample_weight` multiplies that label mask. The
    reduction is `sum(l * m) / sum(m)`. The teacher's forward pass sits in
    one branch of
    `keras.ops.cond(w_t > 0, ...)`, so once `w_t` is 0 the compiled step
    does not execute it (`count_teacher_calls=True` counts real executions
    on the host; `release_teacher()` also removes it from the compiled step).

    Instead of a live teacher, the targets may carry the teacher's stored
    top-k ids and log-probabilities (`keras_gr.models.teacher_topk_targets`)
    as extra inputs: `x = {"token_ids", "padding_mask", "teacher_topk_ids",
    "teacher_topk_log_probs"}` (inputs, so that Keras batches them with `x`
    and a per-token `sample_weight` stays valid); the student sees only
    the first two. The missing mass is one "rest" bucket (see
    `keras_gr.losses.topk_distillation_divergence`), exact at `k = V`.

    Why not `keras.distillation.Distiller` / `LogitsDistillation` (keras
    3.15): its default `loss="kl_divergence"` is resolved to the plain
    function, so the softmax / temperature step is skipped and the "KL" is
    taken on raw logits clipped to [eps, 1]; `Distiller` ignores
    `sample_weight` (padding tokens are distilled); and under JAX its
    `student_loss_weight` is a Python float traced once, so a schedule set
    during `fit` has no effect.

    The top-k path costs and reads nothing of the targets once `w_t` is 0
    (the KD term sits in the same `ops.cond`): full-data rows may carry
    zeros in their place (`keras_gr.data.PhasedDataset(kd_inputs=...)`),
    or a later `fit` may omit the two keys.

    Call: `distiller(x)` is `student(x)` (logits). Train with
    `fit(x, y, sample_weight)` where `x = {"token_ids", "padding_mask"}`,
    `y` the next-token labels and `sample_weight` the label mask, e.g.
    `student.preprocessor(texts)`; or, as with a keras-hub `CausalLM`, with
    raw strings: `fit(texts)`, `evaluate(texts)`, `predict(texts)` and
    string `validation_data` run the student's preprocessor first (arrays
    and lists once, up front; a `tf.data.Dataset` by `map`).

    Metrics logged: `ce_loss`, `kd_loss` (running means weighted by batch
    size, as Keras's `loss`) and `kd_weight` (the `w_t` of the last step).
    The training `loss` is the SALT mixture `L_t`; the evaluation `loss`
    (hence `val_loss`, the default monitor of `EarlyStopping` and
    `ModelCheckpoint(save_best_only=True)`) is the next-token CE alone, so
    it does not jump at the switch: KD is a training device, and
    `val_kd_loss` is reported beside it. Save the student alone with
    `distiller.student.save(...)`; a saved distiller reloads compiled, and
    the compile state of the student and teacher (which the distiller
    trains, not they) is not saved with it.

    Args:
        student: the `keras_hub.models.CausalLM` to train.
        teacher: a frozen `CausalLM` with the same vocabulary (set to
            `trainable=False` here), or `None` for stored top-k targets.
            Defaults to `None`.
        kd_weight: `w` in [0, 1]. Defaults to `0.5`.
        n_kd_steps: `n_kd >= 0`, the length of the KD phase in steps.
            Defaults to `0`.
        schedule: `"step"`, `"linear"` or `"constant"`. Defaults to
            `"step"`.
        temperature: `tau > 0`. Defaults to `1.0`.
        divergence: `"forward"` or `"reverse"`. Defaults to `"forward"`.
        count_teacher_calls: count real executions of the teacher's forward
            pass in `teacher_calls` (host callback; on TensorFlow compile
            with `jit_compile=False`). Defaults to `False`.
        **kwargs: passed to `keras.Model`.

    Example:

    Any `keras.Model` mapping `{"token_ids", "padding_mask"}` to logits
    works as student or teacher (a keras-hub `CausalLM` does); here two
    tiny ones keep the example fast:

    >>> import keras
    >>> import numpy as np
    >>> class TinyLM(keras.Model):
    ...     def __init__(self, dim):
    ...         super().__init__()
    ...         self.embed = keras.layers.Embedding(16, dim)
    ...         self.head = keras.layers.Dense(16)
    ...     def call(self, x):
    ...         return self.head(self.embed(x["token_ids"]))
    >>> distiller = SaltDistiller(TinyLM(8), TinyLM(4), n_kd_steps=2)
    >>> distiller.compile(optimizer="adam")
    >>> x = {"token_ids": np.ones((4, 6), "int32"),
    ...      "padding_mask": np.ones((4, 6), bool)}
    >>> history = distiller.fit(x, np.ones((4, 6), "int32"), batch_size=2,
    ...                         epochs=2, verbose=0)
    >>> history.history["kd_weight"]  # w_t of each epoch's last step
    [0.5, 0.0]
    >>> int(distiller.kd_step.numpy()), float(distiller.kd_weight.numpy())
    (4, 0.0)
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: "keras.Model | None" = None,
        *,
        kd_weight: float = 0.5,
        n_kd_steps: int = 0,
        schedule: str = "step",
        temperature: float = 1.0,
        divergence: str = "forward",
        count_teacher_calls: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(student, keras.Model):
            raise ValueError(
                "`student` must be a keras.Model (a keras-hub CausalLM). "
                f"Received: student={student!r}"
            )
        if teacher is not None:
            if not isinstance(teacher, keras.Model):
                raise ValueError(
                    "`teacher` must be a keras.Model (a keras-hub CausalLM) "
                    f"or None. Received: teacher={teacher!r}"
                )
            v_s, v_t = _vocabulary_size(student), _vocabulary_size(teacher)
            if v_s is not None and v_t is not None and v_s != v_t:
                raise ValueError(
                    "`teacher` must share the student's vocabulary (same "
                    f"tokenizer). Received: teacher with vocabulary_size={v_t}"
                    f" for a student with vocabulary_size={v_s}"
                )
            teacher.trainable = False
        self.student = student
        self.teacher = teacher
        self.kd_weight_max = check_fraction(
            "kd_weight", kd_weight, allow_zero=True
        )
        self.n_kd_steps = check_integer("n_kd_steps", n_kd_steps, minimum=0)
        self.schedule = check_choice("schedule", schedule, SCHEDULES)
        self.temperature = check_positive("temperature", temperature)
        self.divergence = check_choice("divergence", divergence, DIVERGENCES)
        self.count_teacher_calls = bool(count_teacher_calls)
        self._teacher_counter = _HostCounter()
        self._teacher_released = False
        self.kd_step = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="kd_step",
        )
        self.kd_weight = self.add_weight(
            shape=(),
            dtype="float32",
            initializer=keras.initializers.Constant(self.kd_weight_max),
            trainable=False,
            name="kd_weight",
        )
        self.ce_tracker = keras.metrics.Mean(name="ce_loss")
        self.kd_tracker = keras.metrics.Mean(name="kd_loss")
        self.weight_tracker = _LastValue(name="kd_weight")

    def call(self, inputs, training=False):
        if isinstance(inputs, dict) and (
            TOPK_IDS in inputs or TOPK_LOG_PROBS in inputs
        ):
            self._check_topk_keys(inputs)
            inputs = {
                key: value
                for key, value in inputs.items()
                if key not in (TOPK_IDS, TOPK_LOG_PROBS)
            }
        elif self.teacher is not None and not self.teacher.built:
            # Build an unbuilt (subclassed) teacher here, during Keras's
            # symbolic build, never inside the compiled train step's cond.
            self.teacher(inputs, training=False)
        return self.student(inputs, training=training)

    @property
    def teacher_calls(self) -> int:
        """Executions of the teacher's forward pass counted on the host
        (only with `count_teacher_calls=True`)."""
        return self._teacher_counter.count

    def weight_at(self, step: int) -> float:
        """`w_t` of this model's schedule at (0-based) step `step`."""
        return float(
            kd_weight_schedule(
                step, self.kd_weight_max, self.n_kd_steps, self.schedule
            )
        )

    def release_teacher(self):
        """Drops the teacher from the compiled train / test steps (they are
        rebuilt on their next use). Only valid once `w_t` is 0 for good."""
        self._teacher_released = True
        for name in ("train_function", "test_function"):
            if getattr(self, name, None) is not None:
                maker = getattr(self, f"make_{name}")
                maker(force=True)

    @staticmethod
    def _check_topk_keys(x):
        for key in (TOPK_IDS, TOPK_LOG_PROBS):
            if key not in x:
                raise ValueError(
                    f"Offline top-k targets need both {TOPK_IDS!r} and "
                    f"{TOPK_LOG_PROBS!r} in `x` (as "
                    "`keras_gr.models.teacher_topk_targets` returns them). "
                    f"Received: x with keys {sorted(x)}, missing {key!r}"
                )

    def _topk_targets(self, x, labels_shape):
        """The `(ids, log_probs)` inputs of `x`, checked, or `None`."""
        if not isinstance(x, dict) or (
            TOPK_IDS not in x and TOPK_LOG_PROBS not in x
        ):
            return None
        self._check_topk_keys(x)
        ids, log_probs = x[TOPK_IDS], x[TOPK_LOG_PROBS]
        ids_shape = _static_shape(ids) or (None, None, None)
        vocab = _vocabulary_size(self.student)
        if len(ids_shape) != 3 or _dims_differ(ids_shape[:2], labels_shape):
            raise ValueError(
                f"`x[{TOPK_IDS!r}]` must have shape (batch, sequence, k) "
                f"matching the labels {labels_shape}. Received: shape "
                f"{ids_shape}"
            )
        lp_shape = _static_shape(log_probs)
        if _dims_differ(lp_shape, ids_shape):
            raise ValueError(
                f"`x[{TOPK_LOG_PROBS!r}]` must have the shape of "
                f"`x[{TOPK_IDS!r}]` {ids_shape}. Received: shape {lp_shape}"
            )
        k = ids_shape[-1]
        if vocab is not None and k is not None and k > vocab:
            raise ValueError(
                f"`x[{TOPK_IDS!r}]` must hold k <= vocabulary_size "
                f"({vocab}) ids per position. Received: k={k}"
            )
        return ids, log_probs

    def _loss_mask(self, x, labels_shape, sample_weight):
        """The per-token weights of both loss terms (see the docstring)."""
        label_mask = None
        if isinstance(x, dict) and "padding_mask" in x:
            label_mask = ops.cast(
                label_mask_from_padding(x["padding_mask"]), "float32"
            )
        if sample_weight is None:
            return label_mask
        shape = _static_shape(sample_weight)
        if shape is None:  # rank unknown: taken as per token
            return ops.cast(sample_weight, "float32")
        if len(shape) == 2 and not _dims_differ(shape, labels_shape):
            return ops.cast(sample_weight, "float32")
        if len(shape) == 1 and not _dims_differ(shape, labels_shape[:1]):
            per_row = ops.cast(sample_weight, "float32")[:, None]
            if label_mask is None:
                return per_row * ops.ones(labels_shape, "float32")
            return per_row * label_mask
        raise ValueError(
            "`sample_weight` must have shape (batch,) (one weight per "
            "sequence) or (batch, sequence) (one per token, e.g. the label "
            f"mask) for labels of shape {labels_shape}. Received: "
            f"sample_weight with shape {shape}"
        )

    def _kd_term(self, x, labels_shape, student_logits, w, topk):
        zeros = ops.zeros(labels_shape, "float32")
        if self.schedule != "constant" and self.n_kd_steps == 0:
            return zeros
        if self.kd_weight_max == 0.0:
            return zeros
        if topk is not None:
            ids, log_probs = topk

            def with_targets():
                return topk_distillation_divergence(
                    ids,
                    log_probs,
                    student_logits,
                    self.temperature,
                    self.divergence,
                )

            return _backend.cond(w > 0.0, with_targets, lambda: zeros)
        if self.teacher is None or self._teacher_released:
            return zeros

        def with_teacher():
            teacher_logits = self.teacher(x, training=False)
            if self.count_teacher_calls:
                from keras_gr._backend import count_executions

                teacher_logits = count_executions(
                    teacher_logits, self._teacher_counter
                )
            return distillation_divergence(
                teacher_logits,
                student_logits,
                self.temperature,
                self.divergence,
            )

        return _backend.cond(w > 0.0, with_teacher, lambda: zeros)

    def compute_loss(
        self,
        x=None,
        y=None,
        y_pred=None,
        sample_weight=None,
        training=True,
    ):
        labels = y
        labels_shape = _static_shape(labels)
        if labels_shape is None:
            labels_shape = (None, None)
        if len(labels_shape) != 2:
            raise ValueError(
                "`y` must be (batch, sequence) next-token ids. Received: y "
                f"with shape {labels_shape}"
            )
        topk = self._topk_targets(x, labels_shape)
        mask = self._loss_mask(x, labels_shape, sample_weight)
        student_logits = ops.cast(y_pred, "float32")
        w = kd_weight_schedule(
            self.kd_step, self.kd_weight_max, self.n_kd_steps, self.schedule
        )
        ce = masked_mean(
            ops.sparse_categorical_crossentropy(
                labels, student_logits, from_logits=True
            ),
            mask,
        )
        kd = masked_mean(
            self._kd_term(x, ops.shape(labels), student_logits, w, topk),
            mask,
        )
        if training:
            loss = (1.0 - w) * ce + w * kd
            self.kd_step.assign_add(ops.convert_to_tensor(1, "int32"))
            self.kd_weight.assign(w)
        else:
            # Evaluation reports the next-token CE as `loss` (see the class
            # docstring); `kd_loss` is logged beside it.
            loss = ce
        # Weighted by batch size, as Keras weights its `loss` tracker, so
        # that the logged terms combine into the logged loss.
        rows = ops.cast(ops.shape(student_logits)[0], "float32")
        self.ce_tracker.update_state(ce, sample_weight=rows)
        self.kd_tracker.update_state(kd, sample_weight=rows)
        self.weight_tracker.update_state(w)
        for extra in self.losses:
            loss = loss + ops.cast(extra, "float32")
        return loss

    def _preprocess(self, x, y=None, sample_weight=None):
        """Runs the student's preprocessor on raw (string) inputs, as a
        keras-hub `CausalLM` does in `fit` / `evaluate` / `predict`."""
        student = self.student
        if getattr(student, "preprocessor", None) is None:
            return x, y, sample_weight
        preprocess = getattr(student, "preprocess_samples", None)
        if preprocess is None:

            def preprocess(x, y=None, sample_weight=None):
                return student.preprocessor(x, y=y, sample_weight=sample_weight)

        if _is_dataset(x):
            spec = keras.tree.flatten(x.element_spec)
            if any(getattr(s.dtype, "name", "") == "string" for s in spec):
                x = x.map(preprocess)
            return x, y, sample_weight
        if not _contains_strings(x):
            return x, y, sample_weight
        if isinstance(x, (list, tuple)):
            x = np.asarray(x)
        out = preprocess(x, y, sample_weight)
        out = keras.tree.map_structure(ops.convert_to_numpy, out)
        return keras.utils.unpack_x_y_sample_weight(out)

    def _preprocess_validation(self, data):
        if data is None or _is_dataset(data):
            return self._preprocess(data)[0]
        return self._preprocess(*keras.utils.unpack_x_y_sample_weight(data))

    def fit(self, x=None, y=None, sample_weight=None, **kwargs):
        """`keras.Model.fit`, with raw strings (or a `tf.data` dataset
        of strings) first run through the student's preprocessor, as
        a keras-hub `CausalLM` does; token inputs pass unchanged."""
        x, y, sample_weight = self._preprocess(x, y, sample_weight)
        if kwargs.get("validation_data") is not None:
            kwargs["validation_data"] = self._preprocess_validation(
                kwargs["validation_data"]
            )
        return super().fit(x, y, sample_weight=sample_weight, **kwargs)

    def evaluate(self, x=None, y=None, sample_weight=None, **kwargs):
        """`keras.Model.evaluate`, with raw strings (or a `tf.data` dataset
        of strings) first run through the student's preprocessor, as
        a keras-hub `CausalLM` does; token inputs pass unchanged."""
        x, y, sample_weight = self._preprocess(x, y, sample_weight)
        return super().evaluate(x, y, sample_weight=sample_weight, **kwargs)

    def predict(self, x, **kwargs):
        """`keras.Model.predict`, with raw strings (or a `tf.data` dataset
        of strings) first run through the student's preprocessor, as
        a keras-hub `CausalLM` does; token inputs pass unchanged."""
        x = self._preprocess(x)[0]
        return super().predict(x, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            student=_serialize_uncompiled(self.student),
            teacher=(
                None
                if self.teacher is None
                else _serialize_uncompiled(self.teacher)
            ),
            kd_weight=self.kd_weight_max,
            n_kd_steps=self.n_kd_steps,
            schedule=self.schedule,
            temperature=self.temperature,
            divergence=self.divergence,
            count_teacher_calls=self.count_teacher_calls,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(
            _without_compile_config(config["student"])
        )
        if config.get("teacher") is not None:
            config["teacher"] = keras.saving.deserialize_keras_object(
                _without_compile_config(config["teacher"])
            )
        return cls(**config)


def _without_compile_config(config):
    """A sub-model's config without its compile state: the distiller trains
    it, and keras-hub tasks (custom `compile`) warn when it is restored."""
    if isinstance(config, dict) and "compile_config" in config:
        config = {k: v for k, v in config.items() if k != "compile_config"}
    return config


def _serialize_uncompiled(model):
    return _without_compile_config(keras.saving.serialize_keras_object(model))
