"""keras-hub's own test harness over every keras-hub subclass keras_gr ships.

`keras_hub.src.tests.test_case.TestCase` (in the keras-hub wheel; it imports
`grain`, listed in the `test` extra) is what keras-hub runs on each of its
models. Here it runs on ours:

- `run_backbone_test`: config and `serialize_keras_object` round trips,
  eager call, variable sequence lengths, compiled `predict` on arrays and on
  a `tf.data.Dataset`, the name check, the `mixed_float16`,
  `mixed_bfloat16` and `bfloat16` policies (every float output and output
  spec in the compute dtype, every weight in the variable dtype, every
  sublayer in the policy) and int8 / float8 quantization;
- `run_model_saving_test`: `.keras` save / load gives the same class and
  the same output, for the backbones and for the CausalLMs over them;
- `run_task_test` (slow): the CausalLMs with a real preprocessor (the
  tiny preset's Gemma tokenizer, the tiny in-memory GPT-2 BPE): predict
  and fit on strings, a `tf.data` pipeline and split preprocessing;

One `run_backbone_test` per backbone class, the saving tests of the default
backbones and of every CausalLM run by default; the other variants are
`slow`. On JAX most of the time is the first eager call of
a model family at a new shape or dtype (every op is compiled once).
"""

import keras
import keras_hub
import numpy as np
import pytest
from keras_hub.src.tests import test_case

from keras_gr.hub import LaurelGemmaBackbone
from keras_gr.hub import LaurelGemmaCausalLM
from keras_gr.hub import LaurelGPT2Backbone
from keras_gr.hub import LaurelGPT2CausalLM
from keras_gr.hub import LoopedGemmaBackbone
from keras_gr.hub import LoopedGemmaCausalLM
from keras_gr.hub import laurel_backbone_class
from tests.hub import tiny_gpt2
from tests.hub.tiny_configs import DECODER
from tests.hub.tiny_configs import GPT2
from tests.hub.tiny_configs import gemma2_options

# LoopedGemmaBackbone counts its layers with its own arguments: no
# num_layers in the shared Gemma config here.
GEMMA = {k: v for k, v in DECODER.items() if k != "num_layers"}
GEMMA["head_dim"] = 8
GEMMA2_OPTIONS = gemma2_options(sliding_window_size=2)
LLAMA = DECODER
LAUREL = {"variant": "rw_lr", "rank": 2}

BACKBONES = {
    "looped_gemma-unroll": (
        LoopedGemmaBackbone,
        {**GEMMA, "num_loops": 2, "loop_mode": "unroll"},
    ),
    "looped_gemma-scan": (
        LoopedGemmaBackbone,
        {**GEMMA, "num_loops": 2, "loop_mode": "scan"},
    ),
    "looped_gemma2-scan-remat": (
        LoopedGemmaBackbone,
        {
            **GEMMA,
            **GEMMA2_OPTIONS,
            "num_looped_layers": 2,
            "num_loops": 2,
            "loop_mode": "scan",
            "rematerialize": True,
        },
    ),
    "laurel_gemma-rw_lr": (
        LaurelGemmaBackbone,
        {**GEMMA, "num_layers": 2, "laurel_config": LAUREL},
    ),
    "laurel_gemma2-lr": (
        LaurelGemmaBackbone,
        {
            **GEMMA,
            **GEMMA2_OPTIONS,
            "num_layers": 2,
            "laurel_config": {"variant": "lr", "rank": 2},
        },
    ),
    "laurel_gpt2-rw_lr": (
        LaurelGPT2Backbone,
        {**GPT2, "laurel_config": LAUREL},
    ),
    "laurel_gpt2-rw": (
        LaurelGPT2Backbone,
        {**GPT2, "laurel_config": {"variant": "rw"}},
    ),
    # The other block classes of the retrofit (the classes made by
    # `laurel_backbone_class`), slow.
    "laurel_llama3-rw_lr": (
        laurel_backbone_class(keras_hub.models.Llama3Backbone),
        {**LLAMA, "laurel_config": LAUREL},
    ),
    "laurel_gemma3-rw_lr": (
        laurel_backbone_class(keras_hub.models.Gemma3Backbone),
        {**GEMMA, "num_layers": 2, "image_size": None, "laurel_config": LAUREL},
    ),
}
# One per class in the default run of `run_backbone_test`; the others are
# `slow`. The scan mode is among them because on JAX each eager call of a
# scanned loop traces and compiles the loop body again (~5 s per mode for
# the harness's dozen eager calls on 2 loaded cores, ~1 s on TensorFlow);
# its compiled predict and saving still run by default (below).
DEFAULT_BACKBONES = (
    "looped_gemma-unroll",
    "laurel_gemma-rw_lr",
    "laurel_gpt2-rw_lr",
)
DEFAULT_SAVING = DEFAULT_BACKBONES + ("looped_gemma-scan",)
TASKS = {
    "looped_gemma": (LoopedGemmaCausalLM, "looped_gemma-scan"),
    "laurel_gemma": (LaurelGemmaCausalLM, "laurel_gemma-rw_lr"),
    "laurel_gpt2": (LaurelGPT2CausalLM, "laurel_gpt2-rw_lr"),
}


