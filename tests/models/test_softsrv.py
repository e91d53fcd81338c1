"""Tests of SoftSRV: soft-prompt parametrisations, frozen-LM training,
cached generation steered by the prompt, save/load, bad input."""

import math

import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

from keras_gr.curation import HashedNgramEmbedder
from keras_gr.models import HardPromptGenerator
from keras_gr.models import SoftPrompt
from keras_gr.models import SoftSRV
from tests.conformance import check_layer

TARGET = "zebra 7"


@pytest.fixture(scope="module")
def causal_lm(tiny_preset):
    return keras_hub.models.CausalLM.from_preset(tiny_preset)


def _gelu(x):  # exact (erf) GELU, keras.activations.gelu's default
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1 + erf(x / np.sqrt(2.0)))


def _reference_prompt(layer, z):
    w = {v.path.split("/")[-1]: np.asarray(v) for v in layer.weights}
    t, d = layer.prompt_length, layer.hidden_dim
    if layer.parametrization == "nsp":
        return np.broadcast_to(w["prompts"], (len(z), t, d))
    if layer.parametrization == "mpk":
        logits = z @ w["mixture_kernel"] + w["mixture_bias"]
        a = np.exp(logits - logits.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        return np.einsum("bk,ktd->btd", a, w["prompts"])
    h = _gelu(z @ w["hidden_kernel"] + w["hidden_bias"])
    out = h @ w["output_kernel"] + w["output_bias"]
    return out.reshape(len(z), t, d)


@pytest.mark.parametrize(
    "parametrization, expected_params",
    [
        ("nsp", 3 * 8),
        ("mpk", 4 * 3 * 8 + 6 * 4 + 4),
        ("mc", 6 * 5 + 5 + 5 * 3 * 8 + 3 * 8),
    ],
)
def test_soft_prompt_params_shapes_and_values(parametrization, expected_params):
    layer = SoftPrompt(
        prompt_length=3,
        hidden_dim=8,
        parametrization=parametrization,
        num_prompts=4,
        mlp_dim=5,
        initializer_stddev=0.5,
    )
    z = np.random.default_rng(0).normal(size=(7, 6)).astype("float32")
    out = ops.convert_to_numpy(layer(z))
    assert out.shape == (7, 3, 8)
    assert layer.count_params() == expected_params
    np.testing.assert_allclose(
        out, _reference_prompt(layer, z), atol=1e-5, rtol=1e-5
    )
    if parametrization != "nsp":  # contextual: different z, different P
        assert not np.allclose(out[0], out[1])


@pytest.mark.parametrize(
    "parametrization",
    [
        pytest.param("nsp", marks=pytest.mark.slow),
        pytest.param("mpk", marks=pytest.mark.slow),
        "mc",
    ],
)
def test_soft_prompt_conformance(parametrization):
    check_layer(
        SoftPrompt,
        dict(
            prompt_length=2,
            hidden_dim=4,
            parametrization=parametrization,
            num_prompts=3,
            mlp_dim=6,
        ),
        np.random.default_rng(1).normal(size=(4, 5)).astype("float32"),
        expected_output_shape=(4, 2, 4),
    )


def _bare_loss(causal_lm, x, y, w):
    logits = ops.convert_to_numpy(
        causal_lm(
            {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}
        )
    ).astype("float64")
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    return float((nll * w).sum() / w.sum())


def _cached_teacher_forced_logits(generator, prefix, ids):
    """Next-token logits of `ids` after `prefix`, one token at a time
    through the key/value cache (prefix written once at slots 0..t-1)."""
    adapter, backbone = generator.adapter, generator.backbone
    t, length = prefix.shape[1], ids.shape[1]
    cache = ops.zeros(
        adapter.cache_shape(backbone, ids.shape[0], t + length), "float32"
    )
    first = ops.concatenate(
        [
            ops.convert_to_tensor(prefix),
            adapter.embed_tokens(backbone, ids[:, :1]),
        ],
        axis=1,
    )
    logits, _, cache = generator.call_with_cache(first, cache, 0)
    out = [ops.convert_to_numpy(logits[:, -1])]
    for i in range(1, length):
        step = adapter.embed_tokens(backbone, ids[:, i : i + 1])
        logits, _, cache = generator.call_with_cache(step, cache, t + i)
        out.append(ops.convert_to_numpy(logits[:, 0]))
    return np.stack(out, axis=1)


def _nll(logits, y, w):
    logits = logits.astype("float64")
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    return float((nll * w).sum() / w.sum())


def test_fit_trains_only_the_prompt_and_the_effect_survives_the_cache(
    causal_lm,
):
    model = SoftSRV(
        causal_lm,
        prompt_length=16,
        parametrization="nsp",
        sequence_length=12,
        sampler="greedy",
        initializer_stddev=1.0,
    )
    x, y, w = model.preprocess([TARGET] * 8)
    frozen = [np.array(v) for v in causal_lm.backbone.weights]
    prompt_before = np.array(model.soft_prompt.prompts)
    assert [v.path for v in model.trainable_weights] == [
        model.soft_prompt.prompts.path
    ]
    model.compile(optimizer=keras.optimizers.Adam(0.1), jit_compile=True)
    history = model.fit(
        x, y, sample_weight=w, epochs=30, batch_size=8, verbose=0
    )
    losses = history.history["loss"]
    bare = _bare_loss(causal_lm, x, y, w)
    assert losses[-1] < losses[0] - 0.1, (losses[0], losses[-1])
    # Frozen LM: every backbone weight identical; the prompt moved.
    for before, v in zip(frozen, causal_lm.backbone.weights):
        np.testing.assert_array_equal(before, np.array(v))
    assert np.abs(np.array(model.soft_prompt.prompts) - prompt_before).max() > 0
    # The prompt's effect survives the cache: teacher-forced logits through
    # the key/value cache equal the uncached ones, so the cached loss is
    # the trained (low) loss, not the bare LM's.
    prefix = model.prompts_for([TARGET])
    ids = x["token_ids"][:1]
    cached = _cached_teacher_forced_logits(model.generator, prefix, ids)
    uncached = model.predict({k: v[:1] for k, v in x.items()}, verbose=0)
    real = x["padding_mask"][0]  # padding positions carry no loss
    np.testing.assert_allclose(
        cached[:, real], uncached[:, real], atol=1e-4, rtol=1e-4
    )
    # The bare LM does not fit the target; with the trained prompt the
    # same frozen LM does much better, through the cache too.
    trained = _nll(uncached, y[:1], w[:1])
    assert trained < bare - 0.5, (bare, trained)
    assert abs(_nll(cached, y[:1], w[:1]) - trained) < 1e-3
    # Greedy decoding through the cache is what uncached decoding gives.
    out = model.generator.generate_with_prefix(
        prefix, start_token_id=model.tokenizer.start_token_id, max_length=6
    )
    # One uncached pass over the decoded row: each token is the argmax of
    # the logits before it, so token-by-token uncached greedy decoding
    # gives the same row (by induction).
    tokens = out["token_ids"]
    logits = model.generator(
        {
            "prefix": prefix,
            "token_ids": tokens,
            "padding_mask": np.ones_like(tokens),
        }
    )
    greedy = ops.convert_to_numpy(logits)[:, :-1].argmax(-1)
    np.testing.assert_array_equal(tokens[:, 1:], greedy)
    # And the prompt decides the output: after <bos>, the trained prompt
    # makes the frozen LM write the target's first token through the
    # cache; the bare LM (a tiny, nearly unigram LM) writes another one.
    assert tokens[0, 1] == ids[0, 1]
    bare_logits = causal_lm(
        {"token_ids": ids[:, :1], "padding_mask": np.ones_like(ids[:, :1])}
    )
    assert ops.convert_to_numpy(bare_logits)[0, 0].argmax() != ids[0, 1]


@pytest.mark.parametrize("parametrization", ["mpk", "mc"])
def test_prompt_gradient_reaches_every_prompt_weight(
    causal_lm, parametrization
):
    model = SoftSRV(
        causal_lm,
        prompt_length=2,
        parametrization=parametrization,
        num_prompts=2,
        mlp_dim=8,
        sequence_length=10,
    )
    x, y, w = model.preprocess(["def f(x):", "The for statement", TARGET])
    before = [np.array(v) for v in model.trainable_weights]
    assert len(before) == (3 if parametrization == "mpk" else 4)
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    model.fit(x, y, sample_weight=w, epochs=1, batch_size=3, verbose=0)
    # One SGD step moves each weight by -grad: non-zero gradients.
    for b, v in zip(before, model.trainable_weights):
        assert np.abs(np.array(v) - b).max() > 0, v.path


def test_save_load_round_trip(causal_lm, tmp_path):
    model = SoftSRV(
        causal_lm,
        prompt_length=2,
        parametrization="mc",
        mlp_dim=8,
        sequence_length=10,
    )
    x, _, _ = model.preprocess(["def f(x):", TARGET])
    expected = model.predict(x, verbose=0)
    path = str(tmp_path / "softsrv.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, SoftSRV)
    assert loaded.parametrization == "mc" and loaded.prompt_length == 2
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), expected, atol=1e-5
    )


