"""keras_gr.hub: keras-hub integrations.

LAuReL retrofits of keras-hub decoder LMs (Gemma, Gemma 3, Llama, Mistral,
Qwen, GPT-2: `laurel_retrofit`), a looped Gemma decoder
(`looped_gemma_from_preset`) and prefix-conditioned causal LMs
(`PrefixCausalLM` with per-architecture adapters). Needs the `hub`
extra (`pip install "keras-gr[hub]"`): `import keras_gr.hub` works without
it, and using any name below then raises an ImportError naming the extra.
Where keras-hub is installed, `import keras_gr.hub` imports every name at
once, so that its Keras-serializable classes are registered before a
`.keras` file or preset that holds them is loaded. keras-hub in turn
imports TensorFlow whenever TensorFlow is installed (its own
`keras_hub.src.utils.tensor_utils`, whatever the Keras backend; the `hub`
extra pulls TensorFlow in through keras-hub's `tensorflow-text`), so on
JAX this namespace imports TensorFlow too: keras-hub allows no way
around it. See ARCHITECTURE.md for where this sits.
"""

from keras_gr import _imports

# Public name -> the submodule that defines it (imported on first use).
_LAZY = {
    "LaurelGemmaBackbone": "laurel_retrofit",
    "LaurelGemmaCausalLM": "laurel_retrofit",
    "LaurelGPT2Backbone": "laurel_retrofit",
    "LaurelGPT2CausalLM": "laurel_retrofit",
    "laurel_backbone_class": "laurel_retrofit",
    "laurel_parameters": "laurel_retrofit",
    "laurel_retrofit": "laurel_retrofit",
    "train_only_laurel": "laurel_retrofit",
    "LoopedGemmaBackbone": "looped_lm",
    "LoopedGemmaCausalLM": "looped_lm",
    "LoopedGemmaPrefixAdapter": "looped_lm",
    "looped_gemma_from_preset": "looped_lm",
    "GemmaPrefixAdapter": "prefix_lm",
    "GPT2PrefixAdapter": "prefix_lm",
    "PrefixCausalLM": "prefix_lm",
    "PrefixLMAdapter": "prefix_lm",
    "get_prefix_adapter": "prefix_lm",
    "prefix_lm_logits": "prefix_lm",
    "register_prefix_adapter": "prefix_lm",
    "run_decoder_layers": "prefix_lm",
}

__all__ = list(_LAZY)

__getattr__, __dir__ = _imports.lazy_exports(__name__, _LAZY)
