"""keras_gr.hub: public API of this area (see ARCHITECTURE.md)."""

from keras_gr.hub.laurel_retrofit import LaurelGemmaBackbone
from keras_gr.hub.laurel_retrofit import LaurelGemmaCausalLM
from keras_gr.hub.laurel_retrofit import LaurelGemmaDecoderBlock
from keras_gr.hub.laurel_retrofit import LaurelGPT2Backbone
from keras_gr.hub.laurel_retrofit import LaurelGPT2CausalLM
from keras_gr.hub.laurel_retrofit import LaurelTransformerDecoder
from keras_gr.hub.laurel_retrofit import laurel_parameters
from keras_gr.hub.laurel_retrofit import laurel_retrofit
from keras_gr.hub.laurel_retrofit import train_only_laurel
from keras_gr.hub.looped_lm import LoopedGemmaBackbone
from keras_gr.hub.looped_lm import LoopedGemmaCausalLM
from keras_gr.hub.looped_lm import looped_gemma_from_preset
