"""keras_gr: Keras 3 components from recent Google Research papers.

Importing `keras_gr` is cheap: subpackages are imported lazily on first
attribute access (`keras_gr.layers`, `keras_gr.optimizers`, ...).
"""

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = (
    "callbacks",
    "data",
    "hub",
    "layers",
    "metrics",
    "models",
    "optimizers",
    "presets",
    "regularizers",
)


def __getattr__(name):
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"keras_gr.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'keras_gr' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES))