def test_external_context_embedder(causal_lm):
    embedder = HashedNgramEmbedder(output_dim=16)
    model = SoftSRV(
        causal_lm,
        prompt_length=2,
        parametrization="mpk",
        num_prompts=2,
        context_embedder=embedder,
        sequence_length=10,
    )
    x, y, w = model.preprocess(["def f(x):", TARGET])
    assert x["context"].shape == (2, 16)
    model.compile()
    model.fit(x, y, sample_weight=w, epochs=1, verbose=0)
    texts = model.generate(
        ["def f(x):"], num_samples=3, max_length=6, context_noise=0.5
    )
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    with pytest.raises(ValueError, match="context_dim"):
        SoftSRV(causal_lm, context_embedder=embedder, context_dim=32)
    with pytest.raises(ValueError, match="context_dim"):
        SoftSRV(causal_lm, context_dim=7)


def test_hard_prompt_baseline_same_call(causal_lm):
    hard = HardPromptGenerator(
        causal_lm, num_shots=2, shot_length=6, sampler="greedy"
    )
    ids = hard.prompt_ids(["def f(x):", TARGET])
    tok = hard.tokenizer
    assert ids[0] == tok.start_token_id and ids[-1] == tok.start_token_id
    assert ids.count(tok.end_token_id) == 3
    out = hard.generate(
        ["def f(x):", TARGET, "x = 1"], num_samples=4, max_length=6
    )
    assert len(out) == 4 and all(isinstance(t, str) for t in out)


