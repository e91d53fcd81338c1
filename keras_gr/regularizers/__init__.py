"""keras_gr.regularizers: Keras regularizers.

`LoopingRegularizer` (arXiv 2502.17416) pulls consecutive blocks of a layer
stack towards a looped model.
See ARCHITECTURE.md for where this sits.
"""

from keras_gr.regularizers.looping import LoopingRegularizer

__all__ = [
    "LoopingRegularizer",
]
