"""keras_gr.regularizers: public API of this area (see ARCHITECTURE.md)."""

from keras_gr.regularizers.looping import LoopingRegularizer
