"""Edge cases of SoftSRV, HardPromptGenerator and PrefixCausalLM (issue 26,
items 13-16): bad input gets a clear ValueError naming the argument, a
`.keras` round trip processes raw text after loading exactly as before
saving, loading does not warn, and the caller's LM is left as it was."""

import warnings

import keras
import keras_hub
import numpy as np
import pytest

from keras_gr.hub import PrefixCausalLM
from keras_gr.hub import prefix_lm_logits
from keras_gr.models import HardPromptGenerator
from keras_gr.models import SoftSRV
from keras_gr.models.softsrv.softsrv import detokenize_generated
from tests.hub.tiny_gpt2 import VOCAB
from tests.hub.tiny_gpt2 import tiny_gpt2

TEXTS = ["def f(x):", "zebra 7", "return x + 1"]


@pytest.fixture(scope="module")
def gemma_lm(tiny_preset):
    return keras_hub.models.CausalLM.from_preset(tiny_preset)


@pytest.fixture(scope="module")
def gpt2_generator():
    return PrefixCausalLM(tiny_gpt2(seed=3), sampler="greedy")


# (case, keyword arguments of generate_with_prefix, prefix length, match).
# The tiny GPT-2 has 23 tokens and 32 positions.
BAD_GENERATE_CALLS = [
    ("id_past_vocabulary", dict(token_ids=[[1, 23]]), 2, "token_ids.*23"),
    ("negative_id", dict(token_ids=[[-1, 2]]), 2, "token_ids"),
    ("float_ids", dict(token_ids=[[1.5, 2.0]]), 2, "token_ids.*integer"),
    (
        "all_false_padding_row",
        dict(token_ids=[[1, 2], [3, 4]], padding_mask=[[1, 1], [0, 0]]),
        2,
        "padding_mask.*row 1",
    ),
    (
        "padding_before_a_token",
        dict(token_ids=[[1, 2, 3]], padding_mask=[[1, 0, 1]]),
        2,
        "padding_mask",
    ),
    (
        "mask_shape",
        dict(token_ids=[[1, 2]], padding_mask=[[1, 1, 1]]),
        2,
        "padding_mask.*shape",
    ),
    (
        "prefix_plus_max_length_past_positions",
        dict(token_ids=[[1, 2]], max_length=28),
        5,
        "max_sequence_length.*32",
    ),
    ("start_token_past_vocabulary", dict(start_token_id=99), 2, "start_token"),
    (
        "stop_token_past_vocabulary",
        dict(start_token_id=1, stop_token_ids=(99,)),
        2,
        "stop_token_ids",
    ),
    (
        "batch_mismatch",
        dict(token_ids=[[1, 2], [3, 4]]),
        2,
        "token_ids.*batch",
    ),
]


@pytest.mark.parametrize(
    "kwargs, prefix_length, match",
    [case[1:] for case in BAD_GENERATE_CALLS],
    ids=[case[0] for case in BAD_GENERATE_CALLS],
)
def test_generate_with_prefix_refuses_bad_prompts(
    gpt2_generator, kwargs, prefix_length, match
):
    kwargs = dict(kwargs)
    rows = 1 if "batch" in match else len(kwargs.get("token_ids", [[0]]))
    prefix = np.zeros((rows, prefix_length, 16), "float32")
    for key in ("token_ids", "padding_mask"):
        if key in kwargs:
            kwargs[key] = np.asarray(kwargs[key])
    kwargs.setdefault("max_length", 6)
    with pytest.raises(ValueError, match=match):
        gpt2_generator.generate_with_prefix(prefix, **kwargs)


def test_prefix_logits_refuse_sequences_past_the_positions(gpt2_generator):
    backbone = gpt2_generator.backbone
    prefix = np.zeros((1, 8, 16), "float32")
    ids = np.ones((1, 25), "int32")
    with pytest.raises(ValueError, match="max_sequence_length.*32"):
        prefix_lm_logits(backbone, prefix, ids)
    # At the limit it runs.
    logits = prefix_lm_logits(backbone, prefix, ids[:, :24])
    assert tuple(logits.shape) == (1, 32, len(VOCAB))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sequence_length=1), "sequence_length"),
        (dict(prompt_length=30, sequence_length=8), "max_sequence_length"),
        (dict(sampler="no_such_sampler", sequence_length=8), "sampler"),
    ],
    ids=["short_sequence", "prompt_past_positions", "unknown_sampler"],
)
def test_softsrv_constructor_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SoftSRV(tiny_gpt2(), **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(texts="one string"), "texts"),
        (dict(num_samples=0), "num_samples"),
        (dict(batch_size=0), "batch_size"),
        (dict(max_length=1), "max_length"),
        (dict(context_noise=float("nan")), "context_noise"),
        (dict(max_length=40), "max_sequence_length"),
    ],
    ids=[
        "one_string",
        "no_samples",
        "empty_batch",
        "max_length_1",
        "nan_noise",
        "past_positions",
    ],
)
def test_softsrv_generate_refuses(kwargs, match):
    model = SoftSRV(tiny_gpt2(), prompt_length=2, mlp_dim=4, sequence_length=8)
    kwargs = dict(kwargs)
    texts = kwargs.pop("texts", ["a port"])
    with pytest.raises(ValueError, match=match):
        model.generate(texts, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_shots=0), "num_shots"),
        (dict(shot_length=0), "shot_length"),
    ],
    ids=["no_shots", "empty_shots"],
)
def test_hard_prompt_constructor_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HardPromptGenerator(tiny_gpt2(), **kwargs)


