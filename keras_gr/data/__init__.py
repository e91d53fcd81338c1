"""keras_gr.data: exact, seeded task generators and offline text corpora."""

from keras_gr.data._lm_tasks import exact_match
from keras_gr.data._lm_tasks import lm_arrays
from keras_gr.data.addition import ADDITION_VOCAB_SIZE
from keras_gr.data.addition import addition_dataset
from keras_gr.data.addition import addition_examples
from keras_gr.data.corpora import CORPUS_SOURCES
from keras_gr.data.corpora import LabelledCorpus
from keras_gr.data.corpora import multi_source_corpus
from keras_gr.data.corpora import pydoc_corpus
from keras_gr.data.corpora import stdlib_docstrings_corpus
from keras_gr.data.corpora import text_file_corpus
from keras_gr.data.icl_regression import icl_regression_dataset
from keras_gr.data.icl_regression import icl_regression_problems
from keras_gr.data.p_hop import hop_positions
from keras_gr.data.p_hop import p_hop_dataset
from keras_gr.data.p_hop import p_hop_examples
from keras_gr.data.p_hop import p_hop_prefix_targets
from keras_gr.data.p_hop import p_hop_vocab_size
