import re

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
    backbone = LoopedGemmaBackbone(**SMALL, num_prelude_layers=2, num_loops=2)
    assert backbone.get_layer_schedule() == backbone.layer_schedule
    assert backbone.get_layer_schedule(4) == [0, 1, 2, 2, 2, 2, 3]


def test_params_equal_unlooped_and_forward_by_hand():
    keras.utils.set_random_seed(0)
    looped = LoopedGemmaBackbone(**SMALL, num_loops=3)
    plain = keras_hub.models.GemmaBackbone(**SMALL, num_layers=3)
    assert looped.count_params() == plain.count_params()
    assert looped.layer_schedule == [0, 1, 1, 1, 2]
    tokens = np.random.default_rng(0).integers(0, 40, size=(2, 7))
    mask = np.ones((2, 7), dtype="int32")
    mask[0, 5:] = 0

    def by_hand(order):
        x = looped.token_embedding(tokens) * np.sqrt(16.0).astype("float32")
        for index in order:
            x = looped.transformer_layers[index](x, padding_mask=mask)
        return keras.ops.convert_to_numpy(looped.layer_norm(x))

    got = looped({"token_ids": tokens, "padding_mask": mask})
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got),
        by_hand(looped.layer_schedule),
        atol=1e-5,
    )
    # Call-time override: the middle layer 5 times, same parameters.
    got = looped({"token_ids": tokens, "padding_mask": mask}, num_loops=5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got),
        by_hand([0, 1, 1, 1, 1, 1, 2]),
        atol=1e-5,
    )
    assert looped.count_params() == plain.count_params()


def _greedy_uncached(lm, prompt, total, num_loops=None):
    """Greedy decoding by full forward passes (no cache): a fixed padded
    length, so a causal model's logits at position t see tokens <= t only.
    `num_loops` goes through the call-time override."""
    tokens = np.zeros((1, total), dtype="int32")
    tokens[0, : len(prompt)] = prompt
    preprocessor, lm.preprocessor = lm.preprocessor, None
    try:
        for t in range(len(prompt), total):
            mask = (np.arange(total) < t).astype("int32")[None]
            inputs = {"token_ids": tokens, "padding_mask": mask}
            if num_loops is None:
                logits = lm.predict_on_batch(inputs)
            else:
                logits = lm(inputs, num_loops=num_loops)
            logits = keras.ops.convert_to_numpy(logits)
            tokens[0, t] = int(np.argmax(logits[0, t - 1]))
    finally:
        lm.preprocessor = preprocessor
    return tokens[0].tolist()


def _cached_greedy(lm, prompt, total, num_loops=None):
    """`generate()` on token ids (preprocessor detached, no stop token)."""
    token_ids = np.zeros((1, total), dtype="int32")
    token_ids[0, : len(prompt)] = prompt
    padding = np.zeros_like(token_ids)
    padding[0, : len(prompt)] = 1
    preprocessor, lm.preprocessor = lm.preprocessor, None
    try:
        out = lm.generate(
            {"token_ids": token_ids, "padding_mask": padding},
            stop_token_ids=None,
            num_loops=num_loops,
        )
    finally:
        lm.preprocessor = preprocessor
    return [int(t) for t in np.asarray(out["token_ids"])[0]]


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _perturb(model, seed):
    """Moves every weight away from its preset value (seeded), so a
    round trip that silently reloaded the preset would be caught."""
    rng = np.random.default_rng(seed)
    model.set_weights(
        [
            w + 0.05 * rng.standard_normal(w.shape).astype(w.dtype)
            for w in model.get_weights()
        ]
    )


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


PROMPT = [2, 17, 33, 9]
TOTAL = 10


def test_cached_generation_equals_uncached_greedy(looped_lm):
    lm = looped_lm
    assert isinstance(lm, LoopedGemmaCausalLM)
    assert lm.backbone.num_applications == 5
    lm.compile(sampler="greedy", jit_compile=True)
    default = _cached_greedy(lm, PROMPT, TOTAL)
    assert default == _greedy_uncached(lm, PROMPT, TOTAL)
    default_function = lm.generate_function
    # Generate-time override: more loops than in training, cache follows.
    deeper = _cached_greedy(lm, PROMPT, TOTAL, num_loops=5)
    assert deeper == _greedy_uncached(lm, PROMPT, TOTAL, num_loops=5)
    # The override is per call: the default depth is back (no stale
    # compiled function).
    assert _cached_greedy(lm, PROMPT, TOTAL) == default
    # ... and its compiled function is reused, not retraced.
    assert lm.generate_function is default_function
    # The cache really has one slot per application.
    token_ids = keras.ops.convert_to_tensor(np.zeros((1, TOTAL), "int32"))
    _, cache = lm._build_cache(token_ids)
    assert tuple(cache.shape)[1] == 5
    _, cache = lm._build_cache(token_ids, num_loops=5)
    assert tuple(cache.shape)[1] == len(lm.backbone.get_layer_schedule(5))
    assert tuple(cache.shape)[1] == 7
    assert lm.backbone.num_loops == 3


