"""Tests of the prefix-aware forward pass and cached generation."""

import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

from keras_gr.hub import PrefixCausalLM
from keras_gr.hub import get_prefix_adapter
from keras_gr.hub import prefix_lm_logits
from tests.hub.tiny_gpt2 import VOCAB
from tests.hub.tiny_gpt2 import tiny_gpt2


@pytest.fixture(scope="module", params=["gemma", "gpt2"])
def causal_lm(request, tiny_preset):
    if request.param == "gemma":
        return keras_hub.models.CausalLM.from_preset(tiny_preset)
    return tiny_gpt2()


def _scale(backbone):
    if isinstance(backbone, keras_hub.models.GemmaBackbone):
        return np.sqrt(backbone.hidden_dim)
    return 1.0


def test_prefix_of_token_embeddings_equals_plain_forward(causal_lm):
    # A prefix made of the (scaled) embeddings of the first t tokens must
    # give exactly the backbone's own logits: positions are offset by t.
    backbone = causal_lm.backbone
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 18, size=(2, 9)).astype("int32")
    mask = np.ones_like(ids, bool)
    expected = causal_lm({"token_ids": ids, "padding_mask": mask})
    t = 4
    prefix = ops.convert_to_numpy(backbone.token_embedding(ids[:, :t]))
    prefix = prefix * _scale(backbone)
    got = prefix_lm_logits(backbone, prefix, ids[:, t:], mask[:, t:])
    np.testing.assert_allclose(
        ops.convert_to_numpy(got),
        ops.convert_to_numpy(expected),
        atol=2e-5,
        rtol=1e-4,
    )


def _assert_uncached_greedy(backbone, prefix, tokens, num_prompt):
    """`tokens` (b, L) is what uncached greedy decoding after `prefix` and
    the first `num_prompt` tokens gives: one uncached forward pass, every
    generated token the argmax of the logits before it (by induction, the
    same as decoding token by token without a cache)."""
    tokens = np.asarray(tokens, "int32")
    t = prefix.shape[1]
    logits = ops.convert_to_numpy(prefix_lm_logits(backbone, prefix, tokens))
    greedy = logits[:, t - 1 + num_prompt : -1].argmax(-1)
    np.testing.assert_array_equal(tokens[:, num_prompt:], greedy)


def test_cached_greedy_equals_uncached_with_prefix(causal_lm):
    lm = PrefixCausalLM(causal_lm, sampler="greedy")
    d = lm.backbone.hidden_dim
    rng = np.random.default_rng(1)
    prefix = rng.normal(scale=_scale(lm.backbone), size=(2, 5, d))
    prefix = prefix.astype("float32")
    start = np.array([[1, 2], [3, 4]], "int32")
    out = lm.generate_with_prefix(prefix, token_ids=start, max_length=6)
    np.testing.assert_array_equal(out["token_ids"][:, :2], start)
    _assert_uncached_greedy(lm.backbone, prefix, out["token_ids"], 2)
    assert out["padding_mask"].all()
    # The prefix reaches the logits (the trained-prompt test in
    # tests/models/test_softsrv.py shows it deciding the output).
    with_prefix = prefix_lm_logits(lm.backbone, prefix, start)[:, -1]
    bare = causal_lm({"token_ids": start, "padding_mask": np.ones_like(start)})
    diff = ops.convert_to_numpy(with_prefix) - ops.convert_to_numpy(bare[:, -1])
    assert np.abs(diff).max() > 1e-3


def test_ragged_prompts_and_stop_token():
    lm = PrefixCausalLM(tiny_gpt2(seed=3), sampler="greedy")
    rng = np.random.default_rng(2)
    prefix = rng.normal(size=(2, 3, 16)).astype("float32")
    ids = np.array([[4, 5, 6], [7, 0, 0]], "int32")
    mask = np.array([[1, 1, 1], [1, 0, 0]], bool)
    out = lm.generate_with_prefix(prefix, ids, mask, max_length=6)
    # Each row continues its own prompt exactly as uncached decoding does.
    for row in range(2):
        n = int(mask[row].sum())
        np.testing.assert_array_equal(out["token_ids"][row, :n], ids[row, :n])
        _assert_uncached_greedy(
            lm.backbone,
            prefix[row : row + 1],
            out["token_ids"][row : row + 1],
            n,
        )
    # A stop id ends the padding mask right after its first generation.
    stop = int(out["token_ids"][0, 4])
    stopped = lm.generate_with_prefix(
        prefix[:1], ids[:1], mask[:1], max_length=6, stop_token_ids=(stop,)
    )
    first = 3 + int(np.argmax(stopped["token_ids"][0, 3:] == stop))
    assert stopped["padding_mask"][0, : first + 1].all()
    assert not stopped["padding_mask"][0, first + 1 :].any()


