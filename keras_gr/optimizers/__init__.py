"""keras_gr.optimizers: Keras optimizers.

`OneSidedShampoo`, `Shampoo`, `AdagradNorm` and `FullMatrixAdagrad`
("Structured Preconditioners in Adaptive Optimization", arXiv 2503.10537)
and `LoraRite` (LoRA Done RITE, arXiv 2410.20625) with
`save_training_state` / `load_training_state` to pause and resume LoRA
training. Works with the `jax`
extra alone (no TensorFlow, no keras-hub). See ARCHITECTURE.md for where
this sits.
"""

from keras_gr.optimizers.adagrad_norm import AdagradNorm
from keras_gr.optimizers.full_matrix_adagrad import FullMatrixAdagrad
from keras_gr.optimizers.lora_rite import LoraRite
from keras_gr.optimizers.lora_rite import load_training_state
from keras_gr.optimizers.lora_rite import save_training_state
from keras_gr.optimizers.one_sided_shampoo import OneSidedShampoo
from keras_gr.optimizers.shampoo import Shampoo

__all__ = [
    "AdagradNorm",
    "FullMatrixAdagrad",
    "LoraRite",
    "OneSidedShampoo",
    "Shampoo",
    "load_training_state",
    "save_training_state",
]
