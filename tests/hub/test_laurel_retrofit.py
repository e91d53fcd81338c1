"""Tests of the LAuReL retrofit of keras-hub decoder LMs.

Parity tests run over one tiny model per supported block class (Gemma,
Gemma with Gemma 2 options, Gemma 3, Llama 3, Mistral, Qwen, Qwen 3,
GPT-2), pinned to the keras-hub version range of `pyproject.toml` (the
retrofit reads private attribute names of keras-hub's blocks). The other
tests use the tiny local Gemma preset and the tiny GPT-2 with tokenizers.
"""

import os
import threading
import warnings

import keras
import keras_hub
import numpy as np
import pytest

from keras_gr.hub import LaurelGemmaBackbone
from keras_gr.hub import LaurelGemmaCausalLM
from keras_gr.hub import laurel_backbone_class
from keras_gr.hub import laurel_parameters
from keras_gr.hub import laurel_retrofit
from tests.hub.tiny_configs import DECODER
from tests.hub.tiny_configs import GPT2
from tests.hub.tiny_configs import gemma2_options
from tests.hub.tiny_gpt2 import PROMPTS
from tests.hub.tiny_gpt2 import tiny_gpt2

M = keras_hub.models
SMALL = DECODER
GEMMA2_OPTIONS = gemma2_options(sliding_window_size=4)
# name: (backbone class, CausalLM class, backbone kwargs)
FAMILIES = {
    "gemma": (M.GemmaBackbone, M.GemmaCausalLM, {**SMALL, "head_dim": 8}),
    "gemma2": (
        M.GemmaBackbone,
        M.GemmaCausalLM,
        {**SMALL, "head_dim": 8, **GEMMA2_OPTIONS},
    ),
    "gemma3": (
        M.Gemma3Backbone,
        M.Gemma3CausalLM,
        {**SMALL, "head_dim": 8, "image_size": None},
    ),
    "llama3": (M.Llama3Backbone, M.Llama3CausalLM, SMALL),
    "mistral": (
        M.MistralBackbone,
        M.MistralCausalLM,
        {**SMALL, "sliding_window": 4},
    ),
    "qwen": (M.QwenBackbone, M.QwenCausalLM, SMALL),
    "qwen3": (M.Qwen3Backbone, M.Qwen3CausalLM, {**SMALL, "head_dim": 8}),
    "gpt2": (
        M.GPT2Backbone,
        M.GPT2CausalLM,
        GPT2,
    ),
}
LENGTH = 7


def tiny_gemma(folder):
    return keras_hub.models.CausalLM.from_preset(folder)


def token_batch(vocab_size, seed=0, length=10):
    rng = np.random.default_rng(seed)
    mask = np.ones((2, length), "int32")
    mask[1, length - 3 :] = 0
    return {
        "token_ids": rng.integers(1, vocab_size, (2, length)).astype("int32"),
        "padding_mask": mask,
    }


def logits(model, batch):
    return np.asarray(keras.ops.convert_to_numpy(model(batch)), "float32")


def family_lm(name, seed=0):
    backbone_cls, task_cls, kwargs = FAMILIES[name]
    keras.utils.set_random_seed(seed)
    return task_cls(backbone=backbone_cls(**kwargs), preprocessor=None)


def randomise_joins(model, seed=1, scale=0.1):
    rng = np.random.default_rng(seed)
    for v in laurel_parameters(model):
        v.assign(rng.normal(scale=scale, size=v.shape).astype("float32"))


# ---------------------------------------------------------------------------
# parity, one tiny model per supported block class
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FAMILIES))
def test_identical_at_init_in_place(name):
    lm = family_lm(name)
    backbone = lm.backbone
    batch = token_batch(40, length=LENGTH)
    before = logits(lm, batch)
    n_before = lm.count_params()
    out = laurel_retrofit(lm, variant="rw_lr", rank=2)
    # In place: the same objects, their classes now the LAuReL subclasses.
    assert out is lm and lm.backbone is backbone
    backbone_cls, task_cls, _ = FAMILIES[name]
    assert type(backbone).__name__ == f"Laurel{backbone_cls.__name__}"
    assert type(backbone) is laurel_backbone_class(backbone_cls)
    assert type(lm).__name__ == f"Laurel{task_cls.__name__}"
    assert isinstance(lm, task_cls) and isinstance(backbone, backbone_cls)
    np.testing.assert_array_equal(logits(lm, batch), before)
    # 2 joins per block, rw_lr: 2 r D + 2 parameters each.
    n_laurel = sum(int(np.prod(v.shape)) for v in laurel_parameters(lm))
    assert n_laurel == 2 * 2 * (2 * 2 * 16 + 2)
    assert lm.count_params() == n_before + n_laurel


