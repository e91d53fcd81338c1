"""keras_gr.layers: public API of this area (see ARCHITECTURE.md)."""

from keras_gr.layers.latent_crf import LatentCRF
from keras_gr.layers.laurel import ColumnOrthogonal
from keras_gr.layers.laurel import Laurel
from keras_gr.layers.laurel_stack import LaurelStack
from keras_gr.layers.linear_attention import LinearAttention
from keras_gr.layers.looped_block import LoopedBlock
