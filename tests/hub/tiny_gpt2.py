"""A tiny keras-hub GPT-2 CausalLM with a byte-level BPE vocabulary, built
in memory (no preset, no download): shared by the hub and SoftSRV tests."""

import keras
import keras_hub

# A tiny byte-level BPE vocabulary: every merge operand is a token.
_TOKENS = ["<|endoftext|>", "Ġ", "a", "i", "r", "p", "l", "n", "e", "t", "o"]
_TOKENS += ["ai", "air", "Ġair", "Ġa", "Ġat", "po", "rt", "port", "pl", "ne"]
_TOKENS += ["pla", "plane"]
VOCAB = {token: i for i, token in enumerate(_TOKENS)}
MERGES = [
    "a i",
    "ai r",
    "Ġ air",
    "Ġ a",
    "Ġa t",
    "p o",
    "r t",
    "po rt",
    "p l",
    "n e",
    "pl a",
    "pla ne",
]
PROMPTS = [" airplane at airport", " air"]


def tiny_gpt2(seed: int = 0) -> keras_hub.models.GPT2CausalLM:
    """A freshly initialised 2-layer, width-16 GPT-2 CausalLM (seeded)."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(VOCAB),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
        dropout=0.0,
    )
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=VOCAB, merges=MERGES)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=12
    )
    return keras_hub.models.GPT2CausalLM(
        backbone=backbone, preprocessor=preprocessor
    )