@pytest.mark.parametrize("name", list(FAMILIES))
def test_cached_decode_equals_full_forward_after_randomising(name):
    lm = laurel_retrofit(family_lm(name), variant="rw_lr", rank=2)
    plain = logits(lm, token_batch(40, length=LENGTH))
    randomise_joins(lm)
    batch = token_batch(40, length=LENGTH)
    batch["padding_mask"] = np.ones_like(batch["padding_mask"])
    full = logits(lm, batch)
    assert np.max(np.abs(full - plain)) > 1e-3  # the joins do something
    token_ids = keras.ops.convert_to_tensor(batch["token_ids"])
    if name == "gemma3":
        mask = keras.ops.convert_to_tensor(batch["padding_mask"])
        _, cache = lm._build_cache(token_ids, None, None, mask, None)
    else:
        _, cache = lm._build_cache(token_ids)
    step, _, _ = lm.call_with_cache(token_ids[:, -1:], cache, LENGTH - 1)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(step)[:, 0],
        full[:, -1],
        atol=1e-5,
        rtol=1e-5,
    )


# One compiled fit per join table entry (Gemma blocks, Llama-style blocks,
# TransformerDecoder) by default; the other families are `slow` (~4 s each
# on JAX).
FIT_DEFAULT = ("gemma", "llama3", "gpt2")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name, marks=() if name in FIT_DEFAULT else pytest.mark.slow
        )
        for name in FAMILIES
    ],
)
def test_compiled_fit_trains_only_laurel(name):
    backbone = family_lm(name).backbone
    laurel_retrofit(backbone, rank=2, train_only_laurel_params=True)
    laurel_ids = {id(v) for v in laurel_parameters(backbone)}
    assert {id(v) for v in backbone.trainable_weights} == laurel_ids
    before = [np.array(keras.ops.convert_to_numpy(v)) for v in backbone.weights]
    batch = token_batch(40, length=LENGTH)
    y = np.random.default_rng(2).normal(size=(2, LENGTH, 16))
    backbone.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    backbone.fit(batch, y.astype("float32"), epochs=2, verbose=0)
    for v, b in zip(backbone.weights, before):
        changed = not np.array_equal(keras.ops.convert_to_numpy(v), b)
        if id(v) in laurel_ids and "lr_a" not in v.path:
            assert changed, f"{v.path} did not train"
        if id(v) not in laurel_ids:
            assert not changed, f"{v.path} changed but is frozen"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_keras_and_preset_round_trip(name, tmp_path):
    lm = laurel_retrofit(family_lm(name), variant="rw_lr", rank=2)
    randomise_joins(lm)
    batch = token_batch(40, length=LENGTH)
    want = logits(lm, batch)
    path = os.path.join(tmp_path, "laurel.keras")
    lm.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(lm)
    assert type(loaded.backbone) is type(lm.backbone)
    np.testing.assert_array_equal(logits(loaded, batch), want)
    # A preset without a preprocessor: the CausalLM subclass is found from
    # the backbone class recorded in config.json.
    preset = os.path.join(tmp_path, "preset")
    lm.save_to_preset(preset)
    reloaded = keras_hub.models.CausalLM.from_preset(preset, preprocessor=None)
    assert type(reloaded) is type(lm)
    np.testing.assert_array_equal(logits(reloaded, batch), want)


def test_keras_reload_restores_compile_freeze_and_optimizer(tmp_path):
    """A trained, train-only-LAuReL model reloads from `.keras` compiled,
    with the same trainable variables and its optimizer state, silently
    (no "compile() was not called" / "Skipping variable loading")."""
    lm = laurel_retrofit(
        family_lm("gemma"), rank=2, train_only_laurel_params=True
    )
    lm.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    batch = token_batch(40, length=LENGTH)
    labels = np.roll(batch["token_ids"], -1, axis=1)
    lm.fit(batch, labels, batch_size=2, epochs=2, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "trained.keras")
    lm.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.models.load_model(path)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "compile()" in m], messages
    assert not [m for m in messages if "Skipping variable" in m], messages
    want = [v.path for v in lm.trainable_variables]
    assert [v.path for v in loaded.trainable_variables] == want
    assert len(want) == len(laurel_parameters(lm))
    saved = [keras.ops.convert_to_numpy(v) for v in lm.optimizer.variables]
    restored = loaded.optimizer.variables
    assert len(restored) == len(saved)
    for a, b in zip(restored, saved):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), b)
    np.testing.assert_array_equal(logits(loaded, batch), logits(lm, batch))


