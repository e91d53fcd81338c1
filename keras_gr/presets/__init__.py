"""keras_gr.presets: small keras-hub presets built locally and offline."""

from keras_gr.presets.local_preset import DEFAULT_CONFIG
from keras_gr.presets.local_preset import TINY_CONFIG
from keras_gr.presets.local_preset import build_local_preset
from keras_gr.presets.local_preset import default_cache_dir
from keras_gr.presets.local_preset import read_preset_metadata
