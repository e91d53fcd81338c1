"""keras_gr.metrics: public API of this area (see ARCHITECTURE.md)."""

from keras_gr.metrics.classification import class_accuracy
from keras_gr.metrics.frechet_distance import frechet_distance
from keras_gr.metrics.frechet_distance import frechet_distance_from_moments
from keras_gr.metrics.vendi import cosine_similarity_matrix
from keras_gr.metrics.vendi import vendi_score
