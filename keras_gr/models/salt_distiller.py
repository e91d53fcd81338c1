"""SaltDistiller: a student CausalLM trained with a small teacher's soft
labels for its first `n_kd` steps (SALT, arXiv 2410.18779)."""

import keras
from keras import ops

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
    averaged over the same tokens: the `sample_weight` that keras-hub's
    `CausalLMPreprocessor` returns (the label padding mask), else
    `x["padding_mask"]`. The teacher's forward pass sits in one branch of
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

    Call: `distiller(x)` is `student(x)` (logits). Train with
    `fit(x, y, sample_weight)` where `x = {"token_ids", "padding_mask"}`,
    `y` the next-token labels and `sample_weight` the
    label mask, e.g. `student.preprocessor(texts)`. Metrics logged:
    `ce_loss`, `kd_loss` (running means weighted by batch size, as Keras's
    `loss`) and `kd_weight` (the `w_t` of the last step). Save the student
    alone with `distiller.student.save(...)`.

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
        if isinstance(inputs, dict) and TOPK_IDS in inputs:
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

    def _kd_term(self, x, labels_shape, student_logits, w, topk):
        zeros = ops.zeros(labels_shape, "float32")
        if topk is not None:
            ids, log_probs = topk
            return topk_distillation_divergence(
                ids,
                log_probs,
                student_logits,
                self.temperature,
                self.divergence,
            )
        if self.teacher is None or self._teacher_released:
            return zeros
        if self.schedule != "constant" and self.n_kd_steps == 0:
            return zeros
        if self.kd_weight_max == 0.0:
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

        return ops.cond(w > 0.0, with_teacher, lambda: zeros)

    def compute_loss(
        self,
        x=None,
        y=None,
        y_pred=None,
        sample_weight=None,
        training=True,
    ):
        topk = None
        if isinstance(x, dict) and TOPK_IDS in x:
            topk = (x[TOPK_IDS], x[TOPK_LOG_PROBS])
        labels = y
        if sample_weight is not None:
            mask = sample_weight
        elif isinstance(x, dict) and "padding_mask" in x:
            mask = x["padding_mask"]
        else:
            mask = None
        if mask is not None:
            mask = ops.cast(mask, "float32")
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
        loss = (1.0 - w) * ce + w * kd
        if training:
            self.kd_step.assign_add(ops.convert_to_tensor(1, "int32"))
            self.kd_weight.assign(w)
        # Weighted by batch size, as Keras weights its `loss` tracker, so
        # that the logged terms combine into the logged loss.
        rows = ops.cast(ops.shape(student_logits)[0], "float32")
        self.ce_tracker.update_state(ce, sample_weight=rows)
        self.kd_tracker.update_state(kd, sample_weight=rows)
        self.weight_tracker.update_state(w)
        for extra in self.losses:
            loss = loss + ops.cast(extra, "float32")
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            student=keras.saving.serialize_keras_object(self.student),
            teacher=(
                None
                if self.teacher is None
                else keras.saving.serialize_keras_object(self.teacher)
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
            config["student"]
        )
        if config.get("teacher") is not None:
            config["teacher"] = keras.saving.deserialize_keras_object(
                config["teacher"]
            )
        return cls(**config)
