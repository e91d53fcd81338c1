"""keras_gr.data: exact, seeded task generators and offline text corpora.

Generators of the papers' synthetic tasks (n-ary addition and
multiplication, p-hop induction, in-context linear regression, math word
problems), offline corpora that ship with Python (pydoc topics, standard
library docstrings and source, a user's own text file), the digits images
and the digit classifier that scores generated digits, and phased
datasets. Nothing here touches the network. See ARCHITECTURE.md
for where this sits.
"""

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
from keras_gr.data.digits import build_digit_classifier
from keras_gr.data.digits import load_digit_images
from keras_gr.data.digits import split_digits
from keras_gr.data.digits import train_digit_classifier
from keras_gr.data.icl_regression import icl_regression_dataset
from keras_gr.data.icl_regression import icl_regression_problems
from keras_gr.data.math_word_problems import math_answer_correct
from keras_gr.data.math_word_problems import math_word_problems
from keras_gr.data.math_word_problems import parse_math_problem
from keras_gr.data.multiplication import MULTIPLICATION_VOCAB_SIZE
from keras_gr.data.multiplication import multiplication_dataset
from keras_gr.data.multiplication import multiplication_examples
from keras_gr.data.p_hop import hop_positions
from keras_gr.data.p_hop import p_hop_dataset
from keras_gr.data.p_hop import p_hop_examples
from keras_gr.data.p_hop import p_hop_prefix_targets
from keras_gr.data.p_hop import p_hop_vocab_size
from keras_gr.data.phased_dataset import PhasedBatches
from keras_gr.data.phased_dataset import PhasedDataset

__all__ = [
    "exact_match",
    "lm_arrays",
    "ADDITION_VOCAB_SIZE",
    "addition_dataset",
    "addition_examples",
    "CORPUS_SOURCES",
    "LabelledCorpus",
    "multi_source_corpus",
    "pydoc_corpus",
    "stdlib_docstrings_corpus",
    "text_file_corpus",
    "build_digit_classifier",
    "load_digit_images",
    "split_digits",
    "train_digit_classifier",
    "icl_regression_dataset",
    "icl_regression_problems",
    "math_answer_correct",
    "math_word_problems",
    "parse_math_problem",
    "MULTIPLICATION_VOCAB_SIZE",
    "multiplication_dataset",
    "multiplication_examples",
    "hop_positions",
    "p_hop_dataset",
    "p_hop_examples",
    "p_hop_prefix_targets",
    "p_hop_vocab_size",
    "PhasedBatches",
    "PhasedDataset",
]
