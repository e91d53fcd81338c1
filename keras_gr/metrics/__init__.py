"""keras_gr.metrics: evaluation metrics in NumPy and `keras.ops`.

Classification accuracy, Frechet distance, Vendi score, MAUVE, and the
model-routing measures of arXiv 2502.08773 (deferral curve and area,
quality-neutral cost, APGR, CPT, AIQ). See ARCHITECTURE.md for where this
sits.
"""

from keras_gr.metrics.classification import ClassAccuracy
from keras_gr.metrics.classification import class_accuracy
from keras_gr.metrics.frechet_distance import FrechetDistance
from keras_gr.metrics.frechet_distance import frechet_distance
from keras_gr.metrics.frechet_distance import frechet_distance_from_moments
from keras_gr.metrics.mauve import mauve
from keras_gr.metrics.mauve import mauve_from_histograms
from keras_gr.metrics.routing import aiq
from keras_gr.metrics.routing import apgr
from keras_gr.metrics.routing import cpt
from keras_gr.metrics.routing import curve_value
from keras_gr.metrics.routing import deferral_area
from keras_gr.metrics.routing import deferral_curve
from keras_gr.metrics.routing import monotone_curve
from keras_gr.metrics.routing import plot_deferral_curves
from keras_gr.metrics.routing import quality_neutral_cost
from keras_gr.metrics.routing import upper_hull
from keras_gr.metrics.vendi import cosine_similarity_matrix
from keras_gr.metrics.vendi import vendi_score

__all__ = [
    "ClassAccuracy",
    "class_accuracy",
    "FrechetDistance",
    "frechet_distance",
    "frechet_distance_from_moments",
    "mauve",
    "mauve_from_histograms",
    "aiq",
    "apgr",
    "cpt",
    "curve_value",
    "deferral_area",
    "deferral_curve",
    "monotone_curve",
    "plot_deferral_curves",
    "quality_neutral_cost",
    "upper_hull",
    "cosine_similarity_matrix",
    "vendi_score",
]