# ---------------------------------------------------------------------------
# real CausalLMs with tokenizers (tiny Gemma preset, tiny GPT-2)
# ---------------------------------------------------------------------------


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
    n_before = lm.count_params()
    new = laurel_retrofit(lm, variant=variant, rank=4)
    assert new is lm
    np.testing.assert_array_equal(logits(new, batch), before)
    d = lm.backbone.hidden_dim
    per_join = {"rw": 2, "lr": 2 * 4 * d, "rw_lr": 2 * 4 * d + 2}[variant]
    n_laurel = sum(int(np.prod(v.shape)) for v in laurel_parameters(new))
    assert n_laurel == 2 * lm.backbone.num_layers * per_join
    assert new.count_params() == n_before + n_laurel


def test_generate_equal_at_init(family):
    _, make = family
    lm = make()
    lm.compile(sampler="greedy")
    # Token ids in, token ids out (no detokenisation hiding differences).
    lm.preprocessor.sequence_length = 12
    inputs = lm.preprocessor.generate_preprocess(PROMPTS)
    inputs = {k: np.asarray(v) for k, v in inputs.items()}
    lm.preprocessor = None
    out_before = lm.generate(inputs, max_length=12, stop_token_ids=None)
    # In place, after a first generate(): the traced generate function is
    # dropped and rebuilt with the joins.
    laurel_retrofit(lm, variant="rw_lr", rank=4)
    out_after = lm.generate(inputs, max_length=12, stop_token_ids=None)
    np.testing.assert_array_equal(
        np.asarray(out_after["token_ids"]), np.asarray(out_before["token_ids"])
    )
    randomise_joins(lm, scale=1.0)
    out_changed = lm.generate(inputs, max_length=12, stop_token_ids=None)
    assert not np.array_equal(
        np.asarray(out_changed["token_ids"]),
        np.asarray(out_before["token_ids"]),
    )


@pytest.mark.parametrize(
    "name, only_laurel",
    [("gemma", 0), pytest.param("gpt2", 1, marks=pytest.mark.slow)],
)
def test_fit_on_text_and_train_only_laurel(tiny_preset, name, only_laurel):
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


def test_save_load_keras_and_preset_with_tokenizer(tiny_preset, tmp_path):
    lm = laurel_retrofit(tiny_gemma(tiny_preset), variant="rw_lr", rank=4)
    randomise_joins(lm, scale=0.01)
    batch = token_batch(lm.backbone.vocabulary_size)
    want = logits(lm, batch)
    path = os.path.join(tmp_path, "laurel.keras")
    lm.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(logits(loaded, batch), want)
    preset = os.path.join(tmp_path, "preset")
    lm.save_to_preset(preset)
    reloaded = keras_hub.models.CausalLM.from_preset(preset)
    assert isinstance(reloaded, LaurelGemmaCausalLM)
    assert reloaded.preprocessor is not None
    np.testing.assert_array_equal(logits(reloaded, batch), want)
    backbone = keras_hub.models.Backbone.from_preset(preset)
    assert isinstance(backbone, LaurelGemmaBackbone)


def test_backbone_class_made_by_the_factory():
    # By class, without a retrofit: __init__ runs the family's __init__
    # and installs the joins; config round trip.
    cls = laurel_backbone_class(M.MistralBackbone)
    assert laurel_backbone_class(M.MistralBackbone) is cls
    assert laurel_backbone_class(cls) is cls
    keras.utils.set_random_seed(0)
    backbone = cls(**FAMILIES["mistral"][2], laurel_config={"variant": "rw"})
    config = backbone.get_config()
    assert config["laurel_config"]["variant"] == "rw"
    keras.utils.set_random_seed(0)
    plain = M.MistralBackbone(**FAMILIES["mistral"][2])
    batch = token_batch(40, length=LENGTH)
    np.testing.assert_array_equal(logits(backbone, batch), logits(plain, batch))
    clone = cls.from_config(config)
    assert len(clone.laurel_joins) == 4
    with pytest.raises(ValueError, match="`base_cls` must be a keras-hub"):
        laurel_backbone_class(keras.Model)


