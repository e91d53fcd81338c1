"""Tests of the LAuReL retrofit into keras-hub Gemma and GPT-2 models."""

import os

import keras
import keras_hub
import numpy as np
import pytest

from keras_gr.hub import LaurelGemmaCausalLM
from keras_gr.hub import laurel_parameters
from keras_gr.hub import laurel_retrofit
from tests.hub.tiny_gpt2 import PROMPTS
from tests.hub.tiny_gpt2 import VOCAB
from tests.hub.tiny_gpt2 import tiny_gpt2


def tiny_gemma(folder):
    return keras_hub.models.CausalLM.from_preset(folder)


def token_batch(vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(1, vocab_size, (2, 10)).astype("int32"),
        "padding_mask": np.array([[1] * 10, [1] * 7 + [0] * 3], "int32"),
    }


def logits(lm, batch):
    return np.asarray(keras.ops.convert_to_numpy(lm(batch)), "float32")


@pytest.fixture(params=["gemma", "gpt2"])
def family(request, tiny_preset):
    if request.param == "gemma":
        return request.param, lambda: tiny_gemma(tiny_preset)
    return request.param, tiny_gpt2


@pytest.mark.parametrize("variant", ["rw", "lr", "rw_lr"])
def test_identity_at_init_and_parameter_count(family, variant):
    _, make = family
    lm = make()
    batch = token_batch(lm.backbone.vocabulary_size)
    before = logits(lm, batch)
    new = laurel_retrofit(lm, variant=variant, rank=4)
    after = logits(new, batch)
    assert np.max(np.abs(after - before)) <= 1e-5
    # The input model is untouched and the weights were copied, not shared.
    np.testing.assert_array_equal(logits(lm, batch), before)
    d = lm.backbone.hidden_dim
    per_join = {"rw": 2, "lr": 2 * 4 * d, "rw_lr": 2 * 4 * d + 2}[variant]
    n_laurel = sum(int(np.prod(v.shape)) for v in laurel_parameters(new))
    assert n_laurel == 2 * lm.backbone.num_layers * per_join
    assert new.count_params() == lm.count_params() + n_laurel


def test_generate_equal_at_init(family):
    _, make = family
    lm = make()
    lm.compile(sampler="greedy")
    new = laurel_retrofit(lm, variant="rw_lr", rank=4)
    new.compile(sampler="greedy")
    # Token ids in, token ids out (no detokenisation hiding differences).
    lm.preprocessor.sequence_length = 12
    inputs = lm.preprocessor.generate_preprocess(PROMPTS)
    inputs = {k: np.asarray(v) for k, v in inputs.items()}
    lm.preprocessor, new.preprocessor = None, None
    out_before = lm.generate(inputs, max_length=12, stop_token_ids=None)
    out_after = new.generate(inputs, max_length=12, stop_token_ids=None)
    np.testing.assert_array_equal(
        np.asarray(out_after["token_ids"]), np.asarray(out_before["token_ids"])
    )


