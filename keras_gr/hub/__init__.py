"""keras_gr.hub: keras-hub integrations.

LAuReL retrofits of keras-hub decoder LMs (Gemma, Gemma 3, Llama, Mistral,
Qwen, GPT-2: `laurel_retrofit`), a looped Gemma decoder
(`looped_gemma_from_preset`) and prefix-conditioned causal LMs
(`PrefixCausalLM` with per-architecture adapters). Needs the `hub`
extra. See ARCHITECTURE.md for where this sits.
"""

from keras_gr.hub.laurel_retrofit import LaurelGemmaBackbone
from keras_gr.hub.laurel_retrofit import LaurelGemmaCausalLM
from keras_gr.hub.laurel_retrofit import LaurelGPT2Backbone
from keras_gr.hub.laurel_retrofit import LaurelGPT2CausalLM
from keras_gr.hub.laurel_retrofit import laurel_backbone_class
from keras_gr.hub.laurel_retrofit import laurel_parameters
from keras_gr.hub.laurel_retrofit import laurel_retrofit
from keras_gr.hub.laurel_retrofit import train_only_laurel
from keras_gr.hub.looped_lm import LoopedGemmaBackbone
from keras_gr.hub.looped_lm import LoopedGemmaCausalLM
from keras_gr.hub.looped_lm import looped_gemma_from_preset
from keras_gr.hub.prefix_lm import GemmaPrefixAdapter
from keras_gr.hub.prefix_lm import GPT2PrefixAdapter
from keras_gr.hub.prefix_lm import PrefixCausalLM
from keras_gr.hub.prefix_lm import PrefixLMAdapter
from keras_gr.hub.prefix_lm import get_prefix_adapter
from keras_gr.hub.prefix_lm import prefix_lm_logits
from keras_gr.hub.prefix_lm import register_prefix_adapter

__all__ = [
    "LaurelGemmaBackbone",
    "LaurelGemmaCausalLM",
    "LaurelGPT2Backbone",
    "LaurelGPT2CausalLM",
    "laurel_backbone_class",
    "laurel_parameters",
    "laurel_retrofit",
    "train_only_laurel",
    "LoopedGemmaBackbone",
    "LoopedGemmaCausalLM",
    "looped_gemma_from_preset",
    "GemmaPrefixAdapter",
    "GPT2PrefixAdapter",
    "PrefixCausalLM",
    "PrefixLMAdapter",
    "get_prefix_adapter",
    "prefix_lm_logits",
    "register_prefix_adapter",
]
