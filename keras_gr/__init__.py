"""keras_gr: Keras 3 components from recent Google Research papers.

Layers, optimizers, losses, callbacks, models and keras-hub integrations
that work with `model.compile` / `fit`, the functional API and keras-hub
presets, on the JAX and TensorFlow backends, offline.

Importing `keras_gr` is cheap: it imports neither Keras nor a backend.
Subpackages are imported lazily on first attribute access
(`keras_gr.layers`, `keras_gr.optimizers`, ...) or with
`import keras_gr.<area>`.

Example:

>>> import keras_gr
>>> keras_gr.__version__
'0.1.0'
>>> "optimizers" in keras_gr.__all__
True

The repository's ARCHITECTURE.md (included below in the API reference)
says where things live and which way imports go.

.. include:: ../ARCHITECTURE.md
"""

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = (
    "callbacks",
    "curation",
    "data",
    "hub",
    "layers",
    "losses",
    "metrics",
    "models",
    "optimizers",
    "presets",
    "regularizers",
)

__all__ = ["__version__", *_SUBPACKAGES]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"keras_gr.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'keras_gr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBPACKAGES))