def test_cached_forward_matches_full_forward_after_training(tiny_preset):
    # Once the LAuReL weights are non-trivial, the KV-cache path must still
    # compute the same logits as the full forward pass.
    lm = laurel_retrofit(tiny_gemma(tiny_preset), variant="rw_lr", rank=4)
    rng = np.random.default_rng(0)
    for v in laurel_parameters(lm):
        v.assign(rng.normal(scale=0.1, size=v.shape).astype("float32"))
    batch = token_batch(lm.backbone.vocabulary_size)
    batch["padding_mask"] = np.ones_like(batch["padding_mask"])
    full = logits(lm, batch)
    token_ids = keras.ops.convert_to_tensor(batch["token_ids"])
    _, cache = lm._build_cache(token_ids)
    cached, _, _ = lm.call_with_cache(token_ids[:, -1:], cache, 9)
    np.testing.assert_allclose(
        np.asarray(cached)[:, 0], full[:, -1], atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize(
    "name, only_laurel",
    [("gemma", 0), pytest.param("gpt2", 1, marks=pytest.mark.slow)],
)
def test_fit_and_train_only_laurel(tiny_preset, name, only_laurel):
    lm = tiny_gemma(tiny_preset) if name == "gemma" else tiny_gpt2()
    new = laurel_retrofit(
        lm, variant="rw_lr", rank=4, train_only_laurel_params=only_laurel
    )
    laurel_ids = {id(v) for v in laurel_parameters(new)}
    if only_laurel:
        assert {id(v) for v in new.trainable_weights} == laurel_ids
    before = [np.array(v) for v in new.weights]
    texts = PROMPTS * 4 if name == "gpt2" else ["the cat sat on the mat"] * 8
    new.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = new.fit(texts, batch_size=4, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    for v, b in zip(new.weights, before):
        changed = not np.array_equal(np.array(v), b)
        if id(v) in laurel_ids and "lr_a" not in v.path:
            assert changed, f"{v.path} did not train"
        if only_laurel and id(v) not in laurel_ids:
            assert not changed, f"{v.path} changed but is frozen"


def test_save_load_keras_and_preset(tiny_preset, tmp_path):
    lm = laurel_retrofit(tiny_gemma(tiny_preset), variant="rw_lr", rank=4)
    for v in laurel_parameters(lm):
        v.assign(np.full(v.shape, 0.01, "float32"))
    batch = token_batch(lm.backbone.vocabulary_size)
    want = logits(lm, batch)
    path = os.path.join(tmp_path, "laurel.keras")
    lm.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(logits(loaded, batch), want, atol=1e-6)
    preset = os.path.join(tmp_path, "preset")
    lm.save_to_preset(preset)
    reloaded = keras_hub.models.CausalLM.from_preset(preset)
    assert isinstance(reloaded, LaurelGemmaCausalLM)
    np.testing.assert_allclose(logits(reloaded, batch), want, atol=1e-6)


def test_gpt2_keras_round_trip(tmp_path):
    lm = laurel_retrofit(tiny_gpt2(), variant="lr", rank=2)
    for v in laurel_parameters(lm):
        v.assign(np.full(v.shape, 0.02, "float32"))
    batch = token_batch(len(VOCAB))
    path = os.path.join(tmp_path, "gpt2.keras")
    lm.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(logits(loaded, batch), logits(lm, batch))


def test_backbone_retrofit(tiny_preset):
    backbone = tiny_gemma(tiny_preset).backbone
    batch = token_batch(backbone.vocabulary_size)
    new = laurel_retrofit(backbone, variant="rw")
    assert isinstance(new, keras_hub.models.GemmaBackbone)
    np.testing.assert_array_equal(
        np.asarray(new(batch)), np.asarray(backbone(batch))
    )


def test_bad_input(tiny_preset):
    lm = tiny_gpt2()
    with pytest.raises(ValueError, match="`variant` must be one of"):
        laurel_retrofit(lm, variant="rw_lr_pa")
    with pytest.raises(ValueError, match="`variant` must be one of"):
        laurel_retrofit(lm, variant="bogus")
    with pytest.raises(ValueError, match="`rank` must be at most"):
        laurel_retrofit(lm, variant="lr", rank=64)
    with pytest.raises(ValueError, match="`rw_parametrization` must be"):
        laurel_retrofit(lm, variant="rw", rw_parametrization="softmax")
    with pytest.raises(ValueError, match="already has LAuReL"):
        laurel_retrofit(laurel_retrofit(lm, variant="rw"))
    other = keras_hub.models.BertBackbone(
        vocabulary_size=10,
        num_layers=1,
        num_heads=1,
        hidden_dim=4,
        intermediate_dim=4,
        max_sequence_length=8,
    )
    with pytest.raises(ValueError, match="supported family"):
        laurel_retrofit(other)


@pytest.mark.parametrize(
    "policy",
    ["bfloat16", pytest.param("mixed_bfloat16", marks=pytest.mark.slow)],
)
def test_retrofit_keeps_the_dtype_policy_end_to_end(policy):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=40,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
        head_dim=8,
        dtype=policy,
    )
    new = laurel_retrofit(backbone, variant="rw_lr", rank=2)
    compute = keras.DTypePolicy(policy).compute_dtype
    variable = keras.DTypePolicy(policy).variable_dtype
    # Every weight (the LAuReL scalars included) in the variable dtype.
    assert {keras.backend.standardize_dtype(v.dtype) for v in new.weights} == {
        variable
    }
    joins = [
        join
        for block in new.transformer_layers
        for join in (block.attention_laurel, block.feedforward_laurel)
    ]
    assert all(join.compute_dtype == compute for join in joins)
    batch = token_batch(40)
    out = new(batch)
    assert keras.backend.standardize_dtype(out.dtype) == compute
    # A join's output stays in the compute dtype (no float32 activations).
    x = keras.ops.ones((1, 3, 16), dtype=compute)
    assert keras.backend.standardize_dtype(joins[0]([x, x]).dtype) == compute
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(backbone(batch), "float32")),
        atol=2e-2,
        rtol=2e-2,
    )
