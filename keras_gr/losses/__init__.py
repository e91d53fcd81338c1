"""keras_gr.losses: loss functions as pure `keras.ops` (see ARCHITECTURE.md)."""

from keras_gr.losses.distillation import distillation_divergence
from keras_gr.losses.distillation import kd_weight_schedule
from keras_gr.losses.distillation import masked_mean
from keras_gr.losses.distillation import teacher_topk
from keras_gr.losses.distillation import topk_distillation_divergence

__all__ = [
    "distillation_divergence",
    "kd_weight_schedule",
    "masked_mean",
    "teacher_topk",
    "topk_distillation_divergence",
]
