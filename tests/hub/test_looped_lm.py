import keras
import keras_hub
import numpy as np
import pytest

from keras_gr.hub import LoopedGemmaBackbone
from keras_gr.hub import LoopedGemmaCausalLM
from keras_gr.hub import looped_gemma_from_preset
from keras_gr.hub.looped_lm import layer_schedule
from keras_gr.hub.looped_lm import source_layer_map

SMALL = dict(
    vocabulary_size=40,
    num_query_heads=2,
    num_key_value_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    head_dim=8,
)


def test_layer_schedule_and_map():
    assert layer_schedule(1, 2, 3, 1) == [0, 1, 2, 1, 2, 1, 2, 3]
    assert layer_schedule(0, 1, 2, 0) == [0, 0]
    assert source_layer_map(3, 2) == [0, 0, 1] or source_layer_map(3, 2) == [
        0,
        1,
        1,
    ]
    assert source_layer_map(4, 4) == [0, 1, 2, 3]


def test_params_equal_unlooped_and_forward_by_hand():
    keras.utils.set_random_seed(0)
    looped = LoopedGemmaBackbone(**SMALL, num_loops=3)
    plain = keras_hub.models.GemmaBackbone(**SMALL, num_layers=3)
    assert looped.count_params() == plain.count_params()
    assert looped.layer_schedule == [0, 1, 1, 1, 2]
    tokens = np.random.default_rng(0).integers(0, 40, size=(2, 7))
    mask = np.ones((2, 7), dtype="int32")
    mask[0, 5:] = 0
    got = looped({"token_ids": tokens, "padding_mask": mask})
    x = looped.token_embedding(tokens) * np.sqrt(16.0).astype("float32")
    for index in looped.layer_schedule:
        x = looped.transformer_layers[index](x, padding_mask=mask)
    want = looped.layer_norm(x)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got),
        keras.ops.convert_to_numpy(want),
        atol=1e-5,
    )


def _greedy_uncached(lm, prompt, total):
    """Greedy decoding by full forward passes (no cache): a fixed padded
    length, so a causal model's logits at position t see tokens <= t only."""
    tokens = np.zeros((1, total), dtype="int32")
    tokens[0, : len(prompt)] = prompt
    for t in range(len(prompt), total):
        mask = (np.arange(total) < t).astype("int32")[None]
        logits = lm.predict_on_batch(
            {"token_ids": tokens, "padding_mask": mask}
        )
        tokens[0, t] = int(np.argmax(np.asarray(logits)[0, t - 1]))
    return tokens[0].tolist()


@pytest.fixture(scope="module")
def looped_lm(tiny_preset):
    keras.utils.set_random_seed(0)
    return looped_gemma_from_preset(
        tiny_preset,
        num_prelude_layers=1,
        num_looped_layers=1,
        num_loops=3,
        num_coda_layers=1,
    )


def test_cached_generation_equals_uncached_greedy(looped_lm):
    lm = looped_lm
    assert isinstance(lm, LoopedGemmaCausalLM)
    assert lm.backbone.num_applications == 5
    prompt = [2, 17, 33, 9]
    total = 12
    token_ids = np.zeros((1, total), dtype="int32")
    token_ids[0, : len(prompt)] = prompt
    padding = np.zeros_like(token_ids)
    padding[0, : len(prompt)] = 1
    lm.compile(sampler="greedy")
    preprocessor, lm.preprocessor = lm.preprocessor, None
    try:
        out = lm.generate(
            {"token_ids": token_ids, "padding_mask": padding},
            stop_token_ids=None,
        )
        cached = [int(t) for t in np.asarray(out["token_ids"])[0]]
        want = _greedy_uncached(lm, prompt, total)
    finally:
        lm.preprocessor = preprocessor
    assert cached == want
    # The cache really has one slot per application.
    _, cache = lm._build_cache(keras.ops.convert_to_tensor(token_ids))
    assert tuple(cache.shape)[1] == 5


def test_generate_strings_and_fit(looped_lm, tiny_preset):
    lm = looped_lm
    text = lm.generate("the", max_length=10)
    assert isinstance(text, str)
    source = keras_hub.models.GemmaCausalLM.from_preset(tiny_preset)
    # Embedding and first/last layers come from the preset.
    np.testing.assert_array_equal(
        lm.backbone.transformer_layers[-1].get_weights()[0],
        source.backbone.transformer_layers[-1].get_weights()[0],
    )
    data = ["def foo(x): return x + 1", "class Bar: pass"] * 8
    lm.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    lm.preprocessor.sequence_length = 16
    history = lm.fit(data, batch_size=8, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_loops"):
        LoopedGemmaBackbone(**SMALL, num_loops=0)
    with pytest.raises(ValueError, match="num_looped_layers"):
        LoopedGemmaBackbone(**SMALL, num_looped_layers=0)
    with pytest.raises(ValueError, match="num_prelude_layers"):
        LoopedGemmaBackbone(**SMALL, num_prelude_layers=-1)