def test_hard_prompt_rows_get_at_most_max_length_tokens(gemma_lm):
    # Issue 26 item 14: prompts of uneven length share one padded batch;
    # each row must still get at most `max_length` tokens after its own
    # template (the final <bos> counted), as when decoded alone.
    hard = HardPromptGenerator(
        gemma_lm, num_shots=1, shot_length=8, header="", sampler="greedy"
    )
    prompts = []
    build = hard.prompt_ids

    def recording(examples):
        prompts.append(build(examples))
        return prompts[-1]

    hard.prompt_ids = recording
    texts = ["def f(x): return x + 1 if x else 2", "x"]
    max_length = 4
    out = hard.generate(texts, num_samples=6, max_length=max_length, seed=2)
    assert len({len(p) for p in prompts}) == 2  # uneven lengths
    tokenizer = hard.tokenizer
    for prompt, text in zip(prompts, out):
        width = hard.generator.backbone.hidden_dim
        alone = hard.generator.generate_with_prefix(
            np.zeros((1, 0, width), "float32"),
            token_ids=np.asarray([prompt], "int32"),
            max_length=len(prompt) + max_length - 1,
            stop_token_ids=(tokenizer.end_token_id,),
        )
        expected = detokenize_generated(
            tokenizer, alone["token_ids"], alone["padding_mask"], len(prompt)
        )
        assert text == expected[0], (prompt, text, expected)


def test_softsrv_leaves_the_callers_lm_trainable(tiny_preset):
    # Issue 26 item 16: the LM is frozen inside SoftSRV only.
    lm = keras_hub.models.CausalLM.from_preset(tiny_preset)
    trainable = [v.path for v in lm.trainable_weights]
    model = SoftSRV(lm, prompt_length=2, mlp_dim=4, sequence_length=8)
    assert lm.backbone.trainable and lm.trainable
    assert [v.path for v in lm.trainable_weights] == trainable
    assert {v.path for v in model.trainable_weights} == {
        v.path for v in model.soft_prompt.weights
    }
    frozen = {v.path for v in model.non_trainable_weights}
    assert set(trainable) <= frozen
    model.trainable = False
    assert model.trainable_weights == []


def _outputs(model, texts):
    x, y, w = model.preprocess(texts)
    return {
        "x": x["token_ids"],
        "mask": x["padding_mask"],
        "y": y,
        "w": w,
        "contexts": model.embed(texts),
        "prompts": model.prompts_for(texts, context_noise=0.3, seed=1),
        "generations": model.generate(texts, max_length=8, seed=0),
    }


def test_keras_round_trip_preprocesses_raw_text_as_before(gemma_lm, tmp_path):
    # Issue 26 items 13 and 16: after loading, raw text is packed with
    # <bos>/<eos> as before, so contexts, prompts and generations match;
    # loading emits no "compile() was not called" warning.
    model = SoftSRV(
        gemma_lm,
        prompt_length=2,
        parametrization="mc",
        mlp_dim=8,
        sequence_length=10,
        sampler="greedy",
        initializer_stddev=0.5,
    )
    x, y, w = model.preprocess(TEXTS)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, y, sample_weight=w, epochs=1, verbose=0)
    before = _outputs(model, TEXTS)
    tokenizer = model.tokenizer
    assert (before["x"][:, 0] == tokenizer.start_token_id).all()
    path = str(tmp_path / "softsrv.keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save(path)
        loaded = keras.models.load_model(path)
    messages = [str(c.message) for c in caught]
    assert not [m for m in messages if "compile()" in m], messages
    assert not [m for m in messages if "not yet been built" in m], messages
    after = _outputs(loaded, TEXTS)
    for key in ("x", "mask", "y", "w"):
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    for key in ("contexts", "prompts"):
        np.testing.assert_allclose(
            after[key], before[key], atol=1e-6, err_msg=key
        )
    assert after["generations"] == before["generations"]
    # The optimizer state came back: training resumes where it was.
    assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations
    assert loaded.causal_lm.backbone.trainable