def test_bad_inputs(causal_lm):
    with pytest.raises(ValueError, match="prompt_length"):
        SoftSRV(causal_lm, prompt_length=0)
    with pytest.raises(ValueError, match="num_prompts"):
        SoftSRV(causal_lm, parametrization="mpk", num_prompts=0)
    with pytest.raises(ValueError, match="parametrization"):
        SoftSRV(causal_lm, parametrization="prefix")
    with pytest.raises(ValueError, match="causal_lm"):
        SoftSRV(causal_lm.backbone)
    llama = keras_hub.models.LlamaCausalLM(
        keras_hub.models.LlamaBackbone(
            vocabulary_size=10,
            num_layers=1,
            num_query_heads=2,
            num_key_value_heads=2,
            hidden_dim=8,
            intermediate_dim=16,
        )
    )
    with pytest.raises(ValueError, match="backbone.*LlamaBackbone"):
        SoftSRV(llama)
    model = SoftSRV(causal_lm, prompt_length=1, mlp_dim=4)
    with pytest.raises(ValueError, match="texts"):
        model.preprocess([])
    with pytest.raises(ValueError, match="texts"):
        model.generate([])
    with pytest.raises(ValueError, match="context_noise"):
        model.prompts_for(["a"], context_noise=-1.0)


@pytest.mark.slow
def test_gpt2_family_through_the_same_extension_point():
    from tests.hub.tiny_gpt2 import tiny_gpt2

    gpt2 = tiny_gpt2(seed=5)
    model = SoftSRV(
        gpt2,
        prompt_length=3,
        parametrization="mc",
        mlp_dim=8,
        sequence_length=8,
    )
    x, y, w = model.preprocess(["a port", "air port", "a rt"])
    frozen = [np.array(v) for v in gpt2.backbone.weights]
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    history = model.fit(x, y, sample_weight=w, epochs=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    for before, v in zip(frozen, gpt2.backbone.weights):
        np.testing.assert_array_equal(before, np.array(v))
    texts = model.generate(["a port"], num_samples=2, max_length=5, seed=1)
    assert texts == model.generate(["a port"], 2, max_length=5, seed=1)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