def test_loop_override_equals_backbone_built_with_that_depth(looped_lm):
    lm = looped_lm
    inputs = {
        "token_ids": np.array([[2, 17, 33, 9, 40, 0]], dtype="int32"),
        "padding_mask": np.array([[1, 1, 1, 1, 1, 0]], dtype="int32"),
    }
    default = _numpy(lm(inputs))
    params = lm.count_params()
    trainable = sum(int(np.prod(w.shape)) for w in lm.trainable_weights)
    for num_loops in (1, 5):
        got = _numpy(lm(inputs, num_loops=num_loops))
        config = dict(lm.backbone.get_config(), num_loops=num_loops)
        backbone = LoopedGemmaBackbone.from_config(config)
        backbone.set_weights(lm.backbone.get_weights())
        other = LoopedGemmaCausalLM(backbone=backbone)
        np.testing.assert_allclose(
            got, _numpy(other(inputs)), rtol=1e-5, atol=1e-5
        )
        # The override really changes the depth.
        assert np.abs(got - default).max() > 1e-3
        hidden = lm.backbone(inputs, num_loops=np.int64(num_loops))
        np.testing.assert_allclose(
            _numpy(hidden), _numpy(backbone(inputs)), rtol=1e-5, atol=1e-5
        )
    # Nothing was built or changed by the overrides.
    assert lm.count_params() == params
    assert sum(int(np.prod(w.shape)) for w in lm.trainable_weights) == (
        trainable
    )
    assert lm.backbone.num_loops == 3
    np.testing.assert_array_equal(_numpy(lm(inputs)), default)
    # The override in the functional API (a symbolic call).
    token_ids = keras.Input(shape=(None,), dtype="int32")
    padding_mask = keras.Input(shape=(None,), dtype="int32")
    symbolic = {"token_ids": token_ids, "padding_mask": padding_mask}
    hidden = lm.backbone(symbolic, num_loops=5)
    functional = keras.Model(symbolic, hidden)
    assert functional.count_params() == lm.backbone.count_params()
    np.testing.assert_allclose(
        _numpy(functional(inputs)),
        _numpy(lm.backbone(inputs, num_loops=5)),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.slow  # string generation + fit of the LM: a reproduction
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
    # After a jit-compiled fit, the (jit-compiled) override still decodes
    # exactly as uncached greedy at that depth.
    assert _cached_greedy(lm, PROMPT, TOTAL, num_loops=2) == (
        _greedy_uncached(lm, PROMPT, TOTAL, num_loops=2)
    )


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3", True, None])
def test_bad_num_loops_override(looped_lm, bad):
    lm = looped_lm
    inputs = {
        "token_ids": np.array([[2, 17, 33]], dtype="int32"),
        "padding_mask": np.ones((1, 3), dtype="int32"),
    }
    message = re.escape(
        f"`num_loops` must be an integer >= 1. Received: num_loops={bad!r}"
    )
    if bad is not None:  # None means "the default" for the overrides.
        with pytest.raises(ValueError, match=message):
            lm(inputs, num_loops=bad)
        with pytest.raises(ValueError, match=message):
            lm.backbone(inputs, num_loops=bad)
        with pytest.raises(ValueError, match=message):
            lm.generate("the", max_length=6, num_loops=bad)
        with pytest.raises(ValueError, match=message):
            lm.backbone.get_layer_schedule(bad)
    with pytest.raises(ValueError, match=message):
        LoopedGemmaBackbone(**SMALL, num_loops=bad)


def _fit_one_step(lm, data):
    lm.fit(data, batch_size=len(data), epochs=1, shuffle=False, verbose=0)


@pytest.mark.slow  # save, reload and resume training: a reproduction
def test_keras_save_load_and_resume_training(tiny_preset, tmp_path):
    keras.utils.set_random_seed(1)
    lm = looped_gemma_from_preset(
        tiny_preset,
        num_prelude_layers=1,
        num_looped_layers=1,
        num_loops=3,
        num_coda_layers=0,
    )
    _perturb(lm.backbone, seed=1)
    lm.preprocessor.sequence_length = 12
    lm.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    data = ["def foo(x): return x + 1", "class Bar: pass"] * 2
    _fit_one_step(lm, data)
    path = str(tmp_path / "looped.keras")
    lm.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is LoopedGemmaCausalLM
    assert type(loaded.backbone) is LoopedGemmaBackbone
    assert loaded.backbone.get_config() == lm.backbone.get_config()
    assert loaded.backbone.layer_schedule == [0, 1, 1, 1]
    inputs = {
        "token_ids": np.array([[2, 17, 33, 9, 40, 0]], dtype="int32"),
        "padding_mask": np.array([[1, 1, 1, 1, 1, 0]], dtype="int32"),
    }
    np.testing.assert_array_equal(_numpy(loaded(inputs)), _numpy(lm(inputs)))
    np.testing.assert_array_equal(
        _numpy(loaded(inputs, num_loops=5)), _numpy(lm(inputs, num_loops=5))
    )
    assert loaded.generate("the", max_length=10) == lm.generate(
        "the", max_length=10
    )
    # The optimizer state came back too, so training resumes exactly.
    assert loaded.optimizer is not None
    assert int(_numpy(loaded.optimizer.iterations)) == 1
    for a, b in zip(loaded.optimizer.variables, lm.optimizer.variables):
        np.testing.assert_array_equal(_numpy(a), _numpy(b))
    _fit_one_step(lm, data)
    _fit_one_step(loaded, data)
    for a, b in zip(loaded.get_weights(), lm.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_keras_hub_preset_round_trip(looped_lm, tmp_path):
    lm = looped_lm
    folder = str(tmp_path / "looped_preset")
    lm.save_to_preset(folder)
    inputs = {
        "token_ids": np.array([[2, 17, 33, 9, 40, 0]], dtype="int32"),
        "padding_mask": np.array([[1, 1, 1, 1, 1, 0]], dtype="int32"),
    }
    want = _numpy(lm(inputs))
    # keras-hub's generic entry point resolves the registered subclass.
    for loaded in (
        keras_hub.models.CausalLM.from_preset(folder),
        LoopedGemmaCausalLM.from_preset(folder),
    ):
        assert type(loaded) is LoopedGemmaCausalLM
        config = loaded.backbone.get_config()
        assert config == lm.backbone.get_config()
        assert (
            config["num_prelude_layers"],
            config["num_looped_layers"],
            config["num_loops"],
            config["num_coda_layers"],
        ) == (1, 1, 3, 1)
        np.testing.assert_array_equal(_numpy(loaded(inputs)), want)
    backbone = keras_hub.models.Backbone.from_preset(folder)
    assert type(backbone) is LoopedGemmaBackbone
    np.testing.assert_array_equal(
        _numpy(backbone(inputs)), _numpy(lm.backbone(inputs))
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_loops"):
        LoopedGemmaBackbone(**SMALL, num_loops=0)
    with pytest.raises(ValueError, match="num_looped_layers"):
        LoopedGemmaBackbone(**SMALL, num_looped_layers=0)
    with pytest.raises(ValueError, match="num_prelude_layers"):
        LoopedGemmaBackbone(**SMALL, num_prelude_layers=-1)


def _numpy_of(x):
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))


def test_scan_mode_equals_unrolled_backbone():
    keras.utils.set_random_seed(0)
    unrolled = LoopedGemmaBackbone(**SMALL, num_loops=3)
    scanned = LoopedGemmaBackbone.from_config(
        {**unrolled.get_config(), "loop_mode": "scan", "rematerialize": True}
    )
    scanned.set_weights(unrolled.get_weights())
    assert scanned.looped_block.loop_mode == "scan"
    tokens = np.random.default_rng(1).integers(0, 40, size=(2, 6))
    mask = np.ones((2, 6), dtype="int32")
    mask[1, 4:] = 0
    inputs = {"token_ids": tokens, "padding_mask": mask}
    np.testing.assert_allclose(
        _numpy_of(scanned(inputs, num_loops=4)),
        _numpy_of(unrolled(inputs, num_loops=4)),
        atol=1e-5,
    )
    # One compiled training step from the same weights gives the same
    # weights (same gradients through the scanned, rematerialised loop).
    y = np.random.default_rng(2).normal(size=(2, 6, 16)).astype("float32")
    for model in (unrolled, scanned):
        model.compile(keras.optimizers.SGD(0.5), "mse", jit_compile=True)
        model.fit(inputs, y, epochs=1, batch_size=2, verbose=0)
    for a, b in zip(unrolled.get_weights(), scanned.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    "policy",
    ["bfloat16", pytest.param("mixed_float16", marks=pytest.mark.slow)],
)
def test_looped_block_runs_in_the_backbone_policy(policy):
    backbone = LoopedGemmaBackbone(**SMALL, num_loops=2, dtype=policy)
    compute = keras.DTypePolicy(policy).compute_dtype
    variable = keras.DTypePolicy(policy).variable_dtype
    assert backbone.looped_block.dtype_policy.name == policy
    assert backbone.looped_block.compute_dtype == compute
    tokens = np.ones((1, 4), dtype="int32")
    inputs = {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    x = backbone.token_embedding(tokens)
    out = backbone.looped_block(x, padding_mask=inputs["padding_mask"])
    spec = backbone.looped_block.compute_output_spec(
        keras.KerasTensor(x.shape, dtype=compute)
    )
    assert keras.backend.standardize_dtype(out.dtype) == spec.dtype == compute
    eager = backbone(inputs)
    assert keras.backend.standardize_dtype(eager.dtype) == compute
    assert all(
        keras.backend.standardize_dtype(v.dtype) == variable
        for v in backbone.weights
    )


def test_source_layer_map_keeps_sliding_and_global_kinds():
    for distinct in range(2, 7):
        for source in range(2, 12):
            mapping = source_layer_map(distinct, source, alternating=True)
            assert len(mapping) == distinct
            assert all(0 <= s < source for s in mapping)
            assert all(s % 2 == d % 2 for d, s in enumerate(mapping))
            if source >= distinct:
                assert mapping == sorted(mapping)
            plain = source_layer_map(distinct, source)
            assert all(abs(a - b) <= 1 for a, b in zip(mapping, plain))
    # Plain map: 3 distinct from 4 source layers puts layer 2 (sliding) on
    # source 3 (global); the alternating map does not.
    assert source_layer_map(3, 4) == [0, 2, 3]
    assert source_layer_map(3, 4, alternating=True) == [0, 1, 2]


def test_from_preset_keeps_or_sets_the_dtype(tiny_preset):
    source = keras_hub.models.GemmaBackbone.from_preset(tiny_preset)
    lm = looped_gemma_from_preset(tiny_preset, num_loops=2)
    assert lm.backbone.dtype_policy.name == source.dtype_policy.name
    lm16 = looped_gemma_from_preset(
        tiny_preset, num_loops=2, dtype="bfloat16", loop_mode="scan"
    )
    assert lm16.backbone.dtype_policy.name == "bfloat16"
    assert lm16.backbone.looped_block.loop_mode == "scan"
    assert {keras.backend.standardize_dtype(v.dtype) for v in lm16.weights} == {
        "bfloat16"
    }
    # The weights are the preset's, rounded to bf16.
    np.testing.assert_allclose(
        _numpy_of(lm16.backbone.token_embedding.embeddings),
        _numpy_of(source.token_embedding.embeddings),
        rtol=1e-2,
        atol=1e-2,
    )


def test_score_follows_the_schedule(looped_lm):
    tokens = np.random.default_rng(3).integers(0, 40, size=(2, 6))
    mask = np.ones((2, 6), dtype="int32")
    inputs = {"token_ids": tokens, "padding_mask": mask}
    seen = []

    def intercept(x, index):
        seen.append(index)
        return x

    logits = looped_lm.score(
        tokens, padding_mask=mask, layer_intercept_fn=intercept
    )
    assert seen == [-1] + list(range(looped_lm.backbone.num_applications))
    np.testing.assert_allclose(
        _numpy_of(logits), _numpy_of(looped_lm(inputs)), atol=1e-5
    )
    targets = np.roll(tokens, -1, axis=1)
    loss = _numpy_of(
        looped_lm.score(tokens, scoring_mode="loss", target_ids=targets)
    )
    z = _numpy_of(logits).astype("float64")
    log_probs = (
        z
        - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1))[..., None]
        - z.max(-1, keepdims=True)
    )
    want = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss, want, rtol=1e-4, atol=1e-4)
    deeper = looped_lm.score(tokens, padding_mask=mask, num_loops=5)
    np.testing.assert_allclose(
        _numpy_of(deeper),
        _numpy_of(looped_lm(inputs, num_loops=5)),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="scoring_mode"):
        looped_lm.score(tokens, scoring_mode="probs")
    with pytest.raises(ValueError, match="target_ids"):
        looped_lm.score(tokens, scoring_mode="loss")
