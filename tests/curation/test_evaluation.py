import keras
import numpy as np
import pytest
import scipy.stats

from keras_gr.curation import curation_quality
from keras_gr.curation import loss_correlation
from keras_gr.curation import pretraining_loss
from keras_gr.curation import sequence_losses
from keras_gr.curation import source_separation
from keras_gr.curation import spearman
from keras_gr.curation.evaluation import rank_data


def test_rank_and_spearman_match_scipy():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 50).astype(float)  # many ties
    b = a + rng.normal(size=50)
    np.testing.assert_allclose(rank_data(a), scipy.stats.rankdata(a))
    assert spearman(a, b) == pytest.approx(
        scipy.stats.spearmanr(a, b).statistic, abs=1e-12
    )


def test_loss_correlation_known_answers():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 50)
    x = np.eye(8)[labels] + 0.05 * rng.normal(size=(400, 8))
    # Constant loss inside each cluster: same-cluster gap is exactly 0.
    losses = labels * 0.3 + 1.0
    exact = loss_correlation(x, losses, cluster_labels=labels, seed=1)
    assert exact["ratio"] == 0.0
    # Cross-cluster pairs are all ~equally far, so only the within/across
    # split correlates: clearly positive, far from 1.
    assert exact["rank_correlation"] > 0.2
    # Clustering the embeddings (k-means inside) finds the same answer.
    found = loss_correlation(x, losses, num_clusters=8, seed=1)
    assert found["ratio"] == pytest.approx(0.0, abs=1e-12)
    # Losses unrelated to the embedding: ratio ~1, rank correlation ~0.
    noise = rng.normal(size=400)
    random = loss_correlation(x, noise, cluster_labels=labels, seed=2)
    assert random["ratio"] == pytest.approx(1.0, abs=0.05)
    assert abs(random["rank_correlation"]) < 0.05


def test_random_embedder_gives_ratio_near_one():
    rng = np.random.default_rng(3)
    losses = rng.gamma(2.0, size=600)
    x = rng.normal(size=(600, 16))
    r = loss_correlation(x, losses, num_clusters=10, seed=0)
    assert r["ratio"] == pytest.approx(1.0, abs=0.05)


def test_source_separation_known_answers():
    rng = np.random.default_rng(0)
    sources = np.repeat([0, 1, 2], 40)
    separated = np.eye(3)[sources] * 5 + 0.1 * rng.normal(size=(120, 3))
    r = source_separation(separated, sources, num_neighbors=5)
    assert r == {"purity": 1.0, "nmi": pytest.approx(1.0), "knn_accuracy": 1.0}
    mixed = rng.normal(size=(120, 3))
    m = source_separation(mixed, sources, num_neighbors=5)
    assert m["purity"] < 0.6 and m["nmi"] < 0.2 and m["knn_accuracy"] < 0.6


def test_bad_input():
    with pytest.raises(ValueError, match="same length"):
        loss_correlation(np.ones((4, 2)), np.ones(3))
    with pytest.raises(ValueError, match="finite"):
        loss_correlation(np.array([[np.nan, 0.0], [1.0, 1.0]]), np.ones(2))
    with pytest.raises(ValueError, match="same-cluster"):
        loss_correlation(np.ones((3, 2)), np.ones(3), cluster_labels=[0, 1, 2])
    with pytest.raises(ValueError, match="same length"):
        source_separation(np.ones((4, 2)), [0, 1])
    with pytest.raises(ValueError, match="num_neighbors"):
        source_separation(np.ones((4, 2)), [0, 1, 0, 1], num_neighbors=4)


def test_sequence_losses_equal_manual_cross_entropy(tiny_preset):
    import keras_hub

    lm = keras_hub.models.CausalLM.from_preset(tiny_preset)
    texts = ["The for statement", "def f(x):\n    return x", "a b c d e f"]
    got = sequence_losses(lm, texts, sequence_length=16, batch_size=2)
    packer = keras_hub.layers.StartEndPacker(
        16,
        start_value=lm.preprocessor.tokenizer.start_token_id,
        pad_value=0,
        return_padding_mask=True,
    )
    for row, text in enumerate(texts):
        ids, mask = packer(lm.preprocessor.tokenizer([text]))
        ids = keras.ops.convert_to_numpy(ids)
        mask = keras.ops.convert_to_numpy(mask).astype(bool)
        logits = keras.ops.convert_to_numpy(
            lm({"token_ids": ids, "padding_mask": mask.astype("int32")})
        ).astype("float64")[0]
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        targets = ids[0, 1:]
        valid = mask[0, 1:]
        nll = -logp[np.arange(15), targets][valid]
        assert got[row] == pytest.approx(nll.mean(), rel=1e-4)


def test_pretraining_improves_and_in_domain_selection_wins(tiny_preset):
    """End to end: a selection from the validation domain beats a random
    selection from a mixed pool (measure 2), and training lowers the loss
    far below the uniform guess ln(V)."""
    import keras_hub

    from keras_gr.data import multi_source_corpus

    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(tiny_preset)
    corpus = multi_source_corpus(max_documents_per_source=60)
    texts = corpus.train_texts
    prose = np.flatnonzero(corpus.train_sources == 0)
    val = [
        t
        for t, s in zip(corpus.validation_texts, corpus.validation_sources)
        if s == 0
    ]
    kwargs = dict(
        num_layers=1,
        hidden_dim=32,
        num_heads=2,
        intermediate_dim=64,
        sequence_length=32,
        steps=60,
        batch_size=8,
        learning_rate=1e-2,
    )
    result = curation_quality(
        texts, prose[:40], val, tokenizer, seeds=(0,), **kwargs
    )
    assert len(result["selected"]) == len(result["random"]) == 1
    assert result["improvement"] > 0.05
    assert result["selected_mean"] < np.log(tokenizer.vocabulary_size()) - 1.0
    with pytest.raises(ValueError, match="selected_indices"):
        curation_quality(texts, [len(texts)], val, tokenizer, seeds=(0,))
    with pytest.raises(ValueError, match="steps"):
        pretraining_loss(texts, val, tokenizer, steps=0)
