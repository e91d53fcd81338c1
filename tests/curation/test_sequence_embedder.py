import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gr.curation import BackboneEmbedder
from keras_gr.curation import FunctionEmbedder
from keras_gr.curation import HashedNgramEmbedder
from keras_gr.curation import RandomEmbedder
from keras_gr.curation import masked_mean
from tests.multidevice import run_on_devices

TEXTS = [
    "def add(a, b):\n    return a + b",
    "The for statement iterates over a sequence.",
    "x",
    "Raise an exception when the file is missing.",
    "import os",
]


@pytest.fixture(scope="module")
def embedders(tiny_preset):
    first = BackboneEmbedder.from_preset(tiny_preset, sequence_length=24)
    out = {"token_embedding": first}
    for index in (-1, 0):
        out[f"hidden_state{index}"] = BackboneEmbedder(
            first.backbone,
            first.tokenizer,
            pooling="hidden_state",
            layer_index=index,
            sequence_length=24,
        )
    return out


def _packed(embedder, texts, length):
    ds = embedder.dataset(texts, batch_size=len(texts))
    batch = next(iter(ds))
    return {k: np.asarray(v)[:, :length] for k, v in batch.items()}


def test_masked_mean_golden():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 4)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    got = keras.ops.convert_to_numpy(masked_mean(x, mask))
    np.testing.assert_allclose(got[0], x[0, :3].mean(0), rtol=1e-6)
    np.testing.assert_allclose(got[1], x[1].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(got[2], np.zeros(4))


def test_token_embedding_mean_equals_numpy(embedders):
    e = embedders["token_embedding"]
    got = e.embed(TEXTS, batch_size=2)
    table = keras.ops.convert_to_numpy(e.backbone.token_embedding.embeddings)
    packed = _packed(e, TEXTS, 24)
    for row, (ids, mask) in enumerate(
        zip(packed["token_ids"], packed["padding_mask"])
    ):
        ref = table[ids[mask.astype(bool)]].mean(0)
        np.testing.assert_allclose(got[row], ref, rtol=1e-5, atol=1e-6)


def test_final_hidden_state_mean_equals_backbone_output(embedders):
    e = embedders["hidden_state-1"]
    got = e.embed(TEXTS, batch_size=3)
    packed = _packed(e, TEXTS, 24)
    states = keras.ops.convert_to_numpy(e.backbone(packed))
    mask = packed["padding_mask"].astype(bool)
    for row in range(len(TEXTS)):
        ref = states[row][mask[row]].mean(0)
        np.testing.assert_allclose(got[row], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["token_embedding", "hidden_state-1", "hidden_state0"]
)
def test_padding_invariance(embedders, name):
    """More padding (longer sequence_length, other batch mates) changes
    nothing for texts shorter than both lengths."""
    e = embedders[name]
    short = [t for t in TEXTS if len(t) < 30]
    longer = BackboneEmbedder(
        e.backbone,
        e.tokenizer,
        pooling=e.pooling,
        layer_index=e.layer_index,
        sequence_length=48,
    )
    a = e.embed(short, batch_size=4)
    b = longer.embed(short[::-1], batch_size=1)[::-1]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_hidden_layers_differ_and_tf_data_input(embedders):
    a = embedders["hidden_state0"].embed(TEXTS)
    b = embedders["hidden_state-1"].embed(TEXTS)
    assert not np.allclose(a, b)
    ds = tf.data.Dataset.from_tensor_slices(TEXTS).batch(2)
    np.testing.assert_allclose(
        embedders["hidden_state0"].embed(ds), a, rtol=1e-5, atol=1e-6
    )


def test_hashed_ngrams_golden():
    e = HashedNgramEmbedder(output_dim=97, ngram_range=(1, 1))
    v = e.embed(["Hello"])[0]
    import zlib

    h = zlib.crc32(b"hello")
    expected = np.zeros(97)
    expected[h % 97] = 1.0 if h & 0x80000000 else -1.0
    np.testing.assert_allclose(v, expected)
    v2 = HashedNgramEmbedder(output_dim=4096).embed(
        ["a b a", "a b a", "zzz qqq"]
    )
    np.testing.assert_allclose(np.linalg.norm(v2, axis=1), 1.0, rtol=1e-6)
    assert float(v2[0] @ v2[1]) == pytest.approx(1.0)
    assert abs(float(v2[0] @ v2[2])) < 0.2


def test_random_and_function_embedders():
    r = RandomEmbedder(16, seed=1).embed(["a", "b", "a"])
    np.testing.assert_allclose(r[0], r[2])
    assert RandomEmbedder(16, seed=2).embed(["a"])[0] @ r[0] < 0.999
    f = FunctionEmbedder(lambda t: np.ones((len(t), 3)), 3)
    assert f.embed(TEXTS, batch_size=2).shape == (5, 3)
    bad = FunctionEmbedder(lambda t: np.ones((len(t), 2)), 3)
    with pytest.raises(ValueError, match="shape"):
        bad.embed(TEXTS)


def test_bad_input(embedders):
    e = embedders["token_embedding"]
    with pytest.raises(ValueError, match="texts"):
        e.embed([])
    with pytest.raises(ValueError, match="one string"):
        e.embed("just one string")
    with pytest.raises(ValueError, match="pooling"):
        BackboneEmbedder(e.backbone, e.tokenizer, pooling="max")
    with pytest.raises(ValueError, match="layer_index"):
        BackboneEmbedder(
            e.backbone, e.tokenizer, pooling="hidden_state", layer_index=9
        )
    with pytest.raises(ValueError, match="backbone"):
        BackboneEmbedder(keras.layers.Dense(2), e.tokenizer)
    with pytest.raises(ValueError, match="ngram_range"):
        HashedNgramEmbedder(ngram_range=(2, 1))
    with pytest.raises(ValueError, match="fn"):
        FunctionEmbedder("not callable", 2)


@pytest.mark.multidevice
def test_data_parallel_embeddings_equal_single_device(tiny_preset):
    result = run_on_devices(
        f"""
import keras
import numpy as np
from keras_gr.curation import BackboneEmbedder
texts = [f"document number {{i}} " * (1 + i % 5) for i in range(21)]
single = {{}}
for pooling in ("token_embedding", "hidden_state"):
    e = BackboneEmbedder.from_preset({str(tiny_preset)!r}, pooling=pooling,
                                     sequence_length=24)
    single[pooling] = e.embed(texts, batch_size=8)
keras.distribution.set_distribution(keras.distribution.DataParallel())
RESULT = {{"devices": len(keras.distribution.list_devices())}}
for pooling in ("token_embedding", "hidden_state"):
    e = BackboneEmbedder.from_preset({str(tiny_preset)!r}, pooling=pooling,
                                     sequence_length=24)
    sharded = e.embed(texts, batch_size=8)
    RESULT[pooling] = float(np.abs(sharded - single[pooling]).max())
    RESULT[pooling + "_shape"] = list(sharded.shape)
"""
    )
    assert result["devices"] == 8
    for pooling in ("token_embedding", "hidden_state"):
        assert result[pooling + "_shape"] == [21, 32]
        assert result[pooling] < 1e-5
