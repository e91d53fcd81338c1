"""keras_gr.presets: small keras-hub presets built locally and offline.

`build_local_preset` trains a SentencePiece tokenizer and a small
keras-hub Gemma on offline text and caches the preset folder (locked,
checked for completeness, keyed by arguments, corpus, recipe and library
versions). `TINY_CONFIG` (tests), `SMALL_CONFIG` (the quickstart) and
`DEFAULT_CONFIG` (examples, benchmarks) are ready-made argument sets.
`build_llm_pool` trains the routing benchmark's pool of small looped LMs
(`POOL_CONFIG`, `TINY_POOL_CONFIG`) into the same cache. Both builders
print nothing unless `verbose` asks.
See ARCHITECTURE.md at the repository root for where this sits.
"""

from keras_gr.presets.llm_pool import POOL_CONFIG
from keras_gr.presets.llm_pool import TINY_POOL_CONFIG
from keras_gr.presets.llm_pool import build_llm_pool
from keras_gr.presets.local_preset import DEFAULT_CONFIG
from keras_gr.presets.local_preset import SMALL_CONFIG
from keras_gr.presets.local_preset import TINY_CONFIG
from keras_gr.presets.local_preset import build_local_preset
from keras_gr.presets.local_preset import default_cache_dir
from keras_gr.presets.local_preset import is_complete_preset
from keras_gr.presets.local_preset import read_preset_metadata
from keras_gr.presets.local_preset import recipe_digest

__all__ = [
    "DEFAULT_CONFIG",
    "SMALL_CONFIG",
    "TINY_CONFIG",
    "build_local_preset",
    "default_cache_dir",
    "is_complete_preset",
    "read_preset_metadata",
    "recipe_digest",
    "POOL_CONFIG",
    "TINY_POOL_CONFIG",
    "build_llm_pool",
]
