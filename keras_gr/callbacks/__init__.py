"""keras_gr.callbacks: public API of this area (see ARCHITECTURE.md)."""

from keras_gr.callbacks.salt import KDSchedule
from keras_gr.callbacks.salt import PhasedDataSync

__all__ = [
    "KDSchedule",
    "PhasedDataSync",
]