def test_concurrent_calls_from_threads():
    # Each join records its residual in a threading.local(). Both threads
    # pass the first join's tap before either reaches its branch end (a
    # barrier inside the attention between them): a slot shared by the
    # threads would mix their residuals.
    lm = laurel_retrofit(family_lm("llama3"), rank=2)
    randomise_joins(lm)
    batches = [token_batch(40, seed=s, length=LENGTH) for s in range(2)]
    want = [logits(lm, b) for b in batches]
    barrier = threading.Barrier(2, timeout=60)
    attention = lm.backbone.transformer_layers[0]._self_attention_layer
    attention_call = attention.call

    def synchronised(*args, **kwargs):
        barrier.wait()
        return attention_call(*args, **kwargs)

    results, errors = [None, None], []

    def work(i):
        try:
            results[i] = logits(lm, batches[i])
        except Exception as error:  # reported below
            errors.append(error)
            barrier.abort()

    attention.call = synchronised
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        attention.call = attention_call
    assert not errors, errors
    for out, expected in zip(results, want):
        np.testing.assert_array_equal(out, expected)


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
    # A refused retrofit leaves the model untouched.
    assert type(lm) is keras_hub.models.GPT2CausalLM
    assert not hasattr(lm.backbone, "laurel_joins")
    laurel_retrofit(lm, variant="rw")
    with pytest.raises(ValueError, match="already has LAuReL"):
        laurel_retrofit(lm, variant="rw")
    other = keras_hub.models.BertBackbone(
        vocabulary_size=10,
        num_layers=1,
        num_heads=1,
        hidden_dim=4,
        intermediate_dim=4,
        max_sequence_length=8,
    )
    with pytest.raises(ValueError, match="block class TransformerEncoder"):
        laurel_retrofit(other)
    with pytest.raises(ValueError, match="keras-hub decoder backbone"):
        laurel_retrofit(keras.Sequential([keras.layers.Dense(2)]))
    # A post-norm TransformerDecoder stack is refused.
    post_norm = tiny_gpt2().backbone
    post_norm.transformer_layers[1].normalize_first = False
    with pytest.raises(ValueError, match="post-norm"):
        laurel_retrofit(post_norm)
    assert type(post_norm) is keras_hub.models.GPT2Backbone


@pytest.mark.parametrize(
    "policy",
    ["bfloat16", pytest.param("mixed_bfloat16", marks=pytest.mark.slow)],
)
def test_retrofit_keeps_the_dtype_policy_end_to_end(policy):
    keras.utils.set_random_seed(0)
    backbone = M.GemmaBackbone(**FAMILIES["gemma"][2], dtype=policy)
    batch = token_batch(40)
    want = backbone(batch)
    laurel_retrofit(backbone, variant="rw_lr", rank=2)
    compute = keras.DTypePolicy(policy).compute_dtype
    variable = keras.DTypePolicy(policy).variable_dtype
    # Every weight (the LAuReL scalars included) in the variable dtype.
    assert {
        keras.backend.standardize_dtype(v.dtype) for v in backbone.weights
    } == {variable}
    joins = backbone.laurel_joins
    assert all(join.compute_dtype == compute for join in joins)
    out = backbone(batch)
    assert keras.backend.standardize_dtype(out.dtype) == compute
    # A join's increment stays in the compute dtype (no float32 activations).
    x = keras.ops.ones((1, 3, 16), dtype=compute)
    increment = joins[0].residual_increment(x, x)
    assert keras.backend.standardize_dtype(increment.dtype) == compute
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(want, "float32")),
        atol=2e-2,
        rtol=2e-2,
    )


def test_joins_survive_quantization():
    # A quantized branch end runs `quantized_call`, wrapped as well.
    backbone = family_lm("llama3").backbone
    laurel_retrofit(backbone, variant="rw", rank=2)
    backbone.quantize("int8")
    batch = token_batch(40, length=LENGTH)
    before = logits(backbone, batch)
    for join in backbone.laurel_joins[1::2]:  # the MLP joins only
        join.beta.assign(0.5)
    assert np.max(np.abs(logits(backbone, batch) - before)) > 1e-2
