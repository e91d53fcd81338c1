"""keras_gr.optimizers: public API of this area (see ARCHITECTURE.md)."""

from keras_gr.optimizers.adagrad_family import AdagradNorm
from keras_gr.optimizers.adagrad_family import FullMatrixAdagrad
from keras_gr.optimizers.lora_rite import LoraRite
from keras_gr.optimizers.shampoo import OneSidedShampoo
from keras_gr.optimizers.shampoo import Shampoo
