"""keras_gr.curation: embedding-based data curation.

Sequence embedders, k-means in `keras.ops`, balanced selection, semantic
deduplication and the evaluation measures of "Analyzing Similarity Metrics
for Data Selection for Language Model Pretraining" (arXiv 2502.02494).
"""

from keras_gr.curation.disk_selection import balanced_selection_to_file
from keras_gr.curation.disk_selection import (
    reference_similarity_selection_to_file,
)
from keras_gr.curation.disk_selection import select_from_dataset
from keras_gr.curation.disk_selection import semantic_dedup_to_file
from keras_gr.curation.evaluation import curation_quality
from keras_gr.curation.evaluation import loss_correlation
from keras_gr.curation.evaluation import pretraining_loss
from keras_gr.curation.evaluation import sequence_losses
from keras_gr.curation.evaluation import source_separation
from keras_gr.curation.evaluation import spearman
from keras_gr.curation.kmeans import KMeans
from keras_gr.curation.pipeline import curate
from keras_gr.curation.selection import balanced_quotas
from keras_gr.curation.selection import balanced_selection
from keras_gr.curation.selection import reference_similarity_selection
from keras_gr.curation.selection import semantic_dedup
from keras_gr.curation.sequence_embedder import BackboneEmbedder
from keras_gr.curation.sequence_embedder import FunctionEmbedder
from keras_gr.curation.sequence_embedder import HashedNgramEmbedder
from keras_gr.curation.sequence_embedder import RandomEmbedder
from keras_gr.curation.sequence_embedder import SequenceEmbedder
from keras_gr.curation.sequence_embedder import masked_mean
from keras_gr.curation.sequence_embedder import tokenized_dataset

__all__ = [
    "balanced_selection_to_file",
    "reference_similarity_selection_to_file",
    "select_from_dataset",
    "semantic_dedup_to_file",
    "curation_quality",
    "loss_correlation",
    "pretraining_loss",
    "sequence_losses",
    "source_separation",
    "spearman",
    "KMeans",
    "curate",
    "balanced_quotas",
    "balanced_selection",
    "reference_similarity_selection",
    "semantic_dedup",
    "BackboneEmbedder",
    "FunctionEmbedder",
    "HashedNgramEmbedder",
    "RandomEmbedder",
    "SequenceEmbedder",
    "masked_mean",
    "tokenized_dataset",
]