def _params(names, default):
    return [
        pytest.param(
            name, marks=() if name in default else pytest.mark.slow, id=name
        )
        for name in names
    ]


def _inputs(batch=2, length=5):
    mask = np.ones((batch, length), dtype="int32")
    mask[1, length - 2 :] = 0
    tokens = np.random.default_rng(0).integers(1, 40, size=(batch, length))
    return {"token_ids": tokens.astype("int32"), "padding_mask": mask}


@pytest.fixture
def harness(tmp_path):
    """keras-hub's `TestCase`, writing its files under pytest's tmp_path."""

    class Case(test_case.TestCase):
        def get_temp_dir(self):
            return str(tmp_path)

    return Case("run_backbone_test")


@pytest.mark.parametrize("name", _params(BACKBONES, DEFAULT_BACKBONES))
def test_run_backbone_test(harness, name):
    cls, init_kwargs = BACKBONES[name]
    # One other sequence length besides the 5 of `input_data` (the harness
    # defaults to 2, 3 and 4): on JAX every new shape compiles every eager
    # op of the model again, ~4 s per length for a cold family here.
    harness.run_backbone_test(
        cls=cls,
        init_kwargs=dict(init_kwargs),
        input_data=_inputs(),
        expected_output_shape=(2, 5, 16),
        variable_length_data=[_inputs(length=3)],
    )


@pytest.mark.parametrize("name", _params(BACKBONES, DEFAULT_SAVING))
def test_run_model_saving_test_backbone(harness, name):
    cls, init_kwargs = BACKBONES[name]
    keras.utils.set_random_seed(0)
    harness.run_model_saving_test(
        cls=cls, init_kwargs=dict(init_kwargs), input_data=_inputs()
    )


@pytest.mark.parametrize("name", list(TASKS))
def test_run_model_saving_test_causal_lm(harness, name):
    cls, backbone_name = TASKS[name]
    backbone_cls, backbone_kwargs = BACKBONES[backbone_name]
    keras.utils.set_random_seed(0)
    backbone = backbone_cls(**backbone_kwargs)
    harness.run_model_saving_test(
        cls=cls,
        init_kwargs={"backbone": backbone, "preprocessor": None},
        input_data=_inputs(),
    )


def _task_init_kwargs(name, tiny_preset):
    cls, backbone_name = TASKS[name]
    backbone_cls, backbone_kwargs = BACKBONES[backbone_name]
    if cls is LaurelGPT2CausalLM:
        tokenizer = keras_hub.models.GPT2Tokenizer(
            vocabulary=tiny_gpt2.VOCAB, merges=tiny_gpt2.MERGES
        )
        preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
            tokenizer=tokenizer, sequence_length=8
        )
    else:
        preprocessor = keras_hub.models.GemmaCausalLMPreprocessor.from_preset(
            tiny_preset, sequence_length=8
        )
    vocabulary_size = preprocessor.tokenizer.vocabulary_size()
    backbone = backbone_cls(
        **{**backbone_kwargs, "vocabulary_size": vocabulary_size}
    )
    return cls, {"backbone": backbone, "preprocessor": preprocessor}


@pytest.mark.slow  # three compiled fits and predicts per task
@pytest.mark.parametrize("name", list(TASKS))
def test_run_task_test_causal_lm(harness, tiny_preset, name):
    cls, init_kwargs = _task_init_kwargs(name, tiny_preset)
    harness.run_task_test(
        cls=cls,
        init_kwargs=init_kwargs,
        train_data=([" airplane at airport", " air"],),
        expected_output_shape=(2, 8, init_kwargs["backbone"].vocabulary_size),
    )