def test_samplers_run_and_are_seeded():
    lm = PrefixCausalLM(tiny_gpt2(), sampler=keras_hub.samplers.TopKSampler(5))
    prefix = np.random.default_rng(4).normal(size=(4, 2, 16))
    prefix = prefix.astype("float32")

    def draw(seed):
        return lm.generate_with_prefix(
            prefix, start_token_id=0, max_length=9, seed=seed
        )["token_ids"]

    out = draw(3)
    assert out.shape == (4, 9)
    assert (out < len(VOCAB)).all()
    # Same seed, same draw (the compiled sampler's seed state is reset);
    # another seed, or continuing the stream, draws other tokens.
    np.testing.assert_array_equal(draw(3), out)
    assert not np.array_equal(draw(4), out)
    assert not np.array_equal(draw(None), draw(None))
    lm.compile(sampler=keras_hub.samplers.TopPSampler(0.9, temperature=0.7))
    out = lm.generate_with_prefix(prefix, start_token_id=0, max_length=7)
    assert out["token_ids"].shape == (4, 7)


def test_bad_inputs():
    with pytest.raises(ValueError, match="backbone"):
        get_prefix_adapter(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="causal_lm"):
        PrefixCausalLM(keras.Sequential([keras.layers.Dense(2)]))
    lm = PrefixCausalLM(tiny_gpt2())
    with pytest.raises(ValueError, match="prefix"):
        lm.generate_with_prefix(np.ones((2, 3, 7)), start_token_id=0)
    with pytest.raises(ValueError, match="max_length"):
        lm.generate_with_prefix(
            np.ones((2, 3, 16)), start_token_id=0, max_length=1
        )


def _tiny_looped_lm(seed=0):
    from keras_gr.hub import LoopedGemmaBackbone
    from keras_gr.hub import LoopedGemmaCausalLM

    keras.utils.set_random_seed(seed)
    backbone = LoopedGemmaBackbone(
        vocabulary_size=24,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
        head_dim=8,
        num_prelude_layers=1,
        num_looped_layers=2,
        num_loops=3,
        num_coda_layers=1,
    )
    return LoopedGemmaCausalLM(backbone)


def test_looped_backbone_prefix_path_follows_the_loop_schedule():
    # Issue 26 item 17: the looped backbone must run its schedule
    # (0, 1, 2, 1, 2, 1, 2, 3), not each distinct layer once.
    causal_lm = _tiny_looped_lm()
    backbone = causal_lm.backbone
    rng = np.random.default_rng(5)
    ids = rng.integers(1, 24, size=(2, 7)).astype("int32")
    mask = np.ones_like(ids, bool)
    expected = ops.convert_to_numpy(
        causal_lm({"token_ids": ids, "padding_mask": mask})
    )
    empty = np.zeros((2, 0, backbone.hidden_dim), "float32")
    got = ops.convert_to_numpy(prefix_lm_logits(backbone, empty, ids, mask))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    # A prefix of the first t (scaled) token embeddings: same logits.
    t = 3
    prefix = ops.convert_to_numpy(backbone.token_embedding(ids[:, :t]))
    prefix = prefix * np.sqrt(backbone.hidden_dim)
    got = prefix_lm_logits(backbone, prefix, ids[:, t:], mask[:, t:])
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), expected, atol=2e-5, rtol=1e-4
    )
    adapter = get_prefix_adapter(backbone)
    shape = adapter.cache_shape(backbone, batch_size=2, length=9)
    assert shape[1] == len(backbone.layer_schedule) == 8


def test_looped_backbone_cached_greedy_equals_uncached():
    lm = PrefixCausalLM(_tiny_looped_lm(seed=1), sampler="greedy")
    rng = np.random.default_rng(6)
    prefix = rng.normal(scale=4.0, size=(2, 3, 16)).astype("float32")
    start = np.array([[1, 2], [3, 4]], "int32")
    out = lm.generate_with_prefix(prefix, token_ids=start, max_length=7)
    _assert_uncached_greedy(lm.backbone, prefix, out["token_ids"], 2)


@pytest.mark.slow
def test_looped_backbone_empty_prefix_decodes_as_its_own_generate():
    # Empty prefix: PrefixCausalLM decodes as the looped LM's own
    # generate() (keras-hub's cached loop over the schedule).
    lm = PrefixCausalLM(_tiny_looped_lm(seed=1), sampler="greedy")
    start = np.array([[1, 2], [3, 4]], "int32")
    causal_lm = lm.causal_lm
    causal_lm.compile(sampler="greedy")
    own = causal_lm.generate(
        {
            "token_ids": np.pad(start, [(0, 0), (0, 5)]),
            "padding_mask": np.pad(np.ones_like(start), [(0, 0), (0, 5)]),
        },
        stop_token_ids=None,
    )
    empty = np.zeros((2, 0, 16), "float32")
    mine = lm.generate_with_prefix(empty, token_ids=start, max_length=7)
    np.testing.assert_array_equal(mine["token_ids"], own["token_ids"])


def test_unregistered_subclass_is_refused_not_matched_by_its_parent():
    class MyGemma(keras_hub.models.GemmaBackbone):
        pass

    backbone = MyGemma(
        vocabulary_size=16,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
        head_dim=4,
    )
    with pytest.raises(ValueError, match="MyGemma.*GemmaBackbone"):
        get_prefix_adapter(backbone)
